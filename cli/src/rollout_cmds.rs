//! `mirari cluster promote`, `history`, `rollback` and `hosts drain|eligible|remove`, and
//! following a rollout until it is done: changing what runs without downtime.
//!
//! The rollout itself is the leader's ([`mirari_core::rollout`]); these commands ask for it and
//! watch it through the cluster status.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use mirari_core::registry::{Command, Drain, HostId, Request, RevisionCause};
use mirari_proto::coordinator as pb;
use serde::Serialize;

use crate::coordinators::Coordinators;
use crate::deploy::{self, DeploymentView, InstanceFilter, StatusQuery, StatusView};
use crate::output::{self, Format, Table};
use crate::progress::Progress;

const POLL: Duration = Duration::from_millis(500);

/// A version change under way, as `cluster status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub version: String,
    pub awaiting_promotion: bool,
    pub failed: Option<String>,
    pub outdated: u32,
    pub replacements: u32,
    pub settled: u32,
    pub canary: u32,
}

impl From<&pb::RolloutStatus> for RolloutView {
    fn from(r: &pb::RolloutStatus) -> Self {
        Self {
            version: r.version.clone(),
            awaiting_promotion: r.awaiting_promotion,
            failed: (!r.failed.is_empty()).then(|| r.failed.clone()),
            outdated: r.outdated,
            replacements: r.replacements,
            settled: r.settled,
            canary: r.canary,
        }
    }
}

impl RolloutView {
    /// "to 0.2.0: 2 outdated, 1 replacement (0 healthy)", "failed: ...", "awaiting promotion".
    pub fn describe(&self) -> String {
        if let Some(failed) = &self.failed {
            return format!("to {} failed: {failed}", self.version);
        }
        let waiting = if self.awaiting_promotion { ", awaiting promotion" } else { "" };
        format!(
            "to {}: {} outdated, {} replacing ({} healthy){waiting}",
            self.version, self.outdated, self.replacements, self.settled
        )
    }
}

/// One deployed version, as `cluster history` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionView {
    pub version: String,
    pub label: String,
    pub digest: String,
    pub target: String,
    pub artifact: String,
    pub files: Vec<(String, String)>,
    pub deployed_at_ms: u64,
    pub by: String,
    pub cause: String,
    pub reverted_from: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub ended_at_ms: Option<u64>,
}

impl From<&pb::RevisionStatus> for RevisionView {
    fn from(r: &pb::RevisionStatus) -> Self {
        Self {
            version: r.version.clone(),
            label: r.label.clone(),
            digest: r.digest.clone(),
            target: r.target.clone(),
            artifact: r.artifact.clone(),
            files: r.files.iter().map(|f| (f.name.clone(), f.sha256.clone())).collect(),
            deployed_at_ms: r.deployed_at_ms,
            by: r.by.clone(),
            cause: r.cause.clone(),
            reverted_from: (!r.reverted_from.is_empty()).then(|| r.reverted_from.clone()),
            outcome: r.outcome.clone(),
            reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
            ended_at_ms: (r.ended_at_ms != 0).then_some(r.ended_at_ms),
        }
    }
}

fn deployment<'a>(status: &'a StatusView, app: &str) -> anyhow::Result<&'a DeploymentView> {
    status.deployments.iter().find(|d| d.app == app).with_context(|| format!("`{app}` is not deployed"))
}

