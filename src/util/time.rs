//! Wall-clock time as Unix milliseconds, and its RFC 3339 UTC rendering for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// RFC 3339 in UTC, to the second.
pub fn format_utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(from_unix_ms(ms)).to_string()
}
