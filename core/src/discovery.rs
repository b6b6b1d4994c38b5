//! Service discovery: the addresses that answer for an app, as the coordinators' DNS serves them.

use std::net::Ipv4Addr;

use crate::health::Health;
use crate::instance::{Desired, Phase};
use crate::registry::{InstanceEntry, Registry};

/// The addresses to answer for `app`, lowest first, without repeats, at most `limit`: the first
/// interface's address of every instance that should run, runs, and is healthy (or whose
/// version has no health check). `None` when the app has no deployment.
pub fn service_addresses(registry: &Registry, app: &str, limit: usize) -> Option<Vec<Ipv4Addr>> {
    registry.deployment(app)?;
    let mut addresses: Vec<Ipv4Addr> = registry
        .instances()
        .filter(|instance| instance.app == app && serves(registry, instance))
        .filter_map(|instance| instance.interfaces.first().map(|interface| interface.address.address))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses.truncate(limit);
    Some(addresses)
}

/// Whether the instance should get traffic: wanted, not on its way out (replaced, waiting out
/// its shutdown delay), running, and passing its checks if it has any.
fn serves(registry: &Registry, instance: &InstanceEntry) -> bool {
    let checked =
        || registry.app_version(&instance.app, &instance.version).is_none_or(|version| version.run.health.is_some());
    instance.desired == Desired::Running
        && instance.deregistered_at_ms.is_none()
        && instance.observed == Phase::Running
        && (instance.health == Health::Healthy || !checked())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::digest::Digest;
    use crate::health::{HealthCheck, Probe};
    use crate::ids::InstanceId;
    use crate::network::{Interface, Ipv4Cidr, MacAddress, Network};
    use crate::registry::{
        AppVersion, Command, DeploymentSpec, Host, HostId, HostStatus, InstanceReport, PlacedInstance, Request,
        Resources,
    };
    use crate::spec::RunPolicy;
    use crate::target::Target;

    /// Applies `commands` in order to `registry`, from index `registry.applied_index() + 1`.
    fn apply(registry: &mut Registry, commands: impl IntoIterator<Item = Command>) {
        for command in commands {
            let index = registry.applied_index() + 1;
            let request = Request { request_id: format!("req-{index}"), command };
            registry.apply(index, &request).expect("applies");
        }
    }

    fn network() -> Network {
        Network {
            name: "service".into(),
            subnet: "10.88.0.0/24".parse().unwrap(),
            gateway: Some("10.88.0.1".parse().unwrap()),
            range: None,
            dns: vec![],
        }
    }

    fn version(app: &str, version: &str, checked: bool) -> AppVersion {
        let health = checked.then_some(HealthCheck {
            probe: Probe::Tcp { port: 8080 },
            interval_ms: HealthCheck::DEFAULT_INTERVAL_MS,
            timeout_ms: HealthCheck::DEFAULT_TIMEOUT_MS,
            grace_ms: 0,
            unhealthy_after: 3,
        });
        AppVersion {
            app: app.into(),
            version: version.into(),
            artifacts: [(Target::Unix, Digest::of(b"unix"))].into(),
            files: vec![],
            run: RunPolicy { memory_mib: 64, networks: vec!["service".into()], health, ..RunPolicy::default() },
            constraints: BTreeMap::new(),
        }
    }

    fn deploy(app: &str, version: &str, count: u32) -> Command {
        let spec = DeploymentSpec::new(app, version, Target::Unix, count);
        Command::Deploy { spec, at_ms: 5, by: "test".into(), cause: crate::registry::RevisionCause::Deploy }
    }

    /// A registry with host `a` on network `service` and `app` deployed at version 1 with `count`
    /// slots, its version health-checked if `checked`.
    fn deployed(app: &str, count: u32, checked: bool) -> Registry {
        let host = Host {
            id: HostId("a".into()),
            address: "a:7070".into(),
            backends: [Target::Unix].into(),
            capacity: Resources { memory_mib: 4096, vcpus: 8, instances: 32 },
            labels: BTreeMap::new(),
            networks: ["service".to_owned()].into(),
            status: HostStatus::Up,
            registered_at_ms: 1,
            status_changed_at_ms: 1,
            drain: None,
            provider: None,
        };
        let mut registry = Registry::default();
        apply(
            &mut registry,
            [
                Command::CreateNetwork { network: network() },
                Command::RegisterHost { host },
                Command::RegisterApp { version: version(app, "1", checked) },
                deploy(app, "1", count),
            ],
        );
        registry
    }

    /// Places instance `id` of `app` in `slot` with its address at 10.88.0.`last`.
    fn place(registry: &mut Registry, app: &str, id: u64, slot: u32, last: u8) {
        let id = InstanceId::from_u64(id);
        let interface = Interface {
            network: "service".into(),
            address: Ipv4Cidr { address: Ipv4Addr::new(10, 88, 0, last), prefix: 24 },
            gateway: Some("10.88.0.1".parse().unwrap()),
            mac: MacAddress::for_instance(id, 0),
        };
        let generation = registry.deployment(app).unwrap().generation;
        let placement = PlacedInstance { id, slot, host: HostId("a".into()), interfaces: vec![interface] };
        apply(registry, [Command::Place { app: app.into(), generation, placements: vec![placement], at_ms: 9 }]);
    }

    fn report(registry: &mut Registry, id: u64, phase: Phase, health: Health) {
        let report = InstanceReport {
            id: InstanceId::from_u64(id),
            phase,
            restarts: 0,
            last_exit: None,
            message: String::new(),
            revision: 0,
            assignments_index: u64::MAX,
            health,
        };
        apply(registry, [Command::ReportInstances { host: HostId("a".into()), reports: vec![report], at_ms: 0 }]);
    }

    fn addresses(list: &[u8]) -> Option<Vec<Ipv4Addr>> {
        Some(list.iter().map(|last| Ipv4Addr::new(10, 88, 0, *last)).collect())
    }

    #[test]
    fn answers_the_healthy_running_instances_lowest_address_first() {
        let mut registry = deployed("hello", 5, true);
        for (id, last) in [(1, 9), (2, 4), (3, 6), (4, 7), (5, 8)] {
            place(&mut registry, "hello", id, id as u32 - 1, last);
        }
        report(&mut registry, 1, Phase::Running, Health::Healthy);
        report(&mut registry, 2, Phase::Running, Health::Healthy);
        report(&mut registry, 3, Phase::Running, Health::Starting);
        report(&mut registry, 4, Phase::Running, Health::Unhealthy);
        report(&mut registry, 5, Phase::Failed, Health::Healthy);
        assert_eq!(service_addresses(&registry, "hello", 64), addresses(&[4, 9]));
        assert_eq!(service_addresses(&registry, "hello", 1), addresses(&[4]));
    }

    #[test]
    fn without_a_health_check_every_running_instance_answers() {
        let mut registry = deployed("hello", 2, false);
        place(&mut registry, "hello", 1, 0, 5);
        place(&mut registry, "hello", 2, 1, 3);
        report(&mut registry, 1, Phase::Running, Health::None);
        report(&mut registry, 2, Phase::Starting, Health::None);
        assert_eq!(service_addresses(&registry, "hello", 64), addresses(&[5]));
    }

    #[test]
    fn an_instance_asked_to_stop_no_longer_answers() {
        let mut registry = deployed("hello", 2, false);
        place(&mut registry, "hello", 1, 0, 5);
        place(&mut registry, "hello", 2, 1, 6);
        report(&mut registry, 1, Phase::Running, Health::None);
        report(&mut registry, 2, Phase::Running, Health::None);
        apply(&mut registry, [deploy("hello", "1", 1)]);
        assert_eq!(service_addresses(&registry, "hello", 64), addresses(&[5]));
    }

    #[test]
    fn a_deployed_app_with_nothing_healthy_answers_nothing_and_an_unknown_app_is_unknown() {
        let mut registry = deployed("hello", 1, true);
        place(&mut registry, "hello", 1, 0, 5);
        report(&mut registry, 1, Phase::Running, Health::Starting);
        assert_eq!(service_addresses(&registry, "hello", 64), Some(vec![]));
        assert_eq!(service_addresses(&registry, "other", 64), None);
    }

    #[test]
    fn other_apps_instances_are_not_answered() {
        let mut registry = deployed("hello", 1, false);
        apply(&mut registry, [Command::RegisterApp { version: version("db", "1", false) }, deploy("db", "1", 1)]);
        place(&mut registry, "hello", 1, 0, 5);
        place(&mut registry, "db", 2, 0, 6);
        report(&mut registry, 1, Phase::Running, Health::None);
        report(&mut registry, 2, Phase::Running, Health::None);
        assert_eq!(service_addresses(&registry, "hello", 64), addresses(&[5]));
        assert_eq!(service_addresses(&registry, "db", 64), addresses(&[6]));
    }
}
