//! Schedules and their run records, persisted in `state_dir/schedules.json`.
//!
//! The store sits behind [`ScheduleStore`]: one replica owns the schedules in a file
//! ([`FileStore`]), or several share them in PostgreSQL (`crate::state`), where a run is
//! [claimed](ScheduleStore::claim) before it is invoked so that each tick fires once. In the
//! file store every change is written before it is acknowledged (temp file, fsync,
//! rename, fsync of the directory), so a `kill -9` at any moment leaves the last
//! acknowledged state readable. Creating checks the limit and inserts under one lock, so
//! concurrent creates can never exceed it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::cron::{CronError, CronExpr};
pub use super::run::{RunRecord, RunState, RunStatus};
use crate::util::fsio::write_atomically;
use crate::util::sync::lock;

/// At most this many schedules exist at any time.
pub const MAX_SCHEDULES: usize = 10;
/// A payload holds at most this many characters (Unicode scalar values, not bytes).
pub const MAX_PAYLOAD_CHARS: usize = 8000;
/// Run records kept per schedule.
pub const RUNS_KEPT: usize = 20;

const STATE_FILE: &str = "schedules.json";

/// A schedule as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub function: String,
    pub cron: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// Newest last, at most [`RUNS_KEPT`].
    pub runs: VecDeque<RunRecord>,
}

impl Schedule {
    /// A schedule as created from `new` at `now`, with no runs yet.
    pub fn new(id: String, new: NewSchedule, now: DateTime<Utc>) -> Schedule {
        Schedule {
            id,
            function: new.function,
            cron: new.cron.to_string(),
            payload: new.payload,
            created_at: now,
            runs: VecDeque::new(),
        }
    }

    pub fn last_run(&self) -> Option<&RunRecord> {
        self.runs.back()
    }
}

/// Why a schedule cannot be created: each maps to one API status and names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Cron(CronError),
    #[error("the payload has {0} characters; at most {MAX_PAYLOAD_CHARS} are allowed")]
    PayloadTooLong(usize),
    #[error(
        "function {0:?} is not deployed as productive; only productive functions can be scheduled"
    )]
    NotProductive(String),
}

impl RuleError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RuleError::Cron(_) => "cron",
            RuleError::PayloadTooLong(_) => "payload",
            RuleError::NotProductive(_) => "function",
        }
    }
}

/// A request for a schedule, checked against the rules before it reaches the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSchedule {
    pub function: String,
    pub cron: CronExpr,
    pub payload: String,
}

impl NewSchedule {
    /// Checks the rules: a valid cron expression, a payload within the limit, a productive
    /// function (`is_productive` asks the config in force).
    pub fn new(
        function: &str,
        cron: &str,
        payload: &str,
        is_productive: impl Fn(&str) -> bool,
    ) -> Result<NewSchedule, RuleError> {
        if !is_productive(function) {
            return Err(RuleError::NotProductive(function.to_string()));
        }
        let cron = CronExpr::parse(cron).map_err(RuleError::Cron)?;
        let chars = payload.chars().count();
        if chars > MAX_PAYLOAD_CHARS {
            return Err(RuleError::PayloadTooLong(chars));
        }
        Ok(NewSchedule {
            function: function.to_string(),
            cron,
            payload: payload.to_string(),
        })
    }
}

/// Why the store refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{MAX_SCHEDULES} schedules exist already; delete one first")]
    LimitReached,
    #[error("no schedule {0:?}")]
    NotFound(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The shared state (the database) cannot be reached or answered with an error.
    #[error("the shared state is unavailable: {0}")]
    Unavailable(String),
}

/// Who invokes a due run when several replicas see it due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This replica invokes it, and records how it ended.
    Won,
    /// Another replica claimed this tick first: it invokes it.
    Taken,
    /// A run of the schedule is still going (on any replica): this one is skipped.
    Busy,
}

