//! Scheduled invocations through the real binary: the admin API creates schedules, `run`
//! invokes a real function server on loopback through the egress client, and the rules
//! (productive functions, the limit, the payload size) answer with the right status.

use std::sync::{Arc, Mutex};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the function server received: (request line and headers, body).
pub(crate) type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A function server on loopback answering every request with `answer`; returns its port.
pub(crate) async fn serve_function<F, Fut>(answer: F) -> u16
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, hyper::Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
    port
}

/// A function server that answers 200 and records every request.
pub(crate) async fn function_server() -> (u16, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let port = serve_function(move |req: hyper::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            let mut head = format!("{} {}\n", req.method(), req.uri());
            for (name, value) in req.headers() {
                head.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            let body = req.into_body().collect().await?.to_bytes();
            sink.lock()
                .unwrap()
                .push((head, String::from_utf8_lossy(&body).into_owned()));
            Ok(Response::new(Full::new(Bytes::from("ok"))))
        }
    })
    .await;
    (port, received)
}

/// egressd with three functions: `refresh-token` (productive, allowlisted), `blocked`
/// (productive, its host not allowlisted) and `old` (undeployed).
pub(crate) fn scheduler_proxy(port: u16) -> EgressdBuilder {
    let functions = format!(
        "[[functions]]\nname = \"refresh-token\"\nstate = \"productive\"\nurl = \"http://fn.test:{port}/invoke\"\n\
         [[functions]]\nname = \"blocked\"\nstate = \"productive\"\nurl = \"http://blocked.test:{port}/invoke\"\n\
         [[functions]]\nname = \"old\"\nstate = \"undeployed\"\nurl = \"http://fn.test:{port}/old\"\n"
    );
    egressd()
        .allow_local("fn.test")
        .dns("blocked.test", "127.0.0.1")
        .ports(&[443], &[port])
        .table(&functions)
}

/// Creates a schedule through the API (`body` is the JSON request) and returns its id.
pub(crate) async fn create_schedule(proxy: &Egressd, body: &str) -> String {
    let (status, answer) = proxy.admin_json("POST", "/v1/schedules", body).await;
    assert_eq!(status, 201, "{answer}");
    json(&answer)["id"].as_str().unwrap().to_string()
}

