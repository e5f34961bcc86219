//! Cron expressions as crontab users know them: five fields (minute, hour, day of month,
//! month, day of week), names (`JAN`, `MON`), ranges, steps, lists and the `@hourly` family,
//! always in UTC, at most once a minute.
//!
//! Evaluation is `croner`'s, restricted to five fields, with the day fields combined the way
//! Vixie cron (and so cronie and crontab.guru) combines them: when both are restricted, a day
//! matching either fires (`0 0 1-7 * SUN`: the 1st to 7th *and* every Sunday); when either
//! starts with `*` — a step like `*/2` included — a day must match both (`0 0 */2 * MON`:
//! Mondays that fall on an odd day). croner counts only a bare `*` as unrestricted, so the
//! second rule is applied here by asking it to AND the fields. croner's extensions (`L`, `W`,
//! `#`, `?`, a `+` prefix) are refused: crontab does not know them.

use std::fmt;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Examples offered with every error.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("*/5 * * * *", "every 5 minutes"),
    ("0 * * * *", "hourly, on the hour"),
    ("30 2 * * MON-FRI", "weekdays at 02:30 UTC"),
    ("0 0 1 * *", "midnight UTC on the 1st of each month"),
    ("@daily", "midnight UTC every day"),
];

/// The longest expression taken: every minute, hour, day and month listed one by one is
/// under 400 characters, so no useful expression is refused, and a request's size stays
/// bounded.
pub const MAX_CRON_CHARS: usize = 512;

/// The five fields, for error messages.
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

/// A valid cron expression.
#[derive(Clone)]
pub struct CronExpr {
    text: String,
    cron: Cron,
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.text)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Eq for CronExpr {}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why an expression is not valid: which field, which value, and what would be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError {
    /// The failing field, when one field is at fault.
    pub field: Option<&'static str>,
    pub value: String,
    pub message: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "{field} field {:?}: {}", self.value, self.message)?,
            None => write!(f, "{:?}: {}", self.value, self.message)?,
        }
        f.write_str("; valid examples: ")?;
        let examples: Vec<String> = EXAMPLES
            .iter()
            .map(|(expr, meaning)| format!("`{expr}` ({meaning})"))
            .collect();
        f.write_str(&examples.join(", "))
    }
}

impl std::error::Error for CronError {}

fn parser(and_days: bool) -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(and_days)
        .build()
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, CronError> {
        let text = text.trim();
        let error = |field: Option<&'static str>, value: &str, message: String| CronError {
            field,
            value: value.to_string(),
            message,
        };
        if text.is_empty() {
            return Err(error(None, text, "the expression is empty".into()));
        }
        let chars = text.chars().count();
        if chars > MAX_CRON_CHARS {
            return Err(error(
                None,
                "",
                format!(
                    "the expression has {chars} characters; at most {MAX_CRON_CHARS} are allowed"
                ),
            ));
        }
        if !text.starts_with('@') {
            if let Some(atom) = text
                .split(|c: char| c.is_whitespace() || matches!(c, ',' | '-' | '/'))
                .find(|atom| is_extension(atom))
            {
                return Err(error(
                    None,
                    text,
                    format!("{atom:?} is not crontab syntax (croner's L, W, # and ? extensions are not supported)"),
                ));
            }
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        if text.starts_with('@') {
            return Self::parse_nickname(text);
        }
        match fields.len() {
            5 => {}
            6 | 7 => {
                return Err(error(
                    None,
                    text,
                    format!(
                        "{} fields: seconds and year fields are not supported, the highest frequency is once a minute; write five fields",
                        fields.len()
                    ),
                ))
            }
            n => {
                return Err(error(
                    None,
                    text,
                    format!("{n} field(s); write five: minute hour day-of-month month day-of-week"),
                ))
            }
        }
        // Vixie: a day field starting with `*` is unrestricted, so the other decides (AND).
        let and_days = fields[2].starts_with('*') || fields[4].starts_with('*');
        match parser(and_days).parse(text) {
            Ok(cron) => Ok(CronExpr {
                text: text.to_string(),
                cron,
            }),
            Err(err) => Err(Self::blame(&fields, err)),
        }
    }

    fn parse_nickname(text: &str) -> Result<CronExpr, CronError> {
        const NICKNAMES: [&str; 6] = [
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
        ];
        let lower = text.to_ascii_lowercase();
        if !NICKNAMES.contains(&lower.as_str()) {
            return Err(CronError {
                field: None,
                value: text.to_string(),
                message: format!("unknown shorthand; use one of {}", NICKNAMES.join(", ")),
            });
        }
        let cron = parser(true).parse(&lower).map_err(|e| CronError {
            field: None,
            value: text.to_string(),
            message: e.to_string(),
        })?;
        Ok(CronExpr { text: lower, cron })
    }

    /// Finds the field croner refused: each alone, with `*` in the others.
    fn blame(fields: &[&str], err: croner::errors::CronError) -> CronError {
        for (i, value) in fields.iter().enumerate() {
            let mut probe = ["*"; 5];
            probe[i] = value;
            if parser(false).parse(&probe.join(" ")).is_err() {
                return CronError {
                    field: Some(FIELDS[i]),
                    value: value.to_string(),
                    message: field_hint(i),
                };
            }
        }
        CronError {
            field: None,
            value: fields.join(" "),
            message: err.to_string(),
        }
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The first run at or after `t`.
    pub fn next_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, true).ok()
    }

    /// The last run at or before `t`.
    pub fn previous_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&t, true).ok()
    }

    /// The next `count` runs after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut runs = Vec::with_capacity(count);
        let mut at = t;
        while runs.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    runs.push(next);
                    at = next;
                }
                None => break,
            }
        }
        runs
    }
}

