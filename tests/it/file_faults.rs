//! File faults: the config file deleted, replaced by a directory or unreadable; the mTLS
//! client certificate or key deleted, replaced by a directory or unreadable; a full or
//! read-only state directory. The running config, open tunnels, the identity in force and the
//! scheduler keep working; the error names the file and shows in the log and the admin API;
//! nothing already persisted is lost.
//!
//! The tests run as root, for whom a chmod 000 file is readable all the same, so the
//! permission faults run egressd unprivileged ([`EgressdBuilder::unprivileged`]).

use std::path::Path;
use std::process::Command;

use crate::support::mtls::*;
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tunnel through `proxy` to the echo-until-EOF server: still relays after the fault.
async fn tunnel_still_works(mut tunnel: tokio::net::TcpStream) {
    tunnel.write_all(b"still here").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = String::new();
    tunnel.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, "echo:still here");
}

/// A fault of a file egressd has loaded, and how an operator puts it right.
struct FileFault {
    name: &'static str,
    break_it: fn(&Path),
    /// Puts the file right; the argument is its good text.
    repair: fn(&Path, &str),
    /// What the error says besides the file's name.
    error: &'static str,
}

const FILE_FAULTS: [FileFault; 3] = [
    FileFault {
        name: "deleted",
        break_it: |path| std::fs::remove_file(path).unwrap(),
        repair: |path, good| std::fs::write(path, good).unwrap(),
        error: "cannot read: No such file or directory",
    },
    FileFault {
        name: "replaced by a directory",
        break_it: |path| {
            std::fs::remove_file(path).unwrap();
            std::fs::create_dir(path).unwrap();
        },
        repair: |path, good| {
            std::fs::remove_dir(path).unwrap();
            std::fs::write(path, good).unwrap();
        },
        error: "cannot read: Is a directory",
    },
    // Only for egressd run `.unprivileged()`: root reads the file anyway.
    FileFault {
        name: "unreadable",
        break_it: |path| set_mode(path, 0o000),
        repair: |path, _| set_mode(path, 0o644),
        error: "cannot read: Permission denied",
    },
];

#[tokio::test]
async fn a_config_deleted_replaced_by_a_directory_or_unreadable_keeps_the_running_one() {
    let echo = echo_server().await;
    for fault in &FILE_FAULTS {
        let proxy = tunnel_proxy("api.test", echo.port()).unprivileged().start();
        let good = std::fs::read_to_string(&proxy.config_path).unwrap();
        let tunnel = open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await;
        (fault.break_it)(&proxy.config_path);
        // An admin reload reports it, naming the file; the running config stays.
        let error = format!("{}: {}", proxy.config_path.display(), fault.error);
        let (status, body) = proxy.admin_post("/v1/reload", None).await;
        assert_eq!(status, 422, "{}: {body}", fault.name);
        assert!(body.contains(&error), "{}: {body}", fault.name);
        let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
        assert_eq!(view["generation"], 1, "{}: {view}", fault.name);
        assert_eq!(view["entries"][0]["pattern"], "api.test", "{}", fault.name);
        tunnel_still_works(tunnel).await;
        let another = open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await;
        tunnel_still_works(another).await;
        // Put right, it loads again and the error clears.
        (fault.repair)(&proxy.config_path, &good);
        let (status, body) = proxy.admin_post("/v1/reload", None).await;
        assert_eq!(status, 200, "{}: {body}", fault.name);
        let view = proxy.allowlist().await;
        assert!(view["last_error"].is_null(), "{}: {view}", fault.name);
    }
}

/// A tmpfs of `kib` KiB mounted on `dir`, unmounted on drop.
struct TinyFs(std::path::PathBuf);

impl TinyFs {
    fn mount(dir: &Path, kib: u32) -> TinyFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount is installed");
        assert!(
            out.status.success(),
            "this test mounts a tiny tmpfs for a full state_dir and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyFs(dir.to_path_buf())
    }

