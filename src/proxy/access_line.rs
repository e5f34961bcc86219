//! The access-log line: one schema for every request, tunnel and unparsable head, written
//! either through `tracing` like every other line, or — when `egressd run` logs without
//! colours — formatted here by hand, straight into the log writer.
//!
//! Once per request, `tracing-subscriber`'s formatter (a visitor and a `fmt::write` per
//! field, fourteen fields) was most of what the access log still cost after it left the
//! request's thread (bench/PROFILE.md). The hand-written formats produce the same bytes as
//! `tracing-subscriber`'s `Full` text format and its flattened JSON without the target; the
//! tests below hold them to it, line for line.

use std::cell::RefCell;
use std::fmt::{Display, Write as _};
use std::net::SocketAddr;

use crate::util::logwriter::{direct_sink, LineFormat};

/// One access-log line's fields, in the order they are written.
pub(super) struct AccessLine<'a> {
    pub client: SocketAddr,
    /// The function that sent it, or `anonymous`.
    pub function: &'a str,
    pub method: &'a dyn Display,
    pub target: &'a dyn Display,
    pub raw_target: &'a dyn Display,
    pub decision: &'static str,
    pub reason: &'a str,
    pub rule: &'a str,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: f64,
    pub tunnel_end: &'a str,
    pub redirect_denied: &'a str,
    /// Why a request head could not be parsed; left out of the line when `None`.
    pub detail: Option<&'a dyn Display>,
}

thread_local! {
    /// The line being formatted, reused: no allocation per request once warm.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl AccessLine<'_> {
    pub(super) fn emit(&self) {
        // The direct path skips tracing's filter: ask it, so `RUST_LOG=warn` still silences
        // every access line.
        if !tracing::enabled!(target: "egressd::access", tracing::Level::INFO) {
            return;
        }
        match direct_sink() {
            Some(sink) => LINE.with(|line| {
                let mut line = line.borrow_mut();
                line.clear();
                let now = chrono::Utc::now();
                match sink.format {
                    LineFormat::Text => self.write_text(&mut line, now),
                    LineFormat::Json => self.write_json(&mut line, now),
                }
                sink.write_line(line.as_bytes());
            }),
            None => self.emit_through_tracing(),
        }
    }

    fn emit_through_tracing(&self) {
        tracing::info!(
            target: "egressd::access",
            client = %self.client,
            function = self.function,
            method = %self.method,
            target = %self.target,
            raw_target = %self.raw_target,
            decision = self.decision,
            reason = self.reason,
            rule = self.rule,
            status = self.status,
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = self.duration_ms,
            tunnel_end = self.tunnel_end,
            redirect_denied = self.redirect_denied,
            detail = self.detail.map(tracing::field::display),
        );
    }

    /// `tracing-subscriber`'s `Full` format without colours: `%` fields bare, strings
    /// quoted and escaped as `Debug` does, numbers as `Debug` does.
    fn write_text(&self, out: &mut String, now: chrono::DateTime<chrono::Utc>) {
        let _ = write!(
            out,
            "{}  INFO egressd::access: client={} function={:?} method={} target={} raw_target={} \
             decision={:?} reason={:?} rule={:?} status={:?} bytes_up={:?} bytes_down={:?} \
             duration_ms={:?} tunnel_end={:?} redirect_denied={:?}",
            timestamp(now),
            self.client,
            self.function,
            self.method,
            self.target,
            self.raw_target,
            self.decision,
            self.reason,
            self.rule,
            self.status,
            self.bytes_up,
            self.bytes_down,
            self.duration_ms,
            self.tunnel_end,
            self.redirect_denied,
        );
        if let Some(detail) = self.detail {
            let _ = write!(out, " detail={detail}");
        }
        out.push('\n');
    }

    /// `tracing-subscriber`'s JSON with `flatten_event(true)` and no target: every `%` field
    /// a string, numbers as numbers, strings escaped by serde_json as it does.
    fn write_json(&self, out: &mut String, now: chrono::DateTime<chrono::Utc>) {
        let _ = write!(
            out,
            "{{\"timestamp\":\"{}\",\"level\":\"INFO\"",
            timestamp(now)
        );
        json_field(out, "client", &self.client);
        json_field(out, "function", &self.function);
        json_field(out, "method", self.method);
        json_field(out, "target", self.target);
        json_field(out, "raw_target", self.raw_target);
        json_field(out, "decision", &self.decision);
        json_field(out, "reason", &self.reason);
        json_field(out, "rule", &self.rule);
        let _ = write!(
            out,
            ",\"status\":{},\"bytes_up\":{},\"bytes_down\":{},\"duration_ms\":{}",
            self.status,
            self.bytes_up,
            self.bytes_down,
            json_number(self.duration_ms),
        );
        json_field(out, "tunnel_end", &self.tunnel_end);
        json_field(out, "redirect_denied", &self.redirect_denied);
        if let Some(detail) = self.detail {
            json_field(out, "detail", detail);
        }
        out.push_str("}\n");
    }
}

/// The time as `tracing-subscriber`'s default timer writes it: RFC 3339, microseconds, `Z`.
/// Written field by field: chrono's `format` parses its pattern on every call.
fn timestamp(now: chrono::DateTime<chrono::Utc>) -> impl Display {
    use chrono::{Datelike, Timelike};
    struct Stamp(chrono::DateTime<chrono::Utc>);
    impl Display for Stamp {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let t = &self.0;
            write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.timestamp_subsec_micros().min(999_999),
            )
        }
    }
    Stamp(now)
}