/// Follows a rollout to `version` until every slot runs it healthy (success), its canaries are
/// healthy and wait for `cluster promote` (success, said so), it failed (failure, with the
/// revert if one followed), or time is up.
pub async fn await_rollout(
    coordinators: &mut Coordinators,
    app: &str,
    version: &str,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let mut last_line = String::new();
    let progress = Progress::waiting(&format!("==> waiting for {app}@{version} to run in every slot"));
    loop {
        let status = deploy::fetch_summary(coordinators, false).await?;
        let deployment = deployment(&status, app)?;
        let entry = deployment.history.iter().rev().find(|r| r.version == version);
        let line = deploy::progress_line(deployment);
        if line != last_line {
            progress.status(&line);
            last_line = line;
        }
        // Every slot runs (healthy, with a health check): a deploy that only changed the count
        // waits for that too.
        let ready = deployment.healthy.unwrap_or(deployment.running) >= deployment.desired_count
            && deployment.placed >= deployment.desired_count;
        let outcome = match (entry.map(|e| e.outcome.as_str()), &deployment.rollout) {
            (Some("promoted"), None) if ready => {
                progress.println(&format!("==> {app}@{version} runs in every slot, healthy"));
                Some(ExitCode::SUCCESS)
            }
            (Some("reverted"), _) => {
                let reason = entry.and_then(|e| e.reason.clone()).unwrap_or_default();
                progress.println(&format!(
                    "error: the update to {version} failed ({reason}); reverted to {}",
                    deployment.version
                ));
                Some(ExitCode::FAILURE)
            }
            (Some("failed"), _) => {
                let reason = entry.and_then(|e| e.reason.clone()).unwrap_or_default();
                progress.println(&format!("error: the update to {version} failed: {reason}"));
                progress.println(&format!("hint: deploy a fix, or go back with `mirari cluster rollback {app}`"));
                Some(ExitCode::FAILURE)
            }
            (Some("superseded"), _) => {
                progress
                    .println(&format!("==> another version of {app} was deployed meanwhile: {}", deployment.version));
                Some(ExitCode::FAILURE)
            }
            (_, Some(rollout))
                if rollout.awaiting_promotion
                    && rollout.replacements >= rollout.canary.min(rollout.outdated)
                    && rollout.settled == rollout.replacements =>
            {
                progress.println(&format!(
                    "==> {} canary instance(s) of {app}@{version} are healthy beside the old ones; \
                     finish with `mirari cluster promote {app}`",
                    rollout.settled
                ));
                Some(ExitCode::SUCCESS)
            }
            _ => None,
        };
        let timed_out = outcome.is_none() && Instant::now() >= deadline;
        if outcome.is_some() || timed_out {
            progress.clear();
            deploy::show(coordinators, status, false, &StatusQuery::default(), format).await?;
        }
        if let Some(code) = outcome {
            return Ok(code);
        }
        anyhow::ensure!(!timed_out, "the rollout of {app}@{version} did not finish within {timeout:?}: {last_line}");
        tokio::time::sleep(POLL).await;
    }
}

pub async fn promote(
    coordinators: &mut Coordinators,
    app: &str,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let command = Command::Promote { app: app.to_owned() };
    deploy::propose(coordinators, "promoting", Request { request_id: deploy::request_id("promote"), command }).await?;
    let status = deploy::fetch_summary(coordinators, false).await?;
    let version = deployment(&status, app)?.version.clone();
    eprintln!("==> promoted {app}@{version}: replacing the remaining instances");
    await_rollout(coordinators, app, &version, timeout, format).await
}

