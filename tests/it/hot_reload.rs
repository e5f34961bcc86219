//! Hot reload of the watched config file, activation delay and revocation, through the real
//! binary and real files in a temp dir.

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Starts egressd with `a.test` and `b.test` mapped to an origin, allowing `domains`.
async fn start(domains: &[&str], delay: &str) -> (Egressd, Origin) {
    let (builder, origin) = configure(domains, delay).await;
    (builder.start(), origin)
}

/// [`start`]'s origin and egressd configuration, before egressd starts.
async fn configure(domains: &[&str], delay: &str) -> (EgressdBuilder, Origin) {
    let origin = origin().await;
    let mut builder = egressd()
        .dns("a.test", "127.0.0.1")
        .dns("b.test", "127.0.0.1")
        .dns("c.test", "127.0.0.1")
        .ports(&[origin.port()], &[origin.port()])
        .proxy(&format!("activation_delay = \"{delay}\""));
    for d in domains {
        builder = builder.allow(d);
    }
    (builder, origin)
}

/// The response to a GET to `host` through the proxy, on a connection of its own.
async fn get_response(proxy: &Egressd, origin: &Origin, host: &str) -> String {
    let p = origin.port();
    let request =
        format!("GET http://{host}:{p}/ HTTP/1.1\r\nHost: {host}:{p}\r\nConnection: close\r\n\r\n");
    one_response(proxy.proxy, request.as_bytes()).await
}

/// Status and `X-Egress-Denied` of a GET to `host` through the proxy.
async fn get(proxy: &Egressd, origin: &Origin, host: &str) -> (u16, String) {
    let response = get_response(proxy, origin, host).await;
    (
        status(&response),
        header(&response, "x-egress-denied")
            .unwrap_or("")
            .to_string(),
    )
}

/// Polls until a GET to `host` gives `status` (bounded).
async fn wait_status(proxy: &Egressd, origin: &Origin, host: &str, status: u16) {
    let what = format!("{host} to answer {status}");
    eventually(&what, || async {
        (get(proxy, origin, host).await.0 == status).then_some(())
    })
    .await
}

#[tokio::test]
async fn edits_in_place_and_by_rename_are_picked_up() {
    let (proxy, origin) = start(&["a.test"], "0s").await;
    assert_eq!(get(&proxy, &origin, "b.test").await.0, 403);
    proxy.set_domains(&["a.test", "b.test"], Write::InPlace);
    wait_status(&proxy, &origin, "b.test", 200).await;
    proxy.set_domains(&["a.test", "b.test", "c.test"], Write::Rename);
    wait_status(&proxy, &origin, "c.test", 200).await;
    let view = proxy.allowlist().await;
    assert_eq!(view["generation"], 3, "{view}");
    assert_eq!(view["last_error"], serde_json::Value::Null);
}

