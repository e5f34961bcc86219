//! The log writer: log lines leave the request path as a `memcpy` into a shared buffer, and a
//! thread of their own writes them out in batches.
//!
//! Written straight to stderr, every access line was a `write(2)` on the request's thread
//! under stderr's lock: a quarter to nearly half of keep-alive throughput. Here a line is
//! appended to a buffer under a mutex held for the copy only; the writer thread swaps the
//! buffer for an empty one and writes it with one call, every [`FLUSH_INTERVAL`] or as soon as
//! [`WAKE_BYTES`] are waiting. A line does not wake the thread (that would cost a `futex(2)`
//! per line instead of a `write(2)`), so a line waits at most the interval.
//!
//! When the buffer holds [`LogWriter::limit`] bytes, further lines are **dropped and counted**
//! rather than waited for: egressd is every function's one way out, and a slow reader of its
//! log (a stuck pipe, a rate-limited journald) must not stall their traffic. The count is the
//! metric `egressd_access_log_dropped_total`, and the stream itself says how many lines went
//! missing where they did. [`LogFlush`] writes what is left when egressd stops.
//!
//! The access line, written once per request, may skip `tracing-subscriber`'s general
//! formatter (a visitor and a `fmt::write` per field: most of what the log still cost) for a
//! hand-written one producing the same bytes, straight into this writer: see
//! [`direct_sink`]. It is process-wide, as the tracing dispatcher it sits beside is.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::sync::lock;

/// How long a line may wait in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Waiting bytes that wake the writer before the interval: a burst is written in pieces of
/// about this size instead of growing the buffer to the limit.
pub const WAKE_BYTES: usize = 256 * 1024;
/// The default limit on waiting bytes: about 20,000 access lines.
pub const DEFAULT_LIMIT: usize = 8 * 1024 * 1024;

/// A cloneable sink for whole lines (each `write` call is kept or dropped whole), for
/// `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    /// Lines waiting to be written.
    waiting: Mutex<Vec<u8>>,
    /// Wakes the writer early: a large batch, or a stop.
    wake: Condvar,
    /// Waiting bytes beyond which lines are dropped.
    limit: usize,
    /// Lines dropped since start: the metric's counter.
    dropped: Counter,
    stopping: AtomicBool,
}

/// Flushes and stops the writer thread when dropped; hold it for as long as egressd logs.
#[must_use = "dropping it stops the log writer"]
pub struct LogFlush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread, writing to `out` and counting dropped lines in `dropped`.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        limit: usize,
        dropped: Counter,
    ) -> (LogWriter, LogFlush) {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Vec::with_capacity(WAKE_BYTES)),
            wake: Condvar::new(),
            limit,
            dropped,
            stopping: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("egressd-log".into())
                .spawn(move || write_batches(&shared, out))
                .expect("spawning the log writer thread")
        };
        let flush = LogFlush {
            shared: shared.clone(),
            thread: Some(thread),
        };
        (LogWriter { shared }, flush)
    }

    /// Queues one line, or counts it dropped when the buffer is full.
    fn push(&self, line: &[u8]) {
        let mut waiting = lock(&self.shared.waiting);
        if waiting.len() + line.len() > self.shared.limit {
            drop(waiting);
            self.shared.dropped.inc();
            return;
        }
        let before = waiting.len();
        waiting.extend_from_slice(line);
        let crossed = before < WAKE_BYTES && waiting.len() >= WAKE_BYTES;
        drop(waiting);
        if crossed {
            self.shared.wake.notify_one();
        }
    }
}

/// The line format egressd logs in (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    Text,
    Json,
}

/// Where hand-formatted lines go, and in which format.
pub struct LineSink {
    writer: LogWriter,
    pub format: LineFormat,
}

impl LineSink {
    /// Queues one whole line (with its newline).
    pub fn write_line(&self, line: &[u8]) {
        self.writer.push(line);
    }
}

