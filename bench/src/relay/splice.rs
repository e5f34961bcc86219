//! The splice relay's pump: socket → pipe → socket with splice(2), through `rustix`'s safe
//! wrappers.
//!
//! An idle direction holds no pipe. When its source turns readable it takes a pipe from a
//! small per-thread pool, moves what is there, and returns the pipe once the source would
//! block. Every chunk spliced into the pipe is spliced out in full before the next one goes
//! in, so the pipe is empty at each splice in, and a splice of [`CHUNK`] (no more than the
//! pipe's capacity) into it can only meet `EAGAIN` because the socket has nothing more. A
//! pipe that may still hold bytes (an error while draining) is closed, never pooled.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Bytes per splice in: the default pipe capacity (64 KiB).
const CHUNK: usize = 64 * 1024;
/// Spare pipes kept per runtime thread.
const SPARE_PER_THREAD: usize = 8;

thread_local! {
    /// Empty pipes of finished bursts on this thread, so a burst costs no pipe(2)/close(2).
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe's two ends.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = SPARE.with(|s| s.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to this thread's spares (or closes it when they are full).
    fn give_back(self) {
        let _ = SPARE.try_with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_PER_THREAD {
                spare.push(self);
            }
        });
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

/// Moves `from` → `to` until EOF, then half-closes `to`.
pub async fn pump(from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
    let source = from.as_ref();
    loop {
        from.readable().await?;
        // An early return drops (closes) the pipe: only an empty one goes back.
        let pipe = Pipe::take()?;
        loop {
            let moved = source.try_io(Interest::READABLE, || {
                splice(source, None, &pipe.write, None, CHUNK, flags()).map_err(io::Error::from)
            });
            match moved {
                Ok(0) => {
                    pipe.give_back();
                    return to.shutdown().await;
                }
                Ok(n) => drain(&pipe, n, &to).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        pipe.give_back();
    }
}

/// Moves the `n` bytes in the pipe out to `to`.
async fn drain(pipe: &Pipe, mut n: usize, to: &OwnedWriteHalf) -> io::Result<()> {
    let sink = to.as_ref();
    while n > 0 {
        to.writable().await?;
        let moved = sink.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, sink.as_fd(), None, n, flags()).map_err(io::Error::from)
        });
        match moved {
            // The pipe holds `n` bytes and we hold its write end: it cannot be at EOF.
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => n -= m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
