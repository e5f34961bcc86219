//! What the console shows while an entry is typed: the pattern as it would be stored, or
//! the error with its fix, and the pitfalls of the entry against the list in force.

use crate::policy::allowlist::{Allowlist, Pattern};
use crate::policy::host::Host;

/// What the console shows while an entry is typed, before it is added: the pattern as
/// stored, or the error with its fix; and the pitfalls of the entry against the current list.
#[derive(Debug, serde::Serialize)]
pub struct EntryCheck {
    pub input: String,
    pub pattern: Option<String>,
    pub kind: Option<&'static str>,
    pub error: Option<String>,
    pub hints: Vec<String>,
}

pub fn check_entry(input: &str, list: &Allowlist) -> EntryCheck {
    let trimmed = input.trim();
    let pattern = match Pattern::parse(trimmed) {
        Ok(p) => p,
        Err(err) => {
            return EntryCheck {
                input: input.to_string(),
                pattern: None,
                kind: None,
                error: Some(err.to_string()),
                hints: vec![],
            }
        }
    };
    let error = list
        .patterns()
        .iter()
        .position(|p| p == &pattern)
        .map(|id| match list.line(id as u32) {
            Some(line) => format!("\"{pattern}\" is already on the allowlist (line {line})"),
            None => format!("\"{pattern}\" is already on the allowlist"),
        });
    EntryCheck {
        input: input.to_string(),
        kind: Some(pattern_kind(&pattern)),
        hints: if error.is_some() {
            vec![]
        } else {
            pitfalls(&pattern, list)
        },
        pattern: Some(pattern.to_string()),
        error,
    }
}

/// `exact`, `wildcard` or `ip`, as the API and console name them.
pub fn pattern_kind(pattern: &Pattern) -> &'static str {
    match pattern {
        Pattern::Exact(_) => "exact",
        Pattern::Wildcard(_) => "wildcard",
        Pattern::Ip(_) => "ip",
    }
}

/// What an operator adding `pattern` may not expect: the apex/subdomain pitfall both ways,
/// an entry already covered by a wildcard, redirects.
fn pitfalls(pattern: &Pattern, list: &Allowlist) -> Vec<String> {
    let mut hints = Vec::new();
    match pattern {
        Pattern::Exact(name) => {
            let covering = list.patterns().iter().enumerate().find(|(_, p)| {
                matches!(p, Pattern::Wildcard(_)) && p.matches(&Host::Domain(name.clone()))
            });
            if let Some((id, wildcard)) = covering {
                let line = list.line(id as u32).map(|l| format!(" (line {l})")).unwrap_or_default();
                hints.push(format!("already covered by \"{wildcard}\"{line}; the exact entry keeps {name} allowed if the wildcard is removed"));
            }
            match name.strip_prefix("www.") {
                Some(apex) => hints.push(format!("\"{name}\" does not cover \"{apex}\": if your URLs have no www, add \"{apex}\" too")),
                None => hints.push(format!("\"{name}\" does not cover its subdomains such as \"www.{name}\": add each one you call, or \"*.{name}\"")),
            }
        }
        Pattern::Wildcard(suffix) => hints.push(format!(
            "\"*.{suffix}\" covers every subdomain of {suffix} but does not cover \"{suffix}\" itself; add \"{suffix}\" too if you call it"
        )),
        Pattern::Ip(_) => hints.push("an IP entry allows that address only by IP; a name that resolves to it still needs its own entry".into()),
    }
    hints.push("if the URL redirects, every host in the chain must be allowed: check it under \"Check a URL\"".into());
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn entry_checks_explain_pitfalls() {
        let list = Allowlist::new([p("*.example.org"), p("example.net")]);
        let check = |s: &str| check_entry(s, &list);
        assert_eq!(
            check("*.*.x.test").error.unwrap(),
            "only one leading wildcard is allowed; use \"*.x.test\""
        );
        assert_eq!(
            check("EXAMPLE.net").error.unwrap(),
            "\"example.net\" is already on the allowlist"
        );
        let apex = check("example.com");
        assert_eq!(apex.kind, Some("exact"));
        assert!(
            apex.hints.iter().any(|h| h.contains("\"www.example.com\"")),
            "{:?}",
            apex.hints
        );
        let covered = check("a.example.org");
        assert!(
            covered
                .hints
                .iter()
                .any(|h| h.contains("already covered by \"*.example.org\"")),
            "{:?}",
            covered.hints
        );
        let wildcard = check("*.example.com");
        assert!(
            wildcard
                .hints
                .iter()
                .any(|h| h.contains("does not cover \"example.com\" itself")),
            "{:?}",
            wildcard.hints
        );
    }
}