static DIRECT: OnceLock<LineSink> = OnceLock::new();

/// Sends hand-formatted lines (the access log) to `writer` from now on. Only when lines are
/// written without ANSI colours: the hand-written formats are the plain ones.
pub fn send_lines_directly(writer: LogWriter, format: LineFormat) {
    let _ = DIRECT.set(LineSink { writer, format });
}

/// The sink for hand-formatted lines; `None` until [`send_lines_directly`] (in tests, and
/// in commands other than `run`), when lines go through `tracing` as every other line does.
pub fn direct_sink() -> Option<&'static LineSink> {
    DIRECT.get()
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: swaps the waiting lines for an empty buffer and writes them, until
/// told to stop, then writes what is left.
fn write_batches<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::with_capacity(WAKE_BYTES);
    let mut reported = 0;
    loop {
        let stopping = {
            let mut waiting = lock(&shared.waiting);
            if waiting.len() < WAKE_BYTES && !shared.stopping.load(Ordering::Acquire) {
                waiting = shared
                    .wake
                    .wait_timeout(waiting, FLUSH_INTERVAL)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0);
            }
            std::mem::swap(&mut *waiting, &mut batch);
            shared.stopping.load(Ordering::Acquire)
        };
        let dropped = shared.dropped.get();
        if dropped > reported {
            // Where the gap is, in the stream itself: the metric alone would not say.
            let _ = writeln!(
                out,
                "egressd: {} log lines dropped: the log writer fell behind",
                dropped - reported
            );
            reported = dropped;
        }
        // A failed write (a closed stderr) loses this batch only; nothing is retried, as
        // nothing could be told.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 4 * WAKE_BYTES {
            batch.shrink_to(WAKE_BYTES);
        }
        if stopping && lock(&shared.waiting).is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `out` the test can read, and can hold shut to make the writer fall behind.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.written).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(sink: &Sink) -> String {
        String::from_utf8(lock(&sink.written).clone()).unwrap()
    }

    #[test]
    fn lines_are_written_within_the_interval_without_a_flush() {
        let sink = Sink::default();
        let (mut writer, _flush) =
            LogWriter::start(sink.clone(), DEFAULT_LIMIT, Counter::default());
        writer.write_all(b"one\n").unwrap();
        writer.write_all(b"two\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while text(&sink) != "one\ntwo\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "got {:?}",
                text(&sink)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stopping_writes_every_line_in_order() {
        let sink = Sink::default();
        let dropped = Counter::default();
        let (writer, flush) = LogWriter::start(sink.clone(), DEFAULT_LIMIT, dropped.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..5000 {
                        writer.write_all(format!("{t} {n}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(flush);
        let written = text(&sink);
        for t in 0..4 {
            let numbers: Vec<usize> = written
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..5000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn a_full_buffer_drops_whole_lines_counts_them_and_says_so() {
        // The sink blocks until released, so the buffer fills.
        let sink = Sink::default();
        let held = lock(&sink.written);
        let dropped = Counter::default();
        let (mut writer, flush) = LogWriter::start(sink.clone(), 40, dropped.clone());
        // The writer may take the first batch before it blocks; lines pushed after fill
        // the 40 bytes (four of ten bytes) and the rest are dropped.
        for n in 0..100 {
            writer
                .write_all(format!("line {n:04}\n").as_bytes())
                .unwrap();
        }
        let dropped = dropped.get();
        assert!((100 - 8..=100 - 4).contains(&dropped), "dropped {dropped}");
        drop(held);
        drop(flush);
        let written = text(&sink);
        let kept = written.lines().filter(|l| l.starts_with("line ")).count() as u64;
        assert_eq!(kept + dropped, 100, "{written}");
        assert!(
            written.contains(&format!("egressd: {dropped} log lines dropped")),
            "{written}"
        );
        assert!(written
            .lines()
            .all(|l| l.len() == 9 || l.starts_with("egressd: ")));
    }
}
