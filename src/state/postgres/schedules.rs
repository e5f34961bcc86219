//! Schedules and the run ledger in PostgreSQL: CRUD from any replica, the limit enforced
//! in one transaction, and each tick claimed by one replica.
//!
//! **The claim rule.** A due run is claimed by inserting its ledger row (schedule, nominal
//! time) as `running`, with a lease of `schedule_timeout` + [`LEASE_MARGIN`] in database
//! time. The primary key lets one replica win; the others see the row and leave the run to
//! it. Claims of one schedule are serialised on its row (`FOR UPDATE`), so a run due while
//! another is still `running` on any replica is recorded as `skipped`, as on one replica.
//! The winner writes the outcome to the same row. A claimer that dies before writing it
//! leaves the row `running`; once its lease has run out, any replica marks it
//! `failure`/`abandoned` and **nobody invokes it again** — the function may have received
//! it, and "never twice" is the promise. Because the key is the nominal time and leases use
//! the database's clock, replica clocks that differ by seconds cannot cause a second
//! invocation.
//!
//! [`LEASE_MARGIN`]: crate::schedule::service::LEASE_MARGIN

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{snapshot, Database, DbError};
use crate::schedule::store::{
    new_id, Claim, NewSchedule, RunRecord, RunState, RunStatus, Schedule, ScheduleStore,
    StoreError, MAX_SCHEDULES, RUNS_KEPT,
};

/// Ledger rows kept per schedule: more than shown ([`RUNS_KEPT`]), so that a replica that
/// plans from an older point still finds the ticks another replica claimed.
const LEDGER_KEPT: i64 = 100;

/// Transaction-level advisory lock that serialises creates: the count and the insert of
/// the limit check are one step across replicas.
const CREATE_LOCK: i64 = 0x6567_7265_7373_6402;

const ABANDONED: &str = "the replica that claimed this run stopped before recording how it ended (its lease ran out); it is not invoked again";

/// The schedule store of the postgres backend. Its methods block on the runtime given at
/// construction: call them from blocking threads, like every [`ScheduleStore`].
pub struct PgScheduleStore {
    db: Arc<Database>,
    runtime: tokio::runtime::Handle,
}

impl PgScheduleStore {
    pub fn new(db: Arc<Database>, runtime: tokio::runtime::Handle) -> PgScheduleStore {
        PgScheduleStore { db, runtime }
    }

    fn block_on<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.runtime.block_on(work)
    }

    async fn load(&self, only: Option<&str>) -> Result<Vec<Schedule>, StoreError> {
        self.db
            .run(async |client| {
                // One snapshot for the schedules and their runs.
                let tx = snapshot(client).await?;
                let rows = tx
                    .query(
                        "SELECT id, function, cron, payload, created_at FROM egressd_schedules
                         WHERE $1::text IS NULL OR id = $1 ORDER BY created_at, id",
                        &[&only],
                    )
                    .await?;
                let runs = tx
                    .query(
                        "SELECT schedule_id, scheduled_for, state, status, duration_ms, reason FROM (
                             SELECT *, row_number() OVER (PARTITION BY schedule_id
                                                          ORDER BY scheduled_for DESC) AS n
                             FROM egressd_runs
                             WHERE state <> 'running' AND ($1::text IS NULL OR schedule_id = $1)
                         ) newest WHERE n <= $2 ORDER BY scheduled_for",
                        &[&only, &(RUNS_KEPT as i64)],
                    )
                    .await?;
                tx.commit().await?;
                let mut schedules: Vec<Schedule> = rows.iter().map(schedule_from).collect();
                for row in &runs {
                    let id: &str = row.get("schedule_id");
                    if let Some(schedule) = schedules.iter_mut().find(|s| s.id == id) {
                        schedule.runs.push_back(run_from(row));
                    }
                }
                Ok(schedules)
            })
            .await
            .map_err(unavailable)
    }
}

