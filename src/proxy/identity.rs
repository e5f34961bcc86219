//! Who sent a request: the credentials of `proxy.identity` checked before anything else, and
//! a client address that keeps presenting bad ones answered ever more slowly.
//!
//! The slowdown is a table of a fixed number of slots, indexed by a keyed hash of the
//! client address: its memory does not grow with the number of addresses, and a caller
//! cannot pick addresses that share a slot. An address sharing a slot with another only
//! resets that slot's count (it can be slowed less, never wrongly more).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, PROXY_AUTHENTICATE};
use http::{Request, Response, StatusCode};

use super::server::ClientConn;
use super::Proxy;
use crate::policy::identity::{Caller, Refusal};
use crate::policy::Protocol;
use crate::util::body::HttpBody;
use crate::util::sync::lock;

/// Slots in the failure table.
const SLOTS: usize = 4096;
/// Failures are counted per address over this window.
const WINDOW: Duration = Duration::from_secs(60);
/// Failures in a window answered at once; each one after that waits [`STEP`] longer.
const FREE_FAILURES: u32 = 5;
const STEP: Duration = Duration::from_millis(200);
/// The longest a refusal waits.
const MAX_DELAY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct Slot {
    ip: Option<IpAddr>,
    since: Instant,
    failures: u32,
}

/// Failed credentials per client address, bounded.
pub struct FailureThrottle {
    slots: Mutex<Vec<Slot>>,
    keys: foldhash::quality::RandomState,
}

impl Default for FailureThrottle {
    fn default() -> Self {
        let now = Instant::now();
        FailureThrottle {
            slots: Mutex::new(vec![
                Slot {
                    ip: None,
                    since: now,
                    failures: 0
                };
                SLOTS
            ]),
            keys: foldhash::quality::RandomState::default(),
        }
    }
}

/// What one more failure from an address means.
#[derive(Debug, PartialEq, Eq)]
pub struct Penalty {
    /// Failures from the address in the current window, this one included.
    pub failures: u32,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl FailureThrottle {
    /// Counts a failure from `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Penalty {
        let index = (self.keys.hash_one(ip) as usize) % SLOTS;
        let mut slots = lock(&self.slots);
        let slot = &mut slots[index];
        if slot.ip != Some(ip) || now.duration_since(slot.since) > WINDOW {
            *slot = Slot {
                ip: Some(ip),
                since: now,
                failures: 0,
            };
        }
        slot.failures = slot.failures.saturating_add(1);
        let over = slot.failures.saturating_sub(FREE_FAILURES);
        Penalty {
            failures: slot.failures,
            delay: STEP.saturating_mul(over).min(MAX_DELAY),
        }
    }
}

impl Proxy {
    /// Who sent `req`: a configured function, anonymous, or refused.
    pub(super) fn caller<B>(&self, req: &Request<B>) -> Result<Caller, Refusal> {
        self.identity.load().authenticate(req.headers())
    }

    /// Answers a request whose credentials were refused: `407` with the Basic challenge (a
    /// `400` for two `Proxy-Authorization` headers), counted and logged like every refusal,
    /// after the delay its address has earned.
    pub(super) async fn refuse_credentials<B>(
        &self,
        conn: &ClientConn,
        req: &Request<B>,
        refusal: Refusal,
    ) -> Response<HttpBody> {
        let denial = refusal.denial();
        self.refuse_credentials_with(conn, req, refusal, denial)
            .await
    }

    /// As [`Proxy::refuse_credentials`], explained by `denial`.
    pub(super) async fn refuse_credentials_with<B>(
        &self,
        conn: &ClientConn,
        req: &Request<B>,
        refusal: Refusal,
        denial: crate::policy::Denial,
    ) -> Response<HttpBody> {
        self.metrics.identity_failure(refusal.label());
        if matches!(refusal, Refusal::Malformed(_) | Refusal::Invalid) {
            self.slow_down(conn.addr.ip()).await;
        }
        let protocol = if req.method() == http::Method::CONNECT {
            Protocol::Connect
        } else {
            Protocol::Http
        };
        // `conn.caller` is still anonymous: no identity was established.
        let record = self.record(protocol, conn, req);
        if refusal == Refusal::Duplicate {
            return record.bad_request(denial.message);
        }
        let mut response = record.denied_with(denial, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        response.headers_mut().insert(
            PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"egressd\""),
        );
        response
    }

    /// Waits as long as `ip`'s failures call for; says so once when it starts to.
    async fn slow_down(&self, ip: IpAddr) {
        let penalty = self.failures.failed(ip, Instant::now());
        if penalty.delay.is_zero() {
            return;
        }
        if penalty.failures == FREE_FAILURES + 1 {
            tracing::warn!(client = %ip, failures = penalty.failures, window = ?WINDOW, "repeated failed proxy credentials from one address; its refusals are now answered after a growing delay");
        }
        self.metrics.identity_slowed.inc();
        tokio::time::sleep(penalty.delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_free_then_slowed_then_forgotten() {
        let throttle = FailureThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        let delays: Vec<Duration> = (0..8).map(|_| throttle.failed(a, start).delay).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 0, 0, 200, 400, 600].map(Duration::from_millis),
            "the first {FREE_FAILURES} are free, then {STEP:?} more each"
        );
        assert_eq!(
            throttle.failed(b, start).delay,
            Duration::ZERO,
            "another address is not slowed"
        );
        for _ in 0..100 {
            throttle.failed(a, start);
        }
        assert_eq!(throttle.failed(a, start).delay, MAX_DELAY, "bounded");
        let later = start + WINDOW + Duration::from_secs(1);
        assert_eq!(
            throttle.failed(a, later),
            Penalty {
                failures: 1,
                delay: Duration::ZERO
            },
            "a new window starts over"
        );
    }
}
