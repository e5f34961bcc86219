//! Function identity (`proxy.identity`, `[[functions]] token_file`): which function sent a
//! request, from the credentials in its proxy URL. Every case drives the real binary with a
//! raw `Proxy-Authorization` header, as clients send it for `http://FUNCTION:TOKEN@egressd`.

use std::path::Path;

use base64::Engine as _;

use crate::support::*;

const TOKEN: &str = "fn-a-token-0123456789abcdef";
const NEXT: &str = "fn-a-token-next-0123456789abcdef";
const OTHER: &str = "fn-b-token-0123456789abcdef";

fn basic(user_token: &[u8]) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_token)
    )
}

/// egressd allowing `api.test` for plain HTTP on its origin's port and CONNECT on its echo
/// server's, with two productive functions whose token files are in its directory.
struct World {
    /// First, so it stops before its directory goes.
    proxy: Egressd,
    origin: Origin,
    tunnel: u16,
    dir: tempfile::TempDir,
}

impl World {
    async fn start(mode: &str) -> World {
        let origin = origin().await;
        let tunnel = echo_server().await.port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fn-a.token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("fn-b.token"), format!("{OTHER}\n")).unwrap();
        let function = |name: &str| {
            format!(
                "[[functions]]\nname = \"{name}\"\nstate = \"productive\"\nurl = \"http://{name}.test/\"\ntoken_file = \"{name}.token\"\n"
            )
        };
        let proxy = egressd()
            .allow_local("api.test")
            .ports(&[tunnel], &[origin.port()])
            .proxy(&format!("identity = \"{mode}\""))
            .table(&function("fn-a"))
            .table(&function("fn-b"))
            .start_in(dir.path());
        World {
            proxy,
            origin,
            tunnel,
            dir,
        }
    }

    /// A plain-HTTP GET and a CONNECT, each with `auth` as its `Proxy-Authorization` (none
    /// when empty).
    fn requests(&self, auth: &str) -> [(&'static str, String); 2] {
        let header = if auth.is_empty() {
            String::new()
        } else {
            format!("Proxy-Authorization: {auth}\r\n")
        };
        let tunnel = self.tunnel;
        [
            (
                "GET",
                format!(
                    "GET http://api.test:{port}/echo HTTP/1.1\r\nHost: api.test:{port}\r\n{header}Connection: close\r\n\r\n",
                    port = self.origin.port()
                ),
            ),
            (
                "CONNECT",
                format!("CONNECT api.test:{tunnel} HTTP/1.1\r\nHost: api.test:{tunnel}\r\n{header}\r\n"),
            ),
        ]
    }

    /// The plain-HTTP GET of [`World::requests`].
    fn get(&self, auth: &str) -> String {
        let [(_, get), _] = self.requests(auth);
        get
    }
}

/// What a request gets: its status, `X-Egress-Denied`, and the `function` of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    status: u16,
    denied: Option<&'static str>,
    function: &'static str,
}

/// The access line of the request made after `before` lines were written.
async fn next_access_line(proxy: &Egressd, before: usize) -> serde_json::Value {
    eventually("the request's access line", || async {
        proxy.access_logs().get(before).cloned()
    })
    .await
}

const FN_A: Want = Want {
    status: 200,
    denied: None,
    function: "fn-a",
};
const ANONYMOUS: Want = Want {
    status: 200,
    denied: None,
    function: "anonymous",
};
const REQUIRED: Want = Want {
    status: 407,
    denied: Some("identity-required"),
    function: "anonymous",
};
const INVALID: Want = Want {
    status: 407,
    denied: Some("identity-invalid"),
    function: "anonymous",
};