/// `,"name":"value"` with `value` displayed, then escaped as a JSON string.
fn json_field(out: &mut String, name: &str, value: &dyn Display) {
    let _ = write!(out, ",\"{name}\":");
    thread_local! {
        static SCRATCH: RefCell<(String, Vec<u8>)> = const { RefCell::new((String::new(), Vec::new())) };
    }
    SCRATCH.with(|scratch| {
        let (text, escaped) = &mut *scratch.borrow_mut();
        text.clear();
        escaped.clear();
        let _ = write!(text, "{value}");
        let _ = serde_json::to_writer(&mut *escaped, text.as_str());
        out.push_str(std::str::from_utf8(escaped).unwrap_or("\"\""));
    });
}

/// A float as serde_json writes it (`null` for what JSON cannot hold).
fn json_number(value: f64) -> String {
    serde_json::to_string(&value).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Lines written through a `tracing-subscriber` formatter, for comparison.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn through_tracing(line: &AccessLine, format: LineFormat) -> String {
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false);
        let emit = || line.emit_through_tracing();
        match format {
            LineFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
            LineFormat::Json => tracing::subscriber::with_default(
                builder
                    .json()
                    .flatten_event(true)
                    .with_target(false)
                    .finish(),
                emit,
            ),
        }
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn by_hand(line: &AccessLine, format: LineFormat) -> String {
        let mut out = String::new();
        let now = chrono::Utc::now();
        match format {
            LineFormat::Text => line.write_text(&mut out, now),
            LineFormat::Json => line.write_json(&mut out, now),
        }
        out
    }

    /// The line without its timestamp, which the two ways read at different instants.
    fn untimed(line: &str, format: LineFormat) -> String {
        match format {
            LineFormat::Text => line.split_once(' ').map(|(_, rest)| rest).unwrap().into(),
            LineFormat::Json => {
                let after = line.split_once("\",\"level\"").unwrap().1;
                let before = line.split_once("\"timestamp\":\"").unwrap().0;
                format!("{before}{after}")
            }
        }
    }

    #[test]
    fn hand_written_lines_are_the_bytes_tracing_writes() {
        let client: SocketAddr = "127.0.0.1:45678".parse().unwrap();
        let parse_error = "invalid header name: \"\\u{1}\" (line\n2)";
        // (name, method, target, decision, reason, rule, status, bytes, duration, end, redirect, detail)
        #[allow(clippy::type_complexity)]
        let cases: &[(
            &str,
            &str,
            &str,
            &str,
            &str,
            &str,
            u16,
            u64,
            f64,
            &str,
            &str,
            Option<&str>,
        )] = &[
            (
                "allowed request",
                "GET",
                "http://api.test/x?q=1",
                "allowed",
                "",
                "api.test",
                200,
                1234,
                0.157,
                "",
                "",
                None,
            ),
            (
                "denied, whole milliseconds",
                "POST",
                "http://other.test/",
                "denied",
                "not-allowlisted",
                "",
                403,
                98,
                3.0,
                "",
                "",
                None,
            ),
            (
                "tunnel with an end",
                "CONNECT",
                "api.test:443",
                "allowed",
                "",
                "*.test",
                200,
                5_000_000_000,
                61_234.5,
                "revoked",
                "",
                None,
            ),
            (
                "redirect denied, quotes and non-ASCII",
                "GET",
                "http://api.test/r",
                "allowed",
                "",
                "api.test",
                302,
                0,
                0.001,
                "",
                "https://evil.test/\"caf\u{e9}\"",
                None,
            ),
            (
                "unparsable head with control characters",
                "",
                "",
                "error",
                "bad-request",
                "",
                400,
                0,
                0.0,
                "",
                "",
                Some(parse_error),
            ),
            (
                "tiny and huge durations",
                "GET",
                "http://api.test/",
                "allowed",
                "",
                "api.test",
                200,
                0,
                1e-7,
                "",
                "",
                None,
            ),
        ];
        for &(
            name,
            method,
            target,
            decision,
            reason,
            rule,
            status,
            bytes,
            duration,
            end,
            redirect,
            detail,
        ) in cases
        {
            let detail = detail.as_ref().map(|d| d as &dyn Display);
            let line = AccessLine {
                client,
                function: if status == 200 { "fn-a" } else { "anonymous" },
                method: &method,
                target: &target,
                raw_target: &target,
                decision,
                reason,
                rule,
                status,
                bytes_up: bytes,
                bytes_down: bytes / 2,
                duration_ms: duration,
                tunnel_end: end,
                redirect_denied: redirect,
                detail,
            };
            for format in [LineFormat::Text, LineFormat::Json] {
                let want = through_tracing(&line, format);
                let got = by_hand(&line, format);
                assert_eq!(
                    untimed(&got, format),
                    untimed(&want, format),
                    "{name}, {format:?}"
                );
                // The timestamps have the same shape.
                assert_eq!(
                    got.find("Z"),
                    want.find("Z"),
                    "{name}, {format:?}: {got} / {want}"
                );
            }
        }
    }
}