/// Whether an atom of a field is one of croner's extensions rather than crontab syntax: `L`,
/// `5L`, `15W`, `MON#2`, `?`, a `+` prefix. Numbers, `*` and three-letter names are crontab.
fn is_extension(atom: &str) -> bool {
    let letters = atom.chars().filter(|c| c.is_ascii_alphabetic()).count();
    atom.contains(['#', '?', '+']) || (letters > 0 && !(letters == 3 && atom.len() == 3))
}

fn field_hint(index: usize) -> String {
    let (range, sample) = match index {
        0 => ("0-59", "*/15 or 0,30"),
        1 => ("0-23", "9-17 or */6"),
        2 => ("1-31", "1,15 or 1-7"),
        3 => ("1-12 or JAN-DEC", "*/3 or JAN,JUL"),
        _ => ("0-7 (0 and 7 are Sunday) or SUN-SAT", "MON-FRI or 0,6"),
    };
    format!("not a valid value; use {range}, with lists, ranges and steps such as {sample}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Weekday};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn runs(expr: &str, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        CronExpr::parse(expr).unwrap().upcoming(from, n)
    }

    /// Every day on which `expr` (firing at midnight) runs in November 2026.
    fn days_in_november(expr: &str) -> Vec<u32> {
        runs(expr, at(2026, 10, 31, 23, 59), 40)
            .into_iter()
            .filter(|t| t.year() == 2026 && t.month() == 11)
            .map(|t| t.day())
            .collect()
    }

    #[test]
    fn both_day_fields_restricted_fire_on_either() {
        // November 2026: Sundays are the 1st, 8th, 15th, 22nd and 29th.
        assert_eq!(
            days_in_november("0 0 1-7 * SUN"),
            [1, 2, 3, 4, 5, 6, 7, 8, 15, 22, 29]
        );
    }

    #[test]
    fn a_day_field_starting_with_a_star_ands_them() {
        // Mondays in November 2026: 2, 9, 16, 23, 30; the odd ones: 9, 23.
        assert_eq!(days_in_november("0 0 */2 * MON"), [9, 23]);
        assert_eq!(days_in_november("0 0 * * MON"), [2, 9, 16, 23, 30]);
        assert_eq!(days_in_november("0 0 1,15 * *"), [1, 15]);
    }

    #[test]
    fn the_longest_useful_expression_fits_and_longer_is_refused() {
        let every = |range: std::ops::RangeInclusive<u32>| {
            range.map(|n| n.to_string()).collect::<Vec<_>>().join(",")
        };
        let longest = [
            every(0..=59),
            every(0..=23),
            every(1..=31),
            every(1..=12),
            every(0..=7),
        ]
        .join(" ");
        assert!(longest.len() < MAX_CRON_CHARS, "{}", longest.len());
        assert!(CronExpr::parse(&longest).is_ok());
        let padded = format!("{longest} {}", "*".repeat(MAX_CRON_CHARS));
        let err = CronExpr::parse(&padded).unwrap_err();
        assert!(err.message.contains("at most 512"), "{err}");
    }

    #[test]
    fn zero_and_seven_are_sunday() {
        for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN"] {
            let days = runs(expr, at(2026, 11, 1, 0, 0), 3);
            assert!(days.iter().all(|t| t.weekday() == Weekday::Sun), "{expr}");
            assert_eq!(days[0], at(2026, 11, 8, 0, 0), "{expr}");
        }
    }

    /// (name, expression, from, the next runs)
    type Case = (
        &'static str,
        &'static str,
        DateTime<Utc>,
        Vec<DateTime<Utc>>,
    );

    #[test]
    fn steps_ranges_lists_names_and_month_ends() {
        let cases: [Case; 7] = [
            (
                "every five minutes, on the minute boundary",
                "*/5 * * * *",
                at(2026, 11, 28, 10, 3),
                vec![at(2026, 11, 28, 10, 5), at(2026, 11, 28, 10, 10)],
            ),
            (
                "a range with a step",
                "10-30/10 9 * * *",
                at(2026, 11, 28, 0, 0),
                vec![
                    at(2026, 11, 28, 9, 10),
                    at(2026, 11, 28, 9, 20),
                    at(2026, 11, 28, 9, 30),
                ],
            ),
            (
                "weekdays at 02:30",
                "30 2 * * MON-FRI",
                at(2026, 11, 27, 3, 0),
                vec![at(2026, 11, 30, 2, 30), at(2026, 12, 1, 2, 30)],
            ),
            (
                "month names in a list",
                "0 0 1 JAN,JUL *",
                at(2026, 11, 28, 0, 0),
                vec![at(2027, 1, 1, 0, 0), at(2027, 7, 1, 0, 0)],
            ),
            (
                "the 31st skips shorter months",
                "0 0 31 * *",
                at(2026, 11, 1, 0, 0),
                vec![
                    at(2026, 12, 31, 0, 0),
                    at(2027, 1, 31, 0, 0),
                    at(2027, 3, 31, 0, 0),
                ],
            ),
            (
                "a leap day waits for a leap year",
                "0 12 29 2 *",
                at(2026, 11, 28, 0, 0),
                vec![at(2028, 2, 29, 12, 0)],
            ),
            (
                "never the minute it is asked at",
                "* * * * *",
                at(2026, 11, 28, 10, 3),
                vec![at(2026, 11, 28, 10, 4)],
            ),
        ];
        for (name, expr, from, expected) in cases {
            assert_eq!(runs(expr, from, expected.len()), expected, "{name}");
        }
    }

    #[test]
    fn shorthands() {
        let from = at(2026, 11, 28, 10, 3);
        let cases = [
            ("@hourly", at(2026, 11, 28, 11, 0)),
            ("@daily", at(2026, 11, 29, 0, 0)),
            ("@weekly", at(2026, 11, 29, 0, 0)),
            ("@monthly", at(2026, 12, 1, 0, 0)),
            ("@yearly", at(2027, 1, 1, 0, 0)),
            ("@annually", at(2027, 1, 1, 0, 0)),
        ];
        for (expr, next) in cases {
            assert_eq!(runs(expr, from, 1), [next], "{expr}");
        }
    }

    /// (name, expression, the failing field or None, part of the message)
    const INVALID: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "a seconds field",
            "0 */5 * * * *",
            None,
            "seconds and year fields are not supported",
        ),
        (
            "a year field too",
            "0 0 0 1 1 * 2027",
            None,
            "seconds and year fields are not supported",
        ),
        ("four fields", "* * * *", None, "write five"),
        ("minute out of range", "61 * * * *", Some("minute"), "0-59"),
        ("hour out of range", "0 24 * * *", Some("hour"), "0-23"),
        (
            "day of month zero",
            "0 0 0 * *",
            Some("day-of-month"),
            "1-31",
        ),
        (
            "a month name that is not one",
            "0 0 1 FOO *",
            Some("month"),
            "JAN-DEC",
        ),
        (
            "a weekday out of range",
            "0 0 * * 8",
            Some("day-of-week"),
            "SUN-SAT",
        ),
        (
            "croner's L extension",
            "0 0 L * *",
            None,
            "not crontab syntax",
        ),
        ("an unknown shorthand", "@often", None, "unknown shorthand"),
        ("empty", " ", None, "empty"),
    ];

    #[test]
    fn invalid_expressions_name_the_field_and_offer_examples() {
        for (name, expr, field, part) in INVALID {
            let err = CronExpr::parse(expr).unwrap_err();
            assert_eq!(err.field, *field, "{name}: {err}");
            let text = err.to_string();
            assert!(text.contains(part), "{name}: {text}");
            assert!(
                text.contains("`*/5 * * * *` (every 5 minutes)"),
                "{name}: {text}"
            );
        }
    }
}