#[tokio::test]
async fn kubernetes_configmap_symlink_swap_is_picked_up() {
    let (first, origin) = start(&["a.test"], "0s").await;
    // Lay out a config dir the way the kubelet mounts a ConfigMap:
    // egressd.toml -> ..data/egressd.toml, ..data -> ..2026_v1
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("mount");
    let v1 = mount.join("..2026_v1");
    std::fs::create_dir_all(&v1).unwrap();
    let state_line = format!(
        "state_dir = {:?}",
        root.path().join("state").display().to_string()
    );
    let original: String = std::fs::read_to_string(&first.config_path)
        .unwrap()
        .lines()
        .map(|l| if l.starts_with("state_dir") { state_line.clone() } else { l.to_string() } + "\n")
        .collect();
    drop(first);
    std::fs::write(v1.join("egressd.toml"), &original).unwrap();
    std::os::unix::fs::symlink("..2026_v1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/egressd.toml", mount.join("egressd.toml")).unwrap();
    let proxy = Egressd::spawn(root, mount.join("egressd.toml"));
    assert_eq!(get(&proxy, &origin, "b.test").await.0, 403);

    // The swap: a new timestamped dir, a new ..data_tmp link renamed over ..data, the old
    // dir removed.
    let v2 = mount.join("..2026_v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(
        v2.join("egressd.toml"),
        with_domains(&original, &["a.test", "b.test"]),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_status(&proxy, &origin, "b.test", 200).await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_running_config_and_a_good_one_clears_the_error() {
    let (proxy, origin) = start(&["a.test"], "0s").await;
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    let broken = with_domains(&good, &["a.test", "*.*.b.test"]);
    write_file(&proxy.config_path, &broken, Write::Rename);
    let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    let message = view["last_error"]["message"].as_str().unwrap();
    let line = broken
        .lines()
        .position(|l| l.starts_with("domains"))
        .unwrap()
        + 1;
    assert!(
        message.contains(&format!(
            "egressd.toml:{line}: allowlist.domains[1] \"*.*.b.test\": only one leading wildcard"
        )),
        "{message}"
    );
    assert_eq!(view["generation"], 1);
    assert_eq!(
        get(&proxy, &origin, "a.test").await.0,
        200,
        "the last good config keeps serving"
    );
    assert_eq!(
        proxy
            .metric("egressd_config_reloads_total{result=\"failure\"}")
            .await,
        1.0
    );

    proxy.set_domains(&["a.test", "b.test"], Write::Rename);
    let view = proxy.wait_generation_above(1).await;
    assert!(view["last_error"].is_null(), "{view}");
    assert_eq!(get(&proxy, &origin, "b.test").await.0, 200);
}

#[tokio::test]
async fn truncate_then_write_never_serves_the_empty_file() {
    let (proxy, origin) = start(&["a.test"], "0s").await;
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::File::create(&proxy.config_path).unwrap(); // truncate
    let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    assert!(
        view["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("the file is empty"),
        "{view}"
    );
    assert_eq!(get(&proxy, &origin, "a.test").await.0, 200);
    // Cut short before the allowlist: still refused.
    let cut = good.split("[allowlist]").next().unwrap().to_string();
    write_file(&proxy.config_path, &cut, Write::InPlace);
    proxy
        .wait_allowlist(|v| {
            v["last_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("allowlist.domains: missing"))
        })
        .await;
    assert_eq!(get(&proxy, &origin, "a.test").await.0, 200);
    write_file(
        &proxy.config_path,
        &with_domains(&good, &["a.test", "b.test"]),
        Write::InPlace,
    );
    wait_status(&proxy, &origin, "b.test", 200).await;
}

#[tokio::test]
async fn new_patterns_wait_out_the_activation_delay() {
    let (proxy, origin) = start(&["a.test"], "2s").await;
    assert_eq!(
        get(&proxy, &origin, "a.test").await.0,
        200,
        "patterns of the first start are active at once"
    );
    proxy.set_domains(&["a.test", "b.test"], Write::Rename);
    let view = proxy.wait_generation_above(1).await;
    let entry = view["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pattern"] == "b.test")
        .unwrap()
        .clone();
    assert_eq!(entry["state"], "pending", "{view}");
    let active_at = entry["active_at"].as_str().unwrap().to_string();

    let response = get_response(&proxy, &origin, "b.test").await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(
        header(&response, "x-egress-denied"),
        Some("pending-activation")
    );
    assert!(
        response.contains(&format!("becomes active at {active_at} (UTC)")),
        "{response}"
    );

    wait_status(&proxy, &origin, "b.test", 200).await;
    let view = proxy.allowlist().await;
    assert!(
        view["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "active"),
        "{view}"
    );
}

#[tokio::test]
async fn removal_is_immediate_and_a_readd_starts_a_new_delay() {
    let (proxy, origin) = start(&["a.test", "b.test"], "60s").await;
    assert_eq!(get(&proxy, &origin, "b.test").await.0, 200);
    proxy.set_domains(&["a.test"], Write::Rename);
    proxy.wait_generation_above(1).await;
    assert_eq!(
        get(&proxy, &origin, "b.test").await,
        (403, "not-allowlisted".to_string())
    );
    proxy.set_domains(&["a.test", "b.test"], Write::Rename);
    proxy.wait_generation_above(2).await;
    assert_eq!(
        get(&proxy, &origin, "b.test").await,
        (403, "pending-activation".to_string())
    );
}

#[tokio::test]
async fn revocation_cuts_tunnels_and_keep_alive_connections() {
    for relay in RELAYS {
        revocation_cuts_tunnels_and_keep_alive_connections_with(relay).await;
    }
}

async fn revocation_cuts_tunnels_and_keep_alive_connections_with(relay: &str) {
    let echo = echo_server().await;
    let origin = origin().await;
    let proxy = egressd()
        .relay(relay)
        .allow_local("echo.test")
        .allow_local("a.test")
        .allow_local("keep.test")
        .ports(&[echo.port()], &[origin.port()])
        .start();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("echo.test:{}", echo.port())).await;
    tunnel.write_all(b"still open").await.unwrap();

    let p = origin.port();
    let a = http_get(&format!("a.test:{p}"), "/");
    let keep = http_get(&format!("keep.test:{p}"), "/");
    let mut keep_alive = TcpStream::connect(proxy.proxy).await.unwrap();
    let response = exchange(&mut keep_alive, a.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");
    let mut unrelated = TcpStream::connect(proxy.proxy).await.unwrap();
    let response = exchange(&mut unrelated, keep.as_bytes()).await;
    assert_eq!(status(&response), 200, "{response}");

    proxy.set_domains(&["keep.test"], Write::Rename);
    // Cut: closed or reset, either will do.
    let _ = read_to_close(&mut tunnel, "the revoked tunnel").await;
    let _ = read_to_close(&mut keep_alive, "the revoked keep-alive connection").await;
    let log = proxy.wait_for_log(|v| v["method"] == "CONNECT").await;
    assert_eq!(log["tunnel_end"], "revoked");
    let metrics = proxy.metrics().await;
    for kind in ["tunnel", "connection"] {
        let series = format!("egressd_revoked_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&metrics, &series), 1.0, "{series}");
    }

    // A connection whose host is still allowed stays usable.
    let response = exchange(&mut unrelated, keep.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn a_restart_keeps_pending_times_and_delays_patterns_added_while_down() {
    let (proxy, origin) = start(&["a.test"], "60s").await;
    proxy.set_domains(&["a.test", "b.test"], Write::Rename);
    let view = proxy.wait_generation_above(1).await;
    let pending_at = |view: &serde_json::Value, pattern: &str| {
        let e = view["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["pattern"] == pattern)
            .cloned()
            .unwrap();
        assert_eq!(e["state"], "pending", "{view}");
        e["active_at"].as_str().unwrap().to_string()
    };
    let b_at = pending_at(&view, "b.test");
    let config = proxy.config_path.clone();
    let mut proxy = proxy;
    proxy.terminate().await;
    // Added while egressd was down.
    write_file(
        &config,
        &with_domains(
            &std::fs::read_to_string(&config).unwrap(),
            &["a.test", "b.test", "c.test"],
        ),
        Write::Rename,
    );
    let proxy = proxy.restart_stopped();
    let view = proxy.allowlist().await;
    assert_eq!(
        pending_at(&view, "b.test"),
        b_at,
        "the original activation time survives the restart"
    );
    assert!(pending_at(&view, "c.test") >= b_at, "{view}");
    assert_eq!(get(&proxy, &origin, "a.test").await.0, 200);
    assert_eq!(
        get(&proxy, &origin, "b.test").await,
        (403, "pending-activation".to_string())
    );

    // explain, run against the live state dir, agrees.
    let out = std::process::Command::new(BIN)
        .args(["explain", "--config"])
        .arg(&config)
        .arg("b.test:443")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.starts_with("denied (pending-activation)"),
        "{stdout}"
    );
    assert!(stdout.contains(&b_at), "{stdout}");
}

#[tokio::test]
async fn a_corrupt_state_file_puts_everything_pending() {
    let (proxy, origin) = start(&["a.test"], "60s").await;
    let state = proxy.dir().join("state/activation.json");
    assert!(state.exists());
    let mut proxy = proxy;
    proxy.terminate().await;
    std::fs::write(&state, b"{\"version\": 1, \"patterns\": {\"a.te").unwrap();
    let proxy = proxy.restart_stopped();
    assert_eq!(
        get(&proxy, &origin, "a.test").await,
        (403, "pending-activation".to_string())
    );
}

#[tokio::test]
async fn admin_reload_needs_the_token_when_one_is_set() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let proxy = http_proxy("a.test", origin.port())
        .proxy(&format!(
            "admin_token_file = {:?}",
            token.display().to_string()
        ))
        .start();
    assert_eq!(proxy.admin_post("/v1/reload", None).await.0, 401);
    assert_eq!(proxy.admin_post("/v1/reload", Some("wrong")).await.0, 401);
    let (status, body) = proxy.admin_post("/v1/reload", Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\": \"unchanged\""), "{body}");
}

#[tokio::test]
async fn admin_reload_reports_errors_and_sighup_reloads() {
    let (proxy, origin) = start(&["a.test"], "0s").await;
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    write_file(
        &proxy.config_path,
        &with_domains(&good, &["a.test", "*"]),
        Write::Rename,
    );
    // Whether or not the watcher got there first, a failed file is re-read and refused.
    let (status, body) = proxy.admin_post("/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("allowlist.domains[1] \\\"*\\\": a bare"),
        "{body}"
    );
    assert_eq!(get(&proxy, &origin, "a.test").await.0, 200);

    write_file(
        &proxy.config_path,
        &with_domains(&good, &["a.test", "b.test"]),
        Write::Rename,
    );
    proxy.signal("HUP");
    proxy.wait_for_line(|v| v["trigger"] == "SIGHUP").await;
    wait_status(&proxy, &origin, "b.test", 200).await;
}

#[tokio::test]
async fn a_hundred_reloads_under_load_fail_no_allowed_request() {
    let (proxy, origin) = start(&["a.test", "b.test"], "0s").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = proxy.proxy;
    let p = origin.port();
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = http_get(&format!("a.test:{p}"), "/");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok + failed < 1_000_000 {
                if stream.write_all(request.as_bytes()).await.is_err() {
                    failed += 1;
                    stream = TcpStream::connect(addr).await.unwrap();
                    continue;
                }
                if read_response(&mut stream).await.starts_with("HTTP/1.1 200") {
                    ok += 1
                } else {
                    failed += 1
                }
            }
            (ok, failed)
        })
    };
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    for i in 0..100 {
        // Alternate b.test in and out: a.test stays allowed throughout.
        let domains: &[&str] = if i % 2 == 0 {
            &["a.test"]
        } else {
            &["a.test", "b.test"]
        };
        write_file(
            &proxy.config_path,
            &with_domains(&good, domains),
            Write::Rename,
        );
        let (status, body) = proxy.admin_post("/v1/reload", None).await;
        assert_eq!(status, 200, "{body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "{ok} allowed requests succeeded, {failed} failed"
    );
    assert!(proxy.generation().await >= 100);
}

/// Rewrites one `key = ...` line of the config at `path`.
fn set_line(path: &std::path::Path, key: &str, line: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let new: String = text
        .lines()
        .map(|l| if l.starts_with(key) { line.to_string() } else { l.to_string() } + "\n")
        .collect();
    assert_ne!(text, new, "{key} not found");
    write_file(path, &new, Write::Rename);
}

#[tokio::test]
async fn shortening_the_delay_in_the_same_edit_does_not_skip_it() {
    let (proxy, origin) = start(&["a.test"], "60s").await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let edited = with_domains(&text, &["a.test", "b.test"])
        .replace("activation_delay = \"60s\"", "activation_delay = \"0s\"");
    write_file(&proxy.config_path, &edited, Write::Rename);
    proxy.wait_generation_above(1).await;
    assert_eq!(
        get(&proxy, &origin, "b.test").await,
        (403, "pending-activation".to_string())
    );
    // The shorter delay applies to what is added after it.
    proxy.set_domains(&["a.test", "b.test", "c.test"], Write::Rename);
    proxy.wait_generation_above(2).await;
    assert_eq!(get(&proxy, &origin, "c.test").await.0, 200);
}

#[tokio::test]
async fn an_unreadable_token_file_does_not_block_reloads() {
    let origin = origin().await;
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("admin.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let proxy = http_proxy("a.test", origin.port())
        .dns("b.test", "127.0.0.1")
        .proxy("activation_delay = \"0s\"")
        .proxy(&format!(
            "admin_token_file = {:?}",
            token.display().to_string()
        ))
        .start();
    std::fs::remove_file(&token).unwrap();
    proxy.set_domains(&["a.test", "b.test"], Write::Rename);
    wait_status(&proxy, &origin, "b.test", 200).await;
    // The token read at start still guards the reload endpoint.
    assert_eq!(proxy.admin_post("/v1/reload", Some("s3cret")).await.0, 200);
}

#[tokio::test]
async fn closing_a_private_range_drops_pooled_upstream_connections() {
    // One worker, so the pool the request below fills is the only one.
    let (builder, origin) = configure(&["a.test"], "0s").await;
    let proxy = builder.proxy("workers = 1").start();
    let p = origin.port();
    let mut client = TcpStream::connect(proxy.proxy).await.unwrap();
    let request = http_get(&format!("a.test:{p}"), "/");
    let response = exchange(&mut client, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    eventually("the upstream connection to be pooled", || async {
        (upstream_connections(p) == 1).then_some(())
    })
    .await;
    // Close the loopback range: the pooled connection was dialled under the old rules.
    set_line(
        &proxy.config_path,
        "allow_private_cidrs",
        "allow_private_cidrs = []",
    );
    proxy.wait_generation_above(1).await;
    eventually("the pooled upstream connection to close", || async {
        (upstream_connections(p) == 0).then_some(())
    })
    .await;
    assert_eq!(
        get(&proxy, &origin, "a.test").await,
        (403, "private-destination".to_string())
    );
}

/// Established IPv4 TCP connections to loopback `port`, from `/proc/net/tcp`: with the
/// origin on `port`, the upstream connections egressd holds to it (the test's own clients
/// talk to the proxy, and the origin's accepted sockets have `port` as their local end).
fn upstream_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    const ESTABLISHED: &str = "01";
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2].ends_with(&remote) && fields[3] == ESTABLISHED
        })
        .count()
}

