//! Recent denials, grouped by what would fix them: the record behind the console's
//! "Recently denied" rows and `GET /v1/denials`.
//!
//! A refusal whose [`Denial::fix`](super::Denial) names an allowlist entry (a host on no
//! entry, an entry still pending, the host a TLS ClientHello or a redirect named) is counted
//! under that entry; any other (a port, a private address, credentials) under its reason,
//! since no entry fixes it. Each row keeps its count, first and last time, the reasons seen,
//! a few example targets, the functions involved and the URLs a denied redirect came from.
//!
//! **Bounded and cheap.** At most [`MAX_ENTRIES`] entry rows (when a new one finds the book
//! full, the tenth least recently seen go), one row per reason, and a few examples per row. Recording takes one
//! short lock, never held across a request, and allocates only for what is new: a key, an
//! example or a function the row does not have yet (an example is compared with the ones
//! kept without formatting it).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Mutex;

use super::DenyReason;
use crate::util::sync::lock;

/// Entry rows kept; the least recently seen is dropped for a new one.
pub const MAX_ENTRIES: usize = 1000;
/// Example targets kept per row.
pub const EXAMPLES: usize = 3;
/// Functions kept per row.
pub const FUNCTIONS: usize = 8;

/// Why a refusal was seen: a denial, or a redirect the allowlist would deny (the client
/// got the redirect; its next request would be refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seen {
    Denied(DenyReason),
    Redirect,
}

impl Seen {
    /// Every kind, in bit order.
    pub fn all() -> impl Iterator<Item = Seen> {
        DenyReason::ALL
            .into_iter()
            .map(Seen::Denied)
            .chain([Seen::Redirect])
    }

    fn bit(self) -> u32 {
        match self {
            Seen::Denied(reason) => DenyReason::ALL
                .iter()
                .position(|r| *r == reason)
                .expect("every reason is in ALL") as u32,
            Seen::Redirect => DenyReason::ALL.len() as u32,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Seen::Denied(reason) => reason.code(),
            Seen::Redirect => "redirect-denied",
        }
    }

    pub fn from_code(code: &str) -> Option<Seen> {
        Seen::all().find(|s| s.code() == code)
    }
}

/// One refusal, as the proxy saw it.
pub struct Refusal<'a> {
    pub seen: Seen,
    /// The allowlist entry that would fix it, if one would.
    pub fix: Option<&'a str>,
    /// What was asked for (`host:port`, or the URL a redirect pointed at).
    pub target: &'a dyn fmt::Display,
    /// The function that sent it, when its identity is known.
    pub function: Option<&'a str>,
    /// For a denied redirect: the URL that redirected.
    pub redirected_from: Option<&'a str>,
}

/// What a row says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub count: u64,
    /// Unix milliseconds.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Bits of [`Seen`], see [`Row::reasons`].
    reasons: u32,
    pub examples: Vec<Box<str>>,
    pub functions: Vec<Box<str>>,
    pub redirected_from: Vec<Box<str>>,
}

impl Row {
    /// The kinds of refusal seen in this row.
    pub fn reasons(&self) -> Vec<Seen> {
        Seen::all()
            .filter(|s| self.reasons & (1 << s.bit()) != 0)
            .collect()
    }

    fn note(&mut self, refusal: &Refusal<'_>, now_ms: u64) {
        if self.count == 0 {
            self.first_seen = now_ms;
        }
        self.count += 1;
        self.last_seen = self.last_seen.max(now_ms);
        self.reasons |= 1 << refusal.seen.bit();
        if self.examples.len() < EXAMPLES
            && !self.examples.iter().any(|e| displays_as(refusal.target, e))
        {
            self.examples.push(refusal.target.to_string().into());
        }
        if let Some(function) = refusal.function {
            keep(&mut self.functions, function, FUNCTIONS);
        }
        if let Some(from) = refusal.redirected_from {
            keep(&mut self.redirected_from, from, EXAMPLES);
        }
    }

