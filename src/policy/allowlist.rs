//! The domain allowlist: entry syntax and fast matching.
//!
//! An entry is an exact host, an exact IP literal, or `*.` followed by a domain of at least two
//! labels. A wildcard matches subdomains at any depth and never the apex. Entries are parsed
//! into [`Pattern`], which cannot hold an invalid value; [`Allowlist`] indexes them as a hash of
//! exact names plus a hash of wildcard suffixes, so a lookup costs one hash probe for the name and
//! one per suffix length some wildcard has, instead of a scan over the entries.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::policy::host::{normalize_domain, Host, HostError};

/// One parsed allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Matches this name only.
    Exact(Box<str>),
    /// `*.suffix`: matches any name ending in `.suffix`, not `suffix` itself.
    Wildcard(Box<str>),
    Ip(IpAddr),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Pattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why an entry is not a valid pattern; each message says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "a bare \"*\" would allow every host; list the domains instead, e.g. \"*.example.com\""
    )]
    BareWildcard,
    #[error("\"*.\" needs a domain after it, e.g. \"*.example.com\"")]
    WildcardWithoutDomain,
    #[error("only one leading wildcard is allowed; use \"*.{0}\"")]
    SeveralWildcards(String),
    #[error("a wildcard must be the whole first label, as in \"*.{0}\"")]
    WildcardNotFirst(String),
    #[error("a wildcard must be the whole first label; use \"*.{0}\" for its subdomains or \"{0}\" for the name itself")]
    PartialLabelWildcard(String),
    #[error(
        "a wildcard must be followed by a domain of at least two labels, e.g. \"*.example.{0}\""
    )]
    WildcardTooBroad(String),
    #[error("entries are host names, not URLs; write \"{0}\"")]
    HasScheme(String),
    #[error("entries are host names without a path; write \"{0}\"")]
    HasPath(String),
    #[error("entries are host names without a port; write \"{0}\" and list the port in proxy.connect_ports or proxy.http_ports")]
    HasPort(String),
    #[error("IPv6 entries are written without brackets; write \"{0}\"")]
    BracketedIp(String),
    #[error("entries may not contain whitespace")]
    Whitespace,
    #[error("{0}")]
    Host(#[from] HostError),
}

impl Pattern {
    pub fn parse(entry: &str) -> Result<Pattern, PatternError> {
        if entry.chars().any(char::is_whitespace) {
            return Err(PatternError::Whitespace);
        }
        if let Some((_, rest)) = entry.split_once("://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            return Err(PatternError::HasScheme(unbracketed(strip_port(host))));
        }
        if let Some((host, _)) = entry.split_once('/') {
            return Err(PatternError::HasPath(host.to_string()));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Pattern::Ip(ip));
        }
        if let Some(bracketed) = bracketed_ipv6(entry) {
            return Err(bracketed);
        }
        if entry.contains(':') {
            return Err(PatternError::HasPort(strip_port(entry).to_string()));
        }
        match entry {
            "*" => return Err(PatternError::BareWildcard),
            "*." => return Err(PatternError::WildcardWithoutDomain),
            _ => {}
        }
        match entry.strip_prefix("*.") {
            Some(suffix) => parse_wildcard(suffix),
            None => parse_exact(entry),
        }
    }

    /// Whether this entry alone lets `host` through.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (Pattern::Exact(name), Host::Domain(d)) => **name == **d,
            (Pattern::Wildcard(suffix), Host::Domain(d)) => {
                d.len() > suffix.len() + 1
                    && d.ends_with(&**suffix)
                    && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
            }
            (Pattern::Ip(ip), Host::Ip(target)) => ip == target,
            _ => false,
        }
    }
}

/// A URL's host as an entry writes it: an IPv6 address without its brackets.
fn unbracketed(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|inside| inside.parse::<std::net::Ipv6Addr>().is_ok())
        .unwrap_or(host)
        .to_string()
}

