//! The scheduler: fires due schedules through the egress client, records every run, runs a
//! schedule on request, and deletes the schedules of undeployed functions.
//!
//! One task sleeps until the earliest nominal time of any schedule (woken early when a
//! schedule is created), re-reads the clock, and asks the planner what is due. A run that is
//! due while the previous run of the same schedule — scheduled or started by hand — is still
//! going is recorded as `skipped`; a manual run while one goes is refused.
//!
//! The clock is passed in ([`Clock`]): the system's in production, a hand-moved one in tests.
//! The egress client is the scheduler's own (same policy handle and resolver as the proxy's,
//! its own pool on the scheduler's runtime), so no connection crosses runtimes. Fired runs
//! are tracked: on shutdown they get `shutdown_grace` to finish, then are cut and recorded as
//! such. The store blocks (every change is fsynced), so it is called from blocking threads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::clock::Clock;
use super::cron::CronExpr;
use super::invoke::invoke;
use super::runner::{plan, sleep_until_next, Due};
use super::store::{
    Claim, NewSchedule, RunRecord, RunState, RunStatus, Schedule, ScheduleStore, StoreError,
};
use crate::egress::EgressClient;
use crate::metrics::Metrics;
use crate::policy::function::{DeployState, Functions};
use crate::policy::Policy;
use crate::util::sync::lock;

/// The longest sleep between checks: new schedules wake the loop at once anyway.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How often the schedules of an undeployed function are deleted again after the store
/// could not be written.
const UNDEPLOY_RETRY: Duration = Duration::from_secs(5);

/// Why a schedule could not be run by hand.
#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    #[error("no schedule {0:?}")]
    NotFound(String),
    /// A run of the schedule is going: runs of one schedule never overlap.
    #[error("a run of schedule {0:?} is still going; try again when it has finished")]
    Busy(String),
    #[error("{0}")]
    Store(StoreError),
}

/// How long past its deadline (`schedule_timeout`) a claimed run may go unrecorded before
/// other replicas mark it abandoned: time to write the outcome after the deadline.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// How soon the loop tries again when the store could not be read or a claim failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