    /// Fills the file system up, leaving nothing free.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("ballast")).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("ballast")).unwrap();
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `[[functions]]`: `tick`, productive, invoked on `origin`.
fn tick_function(origin: &Origin) -> String {
    format!(
        "[[functions]]\nname = \"tick\"\nstate = \"productive\"\nurl = \"http://api.test:{}/invoke\"\n",
        origin.port()
    )
}

/// Creates a schedule of `tick` (payload `kept`) before any fault; returns its id.
async fn create_first_schedule(proxy: &Egressd) -> String {
    let (status, created) = proxy
        .admin_json(
            "POST",
            "/v1/schedules",
            "{\"function\": \"tick\", \"cron\": \"0 3 * * *\", \"payload\": \"kept\"}",
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    created["id"].as_str().unwrap().to_string()
}

/// Asks for a second schedule of `tick`; returns the status and body.
async fn create_second_schedule(proxy: &Egressd) -> (u16, String) {
    proxy
        .admin_json(
            "POST",
            "/v1/schedules",
            "{\"function\": \"tick\", \"cron\": \"0 4 * * *\"}",
        )
        .await
}

#[tokio::test]
async fn a_full_state_dir_refuses_changes_keeps_serving_and_loses_nothing() {
    let origin = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let fs = TinyFs::mount(&state, 256);
    let builder = api_proxy(&origin)
        .proxy("activation_delay = \"1h\"")
        .table(&tick_function(&origin));
    let config = dir.path().join("egressd.toml");
    std::fs::write(&config, builder.config_text(&state)).unwrap();
    let proxy = Egressd::spawn(dir, config);

    create_first_schedule(&proxy).await;
    let schedules = std::fs::read_to_string(state.join("schedules.json")).unwrap();

    fs.fill();
    // A new schedule cannot be written: 503 with the reason, nothing half-written.
    let (status, body) = create_second_schedule(&proxy).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot write"), "{body}");
    assert_eq!(
        std::fs::read_to_string(state.join("schedules.json")).unwrap(),
        schedules,
        "the persisted schedules are intact"
    );
    // A reload adding an entry cannot record its activation time: refused, visible, retried.
    let generation = proxy.generation().await;
    proxy.set_domains(&["api.test", "new.test"], Write::Rename);
    let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    assert_eq!(view["generation"], generation, "{view}");
    assert!(
        view["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot write activation state"),
        "{view}"
    );
    // Serving goes on.
    let url = format!("http://api.test:{}/echo", origin.port());
    let (exit, out, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(exit, 0);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // Space again: the retry applies the reload; the schedule created before is still there.
    fs.free();
    proxy.wait_generation_above(generation).await;
    let (status, list) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(status, 200);
    assert!(list.contains("\"payload\": \"kept\""), "{list}");
    let (status, body) = create_second_schedule(&proxy).await;
    assert_eq!(status, 201, "{body}");
}

/// The message of a problem egressd logged, or `""`: reload failures log `problem`,
/// identity failures `error`.
fn problem(line: &serde_json::Value) -> &str {
    line["problem"]
        .as_str()
        .or(line["error"].as_str())
        .unwrap_or("")
}

/// The `last_error` message of an admin view, or `None`.
fn last_error(view: &serde_json::Value) -> Option<&str> {
    view["last_error"]["message"].as_str()
}

/// The status of a plain-HTTP GET of `authority` through `proxy`.
async fn get_status(proxy: &Egressd, authority: &str) -> u16 {
    status(&one_response(proxy.proxy, http_get(authority, "/echo").as_bytes()).await)
}

#[tokio::test]
async fn an_unreadable_config_is_refused_on_every_trigger_until_readable_again() {
    let (origin, echo) = (origin().await, echo_server().await);
    let proxy = egressd()
        .allow_local("api.test")
        .dns("new.test", "127.0.0.1")
        .ports(&[echo.port()], &[origin.port()])
        .proxy("activation_delay = \"0s\"")
        .unprivileged()
        .start();
    let api = format!("api.test:{}", origin.port());
    let tunnel = open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await;
    let denied = format!(
        "{}: cannot read: Permission denied",
        proxy.config_path.display()
    );

    let refused_on = |trigger: &'static str| {
        let denied = denied.clone();
        move |l: &serde_json::Value| l["trigger"] == trigger && problem(l).starts_with(&denied)
    };

    set_mode(&proxy.config_path, 0o000);
    // The watcher sees the chmod, then SIGHUP and the admin API ask again: each reload is
    // refused, logged with the file and the reason, and counted.
    proxy.wait_for_line(refused_on("watch")).await;
    proxy.signal("HUP");
    proxy.wait_for_line(refused_on("SIGHUP")).await;
    let (status, body) = proxy.admin_post("/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(&denied), "{body}");
    assert_eq!(
        proxy
            .metric("egressd_config_reloads_total{result=\"failure\"}")
            .await,
        3.0
    );
    let (status, body) = proxy.admin_get("/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(last_error(&view).unwrap().starts_with(&denied), "{view}");
    let view = proxy.allowlist().await;
    assert!(last_error(&view).unwrap().starts_with(&denied), "{view}");
    assert_eq!(view["generation"], 1, "{view}");

    // The running config goes on: the open tunnel, a new one, a plain request.
    tunnel_still_works(tunnel).await;
    tunnel_still_works(open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await).await;
    assert_eq!(get_status(&proxy, &api).await, 200);

    // Readable again: the error clears, and the next edit applies.
    set_mode(&proxy.config_path, 0o644);
    proxy.wait_allowlist(|v| v["last_error"].is_null()).await;
    proxy.set_domains(&["api.test", "new.test"], Write::Rename);
    proxy.wait_generation_above(1).await;
    assert_eq!(
        get_status(&proxy, &format!("new.test:{}", origin.port())).await,
        200
    );
}

#[tokio::test]
async fn egressd_does_not_start_on_an_unreadable_config_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let builder = egressd().allow("api.test").unprivileged();
    let config = builder.write_config(dir.path());
    set_mode(&config, 0o000);
    let (code, stderr) = builder.run_to_exit(&config).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "{}: cannot read: Permission denied (os error 13)\n",
            config.display()
        )
    );
}

/// The `last_error` message of the first `[[mtls]]` entry in `/v1/mtls`, or `None`.
async fn mtls_error(proxy: &Egressd) -> Option<String> {
    let (status, body) = proxy.admin_get("/v1/mtls").await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    last_error(&view["entries"][0]).map(str::to_string)
}

#[tokio::test]
async fn a_broken_client_certificate_or_key_keeps_the_old_identity_presented() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    // Every response closes its connection: each request below is a new TLS connection,
    // presenting the identity in force, not one pooled from before the fault.
    let port = mtls_upstream_with(&server_ca, "payments.test", &client_ca, true).await;
    for file in ["client.crt", "client.key"] {
        for fault in &FILE_FAULTS {
            let case = format!("{file} {}", fault.name);
            let files = Files::new();
            write_identity(&files, &client_ca, "first", &server_ca);
            let proxy = mtls_proxy(&files, port, "")
                .unprivileged()
                .start_in(files.dir());
            assert_eq!(client_seen(&proxy).await, "CN=first", "{case}");
            let path = files.path(file);
            let good = std::fs::read_to_string(&path).unwrap();

            (fault.break_it)(&path);
            // Logged and shown in /v1/mtls with the file and the reason; the old identity
            // keeps being presented.
            let error = format!("{}: {}", path.display(), fault.error);
            proxy
                .wait_for_line(|l| {
                    l["file"] == path.display().to_string() && problem(l).starts_with(&error)
                })
                .await;
            let shown = eventually(&format!("{case}: the error in /v1/mtls"), || {
                mtls_error(&proxy)
            })
            .await;
            assert!(shown.starts_with(&error), "{case}: {shown}");
            assert_eq!(client_seen(&proxy).await, "CN=first", "{case}");

            // Put right: the error clears; a new identity is then presented.
            (fault.repair)(&path, &good);
            eventually(&format!("{case}: the error to clear"), || async {
                mtls_error(&proxy).await.is_none().then_some(())
            })
            .await;
            assert_eq!(client_seen(&proxy).await, "CN=first", "{case}");
            let (cert, key) = client_ca.issue("second", &[]);
            replace(&files, "client.key", &key);
            replace(&files, "client.crt", &cert);
            eventually(&format!("{case}: the new identity"), || async {
                (client_seen(&proxy).await == "CN=second").then_some(())
            })
            .await;
        }
    }
}

