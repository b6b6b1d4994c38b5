//! The serde shape of `mirari.toml`, exactly as written. Unknown keys are errors.
//!
//! Values that are checked after parsing keep their span so the check can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub app: RawApp,
    #[serde(default)]
    pub requires: RawRequires,
    #[serde(default)]
    pub build: RawBuild,
    #[serde(default)]
    pub files: Vec<RawFiles>,
    #[serde(default)]
    pub run: RawRun,
    #[serde(default)]
    pub network: Vec<RawNetwork>,
    pub health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    pub update: RawUpdate,
    #[serde(default)]
    pub reschedule: RawReschedule,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpdate {
    pub max_parallel: Option<Spanned<i64>>,
    pub min_healthy_time_secs: Option<Spanned<i64>>,
    pub healthy_deadline_secs: Option<Spanned<i64>>,
    pub canary: Option<Spanned<i64>>,
    pub auto_promote: Option<bool>,
    pub auto_revert: Option<bool>,
    pub shutdown_delay_secs: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReschedule {
    pub attempts: Option<Spanned<i64>>,
    pub delay_secs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub tcp: Option<Spanned<i64>>,
    pub http: Option<Spanned<RawHttpCheck>>,
    pub interval_secs: Option<Spanned<i64>>,
    pub timeout_secs: Option<Spanned<i64>>,
    pub grace_secs: Option<Spanned<i64>>,
    pub unhealthy_after: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpCheck {
    pub port: Spanned<i64>,
    pub path: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    pub targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequires {
    #[serde(default)]
    pub commands: Vec<Spanned<String>>,
    #[serde(default)]
    pub apt: Vec<Spanned<String>>,
    #[serde(default)]
    pub opam: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuild {
    pub driver: Option<Spanned<String>>,
    #[serde(default)]
    pub targets: BTreeMap<Spanned<String>, Spanned<RawTargetBuild>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTargetBuild {
    pub configure: Option<Spanned<String>>,
    pub build: Option<Spanned<String>>,
    pub artifact: Option<Spanned<String>>,
    pub mirage_target: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub name: Spanned<String>,
    pub source: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    pub memory_mib: Option<Spanned<i64>>,
    pub vcpus: Option<Spanned<i64>>,
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
    pub restart_limit: Option<Spanned<i64>>,
    pub accelerator: Option<Spanned<String>>,
    pub stop_timeout_secs: Option<Spanned<i64>>,
}