pub struct Scheduler {
    store: Arc<dyn ScheduleStore>,
    /// The scheduler's own; its policy holds the functions in force.
    egress: Arc<EgressClient>,
    clock: Arc<dyn Clock>,
    /// Schedules with a run in progress, scheduled or by hand ([`RunSlot`]).
    running: Arc<Mutex<HashSet<String>>>,
    /// The runs started and not yet recorded, so shutdown can wait for them.
    runs: TaskTracker,
    /// Cancelled when shutdown's grace is over: runs still going are cut.
    cut: CancellationToken,
    /// Woken when a schedule is created, so its first run is planned.
    wake: Notify,
    /// Attempt deadline per invocation.
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn ScheduleStore>,
        egress: Arc<EgressClient>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Scheduler {
            store,
            egress,
            clock,
            running: Arc::default(),
            runs: TaskTracker::new(),
            cut: CancellationToken::new(),
            wake: Notify::new(),
            timeout,
            metrics,
        })
    }

    /// The policy in force: its functions are the ones that may be scheduled and invoked.
    pub fn policy(&self) -> Arc<Policy> {
        self.egress.policy()
    }

    /// The time on the scheduler's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Deletes the schedules of functions the policy in force does not have as productive
    /// (undeployed or removed), after a reload changed the functions or at start. Redeploying
    /// does not bring them back. Blocking (the store writes): call it from a blocking thread.
    pub fn reconcile_functions(&self) {
        self.delete_undeployed(&self.policy().functions, false);
        // The loop retries what could not be deleted, and stops planning it.
        self.wake.notify_one();
    }

    /// The schedules, oldest first.
    pub async fn list(&self) -> Result<Vec<Schedule>, StoreError> {
        self.blocking(|store| store.list()).await
    }

    /// One schedule.
    pub async fn get(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let id = id.to_string();
        self.blocking(move |store| store.get(&id)).await
    }

    /// Creates a schedule (checked against the rules already) and plans it at once.
    pub async fn create(&self, new: NewSchedule) -> Result<Schedule, StoreError> {
        let now = self.clock.now();
        let created = self.blocking(move |store| store.create(new, now)).await?;
        self.wake.notify_one();
        Ok(created)
    }

    /// Deletes a schedule.
    pub async fn delete(&self, id: &str) -> Result<Schedule, StoreError> {
        let id = id.to_string();
        self.blocking(move |store| store.delete(&id)).await
    }

    /// Runs a store call on a blocking thread: a write fsyncs.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn ScheduleStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(store.as_ref()))
            .await
            .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))
    }

    /// Deletes the schedules of functions `functions` does not have as productive; returns
    /// whether some are left because the store could not be written (`state_dir` read-only
    /// or full). `retry` marks a later attempt, which logs only its success.
    fn delete_undeployed(&self, functions: &Functions, retry: bool) -> bool {
        // Each function once, however many schedules it has: one write, one error.
        let schedules = match self.store.list() {
            Ok(schedules) => schedules,
            Err(err) => {
                if !retry {
                    tracing::error!(error = %err, "cannot read the schedules to delete those of undeployed functions; retrying every {UNDEPLOY_RETRY:?}");
                }
                return true;
            }
        };
        let undeployed: std::collections::BTreeSet<String> = schedules
            .into_iter()
            .map(|schedule| schedule.function)
            .filter(|function| !functions.is_productive(function))
            .collect();
        let mut left = false;
        for function in undeployed {
            match self.store.delete_for_function(&function) {
                Ok(deleted) if !deleted.is_empty() => tracing::warn!(
                    function = %function,
                    schedules = deleted.len(),
                    "function undeployed: its schedules are deleted"
                ),
                Ok(_) => {}
                Err(err) => {
                    left = true;
                    if !retry {
                        tracing::error!(error = %err, "cannot delete the schedules of an undeployed function; retrying every {UNDEPLOY_RETRY:?}");
                    }
                }
            }
        }
        left
    }

    /// Invokes `schedule` now and records the run like a scheduled one; refused while a run
    /// of the same schedule is going.
    pub async fn run_now(&self, id: &str) -> Result<RunRecord, RunNowError> {
        let schedule = self
            .get(id)
            .await
            .map_err(RunNowError::Store)?
            .ok_or_else(|| RunNowError::NotFound(id.to_string()))?;
        let Some(_slot) = RunSlot::take(&self.running, id) else {
            return Err(RunNowError::Busy(id.to_string()));
        };
        let now = self.clock.now();
        match self.claim(id, now).await {
            Ok(Claim::Won) => {}
            Ok(Claim::Busy | Claim::Taken) => return Err(RunNowError::Busy(id.to_string())),
            Err(StoreError::NotFound(_)) => return Err(RunNowError::NotFound(id.to_string())),
            Err(err) => return Err(RunNowError::Store(err)),
        }
        let run = self.invoke(&schedule, now).await;
        self.record(id, run.clone()).await;
        Ok(run)
    }

    async fn invoke(&self, schedule: &Schedule, nominal: DateTime<Utc>) -> RunRecord {
        // Only a productive function is invoked. Undeploying one deletes its schedules, but
        // not while state_dir cannot be written: they then stay until a retry deletes them,
        // and "run now" must not invoke the function meanwhile.
        let policy = self.policy();
        let productive = policy
            .functions
            .get(&schedule.function)
            .filter(|f| f.state == DeployState::Productive);
        match productive.cloned() {
            Some(function) => {
                invoke(
                    &self.egress,
                    &function,
                    schedule,
                    nominal,
                    self.timeout,
                    &self.metrics,
                )
                .await
            }
            None => RunRecord {
                scheduled_for: nominal,
                state: RunState::Failure,
                status: RunStatus::Undeployed,
                duration_ms: 0,
                reason: Some(format!("function {:?} is not deployed", schedule.function)),
            },
        }
    }

    /// Fires due schedules until `shutdown`.
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) {
        // The last nominal time handled per schedule, from the store at first sight.
        let mut handled: HashMap<String, DateTime<Utc>> = HashMap::new();
        loop {
            let wake_at = self.plan_and_fire(&mut handled).await;
            tokio::select! {
                _ = self.clock.sleep_until(wake_at) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass of the loop: fires what is due and records what was missed; returns when
    /// to wake. A time, not a duration: the clock may move while the pass plans (a manual
    /// one in one step), and the next tick's time stays right whatever the pass took. A schedule whose due runs could not be claimed or recorded (the
    /// database is away) keeps its place: the next pass plans it again, so a run missed
    /// during an outage follows the missed-run policy once the store answers.
    async fn plan_and_fire(
        self: &Arc<Self>,
        handled: &mut HashMap<String, DateTime<Utc>>,
    ) -> DateTime<Utc> {
        let policy = self.policy();
        let functions = &policy.functions;
        let schedules = match self.list().await {
            Ok(schedules) => schedules,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the schedules; nothing is claimed or fired until the store answers");
                return after(self.clock.now(), STORE_RETRY);
            }
        };
        handled.retain(|id, _| schedules.iter().any(|s| &s.id == id));
        let now = self.clock.now();
        let mut wake_at = after(now, MAX_SLEEP);
        // Schedules due at the same minute are claimed and fired side by side: with a shared
        // store each claim is a database round trip, and one after the other the tenth
        // would start tens of milliseconds late.
        let mut firing = tokio::task::JoinSet::new();
        for schedule in schedules {
            // Left only because its deletion failed: never planned, never fired.
            if !functions.is_productive(&schedule.function) {
                continue;
            }
            let Ok(cron) = CronExpr::parse(&schedule.cron) else {
                continue;
            };
            let since = *handled
                .entry(schedule.id.clone())
                .or_insert_with(|| first_handled(&schedule));
            let due = plan(&cron, since, now);
            if due.fire.is_none() && due.missed.is_empty() {
                if let Some(next) = sleep_until_next(&cron, due.handled_through, now) {
                    wake_at = wake_at.min(after(now, next));
                }
                continue;
            }
            let scheduler = self.clone();
            firing.spawn(async move {
                let handled = scheduler.handle_due(&schedule, &due).await;
                (schedule.id, cron, due, handled)
            });
        }
        while let Some(done) = firing.join_next().await {
            let Ok((id, cron, due, result)) = done else {
                continue;
            };
            if let Err(err) = result {
                tracing::warn!(schedule = %id, error = %err, "cannot claim or record a due run; trying again");
                wake_at = wake_at.min(after(self.clock.now(), STORE_RETRY));
                continue;
            }
            handled.insert(id, due.handled_through);
            if let Some(next) = sleep_until_next(&cron, due.handled_through, now) {
                wake_at = wake_at.min(after(now, next));
            }
        }
        // Housekeeping after the firing, which it must not delay: schedules of undeployed
        // functions (never fired meanwhile: see above), and claims whose replica died.
        let undeployed_left = {
            let (scheduler, policy) = (self.clone(), policy.clone());
            tokio::task::spawn_blocking(move || {
                scheduler.delete_undeployed(&policy.functions, true)
            })
            .await
            .unwrap_or(true)
        };
        if undeployed_left {
            wake_at = wake_at.min(after(self.clock.now(), UNDEPLOY_RETRY));
        }
        match self.blocking(|store| store.abandon_expired()).await {
            Ok(abandoned) => {
                for (schedule, nominal) in abandoned {
                    tracing::warn!(schedule = %schedule, scheduled_for = %nominal, "a claimed run was never recorded (its replica stopped); marked abandoned, not invoked again");
                    self.metrics
                        .schedule_run(&schedule, RunState::Failure.as_str());
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot look for abandoned runs"),
        }
        wake_at
    }

    /// Records what `due` says was missed and fires what it says is due.
    async fn handle_due(
        self: &Arc<Self>,
        schedule: &Schedule,
        due: &Due,
    ) -> Result<(), StoreError> {
        for missed in due.missed.iter().rev() {
            self.try_record(&schedule.id, skipped_or_missed(*missed, RunState::Missed))
                .await?;
        }
        if let Some(nominal) = due.fire {
            self.fire(schedule.clone(), nominal).await?;
        }
        Ok(())
    }

    /// Waits up to `grace` for the runs still going, then cuts them (each is recorded as cut).
    pub async fn drain(&self, grace: Duration) {
        self.runs.close();
        if tokio::time::timeout(grace, self.runs.wait()).await.is_err() {
            tracing::warn!(
                runs = self.runs.len(),
                "grace period over; cutting the scheduled runs still going"
            );
            self.cut.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.runs.wait()).await;
        }
    }

    /// Claims a due run and starts it, or records it as skipped while the previous one is
    /// still going; another replica's claim leaves the run to it.
    async fn fire(
        self: &Arc<Self>,
        schedule: Schedule,
        nominal: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let skipped = skipped_or_missed(nominal, RunState::Skipped);
        let Some(slot) = RunSlot::take(&self.running, &schedule.id) else {
            return self.try_record(&schedule.id, skipped).await;
        };
        match self.claim(&schedule.id, nominal).await {
            Ok(Claim::Won) => {}
            Ok(Claim::Taken) => {
                tracing::debug!(schedule = %schedule.id, scheduled_for = %nominal, "claimed by another replica");
                return Ok(());
            }
            Ok(Claim::Busy) => return self.try_record(&schedule.id, skipped).await,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        }
        let lag = (self.clock.now() - nominal).num_milliseconds();
        self.metrics.schedule_lag(lag.max(0) as f64 / 1000.0);
        tracing::debug!(schedule = %schedule.id, lag_ms = lag, "firing");
        let scheduler = self.clone();
        self.runs.spawn(async move {
            let run = tokio::select! {
                run = scheduler.invoke(&schedule, nominal) => run,
                _ = scheduler.cut.cancelled() => cut_at_shutdown(nominal),
            };
            tracing::info!(
                target: "egressd::schedule",
                schedule = %schedule.id,
                function = %schedule.function,
                scheduled_for = %nominal,
                state = ?run.state,
                status = %run.status,
                duration_ms = run.duration_ms,
                lag_ms = lag,
                "scheduled run"
            );
            // The run is over: its slot is free before the outcome is written, so a caller
            // that sees the outcome never finds the schedule still busy here.
            drop(slot);
            scheduler.record(&schedule.id, run).await;
        });
        Ok(())
    }

    /// Claims a run for this replica, on a blocking thread.
    async fn claim(&self, id: &str, nominal: DateTime<Utc>) -> Result<Claim, StoreError> {
        let (id, lease) = (id.to_string(), self.timeout + LEASE_MARGIN);
        self.blocking(move |store| store.claim(&id, nominal, lease))
            .await
    }

    /// Writes the outcome of a run this replica invoked, on a blocking thread. A failed
    /// write is logged: the run happened and is not repeated.
    async fn record(&self, id: &str, run: RunRecord) {
        // Counted whether or not it can be written: the run happened.
        self.metrics.schedule_run(id, run.state.as_str());
        let owned = id.to_string();
        match self
            .blocking(move |store| store.record_run(&owned, run))
            .await
        {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(err) => tracing::error!(schedule = id, error = %err, "cannot record a run"),
        }
    }

    /// Writes a skipped or missed run to the store, on a blocking thread, and counts it once
    /// written (a failed write is tried again by the next pass); a schedule deleted
    /// meanwhile is not an error.
    async fn try_record(&self, id: &str, run: RunRecord) -> Result<(), StoreError> {
        let owned = id.to_string();
        let state = run.state;
        match self
            .blocking(move |store| store.record_run(&owned, run))
            .await
        {
            Ok(()) | Err(StoreError::NotFound(_)) => {
                self.metrics.schedule_run(id, state.as_str());
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// A schedule's place in the running set while one of its runs goes, given back however the
/// run ends: recorded, cut, panicked, or dropped with the admin request that asked for it (a
/// client that hangs up must not leave the schedule skipped for good).
struct RunSlot {
    running: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl RunSlot {
    /// The slot of `id`, unless a run of it is going.
    fn take(running: &Arc<Mutex<HashSet<String>>>, id: &str) -> Option<RunSlot> {
        lock(running).insert(id.to_string()).then(|| RunSlot {
            running: running.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.id);
    }
}

/// A run that shutdown's grace did not see finish.
fn cut_at_shutdown(nominal: DateTime<Utc>) -> RunRecord {
    RunRecord {
        scheduled_for: nominal,
        state: RunState::Failure,
        status: RunStatus::Shutdown,
        duration_ms: 0,
        reason: Some("egressd shut down before the run finished (proxy.shutdown_grace)".into()),
    }
}

/// Where planning starts for a schedule seen for the first time: after its last recorded
/// run, or its creation.
fn first_handled(schedule: &Schedule) -> DateTime<Utc> {
    schedule
        .runs
        .iter()
        .map(|r| r.scheduled_for)
        .max()
        .map_or(schedule.created_at, |last| last.max(schedule.created_at))
}

fn skipped_or_missed(nominal: DateTime<Utc>, state: RunState) -> RunRecord {
    RunRecord {
        scheduled_for: nominal,
        state,
        status: match state {
            RunState::Skipped => RunStatus::Skipped,
            _ => RunStatus::Missed,
        },
        duration_ms: 0,
        reason: Some(match state {
            RunState::Skipped => "the previous run was still going".into(),
            _ => "egressd was not running, or its clock stepped forward".into(),
        }),
    }
}

/// `time` plus `duration`, saturating far in the future.
fn after(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| time.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
