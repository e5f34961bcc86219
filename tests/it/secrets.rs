//! The secret store (`[secrets]`) and injection (`[[inject]]`), driven through the real
//! binary: operators on the admin listener, functions through the proxy with the
//! credentials of their proxy URL, upstreams that show what egressd sent them.

use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::*;

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER_KEY_HEX: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const BILLING: &str = "billing-token-0123456789abcdef";
const REPORTS: &str = "reports-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
/// A value no file, log or response may show.
const PLAINTEXT: &str = "pl41ntext-partner-credential";

fn basic(function: &str, token: &str) -> String {
    let pair = format!("{function}:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// egressd with a secret store, an admin token, two productive functions (`billing`,
/// `reports`), and an origin at `api.test` whose requests get `Authorization` from the
/// secret `partner-token` — for `billing` only.
struct World {
    proxy: Egressd,
    origin: Origin,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        Self::start_with("").await
    }

    /// With `extra` appended to the config (more tables).
    async fn start_with(extra: &str) -> World {
        let origin = origin().await;
        let dir = tempfile::tempdir().unwrap();
        write_secret_files(dir.path());
        let port = origin.port();
        let proxy = egressd()
            .allow_local("api.test")
            .ports(&[443], &[port])
            .proxy(&format!(
                "admin_token_file = {:?}",
                dir.path().join("admin.token")
            ))
            .table("[secrets]\nkey_file = \"secrets.key\"\n")
            .table(&function("billing", port))
            .table(&function("reports", port))
            .table(
                "[[inject]]\nhost = \"api.test\"\nheader = \"Authorization\"\nvalue = \"Bearer {secret:partner-token}\"\nfunctions = [\"billing\"]\ntls = false\n",
            )
            .table(extra)
            .start_in(dir.path());
        World { proxy, origin, dir }
    }

    /// An admin request with (or without) the token; status and body.
    async fn admin(
        &self,
        method: &str,
        path: &str,
        json: Option<&str>,
        token: bool,
    ) -> (u16, String) {
        let auth = if token {
            format!("Authorization: Bearer {ADMIN}\r\n")
        } else {
            String::new()
        };
        let body = json.unwrap_or("");
        let content_type = if json.is_some() {
            "Content-Type: application/json\r\n"
        } else {
            ""
        };
        let raw = raw_exchange(
            self.proxy.admin,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        (status(&raw), body_of(&raw))
    }

    async fn create(&self, key: &str, value: &str) -> u16 {
        let json = serde_json::json!({ "key": key, "value": value }).to_string();
        self.admin("POST", "/v1/secrets", Some(&json), true).await.0
    }

    /// A request through the proxy to the secret store, as `auth` (a `Proxy-Authorization`
    /// value, or none when empty); the raw response.
    async fn store(&self, method: &str, key: &str, auth: &str, body: &[u8], extra: &str) -> String {
        let auth = match auth {
            "" => String::new(),
            auth => format!("Proxy-Authorization: {auth}\r\n"),
        };
        let mut request = format!(
            "{method} http://secrets.egressd.internal/v1/secrets/{key} HTTP/1.1\r\nHost: secrets.egressd.internal\r\n{auth}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        raw_exchange(self.proxy.proxy, &request).await
    }

    /// A GET of the origin through the proxy as `function` (anonymous when empty), sending
    /// its own `Authorization: mine`; the raw response (the origin echoes the request).
    async fn call_origin(&self, function: &str) -> String {
        let auth = match function {
            "" => String::new(),
            "billing" => format!("Proxy-Authorization: {}\r\n", basic("billing", BILLING)),
            _ => format!("Proxy-Authorization: {}\r\n", basic("reports", REPORTS)),
        };
        let port = self.origin.port();
        raw_exchange(
            self.proxy.proxy,
            format!(
                "GET http://api.test:{port}/echo HTTP/1.1\r\nHost: api.test:{port}\r\nAuthorization: mine\r\n{auth}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
    }
}

fn write_secret_files(dir: &std::path::Path) {
    std::fs::write(dir.join("secrets.key"), format!("{KEY_HEX}\n")).unwrap();
    set_mode(&dir.join("secrets.key"), 0o600);
    std::fs::write(dir.join("billing.token"), format!("{BILLING}\n")).unwrap();
    std::fs::write(dir.join("reports.token"), format!("{REPORTS}\n")).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN}\n")).unwrap();
}

fn function(name: &str, port: u16) -> String {
    format!(
        "[[functions]]\nname = \"{name}\"\nstate = \"productive\"\nurl = \"http://api.test:{port}/{name}\"\ntoken_file = \"{name}.token\"\n"
    )
}

fn body_of(raw: &str) -> String {
    body(raw).to_string()
}

/// The `authorization:` line the origin echoed.
fn authorization_seen(raw: &str) -> Option<String> {
    body(raw)
        .lines()
        .find_map(|l| l.strip_prefix("authorization: ").map(str::to_string))
}

/// Every file under `dir`, read whole.
fn every_file(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(every_file(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    files
}

#[tokio::test]
async fn who_may_do_what() {
    let world = World::start().await;
    assert_eq!(world.create("partner-token", PLAINTEXT).await, 201);
    let billing = basic("billing", BILLING);
    let wrong = basic("billing", "billing-token-wrong-0123456789");

    /// Who asks.
    #[derive(Clone, Copy, Debug)]
    enum Caller {
        Operator,
        AdminWithoutToken,
        Function,
        AnonymousThroughProxy,
        WrongCredentials,
    }
    use Caller::*;
    // (caller, action, expected status). Actions: create, list, read, update, delete.
    let cases: &[(Caller, &str, u16)] = &[
        (Operator, "create", 201),
        (Operator, "list", 200),
        (Operator, "update", 200),
        (Operator, "delete", 200),
        (AdminWithoutToken, "create", 401),
        (AdminWithoutToken, "list", 401),
        (AdminWithoutToken, "update", 401),
        (AdminWithoutToken, "delete", 401),
        (Function, "read", 200),
        (Function, "update", 200),
        (Function, "update-unknown", 404),
        (Function, "create", 403),
        (Function, "delete", 403),
        (AnonymousThroughProxy, "read", 407),
        (AnonymousThroughProxy, "update", 407),
        (WrongCredentials, "read", 407),
        (WrongCredentials, "update", 407),
    ];
    let mut failures = Vec::new();
    for (n, (caller, action, want)) in cases.iter().enumerate() {
        // Each case on a secret of its own, created by the operator first.
        let key = format!("case-{n}");
        assert_eq!(world.create(&key, PLAINTEXT).await, 201);
        let value = serde_json::json!({ "value": "new-value" }).to_string();
        let create = serde_json::json!({ "key": format!("{key}-new"), "value": "v" }).to_string();
        let (world, key, value, create) = (&world, key.as_str(), value.as_str(), create.as_str());
        let admin = |token: bool| async move {
            match *action {
                "create" => {
                    world
                        .admin("POST", "/v1/secrets", Some(create), token)
                        .await
                }
                "list" => world.admin("GET", "/v1/secrets", None, token).await,
                "update" => {
                    world
                        .admin("PUT", &format!("/v1/secrets/{key}"), Some(value), token)
                        .await
                }
                "delete" => {
                    world
                        .admin("DELETE", &format!("/v1/secrets/{key}"), None, token)
                        .await
                }
                other => panic!("no admin action {other}"),
            }
        };
        let through_proxy = |auth: String| async move {
            let raw = match *action {
                "read" => world.store("GET", key, &auth, b"", "").await,
                "update" => world.store("PUT", key, &auth, b"new-value", "").await,
                "update-unknown" => world.store("PUT", "nobody-made-it", &auth, b"v", "").await,
                "create" => world.store("POST", key, &auth, b"v", "").await,
                "delete" => world.store("DELETE", key, &auth, b"", "").await,
                other => panic!("no proxy action {other}"),
            };
            (status(&raw), raw)
        };
        let (got, detail) = match caller {
            Operator => admin(true).await,
            AdminWithoutToken => admin(false).await,
            Function => through_proxy(billing.clone()).await,
            AnonymousThroughProxy => through_proxy(String::new()).await,
            WrongCredentials => through_proxy(wrong.clone()).await,
        };
        if got != *want {
            failures.push(format!(
                "{caller:?} {action}: got {got}, want {want}: {detail}"
            ));
        }
        let reads_it = matches!(caller, Function) && *action == "read";
        if detail.contains(PLAINTEXT) != reads_it {
            failures.push(format!(
                "{caller:?} {action}: the value is in the answer: {}",
                !reads_it
            ));
        }
    }
    assert_no_failures(&failures, cases.len());
    // What a function reads is what was stored, with its version as the ETag.
    let raw = world.store("GET", "partner-token", &billing, b"", "").await;
    assert_eq!(body(&raw), PLAINTEXT);
    assert_eq!(header(&raw, "etag"), Some("\"1\""));
    // The secret store is never served on the admin listener.
    let (code, _) = world
        .admin("GET", "/v1/secrets/partner-token", None, true)
        .await;
    assert_eq!(
        code, 405,
        "the admin listener lists keys; it has no read of a value"
    );
}

#[tokio::test]
async fn injection_replaces_the_functions_header_and_a_missing_secret_sends_nothing() {
    let world = World::start().await;
    // Before the operator creates the secret: 503 naming the key, and the origin saw nothing.
    let raw = world.call_origin("billing").await;
    assert_eq!(status(&raw), 503, "{raw}");
    assert_eq!(header(&raw, "x-egress-error"), Some("secret-missing"));
    assert!(raw.contains("\"partner-token\""), "{raw}");
    assert_eq!(world.create("partner-token", PLAINTEXT).await, 201);
    // (name, function, Authorization the origin must see)
    let cases = [
        (
            "the rule's function gets the secret, not its own header",
            "billing",
            format!("Bearer {PLAINTEXT}"),
        ),
        (
            "another function keeps its own header",
            "reports",
            "mine".to_string(),
        ),
        (
            "an anonymous request keeps its own header",
            "",
            "mine".to_string(),
        ),
    ];
    for (name, function, want) in &cases {
        let raw = world.call_origin(function).await;
        assert_eq!(status(&raw), 200, "{name}: {raw}");
        assert_eq!(
            authorization_seen(&raw).as_deref(),
            Some(want.as_str()),
            "{name}: {raw}"
        );
    }
    // Updated by a function, injected from the next request on.
    let billing = basic("billing", BILLING);
    let raw = world
        .store("PUT", "partner-token", &billing, b"rotated-token", "")
        .await;
    assert_eq!(status(&raw), 200, "{raw}");
    let raw = world.call_origin("billing").await;
    assert_eq!(
        authorization_seen(&raw).as_deref(),
        Some("Bearer rotated-token")
    );
    // The update has its audit line, and neither value reached any log line.
    let audit = world
        .proxy
        .wait_for_line(|l| l["audit"] == "secret.update")
        .await;
    assert_eq!(
        (&audit["key"], &audit["version"], &audit["by"]),
        (
            &serde_json::json!("partner-token"),
            &serde_json::json!(2),
            &serde_json::json!("function:billing")
        )
    );
    let text = format!("{:?}", world.proxy.log_lines());
    assert!(
        !text.contains(PLAINTEXT) && !text.contains("rotated-token"),
        "a value was logged"
    );
}

#[tokio::test]
async fn a_connect_to_an_injected_host_is_refused_unless_the_rule_allows_it() {
    let world = World::start_with(
        "[[inject]]\nhost = \"open.test\"\nheader = \"X-Api-Key\"\nvalue = \"{secret:open-key}\"\nallow_connect = true\ntls = false\n",
    )
    .await;
    let refused = raw_exchange(
        world.proxy.proxy,
        b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n",
    )
    .await;
    assert_eq!(status(&refused), 403, "{refused}");
    assert_eq!(
        header(&refused, "x-egress-denied"),
        Some("injection-requires-origination")
    );
    assert!(
        refused.contains("http://api.test/"),
        "says what to send instead: {refused}"
    );
    let allowed = raw_exchange(
        world.proxy.proxy,
        b"CONNECT open.test:443 HTTP/1.1\r\nHost: open.test:443\r\n\r\n",
    )
    .await;
    assert_ne!(
        header(&allowed, "x-egress-denied"),
        Some("injection-requires-origination"),
        "allow_connect tunnels: {allowed}"
    );
}

#[tokio::test]
async fn egressd_opens_tls_to_an_injected_host_the_function_calls_over_plain_http() {
    let (addr, pem) = tls_origin("partner.test").await;
    let dir = tempfile::tempdir().unwrap();
    write_secret_files(dir.path());
    std::fs::write(dir.path().join("partner-ca.pem"), &pem).unwrap();
    let proxy = egressd()
        .allow_local("partner.test")
        .ports(&[], &[80])
        .table("[secrets]\nkey_file = \"secrets.key\"\n")
        .table(&format!(
            "[[inject]]\nhost = \"partner.test\"\nheader = \"Authorization\"\nvalue = \"Bearer {{secret:partner-token}}\"\nport = {}\nca = \"partner-ca.pem\"\n",
            addr.port()
        ))
        .start_in(dir.path());
    let (code, created) = proxy
        .admin_json(
            "POST",
            "/v1/secrets",
            &format!("{{\"key\": \"partner-token\", \"value\": \"{PLAINTEXT}\"}}"),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let raw = raw_exchange(
        proxy.proxy,
        b"GET http://partner.test/over-tls HTTP/1.1\r\nHost: partner.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&raw), 200, "{raw}");
    assert_eq!(
        authorization_seen(&raw),
        Some(format!("Bearer {PLAINTEXT}"))
    );
    assert!(body(&raw).starts_with("GET /over-tls"), "{raw}");
}

/// An upstream that answers `200` to a request carrying `Authorization: {want}` and `401`
/// to any other: what a partner API does.
async fn guarded_origin(want: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let ok = head.contains(&format!(
                    "\r\nauthorization: {}\r\n",
                    want.to_ascii_lowercase()
                ));
                let reply: &[u8] = if ok {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(reply).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_scheduled_invocation_carries_the_injected_header() {
    let port = guarded_origin("Bearer pl41ntext-partner-credential").await;
    let dir = tempfile::tempdir().unwrap();
    write_secret_files(dir.path());
    let proxy = egressd()
        .allow_local("partner.test")
        .ports(&[], &[port])
        .table("[secrets]\nkey_file = \"secrets.key\"\n")
        .table(&format!(
            "[[functions]]\nname = \"billing\"\nstate = \"productive\"\nurl = \"http://partner.test:{port}/run\"\n"
        ))
        .table(
            "[[inject]]\nhost = \"partner.test\"\nheader = \"Authorization\"\nvalue = \"Bearer {secret:partner-token}\"\nfunctions = [\"billing\"]\ntls = false\n",
        )
        .start_in(dir.path());
    let create = format!("{{\"key\": \"partner-token\", \"value\": \"{PLAINTEXT}\"}}");
    assert_eq!(
        proxy.admin_json("POST", "/v1/secrets", &create).await.0,
        201
    );
    let json = r#"{"function": "billing", "cron": "0 0 1 1 *", "payload": "{}"}"#;
    let (code, created) = proxy.admin_json("POST", "/v1/schedules", json).await;
    assert_eq!(code, 201, "{created}");
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = |proxy: &Egressd| {
        let path = format!("/v1/schedules/{id}/run");
        let admin = proxy.admin;
        async move {
            let raw = raw_exchange(
                admin,
                format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            serde_json::from_str::<serde_json::Value>(body(&raw)).unwrap()
        }
    };
    // The upstream accepts only the injected credential: 200 proves the header went out.
    let ran = run(&proxy).await;
    assert_eq!(ran["last_status"], "200", "{ran}");
    // Without the secret the run fails as a function's own request would, and is not sent.
    assert_eq!(
        proxy
            .admin_json("DELETE", "/v1/secrets/partner-token", "")
            .await
            .0,
        200
    );
    let ran = run(&proxy).await;
    assert_eq!(ran["last_state"], "failure", "{ran}");
    assert!(
        ran["last_reason"].to_string().contains("partner-token"),
        "{ran}"
    );
}

#[tokio::test]
async fn concurrent_writers_get_increasing_versions_and_the_last_write_wins() {
    let world = World::start().await;
    assert_eq!(world.create("shared", "v0").await, 201);
    let billing = basic("billing", BILLING);
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (proxy, auth) = (world.proxy.proxy, billing.clone());
        writers.spawn(async move {
            let body = format!("value-{i}");
            let raw = raw_exchange(
                proxy,
                format!(
                    "PUT http://secrets.egressd.internal/v1/secrets/shared HTTP/1.1\r\nHost: secrets.egressd.internal\r\nProxy-Authorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
            let json: serde_json::Value = serde_json::from_str(super::secrets::body(&raw)).unwrap();
            (json["version"].as_u64().unwrap(), body)
        });
    }
    let mut versions = Vec::new();
    while let Some(done) = writers.join_next().await {
        versions.push(done.unwrap());
    }
    versions.sort();
    let numbers: Vec<u64> = versions.iter().map(|v| v.0).collect();
    assert_eq!(
        numbers,
        (2..=21).collect::<Vec<u64>>(),
        "each write its own version"
    );
    let (_, last) = versions.last().unwrap();
    let raw = world.store("GET", "shared", &billing, b"", "").await;
    assert_eq!(
        body(&raw),
        last,
        "the write with the highest version is what is read"
    );
    assert_eq!(header(&raw, "etag"), Some("\"21\""));
    // If-Match: a lost race is a 412 with the current version; the right one writes.
    let stale = world
        .store("PUT", "shared", &billing, b"late", "If-Match: \"3\"\r\n")
        .await;
    assert_eq!(status(&stale), 412, "{stale}");
    assert_eq!(header(&stale, "etag"), Some("\"21\""));
    let fresh = world
        .store(
            "PUT",
            "shared",
            &billing,
            b"on-time",
            "If-Match: \"21\"\r\n",
        )
        .await;
    assert_eq!(status(&fresh), 200, "{fresh}");
    assert_eq!(header(&fresh, "etag"), Some("\"22\""));
}

#[tokio::test]
async fn a_delete_stops_injection_within_a_second() {
    let world = World::start().await;
    assert_eq!(world.create("partner-token", PLAINTEXT).await, 201);
    let stream = {
        let proxy = world.proxy.proxy;
        let port = world.origin.port();
        let auth = basic("billing", BILLING);
        tokio::spawn(async move {
            // Requests one after another until the first 503; its time is returned.
            loop {
                let raw = raw_exchange(
                    proxy,
                    format!(
                        "GET http://api.test:{port}/echo HTTP/1.1\r\nHost: api.test:{port}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await;
                if status(&raw) == 503 {
                    return (Instant::now(), raw);
                }
                assert_eq!(status(&raw), 200, "{raw}");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deleted_at = Instant::now();
    let (code, _) = world
        .admin("DELETE", "/v1/secrets/partner-token", None, true)
        .await;
    assert_eq!(code, 200);
    let (refused_at, raw) = tokio::time::timeout(PATIENCE, stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header(&raw, "x-egress-error"), Some("secret-missing"));
    // Not a speed test: the promise is "within 1 s", and on one replica the delete is in
    // force before the API answers.
    assert!(refused_at.saturating_duration_since(deleted_at) < Duration::from_secs(1));
}

#[tokio::test]
async fn the_store_survives_a_restart_and_never_holds_a_plaintext() {
    let world = World::start().await;
    assert_eq!(world.create("partner-token", PLAINTEXT).await, 201);
    let billing = basic("billing", BILLING);
    let raw = world
        .store("PUT", "partner-token", &billing, b"second-pl41ntext", "")
        .await;
    assert_eq!(status(&raw), 200);
    for (path, bytes) in every_file(world.dir.path()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("pl41ntext"),
            "{} holds a value",
            path.display()
        );
    }
    let proxy = world.proxy.restart().await;
    let raw = raw_exchange(
        proxy.proxy,
        format!(
            "GET http://secrets.egressd.internal/v1/secrets/partner-token HTTP/1.1\r\nHost: secrets.egressd.internal\r\nProxy-Authorization: {billing}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(body(&raw), "second-pl41ntext");
    assert_eq!(header(&raw, "etag"), Some("\"2\""));
}

#[tokio::test]
async fn a_wrong_or_missing_key_or_a_damaged_store_stops_the_start_and_changes_nothing() {
    let world = World::start().await;
    assert_eq!(world.create("partner-token", PLAINTEXT).await, 201);
    let mut proxy = world.proxy;
    proxy.terminate().await;
    let dir = world.dir.path();
    let store = dir.join("state").join("secrets.json");
    let sealed = std::fs::read(&store).unwrap();
    let config = proxy.config_path.clone();
    // (name, how to break it, what the error must say)
    type Breaks<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, Breaks, &[&str]); 3] = [
        (
            "another key",
            Box::new(|| std::fs::write(dir.join("secrets.key"), OTHER_KEY_HEX).unwrap()),
            &["secrets.key", "rekey"],
        ),
        (
            "no key file",
            Box::new(|| std::fs::remove_file(dir.join("secrets.key")).unwrap()),
            &["secrets.key_file", "cannot read"],
        ),
        (
            "a damaged store",
            Box::new(|| {
                std::fs::write(dir.join("secrets.key"), KEY_HEX).unwrap();
                std::fs::write(&store, b"{\"format\": 1, \"secrets\": [").unwrap();
            }),
            &["secrets.json", "nothing was written"],
        ),
    ];
    for (name, breaks, words) in &cases {
        let before: Vec<u8> = std::fs::read(&store).unwrap();
        breaks();
        let before = if *name == "a damaged store" {
            std::fs::read(&store).unwrap()
        } else {
            before
        };
        let (code, output) = egressd().run_to_exit(&config).await;
        assert_ne!(code, Some(0), "{name}: started: {output}");
        for word in *words {
            assert!(output.contains(word), "{name}: {word:?} not in {output}");
        }
        assert_eq!(
            std::fs::read(&store).unwrap(),
            before,
            "{name}: the store changed"
        );
    }
    assert_ne!(sealed, std::fs::read(&store).unwrap());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_changes_nothing() {
    let world = World::start().await;
    assert_eq!(world.create("partner-token", "v1").await, 201);
    let billing = basic("billing", BILLING);
    let long_key = "k".repeat(129);
    let big = "x".repeat(64 * 1024 + 1);
    // Operators: (name, method, path, body, status)
    let admin_cases: Vec<(&str, &str, String, String, u16)> = vec![
        (
            "a key with a slash",
            "POST",
            "/v1/secrets".into(),
            r#"{"key": "a/b", "value": "v"}"#.into(),
            400,
        ),
        (
            "a key too long",
            "POST",
            "/v1/secrets".into(),
            format!(r#"{{"key": "{long_key}", "value": "v"}}"#),
            400,
        ),
        (
            "an empty key",
            "POST",
            "/v1/secrets".into(),
            r#"{"key": "", "value": "v"}"#.into(),
            400,
        ),
        (
            "a value too large",
            "POST",
            "/v1/secrets".into(),
            format!(r#"{{"key": "big", "value": "{big}"}}"#),
            413,
        ),
        (
            "an unknown field",
            "POST",
            "/v1/secrets".into(),
            r#"{"key": "k", "value": "v", "owner": "x"}"#.into(),
            400,
        ),
        (
            "no value",
            "POST",
            "/v1/secrets".into(),
            r#"{"key": "k"}"#.into(),
            400,
        ),
        (
            "a key created twice",
            "POST",
            "/v1/secrets".into(),
            r#"{"key": "partner-token", "value": "v"}"#.into(),
            409,
        ),
        (
            "an update of no secret",
            "PUT",
            "/v1/secrets/nobody".into(),
            r#"{"value": "v"}"#.into(),
            404,
        ),
        (
            "a delete of no secret",
            "DELETE",
            "/v1/secrets/nobody".into(),
            String::new(),
            404,
        ),
    ];
    let mut failures = Vec::new();
    for (name, method, path, json, want) in &admin_cases {
        let body = (!json.is_empty()).then_some(json.as_str());
        let (got, detail) = world.admin(method, path, body, true).await;
        if got != *want {
            failures.push(format!("{name}: got {got}, want {want}: {detail}"));
        }
    }
    // Functions: (name, method, key, body, status)
    let big = vec![b'x'; 64 * 1024 + 1];
    let proxy_cases: [(&str, &str, &str, &[u8], u16); 4] = [
        ("a value too large", "PUT", "partner-token", &big, 413),
        (
            "a value that is not UTF-8",
            "PUT",
            "partner-token",
            &[0xff, 0xfe, 0x00],
            400,
        ),
        ("an invalid key", "GET", "a%2Fb", b"", 400),
        (
            "a method the store does not answer",
            "PATCH",
            "partner-token",
            b"v",
            405,
        ),
    ];
    for (name, method, key, body, want) in &proxy_cases {
        let raw = world.store(method, key, &billing, body, "").await;
        if status(&raw) != *want {
            failures.push(format!("{name}: got {}, want {want}: {raw}", status(&raw)));
        }
    }
    assert_no_failures(&failures, admin_cases.len() + proxy_cases.len());
    let raw = world.store("GET", "partner-token", &billing, b"", "").await;
    assert_eq!(
        (body(&raw), header(&raw, "etag")),
        ("v1", Some("\"1\"")),
        "unchanged"
    );
    let (_, list) = world.admin("GET", "/v1/secrets", None, true).await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1, "{list}");
}
