//! Where egressd originates TLS itself: the `[[mtls]]` entries, as rules of the policy.
//!
//! The rule changes verdicts, so it lives here beside the allowlist and not in one caller: a
//! CONNECT to a covered host is refused (its TLS would be end to end, without the client
//! certificate egressd holds) unless the entry allows it, and a plain-HTTP request to it goes
//! out over TLS to the entry's port. The proxy, `explain`, the redirect audit, revocation and
//! the scheduler all read it from the same [`super::Policy`]. The certificates themselves are
//! the egress layer's ([`crate::egress::tls`]); they are looked up by the same pattern.

use super::allowlist::{Allowlist, Pattern};
use super::host::Host;

/// One `[[mtls]]` entry as a rule: which hosts, which TLS port, whether CONNECT may tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origination {
    pub pattern: Pattern,
    /// The upstream's TLS port.
    pub port: u16,
    /// Whether a CONNECT to the host is tunnelled (end-to-end TLS, no client certificate
    /// from egressd) instead of refused.
    pub allow_connect: bool,
    /// The config line of the entry.
    pub line: u32,
}

/// The rules, indexed by host like the allowlist: the exact pattern, else the longest
/// matching wildcard.
#[derive(Clone, Debug, Default)]
pub struct Originations {
    /// Rule `i` is entry `i` of the index.
    index: Allowlist,
    rules: Vec<Origination>,
}

impl Originations {
    /// `rules` must not repeat a pattern (config validation refuses that).
    pub fn new(rules: Vec<Origination>) -> Self {
        let index = Allowlist::new(rules.iter().map(|r| r.pattern.clone()));
        debug_assert_eq!(index.len(), rules.len(), "patterns are unique");
        Originations { index, rules }
    }

    /// The rule for `host`, if egressd originates TLS to it.
    pub fn lookup(&self, host: &Host) -> Option<&Origination> {
        self.index.find(host).map(|id| &self.rules[id as usize])
    }

    /// The TLS port of the rule for exactly `pattern`, if there is one.
    pub fn lookup_pattern(&self, pattern: &Pattern) -> Option<u16> {
        self.rules
            .iter()
            .find(|r| r.pattern == *pattern)
            .map(|r| r.port)
    }

    pub fn rules(&self) -> &[Origination] {
        &self.rules
    }
}

impl PartialEq for Originations {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Eq for Originations {}
