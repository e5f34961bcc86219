//! The local copy of the shared state in `proxy.state_dir`: the shared allowlist entries as
//! last read, so a replica restarted while the database is away still serves them (their
//! activation times are in `activation.json` beside it).

use std::path::Path;

use crate::policy::allowlist::Pattern;
use crate::util::fsio::write_atomically;

const ENTRIES_FILE: &str = "shared-allowlist.json";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesFile {
    version: u32,
    entries: Vec<String>,
}

/// Writes the entries atomically (temp file, fsync, rename).
pub fn save_entries(state_dir: &Path, entries: &[Pattern]) -> std::io::Result<()> {
    let file = EntriesFile {
        version: 1,
        entries: entries.iter().map(|p| p.to_string()).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("serializable");
    write_atomically(&state_dir.join(ENTRIES_FILE), &bytes)
}

/// The entries last written; none when there is no copy (or it cannot be read, which is
/// logged: the file's entries still serve).
pub fn load_entries(state_dir: &Path) -> Vec<Pattern> {
    let path = state_dir.join(ENTRIES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            tracing::error!(file = %path.display(), error = %err, "cannot read the local copy of the shared allowlist");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<EntriesFile>(&bytes) {
        Ok(file) => file
            .entries
            .iter()
            .filter_map(|e| Pattern::parse(e).ok())
            .collect(),
        Err(err) => {
            tracing::error!(file = %path.display(), error = %err, "the local copy of the shared allowlist is corrupt; ignored");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_round_trip_and_a_missing_copy_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_entries(dir.path()).is_empty());
        let entries = vec![
            Pattern::parse("api.example.com").unwrap(),
            Pattern::parse("*.example.org").unwrap(),
        ];
        save_entries(dir.path(), &entries).unwrap();
        assert_eq!(load_entries(dir.path()), entries);
        std::fs::write(dir.path().join(ENTRIES_FILE), "{ not json").unwrap();
        assert!(load_entries(dir.path()).is_empty());
    }
}
