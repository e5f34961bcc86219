//! The denial flood (issue 25): keep-alive and new tunnels through egressd, quiet and under a
//! steady stream of requests its allowlist refuses, to show that recording refusals does not
//! slow the requests it lets through.
//!
//! egressd records every refusal in a bounded book of recent denials: a map behind one lock,
//! at most 1,000 rows keyed by the allowlist entry that would fix the refusal, the least
//! recently seen tenth evicted when a new row finds it full. The flood names a new host every
//! time (`GET http://hN.flood.invalid/`, N never repeated in a harness run), so every refusal
//! adds a row and, once the book is full, every hundredth evicts a hundred: the book's worst
//! case. It runs at a fixed rate on keep-alive connections (40 at the default rate, each
//! sending one request every 20 ms), paced from a thread of its own with a current-thread
//! runtime, so it neither delays the load client's thread nor hides its own CPU, which it
//! reads from `/proc/thread-self/schedstat`.
//!
//! Each repetition measures egressd quiet, then under the flood, scenario by scenario, on the
//! same instance, so drift spreads over both sides. Then the flood runs alone, and egressd's
//! CPU over it prices a refusal.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::load::{self, Route, Window};
use crate::peers::{self, Env, Subject};
use crate::scenarios::{self, Sample, Scenario, Settings};

/// Refusals per second the flood asks for unless told otherwise.
pub const DEFAULT_RATE: u32 = 2_000;
/// The scenarios measured quiet and under the flood: the two figures issue 25 names.
pub const SCENARIOS: [Scenario; 2] = [Scenario::KeepAlive, Scenario::NewTunnels];
/// How often each flood connection sends a request. A connection carries one at a time, so
/// this is also how long egressd may take to answer before the connection misses a slot:
/// generous, as a machine shared with other work answers late now and then.
pub const PERIOD: Duration = Duration::from_millis(20);
/// The connections send in this many groups, spread over [`PERIOD`]: the generator's thread
/// wakes for a batch of requests, not for each (waking an idle thread costs more than the
/// request, and the generator shares the cores with what is measured), and egressd sees a
/// small batch every `PERIOD / GROUPS` rather than all of them at once.
pub const GROUPS: u32 = 4;
/// Connections at most; above 256 ÷ [`PERIOD`] refusals per second each sends more often.
const MAX_CONNECTIONS: usize = 256;
/// How long one refusal may take before its connection is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the flood runs alone to price a refusal in egressd's CPU (10 ms ticks): long
/// enough for a few hundred ticks at the default rate.
const ALONE: Duration = Duration::from_secs(3);
const ALONE_QUICK: Duration = Duration::from_secs(1);

/// The next host number: never repeated within a harness run, so every refusal is a new row.
static NEXT_HOST: AtomicU64 = AtomicU64::new(0);

/// What the flood did inside its measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodTally {
    /// 403 answers received inside the window.
    pub refusals: u64,
    /// Any other answer, a failed connection or a timeout inside the window.
    pub errors: u64,
    /// Connections opened, the warm-up's included (more than the flood's connections means
    /// egressd closed some).
    pub connects: u64,
    /// CPU the generator's thread used inside the window, in seconds.
    pub cpu_seconds: Option<f64>,
    /// The window's length.
    pub seconds: f64,
}

impl FloodTally {
    /// Refusals achieved per second.
    pub fn rate(&self) -> f64 {
        self.refusals as f64 / self.seconds
    }

    /// The generator's own CPU, in cores.
    pub fn cpu_cores(&self) -> Option<f64> {
        self.cpu_seconds.map(|s| s / self.seconds)
    }

    fn merge(&mut self, other: FloodTally) {
        self.refusals += other.refusals;
        self.errors += other.errors;
        self.connects += other.connects;
    }
}

/// One repetition of one scenario: quiet, then under the flood.
#[derive(Debug, Clone)]
pub struct FloodPair {
    pub quiet: Sample,
    pub flood: Sample,
    /// What the flood did during `flood`.
    pub tally: FloodTally,
}

/// The flood alone, egressd's CPU over it.
#[derive(Debug, Clone, Copy)]
pub struct FloodAlone {
    pub tally: FloodTally,
    /// egressd's CPU (utime + stime of `/proc/PID/stat`) over the window, in seconds.
    pub egressd_cpu_seconds: Option<f64>,
}

impl FloodAlone {
    /// Refusals per CPU-second of egressd.
    pub fn refusals_per_cpu_second(&self) -> Option<f64> {
        self.egressd_cpu_seconds
            .filter(|s| *s > 0.0)
            .map(|s| self.tally.refusals as f64 / s)
    }

