//! Versions, deployments and what changes them: registering a version under a name of its own,
//! deploying one (a rollout begins), promoting canaries, ending a rollout (a failed one reverts
//! to the last healthy version when the policy asks), draining and removing hosts, and what
//! reports say about health and failures. The decisions of when to do these are the leader's
//! ([`crate::rollout`]); applying them is here, deterministic like the rest of the registry.

use super::*;

/// The first time an app's version label is seen it names the version; other contents under
/// the same label are named `label#` and the first 8 hex digits of their digest.
fn version_name(versions: &BTreeMap<String, AppVersion>, label: &str, digest: crate::digest::Digest) -> String {
    if !versions.contains_key(label) {
        return label.to_owned();
    }
    let hex = digest.to_string();
    let short = format!("{label}#{}", &hex[..8]);
    if versions.contains_key(&short) { format!("{label}#{hex}") } else { short }
}

impl Registry {
    pub(super) fn register_app(&mut self, version: &AppVersion) -> ApplyResult {
        if version.artifacts.is_empty() {
            return Err(Rejection::Invalid(format!("app `{}` has no artifacts", version.app)));
        }
        if version.version.is_empty() || version.version.contains('#') {
            return Err(Rejection::Invalid(format!(
                "app `{}`: the version label `{}` must be non-empty and without `#`",
                version.app, version.version
            )));
        }
        args::check(&version.run.boot_args, &version.run.networks)
            .map_err(|e| Rejection::Invalid(format!("app `{}`: {e}", version.app)))?;
        let digest = version.digest();
        let versions = self.apps.entry(version.app.clone()).or_default();
        if let Some((name, _)) = versions.iter().find(|(_, known)| known.digest() == digest) {
            return Ok(Outcome::Registered { version: name.clone(), unchanged: true });
        }
        let name = version_name(versions, &version.version, digest);
        versions.insert(name.clone(), version.clone());
        self.forget_unused_versions(&version.app, Some(&name));
        Ok(Outcome::Registered { version: name, unchanged: false })
    }

    pub(super) fn deploy(&mut self, spec: &DeploymentSpec, at_ms: u64, by: &str, cause: &RevisionCause) -> ApplyResult {
        let version =
            self.app_version(&spec.app, &spec.version).ok_or_else(|| match self.apps.contains_key(&spec.app) {
                true => Rejection::UnknownVersion { app: spec.app.clone(), version: spec.version.clone() },
                false => Rejection::UnknownApp(spec.app.clone()),
            })?;
        let Some(&artifact) = version.artifacts.get(&spec.target) else {
            return Err(Rejection::NotBuiltFor {
                app: spec.app.clone(),
                version: spec.version.clone(),
                target: spec.target,
            });
        };
        if !spec.target.has_interfaces() && !version.run.networks.is_empty() {
            return Err(Rejection::NoInterfaces { target: spec.target, networks: version.run.networks.clone() });
        }
        if let Some(unknown) = version.run.networks.iter().find(|n| !self.networks.contains_key(*n)) {
            return Err(Rejection::UnknownNetwork(unknown.clone()));
        }
        if let Some(name) = &spec.provider {
            let host = self.hosts.get(&HostId(name.clone())).filter(|host| host.provider.is_some());
            let host = host.ok_or_else(|| Rejection::UnknownProvider(name.clone()))?;
            if !host.backends.contains(&spec.target) {
                return Err(Rejection::Invalid(format!(
                    "provider `{name}` runs {} images; deploy with -t kvm",
                    host.backends.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                )));
            }
            if !version.run.networks.is_empty() {
                return Err(Rejection::Invalid(format!(
                    "provider `{name}` carries no cluster networks, and this version has [[network]] {}",
                    version.run.networks.join(", ")
                )));
            }
        }
        if spec.update.max_parallel == 0 {
            return Err(Rejection::Invalid("the update policy's max_parallel must be at least 1".into()));
        }
        self.check_order(&spec.app, &spec.after)?;
        let revision = Revision {
            version: spec.version.clone(),
            label: version.version.clone(),
            digest: version.digest(),
            target: spec.target,
            artifact,
            files: version.files.clone(),
            deployed_at_ms: at_ms,
            by: by.to_owned(),
            cause: cause.clone(),
            outcome: RevisionOutcome::Rolling,
            ended_at_ms: None,
        };
        let previous = self.deployments.get(&spec.app).cloned();
        if let Some(known) = &previous
            && known.desired == Desired::Running
            && known.spec == *spec
        {
            return Ok(Outcome::Unchanged);
        }
        let new_version =
            previous.as_ref().is_none_or(|d| d.spec.version != spec.version || d.spec.target != spec.target);
        let retargeted = previous.as_ref().is_some_and(|d| d.spec.target != spec.target);
        let mut deployment = previous.unwrap_or_else(|| Deployment {
            spec: spec.clone(),
            desired: Desired::Running,
            generation: 0,
            created_at_ms: at_ms,
            rollout: None,
            history: Vec::new(),
            failures: BTreeMap::new(),
        });
        deployment.spec = spec.clone();
        deployment.desired = Desired::Running;
        deployment.generation += 1;
        if new_version {
            if let Some(last) = deployment.history.last_mut()
                && last.outcome == RevisionOutcome::Rolling
            {
                last.outcome = RevisionOutcome::Superseded;
                last.ended_at_ms = Some(at_ms);
            }
            deployment.history.push(revision);
            let excess = deployment.history.len().saturating_sub(crate::limits::MAX_HISTORY);
            deployment.history.drain(..excess);
            deployment.rollout = Some(Rollout {
                version: spec.version.clone(),
                started_at_ms: at_ms,
                promoted: spec.update.canary == 0,
                failed: None,
            });
            deployment.failures.clear();
        }
        self.deployments.insert(spec.app.clone(), deployment);
        self.note(EventKind::Deployed {
            app: spec.app.clone(),
            version: spec.version.clone(),
            count: spec.count,
            by: by.to_owned(),
        });
        if retargeted {
            // Slots are filled per version; another target of the same version is not a
            // replacement the rollout can pair slot by slot, so the old ones stop at once.
            let old: Vec<InstanceId> =
                self.live_of(&spec.app).filter(|i| i.target != spec.target).map(|i| i.id).collect();
            self.stop_instances(old, &format!("replaced by version {} for {}", spec.version, spec.target));
        }
        self.trim_slots(&spec.app, spec.count);
        self.forget_unused_versions(&spec.app, None);
        Ok(Outcome::Done)
    }

