//! Credentials egressd adds to requests itself: the `[[inject]]` rules, as rules of the
//! policy.
//!
//! A rule names a host (allowlist patterns and matching), a header and a value template
//! such as `Bearer {secret:partner-token}`; the egress client fills the template from the
//! secret store as the request leaves, replacing any header of that name the function sent.
//! The rule changes verdicts, so it lives here beside the allowlist: a CONNECT to a covered
//! host is refused (inside a tunnel egressd cannot add a header) unless the rule allows it,
//! and `explain`, revocation and the proxy read it from the same [`super::Policy`].

use super::allowlist::{Allowlist, Pattern};
use super::host::Host;

/// One piece of a value template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `{secret:KEY}`: the value of the secret `KEY`.
    Secret(String),
}

/// A header value with `{secret:KEY}` placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("\"{{\" starts a placeholder, which is {{secret:KEY}}; found {0:?}")]
    BadPlaceholder(String),
    #[error("the value names no secret; write it with a placeholder, e.g. \"Bearer {{secret:partner-token}}\"")]
    NoSecret,
    #[error("the value has a character a header cannot carry (a control character or non-ASCII)")]
    BadCharacter,
}

impl Template {
    /// Parses `Bearer {secret:KEY}`. Keys are checked by the caller (the secret store owns
    /// their syntax).
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if !text
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(TemplateError::BadCharacter);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start..];
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::BadPlaceholder(after.to_string()))?;
            let key = after[1..end]
                .strip_prefix("secret:")
                .ok_or_else(|| TemplateError::BadPlaceholder(after[..=end].to_string()))?;
            parts.push(Part::Secret(key.to_string()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Secret(_))) {
            return Err(TemplateError::NoSecret);
        }
        Ok(Template { parts })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The secrets it names.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(key) => Some(key.as_str()),
            Part::Text(_) => None,
        })
    }
}

/// One `[[inject]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub pattern: Pattern,
    /// Lower-case header name.
    pub header: String,
    pub template: Template,
    /// Only requests of these functions get the header; `None`: every request.
    pub functions: Option<Vec<String>>,
    /// Whether a CONNECT to the host is tunnelled (without the header) instead of refused.
    pub allow_connect: bool,
    /// The config line of the entry.
    pub line: u32,
}

impl Injection {
    /// Whether a request sent by `function` (`None`: anonymous) gets the header.
    pub fn applies_to(&self, function: Option<&str>) -> bool {
        match (&self.functions, function) {
            (None, _) => true,
            (Some(names), Some(function)) => names.iter().any(|n| n == function),
            (Some(_), None) => false,
        }
    }
}

/// The rules, grouped by pattern and indexed by host like the allowlist (the exact pattern,
/// else the longest matching wildcard).
#[derive(Clone, Debug, Default)]
pub struct Injections {
    /// Pattern `i` of the index is the pattern of group `i`.
    index: Allowlist,
    /// The rules of one pattern each, in config order.
    groups: Vec<Vec<Injection>>,
}

impl PartialEq for Injections {
    fn eq(&self, other: &Self) -> bool {
        self.groups == other.groups
    }
}

impl Eq for Injections {}

impl Injections {
    pub fn new(rules: Vec<Injection>) -> Self {
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut groups: Vec<Vec<Injection>> = Vec::new();
        for rule in rules {
            match patterns.iter().position(|p| *p == rule.pattern) {
                Some(i) => groups[i].push(rule),
                None => {
                    patterns.push(rule.pattern.clone());
                    groups.push(vec![rule]);
                }
            }
        }
        Injections {
            index: Allowlist::new(patterns),
            groups,
        }
    }

    /// The rules for `host`; empty when egressd injects nothing there.
    pub fn lookup(&self, host: &Host) -> &[Injection] {
        if self.groups.is_empty() {
            return &[];
        }
        match self.index.find(host) {
            Some(id) => &self.groups[id as usize],
            None => &[],
        }
    }

    /// Every rule, in config order within each pattern.
    pub fn rules(&self) -> impl Iterator<Item = &Injection> {
        self.groups.iter().flatten()
    }

    /// The rules whose template names `key`.
    pub fn using<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Injection> {
        self.rules()
            .filter(move |r| r.template.keys().any(|k| k == key))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        // (name, template, parts or error)
        let ok = [
            (
                "bearer",
                "Bearer {secret:partner-token}",
                vec![
                    Part::Text("Bearer ".into()),
                    Part::Secret("partner-token".into()),
                ],
            ),
            (
                "the value alone",
                "{secret:k}",
                vec![Part::Secret("k".into())],
            ),
            (
                "two secrets around text",
                "{secret:user}:{secret:pass}",
                vec![
                    Part::Secret("user".into()),
                    Part::Text(":".into()),
                    Part::Secret("pass".into()),
                ],
            ),
        ];
        for (name, text, parts) in ok {
            assert_eq!(Template::parse(text).unwrap().parts(), parts, "{name}");
        }
        let bad = [
            ("no secret", "Bearer static", TemplateError::NoSecret),
            (
                "unclosed",
                "Bearer {secret:k",
                TemplateError::BadPlaceholder("{secret:k".into()),
            ),
            (
                "another kind of placeholder",
                "Bearer {env:TOKEN}",
                TemplateError::BadPlaceholder("{env:TOKEN}".into()),
            ),
            (
                "a line break",
                "Bearer {secret:k}\r\nX: y",
                TemplateError::BadCharacter,
            ),
        ];
        for (name, text, err) in bad {
            assert_eq!(Template::parse(text).unwrap_err(), err, "{name}");
        }
    }

    fn rule(pattern: &str, header: &str, functions: Option<&[&str]>) -> Injection {
        Injection {
            pattern: Pattern::parse(pattern).unwrap(),
            header: header.into(),
            template: Template::parse("Bearer {secret:t}").unwrap(),
            functions: functions.map(|f| f.iter().map(|s| s.to_string()).collect()),
            allow_connect: false,
            line: 1,
        }
    }

    #[test]
    fn rules_are_found_by_host_and_filtered_by_function() {
        let rules = Injections::new(vec![
            rule("api.partner.example", "authorization", Some(&["billing"])),
            rule("api.partner.example", "x-api-key", None),
            rule("*.partner.example", "authorization", None),
        ]);
        let host = |h: &str| Host::parse(h).unwrap();
        let exact = rules.lookup(&host("api.partner.example"));
        assert_eq!(
            exact.len(),
            2,
            "the exact pattern's rules, not the wildcard's"
        );
        assert!(exact[0].applies_to(Some("billing")));
        assert!(!exact[0].applies_to(Some("reports")));
        assert!(
            !exact[0].applies_to(None),
            "anonymous requests get no listed rule"
        );
        assert!(exact[1].applies_to(None));
        assert_eq!(rules.lookup(&host("www.partner.example")).len(), 1);
        assert!(rules.lookup(&host("partner.example")).is_empty());
        assert_eq!(rules.using("t").count(), 3);
        assert_eq!(rules.using("other").count(), 0);
    }
}
