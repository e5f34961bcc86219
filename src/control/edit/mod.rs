//! Allowlist edits from the admin API: the console's Add button and bin icon.
//!
//! An edit is what an operator with a text editor would do, nothing more: `allowlist.domains`
//! in the watched file gains or loses one string, with every comment and the layout kept
//! (`toml_edit`), the new text is validated as a whole (a reload would refuse it otherwise),
//! written atomically with the file's mode, and then loaded by the normal reload. So an added
//! entry waits out the activation delay and a removal cuts live tunnels, exactly as for a
//! hand edit.
//!
//! Edits are refused when `admin_allowlist_edit` is off (the default for a non-loopback admin
//! listener) or the file cannot be replaced (a Kubernetes ConfigMap mount is read-only); the
//! console shows why.
//!
//! [`array`] makes the edit in the file's text; [`check`] tells the console what an entry
//! would be before it is added.

mod array;
mod check;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use array::{add_entry, remove_entry};
pub use check::{check_entry, pattern_kind, EntryCheck};

use super::config::Config;
use crate::policy::allowlist::Pattern;
use crate::util::fsio::replace_keeping_mode;
use crate::util::sync::lock;

/// Why an edit was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// Edits are off, or the file cannot be replaced.
    #[error("{0}")]
    ReadOnly(String),
    #[error("{0}")]
    InvalidEntry(String),
    #[error("{0:?} is already on the allowlist (line {1})")]
    Duplicate(String, usize),
    #[error("{0:?} is not on the allowlist")]
    NotFound(String),
    /// The file does not have the shape an edit can keep (no `allowlist.domains` array).
    #[error("{0}")]
    Shape(String),
    /// The edited file would not load; it was not written.
    #[error("the edited file would not load: {}", .0.join("; "))]
    WouldNotLoad(Vec<String>),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Edits the watched config file's allowlist, one edit at a time.
pub struct AllowlistEditor {
    path: PathBuf,
    /// `admin_allowlist_edit`.
    enabled: bool,
    lock: Mutex<()>,
}

impl AllowlistEditor {
    pub fn new(path: PathBuf, enabled: bool) -> Self {
        AllowlistEditor {
            path,
            enabled,
            lock: Mutex::new(()),
        }
    }

    /// `Ok` when an edit could be written now, or why not.
    pub fn writable(&self) -> Result<(), String> {
        if !self.enabled {
            return Err("editing is off (proxy.admin_allowlist_edit = false, the default when the admin listener is not on loopback); edit the config file instead".into());
        }
        probe_writable(&self.path)
    }

    /// Adds `entry` (validated as `egressd check` would); returns the pattern as written.
    /// Blocking: call it from a blocking thread.
    pub fn add(&self, entry: &str) -> Result<Pattern, EditError> {
        let pattern = Pattern::parse(entry.trim())
            .map_err(|err| EditError::InvalidEntry(format!("{:?}: {err}", entry.trim())))?;
        self.edit(|text| add_entry(text, &pattern))?;
        Ok(pattern)
    }

    /// Removes the entry equal to `entry` (compared as patterns, so case and a trailing dot
    /// do not matter). Blocking.
    pub fn remove(&self, entry: &str) -> Result<Pattern, EditError> {
        let pattern = Pattern::parse(entry.trim())
            .map_err(|err| EditError::InvalidEntry(format!("{:?}: {err}", entry.trim())))?;
        self.edit(|text| remove_entry(text, &pattern))?;
        Ok(pattern)
    }

    fn edit(
        &self,
        change: impl FnOnce(&str) -> Result<String, EditError>,
    ) -> Result<(), EditError> {
        let _one_at_a_time = lock(&self.lock);
        self.writable().map_err(EditError::ReadOnly)?;
        // Write through a symlink, not over it: the link is the operator's layout.
        let file = std::fs::canonicalize(&self.path).map_err(|source| EditError::Io {
            path: self.path.clone(),
            source,
        })?;
        let text = std::fs::read_to_string(&file).map_err(|source| EditError::Io {
            path: file.clone(),
            source,
        })?;
        let edited = change(&text)?;
        if let Err(err) = Config::parse_for_reload(&self.path, &edited) {
            return Err(EditError::WouldNotLoad(err.problems()));
        }
        replace_keeping_mode(&file, edited.as_bytes())
            .map_err(|source| EditError::Io { path: file, source })
    }
}

/// Whether `path` can be replaced the way an edit replaces it: a temp file in the same
/// directory, renamed over the file.
fn probe_writable(path: &Path) -> Result<(), String> {
    let file = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.permissions().readonly() {
        return Err(format!(
            "{} is read-only; make it writable to edit the allowlist here",
            file.display()
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".egressd-write-probe.{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => Err(format!(
            "{} is on a read-only file system (a Kubernetes ConfigMap mount?); change the allowlist where the file comes from",
            dir.display()
        )),
        Err(e) => Err(format!("cannot create files in {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose multi-line `domains` array holds three entries with comments.
    const ORIGINAL: &str = "# top comment\n[proxy]\nlisten = \"127.0.0.1:3128\"\n\n[allowlist]\n# the list\ndomains = [\n  \"www.example.com\",  # the site\n  \"*.example.org\",\n  \"203.0.113.7\",      # a partner\n]\n# after\n";

    #[test]
    fn the_editor_writes_a_loadable_file_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let file = dir.join("egressd.toml");
        let original = ORIGINAL.to_string();
        std::fs::write(&file, &original).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let editor = AllowlistEditor::new(file.clone(), true);
        editor.add("new.test").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("  \"new.test\",\n"), "{text}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        editor.remove("new.test").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);

        let off = AllowlistEditor::new(file.clone(), false);
        assert!(matches!(off.add("x.test"), Err(EditError::ReadOnly(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "egressd-edit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
