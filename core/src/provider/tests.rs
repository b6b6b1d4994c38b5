use super::*;
use crate::digest::Digest;
use crate::registry::{AppVersion, Command, DeploymentSpec, PlacedInstance, Request, RevisionCause};
use crate::spec::RunPolicy;
use crate::target::Target;

const AWS: &str = "aws1";

struct World {
    registry: Registry,
    index: u64,
}

impl World {
    /// `count` instances of hello on provider aws1, placed, none launched yet.
    fn placed(count: u32) -> Self {
        let mut world = Self { registry: Registry::default(), index: 0 };
        world.apply(Command::AddProvider {
            name: aws(),
            provider: Provider::ec2("us-east-1", "t3.micro", 8),
            at_ms: 1,
        });
        let version = AppVersion {
            app: "hello".into(),
            version: "1".into(),
            artifacts: [(Target::Kvm, Digest::of(b"kernel"))].into(),
            files: vec![],
            run: RunPolicy::default(),
            constraints: Default::default(),
        };
        world.apply(Command::RegisterApp { version });
        let spec =
            DeploymentSpec { provider: Some(AWS.into()), ..DeploymentSpec::new("hello", "1", Target::Kvm, count) };
        world.apply(Command::Deploy { spec, at_ms: 2, by: "test".into(), cause: RevisionCause::Deploy });
        let placements =
            (0..count).map(|slot| PlacedInstance { id: id(slot), slot, host: aws(), interfaces: vec![] }).collect();
        world.apply(Command::Place { app: "hello".into(), generation: 1, placements, at_ms: 3 });
        world
    }

    fn apply(&mut self, command: Command) {
        self.index += 1;
        let request = Request { request_id: format!("r{}", self.index), command };
        self.registry.apply(self.index, &request).expect("applies");
    }

    fn reconcile(&self, machines: &[Machine]) -> Plan {
        reconcile(&self.registry, &aws(), machines, &BTreeMap::new())
    }

    /// Reconciles and applies the reports, as the leader does.
    fn step(&mut self, machines: &[Machine]) -> Plan {
        let plan = self.reconcile(machines);
        self.apply(Command::ReportInstances { host: aws(), reports: plan.reports.clone(), at_ms: 10 });
        plan
    }

    fn phase(&self, slot: u32) -> (Phase, String) {
        let instance = self.registry.instance(id(slot)).expect("known");
        (instance.observed, instance.message.clone())
    }
}

fn aws() -> HostId {
    HostId(AWS.into())
}

fn id(slot: u32) -> InstanceId {
    InstanceId::from_u64(100 + u64::from(slot))
}

fn machine(cloud_id: &str, slot: Option<u32>, state: MachineState) -> Machine {
    Machine { cloud_id: cloud_id.into(), instance: slot.map(id), state, reason: None }
}

#[test]
fn each_instance_gets_one_machine_whose_state_it_reports() {
    let mut world = World::placed(2);
    let plan = world.step(&[]);
    assert_eq!(plan.launch, [id(0), id(1)]);
    assert!(plan.terminate.is_empty());
    assert_eq!(world.phase(0), (Phase::Pending, "launching a machine".into()));

    // Nothing changed: nothing launched twice in one round's plan is possible, and nothing is
    // reported again.
    let machines = [machine("i-1", Some(0), MachineState::Pending), machine("i-2", Some(1), MachineState::Running)];
    let plan = world.step(&machines);
    assert!(plan.launch.is_empty());
    assert_eq!(world.phase(0), (Phase::Starting, "i-1 pending".into()));
    assert_eq!(world.phase(1), (Phase::Running, "i-2 running".into()));
    assert!(world.reconcile(&machines).reports.is_empty(), "unchanged states are not reported again");
}

#[test]
fn duplicates_and_orphans_are_terminated_and_gone_orphans_left_alone() {
    let world = World::placed(1);
    let machines = [
        machine("i-1", Some(0), MachineState::Running),
        machine("i-2", Some(0), MachineState::Pending),
        // A leftover of an instance the registry never had, one without the tag, one gone.
        machine("i-3", Some(7), MachineState::Running),
        machine("i-4", None, MachineState::Running),
        machine("i-5", Some(8), MachineState::Terminated),
    ];
    let plan = world.reconcile(&machines);
    assert!(plan.launch.is_empty());
    let mut terminate = plan.terminate.clone();
    terminate.sort();
    assert_eq!(terminate, ["i-2", "i-3", "i-4"]);
}

#[test]
fn a_machine_terminated_outside_mirari_fails_its_instance_whose_slot_is_filled_again() {
    let mut world = World::placed(1);
    world.step(&[machine("i-1", Some(0), MachineState::Running)]);
    let gone = Machine {
        reason: Some("Client.UserInitiatedShutdown".into()),
        ..machine("i-1", Some(0), MachineState::Terminated)
    };
    let plan = world.step(std::slice::from_ref(&gone));
    assert!(plan.launch.is_empty(), "a new instance fills the slot, not a new machine for the old one");
    assert_eq!(plan.reports[0].phase, Phase::Failed);
    assert_eq!(plan.reports[0].message, "i-1 was terminated outside Mirari (Client.UserInitiatedShutdown)");
    // Failed for good, it was asked to stop: the next round confirms its end, which frees the slot.
    let instance = world.registry.instance(id(0)).unwrap();
    assert_eq!(instance.desired, Desired::Stopped);
    assert!(!instance.released);
    world.step(&[gone]);
    assert!(world.registry.instance(id(0)).unwrap().released);
    assert_eq!(world.registry.empty_slot_count("hello", "1", 1), 1);
}

