//! The agent's metrics, `mirari_agent_*`, served on `--http-listen`.
//!
//! The runtime counts what happens as it performs effects ([`AgentMetrics`], one per
//! [`Agent`], which the daemon's registry is handed): starts, ended runs, restarts, console
//! bytes, and how long each backend operation took. What is a state is read at scrape time by
//! [`InstanceCollector`]: instances by phase and by health from the records, and for each
//! live instance the CPU time and resident memory of its payload process (the unix program,
//! node, QEMU) from `/proc`, through the pid its shim wrote in `shim.json` (checked against
//! the process's start time, so a reused pid is never read). Xen domains have no payload
//! process here and are left out of those two. Their labels are the instance ID and the app,
//! one series per live instance: bounded by what the host runs (`--max-instances` for the
//! cluster's).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use mirari_core::health::Health;
use mirari_core::ids::InstanceId;
use mirari_core::instance::Phase;
use mirari_core::target::Target;
use mirari_metrics::{encode_family, latency_histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::Agent;
use crate::state::InstanceRecord;
use crate::supervisor::protocol::ShimPaths;

/// The prefix of every series.
pub const PREFIX: &str = "mirari_agent";

/// Every health, in the order the gauges list them.
pub const HEALTHS: [Health; 4] = [Health::None, Health::Starting, Health::Healthy, Health::Unhealthy];

/// A backend operation's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendOperation {
    pub target: &'static str,
    pub operation: &'static str,
}

/// What the runtime counts as it performs effects.
#[derive(Debug)]
pub struct AgentMetrics {
    pub starts: Counter,
    /// Runs that ended (exited, stopped, failed, lost), as the runtime learnt of them.
    pub exits: Counter,
    pub restarts: Counter,
    pub console_bytes: Counter,
    pub backend_seconds: Family<BackendOperation, Histogram>,
    /// Each instance's restart count as last persisted, so a restart is counted once.
    restarts_seen: Mutex<HashMap<InstanceId, u32>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            starts: Counter::default(),
            exits: Counter::default(),
            restarts: Counter::default(),
            console_bytes: Counter::default(),
            backend_seconds: Family::new_with_constructor(latency_histogram),
            restarts_seen: Mutex::new(HashMap::new()),
        }
    }
}

impl AgentMetrics {
    /// Runs one backend operation, timing it.
    pub async fn time<T>(&self, target: Target, operation: &'static str, work: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let done = work.await;
        let labels = BackendOperation { target: target.name(), operation };
        self.backend_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        done
    }

    /// Records as they are persisted: their restarts since they were last seen are counted.
    /// Records seen for the first time (those loaded at start) only set where counting starts.
    pub fn note_records<'a>(&self, records: impl IntoIterator<Item = &'a InstanceRecord>) {
        let mut seen = self.restarts_seen.lock().expect("restarts lock");
        let new = restarts_since(&mut seen, records.into_iter().map(|r| (r.id, r.lifecycle.restarts)));
        self.restarts.inc_by(new);
    }
}

/// How many restarts `records` (ID, restarts so far) add to what `seen` last held, which is
/// updated. An instance seen for the first time adds none.
fn restarts_since(seen: &mut HashMap<InstanceId, u32>, records: impl IntoIterator<Item = (InstanceId, u32)>) -> u64 {
    let mut added = 0;
    for (id, restarts) in records {
        if let Some(before) = seen.insert(id, restarts) {
            added += u64::from(restarts.saturating_sub(before));
        }
    }
    added
}

/// The label of a health, `none` for [`Health::None`] (whose name is `-`, for tables).
pub const fn health_label(health: Health) -> &'static str {
    match health {
        Health::None => "none",
        other => other.name(),
    }
}

/// A registry of `agent`'s metrics.
pub fn registry(agent: &Agent) -> Registry {
    let metrics = agent.metrics();
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register(
        "instance_starts",
        "Instance starts asked of the backends (restarts included)",
        metrics.starts.clone(),
    );
    registry.register(
        "instance_exits",
        "Instance runs that ended (exited, stopped, failed or lost)",
        metrics.exits.clone(),
    );
    registry.register("instance_restarts", "Instances started again after their run ended", metrics.restarts.clone());
    registry.register_with_unit(
        "console",
        "Console output read from instances",
        Unit::Bytes,
        metrics.console_bytes.clone(),
    );
    registry.register_with_unit(
        "backend_operation_duration",
        "One backend operation (start, stop, destroy, recover, inspect)",
        Unit::Seconds,
        metrics.backend_seconds.clone(),
    );
    registry.register_collector(Box::new(InstanceCollector { agent: agent.clone() }));
    registry
}

