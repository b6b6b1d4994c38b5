use super::*;
use crate::registry::{ReschedulePolicy, UpdatePolicy};

const EXAMPLE: &str = r#"
[app]
name = "hello"
version = "0.1.0"
targets = ["unix", "kvm"]

[requires]
commands = ["gcc", "make"]
apt = ["build-essential"]

[build.targets.unix]
build = "make unix"
artifact = "_build/hello"

[build.targets.kvm]
configure = "true"
build = "make kvm"
artifact = "_build/hello.elf"

[[files]]
name = "data"
source = "data"

[run]
memory_mib = 32
args = ["--ipv4=10.0.0.2/24", "mode=demo"]
restart = "on-failure"
restart_limit = 3
accelerator = "tcg"
"#;

fn parse(text: &str) -> Result<AppConfig, ConfigError> {
    AppConfig::parse("mirari.toml", text)
}

/// Parses `text`, expects an error, and returns (line, column, message, help).
fn error_of(text: &str) -> (usize, usize, String, Option<String>) {
    let error = parse(text).expect_err("config should be rejected");
    (error.location.line, error.location.column, error.message, error.help)
}

#[test]
fn parses_the_example() {
    let config = parse(EXAMPLE).expect("example parses");
    assert_eq!(config.name, "hello");
    assert_eq!(config.targets, [Target::Unix, Target::Kvm]);
    assert_eq!(config.requires.commands, ["gcc", "make"]);
    assert_eq!(
        config.builds[&Target::Kvm],
        TargetBuild::Command {
            configure: Some("true".into()),
            build: "make kvm".into(),
            artifact: "_build/hello.elf".into()
        }
    );
    assert_eq!(config.files[0].name, "data");
    assert_eq!(config.files[0].source_location.line, 22);
    assert_eq!(config.run.memory_mib, 32);
    assert_eq!(config.run.vcpus, 1);
    assert_eq!(config.run.boot_args, ["--ipv4=10.0.0.2/24", "mode=demo"]);
    assert_eq!(config.run.restart, RestartPolicy::OnFailure { limit: 3 });
    assert_eq!(config.run.accelerator, Accelerator::Tcg);
}

