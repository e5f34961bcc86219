//! Activation delay: a newly added allowlist pattern becomes active only after
//! `proxy.activation_delay`; a removed one stops at once; a re-added one starts over.
//!
//! The [`ActivationBook`] remembers, per pattern, when it was added and when it becomes active.
//! It is persisted in `state_dir/activation.json` (temp file + fsync + rename) so a restart
//! cannot bypass the delay:
//! - no state file (the very first start): every configured pattern is active at once;
//! - a recorded pattern keeps its times, active or pending;
//! - a pattern the file does not know (added while egressd was down) starts its delay now;
//! - an unreadable or corrupt file is reported and every pattern starts its delay now — the
//!   safe side — instead of crashing or trusting nothing-at-all as "all active".

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::policy::allowlist::{Allowlist, Pattern};
use crate::util::fsio::write_atomically;
use crate::util::time::unix_ms;

const STATE_FILE: &str = "activation.json";

/// Added and active times of one pattern, in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub added_at: u64,
    pub active_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    /// Pattern text (as `Pattern` displays it) → times.
    patterns: BTreeMap<String, Stamp>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: unknown version {version}", path.display())]
    Version { path: PathBuf, version: u32 },
}

/// How the book was opened, for the startup log.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    FirstStart,
    Restored { known: usize, new: usize },
    Corrupt(String),
}

/// The activation times of the patterns currently configured.
#[derive(Clone, Debug)]
pub struct ActivationBook {
    file: Option<PathBuf>,
    stamps: HashMap<Pattern, Stamp>,
}

impl ActivationBook {
    /// Opens the book for `allowlist` at start-up, creating `state_dir` if needed. `state_dir`
    /// `None` keeps the book in memory only (tests, `explain` without a state dir).
    pub fn open(
        state_dir: Option<&Path>,
        allowlist: &Allowlist,
        delay: Duration,
        now: SystemTime,
    ) -> (Self, Opened) {
        let now_ms = unix_ms(now);
        let file = state_dir.map(|dir| dir.join(STATE_FILE));
        if let Some(file) = &file {
            crate::util::fsio::remove_leftovers(file);
        }
        let (recorded, opened) = match file.as_deref().map(read_state) {
            None | Some(Ok(None)) => (None, Opened::FirstStart),
            Some(Ok(Some(stamps))) => (Some(stamps), Opened::Restored { known: 0, new: 0 }),
            Some(Err(err)) => (Some(HashMap::new()), Opened::Corrupt(err.to_string())),
        };
        let fresh = Stamp {
            added_at: now_ms,
            active_at: now_ms,
        };
        let pending = Stamp {
            added_at: now_ms,
            active_at: now_ms + delay.as_millis() as u64,
        };
        let mut stamps = HashMap::with_capacity(allowlist.len());
        let (mut known, mut new) = (0, 0);
        for pattern in allowlist.patterns() {
            let stamp = match recorded.as_ref().map(|map| map.get(pattern)) {
                None => fresh,
                Some(Some(stamp)) => {
                    known += 1;
                    *stamp
                }
                Some(None) => {
                    new += 1;
                    pending
                }
            };
            stamps.insert(pattern.clone(), stamp);
        }
        let opened = match opened {
            Opened::Restored { .. } => Opened::Restored { known, new },
            other => other,
        };
        (ActivationBook { file, stamps }, opened)
    }

    /// Reads the book of a running instance without changing it (for `explain`).
    pub fn peek(state_dir: &Path) -> Result<Option<Self>, StateError> {
        let file = state_dir.join(STATE_FILE);
        Ok(read_state(&file)?.map(|stamps| ActivationBook { file: None, stamps }))
    }

    /// Follows a reload: new patterns start their delay, removed ones are forgotten (so a
    /// re-add starts over), the rest keep their times. Returns the patterns added and how
    /// many were removed.
    pub fn update(
        &mut self,
        allowlist: &Allowlist,
        delay: Duration,
        now: SystemTime,
    ) -> (Vec<String>, usize) {
        let now_ms = unix_ms(now);
        let before = self.stamps.len();
        self.stamps.retain(|pattern, _| allowlist.contains(pattern));
        let removed = before - self.stamps.len();
        let pending = Stamp {
            added_at: now_ms,
            active_at: now_ms + delay.as_millis() as u64,
        };
        let mut added = Vec::new();
        for pattern in allowlist.patterns() {
            if !self.stamps.contains_key(pattern) {
                self.stamps.insert(pattern.clone(), pending);
                added.push(pattern.to_string());
            }
        }
        (added, removed)
    }

    /// Takes the times agreed with the other replicas for the patterns this book has;
    /// returns whether any changed.
    pub fn agree_with(&mut self, agreed: &HashMap<Pattern, Stamp>) -> bool {
        let mut changed = false;
        for (pattern, stamp) in &mut self.stamps {
            if let Some(theirs) = agreed.get(pattern) {
                changed |= stamp != theirs;
                *stamp = *theirs;
            }
        }
        changed
    }

    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// The state directory, when the book is persisted.
    pub fn dir(&self) -> Option<&Path> {
        self.file.as_deref().and_then(Path::parent)
    }

    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    pub fn stamp(&self, pattern: &Pattern) -> Option<Stamp> {
        self.stamps.get(pattern).copied()
    }

