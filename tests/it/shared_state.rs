//! Several replicas on one PostgreSQL (`[state] backend = "postgres"`): the schema applied
//! once however many start together, the schedule limit held across replicas, each tick
//! invoked once, and a database that cannot be used refused with a clear error. A real
//! PostgreSQL ([`crate::support::postgres`]), real `egressd` processes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::schedules::{function_server, scheduler_proxy, Received};
use crate::support::postgres::{self, TestDb};
use crate::support::*;

/// The `[state]` table for `db`.
fn state_table(url: &str) -> String {
    format!("[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n")
}

/// A replica of the scheduler proxy (functions at `port`) on `db`.
fn replica(port: u16, db: &TestDb) -> EgressdBuilder {
    scheduler_proxy(port).table(&state_table(&db.url))
}

/// Starts `n` replicas at the same moment (each start waits for its listening line).
fn start_replicas(n: usize, port: u16, db: &TestDb) -> Vec<Egressd> {
    std::thread::scope(|scope| {
        let starting: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| replica(port, db).start()))
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    })
}

/// `egressd check` on a config whose `[state]` is `state`: (exit code, stdout + stderr).
fn check_with_state(state: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = egressd().table(state).write_config(dir.path());
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A database whose schema a newer egressd wrote: its version table says 99.
fn newer_schema() -> TestDb {
    let db = postgres::database();
    db.execute(
        "CREATE TABLE egressd_schema (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO egressd_schema (version, name) VALUES (99, 'from the future');",
    );
    db
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn check_reports_the_database_and_its_schema() {
    let fresh = postgres::database();
    let newer = newer_schema();
    let closed = closed_port();
    let missing = format!(
        "postgres://{0}:{1}@127.0.0.1:{2}/no_such_db",
        fresh.name,
        postgres::PASSWORD,
        fresh.port
    );
    let unreachable = format!("postgres://egressd:pw@127.0.0.1:{}/egressd", *closed);
    let wrong_password = fresh.url_with_password("not-the-password");
    // (name, [state] url, exit code, words in the output)
    let cases = [
        (
            "a database without the schema",
            fresh.url.clone(),
            0,
            "no schema yet",
        ),
        (
            "a wrong password",
            wrong_password,
            1,
            "password authentication failed",
        ),
        (
            "no server on the port",
            unreachable,
            1,
            "cannot reach the database",
        ),
        (
            "a database that does not exist",
            missing,
            1,
            "does not exist",
        ),
        (
            "a schema from a newer egressd",
            newer.url.clone(),
            1,
            "version 99, newer than this egressd",
        ),
        (
            "not a postgres URL",
            "mysql://egressd@db/egressd".into(),
            1,
            "state.url",
        ),
    ];
    let mut failures = Vec::new();
    for (name, url, code, words) in &cases {
        let (got, output) = check_with_state(&state_table(url));
        if got != *code || !output.contains(words) {
            failures.push(format!(
                "{name}: exit {got} (wanted {code}), output lacks {words:?}:\n{output}"
            ));
        }
        if output.contains(postgres::PASSWORD) {
            failures.push(format!("{name}: the output shows the password:\n{output}"));
        }
    }
    assert_no_failures(&failures, cases.len());
    assert_eq!(
        fresh.query_text("SELECT to_regclass('egressd_schema')::text"),
        None,
        "check writes nothing"
    );
}

/// TLS to the database goes through rustls and verifies the server: with the CA that signed
/// its certificate (`state.ca_file`) the check connects; with the default roots, or a
/// certificate for another name, it refuses and says why.
#[test]
fn tls_to_the_database_verifies_the_server() {
    use crate::support::mtls::{Ca, Files};
    let ca = Ca::new("db test CA");
    let (cert, key) = ca.issue("db", &["127.0.0.1"]);
    let server = postgres::OwnServer::start_with_tls(&cert, &key);
    let db = server.database();
    let files = Files::new();
    let ca_file = files.write("db-ca.crt", &ca.pem);
    let other_ca = files.write("other-ca.crt", &Ca::new("another CA").pem);
    let require = format!("{}?sslmode=require", db.url);
    let with_ca = |url: &str, ca: &std::path::Path| {
        format!("{}ca_file = \"{}\"\n", state_table(url), ca.display())
    };
    // (name, [state] table, exit code, words in the output)
    let cases = [
        (
            "sslmode=require with its CA",
            with_ca(&require, &ca_file),
            0,
            "no schema yet",
        ),
        (
            "sslmode=require with another CA",
            with_ca(&require, &other_ca),
            1,
            "cannot reach the database",
        ),
        (
            "sslmode=require with the Mozilla roots",
            state_table(&require),
            1,
            "UnknownIssuer",
        ),
        (
            "the default (prefer) with its CA",
            with_ca(&db.url, &ca_file),
            0,
            "no schema yet",
        ),
    ];
    let mut failures = Vec::new();
    for (name, table, code, words) in &cases {
        let (got, output) = check_with_state(table);
        if got != *code || !output.contains(words) {
            failures.push(format!(
                "{name}: exit {got} (wanted {code}), output lacks {words:?}:\n{output}"
            ));
        }
    }
    assert_no_failures(&failures, cases.len());
}

#[tokio::test]
async fn a_database_egressd_cannot_use_stops_the_start_and_writes_nothing() {
    let (port, _) = function_server().await;
    let newer = newer_schema();
    let fresh = postgres::database();
    // (name, url, words in the error)
    let cases = [
        (
            "a schema from a newer egressd",
            newer.url.clone(),
            "newer than this egressd",
        ),
        (
            "a wrong password",
            fresh.url_with_password("nope"),
            "password authentication failed",
        ),
    ];
    let mut failures = Vec::new();
    for (name, url, words) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let builder = scheduler_proxy(port).table(&state_table(url));
        let config = builder.write_config(dir.path());
        let (code, stderr) = builder.run_to_exit(&config).await;
        if code == Some(0) || !stderr.contains(words) {
            failures.push(format!(
                "{name}: exit {code:?}, stderr lacks {words:?}:\n{stderr}"
            ));
        }
    }
    assert_no_failures(&failures, cases.len());
    let tables = newer.query_text(
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables.as_deref(), Some("egressd_schema"), "nothing created");
    assert_eq!(
        fresh.query_text("SELECT to_regclass('egressd_schema')::text"),
        None,
        "nothing written with a wrong password"
    );
}

#[tokio::test]
async fn thirty_creates_over_three_replicas_started_together_leave_ten() {
    let (port, _) = function_server().await;
    let db = postgres::database();
    let replicas: Vec<Arc<Egressd>> = start_replicas(3, port, &db)
        .into_iter()
        .map(Arc::new)
        .collect();
    assert_eq!(
        db.query_text("SELECT string_agg(version::text, ',' ORDER BY version) FROM egressd_schema")
            .as_deref(),
        Some("1,2,3"),
        "each migration applied once by replicas that started together"
    );
    let mut tasks = Vec::new();
    for i in 0..30 {
        let replica = replicas[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let body =
                format!(r#"{{"function": "refresh-token", "cron": "@hourly", "payload": "{i}"}}"#);
            replica.admin_json("POST", "/v1/schedules", &body).await.0
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let created = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((created, refused), (10, 20), "{statuses:?}");
    for (n, replica) in replicas.iter().enumerate() {
        let (_, body) = replica.admin_get("/v1/schedules").await;
        assert_eq!(json(&body).as_array().unwrap().len(), 10, "replica {n}");
    }
    // Deleted on one replica, gone on every one; created on another, seen by all.
    let (_, body) = replicas[0].admin_get("/v1/schedules").await;
    let id = json(&body)[0]["id"].as_str().unwrap().to_string();
    let (status, _) = replicas[1]
        .admin_json("DELETE", &format!("/v1/schedules/{id}"), "")
        .await;
    assert_eq!(status, 200);
    for replica in &replicas {
        let (status, _) = replica.admin_get(&format!("/v1/schedules/{id}")).await;
        assert_eq!(status, 404);
    }
}

/// The scheduled times the function server received, with how often each came.
fn invocations(received: &Received) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (head, _) in received.lock().unwrap().iter() {
        // Proxied requests of the tests reach the same server, without the header.
        if let Some(time) = head
            .lines()
            .find_map(|l| l.strip_prefix("x-egress-scheduled-time: "))
        {
            *counts.entry(time.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Three real replicas, an every-minute schedule, two real minute boundaries; one replica
/// is killed with SIGKILL before the second. Each tick is invoked once, and the ledger
/// (read through a surviving replica) says success for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_invoke_each_tick_once_even_when_one_is_killed() {
    let (port, received) = function_server().await;
    let db = postgres::database();
    let mut replicas = start_replicas(3, port, &db);
    let (status, answer) = replicas[0]
        .admin_json(
            "POST",
            "/v1/schedules",
            r#"{"function": "refresh-token", "cron": "* * * * *"}"#,
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let id = json(&answer)["id"].as_str().unwrap().to_string();
    let first = eventually_within(
        "the first minute's run",
        Duration::from_secs(75),
        || async { invocations(&received).into_keys().next() },
    )
    .await;
    // The killed one may be the one that fired: the others take the next tick.
    let killed = replicas.remove(1);
    drop(killed);
    let second = eventually_within(
        "the second minute's run",
        Duration::from_secs(75),
        || async { invocations(&received).into_keys().find(|t| *t != first) },
    )
    .await;
    // Past the second tick, a moment for any late duplicate to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = invocations(&received);
    assert_eq!(
        counts,
        BTreeMap::from([(first.clone(), 1), (second.clone(), 1)]),
        "one invocation per tick"
    );
    let runs = eventually("both runs in the ledger", || async {
        let (_, body) = replicas[1].admin_get(&format!("/v1/schedules/{id}")).await;
        let view = json(&body);
        let runs = view["runs"].as_array()?.clone();
        (runs.len() == 2).then_some(runs)
    })
    .await;
    for run in &runs {
        assert_eq!(run["state"], "success", "{run}");
    }
}

/// The database stopped with `pg_ctl stop -m immediate` while two replicas serve, then
/// started again: allowed requests keep passing through all of it; admin writes are refused
/// with 503 `state-unavailable` while it is away and the status and the metric say so; once
/// it is back the replicas take writes again and the schedule fires, once per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_no_request_and_fires_nothing_twice() {
    let server = postgres::OwnServer::start();
    let db = server.database();
    let (port, received) = function_server().await;
    let replicas = start_replicas(2, port, &db);
    let (status, answer) = replicas[0]
        .admin_json(
            "POST",
            "/v1/schedules",
            r#"{"function": "refresh-token", "cron": "* * * * *"}"#,
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads: Vec<_> = replicas
        .iter()
        .map(|r| keep_alive_client(r.proxy, port, stop.clone()))
        .collect();

    server.stop_immediately();
    for replica in &replicas {
        eventually(
            "the status and the metric to say the state is unavailable",
            || async {
                let (_, body) = replica.admin_get("/v1/status").await;
                let down = metric(&replica.metrics().await, "egressd_state_backend_up") == 0.0;
                (json(&body)["state"]["up"] == false && down).then_some(())
            },
        )
        .await;
    }
    let create = r#"{"function": "refresh-token", "cron": "@hourly"}"#;
    let refused = raw_exchange(
        replicas[1].admin,
        format!(
            "POST /v1/schedules HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{create}",
            create.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(crate::support::status(&refused), 503, "{refused:?}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("x-egress-error: state-unavailable"),
        "{refused:?}"
    );
    // Requests keep flowing while it is away.
    tokio::time::sleep(Duration::from_secs(2)).await;

    server.restart();
    for replica in &replicas {
        eventually("the status to say the state is back", || async {
            let (_, body) = replica.admin_get("/v1/status").await;
            (json(&body)["state"]["up"] == true).then_some(())
        })
        .await;
    }
    let (status, answer) = replicas[1]
        .admin_json("POST", "/v1/schedules", create)
        .await;
    assert_eq!(status, 201, "writes are taken again: {answer}");
    let before = invocations(&received).len();
    eventually_within(
        "a tick fired after the outage",
        Duration::from_secs(75),
        || async { (invocations(&received).len() > before).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for load in loads {
        let (ok, failed) = load.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed of {}: {failed:?}",
            failed.len(),
            ok as usize + failed.len()
        );
        assert!(ok > 50, "the loop ran: {ok}");
    }
    let twice: Vec<_> = invocations(&received)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "no tick fired twice: {twice:?}");
}

/// Schedulers in this process on one database, each with a clock of its own: the ledger
/// and the claim rule seen up close, over hundreds of simulated minutes.
mod in_process {
    use super::*;
    use chrono::{DateTime, Utc};
    use egressd::metrics::Metrics;
    use egressd::schedule::clock::ManualClock;
    use egressd::schedule::service::Scheduler;
    use egressd::schedule::store::{Claim, NewSchedule, ScheduleStore};
    use egressd::state::postgres::schedules::PgScheduleStore;
    use egressd::state::postgres::Database;
    use egressd::state::{parse_url, PgSettings};
    use tokio_util::sync::CancellationToken;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    async fn open_store(db: &TestDb, replica: &str) -> Arc<PgScheduleStore> {
        let settings = PgSettings {
            url: Some(parse_url(&db.url).unwrap()),
            source: "test".into(),
            ca_file: None,
        };
        let database = Database::open(&settings, replica).await.unwrap();
        Arc::new(PgScheduleStore::new(
            database,
            tokio::runtime::Handle::current(),
        ))
    }

    /// One scheduler replica serving on `clock` until stopped.
    struct Replica {
        scheduler: Arc<Scheduler>,
        stop: CancellationToken,
        served: tokio::task::JoinHandle<()>,
    }

    async fn start(db: &TestDb, name: &str, port: u16, clock: &ManualClock) -> Replica {
        let scheduler = Scheduler::new(
            open_store(db, name).await,
            Arc::new(crate::schedules::on_a_test_clock::function_egress(port)),
            Duration::from_secs(30),
            Arc::new(Metrics::new()),
            Arc::new(clock.clone()),
        );
        let stop = CancellationToken::new();
        let served = tokio::spawn(scheduler.clone().serve(stop.clone()));
        Replica {
            scheduler,
            stop,
            served,
        }
    }

    impl Replica {
        async fn stop(self) {
            self.stop.cancel();
            self.served.await.unwrap();
            self.scheduler.drain(Duration::from_secs(5)).await;
        }
    }

    /// xorshift64: a seeded sequence, so a failure can be replayed with its seed.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Three schedulers whose clocks differ by seconds, two every-minute schedules, 90
    /// simulated minutes with replicas stopped and started at random (sometimes all of them
    /// at once). Every tick is invoked at most once; a tick with a replica alive is invoked
    /// exactly once; the ledger's successes are exactly the invocations; a tick with none
    /// alive is recorded missed once one returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_schedulers_fire_each_tick_once_through_random_stops_and_restarts() {
        let seed = std::env::var("EGRESSD_REPLICA_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        let mut rng = Rng(seed);
        let (port, received) = function_server().await;
        let db = postgres::database();
        let base = at("2026-12-03T10:00:30Z");
        let skews = [-3i64, 0, 2];
        let clocks: Vec<ManualClock> = skews
            .iter()
            .map(|s| ManualClock::new(base + chrono::Duration::seconds(*s)))
            .collect();
        let mut replicas: Vec<Option<Replica>> = Vec::new();
        for (n, clock) in clocks.iter().enumerate() {
            replicas.push(Some(start(&db, &format!("r{n}"), port, clock).await));
        }
        for _ in 0..2 {
            let new = NewSchedule::new("refresh-token", "* * * * *", "", |_| true).unwrap();
            replicas[0]
                .as_ref()
                .unwrap()
                .scheduler
                .create(new)
                .await
                .unwrap();
        }
        let minutes = 90;
        let mut alive_at = Vec::new();
        for minute in 1..=minutes {
            // Stop or start one replica now and then.
            let n = rng.below(3) as usize;
            match (rng.below(6), replicas[n].is_some()) {
                (0, true) => replicas[n].take().unwrap().stop().await,
                (0..=2, false) => {
                    replicas[n] =
                        Some(start(&db, &format!("r{n}-{minute}"), port, &clocks[n]).await)
                }
                _ => {}
            }
            for clock in &clocks {
                clock.advance(Duration::from_secs(60));
            }
            let tick = base + chrono::Duration::minutes(minute) - chrono::Duration::seconds(30);
            let alive = replicas.iter().any(Option::is_some);
            alive_at.push(alive);
            if alive {
                let sql = format!(
                    "SELECT count(*)::text FROM egressd_runs WHERE scheduled_for = '{}' AND state <> 'running'",
                    tick.to_rfc3339()
                );
                eventually(
                    &format!("minute {minute} recorded (seed {seed})"),
                    || async { (db.query_text(&sql).as_deref() == Some("2")).then_some(()) },
                )
                .await;
            }
        }
        for replica in replicas.into_iter().flatten() {
            replica.stop().await;
        }
        let counts = invocations(&received);
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 2).collect();
        assert!(
            twice.is_empty(),
            "each tick invoked once per schedule (two schedules), seed {seed}: {twice:?}"
        );
        let invoked: usize = counts.values().sum();
        let successes = db
            .query_text("SELECT count(*)::text FROM egressd_runs WHERE state = 'success'")
            .unwrap();
        assert_eq!(successes, invoked.to_string(), "seed {seed}");
        let alive_minutes = alive_at.iter().filter(|a| **a).count();
        assert!(
            invoked >= 2 * alive_minutes,
            "every minute with a replica alive fired, seed {seed}: {invoked} invocations, {alive_minutes} such minutes"
        );
        let open = db.query_text(
            "SELECT count(*)::text FROM egressd_runs WHERE state = 'running' OR status = 'abandoned'",
        );
        assert_eq!(open.as_deref(), Some("0"), "seed {seed}");
    }

    /// The claim rule up close: one winner per tick; a run due while another is going is
    /// busy; a claim whose lease runs out without an outcome is marked abandoned and never
    /// claimed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_whose_replica_dies_is_abandoned_not_run_twice() {
        let db = postgres::database();
        let a = open_store(&db, "a").await;
        let b = open_store(&db, "b").await;
        let new = NewSchedule::new("refresh-token", "* * * * *", "", |_| true).unwrap();
        let id = {
            let a = a.clone();
            tokio::task::spawn_blocking(move || a.create(new, at("2026-12-03T10:00:00Z")))
                .await
                .unwrap()
                .unwrap()
                .id
        };
        let claim = |store: &Arc<PgScheduleStore>, nominal: &str, lease_ms: u64| {
            let (store, id, nominal) = (store.clone(), id.clone(), at(nominal));
            tokio::task::spawn_blocking(move || {
                store
                    .claim(&id, nominal, Duration::from_millis(lease_ms))
                    .unwrap()
            })
        };
        // (who, tick, lease, expected)
        let steps: [(&Arc<PgScheduleStore>, &str, u64, Claim); 3] = [
            (&a, "2026-12-03T10:01:00Z", 300, Claim::Won),
            (&b, "2026-12-03T10:01:00Z", 300, Claim::Taken),
            (&b, "2026-12-03T10:02:00Z", 300, Claim::Busy),
        ];
        for (n, (store, tick, lease, expected)) in steps.into_iter().enumerate() {
            assert_eq!(
                claim(store, tick, lease).await.unwrap(),
                expected,
                "step {n}"
            );
        }
        // `a` dies holding its claim: after the lease, `b` marks it abandoned.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let abandoned = {
            let b = b.clone();
            tokio::task::spawn_blocking(move || b.abandon_expired().unwrap())
                .await
                .unwrap()
        };
        assert_eq!(abandoned, vec![(id.clone(), at("2026-12-03T10:01:00Z"))]);
        assert_eq!(
            claim(&b, "2026-12-03T10:01:00Z", 300).await.unwrap(),
            Claim::Taken,
            "an abandoned tick is never claimed again"
        );
        assert_eq!(
            claim(&b, "2026-12-03T10:02:00Z", 300).await.unwrap(),
            Claim::Won,
            "the next tick is free once the dead claim is settled"
        );
        let schedule = {
            let b = b.clone();
            tokio::task::spawn_blocking(move || b.get(&id).unwrap().unwrap())
                .await
                .unwrap()
        };
        let first = &schedule.runs[0];
        assert_eq!(
            (first.state.as_str(), first.status.to_string().as_str()),
            ("failure", "abandoned")
        );
    }
}

/// A replica whose file allows `domains`, on `db`, with the activation delay `delay`,
/// tunnelling to loopback port `port`.
fn allowlist_replica(db: &TestDb, domains: &[&str], delay: &str, port: u16) -> EgressdBuilder {
    let mut builder = egressd()
        .proxy(&format!("activation_delay = \"{delay}\""))
        .ports(&[port], &[port])
        .table(&state_table(&db.url));
    for name in ["file.test", "shared.test", "late.test"] {
        builder = builder.dns(name, "127.0.0.1");
    }
    for domain in domains {
        builder = builder.allow(domain);
    }
    builder
}

/// `GET /v1/allowlist`'s entry for `pattern`.
async fn entry(replica: &Egressd, pattern: &str) -> Option<serde_json::Value> {
    let (_, body) = replica.admin_get("/v1/allowlist").await;
    json(&body)["entries"]
        .as_array()?
        .iter()
        .find(|e| e["pattern"] == pattern)
        .cloned()
}

/// The console's Add on one replica is in force on the other within two seconds, with the
/// same activation time; the file's entries are shown as such and are not removable there;
/// the bin icon's remove on the other replica cuts a tunnel open through the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_edit_on_one_replica_is_in_force_on_every_replica() {
    use tokio::io::AsyncWriteExt;
    let echo = echo_server().await;
    let db = postgres::database();
    let a = allowlist_replica(&db, &["file.test"], "0s", echo.port()).start();
    let b = allowlist_replica(&db, &["file.test"], "0s", echo.port()).start();

    let (status, answer) = a
        .admin_json("POST", "/v1/allowlist", r#"{"domain": "shared.test"}"#)
        .await;
    assert_eq!(status, 201, "{answer}");
    let on_b = eventually_within(
        "the entry on the other replica",
        Duration::from_secs(2),
        || async { entry(&b, "shared.test").await },
    )
    .await;
    let on_a = entry(&a, "shared.test").await.unwrap();
    assert_eq!(on_a["active_at"], on_b["active_at"], "{on_a} {on_b}");
    assert_eq!(on_b["source"], "shared");
    assert_eq!(on_b["removable"], true);
    let file_entry = entry(&b, "file.test").await.unwrap();
    assert_eq!(
        (&file_entry["source"], &file_entry["removable"]),
        (&"file".into(), &false.into())
    );
    let (status, answer) = b.admin_json("DELETE", "/v1/allowlist/file.test", "").await;
    assert_eq!(
        status, 409,
        "the file's entries are changed in the file: {answer}"
    );
    assert!(answer.contains("config file"), "{answer}");

    let mut tunnel = open_tunnel(b.proxy, &format!("shared.test:{}", echo.port())).await;
    tunnel.write_all(b"still open").await.unwrap();
    let (status, answer) = a
        .admin_json("DELETE", "/v1/allowlist/shared.test", "")
        .await;
    assert_eq!(status, 200, "{answer}");
    let cut = tokio::time::timeout(
        Duration::from_secs(2),
        read_to_close(&mut tunnel, "the tunnel"),
    );
    assert!(
        cut.await.is_ok(),
        "the removal on one replica cuts the tunnel through the other within 2 s"
    );
    assert_eq!(entry(&b, "shared.test").await, None);
}

/// Replicas agree on the activation time of an entry of their file: the one whose file
/// gets it first writes it, the other takes it when its file catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_on_the_activation_time_of_a_file_entry() {
    let echo = echo_server().await;
    let db = postgres::database();
    let a = allowlist_replica(&db, &["file.test"], "60s", echo.port()).start();
    let b = allowlist_replica(&db, &["file.test", "late.test"], "60s", echo.port()).start();
    let first = entry(&b, "late.test").await.unwrap();
    assert_eq!(first["state"], "pending", "{first}");
    assert_eq!(
        entry(&a, "file.test").await.unwrap()["state"],
        "active",
        "the first start activates the file's entries at once"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.set_domains(&["file.test", "late.test"], Write::Rename);
    a.wait_generation_above(1).await;
    let later = entry(&a, "late.test").await.unwrap();
    assert_eq!(later["active_at"], first["active_at"], "{later} {first}");
    assert_eq!(later["added_at"], first["added_at"]);
}

/// Keep-alive GETs through `addr` until `stop`, reconnecting after a response that says
/// `Connection: close` (as real clients do), and on a connection closed between requests
/// before anything was sent. Returns (ok, the failures).
fn keep_alive_client(
    addr: std::net::SocketAddr,
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        let request = http_get(&format!("fn.test:{port}"), "/ping");
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut stream: Option<tokio::net::TcpStream> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let conn = match stream.as_mut() {
                Some(conn) => conn,
                None => match tokio::net::TcpStream::connect(addr).await {
                    Ok(conn) => stream.insert(conn),
                    Err(err) => {
                        failed.push(format!("connect: {err}"));
                        continue;
                    }
                },
            };
            if let Err(err) = conn.write_all(request.as_bytes()).await {
                failed.push(format!("write: {err}"));
                stream = None;
                continue;
            }
            // The head, then the Content-Length body.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            let complete = loop {
                match conn.read(&mut byte).await {
                    Ok(1) => {
                        head.push(byte[0]);
                        if head.ends_with(b"\r\n\r\n") {
                            break true;
                        }
                    }
                    _ => break false,
                }
            };
            let head = String::from_utf8_lossy(&head).to_string();
            if !complete {
                failed.push(format!("no response on a kept-alive connection: {head:?}"));
                stream = None;
                continue;
            }
            let len: usize = header(&head, "content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if conn.read_exact(&mut body).await.is_err() {
                failed.push("a cut body".into());
                stream = None;
                continue;
            }
            match head.starts_with("HTTP/1.1 200") {
                true => ok += 1,
                false => failed.push(head.lines().next().unwrap_or("").to_string()),
            }
            if header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                stream = None;
            }
        }
        (ok, failed)
    })
}

/// A rolling restart of three replicas behind a balancer that follows `/readyz`, as a
/// Deployment with `maxUnavailable: 0` does it: a new replica starts, is ready, and only then
/// is an old one sent SIGTERM. Clients on keep-alive connections see no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_a_balancer_fails_no_request() {
    use crate::support::balancer::Balancer;
    let (port, _) = function_server().await;
    let db = postgres::database();
    let builder = || replica(port, &db).drain_delay("1s");
    let balancer = Balancer::start().await;
    let mut replicas: Vec<Egressd> = (0..3).map(|_| builder().start()).collect();
    for r in &replicas {
        balancer.add(r.proxy, r.admin);
    }
    for r in &replicas {
        let proxy = r.proxy;
        eventually("every replica ready", || async {
            balancer.is_ready(proxy).then_some(())
        })
        .await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| keep_alive_client(balancer.addr, port, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let fresh = builder().start();
        balancer.add(fresh.proxy, fresh.admin);
        let proxy = fresh.proxy;
        eventually("the new replica ready", || async {
            balancer.is_ready(proxy).then_some(())
        })
        .await;
        let mut old = replicas.remove(0);
        old.signal("TERM");
        assert_eq!(
            old.wait_exit().await,
            Some(0),
            "a clean exit after the drain"
        );
        balancer.remove(old.proxy);
        replicas.push(fresh);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
        total += ok;
    }
    assert!(total > 100, "the clients ran: {total} requests");
}

/// A replica with the secret store on `db`: the same key file as every other, function
/// `billing` (token in its dir), and `Authorization` injected for it towards `api.test`.
fn secrets_replica(db: &TestDb, port: u16, dir: &std::path::Path) -> Egressd {
    std::fs::write(dir.join("secrets.key"), "7".repeat(64)).unwrap();
    set_mode(&dir.join("secrets.key"), 0o600);
    std::fs::write(
        dir.join("billing.token"),
        "billing-token-0123456789abcdef\n",
    )
    .unwrap();
    egressd()
        .allow_local("api.test")
        .ports(&[], &[port])
        .table(&state_table(&db.url))
        .table("[secrets]\nkey_file = \"secrets.key\"\n")
        .table(&format!(
            "[[functions]]\nname = \"billing\"\nstate = \"productive\"\nurl = \"http://api.test:{port}/billing\"\ntoken_file = \"billing.token\"\n"
        ))
        .table("[[inject]]\nhost = \"api.test\"\nheader = \"Authorization\"\nvalue = \"Bearer {secret:partner-token}\"\ntls = false\n")
        .start_in(dir)
}

/// A request through `proxy` as function `billing`: the raw response.
async fn as_billing(proxy: std::net::SocketAddr, method: &str, url: &str, body: &str) -> String {
    use base64::Engine as _;
    let auth =
        base64::engine::general_purpose::STANDARD.encode("billing:billing-token-0123456789abcdef");
    let host = url.split('/').nth(2).unwrap();
    raw_exchange(
        proxy,
        format!(
            "{method} {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
}

/// Secrets in PostgreSQL: created on one replica, read and updated on another at once
/// (versions from the database), stored sealed only, and a delete on one replica stops
/// injection on the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_shared_by_every_replica_and_a_delete_is_in_force_on_all_within_a_second() {
    const VALUE: &str = "pl41ntext-shared-credential";
    const STORE: &str = "http://secrets.egressd.internal/v1/secrets/partner-token";
    let origin = origin().await;
    let db = postgres::database();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = secrets_replica(&db, origin.port(), dir_a.path());
    let b = secrets_replica(&db, origin.port(), dir_b.path());
    let create = format!("{{\"key\": \"partner-token\", \"value\": \"{VALUE}\"}}");
    let (code, answer) = a.admin_json("POST", "/v1/secrets", &create).await;
    assert_eq!(code, 201, "{answer}");

    let read = as_billing(b.proxy, "GET", STORE, "").await;
    assert_eq!(
        body(&read),
        VALUE,
        "read on the other replica at once: {read}"
    );
    let written = as_billing(b.proxy, "PUT", STORE, "second-value").await;
    assert_eq!(header(&written, "etag"), Some("\"2\""), "{written}");
    let read = as_billing(a.proxy, "GET", STORE, "").await;
    assert_eq!(
        (body(&read), header(&read, "etag")),
        ("second-value", Some("\"2\""))
    );
    let sealed_only = db.query_text(&format!(
        "SELECT count(*)::text FROM egressd_secrets WHERE position(convert_to('{VALUE}', 'UTF8') in sealed) > 0 OR position(convert_to('second-value', 'UTF8') in sealed) > 0"
    ));
    assert_eq!(
        sealed_only.as_deref(),
        Some("0"),
        "a plaintext in the database"
    );

    let call = format!("http://api.test:{}/echo", origin.port());
    let injected = eventually_within(
        "the other replica to inject the updated value",
        Duration::from_secs(2),
        || async {
            let raw = as_billing(b.proxy, "GET", &call, "").await;
            raw.contains("authorization: Bearer second-value")
                .then_some(raw)
        },
    )
    .await;
    assert_eq!(status(&injected), 200);
    let stream = {
        let (proxy, call) = (b.proxy, call.clone());
        tokio::spawn(async move {
            loop {
                let raw = as_billing(proxy, "GET", &call, "").await;
                if status(&raw) == 503 {
                    return (std::time::Instant::now(), raw);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deleted_at = std::time::Instant::now();
    let (code, answer) = a
        .admin_json("DELETE", "/v1/secrets/partner-token", "")
        .await;
    assert_eq!(code, 200, "{answer}");
    let (refused_at, raw) = tokio::time::timeout(PATIENCE, stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header(&raw, "x-egress-error"), Some("secret-missing"));
    assert!(
        refused_at.saturating_duration_since(deleted_at) < Duration::from_secs(1),
        "the delete on one replica is in force on the other within 1 s"
    );
}

/// Recent denials are merged across replicas: a host refused on each of two replicas is one
/// row counting both, on either replica, within a few seconds (each writes its rows every
/// two seconds, never per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_denials_are_merged_across_replicas() {
    let db = postgres::database();
    let replica = || {
        egressd()
            .dns("refused.test", "127.0.0.1")
            .table(&state_table(&db.url))
            .start()
    };
    let (a, b) = (replica(), replica());
    let refused =
        b"GET http://refused.test/ HTTP/1.1\r\nHost: refused.test\r\nConnection: close\r\n\r\n";
    for proxy in [&a, &b, &b] {
        assert_eq!(status(&raw_exchange(proxy.proxy, refused).await), 403);
    }
    for (name, proxy) in [("a", &a), ("b", &b)] {
        let merged = eventually_within(
            "both replicas' refusals in one row",
            Duration::from_secs(10),
            || async {
                let (_, body) = proxy.admin_get("/v1/denials").await;
                let rows = json(&body)["denials"].as_array()?.clone();
                let row = rows.into_iter().find(|r| r["entry"] == "refused.test")?;
                (row["count"] == 3).then_some(row)
            },
        )
        .await;
        assert_eq!(merged["state"], "missing", "on {name}: {merged}");
    }
    let stored = db.query_text("SELECT count(DISTINCT replica)::text FROM egressd_denials");
    assert_eq!(
        stored.as_deref(),
        Some("2"),
        "one row per replica, merged when read"
    );
}
