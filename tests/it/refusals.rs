//! Every way egressd refuses a request, as one table: what is sent, the status, the
//! `X-Egress-Denied` / `X-Egress-Error` header, the status line (code and explanation travel in
//! the reason phrase, which is all most clients show of a failed CONNECT) and the counter it
//! moves. Cases that need a different world (a closed port, a dead name server, no private
//! ranges, egressd's own port) name their [`Setup`]; each setup is one egressd for the table.

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `egressd_requests_total` series for one protocol, decision and reason.
macro_rules! requests {
    ($protocol:literal, $decision:literal, $reason:literal) => {
        concat!(
            "egressd_requests_total{protocol=\"",
            $protocol,
            "\",decision=\"",
            $decision,
            "\",reason=\"",
            $reason,
            "\"}"
        )
    };
}

/// The `egressd_upstream_errors_total` series for one kind.
macro_rules! upstream_errors {
    ($kind:literal) => {
        concat!("egressd_upstream_errors_total{kind=\"", $kind, "\"}")
    };
}

/// The egressd a case is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// [`api_proxy`] on a live origin, also allowing `example.test` and the IP `127.0.0.1`;
    /// `other.test` and `www.example.test` resolve to loopback but are not allowed.
    Api,
    /// `api.test` allowed on a port (open for both protocols) where nothing listens.
    ClosedPort,
    /// `nowhere.test` allowed, and a name server that never answers.
    DeadDns,
    /// No private range open: allowed names and IPs that land on loopback or link-local.
    StrictPrivate,
    /// egressd whose own proxy port is also an allowed destination, by IP and by name.
    OwnListener,
    /// [`Setup::Api`]'s allowlist with `proxy.identity = "required"` and one function, `fn-a`,
    /// whose token is [`FN_A_TOKEN`].
    Identity,
}

const FN_A_TOKEN: &str = "fn-a-token-0123456789abcdef";

/// `Proxy-Authorization: Basic` of `user_token`, as a header line.
fn proxy_authorization(user_token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(user_token)
    )
}

/// How a case reaches the proxy.
enum Send {
    /// These bytes on a new connection; one response is read.
    Raw(String),
    /// `curl -i -x <proxy> <url>`: the response as curl prints it.
    Curl(String),
    /// `curl -v -p -x <proxy> <url>`: curl asks for a CONNECT tunnel; the proxy's answer is
    /// read from curl's verbose log, which never shows a refused CONNECT's body.
    CurlTunnel(String),
    /// A CONNECT to `to` (granted), then `request` inside the tunnel.
    InTunnel { to: String, request: String },
}

struct Refusal {
    name: &'static str,
    on: Setup,
    send: Send,
    status: u16,
    /// The header that names the refusal, and its value.
    header: (&'static str, &'static str),
    /// How the response starts; ending in `\r\n`, it is the whole status line.
    status_line: String,
    /// Series that each go up by exactly one.
    counted: &'static [&'static str],
}

/// The ports the cases name.
struct Ports {
    origin: u16,
    closed: u16,
    own: u16,
}