/// `[v6]` or `[v6]:port`, a URL's form of an IPv6 address: the hint gives the bare address,
/// the form an entry takes.
fn bracketed_ipv6(entry: &str) -> Option<PatternError> {
    let (inside, after) = entry.strip_prefix('[')?.split_once(']')?;
    let ip = inside.parse::<std::net::Ipv6Addr>().ok()?.to_string();
    Some(match after {
        "" => PatternError::BracketedIp(ip),
        _ => PatternError::HasPort(ip),
    })
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn parse_wildcard(suffix: &str) -> Result<Pattern, PatternError> {
    if suffix.contains('*') {
        let rest: Vec<&str> = suffix.split('.').filter(|l| !l.contains('*')).collect();
        return Err(PatternError::SeveralWildcards(rest.join(".")));
    }
    let name = normalize_domain(suffix)?;
    if !name.contains('.') {
        return Err(PatternError::WildcardTooBroad(name));
    }
    // A suffix ending in a number is an IP literal, canonical or not (`*.a.443`): no name
    // under it is a valid host, so the entry could never match.
    if let Ok(Host::Ip(_)) | Err(HostError::NonCanonicalIp(_)) = Host::parse(&name) {
        return Err(HostError::NonCanonicalIp(format!("*.{suffix}")).into());
    }
    Ok(Pattern::Wildcard(name.into_boxed_str()))
}

fn parse_exact(entry: &str) -> Result<Pattern, PatternError> {
    if let Some(pos) = entry.find('*') {
        let first_label_end = entry.find('.').unwrap_or(entry.len());
        if pos < first_label_end {
            // `*x.com`: the wildcard is glued to other characters in the first label.
            return Err(PatternError::PartialLabelWildcard(entry.replace('*', "")));
        }
        let rest = entry[pos..].trim_start_matches(['*', '.']);
        let example = if rest.contains('.') {
            rest
        } else {
            "example.com"
        };
        return Err(PatternError::WildcardNotFirst(example.to_string()));
    }
    match Host::parse(entry)? {
        Host::Domain(name) => Ok(Pattern::Exact(name)),
        Host::Ip(ip) => Ok(Pattern::Ip(ip)),
    }
}

/// A hash index of the allowlist. foldhash rather than SipHash: a lookup hashes the full name
/// and then each parent suffix, and SipHash alone put a wildcard hit over 200 ns at 100k
/// entries. Keys come from the operator's config, so hash flooding is not a concern; the
/// per-process random seed is kept all the same.
type Index<K> = HashMap<K, Slot, foldhash::fast::RandomState>;

/// A name as a hash key, kept inside the hash table's bucket when it fits. A probe that finds
/// a matching tag compares the key; with a boxed key that comparison is one more cache miss
/// after the bucket's, and on a 100k-entry list every probe already misses the cache. Almost
/// every host name fits: the bucket stays at 56 bytes, less than a box plus its allocation.
#[derive(Clone, Debug)]
enum NameKey {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Boxed(Box<str>),
}

/// Longest name kept inline: the key is then 40 bytes, like the allocation a box would point at.
const INLINE_NAME: usize = 38;

impl NameKey {
    fn new(name: &str) -> NameKey {
        if name.len() > INLINE_NAME {
            return NameKey::Boxed(name.into());
        }
        let mut bytes = [0; INLINE_NAME];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        NameKey::Inline {
            // At most INLINE_NAME: fits.
            len: name.len() as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            NameKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            NameKey::Boxed(name) => name.as_bytes(),
        }
    }
}

// Hash and equality are those of the bytes, so the index can be probed with a `&[u8]`
// (`Borrow` requires they agree).
impl std::hash::Hash for NameKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl PartialEq for NameKey {
    fn eq(&self, other: &NameKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for NameKey {}

impl std::borrow::Borrow<[u8]> for NameKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// What the index stores per key. The activation time sits beside the id so a lookup does
/// not take a second cache miss in a side table.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: RuleId,
    active_at: u64,
}

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

    fn insert(&mut self, pattern: Pattern, line: u32) {
        let id = self.patterns.len() as RuleId;
        let fresh = match &pattern {
            Pattern::Exact(name) => try_insert(&mut self.exact, NameKey::new(name), id),
            Pattern::Wildcard(suffix) => {
                self.wildcard_depths |= 1 << label_count(suffix);
                try_insert(&mut self.wildcard, NameKey::new(suffix), id)
            }
            Pattern::Ip(ip) => try_insert(&mut self.ips, *ip, id),
        };
        if fresh {
            self.patterns.push(pattern);
            self.lines.push(line);
            self.active_at.push(0);
            self.added_at.push(0);
        }
    }

    /// Whether this exact pattern is on the list.
    pub fn contains(&self, pattern: &Pattern) -> bool {
        match pattern {
            Pattern::Exact(name) => self.exact.contains_key(name.as_bytes()),
            Pattern::Wildcard(suffix) => self.wildcard.contains_key(suffix.as_bytes()),
            Pattern::Ip(ip) => self.ips.contains_key(ip),
        }
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
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

    /// Sets when `id` becomes active (Unix milliseconds; 0 for always).
    pub fn set_active_at(&mut self, id: RuleId, unix_ms: u64) {
        self.active_at[id as usize] = unix_ms;
        let slot = match &self.patterns[id as usize] {
            Pattern::Exact(name) => self.exact.get_mut(name.as_bytes()),
            Pattern::Wildcard(suffix) => self.wildcard.get_mut(suffix.as_bytes()),
            Pattern::Ip(ip) => self.ips.get_mut(ip),
        };
        slot.expect("every pattern is indexed").active_at = unix_ms;
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

    /// The most specific rule matching `host`, active or not. An exact entry wins over a
    /// wildcard, and a longer wildcard suffix over a shorter one.
    pub fn find(&self, host: &Host) -> Option<RuleId> {
        self.lookup(host, u64::MAX).rule()
    }

    /// The most specific rule that matches `host` and is active at `now_ms`; failing that, the
    /// matching rule that becomes active first.
    pub fn lookup(&self, host: &Host, now_ms: u64) -> Lookup {
        let mut pending: Option<RuleId> = None;
        let mut consider = |slot: Slot| -> Option<RuleId> {
            if slot.active_at <= now_ms {
                return Some(slot.id);
            }
            if pending.is_none_or(|p| slot.active_at < self.active_at[p as usize]) {
                pending = Some(slot.id);
            }
            None
        };
        let active = match host {
            Host::Ip(ip) => self.ips.get(ip).and_then(|slot| consider(*slot)),
            // Most specific first: the exact entry, then wildcards from the longest suffix to
            // the shortest.
            Host::Domain(name) => self
                .exact
                .get(name.as_bytes())
                .and_then(|slot| consider(*slot))
                .or_else(|| self.matching_wildcards(name).find_map(&mut consider)),
        };
        match (active, pending) {
            (Some(id), _) => Lookup::Active(id),
            (None, Some(id)) => Lookup::Pending(id),
            (None, None) => Lookup::NoMatch,
        }
    }

    /// Wildcard rules matching `name`, longest suffix first.
    fn matching_wildcards<'a>(&'a self, name: &'a str) -> WildcardMatches<'a> {
        WildcardMatches {
            list: self,
            name,
            depths: self.wildcard_depths,
            at: None,
        }
    }

    /// Explains why `host` is not allowed and what entry to add. Points out the classic
    /// mistakes: an apex entry expected to cover subdomains, a wildcard expected to cover
    /// its apex.
    pub fn denial_hint(&self, host: &Host) -> String {
        let Host::Domain(name) = host else {
            return format!("\"{host}\" is not on the allowlist; add \"{host}\"");
        };
        let mut rest: &str = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if self.exact.contains_key(parent.as_bytes()) {
                return format!(
                    "\"{parent}\" is allowlisted but does not cover subdomains; add \"{name}\" or \"*.{parent}\""
                );
            }
            rest = parent;
        }
        if self.wildcard.contains_key(name.as_bytes()) {
            return format!(
                "\"*.{name}\" covers subdomains only, not \"{name}\" itself; add \"{name}\""
            );
        }
        match name.split_once('.') {
            Some((_, parent)) if parent.contains('.') => format!(
                "\"{name}\" is not on the allowlist; add \"{name}\" (or \"*.{parent}\" for every subdomain of {parent})"
            ),
            _ => format!("\"{name}\" is not on the allowlist; add \"{name}\""),
        }
    }
}

/// The wildcard rules matching a name, longest suffix first. Lazy, so an exact hit never walks
/// the name. The first call walks the label boundaries from the right, no further than the
/// deepest wildcard; after that, only suffixes whose label count some wildcard has are hashed
/// and probed (each probe is a likely cache miss), and no suffix is copied.
struct WildcardMatches<'a> {
    list: &'a Allowlist,
    name: &'a str,
    /// Label counts still to probe (bit n: the suffix of n labels), highest first.
    depths: u128,
    /// The suffix the walk stands on: where it starts in `name`, and its label count.
    at: Option<(usize, u32)>,
}

impl Iterator for WildcardMatches<'_> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        let bytes = self.name.as_bytes();
        let (mut start, mut labels) = match self.at {
            Some(at) => at,
            None => {
                // The longest proper suffix (never the name itself: no apex match) that is no
                // deeper than the deepest wildcard.
                let deepest = 127u32.checked_sub(self.depths.leading_zeros())?;
                let mut at = None;
                let mut labels = 0;
                dots_from_right(bytes, |dot| {
                    labels += 1;
                    at = Some((dot + 1, labels));
                    labels < deepest
                });
                let Some((start, labels)) = at else {
                    self.depths = 0;
                    return None;
                };
                self.depths &= u128::MAX >> (127 - labels);
                (start, labels)
            }
        };
        while self.depths != 0 {
            let target = 127 - self.depths.leading_zeros();
            self.depths &= !(1 << target);
            while labels > target {
                // `labels > 1`, so there is a dot ahead.
                start += memchr::memchr(b'.', &bytes[start..])? + 1;
                labels -= 1;
            }
            self.at = Some((start, labels));
            if let Some(slot) = self.list.wildcard.get(&bytes[start..]) {
                return Some(*slot);
            }
        }
        None
    }
}

