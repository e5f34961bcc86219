//! The allowlist's hash index: building it and looking hosts up in it.
//!
//! Exact names, wildcard suffixes and IP literals each have a hash table. A lookup probes the
//! name, then walks the name's label boundaries from the right and probes only the suffixes
//! whose label count some wildcard has, so its cost does not grow with the list.

use std::collections::HashMap;

use super::{Allowlist, Lookup, Pattern, RuleId};
use crate::policy::host::Host;

/// A hash index of the allowlist. foldhash rather than SipHash: a lookup hashes the full name
/// and then each parent suffix, and SipHash alone put a wildcard hit over 200 ns at 100k
/// entries. Keys come from the operator's config, so hash flooding is not a concern; the
/// per-process random seed is kept all the same.
pub(super) type Index<K> = HashMap<K, Slot, foldhash::fast::RandomState>;

/// A name as a hash key, kept inside the hash table's bucket when it fits. A probe that finds
/// a matching tag compares the key; with a boxed key that comparison is one more cache miss
/// after the bucket's, and on a 100k-entry list every probe already misses the cache. Almost
/// every host name fits: the bucket stays at 56 bytes, less than a box plus its allocation.
#[derive(Clone, Debug)]
pub(super) enum NameKey {
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
pub(super) struct Slot {
    id: RuleId,
    active_at: u64,
}

impl Allowlist {
    /// Adds `pattern` unless it is already on the list: the first occurrence keeps its id.
    pub(super) fn insert(&mut self, pattern: Pattern, line: u32) {
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
                start += bytes[start..].iter().position(|b| *b == b'.')? + 1;
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
/// false. Eight bytes at a time, as this walk is on every lookup that reaches the wildcards.
/// Hand-written rather than `memchr`: host names are short (most under 40 bytes), and
/// measured at 100k entries, alternating builds, memchr's `memrchr_iter` put a miss at
/// 31-50 ns and its portable `One` searcher at 38-43 ns, against 29-36 ns for this scan
/// (`cargo bench -p egressd-bench --bench allowlist -- decision_100k/`).
fn dots_from_right(bytes: &[u8], mut found: impl FnMut(usize) -> bool) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut end = bytes.len();
    while end >= 8 {
        let word = u64::from_le_bytes(bytes[end - 8..end].try_into().expect("8 bytes"));
        let x = word ^ u64::from_le_bytes([b'.'; 8]);
        // The high bit of each byte of `x` that is zero, that is of each dot. Exact: unlike
        // the shorter `(x - 0x01..) & !x & 0x80..`, no borrow crosses into the next byte.
        let mut dots = !(((x & LOW7) + LOW7) | x | LOW7);
        while dots != 0 {
            let byte = (63 - dots.leading_zeros() as usize) / 8;
            if !found(end - 8 + byte) {
                return;
            }
            dots &= !(0x80 << (8 * byte));
        }
        end -= 8;
    }
    for i in (0..end).rev() {
        if bytes[i] == b'.' && !found(i) {
            return;
        }
    }
}

fn label_count(name: &str) -> usize {
    name.bytes().filter(|b| *b == b'.').count() + 1
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
    use super::super::tests::{allowed, list};
    use super::*;

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