#[tokio::test]
async fn a_read_only_state_dir_refuses_changes_keeps_serving_and_loses_nothing() {
    let origin = origin().await;
    let proxy = api_proxy(&origin)
        .proxy("activation_delay = \"1h\"")
        .table(&tick_function(&origin))
        .unprivileged()
        .start();
    let state = proxy.dir().join("state");
    create_first_schedule(&proxy).await;
    let schedules = std::fs::read_to_string(state.join("schedules.json")).unwrap();

    set_mode(&state, 0o555);
    // A new schedule cannot be written: 503 naming the file and the reason.
    let (status, body) = create_second_schedule(&proxy).await;
    assert_eq!(status, 503, "{body}");
    let error = format!(
        "cannot write {}: Permission denied",
        state.join("schedules.json").display()
    );
    assert!(body.contains(&error), "{body}");
    assert_eq!(
        std::fs::read_to_string(state.join("schedules.json")).unwrap(),
        schedules,
        "the persisted schedules are intact"
    );
    // A reload adding an entry cannot record its activation time: refused, visible, counted
    // and retried.
    proxy.set_domains(&["api.test", "new.test"], Write::Rename);
    let refused = format!(
        "cannot write activation state in {}: Permission denied",
        state.display()
    );
    let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
    assert_eq!(view["generation"], 1, "{view}");
    assert!(last_error(&view).unwrap().starts_with(&refused), "{view}");
    proxy
        .wait_for_line(|l| l["trigger"] == "retry" && problem(l).starts_with(&refused))
        .await;
    let failures = proxy.metric("egressd_state_persist_failures_total").await;
    assert!(failures >= 2.0, "the reload and its retry: {failures}");
    // Serving goes on.
    assert_eq!(
        get_status(&proxy, &format!("api.test:{}", origin.port())).await,
        200
    );

    // Writable again: the retry applies the reload; the schedule created before is still
    // there and new ones are kept.
    set_mode(&state, 0o755);
    let view = proxy.wait_generation_above(1).await;
    assert!(view["last_error"].is_null(), "{view}");
    assert_eq!(view["entries"][1]["pattern"], "new.test", "{view}");
    assert_eq!(view["entries"][1]["state"], "pending", "{view}");
    let (status, list) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(status, 200);
    assert!(list.contains("\"payload\": \"kept\""), "{list}");
    let (status, body) = create_second_schedule(&proxy).await;
    assert_eq!(status, 201, "{body}");
    let persisted = std::fs::read_to_string(state.join("schedules.json")).unwrap();
    assert!(persisted.contains("0 4 * * *"), "{persisted}");
}

