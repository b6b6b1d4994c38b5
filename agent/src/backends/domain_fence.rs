//! The fencing backstop for Xen domains (`mirari-agent domain-fence`), which no shim parents.
//!
//! A cluster instance's shim kills its payload once the host's fencing deadline has passed
//! (`crate::supervisor::fence`), so a dead or frozen agent's instances do not outlive its
//! lease. A Xen domain runs in the hypervisor, parented by nothing, so the Xen backend starts
//! this small process beside each cluster domain instead: it reads the same deadline file and
//! destroys the domain once the deadline has passed, and it ends when the domain does. It names
//! itself `mirari-fence`, so signals meant for the agent (`pkill -x mirari-agent`) miss it; a
//! restarted agent starts it again for the domains it re-adopts if it is gone.

use std::path::PathBuf;
use std::time::Duration;

use mirari_core::clock;

use super::xenstore::Xenstore;
use crate::supervisor::fence;

/// How often it asks whether its domain still exists.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// Arguments of `mirari-agent domain-fence`; the Xen backend builds them.
#[derive(Debug, Clone, clap::Args)]
pub struct DomainFenceArgs {
    /// The host's fencing deadline file.
    #[arg(long)]
    pub fence_file: PathBuf,
    /// The domain, by ID: a restarted instance's next domain has the same name, not this ID.
    #[arg(long)]
    pub domid: u32,
    #[arg(long, default_value = "xl")]
    pub xl: PathBuf,
}

/// What the keeper does after a look at the deadline and the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Wait,
    Destroy,
    /// The domain is gone: nothing is left to fence.
    End,
}

/// `deadline` is the last one read; with none ever read, the domain is fenced at once (as a
/// shim fences its payload: no deadline means no lease).
fn next(now_boot_ms: u64, deadline: Option<u64>, domain_exists: Option<bool>) -> Next {
    match domain_exists {
        Some(false) => Next::End,
        _ if fence::passed(now_boot_ms, deadline) => Next::Destroy,
        _ => Next::Wait,
    }
}

/// Runs until the domain is gone, destroying it once the deadline passes.
pub fn run(args: DomainFenceArgs) -> anyhow::Result<()> {
    let _ = nix::sys::prctl::set_name(c"mirari-fence");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(keep(args));
    Ok(())
}

async fn keep(args: DomainFenceArgs) {
    let mut deadline = None;
    let mut xenstore = None;
    let mut asked_at = None::<tokio::time::Instant>;
    let mut exists = None;
    loop {
        deadline = fence::read(&args.fence_file).or(deadline);
        if asked_at.is_none_or(|at| at.elapsed() >= LIVENESS_EVERY) {
            asked_at = Some(tokio::time::Instant::now());
            if xenstore.is_none() {
                xenstore = Xenstore::connect_default().await.ok();
            }
            // Unknown while xenstore does not answer: the deadline still counts.
            exists = match &xenstore {
                Some(store) => match store.read(&format!("/local/domain/{}/name", args.domid)).await {
                    Ok(name) => Some(name.is_some()),
                    Err(_) => {
                        xenstore = None;
                        None
                    }
                },
                None => None,
            };
        }
        match next(clock::boot_ms(), deadline, exists) {
            Next::End => return,
            Next::Wait => {}
            Next::Destroy => {
                let started = clock::boot_ms();
                let destroyed = tokio::process::Command::new(&args.xl)
                    .args(["destroy", &args.domid.to_string()])
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success());
                // Its log (stderr) is the instance directory's domain-fence.log.
                eprintln!(
                    "mirari-fence: the fencing deadline {deadline:?} passed at {started} ms (boot clock); xl destroy {} {} \
                     after {} ms",
                    args.domid,
                    if destroyed { "succeeded" } else { "failed" },
                    clock::boot_ms() - started
                );
                if destroyed {
                    return;
                }
                // Gone already, or xl failed: the next look says which.
                asked_at = None;
            }
        }
        tokio::time::sleep(fence::POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroys_once_the_deadline_passed_and_ends_with_the_domain() {
        assert_eq!(next(999, Some(1_000), Some(true)), Next::Wait);
        assert_eq!(next(1_000, Some(1_000), Some(true)), Next::Destroy);
        assert_eq!(next(999, None, Some(true)), Next::Destroy, "no deadline, no lease");
        assert_eq!(next(2_000, Some(1_000), None), Next::Destroy, "xenstore silent: the deadline counts");
        assert_eq!(next(2_000, Some(1_000), Some(false)), Next::End);
        assert_eq!(next(0, Some(1_000), Some(false)), Next::End);
    }
}
