//! The zero-copy pump: socket → pipe → socket with splice(2), bytes never entering user
//! space.
//!
//! An idle direction holds no pipe. When its source becomes readable it takes a pipe pair
//! from a small per-thread pool, moves what is there, and gives the pipe back once the
//! source would block — always empty, because every chunk spliced into the pipe is spliced
//! out to the destination before the next read. A pipe that still holds bytes when the
//! tunnel ends in error is closed, never pooled. The system calls go through `rustix`'s safe
//! wrappers.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice: the default pipe capacity, so a splice into an empty pipe never
/// finds it full (and an `EAGAIN` always means the socket has nothing more).
const CHUNK: usize = 64 * 1024;
/// Spare pipes kept per worker thread.
const SPARE_PER_THREAD: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe's two ends.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// A pipe on loan from the thread's spares; it goes back when dropped empty.
pub(super) struct Loaned {
    pipe: Option<Pipe>,
}

impl Loaned {
    pub(super) fn take() -> io::Result<Loaned> {
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        let pipe = match spare {
            Some(pipe) => pipe,
            None => {
                let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
                Pipe { read, write }
            }
        };
        Ok(Loaned { pipe: Some(pipe) })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a loaned pipe is present until dropped")
    }

    /// Closes the pipe instead of pooling it: it may still hold bytes.
    pub(super) fn discard(mut self) {
        self.pipe = None;
    }
}

impl Drop for Loaned {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let _ = SPARE.try_with(|s| {
                let mut spare = s.borrow_mut();
                if spare.len() < SPARE_PER_THREAD {
                    spare.push(pipe);
                }
            });
        }
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

impl Loaned {
    /// Moves up to [`CHUNK`] bytes from `from` into the (empty) pipe.
    pub(super) fn fill(&self, from: &TcpStream) -> io::Result<usize> {
        from.try_io(Interest::READABLE, || {
            splice(
                from.as_fd(),
                None,
                self.pipe().write.as_fd(),
                None,
                CHUNK,
                flags(),
            )
            .map_err(io::Error::from)
        })
    }

    /// Moves up to `n` bytes from the pipe out to `to`.
    pub(super) fn drain(&self, to: &TcpStream, n: usize) -> io::Result<usize> {
        to.try_io(Interest::WRITABLE, || {
            splice(self.pipe().read.as_fd(), None, to.as_fd(), None, n, flags())
                .map_err(io::Error::from)
        })
    }
}
