//! The agent's reconciler: desired and observed state in, actions out.
//!
//! [`Lifecycle`] is the part of an instance record that decisions read: what is wanted, what was
//! last seen, and the restart bookkeeping. Its `on_*` methods apply observations; [`plan`] looks
//! at all instances and returns what the agent must do now and when to look again. The agent
//! performs the actions and feeds back what it observed; this module never touches a backend.

use serde::{Deserialize, Serialize};

use crate::ids::InstanceId;
use crate::instance::{Desired, ExitStatus, Phase};
use crate::restart::{self, RestartDecision, RunEnd, STABLE_RUN_MS};
use crate::spec::RestartPolicy;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub desired: Desired,
    pub phase: Phase,
    /// Restarts over the instance's whole life.
    pub restarts: u32,
    /// Failed runs in a row that did not last [`STABLE_RUN_MS`].
    pub failures_in_a_row: u32,
    pub last_exit: Option<ExitStatus>,
    pub started_at_ms: Option<u64>,
    /// When an exited instance is due to start again.
    pub restart_due_ms: Option<u64>,
    /// Why it is in its phase, when that needs saying (a start error, a restart limit).
    pub message: Option<String>,
    /// It is being stopped because its health checks failed (why): its end is a failed run,
    /// which the restart policy judges.
    #[serde(default)]
    pub unhealthy: Option<String>,
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            desired: Desired::Running,
            phase: Phase::Pending,
            restarts: 0,
            failures_in_a_row: 0,
            last_exit: None,
            started_at_ms: None,
            restart_due_ms: None,
            message: None,
            unhealthy: None,
        }
    }

    pub fn on_starting(&mut self) {
        if self.phase == Phase::Exited || self.phase == Phase::Lost {
            self.restarts += 1;
        }
        self.phase = Phase::Starting;
        self.restart_due_ms = None;
        self.message = None;
    }

    pub fn on_running(&mut self, now_ms: u64) {
        self.phase = Phase::Running;
        self.started_at_ms = Some(now_ms);
    }

    pub fn on_stop_requested(&mut self) {
        self.desired = Desired::Stopped;
        self.restart_due_ms = None;
        match self.phase {
            Phase::Pending | Phase::Exited | Phase::Lost => self.phase = Phase::Stopped,
            _ => {}
        }
    }

    /// Wants a stopped instance running again (a cluster host that regained its lease before
    /// its instances were reassigned). Whatever phase it is in, it converges to running: a
    /// stop still under way ends in a fresh start (see `end_run`). A failed instance stays
    /// failed.
    pub fn on_run_requested(&mut self) {
        self.desired = Desired::Running;
        if self.phase == Phase::Stopped {
            self.phase = Phase::Pending;
            self.failures_in_a_row = 0;
        }
    }

    /// The agent died while the instance was starting, and finds it ended: the start may
    /// never have happened (what is found is then an older run's end), so nothing is known of
    /// this run. It starts again if wanted, as if it had never run.
    pub fn on_start_interrupted(&mut self) {
        self.started_at_ms = None;
        self.phase = if self.desired == Desired::Running { Phase::Pending } else { Phase::Stopped };
    }

    pub fn on_stopping(&mut self) {
        self.phase = Phase::Stopping;
    }

    /// Its health checks failed: the caller stops the run, whose end then counts as a failure
    /// under the restart policy (an `on-failure` instance restarts, with back-off and within
    /// its limit).
    pub fn on_unhealthy(&mut self, why: String) {
        self.phase = Phase::Stopping;
        self.unhealthy = Some(why);
    }

    /// The instance ended (on its own or because it was stopped).
    pub fn on_exit(&mut self, exit: ExitStatus, policy: RestartPolicy, now_ms: u64) {
        self.last_exit = Some(exit);
        self.end_run(policy, now_ms, exit, None);
    }

    /// The backend could not start it.
    pub fn on_start_failed(&mut self, error: String, policy: RestartPolicy, now_ms: u64) {
        // A start failure counts as a failed run; `never` still must not retry.
        self.end_run(policy, now_ms, ExitStatus::Code(-1), Some(format!("could not start: {error}")));
    }

    /// The instance vanished without an exit status (its supervisor died with it).
    pub fn on_lost(&mut self, policy: RestartPolicy, now_ms: u64) {
        self.end_run(
            policy,
            now_ms,
            ExitStatus::Signal(9),
            Some("lost: it ended while no one watched, without an exit status".into()),
        );
        if self.phase == Phase::Exited {
            self.phase = Phase::Lost;
        }
    }

    fn end_run(&mut self, policy: RestartPolicy, now_ms: u64, exit: ExitStatus, message: Option<String>) {
        let ran_ms = self.started_at_ms.map_or(0, |started| now_ms.saturating_sub(started));
        let unhealthy = self.unhealthy.take();
        let stopped_by_request = self.phase == Phase::Stopping && unhealthy.is_none();
        self.started_at_ms = None;
        self.message = message;
        if self.desired == Desired::Stopped {
            self.phase = Phase::Stopped;
            return;
        }
        if stopped_by_request {
            // Wanted again while the stop we asked for was under way: the exit was ours, not
            // the app's, so the restart policy has no say. Start it again.
            self.phase = Phase::Pending;
            return;
        }
        if ran_ms >= STABLE_RUN_MS {
            self.failures_in_a_row = 0;
        }
        // Stopped for failing its health checks: a failed run, whatever its exit code.
        let end = match unhealthy {
            Some(why) => RunEnd::Unhealthy(why),
            None => RunEnd::Exited(exit),
        };
        let decision = restart::decide(policy, &end, self.failures_in_a_row);
        if !end.success() {
            self.failures_in_a_row += 1;
        }
        if matches!(end, RunEnd::Unhealthy(_)) && !matches!(decision, RestartDecision::GiveUp { .. }) {
            self.message = Some(end.to_string());
        }
        match decision {
            RestartDecision::Restart { after_ms } => {
                self.phase = Phase::Exited;
                self.restart_due_ms = Some(now_ms + after_ms);
            }
            RestartDecision::Rest => self.phase = Phase::Exited,
            RestartDecision::GiveUp { reason } => {
                self.phase = Phase::Failed;
                self.message = Some(match self.message.take() {
                    Some(earlier) => format!("{earlier}; {reason}"),
                    None => reason,
                });
            }
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start(InstanceId),
    Stop(InstanceId),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The earliest time something becomes due (a restart back-off ending).
    pub wake_at_ms: Option<u64>,
}

/// What to do now, given every instance's lifecycle.
pub fn plan<'a>(instances: impl IntoIterator<Item = (InstanceId, &'a Lifecycle)>, now_ms: u64) -> Plan {
    let mut plan = Plan::default();
    for (id, life) in instances {
        match (life.desired, life.phase) {
            (Desired::Running, Phase::Pending) => plan.actions.push(Action::Start(id)),
            (Desired::Running, Phase::Exited | Phase::Lost) => match life.restart_due_ms {
                Some(due) if due <= now_ms => plan.actions.push(Action::Start(id)),
                Some(due) => plan.wake_at_ms = Some(plan.wake_at_ms.map_or(due, |w| w.min(due))),
                None => {}
            },
            (Desired::Stopped, Phase::Starting | Phase::Running) => plan.actions.push(Action::Stop(id)),
            _ => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RestartPolicy = RestartPolicy::OnFailure { limit: 2 };

    fn id(n: u64) -> InstanceId {
        InstanceId::from_u64(n)
    }

    #[test]
    fn pending_instances_start_and_stopped_ones_stop() {
        let pending = Lifecycle::new();
        let mut running = Lifecycle::new();
        running.on_starting();
        running.on_running(0);
        running.on_stop_requested();
        let plan = plan([(id(1), &pending), (id(2), &running)], 0);
        assert_eq!(plan.actions, [Action::Start(id(1)), Action::Stop(id(2))]);
    }

    #[test]
    fn failures_restart_with_backoff_until_the_limit() {
        let mut life = Lifecycle::new();
        let mut now = 0;
        for attempt in 0..2u32 {
            life.on_starting();
            life.on_running(now);
            now += 3_000;
            life.on_exit(ExitStatus::Code(3), POLICY, now);
            assert_eq!(life.phase, Phase::Exited);
            let due = life.restart_due_ms.expect("restart scheduled");
            assert_eq!(due, now + restart::backoff_ms(attempt));
            let early = plan([(id(7), &life)], now);
            assert_eq!((early.actions.as_slice(), early.wake_at_ms), (&[][..], Some(due)));
            now = due;
            assert_eq!(plan([(id(7), &life)], now).actions, [Action::Start(id(7))]);
        }
        life.on_starting();
        life.on_running(now);
        life.on_exit(ExitStatus::Code(3), POLICY, now + 3_000);
        assert_eq!(life.phase, Phase::Failed);
        assert_eq!(life.restarts, 2);
        assert_eq!(life.message.as_deref(), Some("exit code 3; restart limit of 2 reached"));
        assert_eq!(plan([(id(7), &life)], u64::MAX), Plan::default());
    }

    #[test]
    fn a_run_stopped_for_being_unhealthy_is_a_failure_the_policy_judges() {
        let mut life = Lifecycle::new();
        for attempt in 0..3u32 {
            life.on_starting();
            life.on_running(0);
            life.on_unhealthy("GET / answered 500".into());
            assert_eq!(life.phase, Phase::Stopping);
            // It stopped gracefully when asked: still a failed run.
            life.on_exit(ExitStatus::Code(0), POLICY, 1_000);
            if attempt < 2 {
                assert_eq!(
                    (life.phase, life.message.as_deref()),
                    (Phase::Exited, Some("unhealthy: GET / answered 500"))
                );
                assert!(life.restart_due_ms.is_some());
            }
        }
        assert_eq!(life.phase, Phase::Failed);
        assert_eq!(life.message.as_deref(), Some("unhealthy: GET / answered 500; restart limit of 2 reached"));
    }

    #[test]
    fn a_long_healthy_run_resets_the_failure_streak() {
        let mut life = Lifecycle::new();
        life.failures_in_a_row = 2;
        life.on_starting();
        life.on_running(0);
        life.on_exit(ExitStatus::Code(1), POLICY, STABLE_RUN_MS);
        assert_eq!(life.phase, Phase::Exited);
        assert_eq!(life.failures_in_a_row, 1);
    }

    #[test]
    fn a_requested_stop_never_restarts() {
        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_running(0);
        life.on_stop_requested();
        life.on_stopping();
        life.on_exit(ExitStatus::Signal(9), RestartPolicy::Always, 10);
        assert_eq!(life.phase, Phase::Stopped);
        assert_eq!(plan([(id(1), &life)], u64::MAX), Plan::default());
    }

    #[test]
    fn a_stopped_instance_can_be_wanted_again() {
        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_running(0);
        life.on_stop_requested();
        life.on_stopping();
        life.on_exit(ExitStatus::Signal(9), POLICY, 10);
        life.on_run_requested();
        assert_eq!((life.desired, life.phase), (Desired::Running, Phase::Pending));
        assert_eq!(plan([(id(1), &life)], 20).actions, [Action::Start(id(1))]);
    }

    #[test]
    fn an_instance_wanted_again_while_stopping_runs_again() {
        // A fenced instance whose graceful stop is still under way when its host's assignments
        // come back: the clean exit the stop causes must not leave it resting.
        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_running(0);
        life.on_stop_requested();
        life.on_stopping();
        life.on_run_requested();
        assert_eq!(life.phase, Phase::Stopping, "the stop under way finishes first");
        life.on_exit(ExitStatus::Code(0), POLICY, 10);
        assert_eq!((life.desired, life.phase), (Desired::Running, Phase::Pending));
        assert_eq!(plan([(id(1), &life)], 10).actions, [Action::Start(id(1))]);
        assert_eq!(life.failures_in_a_row, 0, "an exit we caused is not the app's failure");
    }

    #[test]
    fn an_interrupted_start_starts_again() {
        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_start_interrupted();
        assert_eq!((life.phase, life.failures_in_a_row), (Phase::Pending, 0));
        assert_eq!(plan([(id(1), &life)], 0).actions, [Action::Start(id(1))]);
        life.on_starting();
        life.on_stop_requested();
        life.on_start_interrupted();
        assert_eq!(life.phase, Phase::Stopped);
    }

    #[test]
    fn clean_exits_rest_under_on_failure() {
        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_running(0);
        life.on_exit(ExitStatus::Code(0), POLICY, 5);
        assert_eq!((life.phase, life.restart_due_ms), (Phase::Exited, None));
    }

    #[test]
    fn start_failures_and_losses_follow_the_policy() {
        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_start_failed("qemu not found".into(), RestartPolicy::Never, 0);
        assert_eq!(life.phase, Phase::Exited);
        assert_eq!(life.message.as_deref(), Some("could not start: qemu not found"));

        let mut life = Lifecycle::new();
        life.on_starting();
        life.on_running(0);
        life.on_lost(POLICY, 100);
        assert_eq!(life.phase, Phase::Lost);
        assert!(life.restart_due_ms.is_some());
    }
}
