//! The redirect audit: follows a URL's redirect chain the way `curl -L` would and says, for
//! every hop, what the allowlist decides, then which entries to add so the whole chain works.
//!
//! Each hop is fetched through an egress client made by [`EgressClient::for_audit`], with the
//! resolver, private-range checks, port rules and mTLS origination in force; only the
//! allowlist is set aside, for that one hop's host, because finding out what it would have
//! to allow is the point. A hop whose verdict is a denial no entry can fix (a private
//! address, a port) ends the audit.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, StatusCode, Uri};
use serde::Serialize;

use super::explain::explain_policy;
use crate::egress::EgressClient;
use crate::policy::url::{resolve_location, target_of};
use crate::policy::{DenyReason, Policy};
use crate::util::time::format_utc;

/// Redirects followed at most, as `curl -L --max-redirs 10`.
pub const MAX_REDIRECTS: usize = 10;

/// Dials hops for audits.
pub struct Auditor {
    /// A live egress client: its resolver, own addresses and client identities.
    pub egress: Arc<EgressClient>,
}

/// One request of the chain.
#[derive(Debug, Serialize)]
pub struct Hop {
    pub url: String,
    pub allowed: bool,
    /// The denial code when not allowed.
    pub code: Option<&'static str>,
    /// `allowed (rule "*.example.com", line 12)`, `denied: not-allowlisted` or
    /// `pending-activation until 2026-11-29T10:05:00Z`.
    pub verdict: String,
    /// The decision in words, as `egressd explain` says it, with the fix.
    pub detail: String,
    pub status: Option<u16>,
    /// The resolved `Location` of a redirect.
    pub location: Option<String>,
    /// Why the hop could not be fetched.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub hops: Vec<Hop>,
    /// Entries that would let the whole chain through, in chain order.
    pub add: Vec<String>,
    /// Every hop is allowed now (entries pending activation count as not yet).
    pub allowed: bool,
    /// Why the audit stopped before the end of the chain, if it did.
    pub stopped: Option<String>,
}

impl Auditor {
    pub async fn trace(&self, policy: &Policy, url: &str) -> Report {
        let mut report = Report {
            hops: vec![],
            add: vec![],
            allowed: true,
            stopped: None,
        };
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let explanation = explain_policy(policy, &current, SystemTime::now());
            let code = explanation.denial().map(|d| d.reason);
            let mut hop = Hop {
                url: current.clone(),
                allowed: explanation.is_allowed(),
                code: code.map(|c| c.code()),
                verdict: verdict(policy, &current, code),
                detail: explanation.to_string(),
                status: None,
                location: None,
                error: None,
            };
            report.allowed &= hop.allowed;
            match code {
                None | Some(DenyReason::PendingActivation) => {}
                Some(DenyReason::NotAllowlisted) => {
                    if let Some(entry) = entry_for(&current) {
                        if !report.add.contains(&entry) {
                            report.add.push(entry);
                        }
                    }
                }
                Some(other) => {
                    report.stopped = Some(format!(
                        "{}: no allowlist entry can fix this hop",
                        other.code()
                    ));
                    report.hops.push(hop);
                    return report;
                }
            }
            let fetched = self.fetch(policy, &current).await;
            let next = match fetched {
                Ok((status, location)) => {
                    hop.status = Some(status.as_u16());
                    let next = location
                        .filter(|_| status.is_redirection())
                        .map(|l| resolve_location(&current, &l));
                    hop.location = next.clone();
                    next
                }
                Err(err) => {
                    hop.error = Some(err.clone());
                    report.stopped = Some(err);
                    None
                }
            };
            report.hops.push(hop);
            match next {
                Some(next) => current = next,
                None => return report,
            }
        }
        report.stopped = Some(format!("more than {MAX_REDIRECTS} redirects"));
        report
    }

    /// HEAD `url` (GET when the server answers 405) with only its own host allowlisted; the
    /// status and `Location`.
    async fn fetch(
        &self,
        policy: &Policy,
        url: &str,
    ) -> Result<(StatusCode, Option<String>), String> {
        let (target, protocol) = target_of(url).map_err(|e| e.to_string())?;
        let client = self.egress.for_audit(policy, &target.host);
        let permit = client
            .decide(&target, protocol)
            .map_err(|d| d.to_string())?;
        let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        for method in [Method::HEAD, Method::GET] {
            let request = Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(http::header::USER_AGENT, "egressd-trace")
                .body(crate::util::body::empty())
                .map_err(|e| e.to_string())?;
            let response = client
                .send(&permit, request)
                .await
                .map_err(|e| e.to_string())?;
            if method == Method::HEAD && response.status() == StatusCode::METHOD_NOT_ALLOWED {
                continue;
            }
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Ok((response.status(), location));
        }
        unreachable!("GET always returns")
    }
}

/// The exact entry that allows `url`'s host.
fn entry_for(url: &str) -> Option<String> {
    let (target, _) = target_of(url).ok()?;
    Some(target.host.to_string())
}

/// The one-line verdict of a hop: the rule that allows it, the time a pending entry becomes
/// active, or the denial code.
fn verdict(policy: &Policy, url: &str, denied: Option<DenyReason>) -> String {
    let rule = target_of(url)
        .ok()
        .and_then(|(target, _)| policy.allowlist.find(&target.host));
    match (denied, rule) {
        (None, Some(id)) => {
            let pattern = policy.allowlist.pattern(id);
            match policy.allowlist.line(id) {
                Some(line) => format!("allowed (rule \"{pattern}\", line {line})"),
                None => format!("allowed (rule \"{pattern}\")"),
            }
        }
        (None, None) => "allowed".into(),
        (Some(DenyReason::PendingActivation), Some(id)) => format!(
            "pending-activation until {}",
            format_utc(policy.allowlist.active_at(id))
        ),
        (Some(reason), _) => format!("denied: {}", reason.code()),
    }
}
