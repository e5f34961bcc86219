//! Watching files for changes: the config file for reload, the `[[mtls]]` identity files for
//! rotation.
//!
//! The watcher watches each file's directory, not the file: editors replace files by rename
//! and Kubernetes swaps a `..data` symlink, and both only show up as directory events. Only
//! events that can change what egressd reads count — creation, modification, rename and
//! removal of a watched file or of `..data` — never accesses (each reload reads the file,
//! and counting that read would reload forever) and never other files in the directory.
//! A burst of events settles into one call, so a file written in several steps is read once,
//! whole.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{MetadataKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// How long the directory must be quiet before a burst of events becomes one reload: an
/// editor's write-and-rename, or `cat > file` in two writes, is read once, whole.
const SETTLE: Duration = Duration::from_millis(200);

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The platform's watcher could not be created.
    #[error(transparent)]
    Start(#[from] notify::Error),
    /// A directory could not be watched (missing, unreadable, out of inotify watches).
    #[error("cannot watch {}: {error}", dir.display())]
    Dir { dir: PathBuf, error: notify::Error },
}

/// File names in the watched directories whose changes count: the files themselves and
/// the Kubernetes `..data` link (a ConfigMap or Secret swap).
fn watched_names(files: &[PathBuf]) -> Vec<OsString> {
    let mut names = vec![OsString::from("..data")];
    names.extend(
        files
            .iter()
            .filter_map(|f| f.file_name())
            .map(OsString::from),
    );
    names
}

/// Whether a watch event can change what egressd reads.
fn is_relevant(event: &Event, names: &[OsString]) -> bool {
    let kind_counts = match event.kind {
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    };
    kind_counts
        && event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| names.iter().any(|n| n == name))
        })
}

/// Watches the directories of `files` (not the files: editors replace files by rename and
/// Kubernetes swaps a `..data` link) and calls `on_change` on a blocking thread once the
/// relevant events settle. The returned watcher must be kept alive.
pub fn watch_files(
    files: &[PathBuf],
    on_change: impl Fn() + Send + Sync + 'static,
) -> Result<RecommendedWatcher, WatchError> {
    let names = watched_names(files);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<Event>| match result {
            Ok(event) if is_relevant(&event, &names) => {
                tracing::trace!(?event, "watch event");
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "file watch error"),
        })?;
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| watch_dir(f)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|error| WatchError::Dir {
                dir: dir.clone(),
                error,
            })?;
    }
    let on_change = Arc::new(on_change);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait until no event has come for SETTLE.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            let on_change = on_change.clone();
            let _ = tokio::task::spawn_blocking(move || on_change()).await;
        }
    });
    Ok(watcher)
}

fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, RenameMode};

    /// (name, event kind, file name, reloads?)
    const EVENTS: &[(&str, EventKind, &str, bool)] = &[
        (
            "reading the config",
            EventKind::Access(AccessKind::Read),
            "egressd.toml",
            false,
        ),
        (
            "closing the config after a read",
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "egressd.toml",
            false,
        ),
        (
            "writing the config",
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            "egressd.toml",
            true,
        ),
        (
            "renaming a file over the config",
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "egressd.toml",
            true,
        ),
        (
            "creating the config",
            EventKind::Create(CreateKind::File),
            "egressd.toml",
            true,
        ),
        (
            "removing the config",
            EventKind::Remove(notify::event::RemoveKind::File),
            "egressd.toml",
            true,
        ),
        (
            "the kubelet's ..data swap",
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "..data",
            true,
        ),
        (
            "a log file beside the config",
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            "egressd.log",
            false,
        ),
        (
            "an atime update",
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
            "egressd.toml",
            false,
        ),
    ];

    #[test]
    fn only_changes_to_what_egressd_reads_trigger_a_reload() {
        let names = watched_names(&[PathBuf::from("/etc/egressd/egressd.toml")]);
        for (name, kind, file, expected) in EVENTS {
            let event = Event::new(*kind).add_path(PathBuf::from("/etc/egressd").join(file));
            assert_eq!(is_relevant(&event, &names), *expected, "{name}");
        }
    }
}
