//! Writing state files so that a crash at any moment leaves either the old file or the new
//! one, never a torn one.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `file` atomically: a temp file beside it (a name of its own per write,
/// so two writers or a crash's leftover never share one), fsync, rename over `file`, fsync
/// of the directory. Creates the directory if needed. A failed write removes its temp file.
pub fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(file, bytes, Mode::Default)
}

/// As [`write_atomically`], the file readable by its owner only (mode 0600) from the moment
/// it exists: for the sealed secrets.
pub fn write_privately(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(file, bytes, Mode::OwnerOnly)
}

/// The permission bits a written file gets.
enum Mode {
    /// As the umask says.
    Default,
    /// 0600.
    OwnerOnly,
    /// The replaced file's (and its owner, where allowed).
    Like(std::fs::Metadata),
}

/// Replaces an existing `file` atomically as [`write_atomically`] does, giving the new file
/// the old one's permission bits (and, where allowed, its owner), as an editor would.
pub fn replace_keeping_mode(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(file)?;
    write_with(file, bytes, Mode::Like(meta))
}

/// Removes the temp files an interrupted [`write_atomically`] of `file` left behind (a crash
/// or `kill -9` between creating one and renaming it). Call it when opening `file`, before
/// this process writes it: every temp file then is a leftover. Returns how many it removed.
pub fn remove_leftovers(file: &Path) -> usize {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return 0;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let leftover = entry.file_name();
        let leftover = leftover.to_string_lossy();
        if leftover.starts_with(&prefix) && leftover.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a temp file an interrupted write left");
                    removed += 1;
                }
                Err(err) => {
                    tracing::warn!(file = %entry.path().display(), error = %err, "cannot remove a temp file an interrupted write left")
                }
            }
        }
    }
    removed
}

fn write_with(file: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = file.parent().expect("a state file has a directory");
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .expect("a state file has a name")
        .to_string_lossy();
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if matches!(mode, Mode::OwnerOnly) {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        if let Mode::Like(meta) = &mode {
            use std::os::unix::fs::MetadataExt;
            f.set_permissions(meta.permissions())?;
            // Only root may give a file away; otherwise the file stays ours, as with an editor.
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_this_file_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("schedules.json");
        write_atomically(&file, b"{}").unwrap();
        let keep = [
            "schedules.json",
            "activation.json",
            ".activation.json.7.0.tmp",
            "schedules.json.tmp",
        ];
        let gone = [".schedules.json.7.0.tmp", ".schedules.json.1.12.tmp"];
        for name in keep.iter().chain(&gone) {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_leftovers(&file), gone.len());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<&str> = keep.to_vec();
        expected.sort();
        assert_eq!(left, expected);
    }
}
