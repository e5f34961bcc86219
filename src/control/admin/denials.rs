//! `GET /v1/denials`: the recent refusals, grouped by what would fix them, in the words
//! `explain` uses, with the state of the entry that would fix each (missing, pending with
//! its activation time, active) and whether the console may add it.
//!
//! A row whose entry is active and that saw no refusal since it became active is done: it
//! is left out, and forgotten.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;

use super::Admin;
use crate::policy::allowlist::{Allowlist, Pattern};
use crate::policy::denials::{Key, Row, Seen};
use crate::policy::host::Host;
use crate::policy::DenyReason;
use crate::util::time::{format_utc, unix_ms};

/// `GET /v1/denials`.
#[derive(Serialize)]
pub(super) struct DenialsView {
    now: String,
    /// Whether the console may add entries here (the Add button).
    editable: bool,
    read_only_reason: Option<String>,
    denials: Vec<DenialView>,
}

/// One row.
#[derive(Serialize)]
struct DenialView {
    /// The allowlist entry that would fix it; `null` when no entry would.
    entry: Option<String>,
    /// `missing`, `pending` or `active` (an entry row), or `none` (no entry fixes it).
    state: &'static str,
    /// When a pending entry becomes active.
    active_at: Option<String>,
    /// Whether the console's Add applies: an entry not on the allowlist, on an editable one.
    addable: bool,
    count: u64,
    first_seen: String,
    last_seen: String,
    /// The codes seen (`not-allowlisted`, `pending-activation`, `sni-not-allowlisted`,
    /// `redirect-denied`, ...).
    reasons: Vec<&'static str>,
    /// What would fix it, in words.
    hint: String,
    examples: Vec<String>,
    functions: Vec<String>,
    redirected_from: Vec<String>,
}

/// Where the entry stands in the allowlist in force.
enum EntryState {
    Missing,
    Pending(u64),
    Active(u64),
}

/// The allowlist's patterns by rule id, built once per answer: up to a thousand rows are
/// looked up in an allowlist of any size.
fn pattern_ids(allowlist: &Allowlist) -> HashMap<&Pattern, u32> {
    allowlist
        .patterns()
        .iter()
        .enumerate()
        .map(|(id, p)| (p, id as u32))
        .collect()
}

fn entry_state(
    allowlist: &Allowlist,
    ids: &HashMap<&Pattern, u32>,
    entry: &str,
    now: u64,
) -> EntryState {
    let Ok(pattern) = Pattern::parse(entry) else {
        return EntryState::Missing;
    };
    match ids.get(&pattern) {
        None => EntryState::Missing,
        Some(&id) => match allowlist.active_at(id) {
            at if at <= now => EntryState::Active(at),
            at => EntryState::Pending(at),
        },
    }
}

/// The fix of a refusal no allowlist entry fixes, in words.
fn reason_hint(seen: Seen) -> &'static str {
    match seen {
        Seen::Denied(reason) => match reason {
            DenyReason::PortNotAllowed => "the port is not open: add it to proxy.connect_ports (HTTPS) or proxy.http_ports (plain HTTP) in the config file",
            DenyReason::PrivateDestination => "the host is (or resolves to) an internal address: egressd refuses those unless proxy.allow_private_cidrs covers them, a change in the config file",
            DenyReason::InvalidTarget => "the function asked for a host that is not a valid name, or an IP address in a non-canonical form (127.1): fix the URL in the function",
            DenyReason::TunnelHostMismatch => "a request inside an HTTP tunnel named another host than the tunnel's: send it through HTTP_PROXY, or open a tunnel to that host",
            DenyReason::MtlsOriginationRequired => "the host needs the client certificate egressd presents: send plain http:// through HTTP_PROXY, or set allow_connect in its [[mtls]] entry",
            DenyReason::InjectionRequiresOrigination => "egressd adds a secret to requests to the host: send plain http:// through HTTP_PROXY, or set allow_connect in its [[inject]] rule",
            DenyReason::SniMismatch => "the TLS ClientHello named another host than the CONNECT (proxy.connect_sni = \"match\"): connect to the host the client means",
            DenyReason::SniUnreadable => "the tunnel's TLS ClientHello could not be read as one, so its host could not be checked",
            DenyReason::IdentityRequired | DenyReason::IdentityInvalid => "the function's proxy URL carries no valid credentials: HTTPS_PROXY=http://FUNCTION:TOKEN@egressd:3128 with the token of its token_file",
            DenyReason::NotAllowlisted | DenyReason::PendingActivation | DenyReason::SniNotAllowlisted => "no allowlist entry was named for it",
        },
        Seen::Redirect => "a redirect leads where no allowlist entry can open (another port, an internal address): fix the redirect or the port and address rules",
    }
}

