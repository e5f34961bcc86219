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

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn check_reports_the_database_and_its_schema() {
    let fresh = postgres::database();
    let newer = postgres::database();
    // A schema from a newer egressd: its version table says 99.
    newer.execute(
        "CREATE TABLE egressd_schema (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO egressd_schema (version, name) VALUES (99, 'from the future');",
    );
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

#[tokio::test]
async fn a_database_egressd_cannot_use_stops_the_start_and_writes_nothing() {
    let (port, _) = function_server().await;
    let newer = postgres::database();
    newer.execute(
        "CREATE TABLE egressd_schema (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO egressd_schema (version, name) VALUES (99, 'from the future');",
    );
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
        db.query_text("SELECT string_agg(version::text, ',') FROM egressd_schema")
            .as_deref(),
        Some("1"),
        "the schema applied once by replicas that started together"
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
        let time = head
            .lines()
            .find_map(|l| l.strip_prefix("x-egress-scheduled-time: "))
            .unwrap_or("?")
            .to_string();
        *counts.entry(time).or_insert(0) += 1;
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
