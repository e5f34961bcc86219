//! The redirect audit: `egressd trace` follows a chain through egressd's own policy and
//! resolver, and the access log names a forwarded redirect the allowlist would deny.

use std::process::Command;

use crate::support::*;

/// Writes `builder`'s config to a temp dir (no egressd started) and runs `egressd trace` on it.
fn trace(builder: &EgressdBuilder, url: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("egressd.toml");
    std::fs::write(&config, builder.config_text(&dir.path().join("state"))).unwrap();
    let out = Command::new(BIN)
        .args(["trace", "--config"])
        .arg(&config)
        .arg(url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.code() == Some(1),
        "{stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// egressd's config with the audit origin's port open for plain HTTP and its names on loopback
/// (`internal.test` on a private address no `allow_private_cidrs` covers).
fn audit_config(port: u16, allowed: &[&str]) -> EgressdBuilder {
    let mut builder = egressd()
        .dns("a.test", "127.0.0.1")
        .dns("b.test", "127.0.0.1")
        .dns("internal.test", "10.1.2.3")
        .ports(&[443], &[port]);
    for name in allowed {
        builder = builder.allow(name);
    }
    builder
}

/// The line of `domains = [...]` in the audit config.
fn domains_line(allowed: &[&str]) -> usize {
    let text = audit_config(1, allowed).config_text(std::path::Path::new("state"));
    text.lines()
        .position(|l| l.starts_with("domains = "))
        .unwrap()
        + 1
}

#[tokio::test]
async fn trace_shows_every_hop_and_what_to_add() {
    let port = redirecting_origin().await;
    struct Case {
        name: &'static str,
        allowed: &'static [&'static str],
        path: &'static str,
        exit: i32,
        /// Lines the output must contain, in this order.
        lines: Vec<String>,
    }
    let cases =
        [
            Case {
                name: "a chain leaving the allowlist names the entry to add",
                allowed: &["a.test"],
                path: "/start",
                exit: 1,
                lines: vec![
                format!(" 1  http://a.test:{port}/start"),
                format!("    allowed (rule \"a.test\", line {})", domains_line(&["a.test"])),
                format!("    302 -> http://b.test:{port}/next"),
                format!(" 2  http://b.test:{port}/next"),
                "    denied: not-allowlisted".into(),
                "    denied (not-allowlisted): \"b.test\" is not on the allowlist; add \"b.test\""
                    .into(),
                format!("    301 -> http://b.test:{port}/final"),
                format!(" 3  http://b.test:{port}/final"),
                "    200".into(),
                "add to [allowlist] domains so that the whole chain is allowed:".into(),
                "  \"b.test\",".into(),
            ],
            },
            Case {
                name: "a fully allowed chain exits 0",
                allowed: &["a.test", "b.test"],
                path: "/start",
                exit: 0,
                lines: vec![
                    format!(" 3  http://b.test:{port}/final"),
                    "every hop is allowed".into(),
                ],
            },
            Case {
                name: "a hop to a private address ends the audit: no entry can fix it",
                allowed: &["a.test", "internal.test"],
                path: "/to-internal",
                exit: 1,
                lines: vec![
                    format!(" 2  http://internal.test:{port}/"),
                    "    denied: private-destination".into(),
                    "stopped: private-destination: no allowlist entry can fix this hop".into(),
                ],
            },
            Case {
                name: "HEAD refused with 405 falls back to GET; relative Location resolved",
                allowed: &["a.test"],
                path: "/no-head",
                exit: 0,
                lines: vec![
                    format!("    302 -> http://a.test:{port}/final"),
                    format!(" 2  http://a.test:{port}/final"),
                    "every hop is allowed".into(),
                ],
            },
            Case {
                name: "at most 10 redirects are followed",
                allowed: &["a.test"],
                path: "/loop",
                exit: 1,
                lines: vec![
                    format!("11  http://a.test:{port}/loop"),
                    "stopped: more than 10 redirects".into(),
                ],
            },
        ];
    for case in cases {
        let builder = audit_config(port, case.allowed);
        let url = format!("http://a.test:{port}{}", case.path);
        let (exit, out) = tokio::task::spawn_blocking(move || trace(&builder, &url))
            .await
            .unwrap();
        assert_eq!(exit, case.exit, "{}:\n{out}", case.name);
        let mut rest = out.as_str();
        for line in &case.lines {
            let at = rest
                .find(&format!("{line}\n"))
                .unwrap_or_else(|| panic!("{}: missing {line:?} in order in:\n{out}", case.name));
            rest = &rest[at + line.len()..];
        }
    }
}

/// Fetches `path` on the audit origin through `proxy` with curl; returns its access-log line.
async fn fetch_logged(proxy: &Egressd, port: u16, path: &str) -> serde_json::Value {
    let url = format!("http://a.test:{port}{path}");
    let (code, _, err) = curl(
        &["-s", "-o", "/dev/null", "-x", &proxy.proxy_url(), &url],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    proxy
        .wait_for_log(|l| l["raw_target"].as_str() == Some(url.as_str()))
        .await
}

#[tokio::test]
async fn the_access_log_names_a_redirect_the_allowlist_would_deny() {
    let port = redirecting_origin().await;
    let proxy = audit_config(port, &["a.test"]).start();
    let line = fetch_logged(&proxy, port, "/start").await;
    assert_eq!(line["status"], 302, "{line}");
    assert_eq!(
        line["redirect_denied"],
        format!("http://b.test:{port}/next would be denied (not-allowlisted): \"b.test\" is not on the allowlist; add \"b.test\""),
        "{line}"
    );
    // An allowed redirect is not flagged.
    let line = fetch_logged(&proxy, port, "/no-head").await;
    assert_eq!(line["status"], 302, "{line}");
    assert_eq!(line["redirect_denied"], "", "{line}");
}
