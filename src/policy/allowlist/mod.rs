//! The domain allowlist: entry syntax and fast matching.
//!
//! An entry is an exact host, an exact IP literal, or `*.` followed by a domain of at least two
//! labels. A wildcard matches subdomains at any depth and never the apex. Entries are parsed
//! into [`Pattern`], which cannot hold an invalid value; [`Allowlist`] indexes them as a hash of
//! exact names plus a hash of wildcard suffixes, so a lookup costs one hash probe for the name and
//! one per suffix length some wildcard has, instead of a scan over the entries.
//!
//! `pattern` holds the entry syntax, `index` the hash index and its lookup, `hints` the denial
//! hints that say which entry to add.

mod hints;
mod index;
mod pattern;

use std::net::IpAddr;

use index::{Index, NameKey};
pub use pattern::{Pattern, PatternError};

/// Index of a rule in the allowlist, in the order the entries were written.
pub type RuleId = u32;

/// The outcome of matching a host against the allowlist at a moment in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Active(RuleId),
    /// Only patterns still waiting out their activation delay match; this one is due first.
    Pending(RuleId),
    NoMatch,
}

impl Lookup {
    pub fn rule(self) -> Option<RuleId> {
        match self {
            Lookup::Active(id) | Lookup::Pending(id) => Some(id),
            Lookup::NoMatch => None,
        }
    }
}

/// The compiled allowlist. Duplicate entries keep the first occurrence.
///
/// ```
/// use egressd::policy::allowlist::{Allowlist, Pattern};
/// use egressd::policy::host::Host;
///
/// let list = Allowlist::new(["example.com", "*.example.org"].map(|e| Pattern::parse(e).unwrap()));
/// let allowed = |h: &str| list.find(&Host::parse(h).unwrap()).is_some();
/// assert!(allowed("example.com"));
/// assert!(!allowed("www.example.com"), "an apex entry does not cover subdomains");
/// assert!(allowed("a.b.example.org"));
/// assert!(!allowed("example.org"), "a wildcard does not cover its apex");
/// ```
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    patterns: Vec<Pattern>,
    /// Config file line of each pattern (0 when it did not come from a file).
    lines: Vec<u32>,
    /// When each pattern becomes active, in Unix milliseconds (0: active from the start).
    /// Newly added patterns wait out the activation delay; see `activation`.
    active_at: Vec<u64>,
    /// When each pattern was added, in Unix milliseconds (0: unknown), for the admin view.
    added_at: Vec<u64>,
    exact: Index<NameKey>,
    wildcard: Index<NameKey>,
    ips: Index<IpAddr>,
    /// Bit n is set when some wildcard suffix has n labels (a name has at most 127).
    wildcard_depths: u128,
}

impl Allowlist {
    pub fn new(patterns: impl IntoIterator<Item = Pattern>) -> Allowlist {
        Self::with_lines(patterns.into_iter().map(|p| (p, 0)))
    }