#[tokio::test]
async fn a_function_undeployed_while_the_state_dir_is_read_only_is_not_invoked_and_deleted_later() {
    let origin = origin().await;
    let proxy = api_proxy(&origin)
        .table(&tick_function(&origin))
        .unprivileged()
        .start();
    let id = create_first_schedule(&proxy).await;
    let state = proxy.dir().join("state");

    set_mode(&state, 0o555);
    // Undeployed: the reload applies, but its schedules cannot be deleted (logged, naming
    // the file)...
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let undeployed = text.replace("state = \"productive\"", "state = \"undeployed\"");
    write_file(&proxy.config_path, &undeployed, Write::Rename);
    proxy.wait_generation_above(1).await;
    let error = format!(
        "cannot write {}: Permission denied",
        state.join("schedules.json").display()
    );
    proxy
        .wait_for_line(|l| {
            l["message"].as_str().is_some_and(|m| {
                m.starts_with("cannot delete the schedules of an undeployed function")
            }) && problem(l).starts_with(&error)
        })
        .await;
    // ...and a run of the schedule left behind does not invoke the function.
    let run = format!("/v1/schedules/{id}/run");
    let (status, body) = proxy.admin_post(&run, None).await;
    assert_eq!(status, 200, "{body}");
    let runs = |outcome: &str| {
        format!("egressd_schedule_runs_total{{schedule=\"{id}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(proxy.metric(&runs("success")).await, 0.0);
    assert_eq!(proxy.metric(&runs("failure")).await, 1.0);

    // Writable again, the retry deletes the schedule, as the undeploy asked.
    set_mode(&state, 0o755);
    proxy
        .wait_for_line(|l| l["message"] == "function undeployed: its schedules are deleted")
        .await;
    let (status, body) = proxy.admin_get(&format!("/v1/schedules/{id}")).await;
    assert_eq!(status, 404, "{body}");
    let persisted = std::fs::read_to_string(state.join("schedules.json")).unwrap();
    assert!(!persisted.contains(&id), "{persisted}");
}