fn cases(ports: &Ports) -> Vec<Refusal> {
    use Send::*;
    use Setup::*;
    let Ports {
        origin: p,
        closed,
        own,
    } = *ports;
    let denied = "x-egress-denied";
    let error = "x-egress-error";
    let not_canonical = |host: &str| {
        format!(
            "HTTP/1.1 403 invalid-target: \"{host}\" is not a canonical IPv4 address; write all four decimal parts, e.g. \"127.0.0.1\"\r\n"
        )
    };
    let bad_request = |why: &str| format!("HTTP/1.1 400 bad-request: {why}\r\n");
    let in_tunnel = |request: String| InTunnel {
        to: format!("api.test:{p}"),
        request,
    };
    let private = |ip: &str, range: &str| {
        format!(
            "HTTP/1.1 403 private-destination: {ip} is in the {range} range; egressd does not connect to internal addresses unless proxy.allow_private_cidrs covers them\r\n"
        )
    };
    let own_listener = format!(
        "HTTP/1.1 403 private-destination: 127.0.0.1:{own} is egressd's own listener; requests may not loop through the proxy\r\n"
    );
    vec![
        // The allowlist.
        Refusal {
            name: "a host not on the allowlist, plain HTTP (curl)",
            on: Api,
            send: Curl(format!("http://other.test:{p}/")),
            status: 403,
            header: (denied, "not-allowlisted"),
            status_line: "HTTP/1.1 403 not-allowlisted: \"other.test\" is not on the allowlist; add \"other.test\"\r\n".into(),
            counted: &[requests!("http", "denied", "not-allowlisted")],
        },
        Refusal {
            name: "a host not on the allowlist, CONNECT",
            on: Api,
            send: Raw("CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n".into()),
            status: 403,
            header: (denied, "not-allowlisted"),
            status_line: "HTTP/1.1 403 not-allowlisted: \"other.test\" is not on the allowlist; add \"other.test\"\r\n".into(),
            counted: &[requests!("connect", "denied", "not-allowlisted")],
        },
        Refusal {
            name: "a subdomain of an allowed name, plain HTTP (curl)",
            on: Api,
            send: Curl(format!("http://www.example.test:{p}/")),
            status: 403,
            header: (denied, "not-allowlisted"),
            status_line: "HTTP/1.1 403 not-allowlisted: \"example.test\" is allowlisted but does not cover subdomains; add \"www.example.test\" or \"*.example.test\"\r\n".into(),
            counted: &[requests!("http", "denied", "not-allowlisted")],
        },
        Refusal {
            name: "a subdomain of an allowed name, CONNECT",
            on: Api,
            send: Raw("CONNECT www.api.test:443 HTTP/1.1\r\n\r\n".into()),
            status: 403,
            header: (denied, "not-allowlisted"),
            status_line: "HTTP/1.1 403 not-allowlisted: \"api.test\" is allowlisted but does not cover subdomains; add \"www.api.test\" or \"*.api.test\"\r\n".into(),
            counted: &[requests!("connect", "denied", "not-allowlisted")],
        },
        // Ports.
        Refusal {
            name: "CONNECT to a port not open for CONNECT",
            on: Api,
            send: Raw("CONNECT api.test:25 HTTP/1.1\r\n\r\n".into()),
            status: 403,
            header: (denied, "port-not-allowed"),
            status_line: "HTTP/1.1 403 port-not-allowed: port 25 is not open for connect requests (allowed: [443]); add it to proxy.connect_ports\r\n".into(),
            counted: &[requests!("connect", "denied", "port-not-allowed")],
        },
        Refusal {
            name: "plain HTTP to a port open for CONNECT only (curl)",
            on: Api,
            send: Curl("http://api.test:443/echo".into()),
            status: 403,
            header: (denied, "port-not-allowed"),
            status_line: format!("HTTP/1.1 403 port-not-allowed: port 443 is not open for http requests (allowed: [{p}]); add it to proxy.http_ports\r\n"),
            counted: &[requests!("http", "denied", "port-not-allowed")],
        },
        Refusal {
            name: "a tunnel to a port open for neither (curl -p)",
            on: Api,
            send: CurlTunnel("http://api.test:8/".into()),
            status: 403,
            header: (denied, "port-not-allowed"),
            status_line: "HTTP/1.1 403 port-not-allowed: port 8 is not open for connect requests (allowed: [443]); add it to proxy.connect_ports\r\n".into(),
            counted: &[requests!("connect", "denied", "port-not-allowed")],
        },
        // IP literals only in canonical form, even when the address is allowed.
        Refusal {
            name: "IPv4 shorthand 127.1, plain HTTP",
            on: Api,
            send: Raw(format!("GET http://127.1:{p}/ HTTP/1.1\r\n\r\n")),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("127.1"),
            counted: &[requests!("http", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 shorthand 127.1, CONNECT",
            on: Api,
            send: Raw("CONNECT 127.1:443 HTTP/1.1\r\nHost: 127.1:443\r\n\r\n".into()),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("127.1"),
            counted: &[requests!("connect", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 as one decimal number, plain HTTP",
            on: Api,
            send: Raw(format!("GET http://2130706433:{p}/ HTTP/1.1\r\n\r\n")),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("2130706433"),
            counted: &[requests!("http", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 as one decimal number, CONNECT",
            on: Api,
            send: Raw("CONNECT 2130706433:443 HTTP/1.1\r\nHost: 2130706433:443\r\n\r\n".into()),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("2130706433"),
            counted: &[requests!("connect", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 with a hex part, plain HTTP",
            on: Api,
            send: Raw(format!("GET http://0x7f.1:{p}/ HTTP/1.1\r\n\r\n")),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("0x7f.1"),
            counted: &[requests!("http", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 with a hex part, CONNECT",
            on: Api,
            send: Raw("CONNECT 0x7f.1:443 HTTP/1.1\r\nHost: 0x7f.1:443\r\n\r\n".into()),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("0x7f.1"),
            counted: &[requests!("connect", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 with an octal part, plain HTTP",
            on: Api,
            send: Raw(format!("GET http://0177.0.0.1:{p}/ HTTP/1.1\r\n\r\n")),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("0177.0.0.1"),
            counted: &[requests!("http", "denied", "invalid-target")],
        },
        Refusal {
            name: "IPv4 with an octal part, CONNECT",
            on: Api,
            send: Raw("CONNECT 0177.0.0.1:443 HTTP/1.1\r\nHost: 0177.0.0.1:443\r\n\r\n".into()),
            status: 403,
            header: (denied, "invalid-target"),
            status_line: not_canonical("0177.0.0.1"),
            counted: &[requests!("connect", "denied", "invalid-target")],
        },
        // Requests egressd cannot forward as written.
        Refusal {
            name: "origin-form request",
            on: Api,
            send: Raw("GET / HTTP/1.1\r\nHost: api.test\r\n\r\n".into()),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("egressd is a forward proxy: send absolute-form requests (set HTTP_PROXY), or CONNECT for https"),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "https scheme in absolute form",
            on: Api,
            send: Raw(format!("GET https://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n")),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("scheme \"https\" cannot be forwarded; only http:// requests are forwarded, use CONNECT (HTTPS_PROXY) for https"),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "Host header names another host",
            on: Api,
            send: Raw(format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request(&format!("the Host header names \"evil.test\" but the request target names \"api.test:{p}\"")),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "Host header names another port",
            on: Api,
            send: Raw(format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test\r\n\r\n")),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request(&format!("the Host header names \"api.test\" but the request target names \"api.test:{p}\"")),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "two Host headers",
            on: Api,
            send: Raw(format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nHost: api.test:{p}\r\n\r\n")),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("more than one Host header"),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "user information in the URL",
            on: Api,
            send: Raw(format!("GET http://user:pw@api.test:{p}/ HTTP/1.1\r\n\r\n")),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("user information in the URL is not allowed"),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "port out of range",
            on: Api,
            send: Raw("GET http://api.test:99999/ HTTP/1.1\r\n\r\n".into()),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("\"99999\" is not a valid port"),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "port that is not a number",
            on: Api,
            send: Raw("GET http://api.test:80x/ HTTP/1.1\r\n\r\n".into()),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("\"80x\" is not a valid port"),
            counted: &[requests!("http", "error", "bad-request")],
        },
        Refusal {
            name: "CONNECT without a port",
            on: Api,
            send: Raw("CONNECT api.test HTTP/1.1\r\nHost: api.test\r\n\r\n".into()),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("the target has no port; CONNECT needs host:port"),
            counted: &[requests!("connect", "error", "bad-request")],
        },
        Refusal {
            name: "CONNECT with user information",
            on: Api,
            send: Raw("CONNECT user@api.test:443 HTTP/1.1\r\n\r\n".into()),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("user information in the target is not allowed"),
            counted: &[requests!("connect", "error", "bad-request")],
        },
        Refusal {
            name: "CONNECT in absolute form",
            on: Api,
            send: Raw("CONNECT http://api.test:443/ HTTP/1.1\r\n\r\n".into()),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("CONNECT needs authority-form host:port, not http://api.test:443/"),
            counted: &[requests!("connect", "error", "bad-request")],
        },
        Refusal {
            name: "a request that already passed through egressd",
            on: Api,
            send: Raw(format!("GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nVia: 1.1 egressd\r\n\r\n")),
            status: 508,
            header: (error, "loop"),
            status_line: "HTTP/1.1 508 loop: egressd: this request has already passed through egressd (Via); refusing to loop\r\n".into(),
            counted: &[requests!("http", "error", "loop")],
        },
        // A tunnel to an HTTP port carries requests to its own host only.
        Refusal {
            name: "in an HTTP tunnel, a Host header for another host",
            on: Api,
            send: in_tunnel(format!("GET /echo HTTP/1.1\r\nHost: other.test:{p}\r\n\r\n")),
            status: 403,
            header: (denied, "tunnel-host-mismatch"),
            status_line: format!("HTTP/1.1 403 tunnel-host-mismatch: the Host header names \"other.test:{p}\" inside a tunnel to \"api.test:{p}\"; a tunnel carries requests to its own host only\r\n"),
            counted: &[requests!("http", "denied", "tunnel-host-mismatch")],
        },
        Refusal {
            name: "in an HTTP tunnel, an absolute-form target for another host",
            on: Api,
            send: in_tunnel(format!("GET http://other.test:{p}/echo HTTP/1.1\r\nHost: api.test:{p}\r\n\r\n")),
            status: 403,
            header: (denied, "tunnel-host-mismatch"),
            status_line: format!("HTTP/1.1 403 tunnel-host-mismatch: the request names \"http://other.test:{p}/echo\" inside a tunnel to \"api.test:{p}\"; a tunnel carries requests to its own host only\r\n"),
            counted: &[requests!("http", "denied", "tunnel-host-mismatch")],
        },
        Refusal {
            name: "in an HTTP tunnel, a Host header for another port",
            on: Api,
            send: in_tunnel("GET /echo HTTP/1.1\r\nHost: api.test\r\n\r\n".into()),
            status: 403,
            header: (denied, "tunnel-host-mismatch"),
            status_line: format!("HTTP/1.1 403 tunnel-host-mismatch: the Host header names \"api.test\" inside a tunnel to \"api.test:{p}\"; a tunnel carries requests to its own host only\r\n"),
            counted: &[requests!("http", "denied", "tunnel-host-mismatch")],
        },
        // The upstream cannot be reached.
        Refusal {
            name: "nothing listening on the port, plain HTTP (curl)",
            on: ClosedPort,
            send: Curl(format!("http://api.test:{closed}/")),
            status: 502,
            header: (error, "connect-refused"),
            status_line: format!("HTTP/1.1 502 connect-refused: egressd could not reach http://api.test:{closed}/: api.test:{closed}: connection refused by 127.0.0.1:{closed}\r\n"),
            counted: &[requests!("http", "error", "connect-refused"), upstream_errors!("connect-refused")],
        },
        Refusal {
            name: "nothing listening on the port, CONNECT",
            on: ClosedPort,
            send: Raw(format!("CONNECT api.test:{closed} HTTP/1.1\r\n\r\n")),
            status: 502,
            header: (error, "connect-refused"),
            status_line: format!("HTTP/1.1 502 connect-refused: egressd could not reach api.test:{closed}: api.test:{closed}: connection refused by 127.0.0.1:{closed}\r\n"),
            counted: &[requests!("connect", "error", "connect-refused"), upstream_errors!("connect-refused")],
        },
        // How the lookup fails (timeout or error) depends on the host; that it fails does not.
        Refusal {
            name: "a name the resolver cannot look up, plain HTTP (curl)",
            on: DeadDns,
            send: Curl("http://nowhere.test/".into()),
            status: 502,
            header: (error, "dns"),
            status_line: "HTTP/1.1 502 dns: egressd could not reach http://nowhere.test/: DNS lookup for nowhere.test ".into(),
            counted: &[requests!("http", "error", "dns"), upstream_errors!("dns")],
        },
        Refusal {
            name: "a name the resolver cannot look up, CONNECT",
            on: DeadDns,
            send: Raw("CONNECT nowhere.test:443 HTTP/1.1\r\n\r\n".into()),
            status: 502,
            header: (error, "dns"),
            status_line: "HTTP/1.1 502 dns: egressd could not reach nowhere.test:443: DNS lookup for nowhere.test ".into(),
            counted: &[requests!("connect", "error", "dns"), upstream_errors!("dns")],
        },
        // Private destinations, even when allowlisted.
        Refusal {
            name: "an allowed name on loopback (curl)",
            on: StrictPrivate,
            send: Curl(format!("http://api.test:{p}/")),
            status: 403,
            header: (denied, "private-destination"),
            status_line: private("127.0.0.1", "loopback 127.0.0.0/8"),
            counted: &[requests!("http", "denied", "private-destination")],
        },
        Refusal {
            name: "an allowed name on the link-local metadata address (curl)",
            on: StrictPrivate,
            send: Curl("http://metadata.test/latest/meta-data/".into()),
            status: 403,
            header: (denied, "private-destination"),
            status_line: private("169.254.169.254", "link-local 169.254.0.0/16"),
            counted: &[requests!("http", "denied", "private-destination")],
        },
        Refusal {
            name: "an allowed loopback IP literal (curl)",
            on: StrictPrivate,
            send: Curl(format!("http://127.0.0.1:{p}/")),
            status: 403,
            header: (denied, "private-destination"),
            status_line: private("127.0.0.1", "loopback 127.0.0.0/8"),
            counted: &[requests!("http", "denied", "private-destination")],
        },
        Refusal {
            name: "an allowed name on the link-local metadata address, CONNECT",
            on: StrictPrivate,
            send: Raw("CONNECT metadata.test:443 HTTP/1.1\r\n\r\n".into()),
            status: 403,
            header: (denied, "private-destination"),
            status_line: private("169.254.169.254", "link-local 169.254.0.0/16"),
            counted: &[requests!("connect", "denied", "private-destination")],
        },
        // egressd itself, whatever the allowlist says.
        Refusal {
            name: "egressd's own listener by IP (curl)",
            on: OwnListener,
            send: Curl(format!("http://127.0.0.1:{own}/")),
            status: 403,
            header: (denied, "private-destination"),
            status_line: own_listener.clone(),
            counted: &[requests!("http", "denied", "private-destination")],
        },
        Refusal {
            name: "egressd's own listener by name (curl)",
            on: OwnListener,
            send: Curl(format!("http://self.test:{own}/")),
            status: 403,
            header: (denied, "private-destination"),
            status_line: own_listener.clone(),
            counted: &[requests!("http", "denied", "private-destination")],
        },
        Refusal {
            name: "egressd's own listener by name, CONNECT",
            on: OwnListener,
            send: Raw(format!("CONNECT self.test:{own} HTTP/1.1\r\n\r\n")),
            status: 403,
            header: (denied, "private-destination"),
            status_line: own_listener,
            counted: &[requests!("connect", "denied", "private-destination")],
        },
        // Function identity (`proxy.identity = "required"`).
        Refusal {
            name: "no credentials where they are required (curl)",
            on: Identity,
            send: Curl(format!("http://api.test:{p}/")),
            status: 407,
            header: (denied, "identity-required"),
            status_line: "HTTP/1.1 407 identity-required: proxy.identity is \"required\": put the function's credentials in the proxy URL, HTTPS_PROXY=http://FUNCTION:TOKEN@HOST:PORT\r\n".into(),
            counted: &[
                requests!("http", "denied", "identity-required"),
                "egressd_identity_failures_total{reason=\"missing\"}",
            ],
        },
        Refusal {
            name: "a wrong token, CONNECT",
            on: Identity,
            send: Raw(format!(
                "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n{}\r\n",
                proxy_authorization("fn-a:fn-a-token-wrong-0123456789")
            )),
            status: 407,
            header: (denied, "identity-invalid"),
            status_line: "HTTP/1.1 407 identity-invalid: unknown function or wrong token\r\n".into(),
            counted: &[
                requests!("connect", "denied", "identity-invalid"),
                "egressd_identity_failures_total{reason=\"invalid\"}",
            ],
        },
        Refusal {
            name: "an unknown function: the same answer as a wrong token",
            on: Identity,
            send: Raw(format!(
                "GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n{}\r\n",
                proxy_authorization(&format!("fn-z:{FN_A_TOKEN}"))
            )),
            status: 407,
            header: (denied, "identity-invalid"),
            status_line: "HTTP/1.1 407 identity-invalid: unknown function or wrong token\r\n".into(),
            counted: &[requests!("http", "denied", "identity-invalid")],
        },
        Refusal {
            name: "Bearer credentials",
            on: Identity,
            send: Raw(format!(
                "GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\nProxy-Authorization: Bearer {FN_A_TOKEN}\r\n\r\n"
            )),
            status: 407,
            header: (denied, "identity-invalid"),
            status_line: "HTTP/1.1 407 identity-invalid: only the Basic scheme is accepted; ".into(),
            counted: &[
                requests!("http", "denied", "identity-invalid"),
                "egressd_identity_failures_total{reason=\"malformed\"}",
            ],
        },
        Refusal {
            name: "two Proxy-Authorization headers",
            on: Identity,
            send: Raw(format!(
                "GET http://api.test:{p}/ HTTP/1.1\r\nHost: api.test:{p}\r\n{auth}{auth}\r\n",
                auth = proxy_authorization(&format!("fn-a:{FN_A_TOKEN}"))
            )),
            status: 400,
            header: (error, "bad-request"),
            status_line: bad_request("more than one Proxy-Authorization header"),
            counted: &[
                requests!("http", "error", "bad-request"),
                "egressd_identity_failures_total{reason=\"duplicate\"}",
            ],
        },
    ]
}

/// One egressd per [`Setup`].
struct Proxies {
    api: Egressd,
    closed_port: Egressd,
    dead_dns: Egressd,
    strict_private: Egressd,
    own_listener: Egressd,
    identity: Egressd,
    /// Holds [`Setup::Identity`]'s token file.
    _tokens: tempfile::TempDir,
}

impl Proxies {
    /// `closed` is the port [`Setup::ClosedPort`] allows, `dead_dns` the port of its name
    /// server; the caller holds both closed for as long as the proxies run.
    async fn start(origin: &Origin, closed: u16, dead_dns: u16) -> Proxies {
        let tokens = tempfile::tempdir().unwrap();
        let token_file = tokens.path().join("fn-a.token");
        std::fs::write(&token_file, FN_A_TOKEN).unwrap();
        Proxies {
            identity: api_proxy(origin)
                .proxy("identity = \"required\"")
                .table(&format!(
                    "[[functions]]\nname = \"fn-a\"\nstate = \"productive\"\nurl = \"http://fn-a.test/\"\ntoken_file = {:?}\n",
                    token_file.display().to_string()
                ))
                .start(),
            _tokens: tokens,
            api: api_proxy(origin)
                .allow("127.0.0.1")
                .allow("example.test")
                .dns("www.example.test", "127.0.0.1")
                .dns("other.test", "127.0.0.1")
                .start(),
            closed_port: egressd()
                .allow_local("api.test")
                .ports(&[closed], &[closed])
                .start(),
            dead_dns: egressd()
                .allow("nowhere.test")
                .ports(&[443], &[80])
                .dns_line(&format!("servers = [\"127.0.0.1:{dead_dns}\"]"))
                .dns_line("timeout = \"1s\"")
                .start(),
            strict_private: egressd()
                .strict_private()
                .dns("api.test", "127.0.0.1")
                .dns("metadata.test", "169.254.169.254")
                .allow("api.test")
                .allow("metadata.test")
                .allow("127.0.0.1")
                .ports(&[443], &[origin.port(), 80])
                .start(),
            own_listener: own_listener_proxy().await,
        }
    }

    fn get(&self, setup: Setup) -> &Egressd {
        match setup {
            Setup::Api => &self.api,
            Setup::ClosedPort => &self.closed_port,
            Setup::DeadDns => &self.dead_dns,
            Setup::StrictPrivate => &self.strict_private,
            Setup::OwnListener => &self.own_listener,
            Setup::Identity => &self.identity,
        }
    }
}

/// egressd for [`Setup::OwnListener`]: its proxy port is open for both protocols, and
/// `self.test` and `127.0.0.1` are allowed. It listens on a port of its own choosing (one
/// picked for it and freed could be taken by a parallel test first), so the port is known
/// only once it runs, and is opened by a reload.
async fn own_listener_proxy() -> Egressd {
    let proxy = egressd()
        .allow("127.0.0.1")
        .allow_local("self.test")
        .start();
    let own = proxy.proxy.port();
    let generation = proxy.generation().await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let opened = format!("[proxy]\nconnect_ports = [{own}]\nhttp_ports = [{own}]\n");
    assert!(!text.contains("_ports = "), "ports set twice: {text}");
    write_file(
        &proxy.config_path,
        &text.replacen("[proxy]\n", &opened, 1),
        Write::Rename,
    );
    proxy.wait_generation_above(generation).await;
    proxy
}

/// Sends a case's request; returns the response as the client saw it, and whether its body
/// is part of that (curl never shows a refused CONNECT's body), or what went wrong instead.
async fn send(proxy: &Egressd, send: &Send) -> Result<(String, bool), String> {
    match send {
        Send::Raw(request) => Ok((one_response(proxy.proxy, request.as_bytes()).await, true)),
        Send::Curl(url) => {
            let (_, out, err) = curl(&["-i", "-x", &proxy.proxy_url(), url], &[]).await;
            if out.is_empty() {
                return Err(format!("curl {url} printed nothing: {err}"));
            }
            Ok((out, true))
        }
        Send::CurlTunnel(url) => {
            let (code, _, err) = curl(&["-v", "-p", "-x", &proxy.proxy_url(), url], &[]).await;
            if code == 0 {
                return Err(format!("curl -p {url} succeeded: {err}"));
            }
            let head: String = err
                .lines()
                .filter_map(|l| l.strip_prefix("< "))
                .map(|l| format!("{l}\r\n"))
                .collect();
            Ok((head, false))
        }
        Send::InTunnel { to, request } => {
            let mut tunnel = TcpStream::connect(proxy.proxy).await.unwrap();
            let connect = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n\r\n");
            tunnel.write_all(connect.as_bytes()).await.unwrap();
            let head = read_head(&mut tunnel).await;
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("the tunnel to {to} was not granted: {head:?}"));
            }
            Ok((exchange(&mut tunnel, request.as_bytes()).await, true))
        }
    }
}

/// Sends `case` to `proxy`; returns everything about the answer that differs from the case,
/// empty when nothing does.
async fn check(proxy: &Egressd, case: &Refusal) -> Vec<String> {
    let before = proxy.metrics().await;
    let (response, with_body) = match send(proxy, &case.send).await {
        Ok(sent) => sent,
        Err(why) => return vec![why],
    };
    let mut wrong = Vec::new();
    if status(&response) != case.status {
        wrong.push(format!("status {}, not {}", status(&response), case.status));
    }
    let (name, value) = case.header;
    if header(&response, name) != Some(value) {
        wrong.push(format!(
            "{name}: {:?}, not {value:?}",
            header(&response, name)
        ));
    }
    if !response.starts_with(&case.status_line) {
        wrong.push(format!("does not start with {:?}", case.status_line));
    }
    if with_body {
        // The body has the whole explanation, which a status line may have to cut.
        let phrase = case.status_line.trim_end_matches("\r\n");
        let (_, explanation) = phrase.split_once(": ").unwrap();
        if !body(&response).contains(explanation) {
            wrong.push(format!("the body lacks {explanation:?}"));
        }
    }
    let after = proxy.metrics().await;
    for series in case.counted {
        let moved = metric(&after, series) - metric(&before, series);
        if moved != 1.0 {
            wrong.push(format!("{series} moved by {moved}, not 1"));
        }
    }
    if !wrong.is_empty() {
        wrong.push(format!("response: {response:?}"));
    }
    wrong
}

#[tokio::test]
async fn every_refusal_has_its_status_header_reason_and_counter() {
    let origin = origin().await;
    // Held until the end: the ports stay closed for as long as the cases run.
    let (closed, dead_dns) = (closed_port(), closed_port());
    let proxies = Proxies::start(&origin, *closed, *dead_dns).await;
    let ports = Ports {
        origin: origin.port(),
        closed: *closed,
        own: proxies.own_listener.proxy.port(),
    };
    let cases = cases(&ports);
    let mut failures = Vec::new();
    for case in &cases {
        let wrong = check(proxies.get(case.on), case).await;
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", case.name, wrong.join("; ")));
        }
    }
    assert_no_failures(&failures, cases.len());
}