    /// Builds the index from patterns and the config lines they were written on.
    pub fn with_lines(patterns: impl IntoIterator<Item = (Pattern, u32)>) -> Allowlist {
        let mut list = Allowlist::default();
        for (pattern, line) in patterns {
            list.insert(pattern, line);
        }
        list
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// This list with `shared` added after it (entries from the shared state, with no
    /// config line); patterns already on it are not added twice.
    pub fn with_shared<'a>(&self, shared: impl IntoIterator<Item = &'a Pattern>) -> Allowlist {
        let mut merged = self.clone();
        for pattern in shared {
            merged.insert(pattern.clone(), 0);
        }
        merged
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn pattern(&self, id: RuleId) -> &Pattern {
        &self.patterns[id as usize]
    }

    /// The config line the rule was written on, when known.
    pub fn line(&self, id: RuleId) -> Option<u32> {
        Some(self.lines[id as usize]).filter(|l| *l > 0)
    }

    /// Records when `id` was added (Unix milliseconds).
    pub fn set_added_at(&mut self, id: RuleId, unix_ms: u64) {
        self.added_at[id as usize] = unix_ms;
    }

    /// When `id` was added, if known.
    pub fn added_at(&self, id: RuleId) -> Option<u64> {
        Some(self.added_at[id as usize]).filter(|t| *t > 0)
    }

    /// When `id` becomes active (Unix milliseconds; 0 for always).
    pub fn active_at(&self, id: RuleId) -> u64 {
        self.active_at[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::host::Host;

    /// An allowlist of `entries` (the index's tests use it too).
    pub(super) fn list(entries: &[&str]) -> Allowlist {
        Allowlist::new(entries.iter().map(|e| Pattern::parse(e).unwrap()))
    }

    /// Whether `list` lets `host` through.
    pub(super) fn allowed(list: &Allowlist, host: &str) -> bool {
        list.find(&Host::parse(host).unwrap()).is_some()
    }

    /// (name, entries, target, expected) — read as a spec.
    const MATCH_TABLE: &[(&str, &[&str], &str, bool)] = &[
        (
            "exact name matches itself",
            &["www.example.com"],
            "www.example.com",
            true,
        ),
        (
            "exact name does not cover subdomains",
            &["example.com"],
            "www.example.com",
            false,
        ),
        (
            "exact name does not cover its parent",
            &["www.example.com"],
            "example.com",
            false,
        ),
        (
            "wildcard matches one level down",
            &["*.example.org"],
            "a.example.org",
            true,
        ),
        (
            "wildcard matches any depth",
            &["*.example.org"],
            "a.b.c.example.org",
            true,
        ),
        (
            "wildcard never matches the apex",
            &["*.example.org"],
            "example.org",
            false,
        ),
        (
            "wildcard respects the label boundary",
            &["*.example.org"],
            "badexample.org",
            false,
        ),
        (
            "wildcard respects the label boundary below",
            &["*.example.org"],
            "a.badexample.org",
            false,
        ),
        (
            "matching ignores case",
            &["WWW.Example.com"],
            "www.EXAMPLE.com",
            true,
        ),
        (
            "target trailing dot is ignored",
            &["www.example.com"],
            "www.example.com.",
            true,
        ),
        (
            "entry trailing dot is ignored",
            &["www.example.com."],
            "www.example.com",
            true,
        ),
        (
            "wildcard with trailing dot target",
            &["*.example.org"],
            "a.example.org.",
            true,
        ),
        (
            "IDN compares in punycode",
            &["xn--bcher-kva.de"],
            "XN--BCHER-KVA.de",
            true,
        ),
        (
            "IP entry matches its literal",
            &["203.0.113.7"],
            "203.0.113.7",
            true,
        ),
        (
            "IP entry matches nothing else",
            &["203.0.113.7"],
            "203.0.113.8",
            false,
        ),
        (
            "IPv6 entry matches bracketed literal",
            &["2001:db8::1"],
            "[2001:db8::1]",
            true,
        ),
        (
            "exact and wildcard together",
            &["example.org", "*.example.org"],
            "example.org",
            true,
        ),
        ("empty list denies", &[], "example.com", false),
        // Index keys of up to 38 bytes live inside the hash table, longer ones in a box.
        (
            "a name of 38 bytes, the longest kept inline, matches itself",
            &["a2345678901234567890123456.example.com"],
            "a2345678901234567890123456.example.com",
            true,
        ),
        (
            "a name of 39 bytes, boxed, matches itself",
            &["a23456789012345678901234567.example.com"],
            "a23456789012345678901234567.example.com",
            true,
        ),
        (
            "an inline name does not match a longer one sharing its start",
            &["a2345678901234567890123456.example.com"],
            "a2345678901234567890123456.example.comx",
            false,
        ),
        (
            "a wildcard suffix of 39 bytes, boxed, matches below it",
            &["*.a23456789012345678901234567.example.com"],
            "www.a23456789012345678901234567.example.com",
            true,
        ),
        (
            "a wildcard suffix of 38 bytes, inline, does not match a 39-byte suffix",
            &["*.a2345678901234567890123456.example.com"],
            "www.a23456789012345678901234567.example.com",
            false,
        ),
    ];

    #[test]
    fn match_table() {
        for (name, entries, target, expected) in MATCH_TABLE {
            assert_eq!(allowed(&list(entries), target), *expected, "{name}");
        }
    }

    #[test]
    fn exact_entry_wins_over_wildcard() {
        let l = list(&["*.example.org", "a.example.org"]);
        assert_eq!(l.find(&Host::parse("a.example.org").unwrap()), Some(1));
    }

    #[test]
    fn pattern_matches_agrees_with_index() {
        for (name, entries, target, expected) in MATCH_TABLE {
            let host = Host::parse(target).unwrap();
            let any = entries
                .iter()
                .any(|e| Pattern::parse(e).unwrap().matches(&host));
            assert_eq!(any, *expected, "{name}");
        }
    }
}