#[test]
fn an_instance_asked_to_stop_has_its_machine_terminated_then_is_released() {
    let mut world = World::placed(2);
    let running = [machine("i-1", Some(0), MachineState::Running), machine("i-2", Some(1), MachineState::Running)];
    world.step(&running);
    world.apply(Command::Scale { app: "hello".into(), count: 1 });
    let plan = world.step(&running);
    assert_eq!(plan.terminate, ["i-2"]);
    assert_eq!(world.phase(1), (Phase::Stopping, "terminating i-2".into()));
    let plan = world.step(&[running[0].clone(), machine("i-2", Some(1), MachineState::ShuttingDown)]);
    assert!(plan.terminate.is_empty(), "a machine shutting down is not terminated again");
    assert_eq!(world.phase(1), (Phase::Stopped, "terminated".into()));
    assert!(world.registry.instance(id(1)).unwrap().released);
    assert_eq!(world.registry.placed_on(&aws()).count(), 1);
}

#[test]
fn a_failing_launch_says_why_in_its_instance() {
    let world = World::placed(1);
    let failing = BTreeMap::from([(id(0), "AuthFailure: AWS was not able to validate the credentials".to_owned())]);
    let plan = reconcile(&world.registry, &aws(), &[], &failing);
    assert_eq!(plan.launch, [id(0)]);
    assert_eq!(
        plan.reports[0].message,
        "launch failed, retrying: AuthFailure: AWS was not able to validate the credentials"
    );
}

#[test]
fn operators_input_is_checked_with_the_field_at_fault() {
    let ok = Provider::ec2("eu-central-2", "t3.micro", 4);
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(ok.capacity(), Resources { memory_mib: 4096, vcpus: 8, instances: 4 });
    for good in ["us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "il-central-1"] {
        assert_eq!(validate_region(good), Ok(()), "{good}");
    }
    for bad in ["", "us-east", "useast1", "US-EAST-1", "u-east-1", "us--1", "us-east-1a", "us-east-", "-east-1"] {
        let error = Provider::ec2(bad, "t3.micro", 1).validate().expect_err(bad);
        assert!(error.contains(&format!("`{bad}`")) && error.contains("us-east-1"), "{error}");
    }
    assert_eq!(Provider::ec2("us-east-1", "t3.micro", 0).validate(), Err("--max-instances must be at least 1".into()));
    assert!(Provider::ec2("us-east-1", "t3.micro", 20_000).validate().unwrap_err().contains("above the limit"));
    assert!(
        Provider::ec2("us-east-1", "x9.huge", 1).validate().unwrap_err().starts_with("unknown instance type `x9.huge`")
    );
    for (bad, expected) in [
        (Provider { endpoint: Some("localhost:5000".into()), ..ok.clone() }, "endpoint `localhost:5000` is not a URL"),
        (Provider { endpoint: Some("http://".into()), ..ok.clone() }, "endpoint `http://` is not a URL"),
        (Provider { subnet: Some("sub-1".into()), ..ok.clone() }, "`sub-1` is not a subnet ID"),
        (Provider { security_groups: vec!["default".into()], ..ok.clone() }, "`default` is not a security group ID"),
        (Provider { tags: [("mirari:app".into(), "x".into())].into(), ..ok.clone() }, "`mirari:` are reserved"),
        (Provider { tags: [("aws:owner".into(), "x".into())].into(), ..ok.clone() }, "`aws:` are reserved"),
        (Provider { tags: [("team".into(), "v".repeat(257))].into(), ..ok.clone() }, "at most 256"),
        (Provider { tags: (0..41).map(|i| (format!("k{i}"), String::new())).collect(), ..ok }, "41 tags"),
    ] {
        assert!(bad.validate().unwrap_err().contains(expected), "{bad:?}");
    }
    assert!(check_name("aws1").is_ok());
    assert!(check_name("1aws").is_err() && check_name("").is_err() && check_name("AWS").is_err());
}

#[test]
fn a_provider_is_no_agent_host_and_an_agent_host_no_provider() {
    let mut world = World::placed(0);
    let agent = crate::registry::Host::up(AWS, "10.0.0.1:7000", [Target::Kvm], Resources::default());
    let request = Request { request_id: "agent".into(), command: Command::RegisterHost { host: agent.clone() } };
    assert_eq!(world.registry.apply(99, &request), Err(crate::registry::Rejection::IsAProvider(aws())));
    let other = crate::registry::Host { id: HostId("h1".into()), ..agent };
    world.apply(Command::RegisterHost { host: other });
    let provider = Provider::ec2("us-east-1", "t3.micro", 1);
    let request = Request {
        request_id: "p".into(),
        command: Command::AddProvider { name: HostId("h1".into()), provider, at_ms: 1 },
    };
    assert_eq!(world.registry.apply(100, &request), Err(crate::registry::Rejection::NotAProvider(HostId("h1".into()))));
}
