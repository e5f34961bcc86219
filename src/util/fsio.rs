//! Writing state files so that a crash at any moment leaves either the old file or the new
//! one, never a torn one.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `file` atomically: a temp file beside it (a name of its own per write,
/// so two writers or a crash's leftover never share one), fsync, rename over `file`, fsync
/// of the directory. Creates the directory if needed. A failed write removes its temp file.
pub fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(file, bytes, None)
}

/// Replaces an existing `file` atomically as [`write_atomically`] does, giving the new file
/// the old one's permission bits (and, where allowed, its owner), as an editor would.
pub fn replace_keeping_mode(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(file)?;
    write_with(file, bytes, Some(meta))
}

fn write_with(file: &Path, bytes: &[u8], like: Option<std::fs::Metadata>) -> std::io::Result<()> {
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
        let mut f = std::fs::File::create(&tmp)?;
        if let Some(meta) = &like {
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