    /// Adds another replica's row for the same key.
    pub fn merge(&mut self, other: &Row) {
        if self.count == 0 || other.first_seen < self.first_seen {
            self.first_seen = other.first_seen;
        }
        self.count += other.count;
        self.last_seen = self.last_seen.max(other.last_seen);
        self.reasons |= other.reasons;
        for e in &other.examples {
            keep(&mut self.examples, e, EXAMPLES);
        }
        for f in &other.functions {
            keep(&mut self.functions, f, FUNCTIONS);
        }
        for r in &other.redirected_from {
            keep(&mut self.redirected_from, r, EXAMPLES);
        }
    }

    /// This row with `seen` among its reasons (a row read back from the shared database).
    pub fn with_reasons(mut self, seen: impl IntoIterator<Item = Seen>) -> Row {
        for s in seen {
            self.reasons |= 1 << s.bit();
        }
        self
    }
}

/// Adds `value` to `list` unless it is there or the list is full.
fn keep(list: &mut Vec<Box<str>>, value: &str, max: usize) {
    if list.len() < max && !list.iter().any(|v| &**v == value) {
        list.push(value.into());
    }
}

/// Whether `value` formats as `text`, without formatting it into a new string.
fn displays_as(value: &dyn fmt::Display, text: &str) -> bool {
    struct Compare<'a> {
        rest: &'a str,
        equal: bool,
    }
    impl fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) if self.equal => {
                    self.rest = rest;
                    Ok(())
                }
                _ => {
                    self.equal = false;
                    Err(fmt::Error)
                }
            }
        }
    }
    let mut compare = Compare {
        rest: text,
        equal: true,
    };
    write!(compare, "{value}").is_ok() && compare.equal && compare.rest.is_empty()
}

/// What a row is grouped by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// The allowlist entry that would fix it.
    Entry(String),
    /// A refusal no entry fixes.
    Reason(Seen),
}

impl Key {
    /// `entry:PATTERN` or `reason:CODE`, as stored in the shared database.
    pub fn encode(&self) -> String {
        match self {
            Key::Entry(entry) => format!("entry:{entry}"),
            Key::Reason(seen) => format!("reason:{}", seen.code()),
        }
    }

    pub fn decode(text: &str) -> Option<Key> {
        match text.split_once(':')? {
            ("entry", entry) => Some(Key::Entry(entry.to_string())),
            ("reason", code) => Seen::from_code(code).map(Key::Reason),
            _ => None,
        }
    }
}

/// Rows of several replicas merged by key, most recent first, at most `limit` of them.
pub fn merge_rows(parts: impl IntoIterator<Item = (Key, Row)>, limit: usize) -> Vec<(Key, Row)> {
    let mut merged: HashMap<Key, Row> = HashMap::new();
    for (key, row) in parts {
        merged.entry(key).or_default().merge(&row);
    }
    let mut rows: Vec<(Key, Row)> = merged.into_iter().collect();
    rows.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen));
    rows.truncate(limit);
    rows
}

#[derive(Default)]
struct Book {
    entries: HashMap<Box<str>, Row>,
    /// Indexed by [`Seen::bit`].
    by_reason: Vec<Row>,
}

/// The recent refusals of this process.
pub struct DenialBook {
    book: Mutex<Book>,
    capacity: usize,
}

impl Default for DenialBook {
    fn default() -> Self {
        DenialBook::with_capacity(MAX_ENTRIES)
    }
}

impl DenialBook {
    pub fn with_capacity(capacity: usize) -> DenialBook {
        DenialBook {
            book: Mutex::new(Book {
                entries: HashMap::new(),
                by_reason: vec![Row::default(); Seen::all().count()],
            }),
            capacity,
        }
    }

    /// Counts one refusal at `now_ms`.
    pub fn record(&self, refusal: &Refusal<'_>, now_ms: u64) {
        let mut book = lock(&self.book);
        let row = match refusal.fix {
            None => &mut book.by_reason[refusal.seen.bit() as usize],
            Some(entry) => {
                if !book.entries.contains_key(entry) {
                    if book.entries.len() >= self.capacity {
                        evict_least_recent(&mut book.entries, self.capacity.div_ceil(10));
                    }
                    book.entries.insert(entry.into(), Row::default());
                }
                book.entries.get_mut(entry).expect("present or just added")
            }
        };
        row.note(refusal, now_ms);
    }

