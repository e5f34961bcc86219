//! Byte relay for CONNECT tunnels.
//!
//! Bytes flow both ways until each side has closed its half (a half-close is passed on as a
//! shutdown of the other side's write half), or until neither side has sent anything for the
//! idle timeout. Activity and byte counts live in atomics shared with the watchdog, so a
//! tunnel cut for idleness still reports what it carried.
//!
//! [`relay_tcp`] is the hot path: both ends are plain TCP sockets. On Linux it moves bytes
//! with splice(2) through a pipe borrowed per burst ([`super::splice`]), so they never enter
//! user space; elsewhere, or with `tunnel_relay = "copy"`, it copies through a buffer that
//! likewise exists only while bytes are flowing — a direction waits for readability with no
//! buffer, takes one for the burst, and frees it when the socket would block. Ten thousand
//! idle tunnels therefore cost sockets and a small task each, not buffers or pipes each.
//! [`relay`] is the generic fallback for streams that are not TCP sockets.
//!
//! This module holds what a tunnel reports and the watchdog both relays share; `tcp` is the
//! TCP relay, `stream` the generic one.

mod stream;
mod tcp;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use stream::relay;
pub use tcp::relay_tcp;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed.
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// egressd cut it at shutdown.
    Cancelled,
    /// A reload no longer allows its target.
    Revoked,
    /// A socket error on either side.
    Error,
}

impl TunnelEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Idle => "idle-timeout",
            TunnelEnd::Cancelled => "cancelled",
            TunnelEnd::Revoked => "revoked",
            TunnelEnd::Error => "error",
        }
    }
}

/// What a finished tunnel carried.
#[derive(Debug, Clone, Copy)]
pub struct TunnelStats {
    /// Client → upstream.
    pub up: u64,
    /// Upstream → client.
    pub down: u64,
    pub end: TunnelEnd,
}

#[derive(Default)]
pub(super) struct Activity {
    /// Milliseconds since the tunnel started, at the last read on either side.
    last_ms: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl Activity {
    /// Stamps a read now.
    pub(super) fn touch(&self, start: Instant) {
        self.last_ms
            .store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// How [`relay_tcp`] moves bytes between two sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayKind {
    /// splice(2) through a pipe: zero-copy (Linux; elsewhere the copy relay is used).
    #[default]
    Splice,
    /// read/write through a buffer: for comparison, and where splice is unavailable.
    Copy,
}

impl RelayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Splice => "splice",
            RelayKind::Copy => "copy",
        }
    }
}

/// Drives `copy` to its end while watching for idleness and cancellation.
async fn watch<F, T>(
    copy: F,
    activity: &Activity,
    start: Instant,
    idle: Duration,
    cancel: &CancellationToken,
) -> TunnelEnd
where
    F: std::future::Future<Output = io::Result<T>>,
{
    tokio::pin!(copy);
    loop {
        let last = start + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
        tokio::select! {
            result = &mut copy => return if result.is_ok() { TunnelEnd::Closed } else { TunnelEnd::Error },
            _ = tokio::time::sleep_until(last + idle) => {
                let last = start + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                if last + idle <= Instant::now() {
                    return TunnelEnd::Idle;
                }
            }
            _ = cancel.cancelled() => return TunnelEnd::Cancelled,
        }
    }
}
