//! How long the registry keeps instances that ended for good (stopped, failed past their
//! restart policy, lost with their host, and released): for [`Retention::keep_for_ms`] after
//! they were released, and at most [`Retention::keep_per_app`] of them per app, the newest. The
//! leader proposes forgetting the rest (`Command::ForgetInstances`), so the registry's memory
//! follows what runs, not everything that ever ran. Their IDs stay minted: none is reused.

use std::collections::BTreeMap;

use crate::ids::InstanceId;
use crate::registry::{self, InstanceEntry, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_for_ms: u64,
    pub keep_per_app: usize,
}

impl Default for Retention {
    /// An hour, and the newest 100 per app: enough for `cluster status`, `logs` and the history
    /// of a bad night.
    fn default() -> Self {
        Self { keep_for_ms: 3_600_000, keep_per_app: 100 }
    }
}

/// Whether the registry may forget the instance: it ended for good and holds nothing.
pub fn has_ended_for_good(instance: &InstanceEntry) -> bool {
    !registry::holds_slot(instance) && !instance.observed.is_live()
}

/// The instances to forget now, at most `max`, oldest first.
pub fn forgettable(registry: &Registry, now_ms: u64, retention: Retention, max: usize) -> Vec<InstanceId> {
    let mut ended: BTreeMap<&str, Vec<&InstanceEntry>> = BTreeMap::new();
    for instance in registry.instances().filter(|i| has_ended_for_good(i)) {
        ended.entry(&instance.app).or_default().push(instance);
    }
    let mut forget: Vec<(u64, InstanceId)> = Vec::new();
    for instances in ended.values_mut() {
        // Newest first: released later, or (released before times were kept) stopped later.
        instances.sort_by_key(|i| std::cmp::Reverse((i.released_at_ms.unwrap_or(0), i.stopped_at_index)));
        for (rank, instance) in instances.iter().enumerate() {
            let released = instance.released_at_ms.unwrap_or(0);
            if rank >= retention.keep_per_app || now_ms.saturating_sub(released) >= retention.keep_for_ms {
                forget.push((released, instance.id));
            }
        }
    }
    forget.sort();
    forget.into_iter().take(max).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{Desired, Phase};
    use crate::registry::{Command, DeploymentSpec, Host, HostId, InstanceReport, PlacedInstance, Request, Resources};
    use crate::spec::RunPolicy;
    use crate::target::Target;

    fn apply(registry: &mut Registry, command: Command) {
        let index = registry.applied_index() + 1;
        registry.apply(index, &Request { request_id: format!("r{index}"), command }).expect("applies");
    }

    /// A registry with `count` instances of `hello` on one host, placed and running.
    fn running(count: u32) -> Registry {
        let mut registry = Registry::default();
        let capacity = Resources { memory_mib: 1 << 20, vcpus: 1 << 10, instances: 1000 };
        let host = Host::up("h", "h:1", [Target::Unix], capacity);
        apply(&mut registry, Command::RegisterHost { host });
        let version = registry::AppVersion {
            app: "hello".into(),
            version: "1".into(),
            artifacts: [(Target::Unix, crate::digest::Digest::of(b"a"))].into(),
            files: vec![],
            run: RunPolicy::default(),
            constraints: Default::default(),
        };
        apply(&mut registry, Command::RegisterApp { version });
        let spec = DeploymentSpec::new("hello", "1", Target::Unix, count);
        apply(
            &mut registry,
            Command::Deploy { spec, at_ms: 0, by: "t".into(), cause: registry::RevisionCause::Deploy },
        );
        let placements = (0..count)
            .map(|slot| PlacedInstance {
                id: InstanceId::from_u64(u64::from(slot) + 1),
                slot,
                host: HostId("h".into()),
                interfaces: vec![],
            })
            .collect();
        let generation = registry.deployment("hello").unwrap().generation;
        apply(&mut registry, Command::Place { app: "hello".into(), generation, placements, at_ms: 0 });
        registry
    }

    fn report(registry: &mut Registry, ids: impl IntoIterator<Item = u64>, phase: Phase, at_ms: u64) {
        let reports = ids
            .into_iter()
            .map(|id| InstanceReport {
                id: InstanceId::from_u64(id),
                phase,
                restarts: 0,
                last_exit: None,
                message: String::new(),
                revision: at_ms,
                assignments_index: u64::MAX,
                health: Default::default(),
            })
            .collect();
        apply(registry, Command::ReportInstances { host: HostId("h".into()), reports, at_ms });
    }

    #[test]
    fn ended_instances_are_forgotten_after_the_retention_or_beyond_the_count_and_live_ones_never() {
        let mut registry = running(5);
        report(&mut registry, 1..=5, Phase::Running, 10);
        let retention = Retention { keep_for_ms: 1000, keep_per_app: 2 };
        assert!(forgettable(&registry, 1_000_000, retention, 100).is_empty(), "nothing ended");

        // Scaled to 1: slots 1-4 stop; two report it at t=100, two at t=200.
        apply(&mut registry, Command::Scale { app: "hello".into(), count: 1 });
        report(&mut registry, [2, 3], Phase::Stopped, 100);
        report(&mut registry, [4, 5], Phase::Stopped, 200);
        let ids = |list: Vec<InstanceId>| list.into_iter().map(InstanceId::as_u64).collect::<Vec<_>>();
        // Within the retention only the count applies: the two released first go.
        assert_eq!(ids(forgettable(&registry, 300, retention, 100)), [2, 3]);
        assert_eq!(ids(forgettable(&registry, 300, retention, 1)), [2], "at most max, oldest first");
        // Past it, all four.
        assert_eq!(ids(forgettable(&registry, 1200, retention, 100)), [2, 3, 4, 5]);

        let forget = forgettable(&registry, 1200, retention, 100);
        apply(&mut registry, Command::ForgetInstances { ids: forget });
        assert_eq!(registry.instances().map(|i| i.id.as_u64()).collect::<Vec<_>>(), [1]);
        assert!(registry.was_minted(InstanceId::from_u64(2)), "a forgotten ID is never reused");
        // Asked to forget what runs, the registry keeps it.
        apply(&mut registry, Command::ForgetInstances { ids: vec![InstanceId::from_u64(1)] });
        assert_eq!(registry.instance(InstanceId::from_u64(1)).unwrap().desired, Desired::Running);
    }

    #[test]
    fn an_instance_asked_to_stop_is_kept_until_its_host_reports_it_ended() {
        let mut registry = running(2);
        apply(&mut registry, Command::StopDeployment { app: "hello".into() });
        let retention = Retention { keep_for_ms: 0, keep_per_app: 0 };
        assert!(forgettable(&registry, u64::MAX, retention, 100).is_empty(), "still holding their slots");
        report(&mut registry, [1], Phase::Stopped, 5);
        assert_eq!(forgettable(&registry, 5, retention, 100), [InstanceId::from_u64(1)]);
    }
}