    /// `app` may come after the apps `after` names: each is deployed, and none of them comes
    /// (directly or through others) after `app`.
    fn check_order(&self, app: &str, after: &[String]) -> Result<(), Rejection> {
        let refuse = |dependency: &str, why: String| Rejection::Ordering {
            app: app.to_owned(),
            after: format!("`{dependency}`"),
            why,
        };
        for dependency in after {
            if dependency == app {
                return Err(refuse(dependency, "an app cannot wait for itself".into()));
            }
            if !self.deployments.contains_key(dependency) {
                return Err(refuse(dependency, format!("`{dependency}` is not deployed; deploy it first")));
            }
            // Depth-first along the dependencies' own `after`, looking for `app`.
            let mut stack = vec![vec![dependency.clone()]];
            let mut seen = BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = path.last().expect("paths are never empty");
                if !seen.insert(last.clone()) {
                    continue;
                }
                for next in self.deployments.get(last).map(|d| d.spec.after.as_slice()).unwrap_or_default() {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    if next == app {
                        let cycle = std::iter::once(app.to_owned()).chain(longer).collect::<Vec<_>>().join(" -> ");
                        return Err(refuse(dependency, format!("that makes a cycle: {cycle}")));
                    }
                    stack.push(longer);
                }
            }
        }
        Ok(())
    }

    pub(super) fn promote(&mut self, app: &str) -> ApplyResult {
        let deployment = self.deployments.get_mut(app).ok_or_else(|| Rejection::NotDeployed(app.to_owned()))?;
        match &mut deployment.rollout {
            Some(rollout) if !rollout.promoted && rollout.failed.is_none() => {
                rollout.promoted = true;
                self.note(EventKind::Promoted { app: app.to_owned() });
                Ok(Outcome::Done)
            }
            _ => Err(Rejection::NothingToPromote(app.to_owned())),
        }
    }

    pub(super) fn finish_rollout(
        &mut self,
        app: &str,
        version: &str,
        failure: Option<&str>,
        at_ms: u64,
    ) -> ApplyResult {
        let deployment = self.deployments.get(app).ok_or_else(|| Rejection::NotDeployed(app.to_owned()))?;
        if !deployment.rollout.as_ref().is_some_and(|r| r.version == version && r.failed.is_none()) {
            return Err(Rejection::Invalid(format!("`{app}` has no rollout of version `{version}` under way")));
        }
        self.note(EventKind::RolloutFinished {
            app: app.to_owned(),
            version: version.to_owned(),
            failure: failure.map(str::to_owned),
        });
        let deployment = self.deployments.get_mut(app).expect("checked above");
        // The rollout's history entry: still rolling, or (after a revert deployed over it)
        // superseded at this very moment.
        let mark = |deployment: &mut Deployment, was: RevisionOutcome, outcome: RevisionOutcome| {
            let entry = deployment.history.iter_mut().rev().find(|r| r.version == version && r.outcome == was);
            if let Some(entry) = entry {
                entry.outcome = outcome;
                entry.ended_at_ms = Some(at_ms);
            }
        };
        let Some(reason) = failure else {
            deployment.rollout = None;
            mark(deployment, RevisionOutcome::Rolling, RevisionOutcome::Promoted);
            self.forget_unused_versions(app, None);
            return Ok(Outcome::Done);
        };
        let healthy_before = deployment
            .history
            .iter()
            .rev()
            .find(|r| r.outcome == RevisionOutcome::Promoted && r.version != version)
            .map(|r| (r.version.clone(), r.target));
        let revert = healthy_before.filter(|(v, _)| {
            deployment.spec.update.auto_revert && self.apps.get(app).is_some_and(|versions| versions.contains_key(v))
        });
        if let Some((back_to, target)) = revert {
            let mut spec = deployment.spec.clone();
            spec.version = back_to;
            spec.target = target;
            // A revert goes straight back: no canaries.
            spec.update.canary = 0;
            // Deploying marks the failed entry superseded; it is a revert, said once it applied.
            if self.deploy(&spec, at_ms, "auto-revert", &RevisionCause::Revert(version.to_owned())).is_ok() {
                let deployment = self.deployments.get_mut(app).expect("deployed just now");
                mark(deployment, RevisionOutcome::Superseded, RevisionOutcome::Reverted(reason.to_owned()));
                return Ok(Outcome::Done);
            }
        }
        // Nothing to go back to (or going back is refused now): the rollout stops where it is.
        let deployment = self.deployments.get_mut(app).expect("checked above");
        if let Some(rollout) = deployment.rollout.as_mut() {
            rollout.failed = Some(reason.to_owned());
        }
        mark(deployment, RevisionOutcome::Rolling, RevisionOutcome::Failed(reason.to_owned()));
        Ok(Outcome::Done)
    }

    pub(super) fn drain_host(&mut self, id: &HostId, drain: Option<Drain>) -> ApplyResult {
        let host = self.hosts.get_mut(id).ok_or_else(|| Rejection::UnknownHost(id.clone()))?;
        let was_draining = host.drain.is_some();
        host.drain = drain;
        match (was_draining, drain.is_some()) {
            (false, true) => self.note(EventKind::HostDraining { host: id.clone() }),
            (true, false) => self.note(EventKind::HostEligible { host: id.clone() }),
            _ => {}
        }
        let live: Vec<(InstanceId, bool)> = self
            .placed_on(id)
            .filter(|i| i.desired == Desired::Running)
            .map(|i| (i.id, self.slot_filler(&i.app, &i.version, i.slot).is_none_or(|filler| filler == i.id)))
            .collect();
        for (instance, slot_is_its_own) in live {
            // Back from a drain, an instance takes its slot back unless a replacement filled it.
            let migrating = drain.is_some() || !slot_is_its_own;
            self.update(instance, |entry| entry.migrating = migrating);
        }
        Ok(Outcome::Done)
    }

    pub(super) fn remove_host(&mut self, id: &HostId) -> ApplyResult {
        let host = self.hosts.get(id).ok_or_else(|| Rejection::UnknownHost(id.clone()))?;
        let held = self.placed_on(id).count();
        if held > 0 {
            let why = match host.provider {
                Some(_) => format!("it holds {held} instance(s); stop or scale down what runs there first"),
                None => format!("it holds {held} instance(s); drain it first (mirari cluster hosts drain {id})"),
            };
            return Err(Rejection::HostInUse { host: id.clone(), why });
        }
        if let Some(deployment) = self
            .deployments
            .values()
            .find(|d| d.desired == Desired::Running && d.spec.provider.as_deref() == Some(id.0.as_str()))
        {
            let why = format!("deployment `{}` runs only there", deployment.spec.app);
            return Err(Rejection::HostInUse { host: id.clone(), why });
        }
        if host.status == HostStatus::Up && host.drain.is_none() && host.provider.is_none() {
            let why = format!("it is up and not drained; drain it first (mirari cluster hosts drain {id})");
            return Err(Rejection::HostInUse { host: id.clone(), why });
        }
        self.hosts.remove(id);
        self.derived.host_versions.remove(id);
        self.derived.changed_hosts.insert(id.clone());
        self.derived.placed.remove(id);
        self.derived.used.remove(id);
        self.note(EventKind::HostRemoved { host: id.clone() });
        Ok(Outcome::Done)
    }

    pub(super) fn add_provider(
        &mut self,
        name: &HostId,
        provider: &crate::provider::Provider,
        at_ms: u64,
    ) -> ApplyResult {
        provider.validate().map_err(|why| Rejection::Invalid(format!("provider `{name}`: {why}")))?;
        crate::provider::check_name(&name.0).map_err(Rejection::Invalid)?;
        let known = self.hosts.get(name);
        if known.is_some_and(|host| host.provider.is_none()) {
            return Err(Rejection::NotAProvider(name.clone()));
        }
        let mut provider = provider.clone();
        // The condition is the leader's finding, not the operator's setting.
        provider.condition = known.and_then(|host| host.provider.as_ref()).and_then(|p| p.condition.clone());
        let host = Host {
            address: format!("{} {}", provider.kind.name(), provider.region),
            backends: BTreeSet::from([crate::target::Target::Kvm]),
            capacity: provider.capacity(),
            registered_at_ms: known.map_or(at_ms, |host| host.registered_at_ms),
            status_changed_at_ms: known.map_or(at_ms, |host| host.status_changed_at_ms),
            drain: known.and_then(|host| host.drain),
            provider: Some(provider),
            ..Host::up(&name.0, "", [], Resources::default())
        };
        if known == Some(&host) {
            return Ok(Outcome::Unchanged);
        }
        self.journal_registration(&host, known.map(|k| k.status));
        self.insert_host(host);
        Ok(Outcome::Done)
    }

    pub(super) fn set_provider_condition(&mut self, name: &HostId, condition: &Option<String>) -> ApplyResult {
        let host = self.hosts.get_mut(name).ok_or_else(|| Rejection::UnknownProvider(name.0.clone()))?;
        let provider = host.provider.as_mut().ok_or_else(|| Rejection::NotAProvider(name.clone()))?;
        if provider.condition == *condition {
            return Ok(Outcome::Unchanged);
        }
        provider.condition.clone_from(condition);
        self.note(EventKind::ProviderCondition { host: name.clone(), condition: condition.clone() });
        Ok(Outcome::Done)
    }

    /// Whether instances of `instance`'s version are health-checked (an unknown version counts
    /// as checked): unchecked, running is healthy.
    pub(super) fn health_checked(&self, instance: &InstanceEntry) -> bool {
        self.app_version(&instance.app, &instance.version).is_none_or(|v| v.run.health.is_some())
    }

    /// An instance of the deployed version that failed for good (its restart policy gave up)
    /// is stopped and its slot noted as failed on its host, so the scheduler fills it again
    /// elsewhere after the reschedule policy's delay.
    pub(super) fn note_failure(&mut self, id: InstanceId, at_ms: u64) {
        let Some(instance) = self.instances.get(&id) else { return };
        if instance.desired != Desired::Running || instance.observed != Phase::Failed {
            return;
        }
        let (app, slot, host) = (instance.app.clone(), instance.slot, instance.host.clone());
        let current = self.deployments.get(&app).is_some_and(|d| d.spec.version == instance.version);
        if current && let Some(deployment) = self.deployments.get_mut(&app) {
            let failures = deployment.failures.entry(slot).or_insert_with(|| SlotFailures {
                attempts: 0,
                last_failed_at_ms: at_ms,
                hosts: BTreeSet::new(),
            });
            failures.attempts += 1;
            failures.last_failed_at_ms = at_ms;
            failures.hosts.insert(host.clone());
        }
        let index = self.applied_index;
        let reason = format!("failed on host {host}; its slot is rescheduled");
        self.update(id, |entry| ask_to_stop(entry, index, &reason));
    }

    /// Keeps the versions of `app` that a history entry, its deployment or an instance names,
    /// and `keep`, and at most [`crate::limits::MAX_UNDEPLOYED_VERSIONS`] others: the rest (and
    /// with them the artifacts only they name) are forgotten.
    fn forget_unused_versions(&mut self, app: &str, keep: Option<&str>) {
        let Some(versions) = self.apps.get(app) else { return };
        let mut kept: BTreeSet<String> =
            self.instances.values().filter(|i| i.app == app).map(|i| i.version.clone()).collect();
        kept.extend(keep.map(str::to_owned));
        if let Some(deployment) = self.deployments.get(app) {
            kept.insert(deployment.spec.version.clone());
            kept.extend(deployment.history.iter().map(|r| r.version.clone()));
        }
        let undeployed: Vec<String> = versions.keys().filter(|v| !kept.contains(*v)).cloned().collect();
        let excess = undeployed.len().saturating_sub(crate::limits::MAX_UNDEPLOYED_VERSIONS);
        if let Some(versions) = self.apps.get_mut(app) {
            for name in undeployed.into_iter().take(excess) {
                versions.remove(&name);
            }
        }
    }
}
