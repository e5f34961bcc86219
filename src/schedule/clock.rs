//! The scheduler's clock, passed in: the system's in production, a hand-moved one in tests,
//! so that a minute boundary, a step forward or a downtime is a test of milliseconds rather
//! than a wait for the real minute.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A sleep on a [`Clock`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The wall clock the scheduler reads, and sleeps on.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Returns once this clock reads `deadline` or later. A deadline rather than a
    /// duration: a caller that planned against an earlier reading must not sleep for
    /// the time that passed while it planned.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep;
}

/// The system's clock and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        let duration = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told: [`ManualClock::advance`] and [`ManualClock::set`] wake
/// the sleeps whose time has come. It may also be set back, as a stepped system clock is.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).expect("a test-sized step");
        self.now.send_modify(|now| *now += by);
    }

    /// Sets the clock to `to`, forward or back.
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        let mut changes = self.now.subscribe();
        Box::pin(async move {
            // Returns early only when the clock is gone: nothing could wake it then.
            let _ = changes.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T10:00:30Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_reaches_it() {
        let start = start();
        let clock = ManualClock::new(start);
        let sleep = tokio::spawn(clock.sleep_until(start + chrono::Duration::seconds(30)));
        clock.advance(Duration::from_secs(29));
        tokio::task::yield_now().await;
        assert!(!sleep.is_finished(), "29 s of 30");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleep)
            .await
            .expect("woken at 30 s")
            .unwrap();
        assert_eq!(clock.now(), start + chrono::Duration::seconds(30));
    }

    #[tokio::test]
    async fn a_manual_sleep_whose_deadline_has_passed_ends_at_once() {
        let start = start();
        let clock = ManualClock::new(start);
        // The clock moved on while the caller planned its sleep.
        clock.advance(Duration::from_secs(60));
        tokio::time::timeout(
            Duration::from_secs(5),
            clock.sleep_until(start + chrono::Duration::seconds(30)),
        )
        .await
        .expect("a deadline in the past does not wait for the next move");
    }
}