    /// egressd's CPU per refusal, in µs.
    pub fn micros_per_refusal(&self) -> Option<f64> {
        self.egressd_cpu_seconds
            .filter(|_| self.tally.refusals > 0)
            .map(|s| s * 1e6 / self.tally.refusals as f64)
    }

    /// egressd's CPU for the flood, in cores.
    pub fn egressd_cores(&self) -> Option<f64> {
        self.egressd_cpu_seconds.map(|s| s / self.tally.seconds)
    }
}

/// Everything the flood measurement found.
#[derive(Debug, Clone)]
pub struct FloodSection {
    /// Refusals per second asked for.
    pub rate: u32,
    /// Keep-alive connections the flood spread them over.
    pub connections: usize,
    pub reps: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Per scenario, its pairs in run order.
    pub runs: Vec<(Scenario, Vec<FloodPair>)>,
    pub alone: FloodAlone,
}

/// Connections for `rate` refusals per second.
fn connections(rate: u32) -> usize {
    ((f64::from(rate) * PERIOD.as_secs_f64()).ceil() as usize).clamp(1, MAX_CONNECTIONS)
}

/// Measures `subject` (egressd) in [`SCENARIOS`] quiet and under a flood of `rate` refusals
/// per second, alternated, then the flood alone.
pub async fn measure(
    subject: &Subject,
    env: &Env,
    settings: &Settings,
    rate: u32,
) -> anyhow::Result<FloodSection> {
    let Route::Proxy { addr, .. } = subject.route else {
        anyhow::bail!(
            "the denial flood needs a proxy, not {}",
            subject.kind.name()
        );
    };
    anyhow::ensure!(rate > 0, "--denial-flood-rate must be above 0");
    let mut runs = Vec::new();
    for scenario in SCENARIOS {
        let mut pairs = Vec::new();
        for rep in 0..settings.reps {
            let window = || Window::after_warmup(settings.warmup, settings.measure);
            let quiet = scenarios::measure_in(scenario, subject, env, window()).await;
            let window = window();
            let flood = start(addr, rate, window)?;
            let flooded = scenarios::measure_in(scenario, subject, env, window).await;
            let tally = flood.await.context("the denial flood's thread died")?;
            eprintln!(
                "{:<20} rep {}/{} {:<24} {:>12.2} quiet, {:>12.2} flooded {}  errors {}/{}; {:.0} refusals/s, {} flood errors",
                scenario.label(),
                rep + 1,
                settings.reps,
                "egressd, denial flood",
                quiet.value,
                flooded.value,
                scenario.unit(),
                quiet.errors,
                flooded.errors,
                tally.rate(),
                tally.errors
            );
            pairs.push(FloodPair {
                quiet,
                flood: flooded,
                tally,
            });
        }
        runs.push((scenario, pairs));
    }
    let alone = alone(subject, addr, rate, settings).await?;
    eprintln!(
        "denial flood alone   {:.0} refusals/s, egressd {:.1} µs CPU each ({:.0} per CPU-second), flood errors {}",
        alone.tally.rate(),
        alone.micros_per_refusal().unwrap_or(f64::NAN),
        alone.refusals_per_cpu_second().unwrap_or(f64::NAN),
        alone.tally.errors
    );
    Ok(FloodSection {
        rate,
        connections: connections(rate),
        reps: settings.reps,
        warmup: settings.warmup,
        measure: settings.measure,
        runs,
        alone,
    })
}

/// The flood with no other load, and egressd's CPU over its window.
async fn alone(
    subject: &Subject,
    addr: SocketAddr,
    rate: u32,
    settings: &Settings,
) -> anyhow::Result<FloodAlone> {
    let length = if settings.quick { ALONE_QUICK } else { ALONE };
    let window = Window::after_warmup(settings.warmup, length);
    let usage = subject
        .pid()
        .map(|pid| tokio::spawn(scenarios::usage_during(pid, window)));
    let tally = start(addr, rate, window)?
        .await
        .context("the denial flood's thread died")?;
    let egressd_cpu_seconds = match usage {
        Some(handle) => handle.await.ok().flatten().map(|u| u.cpu_seconds),
        None => None,
    };
    Ok(FloodAlone {
        tally,
        egressd_cpu_seconds,
    })
}