/// Where schedules live: [`FileStore`] for one replica, PostgreSQL for several. Every method
/// may block (a write is fsynced, or a query waits for the database): call them from a
/// blocking thread.
pub trait ScheduleStore: Send + Sync {
    fn list(&self) -> Result<Vec<Schedule>, StoreError>;
    fn get(&self, id: &str) -> Result<Option<Schedule>, StoreError>;
    /// Checks the limit and inserts in one step.
    fn create(&self, new: NewSchedule, now: DateTime<Utc>) -> Result<Schedule, StoreError>;
    fn delete(&self, id: &str) -> Result<Schedule, StoreError>;
    /// Appends a run record, keeping the newest [`RUNS_KEPT`].
    fn record_run(&self, id: &str, run: RunRecord) -> Result<(), StoreError>;
    /// Deletes every schedule of `function` (it was undeployed); returns them.
    fn delete_for_function(&self, function: &str) -> Result<Vec<Schedule>, StoreError>;
    /// Claims the run of `id` due at `nominal` (or asked for by hand then) for this replica,
    /// for at most `lease`: of several replicas that see it due, one wins. A run claimed and
    /// not recorded within its lease is marked abandoned, never invoked again.
    fn claim(
        &self,
        id: &str,
        nominal: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Claim, StoreError>;
    /// Marks the claimed runs whose lease ran out without an outcome as abandoned (their
    /// replica stopped); returns them as (schedule, nominal time).
    fn abandon_expired(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;
}

/// Schedules in a JSON file in `state_dir`. Its methods block (a change is written and
/// fsynced before it returns): call them from a blocking thread.
pub struct FileStore {
    file: PathBuf,
    /// The schedules as last written; held only to read or swap, never across a write, so
    /// a reader never waits for an fsync.
    schedules: Mutex<Arc<BTreeMap<String, Schedule>>>,
    /// One change at a time, held across the write: changes are written in the order made.
    writing: Mutex<()>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    schedules: Vec<Schedule>,
}

/// Why the state file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct OpenError {
    pub path: PathBuf,
    pub message: String,
}

impl FileStore {
    /// Opens the store in `state_dir`; no file yet is an empty store.
    pub fn open(state_dir: &Path) -> Result<FileStore, OpenError> {
        let file = state_dir.join(STATE_FILE);
        let error = |message: String| OpenError {
            path: file.clone(),
            message,
        };
        crate::util::fsio::remove_leftovers(&file);
        let schedules = match std::fs::read(&file) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))?;
                if state.version != 1 {
                    return Err(error(format!("unknown version {}", state.version)));
                }
                state
                    .schedules
                    .into_iter()
                    .map(|s| (s.id.clone(), s))
                    .collect()
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(error(err.to_string())),
        };
        Ok(FileStore {
            file,
            schedules: Mutex::new(Arc::new(schedules)),
            writing: Mutex::new(()),
        })
    }

    /// Applies `change` to a copy, writes it, and only then keeps it: a failed write changes
    /// nothing, and readers see the change only once it is on disk.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Schedule>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _one_at_a_time = lock(&self.writing);
        let mut next = BTreeMap::clone(&self.current());
        let value = change(&mut next)?;
        self.persist(&next).map_err(|source| StoreError::Write {
            path: self.file.clone(),
            source,
        })?;
        *lock(&self.schedules) = Arc::new(next);
        Ok(value)
    }

    /// The schedules as last written.
    fn current(&self) -> Arc<BTreeMap<String, Schedule>> {
        lock(&self.schedules).clone()
    }

    fn persist(&self, schedules: &BTreeMap<String, Schedule>) -> std::io::Result<()> {
        let state = StateFile {
            version: 1,
            schedules: schedules.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&state).expect("serializable");
        write_atomically(&self.file, &bytes)
    }
}

/// A new random schedule id: `sch_` and 16 hex digits.
pub fn new_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sch_{hex}")
}

impl FileStore {
    /// The schedules, oldest first (no I/O).
    pub fn schedules(&self) -> Vec<Schedule> {
        let schedules = self.current();
        let mut list: Vec<Schedule> = schedules.values().cloned().collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        list
    }
}

impl ScheduleStore for FileStore {
    fn list(&self) -> Result<Vec<Schedule>, StoreError> {
        Ok(self.schedules())
    }

    fn get(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        Ok(self.current().get(id).cloned())
    }

    /// One replica owns the file: every run is its own (overlap within the replica is the
    /// scheduler's running set).
    fn claim(
        &self,
        id: &str,
        _nominal: DateTime<Utc>,
        _lease: std::time::Duration,
    ) -> Result<Claim, StoreError> {
        match self.current().contains_key(id) {
            true => Ok(Claim::Won),
            false => Err(StoreError::NotFound(id.to_string())),
        }
    }

    fn abandon_expired(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        Ok(Vec::new())
    }

    fn create(&self, new: NewSchedule, now: DateTime<Utc>) -> Result<Schedule, StoreError> {
        self.change(|schedules| {
            if schedules.len() >= MAX_SCHEDULES {
                return Err(StoreError::LimitReached);
            }
            let schedule = Schedule::new(new_id(), new, now);
            schedules.insert(schedule.id.clone(), schedule.clone());
            Ok(schedule)
        })
    }