/// What would fix an entry row, in `explain`'s words.
fn entry_hint(allowlist: &Allowlist, entry: &str, state: &EntryState, row: &Row) -> String {
    match state {
        EntryState::Pending(at) => format!(
            "\"{entry}\" was added recently and becomes active at {} (UTC); new entries wait out proxy.activation_delay",
            format_utc(*at)
        ),
        EntryState::Active(_) => format!(
            "\"{entry}\" is on the allowlist and active, yet requests were refused after it became active: another port, or the host resolves to an internal address ({})",
            row.reasons().iter().map(|r| r.code()).collect::<Vec<_>>().join(", ")
        ),
        EntryState::Missing => {
            let base = match Host::parse(entry) {
                Ok(host) => allowlist.denial_hint(&host),
                Err(_) => format!("add \"{entry}\""),
            };
            let seen = row.reasons();
            if seen.contains(&Seen::Redirect) && !row.redirected_from.is_empty() {
                format!(
                    "a redirect from {} leads here: {base}",
                    row.redirected_from[0]
                )
            } else if seen.contains(&Seen::Denied(DenyReason::SniNotAllowlisted)) {
                format!("a TLS ClientHello in an allowed tunnel names this host: {base}")
            } else {
                base
            }
        }
    }
}

impl Admin {
    /// `GET /v1/denials?since=T` (RFC 3339 or Unix milliseconds).
    pub(super) async fn denials(&self, since: Option<&str>) -> Result<DenialsView, String> {
        let since = match since.map(str::trim).filter(|s| !s.is_empty()) {
            None => 0,
            Some(text) => parse_since(text)?,
        };
        let policy = self.reloader.snapshot().0;
        let allowlist = &policy.allowlist;
        let now = unix_ms(SystemTime::now());
        let (editable, read_only_reason) = match self.allowlist_writable() {
            Ok(()) => (true, None),
            Err(reason) => (false, Some(reason)),
        };
        let book = &self.metrics.denials;
        // With several replicas, every replica's refusals; this one's alone when the shared
        // state is away.
        let rows = match &self.shared_denials {
            Some(shared) => match shared.merged(book, since).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::debug!(error = %err, "recent denials of the other replicas unavailable");
                    book.rows(since)
                }
            },
            None => book.rows(since),
        };
        let ids = pattern_ids(allowlist);
        let mut denials = Vec::new();
        for (key, row) in rows {
            let view = match &key {
                Key::Entry(entry) => {
                    let state = entry_state(allowlist, &ids, entry, now);
                    if let EntryState::Active(at) = state {
                        if row.last_seen < at {
                            self.metrics.denials.forget(entry);
                            continue;
                        }
                    }
                    let hint = entry_hint(allowlist, entry, &state, &row);
                    let (state, active_at, addable) = match state {
                        EntryState::Missing => ("missing", None, editable),
                        EntryState::Pending(at) => ("pending", Some(format_utc(at)), false),
                        EntryState::Active(_) => ("active", None, false),
                    };
                    DenialView {
                        entry: Some(entry.clone()),
                        state,
                        active_at,
                        addable,
                        hint,
                        ..row_view(&row)
                    }
                }
                Key::Reason(seen) => DenialView {
                    hint: reason_hint(*seen).to_string(),
                    ..row_view(&row)
                },
            };
            denials.push(view);
        }
        Ok(DenialsView {
            now: format_utc(now),
            editable,
            read_only_reason,
            denials,
        })
    }
}

/// The row's counts and lists; no entry.
fn row_view(row: &Row) -> DenialView {
    let strings = |list: &[Box<str>]| list.iter().map(|s| s.to_string()).collect();
    DenialView {
        entry: None,
        state: "none",
        active_at: None,
        addable: false,
        count: row.count,
        first_seen: millis(row.first_seen),
        last_seen: millis(row.last_seen),
        reasons: row.reasons().into_iter().map(Seen::code).collect(),
        hint: String::new(),
        examples: strings(&row.examples),
        functions: strings(&row.functions),
        redirected_from: strings(&row.redirected_from),
    }
}

fn millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(crate::util::time::from_unix_ms(ms)).to_string()
}

/// `since` as Unix milliseconds: digits, or an RFC 3339 time.
fn parse_since(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .map(unix_ms)
        .map_err(|_| format!("since is an RFC 3339 time (2026-12-03T10:00:00Z) or Unix milliseconds, not {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_milliseconds_or_rfc3339() {
        assert_eq!(parse_since("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_since("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(parse_since("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn every_reason_has_words() {
        for seen in Seen::all() {
            assert!(reason_hint(seen).len() > 20, "{seen:?}");
        }
    }
}