/// Starts the flood on a thread of its own, from now until `window` ends; the answer comes
/// once it has stopped.
fn start(
    proxy: SocketAddr,
    rate: u32,
    window: Window,
) -> anyhow::Result<oneshot::Receiver<FloodTally>> {
    let (done, answer) = oneshot::channel();
    std::thread::Builder::new()
        .name("denial-flood".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let tally = match runtime {
                Ok(runtime) => runtime.block_on(flood(proxy, rate, window)),
                Err(_) => FloodTally {
                    errors: 1,
                    seconds: window.seconds(),
                    ..FloodTally::default()
                },
            };
            let _ = done.send(tally);
        })
        .context("starting the denial flood's thread")?;
    Ok(answer)
}

/// The flood: [`connections`] workers, each paced to its share of `rate`, in [`GROUPS`] that
/// share their ticks; the thread's CPU read at both ends of `window`.
async fn flood(proxy: SocketAddr, rate: u32, window: Window) -> FloodTally {
    let conns = connections(rate);
    let period = Duration::from_secs_f64(conns as f64 / f64::from(rate));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for i in 0..conns {
        let group = i as u32 % GROUPS;
        workers.spawn(worker(
            proxy,
            start + period / GROUPS * group,
            period,
            window,
        ));
    }
    tokio::time::sleep_until(window.from).await;
    let before = peers::thread_cpu_seconds().ok();
    tokio::time::sleep_until(window.until).await;
    let after = peers::thread_cpu_seconds().ok();
    let mut total = FloodTally {
        cpu_seconds: before.zip(after).map(|(b, a)| a - b),
        seconds: window.seconds(),
        ..FloodTally::default()
    };
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(tally) => total.merge(tally),
            Err(_) => total.errors += 1,
        }
    }
    total
}

/// One connection's share: a refused request every `period` from `first` until the window
/// ends. A worker that falls behind (egressd slow to answer) skips the slots it missed rather
/// than catching up in a burst, so the rate achieved is at most the rate asked for.
async fn worker(proxy: SocketAddr, first: Instant, period: Duration, window: Window) -> FloodTally {
    let mut tally = FloodTally::default();
    let mut conn: Option<TcpStream> = None;
    let mut request = String::with_capacity(128);
    let mut buf = Vec::with_capacity(1024);
    let mut next = first;
    while next < window.until {
        tokio::time::sleep_until(next).await;
        next = next_slot(next, period, Instant::now());
        let stream = match conn.as_mut() {
            Some(stream) => stream,
            None => match load::connect(proxy).await {
                Ok(stream) => {
                    tally.connects += 1;
                    conn.insert(stream)
                }
                Err(_) => {
                    if window.counts(Instant::now()) {
                        tally.errors += 1;
                    }
                    continue;
                }
            },
        };
        let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
        request.clear();
        let _ = write!(
            request,
            "GET http://h{n}.flood.invalid/ HTTP/1.1\r\nHost: h{n}.flood.invalid\r\n\r\n"
        );
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            stream.write_all(request.as_bytes()).await?;
            load::read_message(stream, &mut buf).await
        })
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
        let counts = window.counts(Instant::now());
        match answer {
            Ok(head) => {
                match head.status {
                    403 if counts => tally.refusals += 1,
                    _ if counts => tally.errors += 1,
                    _ => {}
                }
                if head.close {
                    conn = None;
                }
            }
            Err(_) => {
                conn = None;
                if counts {
                    tally.errors += 1;
                }
            }
        }
    }
    tally
}

/// The slot after `slot`, or, when `now` is already past it, the first one after `now`: on
/// the same grid, so a late worker joins the others' ticks again.
fn next_slot(slot: Instant, period: Duration, now: Instant) -> Instant {
    let next = slot + period;
    if next >= now {
        return next;
    }
    let missed = (now - next).as_nanos() / period.as_nanos().max(1) + 1;
    next + period * u32::try_from(missed).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_spread_over_enough_connections() {
        assert_eq!(connections(1), 1);
        assert_eq!(connections(50), 1);
        assert_eq!(connections(2_000), 40);
        assert_eq!(connections(2_001), 41);
        assert_eq!(connections(1_000_000), 256);
    }

    #[test]
    fn a_late_worker_skips_the_slots_it_missed_and_stays_on_the_grid() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_slot(start, ms(5), start + ms(1)), start + ms(5));
        assert_eq!(next_slot(start, ms(5), start + ms(5)), start + ms(5));
        assert_eq!(next_slot(start, ms(5), start + ms(6)), start + ms(10));
        assert_eq!(next_slot(start, ms(5), start + ms(12)), start + ms(15));
    }
}