    fn delete(&self, id: &str) -> Result<Schedule, StoreError> {
        self.change(|schedules| {
            schedules
                .remove(id)
                .ok_or_else(|| StoreError::NotFound(id.to_string()))
        })
    }

    fn record_run(&self, id: &str, run: RunRecord) -> Result<(), StoreError> {
        self.change(|schedules| {
            let schedule = schedules
                .get_mut(id)
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            schedule.runs.push_back(run);
            while schedule.runs.len() > RUNS_KEPT {
                schedule.runs.pop_front();
            }
            Ok(())
        })
    }

    fn delete_for_function(&self, function: &str) -> Result<Vec<Schedule>, StoreError> {
        if !self.current().values().any(|s| s.function == function) {
            return Ok(Vec::new());
        }
        self.change(|schedules| {
            let ids: Vec<String> = schedules
                .values()
                .filter(|s| s.function == function)
                .map(|s| s.id.clone())
                .collect();
            Ok(ids.iter().filter_map(|id| schedules.remove(id)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn productive(name: &str) -> bool {
        name == "refresh-token"
    }

    fn new(payload: &str) -> NewSchedule {
        NewSchedule::new("refresh-token", "*/5 * * * *", payload, productive).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-28T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_rules_name_the_field_at_fault() {
        let multibyte = "é".repeat(MAX_PAYLOAD_CHARS);
        assert_eq!(multibyte.len(), 2 * MAX_PAYLOAD_CHARS, "two bytes each");
        assert!(NewSchedule::new("refresh-token", "@hourly", &multibyte, productive).is_ok());
        // (name, function, cron, payload, field at fault)
        let over = format!("{multibyte}é");
        let cases = [
            (
                "8001 characters",
                "refresh-token",
                "@hourly",
                over.as_str(),
                "payload",
            ),
            (
                "an undeployed function",
                "old-fn",
                "@hourly",
                "{}",
                "function",
            ),
            (
                "an invalid expression",
                "refresh-token",
                "61 * * * *",
                "{}",
                "cron",
            ),
        ];
        for (name, function, cron, payload, field) in cases {
            let err = NewSchedule::new(function, cron, payload, productive).unwrap_err();
            assert_eq!(err.field(), field, "{name}: {err}");
        }
    }

    #[test]
    fn at_most_ten_even_when_created_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStore::open(dir.path()).unwrap());
        let created: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    let store = store.clone();
                    scope.spawn(move || store.create(new(&format!("{i}")), now()).is_ok())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(created.iter().filter(|ok| **ok).count(), MAX_SCHEDULES);
        assert_eq!(store.schedules().len(), MAX_SCHEDULES);
        assert!(matches!(
            store.create(new("one more"), now()),
            Err(StoreError::LimitReached)
        ));
    }

    #[test]
    fn schedules_and_runs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let kept = store.create(new("{\"a\":1}"), now()).unwrap();
        let gone = store.create(new("x"), now()).unwrap();
        for i in 0..(RUNS_KEPT + 5) {
            let run = RunRecord {
                scheduled_for: now(),
                state: RunState::Success,
                status: RunStatus::Http(200),
                duration_ms: i as u64,
                reason: None,
            };
            store.record_run(&kept.id, run).unwrap();
        }
        store.delete(&gone.id).unwrap();
        drop(store);

        let store = FileStore::open(dir.path()).unwrap();
        let list = store.schedules();
        assert_eq!(list.len(), 1);
        let schedule = &list[0];
        assert_eq!(schedule.payload, "{\"a\":1}");
        assert_eq!(
            schedule.runs.len(),
            RUNS_KEPT,
            "the newest {RUNS_KEPT} are kept"
        );
        assert_eq!(
            schedule.last_run().unwrap().duration_ms,
            (RUNS_KEPT + 4) as u64
        );
        assert!(matches!(
            store.delete(&gone.id),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = FileStore::open(&state).unwrap();
        store.create(new("kept"), now()).unwrap();
        // A file where the state directory is: every write fails, even as root.
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::write(&state, "not a directory").unwrap();
        assert!(matches!(
            store.create(new("lost"), now()),
            Err(StoreError::Write { .. })
        ));
        assert_eq!(store.schedules().len(), 1, "the refused create is not kept");
    }

    #[test]
    fn undeploying_deletes_the_functions_schedules() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.create(new("a"), now()).unwrap();
        store.create(new("b"), now()).unwrap();
        assert_eq!(store.delete_for_function("refresh-token").unwrap().len(), 2);
        assert!(store.schedules().is_empty());
        assert!(store
            .delete_for_function("refresh-token")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{ not json").unwrap();
        let err = FileStore::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("schedules.json"), "{err}");
    }
}
