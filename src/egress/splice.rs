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

/// A pipe on loan from the thread's spares. It goes back when dropped empty; dropped holding
/// bytes (a tunnel cut mid-transfer), it is closed, so no byte can reach another tunnel.
pub(super) struct Loaned {
    pipe: Option<Pipe>,
    /// Bytes in the pipe: spliced in, not yet spliced out.
    held: usize,
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
        Ok(Loaned {
            pipe: Some(pipe),
            held: 0,
        })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a loaned pipe is present until dropped")
    }

    /// Bytes in the pipe, waiting to be spliced out.
    pub(super) fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Loaned {
    fn drop(&mut self) {
        if self.held > 0 {
            return; // closed with its bytes
        }
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
    /// Moves up to [`CHUNK`] bytes from `from` into the pipe, which must be empty (so an
    /// `EAGAIN` can only mean the socket has nothing).
    pub(super) fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "a pipe is filled only when empty");
        let write = self.pipe().write.as_fd();
        let n = from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), None, write, None, CHUNK, flags()).map_err(io::Error::from)
        })?;
        self.held += n;
        Ok(n)
    }

    /// Moves what the pipe holds (some of it, if `to` is full) out to `to`.
    pub(super) fn drain(&mut self, to: &TcpStream) -> io::Result<usize> {
        let (read, held) = (self.pipe().read.as_fd(), self.held);
        let n = to.try_io(Interest::WRITABLE, || {
            splice(read, None, to.as_fd(), None, held, flags()).map_err(io::Error::from)
        })?;
        self.held -= n;
        Ok(n)
    }
}