#[test]
fn unknown_target_lists_the_known_ones() {
    let text = EXAMPLE.replace(r#"targets = ["unix", "kvm"]"#, r#"targets = ["unix", "hvt"]"#);
    let (line, column, message, help) = error_of(&text);
    assert_eq!((line, column), (5, 20));
    assert_eq!(message, "unknown target `hvt`");
    assert_eq!(help.as_deref(), Some("known targets: unix, kvm, xen, freebsd, rpi, js"));
}

#[test]
fn unknown_keys_are_errors_with_their_place() {
    let text = EXAMPLE.replace("memory_mib = 32", "memory_mb = 32");
    let (line, column, message, _) = error_of(&text);
    assert_eq!((line, column), (25, 1));
    assert!(message.starts_with("unknown field `memory_mb`"), "{message}");
}

#[test]
fn syntax_errors_are_located() {
    let text = EXAMPLE.replace("vcpus", "x").replace("memory_mib = 32", "memory_mib = = 32");
    let (line, column, _, _) = error_of(&text);
    assert_eq!((line, column), (25, 14));
}

#[test]
fn wrong_types_are_located() {
    let text = EXAMPLE.replace("memory_mib = 32", "memory_mib = \"lots\"");
    let (line, column, message, _) = error_of(&text);
    assert_eq!((line, column), (25, 14));
    assert!(message.contains("invalid type"), "{message}");
}

#[test]
fn command_driver_needs_a_section_per_target() {
    let text = EXAMPLE.replace("[build.targets.kvm]", "[build.targets.xen]");
    let (line, _, message, help) = error_of(&text);
    assert_eq!(line, 15);
    assert_eq!(message, "build section for `xen`, which [app] targets does not list");
    assert!(help.unwrap().contains("add \"xen\""));

    let text = EXAMPLE.replace("build = \"make unix\"\n", "");
    let (line, _, message, _) = error_of(&text);
    assert_eq!(line, 11);
    assert_eq!(message, "[build.targets.unix] has no `build`");
}

#[test]
fn mirage_driver_fills_in_targets_and_artifacts() {
    let text = r#"
[app]
name = "www"
version = "1"
targets = ["unix", "kvm", "xen"]
[build]
driver = "mirage"
[build.targets.xen]
artifact = "dist/www.xen.gz"
"#;
    let config = parse(text).expect("mirage config parses");
    assert_eq!(
        config.builds[&Target::Kvm],
        TargetBuild::Mirage { mirage_target: "virtio".into(), artifact: "dist/www.virtio".into() }
    );
    assert_eq!(
        config.builds[&Target::Unix],
        TargetBuild::Mirage { mirage_target: "unix".into(), artifact: "dist/www".into() }
    );
    assert_eq!(
        config.builds[&Target::Xen],
        TargetBuild::Mirage { mirage_target: "xen".into(), artifact: "dist/www.xen.gz".into() }
    );
    let with_command = text.replace("artifact = \"dist/www.xen.gz\"", "build = \"make\"");
    let (_, _, message, _) = error_of(&with_command);
    assert_eq!(message, "commands only apply to driver = \"command\"");
}

#[test]
fn restart_policy_variants() {
    let with = |policy: &str| EXAMPLE.replace("restart = \"on-failure\"\nrestart_limit = 3", policy);
    assert_eq!(parse(&with("restart = \"never\"")).unwrap().run.restart, RestartPolicy::Never);
    assert_eq!(parse(&with("restart = \"always\"")).unwrap().run.restart, RestartPolicy::Always);
    assert_eq!(parse(&with("")).unwrap().run.restart, RestartPolicy::default());
    let (_, _, message, _) = error_of(&with("restart = \"never\"\nrestart_limit = 2"));
    assert_eq!(message, "`restart_limit` does not apply to restart = \"never\"");
    let (line, column, message, _) = error_of(&with("restart = \"sometimes\""));
    assert_eq!((line, column), (27, 11));
    assert_eq!(message, "unknown restart policy `sometimes`");
}

#[test]
fn rejects_bad_values_where_they_are() {
    let cases = [
        ("name = \"hello\"", "name = \"Hello World\"", "invalid app name `Hello World`"),
        ("memory_mib = 32", "memory_mib = 0", "`memory_mib` = 0 is out of range"),
        ("\"mode=demo\"", "\"mode demo\"", "boot argument is empty or contains whitespace"),
        ("\"gcc\"", "\"gcc; rm -rf /\"", "invalid command name `gcc; rm -rf /`"),
        ("source = \"data\"", "source = \"../etc\"", "source `../etc` leaves the app directory"),
        ("accelerator = \"tcg\"", "accelerator = \"hvf\"", "unknown accelerator `hvf`"),
        ("targets = [\"unix\", \"kvm\"]", "targets = []", "no targets listed"),
        ("targets = [\"unix\", \"kvm\"]", "targets = [\"kvm\", \"kvm\"]", "target `kvm` is listed twice"),
        ("version = \"0.1.0\"", "version = \"0.1 beta\"", "invalid app version"),
        ("restart_limit = 3", "restart_limit = 1001", "`restart_limit` = 1001 is out of range"),
    ];
    for (from, to, expected) in cases {
        let (_, _, message, _) = error_of(&EXAMPLE.replace(from, to));
        assert_eq!(message, expected, "replacing {from} with {to}");
    }
}

#[test]
fn boot_arguments_are_bounded() {
    let many: Vec<String> = (0..=limits::MAX_BOOT_ARGS).map(|i| format!("\"a{i}\"")).collect();
    let text = EXAMPLE.replace("\"mode=demo\"", &many.join(", "));
    let (_, _, message, _) = error_of(&text);
    assert_eq!(message, format!("more than {} boot arguments", limits::MAX_BOOT_ARGS));
    let long = "x".repeat(limits::MAX_BOOT_ARGS_BYTES);
    let (line, _, message, help) = error_of(&EXAMPLE.replace("mode=demo", &long));
    assert_eq!(message, format!("the boot arguments are longer than {} bytes", limits::MAX_BOOT_ARGS_BYTES));
    assert_eq!((line, help.as_deref()), (26, Some("put long settings in a file image instead")));
}

#[test]
fn networks_health_and_templates_are_read() {
    let text = EXAMPLE.replace("\"--ipv4=10.0.0.2/24\"", "\"--ipv4={net.service.cidr}\"")
        + "\n[[network]]\nname = \"service\"\n\n[health]\nhttp = { port = 8080, path = \"/ready\" }\ngrace_secs = 0\n";
    let config = parse(&text).unwrap();
    assert_eq!(config.run.networks, ["service"]);
    let health = config.run.health.unwrap();
    assert_eq!(health.probe, crate::health::Probe::Http { port: 8080, path: "/ready".into(), status: 200 });
    assert_eq!((health.interval_ms, health.grace_ms, health.unhealthy_after), (2_000, 0, 3));
}

#[test]
fn network_mistakes_point_at_their_place() {
    let typo = EXAMPLE.replace("\"mode=demo\"", "\"ip={net.sevice.ip}\"") + "\n[[network]]\nname = \"service\"\n";
    let (line, column, message, help) = error_of(&typo);
    assert_eq!((line, column), (26, 35), "at the brace: {message}");
    assert!(message.contains("network `sevice`, which the app does not list"), "{message}");
    assert_eq!(help.as_deref(), Some("the app's networks are: service"));

    let twice = EXAMPLE.to_owned() + "\n[[network]]\nname = \"service\"\n\n[[network]]\nname = \"service\"\n";
    assert!(error_of(&twice).2.contains("network `service` is listed twice"));
    let unnetworked = EXAMPLE.to_owned() + "\n[health]\ntcp = 80\n";
    let (_, _, message, help) = error_of(&unnetworked);
    assert_eq!(message, "[health] needs a network to probe");
    assert!(help.unwrap().contains("[[network]]"));
    let both = EXAMPLE.to_owned() + "\n[[network]]\nname = \"s\"\n\n[health]\ntcp = 80\nhttp = { port = 80 }\n";
    assert!(error_of(&both).2.contains("both `tcp` and `http`"));
    let port = EXAMPLE.to_owned() + "\n[[network]]\nname = \"s\"\n\n[health]\ntcp = 70000\n";
    assert!(error_of(&port).2.contains("`port` = 70000 is out of range"));
}

#[test]
fn update_reschedule_and_after_are_read_with_their_defaults() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!((config.update, config.reschedule), (UpdatePolicy::default(), ReschedulePolicy::default()));
    assert!(config.after.is_empty());
    let text = EXAMPLE
        .replace("targets = [\"unix\", \"kvm\"]", "targets = [\"unix\", \"kvm\"]\nafter = [\"db\", \"cache\"]")
        + "\n[update]\nmax_parallel = 2\nmin_healthy_time_secs = 3\ncanary = 1\nauto_revert = true\nshutdown_delay_secs = 0\n\n[reschedule]\nattempts = 2\ndelay_secs = 1\n";
    let config = parse(&text).unwrap();
    assert_eq!(config.after, ["db", "cache"]);
    let update = UpdatePolicy {
        max_parallel: 2,
        min_healthy_time_ms: 3_000,
        canary: 1,
        auto_revert: true,
        shutdown_delay_ms: 0,
        ..UpdatePolicy::default()
    };
    assert_eq!(config.update, update);
    assert_eq!(config.reschedule, ReschedulePolicy { attempts: 2, delay_ms: 1_000 });
}

