//! The access record: one log line and the request metrics per request or tunnel, and the
//! responses egressd makes up itself when it refuses or fails one.
//!
//! A record is emitted when the exchange is over: at once for refusals, at the end of the
//! response body for forwarded requests, at tunnel close for CONNECT. Every made-up response
//! carries its reason three times — `X-Egress-Denied`/`X-Egress-Error`, the text body, and
//! the reason phrase of the status line, which is all most clients show of a failed CONNECT.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, SizeHint};
use hyper::ext::ReasonPhrase;

use crate::egress::tunnel::{TunnelEnd, TunnelStats};
use crate::egress::{authority_text, Cause, EgressError, ErrorKind, Permit, SendError};
use crate::metrics::{Metrics, Outcome};
use crate::policy::denials::{Refusal as DenialSeen, Seen};
use crate::policy::identity::{Caller, ANONYMOUS};
use crate::policy::{Denial, Protocol, Target};
use crate::util::body::{text_response, BoxError, HttpBody};

use super::access_line::AccessLine;

/// The longest reason phrase egressd writes; a longer explanation is cut (the body keeps all
/// of it).
const MAX_REASON_PHRASE: usize = 200;

/// `code: detail` as an HTTP reason phrase: one line of printable ASCII, bounded.
pub fn reason_phrase(code: &str, detail: &str) -> ReasonPhrase {
    let mut text = String::with_capacity(MAX_REASON_PHRASE);
    for c in code.chars().chain(": ".chars()).chain(detail.chars()) {
        if text.len() >= MAX_REASON_PHRASE {
            text.truncate(MAX_REASON_PHRASE - 3);
            text.push_str("...");
            break;
        }
        text.push(match c {
            ' '..='~' => c,
            '\t' | '\r' | '\n' => ' ',
            _ => '?',
        });
    }
    ReasonPhrase::try_from(text.into_bytes()).expect("printable ASCII is a valid reason phrase")
}

/// A response egressd makes up: `status`, the reason in `header` and in the status line
/// (`phrase_detail`), the whole `text` in the body.
fn made_up(
    status: StatusCode,
    header: (&'static str, &'static str),
    phrase_detail: &str,
    text: String,
) -> Response<HttpBody> {
    let phrase = reason_phrase(header.1, phrase_detail);
    let mut response = text_response(status, text + "\n");
    response.extensions_mut().insert(phrase);
    response
        .headers_mut()
        .insert(header.0, HeaderValue::from_static(header.1));
    response
}

/// The access record of one request or tunnel.
pub struct AccessRecord {
    metrics: Arc<Metrics>,
    protocol: Protocol,
    client: SocketAddr,
    method: Method,
    /// The request target as received (a refcounted clone, formatted only when logged).
    raw_target: Uri,
    /// The target as the decision saw it (lower case, no trailing dot, explicit port), once
    /// parsed. Logged as `target`; `raw_target` keeps what the client typed.
    normalised: Option<Target>,
    start: Instant,
    outcome: Outcome,
    /// Set when a response body was cut; logged as the reason though the status was sent.
    cut: Option<ErrorKind>,
    /// The permit that allowed it, its rule described only when logged.
    permit: Option<Permit>,
    status: u16,
    relayed: Arc<Relayed>,
    tunnel_end: Option<TunnelEnd>,
    /// A redirect the allowlist would deny: its URL, the denial and the fix.
    redirect: Option<Box<str>>,
    /// Who sent it (`proxy.identity`).
    caller: Caller,
}