/// One live instance's payload process, as read at a scrape.
#[derive(Debug, Clone, PartialEq)]
struct Sampled {
    id: String,
    app: String,
    cpu_seconds: f64,
    resident_bytes: u64,
}

/// Reads the records and `/proc` at scrape time.
#[derive(Debug)]
pub struct InstanceCollector {
    agent: Agent,
}

impl InstanceCollector {
    fn sample(&self, records: &[InstanceRecord]) -> Vec<Sampled> {
        records
            .iter()
            .filter(|r| r.lifecycle.phase.is_live())
            .filter_map(|r| {
                let usage = ShimPaths::new(&self.agent.instance_dir(r.id)).read_info()?.payload.usage()?;
                Some(Sampled {
                    id: r.id.to_string(),
                    app: r.spec.app.clone(),
                    cpu_seconds: usage.cpu_seconds(),
                    resident_bytes: usage.resident_bytes(),
                })
            })
            .collect()
    }
}

impl Collector for InstanceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let records = self.agent.list();
        let sampled = self.sample(&records);
        let running = || records.iter().filter(|r| r.lifecycle.phase == Phase::Running);
        encode_family(
            &mut encoder,
            "instances",
            "Instance records by phase.",
            None,
            MetricType::Gauge,
            Phase::ALL.map(|phase| {
                let n = records.iter().filter(|r| r.lifecycle.phase == phase).count() as u64;
                ([("phase", phase.name())], ConstGauge::new(n))
            }),
        )?;
        encode_family(
            &mut encoder,
            "running_instances",
            "Running instances by health (none: no health check).",
            None,
            MetricType::Gauge,
            HEALTHS.map(|health| {
                let n = running().filter(|r| r.health == health).count() as u64;
                ([("health", health_label(health))], ConstGauge::new(n))
            }),
        )?;
        let labels = |s: &Sampled| [("instance", s.id.clone()), ("app", s.app.clone())];
        encode_family(
            &mut encoder,
            "instance_cpu",
            "CPU time (user and system) of each live instance's payload process.",
            Some(&Unit::Seconds),
            MetricType::Counter,
            sampled.iter().map(|s| (labels(s), ConstCounter::new(s.cpu_seconds))),
        )?;
        encode_family(
            &mut encoder,
            "instance_resident_memory",
            "Resident memory of each live instance's payload process.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            sampled.iter().map(|s| (labels(s), ConstGauge::new(s.resident_bytes as i64))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_counts_once_and_first_sightings_not_at_all() {
        let (a, b) = (InstanceId::from_u64(1), InstanceId::from_u64(2));
        let mut seen = HashMap::new();
        // Loaded at start: one had restarted 4 times under an earlier agent.
        assert_eq!(restarts_since(&mut seen, [(a, 4), (b, 0)]), 0);
        assert_eq!(restarts_since(&mut seen, [(a, 5)]), 1);
        assert_eq!(restarts_since(&mut seen, [(a, 5), (b, 0)]), 0, "persisted again, not restarted");
        assert_eq!(restarts_since(&mut seen, [(a, 7), (b, 1)]), 3);
    }

    #[test]
    fn labels_are_the_bounded_names() {
        let healths: Vec<&str> = HEALTHS.iter().map(|h| health_label(*h)).collect();
        assert_eq!(healths, ["none", "starting", "healthy", "unhealthy"]);
        let phases: std::collections::BTreeSet<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(phases.len(), Phase::ALL.len(), "every phase once");
    }

    #[tokio::test]
    async fn times_backend_operations_by_target_and_operation() {
        let metrics = AgentMetrics::default();
        let answer = metrics.time(Target::Unix, "start", async { 42 }).await;
        assert_eq!(answer, 42);
        metrics.time(Target::Unix, "start", async {}).await;
        let mut registry = Registry::default();
        registry.register("ops", "", metrics.backend_seconds.clone());
        let text = mirari_metrics::encode(&registry, false).unwrap();
        assert!(text.contains("ops_count{target=\"unix\",operation=\"start\"} 2\n"), "{text}");
    }
}