#[test]
fn update_and_after_mistakes_point_at_their_place() {
    let (line, _, message, help) = error_of(&format!("{EXAMPLE}\n[update]\nmax_parallel = 0\n"));
    assert_eq!((line, message.as_str()), (32, "`max_parallel` = 0 is out of range"));
    assert!(help.unwrap().contains("from 1"));
    let (_, _, message, _) = error_of(&format!("{EXAMPLE}\n[update]\nmax_paralel = 2\n"));
    assert!(message.starts_with("unknown field `max_paralel`"), "{message}");
    let itself = EXAMPLE.replace("version = \"0.1.0\"", "version = \"0.1.0\"\nafter = [\"hello\"]");
    let (line, _, message, _) = error_of(&itself);
    assert_eq!((line, message.as_str()), (5, "an app cannot come after itself"));
    let (_, _, message, help) = error_of(&EXAMPLE.replace("0.1.0", "0.1#2"));
    assert_eq!(message, "invalid app version");
    assert!(help.unwrap().contains("`#`"));
}

#[test]
fn an_error_on_a_very_long_line_shows_the_part_around_it() {
    let long = format!("\"{}\", 5", "x".repeat(10_000));
    let error = parse(&EXAMPLE.replace(r#""mode=demo""#, &long)).expect_err("an integer among the args");
    assert_eq!((error.location.line, error.location.column), (26, 10_035));
    let text = error.to_string();
    assert!(text.len() < 400, "{text}");
    assert!(text.starts_with("mirari.toml:26:10035: invalid type: integer `5`, expected a string\n"), "{text}");
    assert!(text.contains("\n26 | …xxxx") && text.contains("xxxx\", 5]\n   | "), "{text}");
}
