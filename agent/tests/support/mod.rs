//! What the agent's integration tests share: the example app built once per test binary, a
//! shim launcher, and reading a console until a line shows up.
//!
//! The paths come from cargo at compile time. A test binary copied to another machine (the
//! xen subject of the conformance suite runs inside a Xen dom0, see `tests/tests/xen.rs`) is
//! told where things are there instead, by environment variables read only when set:
//!
//! | variable | what | default |
//! | --- | --- | --- |
//! | `MIRARI_EXAMPLE_DIR` | the `examples/hello` sources | the workspace's |
//! | `MIRARI_EXAMPLE_GOALS` | the `make` goals built, space-separated | `unix kvm js xen` |
//! | `MIRARI_AGENT_BIN` | the `mirari-agent` binary (the shim, the fence keeper) | cargo's build of it |
//! | `MIRARI_TEST_SCRATCH` | where the example is built | `CARGO_TARGET_TMPDIR` |

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use mirari_agent::backends::{Backend, Launch};
use mirari_agent::supervisor::client::ShimLauncher;
use mirari_core::digest::Digest;
use mirari_core::ids::InstanceId;
use mirari_core::spec::{Accelerator, InstanceSpec, RestartPolicy, RunPolicy};
use mirari_core::target::Target;

/// How long a check waits for console output before failing (TCG boots in well under a
/// second; software KVM spends several seconds in the BIOS).
pub const CONSOLE_DEADLINE: Duration = Duration::from_secs(60);

/// The example app, built once per test binary (in a directory of its own, so test binaries
/// running at once do not build over each other).
pub struct Example {
    /// The unix executable.
    pub unix: PathBuf,
    /// The multiboot kernel.
    pub kernel: PathBuf,
    /// The Xen PVH kernel.
    pub xen: PathBuf,
    /// The JavaScript bundle for node.
    pub js: PathBuf,
    /// The arm64 Image for U-Boot.
    pub rpi: PathBuf,
    /// The `data/` directory as a ustar image.
    pub image: PathBuf,
}

/// `variable`'s value if it is set, else `default` (see the module docs).
fn overridden(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

pub fn example() -> &'static Example {
    static BUILT: OnceLock<Example> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root =
            PathBuf::from(overridden("MIRARI_EXAMPLE_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello")));
        let out =
            Path::new(&overridden("MIRARI_TEST_SCRATCH", env!("CARGO_TARGET_TMPDIR"))).join(env!("CARGO_CRATE_NAME"));
        let build = out.join("hello");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&build).unwrap();
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(root.join("src"))
            .arg(root.join("Makefile"))
            .arg(&build)
            .status()
            .unwrap();
        assert!(status.success());
        let jobs = std::thread::available_parallelism().map_or(1, usize::from);
        let status = std::process::Command::new("make")
            .arg("-s")
            .arg(format!("-j{jobs}"))
            .arg("-C")
            .arg(&build)
            .args(overridden("MIRARI_EXAMPLE_GOALS", "unix kvm js xen rpi").split_whitespace())
            .status()
            .unwrap();
        assert!(status.success(), "building the example failed");
        let image = out.join("files.tar");
        let status = std::process::Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&image)
            .arg("-C")
            .arg(root.join("data"))
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        Example {
            unix: build.join("_build/hello"),
            kernel: build.join("_build/hello.elf"),
            xen: build.join("_build/hello-xen.elf"),
            js: build.join("_build/hello.js"),
            rpi: build.join("_build/hello-rpi.img"),
            image,
        }
    })
}

/// The `mirari-agent` binary: the shim of the shimmed backends, the xen backend's fence keeper.
pub fn agent_program() -> PathBuf {
    overridden("MIRARI_AGENT_BIN", env!("CARGO_BIN_EXE_mirari-agent")).into()
}

/// How much of each instance's console a backend keeps.
pub const CONSOLE_BYTES: usize = 64 * 1024;

pub fn launcher() -> ShimLauncher {
    ShimLauncher { program: agent_program(), console_bytes: CONSOLE_BYTES }
}

/// A launch of the example as instance `id` of `target` in `dir`, with the image and `args`
/// as boot arguments, never restarted, and no network interfaces.
pub fn launch(target: Target, id: InstanceId, dir: &Path, args: &[&str], accelerator: Accelerator) -> Launch {
    let example = example();
    // The stand-in bhyve of the freebsd backend's tests runs the unix build as its guest.
    let artifact = match target {
        Target::Unix | Target::Freebsd => &example.unix,
        Target::Js => &example.js,
        Target::Rpi => &example.rpi,
        Target::Xen => &example.xen,
        _ => &example.kernel,
    };
    Launch {
        id,
        dir: dir.to_owned(),
        artifact: artifact.clone(),
        files: vec![example.image.clone()],
        fence: None,
        bridges: vec![],
        spec: InstanceSpec {
            app: "hello".into(),
            version: "1".into(),
            target,
            artifact: Digest::of(b"unused by backends"),
            files: vec![],
            run: RunPolicy {
                memory_mib: 32,
                boot_args: args.iter().map(|a| a.to_string()).collect(),
                restart: RestartPolicy::Never,
                accelerator,
                ..RunPolicy::default()
            },
            interfaces: vec![],
        },
    }
}

/// Reads the console until `needle` shows up; returns everything read.
pub async fn console_until(backend: &dyn Backend, launch: &Launch, needle: &str) -> String {
    let mut seen = String::new();
    let read = async {
        let mut frames = backend.console(launch, 0).await.expect("console opens");
        while let Some(frame) = frames.next().await {
            seen.push_str(&String::from_utf8_lossy(&frame.data));
            if seen.contains(needle) {
                return;
            }
        }
    };
    let found = tokio::time::timeout(CONSOLE_DEADLINE, read).await.is_ok() && seen.contains(needle);
    assert!(found, "console never showed {needle:?}; it showed:\n{seen}");
    seen
}
