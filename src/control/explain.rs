//! `egressd explain`: the decision the live proxy would make for a target, in words.

use std::fmt;
use std::time::SystemTime;

use super::config::Config;
use crate::policy::host::Host;
use crate::policy::identity::{Identities, IdentityMode};
use crate::policy::url::target_of;
use crate::policy::{Denial, Policy, Protocol, Target};
use crate::util::time::unix_ms;

/// What `explain` decided.
#[derive(Debug)]
pub enum Explanation {
    Allowed {
        target: Target,
        protocol: Protocol,
        rule: String,
    },
    Denied {
        target: String,
        denial: Denial,
    },
}

impl Explanation {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Explanation::Allowed { .. })
    }

    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Explanation::Allowed { .. } => None,
            Explanation::Denied { denial, .. } => Some(denial),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Explanation::Allowed {
                target,
                protocol,
                rule,
            } => {
                let how = match protocol {
                    Protocol::Connect => "CONNECT",
                    Protocol::Http => "HTTP",
                };
                write!(f, "allowed: {how} to {target} matches rule {rule}")
            }
            Explanation::Denied { denial, .. } => write!(f, "{denial}"),
        }
    }
}

/// Explains `input`: `host` (CONNECT to 443), `host:port` (CONNECT), or an `http://` or
/// `https://` URL. Names in `[dns] overrides` are checked against the private ranges too; other
/// names are not resolved.
pub fn explain(config: &Config, input: &str, now: SystemTime) -> Explanation {
    explain_policy(&config.policy, input, now)
}

/// [`explain`] against a policy (the one in force, for the admin API).
pub fn explain_policy(policy: &Policy, input: &str, now: SystemTime) -> Explanation {
    let (target, protocol) = match target_of(input) {
        Ok(parsed) => parsed,
        Err(err) => {
            return Explanation::Denied {
                target: input.to_string(),
                denial: Denial::invalid_target(&err),
            }
        }
    };
    let denied = |denial| Explanation::Denied {
        target: target.to_string(),
        denial,
    };
    let rule = match policy.decide(&target, protocol, unix_ms(now)) {
        Ok(rule) => rule,
        Err(denial) => return denied(denial),
    };
    if let Host::Domain(name) = &target.host {
        if let Some(ip) = policy.dns_overrides.get(name) {
            if let Err(denial) = policy.check_address(*ip) {
                return denied(denial);
            }
        }
    }
    Explanation::Allowed {
        rule: policy.describe_rule(rule),
        target,
        protocol,
    }
}

/// How `proxy.identity` changes the answer for a request from `function` (none: a request
/// without credentials), when it does.
pub fn identity_note(identities: &Identities, function: Option<&str>) -> Option<String> {
    match (identities.mode, function) {
        (IdentityMode::Off, None) => None,
        (IdentityMode::Off, Some(_)) => Some(
            "proxy.identity is \"off\": credentials are ignored, every request is anonymous"
                .into(),
        ),
        (IdentityMode::Optional, None) => None,
        (IdentityMode::Required, None) => Some(
            "proxy.identity is \"required\": this holds for a request with a function's credentials; without them it gets 407 identity-required".into(),
        ),
        (_, Some(name)) if identities.knows(name) => Some(format!(
            "as function \"{name}\", with one of its tokens (a wrong token gets 407 identity-invalid)"
        )),
        (_, Some(name)) => Some(format!(
            "function \"{name}\" has no token in force (no productive [[functions]] entry with a token_file that loads): its credentials get 407 identity-invalid"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn config() -> Config {
        let src = r#"
[proxy]
http_ports = [80, 8080]
[dns]
overrides = { "internal.example.com" = "10.0.0.5" }
[allowlist]
domains = ["example.com", "*.example.org", "xn--bcher-kva.de", "internal.example.com"]
"#;
        Config::parse(Path::new("t.toml"), src).unwrap()
    }

    #[test]
    fn explains_the_subdomain_pitfall() {
        let e = explain(&config(), "www.example.com", NOW);
        assert_eq!(
            e.to_string(),
            "denied (not-allowlisted): \"example.com\" is allowlisted but does not cover subdomains; add \"www.example.com\" or \"*.example.com\""
        );
    }

    #[test]
    fn urls_pick_protocol_and_port() {
        let e = explain(&config(), "http://a.example.org:8080/x", NOW);
        assert!(e.is_allowed(), "{e}");
        assert!(e.to_string().contains("HTTP to a.example.org:8080"), "{e}");
        let e = explain(&config(), "https://a.example.org:8443/", NOW);
        assert!(
            e.to_string().starts_with("denied (port-not-allowed)"),
            "{e}"
        );
    }

    #[test]
    fn idn_input_is_compared_in_punycode() {
        assert!(explain(&config(), "bücher.de", NOW).is_allowed());
        assert!(explain(&config(), "https://bücher.de/", NOW).is_allowed());
    }

    #[test]
    fn overrides_to_private_addresses_are_denied() {
        let e = explain(&config(), "internal.example.com", NOW);
        assert!(
            e.to_string()
                .starts_with("denied (private-destination): 10.0.0.5"),
            "{e}"
        );
    }

    #[test]
    fn identity_notes() {
        let digests = crate::policy::identity::parse_token_file("0123456789abcdef\n").unwrap();
        let ids = |mode| Identities::new(mode, vec![("fn-a".into(), digests.clone())]);
        // (name, mode, function, the note starts with; "" for none)
        let cases = [
            ("optional, anonymous", IdentityMode::Optional, None, ""),
            ("off, anonymous", IdentityMode::Off, None, ""),
            (
                "required, anonymous",
                IdentityMode::Required,
                None,
                "proxy.identity is \"required\"",
            ),
            (
                "required, known",
                IdentityMode::Required,
                Some("fn-a"),
                "as function \"fn-a\"",
            ),
            (
                "optional, unknown",
                IdentityMode::Optional,
                Some("fn-b"),
                "function \"fn-b\" has no token",
            ),
            (
                "off, a function",
                IdentityMode::Off,
                Some("fn-a"),
                "proxy.identity is \"off\"",
            ),
        ];
        for (name, mode, function, want) in cases {
            let note = identity_note(&ids(mode), function).unwrap_or_default();
            assert!(
                note.starts_with(want) && (want.is_empty() == note.is_empty()),
                "{name}: {note}"
            );
        }
    }

    #[test]
    fn non_canonical_ips_are_invalid_targets() {
        let e = explain(&config(), "0x7f.1:443", NOW);
        assert!(e.to_string().starts_with("denied (invalid-target)"), "{e}");
    }
}