    /// Every row last seen at or after `since_ms`, most recent first.
    pub fn rows(&self, since_ms: u64) -> Vec<(Key, Row)> {
        let book = lock(&self.book);
        let mut rows: Vec<(Key, Row)> = book
            .entries
            .iter()
            .map(|(k, r)| (Key::Entry(k.to_string()), r.clone()))
            .chain(
                Seen::all()
                    .zip(&book.by_reason)
                    .map(|(seen, r)| (Key::Reason(seen), r.clone())),
            )
            .filter(|(_, r)| r.count > 0 && r.last_seen >= since_ms)
            .collect();
        rows.sort_by_key(|(_, r)| std::cmp::Reverse(r.last_seen));
        rows
    }

    /// Forgets the row of `entry` (its entry is active and nothing was refused since).
    pub fn forget(&self, entry: &str) {
        lock(&self.book).entries.remove(entry);
    }

    /// How many entry rows there are.
    pub fn len(&self) -> usize {
        lock(&self.book).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the `n` least recently seen rows: a tenth of the book at a time, so that a flood
/// of new hosts pays for one scan per hundred refusals, not one each.
fn evict_least_recent(entries: &mut HashMap<Box<str>, Row>, n: usize) {
    let mut ages: Vec<(u64, &Box<str>)> = entries.iter().map(|(k, r)| (r.last_seen, k)).collect();
    let n = n.min(ages.len());
    if n == 0 {
        return;
    }
    ages.select_nth_unstable(n - 1);
    let oldest: Vec<Box<str>> = ages[..n].iter().map(|(_, k)| (*k).clone()).collect();
    for key in oldest {
        entries.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal<'a>(
        seen: Seen,
        fix: Option<&'a str>,
        target: &'a dyn fmt::Display,
        function: Option<&'a str>,
    ) -> Refusal<'a> {
        Refusal {
            seen,
            fix,
            target,
            function,
            redirected_from: None,
        }
    }

    const NOT_LISTED: Seen = Seen::Denied(DenyReason::NotAllowlisted);
    const PORT: Seen = Seen::Denied(DenyReason::PortNotAllowed);

    #[test]
    fn refusals_are_grouped_by_the_entry_that_fixes_them_or_by_reason() {
        let book = DenialBook::default();
        let www = "www.example.com:443";
        book.record(
            &refusal(NOT_LISTED, Some("www.example.com"), &www, Some("fn-a")),
            10,
        );
        book.record(
            &refusal(NOT_LISTED, Some("www.example.com"), &www, Some("fn-b")),
            20,
        );
        book.record(
            &refusal(
                Seen::Denied(DenyReason::SniNotAllowlisted),
                Some("www.example.com"),
                &"www.example.com:8443",
                Some("fn-a"),
            ),
            30,
        );
        book.record(&refusal(PORT, None, &"api.example.com:22", None), 40);
        let rows = book.rows(0);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].0, Key::Reason(PORT), "most recent first");
        let (key, row) = &rows[1];
        assert_eq!(key, &Key::Entry("www.example.com".into()));
        assert_eq!((row.count, row.first_seen, row.last_seen), (3, 10, 30));
        assert_eq!(
            row.reasons(),
            [NOT_LISTED, Seen::Denied(DenyReason::SniNotAllowlisted)]
        );
        assert_eq!(
            row.examples,
            ["www.example.com:443".into(), "www.example.com:8443".into()] as [Box<str>; 2]
        );
        assert_eq!(
            row.functions,
            ["fn-a".into(), "fn-b".into()] as [Box<str>; 2]
        );
        assert_eq!(book.rows(35).len(), 1, "since filters by last seen");
    }

    #[test]
    fn examples_and_functions_are_bounded() {
        let book = DenialBook::default();
        for i in 0..50 {
            let target = format!("a.example.com:{}", 1000 + i);
            let function = format!("fn-{i}");
            book.record(
                &refusal(NOT_LISTED, Some("a.example.com"), &target, Some(&function)),
                i,
            );
        }
        let (_, row) = &book.rows(0)[0];
        assert_eq!(row.count, 50);
        assert_eq!(row.examples.len(), EXAMPLES);
        assert_eq!(row.functions.len(), FUNCTIONS);
    }

    #[test]
    fn the_least_recently_seen_entry_goes_first() {
        let book = DenialBook::with_capacity(3);
        for (i, host) in ["a.test", "b.test", "c.test"].iter().enumerate() {
            book.record(&refusal(NOT_LISTED, Some(host), host, None), i as u64);
        }
        // a.test seen again: b.test is now the least recent.
        book.record(&refusal(NOT_LISTED, Some("a.test"), &"a.test", None), 10);
        book.record(&refusal(NOT_LISTED, Some("d.test"), &"d.test", None), 11);
        let mut keys: Vec<Key> = book.rows(0).into_iter().map(|(k, _)| k).collect();
        keys.sort_by_key(|k| format!("{k:?}"));
        let want: Vec<Key> = ["a.test", "c.test", "d.test"]
            .iter()
            .map(|h| Key::Entry(h.to_string()))
            .collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn a_flood_of_new_hosts_stays_within_the_bound() {
        let book = DenialBook::default();
        for i in 0..100_000u64 {
            let host = format!("h{i}.flood.test");
            book.record(&refusal(NOT_LISTED, Some(&host), &host, Some("fn-a")), i);
        }
        assert!(
            (MAX_ENTRIES * 9 / 10..=MAX_ENTRIES).contains(&book.len()),
            "{}",
            book.len()
        );
        let rows = book.rows(0);
        assert_eq!(rows[0].0, Key::Entry("h99999.flood.test".into()));
        assert!(rows
            .iter()
            .all(|(_, r)| r.last_seen >= 100_000 - MAX_ENTRIES as u64));
    }

    #[test]
    fn rows_from_another_replica_merge() {
        let book = DenialBook::default();
        book.record(
            &refusal(NOT_LISTED, Some("x.test"), &"x.test:443", Some("fn-a")),
            50,
        );
        let (_, mut mine) = book.rows(0).remove(0);
        let other = Row {
            count: 4,
            first_seen: 20,
            last_seen: 40,
            reasons: 1 << Seen::Redirect.bit(),
            examples: vec!["http://x.test/".into()],
            functions: vec!["fn-b".into()],
            redirected_from: vec!["http://y.test/".into()],
        };
        let merged = merge_rows(
            [
                (Key::Entry("x.test".into()), mine.clone()),
                (Key::Entry("x.test".into()), other.clone()),
                (Key::Reason(PORT), other.clone()),
            ],
            10,
        );
        assert_eq!(merged.len(), 2);
        mine.merge(&other);
        assert_eq!((mine.count, mine.first_seen, mine.last_seen), (5, 20, 50));
        assert_eq!(mine.reasons(), [NOT_LISTED, Seen::Redirect]);
        assert_eq!(mine.functions.len(), 2);
        assert_eq!(merged[0], (Key::Entry("x.test".into()), mine));
        for key in [
            Key::Entry("*.x.test".into()),
            Key::Reason(Seen::Redirect),
            Key::Reason(PORT),
        ] {
            assert_eq!(Key::decode(&key.encode()), Some(key));
        }
    }

    #[test]
    fn an_example_is_compared_without_formatting_it() {
        assert!(displays_as(&"api.test:443", "api.test:443"));
        assert!(!displays_as(&"api.test:443", "api.test:44"));
        assert!(!displays_as(&"api.test:4", "api.test:443"));
        assert!(!displays_as(
            &format_args!("{}:{}", "api.test", 80),
            "api.test:443"
        ));
        assert!(displays_as(
            &format_args!("{}:{}", "api.test", 443),
            "api.test:443"
        ));
    }
}
