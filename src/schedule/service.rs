//! The scheduler: fires due schedules through the egress client, records every run, runs a
//! schedule on request, and deletes the schedules of undeployed functions.
//!
//! One task sleeps until the earliest nominal time of any schedule (woken early when a
//! schedule is created), re-reads the wall clock, and asks the planner what is due. A run
//! that is due while the previous run of the same schedule is still going is recorded as
//! `skipped`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cron::CronExpr;
use super::function::{DeployState, Functions};
use super::invoke::invoke;
use super::runner::{plan, sleep_until_next};
use super::store::{RunRecord, RunState, Schedule, ScheduleStore, StoreError};
use crate::egress::EgressClient;
use crate::metrics::Metrics;
use crate::util::sync::lock;

/// The longest sleep between checks: new schedules wake the loop at once anyway.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How often the schedules of an undeployed function are deleted again after the store
/// could not be written.
const UNDEPLOY_RETRY: Duration = Duration::from_secs(5);

pub struct Scheduler {
    pub store: Arc<dyn ScheduleStore>,
    egress: Arc<EgressClient>,
    functions: ArcSwap<Functions>,
    /// Schedules with a run in progress.
    running: Mutex<HashSet<String>>,
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
        functions: Functions,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Scheduler {
            store,
            egress,
            functions: ArcSwap::from_pointee(functions),
            running: Mutex::default(),
            wake: Notify::new(),
            timeout,
            metrics,
        })
    }

    /// The functions in force.
    pub fn functions(&self) -> Arc<Functions> {
        self.functions.load_full()
    }

    /// Puts a reloaded `[[functions]]` list in force and deletes the schedules of functions
    /// that are no longer productive (undeployed or removed). Redeploying does not bring
    /// them back.
    pub fn set_functions(&self, functions: Functions) {
        self.delete_undeployed(&functions, false);
        self.functions.store(Arc::new(functions));
        // The loop retries what could not be deleted, and stops planning it.
        self.wake.notify_one();
    }

    /// Deletes the schedules of functions `functions` does not have as productive; returns
    /// whether some are left because the store could not be written (`state_dir` read-only
    /// or full). `retry` marks a later attempt, which logs only its success.
    fn delete_undeployed(&self, functions: &Functions, retry: bool) -> bool {
        // Each function once, however many schedules it has: one write, one error.
        let undeployed: std::collections::BTreeSet<String> = self
            .store
            .list()
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

    /// Plans the new schedule at once.
    pub fn created(&self) {
        self.wake.notify_one();
    }

    /// Invokes `schedule` now and records the run like a scheduled one.
    pub async fn run_now(&self, id: &str) -> Result<RunRecord, StoreError> {
        let schedule = self
            .store
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let run = self.invoke(&schedule, Utc::now()).await;
        self.record(id, run.clone());
        Ok(run)
    }

    async fn invoke(&self, schedule: &Schedule, nominal: DateTime<Utc>) -> RunRecord {
        // Only a productive function is invoked. Undeploying one deletes its schedules, but
        // not while state_dir cannot be written: they then stay until a retry deletes them,
        // and "run now" must not invoke the function meanwhile.
        let functions = self.functions();
        let productive = functions
            .get(&schedule.function)
            .filter(|f| f.state == DeployState::Productive);
        match productive.cloned() {
            Some(function) => {
                invoke(&self.egress, &function, schedule, nominal, self.timeout).await
            }
            None => RunRecord {
                scheduled_for: nominal,
                state: RunState::Failure,
                status: "undeployed".into(),
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
            let now = Utc::now();
            let functions = self.functions();
            let mut sleep = MAX_SLEEP;
            if self.delete_undeployed(&functions, true) {
                sleep = UNDEPLOY_RETRY;
            }
            let schedules = self.store.list();
            handled.retain(|id, _| schedules.iter().any(|s| &s.id == id));
            for schedule in &schedules {
                // Left only because its deletion failed: never planned, never fired.
                if !functions.is_productive(&schedule.function) {
                    continue;
                }
                let Ok(cron) = CronExpr::parse(&schedule.cron) else {
                    continue;
                };
                let since = *handled
                    .entry(schedule.id.clone())
                    .or_insert_with(|| first_handled(schedule));
                let due = plan(&cron, since, now);
                for missed in due.missed.iter().rev() {
                    self.record(&schedule.id, skipped_or_missed(*missed, RunState::Missed));
                }
                if let Some(nominal) = due.fire {
                    self.fire(schedule.clone(), nominal);
                }
                handled.insert(schedule.id.clone(), due.handled_through);
                if let Some(next) = sleep_until_next(&cron, due.handled_through, Utc::now()) {
                    sleep = sleep.min(next);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Starts a run, or records it as skipped while the previous one is still going.
    fn fire(self: &Arc<Self>, schedule: Schedule, nominal: DateTime<Utc>) {
        if !lock(&self.running).insert(schedule.id.clone()) {
            self.record(&schedule.id, skipped_or_missed(nominal, RunState::Skipped));
            return;
        }
        let lag = (Utc::now() - nominal).num_milliseconds();
        self.metrics.schedule_lag(lag.max(0) as f64 / 1000.0);
        tracing::debug!(schedule = %schedule.id, lag_ms = lag, "firing");
        let scheduler = self.clone();
        tokio::spawn(async move {
            let run = scheduler.invoke(&schedule, nominal).await;
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
            scheduler.record(&schedule.id, run);
            lock(&scheduler.running).remove(&schedule.id);
        });
    }

    fn record(&self, id: &str, run: RunRecord) {
        let outcome = serde_json::to_value(run.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.metrics.schedule_run(id, &outcome);
        match self.store.record_run(id, run) {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(err) => tracing::error!(schedule = id, error = %err, "cannot record a run"),
        }
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
            RunState::Skipped => "skipped".into(),
            _ => "missed".into(),
        },
        duration_ms: 0,
        reason: Some(match state {
            RunState::Skipped => "the previous run was still going".into(),
            _ => "egressd was not running, or its clock stepped forward".into(),
        }),
    }
}