/// Runs schedule `id` now through the API; returns the schedule as it then stands.
async fn run_now(proxy: &Egressd, id: &str) -> serde_json::Value {
    let path = format!("/v1/schedules/{id}/run");
    let (status, body) = proxy.admin_json("POST", &path, "").await;
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// The schedule's last run failed with `status`, its reason mentioning `reason`.
fn assert_failure(view: &serde_json::Value, status: &str, reason: &str) {
    assert_eq!(view["last_state"], "failure", "{view}");
    assert_eq!(view["last_status"], status, "{view}");
    let said = view["last_reason"].as_str().unwrap();
    assert!(said.contains(reason), "{view}");
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn a_schedule_runs_through_the_egress_client_with_its_payload_and_headers() {
    let (port, received) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    let (status, body) = proxy
        .admin_json(
            "POST",
            "/v1/schedules",
            r#"{"function": "refresh-token", "cron": "*/5 * * * *", "payload": "{\"grant\": \"refresh\"}"}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let schedule = json(&body);
    let id = schedule["id"].as_str().unwrap().to_string();
    assert!(
        schedule["next_run"].as_str().unwrap().ends_with(":00Z"),
        "{schedule}"
    );

    let (status, body) = proxy
        .admin_json("POST", &format!("/v1/schedules/{id}/run"), "")
        .await;
    assert_eq!(status, 200, "{body}");
    let view = json(&body);
    assert_eq!(view["last_state"], "success", "{view}");
    assert_eq!(view["last_status"], "200");
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (head, payload) = &got[0];
    assert!(head.starts_with("POST /invoke\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains(&format!("x-egress-schedule-id: {id}")),
        "{head}"
    );
    assert!(head.contains("x-egress-scheduled-time: 20"), "{head}");
    assert_eq!(payload, "{\"grant\": \"refresh\"}");
    let series = format!("egressd_schedule_runs_total{{schedule=\"{id}\",outcome=\"success\"}}");
    assert_eq!(proxy.metric(&series).await, 1.0);

    // A restart keeps the schedule and its run.
    let proxy = proxy.restart().await;
    let (_, body) = proxy.admin_get(&format!("/v1/schedules/{id}")).await;
    assert_eq!(json(&body)["last_state"], "success", "{body}");
}

#[tokio::test]
async fn a_denied_invocation_is_a_failure_with_the_reason_never_a_bypass() {
    let (port, received) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    let id = create_schedule(&proxy, r#"{"function": "blocked", "cron": "@hourly"}"#).await;
    let view = run_now(&proxy, &id).await;
    assert_failure(&view, "not-allowlisted", "add \"blocked.test\"");
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing reached the function"
    );
}

#[tokio::test]
async fn the_rules_answer_with_the_field_at_fault() {
    let (port, _) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    let at_limit = "é".repeat(8000);
    let over = "é".repeat(8001);
    // (name, body, status, field)
    let cases = [
        (
            "an undeployed function",
            r#"{"function": "old", "cron": "@daily"}"#.to_string(),
            422,
            Some("function"),
        ),
        (
            "an unknown function",
            r#"{"function": "nope", "cron": "@daily"}"#.to_string(),
            422,
            Some("function"),
        ),
        (
            "an invalid expression",
            r#"{"function": "refresh-token", "cron": "61 * * * *"}"#.to_string(),
            422,
            Some("cron"),
        ),
        (
            "a seconds field",
            r#"{"function": "refresh-token", "cron": "0 */5 * * * *"}"#.to_string(),
            422,
            Some("cron"),
        ),
        (
            "8001 characters",
            format!(r#"{{"function": "refresh-token", "cron": "@daily", "payload": "{over}"}}"#),
            422,
            Some("payload"),
        ),
        (
            "8000 two-byte characters",
            format!(
                r#"{{"function": "refresh-token", "cron": "@daily", "payload": "{at_limit}"}}"#
            ),
            201,
            None,
        ),
        (
            "8000 characters outside the BMP, escaped as json.dumps does (12 bytes each)",
            format!(
                r#"{{"function": "refresh-token", "cron": "@daily", "payload": "{}"}}"#,
                r"\ud83d\ude00".repeat(8000)
            ),
            201,
            None,
        ),
        (
            "8001 escaped characters",
            format!(
                r#"{{"function": "refresh-token", "cron": "@daily", "payload": "{}"}}"#,
                r"\ud83d\ude00".repeat(8001)
            ),
            422,
            Some("payload"),
        ),
        (
            "a body larger than any valid request",
            format!(
                r#"{{"function": "refresh-token", "cron": "@daily", "payload": "{}"}}"#,
                "p".repeat(200_000)
            ),
            413,
            Some("payload"),
        ),
        (
            "an expression over 512 characters",
            format!(
                r#"{{"function": "refresh-token", "cron": "0 0 * * {}"}}"#,
                "1,".repeat(300)
            ),
            422,
            Some("cron"),
        ),
        ("not JSON", "function=refresh-token".to_string(), 400, None),
        (
            "a JSON array, serde's positional form of the fields",
            r#"["refresh-token", "0 0 1 1 *", "pl"]"#.to_string(),
            400,
            None,
        ),
    ];
    for (name, body, status, field) in cases {
        let (got, answer) = proxy.admin_json("POST", "/v1/schedules", &body).await;
        assert_eq!(got, status, "{name}: {answer}");
        if status >= 400 {
            let error = json(&answer);
            assert_eq!(error["field"].as_str(), field, "{name}: {answer}");
            assert!(!error["error"].as_str().unwrap().is_empty(), "{name}");
        }
    }
    let (status, _) = proxy.admin_get("/v1/schedules/sch_nope").await;
    assert_eq!(status, 404);
    let (_, list) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(
        json(&list).as_array().unwrap().len(),
        2,
        "the two 201s only"
    );
}

/// The limit is 8000 characters however a client encodes them: Python's `json.dumps` escapes
/// every character outside ASCII by default, 12 bytes for an emoji.
#[tokio::test]
async fn an_8000_character_payload_from_python_is_taken() {
    let (port, _) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    let script = format!(
        r#"
import json, urllib.request, urllib.error
body = json.dumps({{"function": "refresh-token", "cron": "@daily", "payload": "\U0001F600" * 8000}})
assert len(body) > 96000, len(body)
request = urllib.request.Request("http://{}/v1/schedules", data=body.encode(), method="POST",
                                 headers={{"Content-Type": "application/json"}})
try:
    with urllib.request.urlopen(request) as response:
        print(response.status, len(json.loads(response.read())["payload"]))
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#,
        proxy.admin
    );
    let (code, out, err) = python(&script, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "201 8000", "{err}");
}

#[tokio::test]
async fn twenty_concurrent_creates_make_at_most_ten() {
    let (port, _) = function_server().await;
    let proxy = Arc::new(scheduler_proxy(port).start());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let body =
                format!(r#"{{"function": "refresh-token", "cron": "@hourly", "payload": "{i}"}}"#);
            proxy.admin_json("POST", "/v1/schedules", &body).await.0
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        10,
        "{statuses:?}"
    );
    let (_, body) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn undeploying_a_function_deletes_its_schedules() {
    let (port, _) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    create_schedule(&proxy, r#"{"function": "refresh-token", "cron": "@daily"}"#).await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let undeployed = text.replacen(
        "name = \"refresh-token\"\nstate = \"productive\"",
        "name = \"refresh-token\"\nstate = \"undeployed\"",
        1,
    );
    assert_ne!(text, undeployed);
    write_file(&proxy.config_path, &undeployed, Write::Rename);
    eventually("the schedule to be deleted", || async {
        let (_, body) = proxy.admin_get("/v1/schedules").await;
        json(&body).as_array().unwrap().is_empty().then_some(())
    })
    .await;
}

/// Runs `egressd schedules ARGS --admin URL` with a New York local time.
async fn cli(proxy: &Egressd, args: &[&str]) -> (i32, String, String) {
    let admin = format!("http://{}", proxy.admin);
    let out = tokio::process::Command::new(BIN)
        .arg("schedules")
        .args(args)
        .args(["--admin", &admin])
        .env("TZ", "EST5EDT,M3.2.0,M11.1.0")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_creates_runs_lists_and_deletes() {
    let (port, received) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    let (code, out, err) = cli(
        &proxy,
        &[
            "create",
            "refresh-token",
            "0 3 * * *",
            "--payload",
            "keep-warm",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let id = out.split_whitespace().next().unwrap().to_string();
    assert!(id.starts_with("sch_"), "{out}");
    // 03:00 UTC is 22:00 the evening before in New York (EST).
    assert!(
        out.contains("T03:00:00Z (") && out.contains(" 22:00 -05:00 local)"),
        "{out}"
    );

    let (code, out, err) = cli(&proxy, &["run", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("success, 200 in"), "{out}");
    assert_eq!(received.lock().unwrap()[0].1, "keep-warm");
    assert!(received.lock().unwrap()[0]
        .0
        .contains("content-type: text/plain; charset=utf-8"));

    let (_, out, _) = cli(&proxy, &["list"]).await;
    assert!(out.starts_with(&id), "{out}");
    let (code, _, _) = cli(&proxy, &["delete", &id]).await;
    assert_eq!(code, 0);
    let (_, out, _) = cli(&proxy, &["list"]).await;
    assert_eq!(out, "no schedules\n");

    let (code, _, err) = cli(&proxy, &["create", "old", "@daily"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 422 (function)"), "{err}");
}

#[tokio::test]
async fn a_config_read_half_written_never_deletes_schedules() {
    let (port, _) = function_server().await;
    let proxy = scheduler_proxy(port).start();
    create_schedule(&proxy, r#"{"function": "refresh-token", "cron": "@daily"}"#).await;
    // `cat > egressd.toml` in two writes: the first ends inside the [[functions]] tables,
    // long enough for the watcher to read it.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let cut = text.find("name = \"refresh-token\"").unwrap();
    std::fs::write(&proxy.config_path, &text[..cut]).unwrap();
    proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    std::fs::write(&proxy.config_path, &text).unwrap();
    proxy.wait_allowlist(|v| v["last_error"].is_null()).await;
    let (_, body) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(json(&body).as_array().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn kill_9_loses_no_schedule() {
    let (port, _) = function_server().await;
    let mut proxy = scheduler_proxy(port).start();
    let id = create_schedule(&proxy, r#"{"function": "refresh-token", "cron": "@daily"}"#).await;
    proxy.child.kill().unwrap(); // SIGKILL
    proxy.child.wait().unwrap();
    let proxy = proxy.restart_stopped();
    let (status, body) = proxy.admin_get(&format!("/v1/schedules/{id}")).await;
    assert_eq!(status, 200, "{body}");
}

/// The ids of the schedules egressd lists.
async fn listed_ids(proxy: &Egressd) -> std::collections::BTreeSet<String> {
    let (status, body) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(status, 200, "{body}");
    json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The temp files of interrupted state writes in `dir`.
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

#[tokio::test]
async fn kill_9_inside_a_state_write_leaves_the_last_acknowledged_state() {
    use notify::{EventKind, RecursiveMode, Watcher};
    const ROUNDS: usize = 8;
    let (port, _) = function_server().await;
    let mut proxy = scheduler_proxy(port).start();
    let state_dir = proxy.dir().join("state");
    // Large payloads make each write of schedules.json long (10 × 8000 characters).
    let payload = "p".repeat(8000);
    let create =
        format!(r#"{{"function": "refresh-token", "cron": "@daily", "payload": "{payload}"}}"#);
    let mut acknowledged = listed_ids(&proxy).await;
    let mut landed_inside = 0;
    for round in 0..ROUNDS {
        // SIGKILL the moment a temp file appears in the state dir: between its creation and
        // its rename over schedules.json, the write is under way.
        let pid = rustix::process::Pid::from_raw(proxy.child.id() as i32).unwrap();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let temp = event
                    .paths
                    .iter()
                    .any(|p| p.to_string_lossy().ends_with(".tmp"));
                if temp && matches!(event.kind, EventKind::Create(_)) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            })
            .unwrap();
        watcher
            .watch(&state_dir, RecursiveMode::NonRecursive)
            .unwrap();
        // Changes until the kill: creates up to the limit of 10, then a delete.
        let mut deleting: Option<String>;
        loop {
            let answer = if acknowledged.len() < 10 {
                deleting = None;
                proxy.try_admin_json("POST", "/v1/schedules", &create).await
            } else {
                let id = acknowledged.iter().next().unwrap().clone();
                deleting = Some(id.clone());
                let answer = proxy
                    .try_admin_json("DELETE", &format!("/v1/schedules/{id}"), "")
                    .await;
                if matches!(answer, Some((204, _))) {
                    acknowledged.remove(&id);
                }
                answer
            };
            match answer {
                Some((201, body)) => {
                    acknowledged.insert(json(&body)["id"].as_str().unwrap().to_string());
                }
                Some((204, _)) => {}
                Some(other) => panic!("round {round}: {other:?}"),
                None => break,
            }
        }
        drop(watcher);
        proxy.child.wait().unwrap();
        let left = temp_files(&state_dir);
        landed_inside += usize::from(!left.is_empty());

        // The file parses and holds every acknowledged change, with or without the one that
        // was being written when the kill came; the leftover is cleaned up on start.
        proxy = proxy.restart_stopped();
        let restored = listed_ids(&proxy).await;
        let gained: Vec<_> = restored.difference(&acknowledged).collect();
        let lost: Vec<_> = acknowledged.difference(&restored).collect();
        match &deleting {
            // A create under way: it may be there, as one more schedule.
            None => assert!(
                lost.is_empty() && gained.len() <= 1,
                "round {round}: lost {lost:?}, gained {gained:?}"
            ),
            // A delete under way: that schedule may be gone, nothing else.
            Some(id) => assert!(
                gained.is_empty() && lost.iter().all(|l| *l == id),
                "round {round}: deleting {id}, lost {lost:?}, gained {gained:?}"
            ),
        }
        assert_eq!(
            temp_files(&state_dir),
            Vec::<String>::new(),
            "round {round}"
        );
        acknowledged = restored;
    }
    eprintln!("{landed_inside} of {ROUNDS} kills landed inside a write");
    // Without a kill inside a write this test would prove nothing.
    assert!(landed_inside >= ROUNDS / 2, "{landed_inside} of {ROUNDS}");
}

#[tokio::test]
async fn an_https_function_is_invoked_over_verified_tls() {
    // A self-signed origin: egressd verifies against the Mozilla roots, so the run fails with
    // the TLS reason — proof that it went out as TLS, and that verification is not skipped.
    let (addr, _pem) = tls_origin("secure-fn.test").await;
    let port = addr.port();
    let functions = format!(
        "[[functions]]\nname = \"secure\"\nstate = \"productive\"\nurl = \"https://secure-fn.test:{port}/invoke\"\n"
    );
    let proxy = egressd()
        .allow_local("secure-fn.test")
        .ports(&[port], &[])
        .table(&functions)
        .start();
    let id = create_schedule(&proxy, r#"{"function": "secure", "cron": "@daily"}"#).await;
    let view = run_now(&proxy, &id).await;
    assert_failure(&view, "tls", "unknown issuer");
}

// ---------------------------------------------------------------------------------------------
// The scheduler in this process on a hand-moved clock: minute boundaries, overlaps and
// downtime in milliseconds. The store, the egress client and the function server are the
// real ones, over loopback.

pub(crate) mod on_a_test_clock {
    use super::*;
    use chrono::{DateTime, Utc};
    use egressd::control::config::Config;
    use egressd::egress::resolve::DnsResolver;
    use egressd::egress::{EgressClient, EgressOptions, Snapshot};
    use egressd::metrics::Metrics;
    use egressd::schedule::clock::{Clock, ManualClock};
    use egressd::schedule::service::{RunNowError, Scheduler};
    use egressd::schedule::store::{FileStore, NewSchedule, Schedule};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A scheduler over `dir`'s store, invoking `refresh-token` at the function server on
    /// `port`, on `clock`; serving until the token is cancelled.
    struct Running {
        scheduler: Arc<Scheduler>,
        stop: CancellationToken,
        served: tokio::task::JoinHandle<()>,
    }

    /// An egress client allowing `refresh-token` at the function server on `port`, as a
    /// scheduler in this process uses it.
    pub(crate) fn function_egress(port: u16) -> EgressClient {
        let text = format!(
            "[proxy]\nallow_private_cidrs = [\"127.0.0.0/8\"]\nhttp_ports = [{port}]\n\
             [dns]\noverrides = {{ \"fn.test\" = \"127.0.0.1\" }}\n\
             [[functions]]\nname = \"refresh-token\"\nstate = \"productive\"\nurl = \"http://fn.test:{port}/invoke\"\n\
             [allowlist]\ndomains = [\"fn.test\"]\n"
        );
        let config =
            Config::parse(std::path::Path::new("egressd.toml"), &text).expect("a valid config");
        EgressClient::new(
            Snapshot::handle(config.policy.clone(), config.mtls.clone()),
            DnsResolver::new(&config.dns),
            vec![],
            EgressOptions {
                connect_timeout: Duration::from_secs(5),
                response_header_timeout: Duration::from_secs(60),
            },
        )
    }

    fn start(dir: &std::path::Path, port: u16, clock: &ManualClock) -> Running {
        let egress = function_egress(port);
        let store = FileStore::open(dir).expect("the store opens");
        let scheduler = Scheduler::new(
            Arc::new(store),
            Arc::new(egress),
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
            Arc::new(clock.clone()),
        );
        let stop = CancellationToken::new();
        let served = tokio::spawn(scheduler.clone().serve(stop.clone()));
        Running {
            scheduler,
            stop,
            served,
        }
    }

    impl Running {
        async fn create(&self, cron: &str) -> Schedule {
            let new =
                NewSchedule::new("refresh-token", cron, "", |f| f == "refresh-token").unwrap();
            self.scheduler.create(new).await.unwrap()
        }

        /// The states of `id`'s runs, oldest first.
        async fn states(&self, id: &str) -> Vec<(String, String)> {
            let schedule = self.scheduler.get(id).await.unwrap().unwrap();
            schedule
                .runs
                .iter()
                .map(|r| {
                    let state = serde_json::to_value(r.state).unwrap();
                    (
                        r.scheduled_for.to_rfc3339(),
                        state.as_str().unwrap().to_string(),
                    )
                })
                .collect()
        }

        async fn stop(self) {
            self.stop.cancel();
            self.served.await.unwrap();
        }
    }

    /// A function that counts its calls and answers each only when the test adds a permit:
    /// (port, permits, calls).
    async fn held_function() -> (
        u16,
        Arc<tokio::sync::Semaphore>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let port = {
            let (release, calls) = (release.clone(), calls.clone());
            serve_function(move |_req: hyper::Request<hyper::body::Incoming>| {
                let (release, calls) = (release.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    release.acquire().await.unwrap().forget();
                    Ok(Response::new(Full::new(Bytes::from("ok"))))
                }
            })
            .await
        };
        (port, release, calls)
    }

    /// Lets the scheduler's task see the clock's move.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_schedule_fires_at_the_minute_boundary_never_early() {
        let (port, received) = function_server().await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at("2026-12-03T10:00:30Z"));
        let running = start(dir.path(), port, &clock);
        running.create("* * * * *").await;
        settle().await;
        clock.advance(Duration::from_secs(29));
        settle().await;
        assert!(received.lock().unwrap().is_empty(), "not at 10:00:59");
        clock.advance(Duration::from_secs(1));
        eventually("the 10:01 run", || async {
            (!received.lock().unwrap().is_empty()).then_some(())
        })
        .await;
        let (head, _) = received.lock().unwrap()[0].clone();
        assert!(
            head.contains("x-egress-scheduled-time: 2026-12-03T10:01:00Z"),
            "{head}"
        );
        running.stop().await;
    }

    #[tokio::test]
    async fn runs_of_one_schedule_never_overlap() {
        let (port, release, calls) = held_function().await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at("2026-12-03T10:00:30Z"));
        let running = start(dir.path(), port, &clock);
        let id = running.create("* * * * *").await.id;
        settle().await;
        clock.advance(Duration::from_secs(30));
        eventually("the 10:01 run to reach the function", || async {
            (calls.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        // A run by hand while the scheduled one goes is refused.
        assert!(matches!(
            running.scheduler.run_now(&id).await,
            Err(RunNowError::Busy(_))
        ));
        // The next boundary finds it still going: skipped, not started.
        clock.advance(Duration::from_secs(60));
        let states = eventually("the 10:02 run to be skipped", || async {
            let states = running.states(&id).await;
            (!states.is_empty()).then_some(states)
        })
        .await;
        assert_eq!(
            states,
            [(
                "2026-12-03T10:02:00+00:00".to_string(),
                "skipped".to_string()
            )]
        );
        release.add_permits(1);
        eventually("the 10:01 run to finish", || async {
            (running.states(&id).await.len() == 2).then_some(())
        })
        .await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A scheduled run that comes while a run by hand goes is skipped too.
        let by_hand = {
            let scheduler = running.scheduler.clone();
            let id = id.clone();
            tokio::spawn(async move { scheduler.run_now(&id).await })
        };
        eventually("the run by hand to reach the function", || async {
            (calls.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
        })
        .await;
        clock.advance(Duration::from_secs(60));
        eventually("the 10:03 run to be skipped", || async {
            running
                .states(&id)
                .await
                .iter()
                .any(|(at, state)| at == "2026-12-03T10:03:00+00:00" && state == "skipped")
                .then_some(())
        })
        .await;
        release.add_permits(1);
        by_hand.await.unwrap().unwrap();
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "no overlap"
        );
        running.stop().await;
    }

    #[tokio::test]
    async fn a_run_still_going_at_shutdown_is_cut_after_the_grace_and_recorded() {
        // A function that never answers.
        let port = serve_function(|_req: hyper::Request<hyper::body::Incoming>| async {
            std::future::pending::<()>().await;
            Ok(Response::new(Full::new(Bytes::new())))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at("2026-12-03T10:00:30Z"));
        let running = start(dir.path(), port, &clock);
        let id = running.create("* * * * *").await.id;
        settle().await;
        clock.advance(Duration::from_secs(30));
        settle().await;
        running.stop.cancel();
        // The function never answers: only the cut at the end of the grace records the run.
        running.scheduler.drain(Duration::from_millis(300)).await;
        let schedule = running.scheduler.get(&id).await.unwrap().unwrap();
        let run = schedule.runs.back().expect("the cut run is recorded");
        assert_eq!(run.status.to_string(), "shutdown", "{run:?}");
        assert!(run.reason.as_deref().unwrap().contains("shutdown_grace"));
    }

    /// An operator who starts a run by hand and hangs up (the admin request is dropped)
    /// does not leave the schedule counted as running for good.
    #[tokio::test]
    async fn a_run_by_hand_whose_request_is_dropped_frees_the_schedule() {
        let (port, release, calls) = held_function().await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at("2026-12-03T10:00:30Z"));
        let running = start(dir.path(), port, &clock);
        let id = running.create("@yearly").await.id;
        let by_hand = |scheduler: Arc<Scheduler>, id: String| {
            tokio::spawn(async move { scheduler.run_now(&id).await })
        };
        let first = by_hand(running.scheduler.clone(), id.clone());
        eventually("the first run to reach the function", || async {
            (calls.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        first.abort();
        let _ = first.await;
        let second = by_hand(running.scheduler.clone(), id.clone());
        eventually("a second run by hand to reach the function", || async {
            (calls.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
        })
        .await;
        release.add_permits(2);
        assert!(second.await.unwrap().is_ok());
        running.stop().await;
    }

    #[tokio::test]
    async fn runs_missed_while_down_are_recorded_and_only_the_newest_fires() {
        let (port, received) = function_server().await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at("2026-12-03T10:00:30Z"));
        let running = start(dir.path(), port, &clock);
        let id = running.create("* * * * *").await.id;
        running.stop().await;
        // Down across two minute boundaries.
        clock.set(at("2026-12-03T10:02:01Z"));
        let running = start(dir.path(), port, &clock);
        let states = eventually("the restart to handle the missed runs", || async {
            let states = running.states(&id).await;
            (states.len() == 2).then_some(states)
        })
        .await;
        let states: Vec<(&str, &str)> = states
            .iter()
            .map(|(at, state)| (at.as_str(), state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("2026-12-03T10:01:00+00:00", "missed"),
                ("2026-12-03T10:02:00+00:00", "success")
            ]
        );
        assert_eq!(received.lock().unwrap().len(), 1, "no burst");
        assert_eq!(running.scheduler.now(), clock.now());
        running.stop().await;
    }
}
