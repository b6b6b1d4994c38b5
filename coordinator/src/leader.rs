//! What only the leader does: keep agents' leases, declare hosts down when a lease runs out,
//! and schedule empty slots.
//!
//! Leases live in the leader's memory, not in raft: a heartbeat a second from every host would
//! otherwise be a log entry a second per host. A new leader gives every host a fresh lease when
//! it takes over. Only changes (a host down, a placement) go through raft.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirari_core::ids::InstanceId;
use mirari_core::instance::Desired;
pub use mirari_core::lease::LeaseTiming;
use mirari_core::registry::{Command, HostId, HostStatus, Request};
use mirari_core::scheduler;

use crate::driver::RaftHandle;

/// When the leader last heard from each host.
#[derive(Debug, Default)]
pub struct Leases {
    last_heard: Mutex<HashMap<HostId, Instant>>,
}

impl Leases {
    pub fn renew(&self, host: &HostId) {
        self.last_heard.lock().expect("leases lock").insert(host.clone(), Instant::now());
    }

    fn forget_all(&self) {
        self.last_heard.lock().expect("leases lock").clear();
    }

    /// Of `up`, the hosts not heard from for `limit`. A host never heard from by this leader
    /// starts its lease now.
    fn expired(&self, up: impl Iterator<Item = HostId>, limit: Duration) -> Vec<HostId> {
        let now = Instant::now();
        let mut last_heard = self.last_heard.lock().expect("leases lock");
        up.filter(|host| now.duration_since(*last_heard.entry(host.clone()).or_insert(now)) > limit).collect()
    }
}

/// Most placements one raft entry carries.
const PLACEMENTS_PER_ENTRY: usize = 5000;
/// Most plans committed in one duty round, so lease checks are never starved.
const PLANS_PER_ROUND: usize = 20;
/// The leader looks at leases and empty slots this often.
const DUTY_INTERVAL: Duration = Duration::from_millis(200);
/// Without registry changes, it still re-plans this often (a host may have freed up).
const RESCHEDULE_INTERVAL: Duration = Duration::from_secs(2);

pub fn now_ms() -> u64 {
    u64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// A request ID for a command the leader makes on its own.
pub fn fresh_request_id(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

/// Runs the leader's duties whenever this node leads, until the process ends.
pub async fn run(raft: RaftHandle, leases: Arc<Leases>, timing: LeaseTiming) {
    let mut leading = false;
    let mut scheduled_at_index = 0;
    let mut scheduled_at = Instant::now();
    let mut interval = tokio::time::interval(DUTY_INTERVAL);
    loop {
        interval.tick().await;
        let status = raft.status();
        if status.role != "leader" {
            leading = false;
            continue;
        }
        if !leading {
            leases.forget_all();
            leading = true;
        }
        expire_leases(&raft, &leases, timing).await;
        if status.applied_index != scheduled_at_index || scheduled_at.elapsed() > RESCHEDULE_INTERVAL {
            scheduled_at_index = status.applied_index;
            scheduled_at = Instant::now();
            schedule(&raft).await;
        }
    }
}

async fn expire_leases(raft: &RaftHandle, leases: &Leases, timing: LeaseTiming) {
    let expired = {
        let machine = raft.machine();
        let up = machine.registry.hosts().filter(|h| h.status == HostStatus::Up).map(|h| h.id.clone());
        leases.expired(up, timing.down_after())
    };
    for host in expired {
        tracing::warn!(%host, "lease expired: declaring the host down; its instances will be replaced");
        let command = Command::SetHostStatus { host: host.clone(), status: HostStatus::Down, at_ms: now_ms() };
        if let Err(error) = raft.propose(Request { request_id: fresh_request_id("down"), command }).await {
            tracing::debug!(%host, %error, "could not declare the host down yet");
        }
    }
}

/// Plans every deployment with empty slots and commits the plans, again while they place
/// something (up to a bound per round).
async fn schedule(raft: &RaftHandle) {
    for _ in 0..PLANS_PER_ROUND {
        let plans = {
            let machine = raft.machine();
            let registry = &machine.registry;
            let mut minted: std::collections::HashSet<u64> = std::collections::HashSet::new();
            let mut mint = || loop {
                let id = rand::random::<u64>();
                if !registry.was_minted(InstanceId::from_u64(id)) && minted.insert(id) {
                    return InstanceId::from_u64(id);
                }
            };
            let apps: Vec<String> =
                registry.deployments().filter(|d| d.desired == Desired::Running).map(|d| d.spec.app.clone()).collect();
            apps.iter()
                .filter_map(|app| scheduler::plan(registry, app, PLACEMENTS_PER_ENTRY, &mut mint))
                .filter(|plan| !plan.placements.is_empty())
                .collect::<Vec<_>>()
        };
        if plans.is_empty() {
            return;
        }
        for plan in plans {
            let placed = plan.placements.len();
            let command = Command::Place {
                app: plan.app.clone(),
                generation: plan.generation,
                placements: plan.placements,
                at_ms: now_ms(),
            };
            match raft.propose(Request { request_id: fresh_request_id("place"), command }).await {
                Ok(Ok(_)) => tracing::info!(app = %plan.app, placed, "placed instances"),
                Ok(Err(rejection)) => tracing::debug!(app = %plan.app, %rejection, "plan refused; planning again"),
                Err(error) => {
                    tracing::debug!(app = %plan.app, %error, "plan not committed");
                    return;
                }
            }
        }
    }
}
