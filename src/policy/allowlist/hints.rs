//! Denial hints: the entry to add, pointing out the likely mistake.

use super::Allowlist;
use crate::policy::host::Host;

impl Allowlist {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Pattern;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::new(entries.iter().map(|e| Pattern::parse(e).unwrap()))
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
}