/// Bytes carried by one exchange, shared with the body wrappers that count them.
#[derive(Default)]
pub struct Relayed {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl AccessRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        protocol: Protocol,
        client: SocketAddr,
        method: &Method,
        raw_target: Uri,
    ) -> Self {
        AccessRecord {
            metrics,
            protocol,
            client,
            method: method.clone(),
            raw_target,
            normalised: None,
            start: Instant::now(),
            outcome: Outcome::Failed(ErrorKind::BadRequest),
            cut: None,
            permit: None,
            status: 0,
            relayed: Arc::default(),
            tunnel_end: None,
            redirect: None,
            caller: Caller::Anonymous,
        }
    }

    /// Who sent it, once its credentials were checked.
    pub fn set_caller(&mut self, caller: &Caller) {
        self.caller = caller.clone();
    }

    /// The target once parsed.
    pub fn set_target(&mut self, target: &Target) {
        self.normalised = Some(target.clone());
    }

    /// The permit the decision gave.
    pub fn set_permit(&mut self, permit: &Permit) {
        self.permit = Some(permit.clone());
    }

    /// Notes a redirect the allowlist would deny (see `forward`).
    pub fn set_redirect(&mut self, note: Option<Box<str>>) {
        self.redirect = note;
    }

    /// The request's URL as the decision saw it (`http://host[:port]/path`).
    pub fn logged_url(&self) -> String {
        self.logged_target()
    }

    /// The counters for the request body on its way up.
    pub fn relayed(&self) -> Arc<Relayed> {
        self.relayed.clone()
    }

    /// Puts a denial among the recent ones, with the target as decided (or as sent, when it
    /// was refused before it could be parsed) and the function that sent it.
    fn note_denial(&self, denial: &Denial) {
        let raw = &self.raw_target;
        let target: &dyn std::fmt::Display = match &self.normalised {
            Some(target) => target,
            None => raw,
        };
        self.metrics.denial(
            &DenialSeen {
                seen: Seen::Denied(denial.reason),
                fix: denial.fix.as_deref(),
                target,
                function: self.caller.function(),
                redirected_from: None,
            },
            crate::util::time::now_ms(),
        );
    }

    /// A redirect the allowlist would deny: counted among the recent denials under the
    /// entry its target needs, with the URL that redirected.
    pub fn note_denied_redirect(&self, denial: &Denial, next: &str) {
        let from = self.logged_url();
        self.metrics.denial(
            &DenialSeen {
                seen: Seen::Redirect,
                fix: denial.fix.as_deref(),
                target: &next,
                function: self.caller.function(),
                redirected_from: Some(&from),
            },
            crate::util::time::now_ms(),
        );
    }

    /// Records the outcome once, counting it at once (a tunnel's log line waits for its end,
    /// its request counter does not).
    fn settle(&mut self, outcome: Outcome, status: StatusCode) {
        self.outcome = outcome;
        self.status = status.as_u16();
        self.metrics.request(self.protocol, outcome);
        self.metrics.function_request(&self.caller, outcome);
    }

    pub fn allowed(&mut self, status: StatusCode) {
        self.settle(Outcome::Allowed, status);
    }

    /// egressd answered the request itself (the secret store's API) with `response`.
    pub fn answered(mut self, response: Response<HttpBody>) -> Response<HttpBody> {
        self.settle(Outcome::Allowed, response.status());
        if let Some(len) = response.body().size_hint().exact() {
            self.relayed.down.store(len, Ordering::Relaxed);
        }
        response
    }

    /// The tunnel was closed before its relay started: its first flight failed a check. Its
    /// line says denied with the check's reason; the `200` it got is kept as the status.
    pub fn first_flight_refused(&mut self, denial: &Denial, end: TunnelEnd) {
        self.note_denial(denial);
        self.outcome = Outcome::Denied(denial.reason);
        self.metrics.tunnel_refused(denial.reason);
        self.tunnel_end = Some(end);
    }

    pub fn tunnel_closed(&mut self, stats: TunnelStats, revoked: bool) {
        self.relayed.up.store(stats.up, Ordering::Relaxed);
        self.relayed.down.store(stats.down, Ordering::Relaxed);
        self.tunnel_end = Some(if revoked {
            TunnelEnd::Revoked
        } else {
            stats.end
        });
    }

    /// Settles a refusal and answers it, counting the body as the bytes sent down.
    fn refuse(mut self, outcome: Outcome, response: Response<HttpBody>) -> Response<HttpBody> {
        self.settle(outcome, response.status());
        if let Some(len) = response.body().size_hint().exact() {
            self.relayed.down.store(len, Ordering::Relaxed);
        }
        response
    }

    /// An error egressd reports itself: `X-Egress-Error: kind`, `kind: text` in the status
    /// line.
    fn fail(self, kind: ErrorKind, status: StatusCode, text: String) -> Response<HttpBody> {
        let response = made_up(
            status,
            ("x-egress-error", kind.as_str()),
            &text,
            text.clone(),
        );
        self.refuse(Outcome::Failed(kind), response)
    }

    /// The request already passed through egressd: forwarding it again would loop.
    pub fn loop_detected(self) -> Response<HttpBody> {
        self.fail(
            ErrorKind::Loop,
            StatusCode::LOOP_DETECTED,
            "egressd: this request has already passed through egressd (Via); refusing to loop"
                .into(),
        )
    }

    pub fn bad_request(self, message: String) -> Response<HttpBody> {
        self.fail(ErrorKind::BadRequest, StatusCode::BAD_REQUEST, message)
    }

    /// A policy denial: 403, `X-Egress-Denied`, the explanation in the status line and the
    /// body.
    pub fn denied(self, denial: Denial) -> Response<HttpBody> {
        self.denied_with(denial, StatusCode::FORBIDDEN)
    }

    /// A denial answered with `status` (407 for refused credentials).
    pub fn denied_with(self, denial: Denial, status: StatusCode) -> Response<HttpBody> {
        self.note_denial(&denial);
        let code = denial.reason.code();
        let text = format!(
            "egressd denied {} {}: {}",
            self.method, self.raw_target, denial.message
        );
        let response = made_up(status, ("x-egress-denied", code), &denial.message, text);
        self.refuse(Outcome::Denied(denial.reason), response)
    }

    /// The upstream could not be reached (or its address was refused: a denial).
    pub fn egress_error(self, err: &EgressError) -> Response<HttpBody> {
        let kind = match err.cause() {
            Cause::Denied(denial) => return self.denied(denial.clone()),
            Cause::Error(kind) => kind,
        };
        self.metrics.upstream_error(kind);
        let status = match kind {
            ErrorKind::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let text = format!("egressd could not reach {}: {err}", self.raw_target);
        self.fail(kind, status, text)
    }

    /// A sent request got no response.
    pub fn send_error(self, err: &SendError) -> Response<HttpBody> {
        let (kind, text) = match err {
            SendError::Egress(err) => return self.egress_error(err),
            SendError::Upstream(detail) => (
                ErrorKind::Upstream,
                format!("egressd: the upstream failed: {detail}"),
            ),
            SendError::ClientIdle(waited) => (
                ErrorKind::ClientTimeout,
                format!(
                    "egressd: the request body stopped for {waited:?} (proxy.idle_timeout); request abandoned"
                ),
            ),
            SendError::Timeout(waited) => (
                ErrorKind::UpstreamTimeout,
                format!(
                    "egressd: {} sent no response within {waited:?} (proxy.response_header_timeout)",
                    self.raw_target
                ),
            ),
            SendError::SecretMissing { .. } => {
                (ErrorKind::SecretMissing, format!("egressd: {err}; nothing was sent"))
            }
            SendError::SecretUnusable { .. } => {
                (ErrorKind::SecretUnusable, format!("egressd: {err}; nothing was sent"))
            }
        };
        self.metrics.upstream_error(kind);
        let status = match kind {
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            // egressd's own state, not the upstream's: retrying may help once it is fixed.
            ErrorKind::SecretMissing | ErrorKind::SecretUnusable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        self.fail(kind, status, text)
    }

    /// The target as logged: the normalised form the decision used, when there was one.
    fn logged_target(&self) -> String {
        let Some(target) = &self.normalised else {
            return self.raw_target.to_string();
        };
        match self.protocol {
            Protocol::Connect => target.to_string(),
            Protocol::Http => {
                let path = self
                    .raw_target
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                format!("http://{}{path}", authority_text(target))
            }
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let up = self.relayed.up.load(Ordering::Relaxed);
        let down = self.relayed.down.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        self.metrics.relayed(up, down);
        self.metrics
            .observe_duration(self.protocol, elapsed.as_secs_f64());
        if !tracing::enabled!(target: "egressd::access", tracing::Level::INFO) {
            return;
        }
        let rule = self
            .permit
            .as_ref()
            .map(Permit::describe_rule)
            .unwrap_or_default();
        let reason = match (self.cut, self.outcome) {
            (Some(kind), _) => kind.as_str(),
            (None, Outcome::Allowed) => "",
            (None, outcome) => outcome.reason(),
        };
        AccessLine {
            client: self.client,
            function: self.caller.name(),
            method: &self.method,
            target: &self.logged_target(),
            raw_target: &self.raw_target,
            decision: self.outcome.decision(),
            reason,
            rule: &rule,
            status: self.status,
            bytes_up: up,
            bytes_down: down,
            duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            tunnel_end: self.tunnel_end.map(TunnelEnd::as_str).unwrap_or(""),
            redirect_denied: self.redirect.as_deref().unwrap_or(""),
            detail: None,
        }
        .emit();
    }
}

/// The upstream stopped sending a response body for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; response cut")]
struct BodyIdle(Duration);

/// A response body that counts bytes down, logs the exchange when it is done or dropped, and
/// ends with an error (a cut body, for the client) when the upstream goes quiet for `idle`.
pub struct LoggedBody {
    inner: HttpBody,
    record: AccessRecord,
    idle: Duration,
    /// The idle timer, made on the first wait and re-armed (not re-made) for later ones.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `timer` is running for the current wait.
    armed: bool,
}

impl LoggedBody {
    pub fn new(inner: HttpBody, record: AccessRecord, idle: Duration) -> Self {
        LoggedBody {
            inner,
            record,
            idle,
            timer: None,
            armed: false,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(polled) => {
                this.armed = false;
                if let Some(Ok(frame)) = &polled {
                    if let Some(data) = frame.data_ref() {
                        this.record
                            .relayed
                            .down
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                Poll::Ready(polled)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if !this.armed {
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    this.armed = true;
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.armed = false;
                this.record.cut = Some(ErrorKind::UpstreamTimeout);
                this.record
                    .metrics
                    .upstream_error(ErrorKind::UpstreamTimeout);
                tracing::warn!(target = %this.record.logged_target(), ?idle, "upstream response body went idle; cut");
                Poll::Ready(Some(Err(Box::new(BodyIdle(idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection hyper closed on an unparsable request head: a line that is not HTTP/1.x, an
/// invalid header, a head over `max_header_bytes`. hyper answers these itself, with a bare
/// `400`, `414` or `431` (it offers no hook to add `X-Egress-Error`); the access log and
/// `egressd_requests_total` still see each one, with hyper's reason. (`header_read_timeout`
/// is left out: hyper reports it the same way for a keep-alive connection that was merely
/// idle between requests, which is no failed request.)
pub fn unparsable_head(metrics: &Metrics, client: SocketAddr, err: &hyper::Error) {
    let (kind, status) = if err.is_parse_too_large() {
        (ErrorKind::BadRequest, 431)
    } else if err.is_parse() {
        (ErrorKind::BadRequest, 400)
    } else {
        return;
    };
    metrics.request(Protocol::Http, Outcome::Failed(kind));
    AccessLine {
        client,
        function: ANONYMOUS,
        method: &"",
        target: &"",
        raw_target: &"",
        decision: Outcome::Failed(kind).decision(),
        reason: kind.as_str(),
        rule: "",
        status,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0.0,
        tunnel_end: "",
        redirect_denied: "",
        detail: Some(err),
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrases_are_printable_ascii_and_bounded() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "plain",
                "not-allowlisted",
                "add \"a.test\"",
                "not-allowlisted: add \"a.test\"",
            ),
            (
                "control characters become spaces",
                "bad-request",
                "a\r\nb\tc",
                "bad-request: a  b c",
            ),
            (
                "non-ASCII becomes ?",
                "bad-request",
                "caf\u{e9}",
                "bad-request: caf?",
            ),
        ];
        for (name, code, detail, want) in cases {
            assert_eq!(
                reason_phrase(code, detail).as_bytes(),
                want.as_bytes(),
                "{name}"
            );
        }
        let long = reason_phrase("x", &"y".repeat(500));
        assert_eq!(long.as_bytes().len(), MAX_REASON_PHRASE);
        assert!(long.as_bytes().ends_with(b"..."));
    }
}