    /// Copies the activation times into the allowlist's index. Patterns the book does not
    /// know get `unknown_active_at` (only `explain` against a live state dir meets them).
    pub fn apply(&self, allowlist: &mut Allowlist, unknown_active_at: u64) {
        for id in 0..allowlist.len() as u32 {
            match self.stamps.get(allowlist.pattern(id)) {
                Some(stamp) => {
                    allowlist.set_active_at(id, stamp.active_at);
                    allowlist.set_added_at(id, stamp.added_at);
                }
                None => allowlist.set_active_at(id, unknown_active_at),
            }
        }
    }

    /// Writes the book atomically: temp file, fsync, rename, fsync of the directory.
    pub fn persist(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        // Sorted, one pattern per line: stable output that diffs well. Patterns are plain
        // ASCII host syntax, so they need no JSON escaping.
        let mut entries: Vec<(String, Stamp)> = self
            .stamps
            .iter()
            .map(|(p, s)| (p.to_string(), *s))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut bytes = Vec::with_capacity(entries.len() * 72 + 32);
        bytes.extend_from_slice(b"{\"version\":1,\"patterns\":{");
        for (i, (pattern, stamp)) in entries.iter().enumerate() {
            let sep = if i == 0 { "\n" } else { ",\n" };
            write!(
                bytes,
                "{sep}\"{pattern}\":{{\"added_at\":{},\"active_at\":{}}}",
                stamp.added_at, stamp.active_at
            )?;
        }
        bytes.extend_from_slice(b"\n}}\n");
        write_atomically(file, &bytes)
    }
}

/// `Ok(None)` when there is no state file yet.
/// Entries whose pattern no longer parses are dropped: they cannot be in any valid config.
fn read_state(file: &Path) -> Result<Option<HashMap<Pattern, Stamp>>, StateError> {
    let path = || file.to_path_buf();
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path(),
                source,
            })
        }
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path(),
        source,
    })?;
    if state.version != 1 {
        return Err(StateError::Version {
            path: path(),
            version: state.version,
        });
    }
    let stamps = state
        .patterns
        .into_iter()
        .filter_map(|(text, stamp)| Pattern::parse(&text).ok().map(|p| (p, stamp)))
        .collect();
    Ok(Some(stamps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Pattern;
    use std::time::UNIX_EPOCH;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::new(entries.iter().map(|e| Pattern::parse(e).unwrap()))
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    const DELAY: Duration = Duration::from_secs(300);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn first_start_activates_everything_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (book, opened) =
            ActivationBook::open(Some(dir.path()), &list(&["a.com"]), DELAY, at(0));
        assert_eq!(opened, Opened::FirstStart);
        assert_eq!(book.stamp(&pat("a.com")).unwrap().active_at, unix_ms(at(0)));
    }

    #[test]
    fn reload_adds_pending_removes_at_once_and_readd_starts_over() {
        let (mut book, _) = ActivationBook::open(None, &list(&["a.com"]), DELAY, at(0));
        assert_eq!(
            book.update(&list(&["a.com", "b.com"]), DELAY, at(10)),
            (vec!["b.com".to_string()], 0)
        );
        assert_eq!(
            book.stamp(&pat("b.com")).unwrap().active_at,
            unix_ms(at(310))
        );
        assert_eq!(book.update(&list(&["a.com"]), DELAY, at(20)), (vec![], 1));
        assert_eq!(book.stamp(&pat("b.com")), None);
        book.update(&list(&["a.com", "b.com"]), DELAY, at(30));
        assert_eq!(
            book.stamp(&pat("b.com")).unwrap().active_at,
            unix_ms(at(330))
        );
        assert_eq!(book.stamp(&pat("a.com")).unwrap().active_at, unix_ms(at(0)));
    }

    #[test]
    fn restart_keeps_times_and_delays_patterns_added_while_down() {
        let dir = tempfile::tempdir().unwrap();
        let (mut book, _) = ActivationBook::open(Some(dir.path()), &list(&["a.com"]), DELAY, at(0));
        book.update(&list(&["a.com", "b.com"]), DELAY, at(10));
        book.persist().unwrap();
        let (book, opened) = ActivationBook::open(
            Some(dir.path()),
            &list(&["a.com", "b.com", "c.com"]),
            DELAY,
            at(100),
        );
        assert_eq!(opened, Opened::Restored { known: 2, new: 1 });
        assert_eq!(book.stamp(&pat("a.com")).unwrap().active_at, unix_ms(at(0)));
        assert_eq!(
            book.stamp(&pat("b.com")).unwrap().active_at,
            unix_ms(at(310)),
            "original time kept"
        );
        assert_eq!(
            book.stamp(&pat("c.com")).unwrap().active_at,
            unix_ms(at(400)),
            "delay starts at the restart"
        );
    }

    #[test]
    fn corrupt_state_puts_everything_pending() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        let (book, opened) =
            ActivationBook::open(Some(dir.path()), &list(&["a.com"]), DELAY, at(0));
        assert!(
            matches!(opened, Opened::Corrupt(ref e) if e.contains("activation.json")),
            "{opened:?}"
        );
        assert_eq!(
            book.stamp(&pat("a.com")).unwrap().active_at,
            unix_ms(at(300))
        );
    }

    #[test]
    fn apply_sets_the_index_times() {
        let (mut book, _) = ActivationBook::open(None, &list(&["a.com"]), DELAY, at(0));
        let mut l = list(&["a.com", "b.com"]);
        book.update(&l, DELAY, at(5));
        book.apply(&mut l, 0);
        assert_eq!(l.active_at(0), unix_ms(at(0)));
        assert_eq!(l.active_at(1), unix_ms(at(305)));
    }
}
