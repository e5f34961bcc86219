//! The egress client, called in-process, decides exactly as the proxy does over the network:
//! one table of cases, run both ways against the same config. A scheduled invocation (or any
//! later caller) sent through the client can therefore never be judged differently from a
//! function's own request.

use std::time::Duration;

use crate::support::*;
use egressd::control::config::Config;
use egressd::egress::resolve::DnsResolver;
use egressd::egress::{EgressClient, EgressError, EgressOptions, SendError, Snapshot};
use egressd::policy::{Denial, Protocol, Target};
use egressd::util::body::empty;

/// (name, protocol, target `host:port` with `PORT` for the origin's port, expected reason or
/// "allowed")
const CASES: &[(&str, Protocol, &str, &str)] = &[
    (
        "allowed exact host over HTTP",
        Protocol::Http,
        "api.test:PORT",
        "allowed",
    ),
    (
        "allowed exact host over CONNECT",
        Protocol::Connect,
        "api.test:PORT",
        "allowed",
    ),
    (
        "wildcard covers a subdomain",
        Protocol::Http,
        "a.b.wild.test:PORT",
        "allowed",
    ),
    (
        "host not on the list",
        Protocol::Http,
        "other.test:PORT",
        "not-allowlisted",
    ),
    (
        "subdomain of an exact entry",
        Protocol::Connect,
        "www.api.test:PORT",
        "not-allowlisted",
    ),
    (
        "apex of a wildcard",
        Protocol::Http,
        "wild.test:PORT",
        "not-allowlisted",
    ),
    (
        "port closed for plain HTTP",
        Protocol::Http,
        "api.test:8081",
        "port-not-allowed",
    ),
    (
        "port closed for CONNECT",
        Protocol::Connect,
        "api.test:8081",
        "port-not-allowed",
    ),
    (
        "allowlisted name resolving to the metadata address",
        Protocol::Http,
        "metadata.test:PORT",
        "private-destination",
    ),
    (
        "allowlisted private IP literal",
        Protocol::Connect,
        "10.0.0.1:PORT",
        "private-destination",
    ),
    (
        "non-canonical IP literal",
        Protocol::Http,
        "127.1:PORT",
        "invalid-target",
    ),
];

fn config_text(origin_port: u16, state_dir: &std::path::Path) -> String {
    format!(
        "[proxy]\nstate_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         allow_private_cidrs = [\"127.0.0.0/8\"]\nconnect_ports = [{origin_port}]\nhttp_ports = [{origin_port}]\n\
         [dns]\noverrides = {{ \"api.test\" = \"127.0.0.1\", \"www.api.test\" = \"127.0.0.1\", \"a.b.wild.test\" = \"127.0.0.1\", \
         \"wild.test\" = \"127.0.0.1\", \"other.test\" = \"127.0.0.1\", \"metadata.test\" = \"169.254.169.254\" }}\n\
         [allowlist]\ndomains = [\"api.test\", \"*.wild.test\", \"metadata.test\", \"10.0.0.1\"]\n",
        state_dir.display().to_string()
    )
}

/// What the proxy answered, as a reason: "allowed", or its `X-Egress-Denied` value.
async fn through_proxy(proxy: &Egressd, protocol: Protocol, target: &str) -> String {
    let request = match protocol {
        Protocol::Connect => format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        Protocol::Http => format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    };
    let response = one_response(proxy.proxy, request.as_bytes()).await;
    match header(&response, "x-egress-denied") {
        Some(reason) => reason.to_string(),
        None if response.starts_with("HTTP/1.1 200") => "allowed".into(),
        None => format!("unexpected: {response}"),
    }
}

fn reason_of(denial: &Denial) -> String {
    denial.reason.code().to_string()
}

/// What the egress client did with the same target, as a reason.
async fn through_client(client: &EgressClient, protocol: Protocol, target: &str) -> String {
    let target = match Target::parse_authority(target) {
        Ok(target) => target,
        Err(err) => return reason_of(&Denial::invalid_target(&err)),
    };
    let permit = match client.decide(&target, protocol) {
        Ok(permit) => permit,
        Err(denial) => return reason_of(&denial),
    };
    match protocol {
        Protocol::Connect => match client.dial(&permit).await {
            Ok(_) => "allowed".into(),
            Err(EgressError::Denied(denial)) => reason_of(&denial),
            Err(err) => format!("unexpected: {err}"),
        },
        Protocol::Http => {
            let request = http::Request::get("/").body(empty()).unwrap();
            match client.send(&permit, request).await {
                Ok(response) if response.status() == 200 => "allowed".into(),
                Ok(response) => format!("unexpected status {}", response.status()),
                Err(SendError::Egress(EgressError::Denied(denial))) => reason_of(&denial),
                Err(err) => format!("unexpected: {err}"),
            }
        }
    }
}

#[tokio::test]
async fn the_egress_client_denies_exactly_where_the_proxy_denies() {
    let origin = origin().await;
    let port = origin.port();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("egressd.toml");
    let text = config_text(port, &dir.path().join("state"));
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::parse(&config_path, &text).unwrap();
    let client = EgressClient::new(
        Snapshot::handle(config.policy.clone(), config.mtls.clone()),
        DnsResolver::new(&config.dns),
        vec![],
        EgressOptions {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(5),
        },
    );
    let proxy = Egressd::spawn(dir, config_path);

    let mut failures = Vec::new();
    for (name, protocol, target, expected) in CASES {
        let target = target.replace("PORT", &port.to_string());
        let by_proxy = through_proxy(&proxy, *protocol, &target).await;
        let by_client = through_client(&client, *protocol, &target).await;
        if (by_proxy.as_str(), by_client.as_str()) != (*expected, *expected) {
            failures.push(format!(
                "{name}: expected {expected:?}, the proxy said {by_proxy:?}, the egress client {by_client:?}"
            ));
        }
    }
    assert_no_failures(&failures, CASES.len());
}
