//! File faults: the config file deleted or replaced by a directory, and a full state
//! directory. The running config, open tunnels and the scheduler keep working; the error shows
//! in the admin API; nothing already persisted is lost.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tunnel through `proxy` to the echo-until-EOF server: still relays after the fault.
async fn tunnel_still_works(mut tunnel: tokio::net::TcpStream) {
    tunnel.write_all(b"still here").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = String::new();
    tunnel.read_to_string(&mut back).await.unwrap();
    assert_eq!(back, "echo:still here");
}

#[tokio::test]
async fn a_config_deleted_or_replaced_by_a_directory_keeps_the_running_one() {
    struct Case {
        name: &'static str,
        break_it: fn(&Path),
        error: &'static str,
    }
    let cases = [
        Case {
            name: "deleted",
            break_it: |path| std::fs::remove_file(path).unwrap(),
            error: "No such file",
        },
        Case {
            name: "replaced by a directory",
            break_it: |path| {
                std::fs::remove_file(path).unwrap();
                std::fs::create_dir(path).unwrap();
            },
            error: "directory",
        },
    ];
    let echo = echo_server().await;
    for case in cases {
        let proxy = tunnel_proxy("api.test", echo.port()).start();
        let good = std::fs::read_to_string(&proxy.config_path).unwrap();
        let tunnel = open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await;
        (case.break_it)(&proxy.config_path);
        // An admin reload reports it; the running config stays.
        let (status, body) = proxy.admin_post("/v1/reload", None).await;
        assert_eq!(status, 422, "{}: {body}", case.name);
        assert!(body.contains(case.error), "{}: {body}", case.name);
        let view = proxy.wait_allowlist(|v| !v["last_error"].is_null()).await;
        assert_eq!(view["generation"], 1, "{}: {view}", case.name);
        assert_eq!(view["entries"][0]["pattern"], "api.test", "{}", case.name);
        tunnel_still_works(tunnel).await;
        let another = open_tunnel(proxy.proxy, &format!("api.test:{}", echo.port())).await;
        tunnel_still_works(another).await;
        // Put back, it loads again and the error clears.
        if proxy.config_path.is_dir() {
            std::fs::remove_dir(&proxy.config_path).unwrap();
        }
        std::fs::write(&proxy.config_path, &good).unwrap();
        let (status, body) = proxy.admin_post("/v1/reload", None).await;
        assert_eq!(status, 200, "{}: {body}", case.name);
        let view = proxy.allowlist().await;
        assert!(view["last_error"].is_null(), "{}: {view}", case.name);
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
    let functions = format!(
        "[[functions]]\nname = \"tick\"\nstate = \"productive\"\nurl = \"http://api.test:{}/invoke\"\n",
        origin.port()
    );
    let builder = api_proxy(&origin)
        .proxy("activation_delay = \"1h\"")
        .table(&functions);
    let config = dir.path().join("egressd.toml");
    std::fs::write(&config, builder.config_text(&state)).unwrap();
    let proxy = Egressd::spawn(dir, config);

    let (status, created) = proxy
        .admin_json(
            "POST",
            "/v1/schedules",
            "{\"function\": \"tick\", \"cron\": \"0 3 * * *\", \"payload\": \"kept\"}",
        )
        .await;
    assert_eq!(status, 201, "{created}");
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
