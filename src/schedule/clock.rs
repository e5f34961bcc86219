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
    /// Returns once `duration` of this clock's time has passed.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The system's clock and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
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

    fn sleep(&self, duration: Duration) -> Sleep {
        let mut changes = self.now.subscribe();
        let until =
            self.now() + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        Box::pin(async move {
            // Returns early only when the clock is gone: nothing could wake it then.
            let _ = changes.wait_for(|now| *now >= until).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_reaches_it() {
        let start = DateTime::parse_from_rfc3339("2026-12-03T10:00:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        let sleep = tokio::spawn(clock.sleep(Duration::from_secs(30)));
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
}
