//! The drain before a shutdown: set at SIGTERM, before the listeners stop accepting, so that
//! readiness fails (`/readyz`: the Service stops sending new connections here) and keep-alive
//! clients are answered with `Connection: close` (they reconnect, to another replica), while
//! requests that still arrive in the meantime are served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether this process is draining; cloned into every listener.
#[derive(Clone, Debug, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Begins the drain; it never ends but with the process.
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