/// Calls `found` with the position of each dot in `bytes`, right to left, until it returns
/// false. `memchr` scans a word or a vector at a time, as this walk is on every lookup that
/// reaches the wildcards.
fn dots_from_right(bytes: &[u8], mut found: impl FnMut(usize) -> bool) {
    for dot in memchr::memrchr_iter(b'.', bytes) {
        if !found(dot) {
            return;
        }
    }
}

fn label_count(name: &str) -> usize {
    memchr::memchr_iter(b'.', name.as_bytes()).count() + 1
}

fn try_insert<K: std::hash::Hash + Eq>(map: &mut Index<K>, key: K, id: RuleId) -> bool {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(vacant) => {
            vacant.insert(Slot { id, active_at: 0 });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `tests/it/properties.rs`: `*.a.443` was accepted, though every name under it
    /// ends in a number and is refused as a host, so the entry could never match.
    #[test]
    fn wildcard_over_a_number_is_refused() {
        for entry in ["*.a.443", "*.example.0x7f", "*.1.2.3.4"] {
            assert!(
                matches!(
                    Pattern::parse(entry),
                    Err(PatternError::Host(HostError::NonCanonicalIp(_)))
                ),
                "{entry}: {:?}",
                Pattern::parse(entry)
            );
        }
    }

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::new(entries.iter().map(|e| Pattern::parse(e).unwrap()))
    }

    fn allowed(list: &Allowlist, host: &str) -> bool {
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

    /// (entry, expected message) — every invalid form names what to write instead.
    const INVALID_TABLE: &[(&str, &str)] = &[
        ("*", "a bare \"*\" would allow every host"),
        ("*.", "\"*.\" needs a domain after it"),
        (
            "*.*.example.com",
            "only one leading wildcard is allowed; use \"*.example.com\"",
        ),
        (
            "a.*.com",
            "a wildcard must be the whole first label, as in \"*.example.com\"",
        ),
        ("a.*.example.com", "as in \"*.example.com\""),
        ("*x.com", "use \"*.x.com\" for its subdomains or \"x.com\""),
        ("x.*", "a wildcard must be the whole first label"),
        ("*.com", "at least two labels"),
        ("a..com", "empty label"),
        (
            "https://example.com/path",
            "not URLs; write \"example.com\"",
        ),
        ("example.com/path", "without a path; write \"example.com\""),
        ("example.com:443", "without a port; write \"example.com\""),
        ("[::1]", "without brackets; write \"::1\""),
        ("[2001:DB8::1]:443", "without a port; write \"2001:db8::1\""),
        (
            "https://[2001:db8::1]:8443/x",
            "not URLs; write \"2001:db8::1\"",
        ),
        ("bücher.de", "punycode form \"xn--bcher-kva.de\""),
        ("", "empty host"),
        ("127.1", "not a canonical IPv4 address"),
        (" example.com", "whitespace"),
    ];

    #[test]
    fn invalid_table() {
        for (entry, expected) in INVALID_TABLE {
            let err = Pattern::parse(entry).expect_err(entry).to_string();
            assert!(
                err.contains(expected),
                "{entry:?}: {err:?} lacks {expected:?}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(Pattern::parse(&long_label)
            .unwrap_err()
            .to_string()
            .contains("63 bytes"));
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(Pattern::parse(&long_name)
            .unwrap_err()
            .to_string()
            .contains("253 bytes"));
    }

    #[test]
    fn hints_explain_the_subdomain_pitfall() {
        let l = list(&["example.com", "*.example.org"]);
        assert_eq!(
            l.denial_hint(&Host::parse("www.example.com").unwrap()),
            "\"example.com\" is allowlisted but does not cover subdomains; add \"www.example.com\" or \"*.example.com\""
        );
        assert!(l
            .denial_hint(&Host::parse("example.org").unwrap())
            .contains("covers subdomains only"));
        assert!(l
            .denial_hint(&Host::parse("api.other.net").unwrap())
            .contains("add \"api.other.net\" (or \"*.other.net\""));
    }

    #[test]
    fn pending_rules_fall_back_to_active_ones() {
        let mut l = list(&["a.example.org", "*.example.org", "*.other.net"]);
        l.set_active_at(0, 2_000);
        let host = Host::parse("a.example.org").unwrap();
        assert_eq!(
            l.lookup(&host, 1_000),
            Lookup::Active(1),
            "the active wildcard allows it meanwhile"
        );
        assert_eq!(l.lookup(&host, 2_000), Lookup::Active(0));
        l.set_active_at(1, 3_000);
        assert_eq!(
            l.lookup(&host, 1_000),
            Lookup::Pending(0),
            "the earliest pending rule is reported"
        );
        l.set_active_at(2, 5_000);
        assert_eq!(
            l.lookup(&Host::parse("x.other.net").unwrap(), 4_999),
            Lookup::Pending(2)
        );
        assert_eq!(
            l.lookup(&Host::parse("x.third.net").unwrap(), 0),
            Lookup::NoMatch
        );
    }

    /// The most specific entry matching `target` by brute force over [`Pattern::matches`]:
    /// the exact entry, else the wildcard with the longest suffix.
    fn most_specific(entries: &[&str], target: &Host) -> Option<RuleId> {
        let patterns: Vec<Pattern> = entries.iter().map(|e| Pattern::parse(e).unwrap()).collect();
        let rank = |p: &Pattern| match p {
            Pattern::Wildcard(suffix) => suffix.len(),
            _ => usize::MAX,
        };
        (0..patterns.len())
            .filter(|&i| patterns[i].matches(target))
            .max_by_key(|&i| (rank(&patterns[i]), std::cmp::Reverse(i)))
            .map(|i| i as RuleId)
    }

    #[test]
    fn wildcards_at_several_depths_match_most_specific_first() {
        let entries = [
            "*.example.org",
            "*.b.example.org",
            "*.c.b.example.org",
            "d.c.b.example.org",
            "*.e.d.c.b.example.org",
            "*.x.y",
            "*.x.y.z",
            "other.net",
        ];
        let l = list(&entries);
        for target in [
            "a.example.org",
            "b.example.org",
            "z.b.example.org",
            "c.b.example.org",
            "d.c.b.example.org",
            "z.d.c.b.example.org",
            "e.d.c.b.example.org",
            "f.e.d.c.b.example.org",
            "g.f.e.d.c.b.example.org",
            "example.org",
            "org",
            "a.badexample.org",
            "b.x.y",
            "x.y",
            "a.x.y.z",
            "a.b.x.y",
            "other.net",
            "a.other.net",
            "a",
        ] {
            let host = Host::parse(target).unwrap();
            assert_eq!(l.find(&host), most_specific(&entries, &host), "{target}");
        }
    }

    #[test]
    fn pending_wildcards_fall_back_to_shorter_suffixes() {
        let mut l = list(&["*.a.example.org", "*.example.org", "*.x.a.example.org"]);
        let host = Host::parse("w.x.a.example.org").unwrap();
        assert_eq!(l.lookup(&host, 0), Lookup::Active(2));
        l.set_active_at(2, 5_000);
        l.set_active_at(0, 3_000);
        assert_eq!(l.lookup(&host, 0), Lookup::Active(1));
        l.set_active_at(1, 4_000);
        assert_eq!(
            l.lookup(&host, 0),
            Lookup::Pending(0),
            "the earliest of the pending wildcards"
        );
        assert_eq!(l.lookup(&host, 3_000), Lookup::Active(0));
    }

    #[test]
    fn deepest_names_and_wildcards() {
        // 127 labels, 253 bytes: the longest name there is.
        let deepest = vec!["a"; 127].join(".");
        let suffix_126 = &deepest[2..];
        let l = list(&[&format!("*.{suffix_126}"), "*.a.a"]);
        assert_eq!(l.find(&Host::parse(&deepest).unwrap()), Some(0));
        assert_eq!(l.find(&Host::parse(suffix_126).unwrap()), Some(1));
        assert_eq!(l.find(&Host::parse("a.a").unwrap()), None);
    }

    #[test]
    fn dots_are_found_right_to_left() {
        for name in [
            "",
            ".",
            "a",
            "a.b",
            "abcdefg.h",
            "abcdefgh.ijklmnop.q",
            "x.abcdefgh",
            ".......",
            "........",
            ".........",
            "a.b.c.d.e.f.g.h.i.j.k",
            "x1.web.tenant99999.apps.example.net",
        ] {
            let expected: Vec<usize> = name.rmatch_indices('.').map(|(i, _)| i).collect();
            let mut found = Vec::new();
            dots_from_right(name.as_bytes(), |i| {
                found.push(i);
                true
            });
            assert_eq!(found, expected, "{name:?}");
            for stop in 0..expected.len() {
                let mut found = Vec::new();
                dots_from_right(name.as_bytes(), |i| {
                    found.push(i);
                    found.len() <= stop
                });
                assert_eq!(found, expected[..=stop], "{name:?} stopping after {stop}");
            }
        }
    }

    #[test]
    fn large_list_lookups_use_the_index() {
        let entries: Vec<Pattern> = (0..100_000)
            .map(|i| {
                if i % 2 == 0 {
                    Pattern::parse(&format!("host{i}.example.com")).unwrap()
                } else {
                    Pattern::parse(&format!("*.zone{i}.example.net")).unwrap()
                }
            })
            .collect();
        let l = Allowlist::new(entries);
        assert_eq!(l.len(), 100_000);
        assert!(allowed(&l, "host99998.example.com"));
        assert!(allowed(&l, "a.b.zone99999.example.net"));
        assert!(!allowed(&l, "zone99999.example.net"));
        assert!(!allowed(&l, "host99999.example.com"));
    }
}