pub async fn history(coordinators: &mut Coordinators, app: &str, format: Format) -> anyhow::Result<ExitCode> {
    let status = deploy::fetch_summary(coordinators, false).await?;
    let history = &deployment(&status, app)?.history;
    let now = mirari_core::clock::wall_ms();
    output::print(format, history, |history| {
        let mut table = Table::new(&["VERSION", "DIGEST", "ARTIFACT", "TARGET", "DEPLOYED", "BY", "CAUSE", "OUTCOME"]);
        for r in history {
            let cause = match &r.reverted_from {
                Some(from) => format!("revert of {from}"),
                None => r.cause.clone(),
            };
            let outcome = match &r.reason {
                Some(reason) => format!("{}: {reason}", r.outcome),
                None => r.outcome.clone(),
            };
            table.row(vec![
                r.version.clone(),
                short(&r.digest),
                short(&r.artifact),
                r.target.clone(),
                format!("{} ago", output::age(r.deployed_at_ms, now)),
                r.by.clone(),
                cause,
                outcome,
            ]);
        }
        table
    });
    Ok(ExitCode::SUCCESS)
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// Deploys a version from the history again: `to`, or the last promoted one before the current.
pub async fn rollback(
    coordinators: &mut Coordinators,
    app: &str,
    to: Option<&str>,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let status = deploy::fetch_summary(coordinators, false).await?;
    let current = deployment(&status, app)?;
    let history = &current.history;
    let target = match to {
        Some(wanted) => history.iter().rev().find(|r| r.version == wanted || r.label == wanted).with_context(|| {
            let known: Vec<&str> = history.iter().map(|r| r.version.as_str()).collect();
            format!("`{app}` has no version `{wanted}` in its history (it has: {})", known.join(", "))
        })?,
        None => history
            .iter()
            .rev()
            .find(|r| r.outcome == "promoted" && r.version != current.version)
            .with_context(|| format!("`{app}` has no earlier healthy version to go back to"))?,
    };
    anyhow::ensure!(
        target.version != current.version,
        "`{app}` runs version {} already: nothing to roll back",
        target.version
    );
    let target_name = target.version.clone();
    let spec = mirari_core::registry::DeploymentSpec {
        version: target_name.clone(),
        target: target.target.parse()?,
        ..current.spec.clone()
    };
    eprintln!(
        "==> rolling {app} back to {target_name} (digest {}, artifact {})",
        short(&target.digest),
        short(&target.artifact)
    );
    deploy::deploy_spec(coordinators, spec, RevisionCause::Rollback).await?;
    await_rollout(coordinators, app, &target_name, timeout, format).await
}

/// Drains a host: it takes no new instances, and each of its instances is replaced elsewhere
/// (healthy there before it stops here); whatever is left at the deadline is stopped. Waits
/// until it holds nothing.
pub async fn drain(
    coordinators: &mut Coordinators,
    host: &str,
    deadline: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let now = mirari_core::clock::wall_ms();
    let deadline_ms = now.saturating_add(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX));
    let drain = Some(Drain { since_ms: now, deadline_ms });
    set_drain(coordinators, host, drain).await?;
    eprintln!(
        "==> draining {host}: its instances move elsewhere (deadline in {})",
        humantime::format_duration(deadline)
    );
    let give_up = Instant::now() + deadline + Duration::from_secs(30);
    let mut last = usize::MAX;
    let on_host = InstanceFilter { host: Some(host.to_owned()), ..Default::default() };
    loop {
        let (instances, _) = deploy::fetch_instances(coordinators, false, &on_host, None).await?;
        let left = instances.iter().filter(|i| i.observed.is_live()).count();
        if left != last {
            eprintln!("    {host}: {left} instance(s) left");
            last = left;
        }
        if left == 0 {
            eprintln!("==> {host} is drained; `mirari cluster hosts remove {host}` forgets it");
            let summary = deploy::fetch_summary(coordinators, false).await?;
            deploy::show(coordinators, summary, false, &StatusQuery::default(), format).await?;
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::ensure!(Instant::now() < give_up, "{left} instance(s) still run on {host} past its drain deadline");
        tokio::time::sleep(POLL).await;
    }
}

pub async fn eligible(coordinators: &mut Coordinators, host: &str, format: Format) -> anyhow::Result<ExitCode> {
    set_drain(coordinators, host, None).await?;
    eprintln!("==> {host} takes new instances again");
    deploy::status(coordinators, false, &StatusQuery::default(), format).await
}

async fn set_drain(coordinators: &mut Coordinators, host: &str, drain: Option<Drain>) -> anyhow::Result<()> {
    let command = Command::DrainHost { host: HostId(host.to_owned()), drain };
    let what = if drain.is_some() { format!("draining {host}") } else { format!("making {host} eligible") };
    deploy::propose(coordinators, &what, Request { request_id: deploy::request_id("drain"), command }).await?;
    Ok(())
}

pub async fn remove_host(coordinators: &mut Coordinators, host: &str, format: Format) -> anyhow::Result<ExitCode> {
    let command = Command::RemoveHost { host: HostId(host.to_owned()) };
    let what = format!("removing {host}");
    deploy::propose(coordinators, &what, Request { request_id: deploy::request_id("remove-host"), command }).await?;
    eprintln!("==> removed {host} from the registry (an agent that registers again under its name comes back)");
    deploy::status(coordinators, false, &StatusQuery::default(), format).await
}