/// The reload counters, by result.
async fn reload_counts(proxy: &Egressd) -> [f64; 3] {
    let metrics = proxy.metrics().await;
    ["success", "unchanged", "failure"].map(|r| {
        metric(
            &metrics,
            &format!("egressd_config_reloads_total{{result=\"{r}\"}}"),
        )
    })
}

/// How long the reload counters must stand still to count as settled.
const SETTLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (for at most five windows) until the reload counters have not moved for one
/// [`SETTLE_WINDOW`], and returns them.
async fn settled_reload_counts(proxy: &Egressd) -> [f64; 3] {
    let last = std::cell::Cell::new(reload_counts(proxy).await);
    let last = &last;
    eventually_explained_within(
        "the reload counters to settle",
        5 * SETTLE_WINDOW,
        || async move {
            tokio::time::sleep(SETTLE_WINDOW).await;
            let now = reload_counts(proxy).await;
            let before = last.replace(now);
            if now == before {
                Ok(now)
            } else {
                Err(format!("{before:?}, then {now:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_watcher_reloads_on_edits_only_and_settles() {
    let (proxy, origin) = start(&["a.test"], "0s").await;
    // Reading the config (as every reload does) is no reason to reload.
    std::fs::read_to_string(&proxy.config_path).unwrap();
    assert_eq!(settled_reload_counts(&proxy).await, [0.0, 0.0, 0.0]);
    // One ordinary edit: one reload, then quiet.
    proxy.set_domains(&["a.test", "b.test"], Write::InPlace);
    wait_status(&proxy, &origin, "b.test", 200).await;
    assert_eq!(settled_reload_counts(&proxy).await, [1.0, 0.0, 0.0]);
    // Another file in the same directory (a log, an editor's swap file) is not the config.
    let unrelated = proxy.dir().join("egressd.log");
    for i in 0..5 {
        std::fs::write(&unrelated, format!("line {i}\n")).unwrap();
    }
    assert_eq!(settled_reload_counts(&proxy).await, [1.0, 0.0, 0.0]);
}

#[tokio::test]
async fn reverting_a_bad_edit_clears_its_error() {
    let (proxy, _origin) = start(&["a.test"], "0s").await;
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    write_file(
        &proxy.config_path,
        &with_domains(&good, &["*.*.a.test"]),
        Write::Rename,
    );
    proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    write_file(&proxy.config_path, &good, Write::Rename);
    let view = proxy.wait_allowlist(|v| v["last_error"].is_null()).await;
    assert_eq!(
        view["generation"], 1,
        "the good text was never replaced: {view}"
    );
}

#[tokio::test]
async fn unwritable_state_refuses_the_reload_so_a_restart_cannot_skip_the_delay() {
    let (proxy, origin) = start(&["a.test", "b.test"], "60s").await;
    let state = proxy.dir().join("state");
    let aside = proxy.dir().join("state.aside");
    // A file where the state directory should be: no write can succeed, even as root.
    std::fs::rename(&state, &aside).unwrap();
    std::fs::write(&state, "not a directory").unwrap();

    proxy.set_domains(&["a.test"], Write::Rename);
    let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    let message = view["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot write activation state"),
        "{message}"
    );
    assert_eq!(view["generation"], 1, "{view}");
    assert_eq!(
        get(&proxy, &origin, "b.test").await.0,
        200,
        "the running config stays in force"
    );
    assert!(proxy.metric("egressd_state_persist_failures_total").await >= 1.0);

    // Once the state dir is back, the retry applies the removal and records it.
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    let view = proxy.wait_generation_above(1).await;
    assert!(view["last_error"].is_null(), "{view}");
    assert_eq!(get(&proxy, &origin, "b.test").await.0, 403);

    // Re-added while egressd is down: after the restart it waits out the delay.
    let mut proxy = proxy;
    proxy.terminate().await;
    proxy.set_domains(&["a.test", "b.test"], Write::Rename);
    let proxy = proxy.restart_stopped();
    assert_eq!(
        get(&proxy, &origin, "b.test").await,
        (403, "pending-activation".to_string())
    );
    assert_eq!(get(&proxy, &origin, "a.test").await.0, 200);
}