#[tokio::test]
async fn each_mode_judges_credentials_on_plain_http_and_connect() {
    let valid = basic(format!("fn-a:{TOKEN}").as_bytes());
    let wrong = basic(b"fn-a:fn-a-token-wrong-0123456789");
    let unknown = basic(format!("fn-z:{TOKEN}").as_bytes());
    let other_token = basic(format!("fn-a:{OTHER}").as_bytes());
    // (mode, credentials, expected)
    let cases: &[(&str, &str, &str, Want)] = &[
        ("off", "none", "", ANONYMOUS),
        ("off", "a wrong token: ignored", &wrong, ANONYMOUS),
        ("optional", "none", "", ANONYMOUS),
        ("optional", "valid", &valid, FN_A),
        (
            "optional",
            "a wrong token: never anonymous",
            &wrong,
            INVALID,
        ),
        ("required", "none", "", REQUIRED),
        ("required", "valid", &valid, FN_A),
        ("required", "a wrong token", &wrong, INVALID),
        (
            "required",
            "an unknown function: the same answer",
            &unknown,
            INVALID,
        ),
        (
            "required",
            "another function's token",
            &other_token,
            INVALID,
        ),
    ];
    let mut failures = Vec::new();
    for mode in ["off", "optional", "required"] {
        let world = World::start(mode).await;
        let proxy = &world.proxy;
        for (_, what, auth, want) in cases.iter().filter(|c| c.0 == mode) {
            for (method, request) in world.requests(auth) {
                let before = proxy.access_logs().len();
                let response = one_response(proxy.proxy, request.as_bytes()).await;
                let head = response.split("\r\n\r\n").next().unwrap_or("");
                let line = next_access_line(proxy, before).await;
                let got = (
                    status(&response),
                    header(head, "x-egress-denied"),
                    line["function"].as_str(),
                );
                let expected = (want.status, want.denied, Some(want.function));
                if got != expected {
                    failures.push(format!(
                        "{mode} / {what} / {method}: got {got:?}, want {expected:?}\n    {head}"
                    ));
                }
                if want.status == 407 {
                    let challenge = header(head, "proxy-authenticate");
                    if challenge != Some("Basic realm=\"egressd\"") {
                        failures.push(format!(
                            "{mode} / {what} / {method}: challenge {challenge:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn malformed_credentials_are_refused_and_nothing_is_forwarded() {
    let world = World::start("optional").await;
    let proxy = &world.proxy;
    let valid = format!("fn-a:{TOKEN}");
    let huge = format!("Basic {}", "A".repeat(64 * 1024));
    // (name, Proxy-Authorization headers, status, x-egress-denied or x-egress-error, phrase)
    type Case<'a> = (&'a str, Vec<String>, u16, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "not base64",
            vec!["Basic !!!not-base64!!!".into()],
            407,
            Some("identity-invalid"),
            "not valid base64",
        ),
        (
            "no colon",
            vec![basic(b"fn-a")],
            407,
            Some("identity-invalid"),
            "no colon",
        ),
        (
            "an empty function",
            vec![basic(format!(":{TOKEN}").as_bytes())],
            407,
            Some("identity-invalid"),
            "empty",
        ),
        (
            "an empty token",
            vec![basic(b"fn-a:")],
            407,
            Some("identity-invalid"),
            "empty",
        ),
        (
            "not UTF-8",
            vec![basic(b"fn-a:\xff\xfe0123456789abcdef")],
            407,
            Some("identity-invalid"),
            "not UTF-8",
        ),
        (
            "the scheme alone",
            vec!["Basic".into()],
            407,
            Some("identity-invalid"),
            "no colon",
        ),
        (
            "Bearer",
            vec![format!("Bearer {TOKEN}")],
            407,
            Some("identity-invalid"),
            "only the Basic scheme",
        ),
        (
            "Digest",
            vec!["Digest username=\"fn-a\", realm=\"egressd\"".into()],
            407,
            Some("identity-invalid"),
            "only the Basic scheme",
        ),
        (
            "two headers",
            vec![basic(valid.as_bytes()), basic(valid.as_bytes())],
            400,
            None,
            "more than one Proxy-Authorization",
        ),
        (
            "a 64 KiB header",
            vec![huge],
            407,
            Some("identity-invalid"),
            "longer than any function name and token",
        ),
    ];
    let mut failures = Vec::new();
    for (name, values, want_status, want_denied, phrase) in &cases {
        let headers: String = values
            .iter()
            .map(|v| format!("Proxy-Authorization: {v}\r\n"))
            .collect();
        let request = format!(
            "GET http://api.test:{port}/echo HTTP/1.1\r\nHost: api.test:{port}\r\n{headers}Connection: close\r\n\r\n",
            port = world.origin.port()
        );
        let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
        let head = response.split("\r\n\r\n").next().unwrap_or("");
        let status_line = head.lines().next().unwrap_or("");
        let ok = status(&response) == *want_status
            && header(head, "x-egress-denied") == *want_denied
            && status_line.contains(phrase)
            && !response.contains("GET /echo HTTP/1.1");
        if !ok {
            failures.push(format!("{name}: {status_line}\n    {head}"));
        }
        if response.contains(TOKEN) {
            failures.push(format!("{name}: the token is in the response"));
        }
    }
    assert_no_failures(&failures, cases.len());
    assert_eq!(
        proxy
            .metric(
                "egressd_requests_total{protocol=\"http\",decision=\"allowed\",reason=\"none\"}"
            )
            .await,
        0.0,
        "nothing was forwarded"
    );
    // The server is unaffected: a valid request still goes through.
    let request = world.get(&basic(valid.as_bytes()));
    let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    // `Basic` in another case is the same scheme (RFC 9110 §11.1).
    let lower = basic(valid.as_bytes()).replacen("Basic", "bASIC", 1);
    let request = world.get(&lower);
    let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
}

#[tokio::test]
async fn credentials_are_never_forwarded_logged_or_echoed() {
    let world = World::start("required").await;
    let proxy = &world.proxy;
    let valid = basic(format!("fn-a:{TOKEN}").as_bytes());
    let wrong_token = "fn-a-token-wrong-0123456789";
    let wrong = basic(format!("fn-a:{wrong_token}").as_bytes());
    let allowed = world.get(&valid);
    let response = raw_exchange(proxy.proxy, allowed.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(
        !response
            .to_ascii_lowercase()
            .contains("proxy-authorization"),
        "the origin saw the credentials:\n{response}"
    );
    let refused = world.get(&wrong);
    let response = raw_exchange(proxy.proxy, refused.as_bytes()).await;
    assert_eq!(status(&response), 407, "{response}");
    proxy.wait_for_log(|l| l["status"] == 407).await;
    let logs = proxy.log_lines();
    for secret in [TOKEN, wrong_token, valid.as_str(), wrong.as_str()] {
        assert!(!response.contains(secret), "the 407 shows {secret}");
        assert!(
            !logs.iter().any(|l| l.to_string().contains(secret)),
            "a log line shows {secret}"
        );
    }
}

#[tokio::test]
async fn the_function_is_in_the_access_log_and_the_metrics() {
    let world = World::start("optional").await;
    let proxy = &world.proxy;
    for auth in [basic(format!("fn-a:{TOKEN}").as_bytes()), String::new()] {
        for (_, request) in world.requests(&auth) {
            one_response(proxy.proxy, request.as_bytes()).await;
        }
    }
    let series = |function: &str| {
        format!("egressd_function_requests_total{{function=\"{function}\",decision=\"allowed\"}}")
    };
    eventually("both tunnels counted and logged", || async {
        let lines = proxy.access_logs();
        let by = |f: &str| lines.iter().filter(|l| l["function"] == f).count();
        (by("fn-a") == 2 && by("anonymous") == 2).then_some(())
    })
    .await;
    assert_eq!(proxy.metric(&series("fn-a")).await, 2.0);
    assert_eq!(proxy.metric(&series("anonymous")).await, 2.0);
    assert_eq!(proxy.metric(&series("fn-b")).await, 0.0);
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_counted_and_slowed() {
    let world = World::start("required").await;
    let proxy = &world.proxy;
    let wrong = basic(b"fn-a:fn-a-token-wrong-0123456789");
    let request = world.get(&wrong);
    for _ in 0..7 {
        let response = raw_exchange(proxy.proxy, request.as_bytes()).await;
        assert_eq!(status(&response), 407, "{response}");
    }
    assert_eq!(
        proxy
            .metric("egressd_identity_failures_total{reason=\"invalid\"}")
            .await,
        7.0
    );
    assert_eq!(
        proxy.metric("egressd_identity_slowed_total").await,
        2.0,
        "the first five are answered at once, the next two after a delay"
    );
    let warning = proxy
        .wait_for_line(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("repeated failed proxy credentials"))
        })
        .await;
    assert_eq!(warning["client"], "127.0.0.1");
}

/// Writes `text` into `fn-a`'s token file the way a Secret update does: a new file renamed
/// over the old.
fn rotate(dir: &Path, text: &str) {
    write_file(&dir.join("fn-a.token"), text, Write::Rename);
}

#[tokio::test]
async fn a_changed_token_file_rolls_the_token_over_without_a_restart() {
    let world = World::start("required").await;
    let proxy = &world.proxy;
    let status_with = |token: &'static str| {
        let request = world.get(&basic(format!("fn-a:{token}").as_bytes()));
        let addr = proxy.proxy;
        async move { status(&raw_exchange(addr, request.as_bytes()).await) }
    };
    assert_eq!(status_with(TOKEN).await, 200);
    assert_eq!(status_with(NEXT).await, 407);
    // Rolling over: both tokens, then only the new one.
    rotate(world.dir.path(), &format!("{TOKEN}\n{NEXT}\n"));
    eventually("the next token accepted", || async {
        (status_with(NEXT).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        status_with(TOKEN).await,
        200,
        "the current token still works while rolling over"
    );
    rotate(world.dir.path(), &format!("{NEXT}\n"));
    eventually("the old token refused", || async {
        (status_with(TOKEN).await == 407).then_some(())
    })
    .await;
    assert_eq!(status_with(NEXT).await, 200);
    // A bad file keeps the tokens in force, and says why.
    rotate(world.dir.path(), "short\n");
    let view = eventually("the error shown", || async {
        let (_, body) = proxy.admin_get("/v1/identity").await;
        let view: serde_json::Value = serde_json::from_str(&body).ok()?;
        view["functions"][0]["error"].is_string().then_some(view)
    })
    .await;
    assert_eq!(view["mode"], "required");
    assert_eq!(view["functions"][0]["function"], "fn-a");
    assert_eq!(view["functions"][0]["tokens"], 1);
    assert!(!view.to_string().contains(NEXT), "{view}");
    assert_eq!(status_with(NEXT).await, 200, "the old tokens keep serving");
}

#[tokio::test]
async fn a_reload_changes_the_mode() {
    let world = World::start("optional").await;
    let proxy = &world.proxy;
    let anonymous = world.get("");
    assert_eq!(
        status(&raw_exchange(proxy.proxy, anonymous.as_bytes()).await),
        200
    );
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let required = text.replace("identity = \"optional\"", "identity = \"required\"");
    write_file(&proxy.config_path, &required, Write::Rename);
    eventually("anonymous requests refused", || async {
        let response = raw_exchange(proxy.proxy, anonymous.as_bytes()).await;
        (status(&response) == 407).then_some(())
    })
    .await;
}

#[tokio::test]
async fn explain_says_what_credentials_change() {
    let world = World::start("required").await;
    let proxy = &world.proxy;
    let url = format!("http://api.test:{}/", world.origin.port());
    // (function, the note contains, exit code)
    let cases: &[(Option<&str>, &str, i32)] = &[
        (None, "without them it gets 407 identity-required", 1),
        (Some("fn-a"), "as function \"fn-a\"", 0),
        (Some("fn-z"), "function \"fn-z\" has no token in force", 1),
    ];
    for (function, note, code) in cases {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["explain", "--config"])
            .arg(&proxy.config_path)
            .arg(&url);
        if let Some(function) = function {
            cmd.args(["--function", function]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(note), "{function:?}: {stdout}");
        assert_eq!(out.status.code(), Some(*code), "{function:?}: {stdout}");
        let query = function
            .map(|f| format!("&function={f}"))
            .unwrap_or_default();
        let (_, body) = proxy
            .admin_get(&format!("/v1/explain?url={url}{query}"))
            .await;
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            view["identity"].as_str().is_some_and(|n| n.contains(note)),
            "{function:?}: {view}"
        );
    }
}

#[tokio::test]
async fn bad_identity_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.token"), "short\n").unwrap();
    let config = dir.path().join("egressd.toml");
    // (name, the [proxy] line, the function's name and extra line, the problem contains)
    let cases = [
        (
            "an unknown mode",
            "identity = \"sometimes\"\n",
            "fn-a",
            "",
            "proxy.identity \"sometimes\": expected \"off\"",
        ),
        (
            "a missing token file",
            "",
            "fn-a",
            "token_file = \"missing.token\"\n",
            "functions[0].token_file \"missing.token\": cannot read",
        ),
        (
            "a token too short",
            "",
            "fn-a",
            "token_file = \"short.token\"\n",
            "functions[0].token_file \"short.token\":",
        ),
        (
            "the reserved name",
            "",
            "anonymous",
            "",
            "functions[0].name \"anonymous\": \"anonymous\" is reserved",
        ),
    ];
    let mut failures = Vec::new();
    for (name, proxy_line, function, function_line, want) in cases {
        std::fs::write(
            &config,
            format!("[proxy]\n{proxy_line}[[functions]]\nname = \"{function}\"\nstate = \"productive\"\nurl = \"http://fn-a.test/\"\n{function_line}[allowlist]\ndomains = []\n"),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.code() != Some(1) || !text.contains(want) || !text.contains("egressd.toml:") {
            failures.push(format!("{name}: {text}"));
        }
    }
    assert_no_failures(&failures, cases.len());
}