fn unavailable(err: DbError) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn schedule_from(row: &Row) -> Schedule {
    Schedule {
        id: row.get("id"),
        function: row.get("function"),
        cron: row.get("cron"),
        payload: row.get("payload"),
        created_at: row.get("created_at"),
        runs: VecDeque::new(),
    }
}

fn run_from(row: &Row) -> RunRecord {
    let state = match row.get::<_, &str>("state") {
        "success" => RunState::Success,
        "skipped" => RunState::Skipped,
        "missed" => RunState::Missed,
        _ => RunState::Failure,
    };
    let status: &str = row.get("status");
    RunRecord {
        scheduled_for: row.get("scheduled_for"),
        state,
        status: RunStatus::parse(status).unwrap_or(RunStatus::Abandoned),
        duration_ms: row.get::<_, i64>("duration_ms").max(0) as u64,
        reason: row.get("reason"),
    }
}

impl ScheduleStore for PgScheduleStore {
    fn list(&self) -> Result<Vec<Schedule>, StoreError> {
        self.block_on(self.load(None))
    }

    fn get(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        self.block_on(async { Ok(self.load(Some(id)).await?.into_iter().next()) })
    }

    fn create(&self, new: NewSchedule, now: DateTime<Utc>) -> Result<Schedule, StoreError> {
        let schedule = Schedule::new(new_id(), new, now);
        let created = self.block_on(async {
            self.db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
                        .await?;
                    let count: i64 = tx
                        .query_one("SELECT count(*) FROM egressd_schedules", &[])
                        .await?
                        .get(0);
                    if count >= MAX_SCHEDULES as i64 {
                        return Ok(false);
                    }
                    tx.execute(
                        "INSERT INTO egressd_schedules (id, function, cron, payload, created_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &schedule.id,
                            &schedule.function,
                            &schedule.cron,
                            &schedule.payload,
                            &schedule.created_at,
                        ],
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                })
                .await
                .map_err(unavailable)
        })?;
        match created {
            true => Ok(schedule),
            false => Err(StoreError::LimitReached),
        }
    }

    fn delete(&self, id: &str) -> Result<Schedule, StoreError> {
        self.block_on(async {
            let schedule = self
                .load(Some(id))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            let deleted = self
                .db
                .run(async |client| {
                    client
                        .execute("DELETE FROM egressd_schedules WHERE id = $1", &[&id])
                        .await
                })
                .await
                .map_err(unavailable)?;
            match deleted {
                0 => Err(StoreError::NotFound(id.to_string())),
                _ => Ok(schedule),
            }
        })
    }

    fn record_run(&self, id: &str, run: RunRecord) -> Result<(), StoreError> {
        let state = run.state.as_str();
        let status = run.status.to_string();
        let duration = run.duration_ms.min(i64::MAX as u64) as i64;
        // A skipped or missed record never overwrites a row another replica claimed; an
        // outcome is written only over this replica's own claim.
        let sql = match run.state {
            RunState::Skipped | RunState::Missed => {
                "INSERT INTO egressd_runs
                     (schedule_id, scheduled_for, state, status, duration_ms, reason, claimed_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (schedule_id, scheduled_for) DO NOTHING"
            }
            RunState::Success | RunState::Failure => {
                "INSERT INTO egressd_runs
                     (schedule_id, scheduled_for, state, status, duration_ms, reason, claimed_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (schedule_id, scheduled_for) DO UPDATE
                 SET state = EXCLUDED.state, status = EXCLUDED.status,
                     duration_ms = EXCLUDED.duration_ms, reason = EXCLUDED.reason,
                     lease_until = NULL
                 WHERE egressd_runs.claimed_by = EXCLUDED.claimed_by"
            }
        };
        let replica = self.db.replica().to_string();
        let recorded = self.block_on(async {
            self.db
                .run(async |client| {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                        &id,
                        &run.scheduled_for,
                        &state,
                        &status,
                        &duration,
                        &run.reason,
                        &replica,
                    ];
                    match client.execute(sql, &params).await {
                        Ok(_) => {}
                        Err(err) if is_foreign_key_violation(&err) => return Ok(false),
                        Err(err) => return Err(err),
                    }
                    client
                        .execute(
                            "DELETE FROM egressd_runs WHERE schedule_id = $1 AND scheduled_for <
                                 (SELECT scheduled_for FROM egressd_runs WHERE schedule_id = $1
                                  ORDER BY scheduled_for DESC OFFSET $2 LIMIT 1)",
                            &[&id, &(LEDGER_KEPT - 1)],
                        )
                        .await?;
                    Ok(true)
                })
                .await
                .map_err(unavailable)
        })?;
        match recorded {
            true => Ok(()),
            false => Err(StoreError::NotFound(id.to_string())),
        }
    }

    fn delete_for_function(&self, function: &str) -> Result<Vec<Schedule>, StoreError> {
        self.block_on(async {
            let doomed: Vec<Schedule> = self
                .load(None)
                .await?
                .into_iter()
                .filter(|s| s.function == function)
                .collect();
            if doomed.is_empty() {
                return Ok(doomed);
            }
            self.db
                .run(async |client| {
                    client
                        .execute(
                            "DELETE FROM egressd_schedules WHERE function = $1",
                            &[&function],
                        )
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok(doomed)
        })
    }

    fn claim(
        &self,
        id: &str,
        nominal: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let lease_ms = lease.as_millis().min(i64::MAX as u128) as f64;
        let replica = self.db.replica().to_string();
        let claim = self.block_on(async {
            self.db
                .run(async |client| {
                    let tx = client.transaction().await?;
                    // Claims of one schedule, one at a time.
                    let exists = tx
                        .query_opt(
                            "SELECT 1 FROM egressd_schedules WHERE id = $1 FOR UPDATE",
                            &[&id],
                        )
                        .await?;
                    if exists.is_none() {
                        return Ok(None);
                    }
                    tx.execute(
                        "UPDATE egressd_runs SET state = 'failure', status = 'abandoned',
                             reason = $2, lease_until = NULL
                         WHERE schedule_id = $1 AND state = 'running' AND lease_until < now()",
                        &[&id, &ABANDONED],
                    )
                    .await?;
                    let claimed = tx
                        .query_opt(
                            "SELECT 1 FROM egressd_runs WHERE schedule_id = $1 AND scheduled_for = $2",
                            &[&id, &nominal],
                        )
                        .await?;
                    if claimed.is_some() {
                        return Ok(Some(Claim::Taken));
                    }
                    let going = tx
                        .query_opt(
                            "SELECT 1 FROM egressd_runs WHERE schedule_id = $1 AND state = 'running' LIMIT 1",
                            &[&id],
                        )
                        .await?;
                    if going.is_some() {
                        return Ok(Some(Claim::Busy));
                    }
                    tx.execute(
                        "INSERT INTO egressd_runs
                             (schedule_id, scheduled_for, state, status, claimed_by, lease_until)
                         VALUES ($1, $2, 'running', 'running', $3,
                                 now() + $4 * interval '1 millisecond')",
                        &[&id, &nominal, &replica, &lease_ms],
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(Some(Claim::Won))
                })
                .await
                .map_err(unavailable)
        })?;
        claim.ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    fn abandon_expired(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        self.block_on(async {
            self.db
                .run(async |client| {
                    let rows = client
                        .query(
                            "UPDATE egressd_runs SET state = 'failure', status = 'abandoned',
                                 reason = $1, lease_until = NULL
                             WHERE state = 'running' AND lease_until < now()
                             RETURNING schedule_id, scheduled_for",
                            &[&ABANDONED],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                })
                .await
                .map_err(unavailable)
        })
    }
}

fn is_foreign_key_violation(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
}
