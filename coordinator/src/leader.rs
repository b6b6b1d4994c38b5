//! What only the leader does: keep agents' leases, declare hosts down when a lease runs out,
//! move rollouts and drains on, schedule empty slots, and forget instances that ended long ago.
//!
//! The decisions are `mirari_core`'s: the lease table ([`LeaseTable`]), the rollout planner
//! ([`rollout::plan`]) and the scheduler's rounds. This task only reads the clock, asks them, and proposes what they return. Leases
//! live in the leader's memory, not in raft (a heartbeat a second per host would otherwise be
//! a log entry a second per host); a new leader gives every host a fresh lease when it takes
//! over. Only changes (a host down, a placement) go through raft.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirari_core::clock;
pub use mirari_core::lease::{LeaseTable, LeaseTiming};
use mirari_core::registry::{Command, Host, HostStatus, Registry, Request};
use mirari_core::retention::{self, Retention};
use mirari_core::{rollout, scheduler};

use crate::driver::RaftHandle;

/// The leader's lease table, shared by the heartbeat handler and the duties task.
#[derive(Debug)]
pub struct Leases {
    table: Mutex<LeaseTable>,
}

impl Leases {
    pub fn new(timing: LeaseTiming) -> Self {
        Self { table: Mutex::new(LeaseTable::new(timing)) }
    }

    /// A renewal from `host` (its record in `registry`, up), received at `received_ms` (boot
    /// clock). Returns the ttl granted, if the lease is renewed (see [`LeaseTable::renew`]).
    pub fn renew(&self, registry: &Registry, host: &Host, received_ms: u64) -> Option<Duration> {
        self.table.lock().expect("leases lock").renew(registry, host, received_ms)
    }
}

/// Most placements one raft entry carries.
const PLACEMENTS_PER_ENTRY: usize = 5000;
/// Most plans committed in one duty round, so lease checks are never starved.
const PLANS_PER_ROUND: usize = 20;
/// The leader looks at leases and empty slots this often, and plans at once when an entry asks
/// for placements ([`RaftHandle::placement_wanted`]).
const DUTY_INTERVAL: Duration = Duration::from_millis(200);
/// Without registry changes, it still re-plans this often (a host may have freed up).
const RESCHEDULE_INTERVAL: Duration = Duration::from_secs(2);
/// How often it looks for ended instances past their retention.
const RETENTION_INTERVAL: Duration = Duration::from_secs(10);
/// Most instances one entry forgets.
const FORGOTTEN_PER_ENTRY: usize = 5000;

/// A request ID for a command the leader makes on its own.
pub fn fresh_request_id(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

/// Runs the leader's duties whenever this node leads, until the process ends.
pub async fn run(raft: RaftHandle, leases: Arc<Leases>) {
    let mut leading = false;
    let mut scheduled_at_index = 0;
    let mut scheduled_at = Instant::now();
    let mut retained_at = Instant::now();
    let mut interval = tokio::time::interval(DUTY_INTERVAL);
    loop {
        let placement_wanted = tokio::select! {
            _ = interval.tick() => false,
            () = raft.placement_wanted() => true,
        };
        let status = raft.status();
        if status.role != "leader" {
            leading = false;
            continue;
        }
        if placement_wanted && leading {
            // An operator waits for these instances: only the plan, the rest keeps its rounds.
            scheduled_at_index = status.applied_index;
            scheduled_at = Instant::now();
            schedule(&raft).await;
            continue;
        }
        if !leading {
            // The machine's lock before the table's, the order every other holder of both keeps.
            let machine = raft.machine();
            leases.table.lock().expect("leases lock").start_leading(&machine.registry, clock::boot_ms());
            leading = true;
        }
        expire_leases(&raft, &leases).await;
        advance_rollouts(&raft).await;
        if status.applied_index != scheduled_at_index || scheduled_at.elapsed() > RESCHEDULE_INTERVAL {
            scheduled_at_index = status.applied_index;
            scheduled_at = Instant::now();
            schedule(&raft).await;
        }
        if retained_at.elapsed() > RETENTION_INTERVAL {
            retained_at = Instant::now();
            forget_ended(&raft).await;
        }
    }
}

/// Forgets the ended instances past their retention ([`retention::forgettable`]), an entry at a
/// time until fewer than an entry holds are left: a cluster whose instances churn ends more
/// between two rounds than one entry forgets.
async fn forget_ended(raft: &RaftHandle) {
    loop {
        let ids = retention::forgettable(
            &raft.machine().registry,
            clock::wall_ms(),
            Retention::default(),
            FORGOTTEN_PER_ENTRY,
        );
        let count = ids.len();
        if count == 0 {
            return;
        }
        let command = Command::ForgetInstances { ids };
        match raft.propose(Request { request_id: fresh_request_id("forget"), command }).await {
            Ok(_) => tracing::info!(count, "forgot instances that ended past their retention"),
            Err(error) => {
                tracing::debug!(%error, "could not forget ended instances yet");
                return;
            }
        }
        if count < FORGOTTEN_PER_ENTRY {
            return;
        }
    }
}

async fn expire_leases(raft: &RaftHandle, leases: &Leases) {
    let expired = {
        let machine = raft.machine();
        leases.table.lock().expect("leases lock").expired(&machine.registry, clock::boot_ms())
    };
    for host in expired {
        tracing::warn!(%host, "lease expired: declaring the host down; its instances will be replaced");
        let command = Command::SetHostStatus { host: host.clone(), status: HostStatus::Down, at_ms: clock::wall_ms() };
        match raft.propose(Request { request_id: fresh_request_id("down"), command }).await {
            // Counted once it is in the registry: until then the table names the host every round.
            Ok(Ok(_)) => {
                raft.metrics().leases_expired.inc();
            }
            Ok(Err(_)) => {}
            Err(error) => tracing::debug!(%host, %error, "could not declare the host down yet"),
        }
    }
}

/// Proposes what the rollout planner says now: stops of replaced instances, promotions, ends
/// of rollouts. Its state is all in the registry, so a new leader carries on where the last one
/// was.
async fn advance_rollouts(raft: &RaftHandle) {
    let commands = rollout::plan(&raft.machine().registry, clock::wall_ms());
    for command in commands {
        let what = format!("{command:?}");
        match raft.propose(Request { request_id: fresh_request_id("rollout"), command }).await {
            Ok(Ok(_)) => tracing::info!(command = %what, "rollout step"),
            Ok(Err(rejection)) => tracing::debug!(%rejection, "rollout step refused"),
            Err(error) => {
                tracing::debug!(%error, "rollout step not committed");
                return;
            }
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
            let mut fresh = registry.fresh_ids();
            let mut mint = || fresh.next().expect("2^64 instance IDs");
            scheduler::plan_round(registry, PLACEMENTS_PER_ENTRY, clock::wall_ms(), &mut mint)
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
                at_ms: clock::wall_ms(),
            };
            match raft.propose(Request { request_id: fresh_request_id("place"), command }).await {
                Ok(Ok(_)) => {
                    raft.metrics().placements.inc_by(placed as u64);
                    tracing::info!(app = %plan.app, placed, "placed instances")
                }
                Ok(Err(rejection)) => tracing::debug!(app = %plan.app, %rejection, "plan refused; planning again"),
                Err(error) => {
                    tracing::debug!(app = %plan.app, %error, "plan not committed");
                    return;
                }
            }
        }
    }
}
