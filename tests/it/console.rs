//! The admin console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver) against the real binary. The browser runs with `TZ=America/New_York`, so
//! every local time on the page must be UTC shifted by New York's offset.
//!
//! Screenshots of each page land in `target/tmp/console/` (docs/console.md shows copies of them,
//! kept in `docs/console/`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::support::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// One browser at a time: two Chromiums on a 2-core CI machine make every wait slower.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and its session; chromedriver is killed on drop.
struct Browser {
    client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// The chromedriver process, killed on drop, also when [`browser`] fails halfway.
struct Driver(Child);

impl Drop for Driver {
    /// Kills chromedriver's whole process group: a test that panics never ends its session,
    /// and Chromium would outlive chromedriver.
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The line in which chromedriver names the port it listens on.
const STARTED_ON_PORT: &str = "ChromeDriver was started successfully on port ";

/// Reads chromedriver's stdout until it names its port (once it listens) and returns the
/// port; reads and drops the rest, so that chromedriver never blocks on a full pipe.
async fn announced_port(stdout: ChildStdout) -> u16 {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            let port = line
                .strip_prefix(STARTED_ON_PORT)
                .and_then(|rest| rest.trim_end().trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = port {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    tokio::time::timeout(PATIENCE, rx)
        .await
        .expect("chromedriver to name its port in time")
        .expect("chromedriver exited before it named its port")
}

async fn browser() -> Browser {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: install Debian's chromium and chromium-driver (tests/run does)"
        );
    }
    let mut driver = Driver(
        Command::new(CHROMEDRIVER)
            // chromedriver binds a free port itself and names it: a port picked here and
            // freed for it could be taken by a parallel test first.
            .arg("--port=0")
            // Its own process group, with Chromium in it, so that Drop can end both.
            .process_group(0)
            // Chromium inherits the zone: the page's "local time" is New York's.
            .env("TZ", "America/New_York")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let port = announced_port(driver.0.stdout.take().unwrap()).await;
    let url = format!("http://127.0.0.1:{port}");
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            // As this machine's probe runs it: no sandbox as root, and no background
            // networking, whose connections the closed network refuses.
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a WebDriver session");
    // A 1280x800 viewport: the window is that plus the browser's own frame.
    let frame = client
        .execute("return window.outerHeight - window.innerHeight;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(0) as u32;
    client.set_window_size(1280, 800 + frame).await.unwrap();
    Browser {
        client,
        _driver: driver,
        _profile: profile,
    }
}

impl Browser {
    async fn open(&self, proxy: &Egressd, page: &str) {
        let url = format!("http://127.0.0.1:{}/#{page}", proxy.admin.port());
        self.client.goto(&url).await.unwrap();
    }

    /// Runs `script` (a function body; `arguments[0..]` are `args`) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// The text of the first element matching `css`, or `None`.
    async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// Waits until the element matching `css` exists and its text satisfies `pred`; panics
    /// with the last text seen.
    async fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually_explained(css, || async {
            let text = self.text(css).await;
            match text.as_deref().filter(|t| pred(t)) {
                Some(t) => Ok(t.to_string()),
                None => Err(format!("{text:?}")),
            }
        })
        .await
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types into the element as a user would (real key events).
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Key presses into the element, after what it holds.
    async fn press(&self, css: &str, keys: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.send_keys(keys).await.unwrap();
    }

    async fn enabled(&self, css: &str) -> bool {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap()
    }

    /// Saves a screenshot as a test artifact and returns its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Ends the session; dropping the browser then stops chromedriver.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `shown` is `utc` in New York: `YYYY-MM-DD HH:MM EST` (UTC-5) or `... EDT` (UTC-4).
fn assert_new_york(shown: &str, utc: &str) {
    let utc = chrono::DateTime::parse_from_rfc3339(utc).unwrap();
    let (offset, zone) = if shown.ends_with(" EST") {
        (5, "EST")
    } else {
        (4, "EDT")
    };
    let local = utc.naive_utc() - chrono::Duration::hours(offset);
    assert_eq!(
        shown,
        format!("{} {zone}", local.format("%Y-%m-%d %H:%M")),
        "{utc} in New York"
    );
}

/// Every `<time>` matching `css`: (text, data-utc).
async fn times(b: &Browser, css: &str) -> Vec<(String, String)> {
    let v = b
        .js(
            "return [...document.querySelectorAll(arguments[0])].map(t => [t.textContent, t.dataset.utc]);",
            vec![json!(css)],
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Sets a textarea's value from script (8000 characters of key events would take long) and
/// fires `input` as typing would.
async fn set_value(b: &Browser, css: &str, value: &str) {
    b.js(
        "const e = document.querySelector(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event('input'));",
        vec![json!(css), json!(value)],
    )
    .await;
}

fn functions_table(port: u16) -> String {
    format!(
        "[[functions]]\nname = \"refresh-token\"\nstate = \"productive\"\nurl = \"http://fn.test:{port}/invoke\"\n\
         [[functions]]\nname = \"old-report\"\nstate = \"undeployed\"\nurl = \"http://fn.test:{port}/old\"\n"
    )
}

#[tokio::test]
async fn the_schedules_page_creates_runs_and_deletes_in_local_time() {
    let _one = ONE_BROWSER.lock().await;
    let function = origin().await;
    let proxy = egressd()
        .allow_local("fn.test")
        .ports(&[443], &[function.port()])
        .table(&functions_table(function.port()))
        .start();
    let b = browser().await;
    b.open(&proxy, "schedules").await;
    b.wait_text("#schedule-count", |t| t == "0 of 10 schedules")
        .await;

    // Every form control has a label.
    let unlabelled = b
        .js(
            "return [...document.querySelectorAll('input, select, textarea')].filter(e => e.labels.length === 0).map(e => e.id);",
            vec![],
        )
        .await;
    assert_eq!(unlabelled, json!([]), "inputs without a label");

    // The drop-down offers productive functions only.
    b.click("#create-toggle").await;
    b.wait_text("#functions-hint", |t| {
        t.contains("1 undeployed function is not listed")
    })
    .await;
    let options = b
        .js(
            "return [...document.querySelectorAll('#f-function option')].map(o => o.value);",
            vec![],
        )
        .await;
    assert_eq!(options, json!(["refresh-token"]));

    // An invalid expression: the error names the field, examples are offered.
    b.type_into("#f-cron", "61 * * * *").await;
    let error = b.wait_text("#err-cron", |t| !t.is_empty()).await;
    assert!(error.starts_with("minute field \"61\""), "{error}");
    let examples = b
        .js(
            "return [...document.querySelectorAll('#cron-examples button')].map(b => b.textContent);",
            vec![],
        )
        .await;
    assert!(
        examples.as_array().unwrap().contains(&json!("*/5 * * * *")),
        "{examples}"
    );
    b.screenshot("schedules-cron-error").await;

    // Picking an example shows the next five runs in New York time.
    b.click("#cron-examples button[title='every 5 minutes']")
        .await;
    eventually("five upcoming runs", || async {
        (times(&b, "#cron-next time").await.len() == 5).then_some(())
    })
    .await;
    assert_eq!(b.text("#err-cron").await.as_deref(), Some(""));
    for (shown, utc) in times(&b, "#cron-next time").await {
        assert!(utc.ends_with(":00Z"), "{utc}");
        assert_new_york(&shown, &utc);
    }

    // The payload counter counts characters, not bytes: 8000 '€' (24000 bytes) fit, 8001 not.
    set_value(&b, "#f-payload", &"€".repeat(7999)).await;
    b.press("#f-payload", "€").await;
    b.wait_text("#payload-count", |t| t == "8000 / 8000 characters")
        .await;
    assert!(b.enabled("#create-submit").await);
    b.press("#f-payload", "€").await;
    b.wait_text("#payload-count", |t| t == "8001 / 8000 characters")
        .await;
    assert_eq!(
        b.text("#err-payload").await.as_deref(),
        Some("1 character over the limit of 8000")
    );
    assert!(!b.enabled("#create-submit").await, "Create is disabled");
    set_value(&b, "#f-payload", "{\"job\": \"nightly\"}").await;
    b.wait_text("#payload-count", |t| t == "18 / 8000 characters")
        .await;
    b.screenshot("schedules-form").await;

    // Create: the schedule is in the table, with its next run in local time.
    b.click("#create-submit").await;
    b.wait_text("#schedule-count", |t| t == "1 of 10 schedules")
        .await;
    let row = "#schedules-table tr[data-function='refresh-token']";
    assert_eq!(
        b.text(&format!("{row} td.mono")).await.as_deref(),
        Some("*/5 * * * *")
    );
    let next = times(&b, &format!("{row} td.next-run time")).await;
    assert_eq!(next.len(), 1);
    assert_new_york(&next[0].0, &next[0].1);
    let stored = proxy.admin_get("/v1/schedules").await.1;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored[0]["payload"], "{\"job\": \"nightly\"}");

    // Run now: the function answers 200, STATE says SUCCESS, the last run is local too.
    b.click(&format!("{row} button.secondary")).await;
    b.wait_text(&format!("{row} span.state"), |t| t == "SUCCESS")
        .await;
    let last = times(&b, &format!("{row} td.last-run time")).await;
    assert_new_york(&last[0].0, &last[0].1);
    assert!(
        b.text(row).await.unwrap().contains("200"),
        "last status 200"
    );
    b.screenshot("schedules").await;

    // Delete asks once more, then the row goes.
    b.click(&format!("{row} button.danger")).await;
    b.wait_text(&format!("{row} button.danger"), |t| t == "Confirm delete")
        .await;
    b.click(&format!("{row} button.danger")).await;
    b.wait_text("#schedule-count", |t| t == "0 of 10 schedules")
        .await;

    // An error from the API shows next to its field: the function was undeployed after the
    // form listed it.
    b.click("#create-toggle").await;
    eventually("the form to list the function", || async {
        let options = b
            .js(
                "return document.querySelectorAll('#f-function option').length;",
                vec![],
            )
            .await;
        (options == json!(1)).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let generation = proxy.generation().await;
    std::fs::write(
        &proxy.config_path,
        text.replacen("state = \"productive\"", "state = \"undeployed\"", 1),
    )
    .unwrap();
    proxy.wait_generation_above(generation).await;
    b.type_into("#f-cron", "0 * * * *").await;
    b.click("#create-submit").await;
    let error = b.wait_text("#err-function", |t| !t.is_empty()).await;
    assert!(error.contains("not deployed as productive"), "{error}");
    b.close().await;
}

/// A TCP server that holds each connection open until the peer closes it.
async fn holding_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_allowlist_tab_adds_pending_entries_and_a_removal_cuts_the_tunnel() {
    let _one = ONE_BROWSER.lock().await;
    let server = holding_server().await;
    let proxy = egressd()
        .proxy("activation_delay = \"5s\"")
        .allow_local("keep.test")
        .dns("new.test", "127.0.0.1")
        .ports(&[server.port()], &[])
        .table("# a comment the console's edits keep")
        .start();
    let b = browser().await;
    b.open(&proxy, "allowlist").await;
    b.wait_text(
        "#allowlist-table tr[data-entry='keep.test'] span.state",
        |t| t == "active",
    )
    .await;
    assert_eq!(
        b.text("#readonly-notice").await.as_deref(),
        Some(""),
        "editable on loopback"
    );

    // Entries are checked as typed, with the fix or the pitfall.
    b.type_into("#a-domain", "*.*.new.test").await;
    let error = b.wait_text("#err-domain", |t| !t.is_empty()).await;
    assert_eq!(
        error,
        "only one leading wildcard is allowed; use \"*.new.test\""
    );
    b.type_into("#a-domain", "new.test").await;
    let check = b
        .wait_text("#add-check", |t| {
            t.starts_with("Will add new.test (exact).")
        })
        .await;
    assert!(check.contains("\"www.new.test\""), "{check}");

    // Enter adds it (keyboard only): pending with a countdown, in the file, then active.
    b.press("#a-domain", "\n").await;
    let state = "#allowlist-table tr[data-entry='new.test'] span.state";
    let pending = b
        .wait_text(state, |t| t.starts_with("pending, active in 0:0"))
        .await;
    let seconds: u32 = pending.rsplit(':').next().unwrap().parse().unwrap();
    assert!((1..=5).contains(&seconds), "{pending}");
    b.screenshot("allowlist").await;
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(
        text.contains("domains = [\"keep.test\", \"new.test\"]"),
        "{text}"
    );
    assert!(
        text.contains("# a comment the console's edits keep"),
        "{text}"
    );
    // Denied until active, as for a hand edit.
    let authority = format!("new.test:{}", server.port());
    let early = raw_exchange(
        proxy.proxy,
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        early.starts_with("HTTP/1.1 403 pending-activation"),
        "{early}"
    );
    b.wait_text(state, |t| t == "active").await;

    // A live tunnel to it, then the bin icon: removed at once, the tunnel is cut.
    let mut tunnel = open_tunnel(proxy.proxy, &authority).await;
    let bin = "#allowlist-table tr[data-entry='new.test'] button.danger";
    let label = b
        .js(
            "return document.querySelector(arguments[0]).getAttribute('aria-label');",
            vec![json!(bin)],
        )
        .await;
    assert_eq!(label, json!("Remove new.test"));
    b.click(bin).await;
    b.wait_text(bin, |t| t == "Remove?").await;
    b.click(bin).await;
    eventually("the row to go", || async {
        b.text("#allowlist-table tr[data-entry='new.test']")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, tunnel.read(&mut buf))
        .await
        .expect("the tunnel is cut, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(text.contains("domains = [\"keep.test\"]\n"), "{text}");

    // Narrow window: the page itself does not scroll sideways.
    b.client.set_window_size(420, 800).await.unwrap();
    let overflow = b
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await;
    assert!(overflow.as_i64().unwrap() <= 0, "overflow {overflow}");
    b.screenshot("allowlist-narrow").await;
    b.close().await;
}

#[tokio::test]
async fn a_read_only_config_makes_the_tab_read_only_and_says_why() {
    let _one = ONE_BROWSER.lock().await;
    struct Case {
        name: &'static str,
        setting: Option<&'static str>,
        make_file_read_only: bool,
        notice: &'static str,
    }
    let cases = [
        Case {
            name: "file not writable (as a ConfigMap mount)",
            setting: None,
            make_file_read_only: true,
            notice: "is read-only",
        },
        Case {
            name: "admin_allowlist_edit = false",
            setting: Some("admin_allowlist_edit = false"),
            make_file_read_only: false,
            notice: "editing is off",
        },
    ];
    let b = browser().await;
    for case in cases {
        let mut builder = egressd()
            .allow_local("keep.test")
            .dns("www.keep.test", "127.0.0.1");
        if let Some(line) = case.setting {
            builder = builder.proxy(line);
        }
        let proxy = builder.start();
        if case.make_file_read_only {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&proxy.config_path, std::fs::Permissions::from_mode(0o444))
                .unwrap();
        }
        refuse(&proxy, "GET http://www.keep.test/", "").await;
        b.open(&proxy, "allowlist").await;
        let notice = b
            .wait_text("#readonly-notice", |t| t.starts_with("Read-only: "))
            .await;
        assert!(notice.contains(case.notice), "{}: {notice}", case.name);
        assert!(!b.enabled("#add-button").await, "{}", case.name);
        assert!(!b.enabled("#a-domain").await, "{}", case.name);
        let bins = b
            .js(
                "return document.querySelectorAll('#allowlist-table button').length;",
                vec![],
            )
            .await;
        assert_eq!(bins, json!(0), "{}: no bin icons", case.name);
        // Recently denied: the row and its hint, no Add, the reason said once above the rows.
        let row = "#denials-table tr[data-entry='www.keep.test']";
        let hint = b
            .wait_text(&format!("{row} p.fix"), |t| !t.is_empty())
            .await;
        assert!(
            hint.contains("add \"www.keep.test\""),
            "{}: {hint}",
            case.name
        );
        assert_eq!(
            b.js(&buttons_in("#denials-table"), vec![]).await,
            json!(0),
            "{}: no Add",
            case.name
        );
        let reason = b.text("#denials-readonly").await.unwrap();
        assert!(
            reason.starts_with("Entries cannot be added from here: ")
                && reason.contains(case.notice),
            "{}: {reason}",
            case.name
        );
        assert!(!hidden(&b, "#denials-readonly").await, "{}", case.name);
        // The API refuses too, with the same reason.
        let (status, body) = proxy
            .admin_json("POST", "/v1/allowlist", "{\"domain\": \"x.test\"}")
            .await;
        assert_eq!(status, 403, "{}: {body}", case.name);
        if case.make_file_read_only {
            b.screenshot("allowlist-read-only").await;
        }
    }
    b.close().await;
}

/// Sends `request_line` (`GET http://host/...`) through the proxy with `headers` (each line
/// ending in CRLF) and asserts that egressd refused it.
async fn refuse(proxy: &Egressd, request_line: &str, headers: &str) {
    let host = request_line
        .split("//")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let request =
        format!("{request_line} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    let answer = raw_exchange(proxy.proxy, request.as_bytes()).await;
    assert_eq!(status(&answer), 403, "{request_line}: {answer}");
}

/// A script that counts the buttons under `css`.
fn buttons_in(css: &str) -> String {
    format!("return document.querySelectorAll(\"{css} button\").length;")
}

/// Whether the element matching `css` is hidden (its `hidden` property).
async fn hidden(b: &Browser, css: &str) -> bool {
    b.js(
        "return document.querySelector(arguments[0]).hidden;",
        vec![json!(css)],
    )
    .await
        == json!(true)
}

/// The rows of "Recently denied" are in the order of their last refusal, most recent first.
/// (Two refusals can share a millisecond, so the test compares times, not an expected order.)
async fn assert_most_recent_first(b: &Browser) {
    let seen: Vec<String> = times(b, "#denials-table td.last-seen time")
        .await
        .into_iter()
        .map(|(_, utc)| utc)
        .collect();
    let parsed: Vec<_> = seen
        .iter()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{seen:?}");
}

/// "Recently denied" on the Domain Allowlist tab: a refusal shows within a refresh, under
/// the entry that would fix it and with the hint that names it; Add adds exactly that entry,
/// which is pending (a countdown instead of the button, in the allowlist too), then active,
/// and the row goes. A refusal no entry fixes says what would, with no Add.
#[tokio::test]
async fn a_recently_denied_row_adds_its_entry_which_goes_pending_then_active() {
    let _one = ONE_BROWSER.lock().await;
    let proxy = egressd()
        .proxy("activation_delay = \"4s\"")
        .allow_local("refused.test")
        .dns("www.refused.test", "127.0.0.1")
        .ports(&[443], &[80])
        .start();
    let b = browser().await;
    b.open(&proxy, "allowlist").await;
    b.wait_text(
        "#allowlist-table tr[data-entry='refused.test'] span.state",
        |t| t == "active",
    )
    .await;
    assert!(!hidden(&b, "#denials-empty").await, "the empty state");
    assert!(hidden(&b, "#denials-table").await);

    // Refused while the page is open: the rows come with the tab's periodic refresh.
    refuse(&proxy, "GET http://www.refused.test/", "").await;
    refuse(&proxy, "GET http://refused.test:22/", "").await;
    let row = "#denials-table tr[data-entry='www.refused.test']";
    let hint = b
        .wait_text(&format!("{row} p.fix"), |t| !t.is_empty())
        .await;
    assert_eq!(
        hint,
        "\"refused.test\" is allowlisted but does not cover subdomains; add \"www.refused.test\" or \"*.refused.test\""
    );
    assert!(hidden(&b, "#denials-empty").await);
    assert_eq!(
        b.text(&format!("{row} td.count")).await.as_deref(),
        Some("1")
    );
    assert_eq!(
        b.text(&format!("{row} td.from")).await.as_deref(),
        Some("www.refused.test:80")
    );
    assert_eq!(
        b.text(&format!("{row} span.tag")).await.as_deref(),
        Some("not allowlisted")
    );
    let seen = times(&b, &format!("{row} td.last-seen time")).await;
    assert_eq!(seen.len(), 1);
    assert_new_york(&seen[0].0, &seen[0].1);
    assert!(hidden(&b, "#denials-readonly").await, "editable");

    // The port: no entry fixes it; the row says what does, and has no button.
    let port = "#denials-table tr[data-reason='port-not-allowed']";
    let fix = b
        .wait_text(&format!("{port} p.fix"), |t| !t.is_empty())
        .await;
    assert!(fix.contains("proxy.http_ports"), "{fix}");
    assert_eq!(
        b.text(&format!("{port} td.entry")).await.as_deref(),
        Some("port not open")
    );
    assert_eq!(b.js(&buttons_in(port), vec![]).await, json!(0));
    assert_most_recent_first(&b).await;

    // Add: exactly the row's entry, through the Add field's path; pending with a countdown
    // in the allowlist and on the row, which has no button any more.
    let add = format!("{row} button");
    let label = b
        .js(
            "return document.querySelector(arguments[0]).getAttribute('aria-label');",
            vec![json!(add)],
        )
        .await;
    assert_eq!(label, json!("Add www.refused.test"));
    b.click(&add).await;
    let listed = "#allowlist-table tr[data-entry='www.refused.test'] span.state";
    b.wait_text(listed, |t| t.starts_with("pending, active in 0:0"))
        .await;
    let pending = b
        .wait_text(&format!("{row} td.actions"), |t| {
            t.starts_with("pending, active in 0:0")
        })
        .await;
    let seconds: u32 = pending.rsplit(':').next().unwrap().parse().unwrap();
    assert!(seconds <= 4, "{pending}");
    assert_eq!(b.js(&buttons_in(row), vec![]).await, json!(0));
    let hint = b.text(&format!("{row} p.fix")).await.unwrap();
    assert!(
        hint.starts_with("\"www.refused.test\" was added recently and becomes active at "),
        "{hint}"
    );
    assert_eq!(b.text("#err-denials").await.as_deref(), Some(""));
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(
        text.contains("domains = [\"refused.test\", \"www.refused.test\"]"),
        "{text}"
    );

    // Active: the row is done and goes; the port's stays.
    b.wait_text(listed, |t| t == "active").await;
    eventually("the fixed row to go", || async {
        b.text(row).await.is_none().then_some(())
    })
    .await;
    assert!(b.text(port).await.is_some(), "the port's row stays");
    b.close().await;
}

/// The rows' other shapes, and the screenshot in docs/console.md: the subdomain pitfall seen
/// twice from a function, an entry added and pending, a redirect to a host on no entry (with
/// the URL that redirected), and a port no entry opens.
#[tokio::test]
async fn recently_denied_shows_redirects_pending_entries_and_functions() {
    let _one = ONE_BROWSER.lock().await;
    let port = redirecting_origin().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("billing.token"),
        "billing-token-0123456789abcdef\n",
    )
    .unwrap();
    let proxy = egressd()
        .proxy("activation_delay = \"5m\"")
        .proxy("identity = \"optional\"")
        .allow_local("a.test")
        .allow_local("partner.test")
        .dns("b.test", "127.0.0.1")
        .dns("www.partner.test", "127.0.0.1")
        .dns("api.vendor.test", "127.0.0.1")
        .ports(&[443], &[port])
        .table("[[functions]]\nname = \"billing\"\nstate = \"productive\"\nurl = \"http://billing.test/\"\ntoken_file = \"billing.token\"\n")
        .start_in(dir.path());
    let billing = {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD
            .encode("billing:billing-token-0123456789abcdef");
        format!("Proxy-Authorization: Basic {basic}\r\n")
    };

    // Oldest first: the port, the redirect, the entry to be added, the pitfall (twice).
    refuse(&proxy, "GET http://partner.test:22/", "").await;
    let start = format!("http://a.test:{port}/start");
    let redirect = raw_exchange(
        proxy.proxy,
        format!(
            "GET {start} HTTP/1.1\r\nHost: a.test:{port}\r\n{billing}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status(&redirect), 302, "{redirect}");
    refuse(
        &proxy,
        &format!("GET http://api.vendor.test:{port}/v2/orders"),
        "",
    )
    .await;
    let (status_code, answer) = proxy
        .admin_json("POST", "/v1/allowlist", r#"{"domain": "api.vendor.test"}"#)
        .await;
    assert!((200..300).contains(&status_code), "{answer}");
    for _ in 0..2 {
        refuse(
            &proxy,
            &format!("GET http://www.partner.test:{port}/"),
            &billing,
        )
        .await;
    }

    let b = browser().await;
    b.open(&proxy, "allowlist").await;
    let www = "#denials-table tr[data-entry='www.partner.test']";
    b.wait_text(&format!("{www} td.count"), |t| t == "2").await;
    let rows = b
        .js(
            "return [...document.querySelectorAll('#denials-table tbody tr')].map(r => [r.dataset.entry || r.dataset.reason, r.dataset.state]).sort();",
            vec![],
        )
        .await;
    assert_eq!(
        rows,
        json!([
            ["api.vendor.test", "pending"],
            ["b.test", "missing"],
            ["port-not-allowed", "none"],
            ["www.partner.test", "missing"],
        ])
    );
    assert_most_recent_first(&b).await;
    let from = b.text(&format!("{www} td.from")).await.unwrap();
    assert!(from.starts_with("function billing"), "{from}");

    // The redirect: its tag, the hint naming the URL that redirected, which is shown too.
    let b_test = "#denials-table tr[data-entry='b.test']";
    let tags = b
        .js(
            "return [...document.querySelectorAll(arguments[0])].map(t => [t.textContent, t.title]);",
            vec![json!(format!("{b_test} span.tag"))],
        )
        .await;
    assert_eq!(tags, json!([["redirect", "redirect-denied"]]));
    let hint = b.text(&format!("{b_test} p.fix")).await.unwrap();
    assert!(
        hint.starts_with(&format!("a redirect from {start} leads here: ")),
        "{hint}"
    );
    assert_eq!(
        b.text(&format!("{b_test} .redirected")).await,
        Some(format!("redirected from {start}"))
    );
    assert_eq!(b.js(&buttons_in(b_test), vec![]).await, json!(1), "addable");

    // The pending entry: its countdown, no button.
    let vendor = "#denials-table tr[data-entry='api.vendor.test']";
    let pending = b
        .wait_text(&format!("{vendor} td.actions"), |t| {
            t.starts_with("pending, active in 4:") || t == "pending, active in 5:00"
        })
        .await;
    assert_eq!(
        b.js(&buttons_in(vendor), vec![]).await,
        json!(0),
        "{pending}"
    );
    // The panel at the top, the allowlist with the pending entry under it.
    b.js(
        "document.getElementById('denials').scrollIntoView();",
        vec![],
    )
    .await;
    b.screenshot("recent-denials").await;
    b.close().await;
}

/// With the postgres backend the tab edits the shared allowlist, whatever the file's mount:
/// Add works with a read-only config file, the file's entries are labelled as such without
/// a bin icon, and the header names the shared state.
#[tokio::test]
async fn with_shared_state_the_tab_edits_the_shared_allowlist() {
    let _one = ONE_BROWSER.lock().await;
    let db = crate::support::postgres::database();
    let proxy = egressd()
        .allow_local("keep.test")
        .table(&format!(
            "[state]\nbackend = \"postgres\"\nurl = \"{}\"",
            db.url
        ))
        .start();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&proxy.config_path, std::fs::Permissions::from_mode(0o444))
            .unwrap();
    }
    let b = browser().await;
    b.open(&proxy, "allowlist").await;
    let keep = "#allowlist-table tr[data-entry='keep.test']";
    b.wait_text(&format!("{keep} span.state"), |t| t == "active")
        .await;
    assert!(
        b.enabled("#add-button").await,
        "editable with a read-only file"
    );
    let header = b.wait_text("#state-backend", |t| !t.is_empty()).await;
    assert!(header.starts_with("shared state "), "{header}");
    assert_eq!(b.text("#state-down").await.as_deref(), Some(""));
    b.type_into("#a-domain", "added.test").await;
    b.press("#a-domain", "\n").await;
    let added = "#allowlist-table tr[data-entry='added.test']";
    b.wait_text(&format!("{added} span.state"), |t| !t.is_empty())
        .await;
    let bins = |row: &str| format!("return document.querySelectorAll(\"{row} button\").length;");
    assert_eq!(
        b.js(&bins(added), vec![]).await,
        json!(1),
        "shared: removable"
    );
    assert_eq!(
        b.js(&bins(keep), vec![]).await,
        json!(0),
        "the file's: not here"
    );
    let keep_source = b.text(&format!("{keep} td:nth-child(4)")).await.unwrap();
    assert!(keep_source.starts_with("file, line "), "{keep_source}");
    assert_eq!(
        b.text(&format!("{added} td:nth-child(4)")).await.as_deref(),
        Some("added here")
    );
    b.screenshot("allowlist-shared").await;
    assert_eq!(
        db.query_text("SELECT pattern FROM egressd_allowlist")
            .as_deref(),
        Some("added.test")
    );
    b.close().await;
}

#[tokio::test]
async fn check_a_url_shows_the_decision_and_the_redirect_chain_to_allow() {
    let _one = ONE_BROWSER.lock().await;
    let port = redirecting_origin().await;
    let proxy = egressd()
        .allow_local("a.test")
        .dns("b.test", "127.0.0.1")
        .ports(&[443], &[port])
        .start();
    let b = browser().await;
    b.open(&proxy, "check").await;
    b.type_into("#c-url", &format!("http://a.test:{port}/start\n"))
        .await;
    let verdict = b.wait_text("#check-verdict", |t| !t.is_empty()).await;
    assert!(verdict.starts_with("allowed: HTTP to a.test:"), "{verdict}");
    b.wait_text("#trace-add", |t| !t.is_empty()).await;
    let hops = b
        .js(
            "return [...document.querySelectorAll('#trace-hops li')].map(li => [li.querySelector('code').textContent, li.dataset.allowed]);",
            vec![],
        )
        .await;
    assert_eq!(
        hops,
        json!([
            [format!("http://a.test:{port}/start"), "true"],
            [format!("http://b.test:{port}/next"), "false"],
            [format!("http://b.test:{port}/final"), "false"],
        ])
    );
    let add = b
        .js(
            "return [...document.querySelectorAll('#trace-add code')].map(c => c.textContent);",
            vec![],
        )
        .await;
    assert_eq!(add, json!(["b.test"]));
    b.screenshot("check-url").await;
    b.close().await;
}

#[tokio::test]
async fn with_a_token_the_console_asks_once_and_sends_it() {
    let _one = ONE_BROWSER.lock().await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let key_file = secrets.path().join("secrets.key");
    std::fs::write(&key_file, format!("{SECRETS_KEY_HEX}\n")).unwrap();
    let proxy = egressd()
        .proxy(&format!(
            "admin_token_file = {:?}",
            token_file.display().to_string()
        ))
        .allow_local("keep.test")
        .table(&format!(
            "[secrets]\nkey_file = {:?}",
            key_file.display().to_string()
        ))
        .start();
    let b = browser().await;
    b.open(&proxy, "allowlist").await;
    eventually("the token prompt", || async {
        let hidden = b
            .js(
                "return document.getElementById('token-form').hidden;",
                vec![],
            )
            .await;
        (hidden == json!(false)).then_some(())
    })
    .await;
    b.type_into("#token-input", "s3cret-token\n").await;
    b.type_into("#a-domain", "tok.test\n").await;
    b.wait_text(
        "#allowlist-table tr[data-entry='tok.test'] span.state",
        |t| t.starts_with("pending"),
    )
    .await;
    let stored = b
        .js(
            "return [sessionStorage.length, localStorage.length, document.cookie];",
            vec![],
        )
        .await;
    assert_eq!(
        stored,
        json!([1, 0, ""]),
        "only this tab's session keeps it"
    );
    // Reading the secrets' keys needs the token too: the page sends it.
    b.open(&proxy, "secrets").await;
    b.wait_text("#secret-count", |t| t == "0 of 1000 secrets")
        .await;
    b.close().await;
}

/// The 32-byte key of `[secrets] key_file`, as 64 hex digits.
const SECRETS_KEY_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Whether `text` shows up anywhere in the page: its HTML, a field's value, the tab's storage.
async fn page_shows(b: &Browser, text: &str) -> bool {
    let found = b
        .js(
            "const t = arguments[0];
             const fields = [...document.querySelectorAll('input, textarea')].map(e => e.value);
             return document.documentElement.outerHTML.includes(t)
               || fields.some(v => v.includes(t))
               || JSON.stringify(Object.entries(sessionStorage)).includes(t)
               || JSON.stringify(Object.entries(localStorage)).includes(t);",
            vec![json!(text)],
        )
        .await;
    found == json!(true)
}

/// Secrets go in through a password field that is emptied once sent, and never come back:
/// the list has keys and metadata only, default secrets hide behind a toggle, and the bin
/// icon's confirmation names the `[[inject]]` rule and the function that lose the secret.
#[tokio::test]
async fn the_secrets_page_creates_lists_and_deletes_without_showing_a_value() {
    let _one = ONE_BROWSER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.key"),
        format!("{SECRETS_KEY_HEX}\n"),
    )
    .unwrap();
    set_mode(&dir.path().join("secrets.key"), 0o600);
    let proxy = egressd()
        .allow_local("api.test")
        .table("[secrets]\nkey_file = \"secrets.key\"\n")
        .table("[[functions]]\nname = \"billing-sync\"\nstate = \"productive\"\nurl = \"http://api.test:9/billing\"\n")
        .table("[[inject]]\nhost = \"api.test\"\nheader = \"Authorization\"\nvalue = \"Bearer {secret:partner-token}\"\nfunctions = [\"billing-sync\"]\n")
        .start_in(dir.path());
    let values = ["c0nsole-partner-credential", "r0tated-partner-credential"];
    let b = browser().await;
    b.open(&proxy, "secrets").await;
    b.wait_text("#secret-count", |t| t == "0 of 1000 secrets")
        .await;
    assert_eq!(
        b.text("#secrets-url").await.as_deref(),
        Some("GET http://secrets.egressd.internal/v1/secrets/KEY")
    );
    assert_eq!(
        b.js("return document.getElementById('s-value').type;", vec![])
            .await,
        json!("password")
    );

    // A refused key: the error is next to the key, the value is gone all the same.
    b.type_into("#s-key", "partner token").await;
    b.type_into("#s-value", values[0]).await;
    b.click("#secret-submit").await;
    let error = b.wait_text("#err-secret-key", |t| !t.is_empty()).await;
    assert!(
        error.starts_with("a secret key is 1 to 128 characters"),
        "{error}"
    );
    assert!(!page_shows(&b, values[0]).await, "emptied after a refusal");

    // Created: the row has the key and its metadata, the page has no trace of the value.
    b.type_into("#s-key", "partner-token").await;
    b.type_into("#s-value", values[0]).await;
    b.click("#secret-submit").await;
    let row = "#secrets-table tr[data-key='partner-token']";
    b.wait_text(&format!("{row} td.version"), |t| t == "1")
        .await;
    assert_eq!(
        b.text(&format!("{row} td.writer")).await.as_deref(),
        Some("operator")
    );
    for (shown, utc) in times(&b, &format!("{row} time")).await {
        assert_new_york(&shown, &utc);
    }
    let used = b.text(&format!("{row} td.used-by")).await.unwrap();
    assert!(
        used.contains("functions: billing-sync")
            && used.contains("[[inject]] api.test authorization (line "),
        "{used}"
    );
    assert_eq!(
        b.js("return document.getElementById('s-value').value;", vec![])
            .await,
        json!("")
    );
    assert_eq!(
        b.text("#secret-saved").await.as_deref(),
        Some("Saved partner-token (version 1).")
    );
    assert!(!page_shows(&b, values[0]).await, "the value is nowhere");

    // The key exists: refused, and that value is emptied too.
    b.type_into("#s-key", "partner-token").await;
    b.type_into("#s-value", values[1]).await;
    b.click("#secret-submit").await;
    let error = b.wait_text("#err-secret-form", |t| !t.is_empty()).await;
    assert!(error.contains("exists already"), "{error}");
    assert!(!page_shows(&b, values[1]).await, "emptied after a conflict");

    // Replace value: a PUT, the version goes up.
    b.click(&format!("{row} button.secondary")).await;
    b.wait_text("#secret-form-title", |t| {
        t == "Replace the value of partner-token"
    })
    .await;
    b.type_into("#s-value", values[1]).await;
    b.click("#secret-submit").await;
    b.wait_text(&format!("{row} td.version"), |t| t == "2")
        .await;
    assert!(!page_shows(&b, values[1]).await, "the new value is nowhere");

    // Default secrets (made at provisioning) are hidden until asked for.
    for body in [
        r#"{"key": "smtp-relay-password", "value": "d3fault-value", "default": true}"#,
        r#"{"key": "webhook-signing-key", "value": "w3bhook-value"}"#,
    ] {
        let (status, answer) = proxy.admin_json("POST", "/v1/secrets", body).await;
        assert_eq!(status, 201, "{answer}");
    }
    b.client.refresh().await.unwrap();
    b.wait_text("#secret-count", |t| t == "3 of 1000 secrets")
        .await;
    let smtp = "#secrets-table tr[data-key='smtp-relay-password']";
    assert!(b
        .text("#secrets-table tr[data-key='webhook-signing-key']")
        .await
        .is_some());
    assert_eq!(b.text(smtp).await, None, "hidden by default");
    assert_eq!(
        b.text("#defaults-hidden").await.as_deref(),
        Some("(1 hidden)")
    );
    b.click("#show-defaults").await;
    b.wait_text(&format!("{smtp} td.key"), |t| {
        t == "smtp-relay-passworddefault"
    })
    .await;
    assert_eq!(b.text("#defaults-hidden").await.as_deref(), Some(""));
    b.js("document.activeElement.blur();", vec![]).await;
    b.screenshot("secrets").await;

    // The bin icon: the confirmation names who loses the secret; accepted, it is gone.
    b.click(&format!("{row} button.danger")).await;
    let question = b.wait_text("#secret-delete-text", |t| !t.is_empty()).await;
    assert!(
        question.starts_with("Delete partner-token? Used by function billing-sync; injected by api.test authorization (line "),
        "{question}"
    );
    assert!(
        question.contains("Functions lose it immediately."),
        "{question}"
    );
    assert_eq!(
        b.js(
            "return document.getElementById('secret-delete').open;",
            vec![]
        )
        .await,
        json!(true)
    );
    b.screenshot("secrets-delete").await;
    b.click("#secret-delete-confirm").await;
    eventually("the row to go", || async {
        b.text(row).await.is_none().then_some(())
    })
    .await;
    b.wait_text("#secret-count", |t| t == "2 of 1000 secrets")
        .await;
    let (status, list) = proxy.admin_get("/v1/secrets").await;
    assert_eq!(status, 200, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let keys: Vec<&str> = list["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["smtp-relay-password", "webhook-signing-key"]);
    for value in values.iter().chain(&["d3fault-value", "w3bhook-value"]) {
        assert!(!page_shows(&b, value).await, "{value} is nowhere");
    }
    b.close().await;
}

/// Without `[secrets]` the page says what to add instead of an empty list.
#[tokio::test]
async fn the_secrets_page_without_a_store_says_what_to_add() {
    let _one = ONE_BROWSER.lock().await;
    let proxy = egressd().allow_local("keep.test").start();
    let b = browser().await;
    b.open(&proxy, "secrets").await;
    let notice = b.wait_text("#secrets-missing", |t| !t.is_empty()).await;
    assert!(
        notice.starts_with("egressd has no secret store: add [secrets]"),
        "{notice}"
    );
    assert_eq!(
        b.js(
            "return document.getElementById('secret-form').hidden;",
            vec![]
        )
        .await,
        json!(true)
    );
    b.close().await;
}

/// The API underneath, without a browser: what a hostile page could try.
#[tokio::test]
async fn the_admin_api_refuses_cross_site_requests() {
    let proxy = egressd().allow_local("keep.test").start();
    struct Case {
        name: &'static str,
        request: String,
        status: u16,
    }
    let body = "{\"domain\": \"x.test\"}";
    let cases = [
        Case {
            name: "a form post (text/plain) cannot carry JSON",
            request: format!("POST /v1/allowlist HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
            status: 415,
        },
        Case {
            name: "another origin",
            request: format!("POST /v1/allowlist HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
            status: 403,
        },
        Case {
            name: "the same host and port under another scheme",
            request: format!("POST /v1/allowlist HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
            status: 403,
        },
        Case {
            name: "a ws: origin",
            request: "DELETE /v1/allowlist/keep.test HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: ws://127.0.0.1\r\nConnection: close\r\n\r\n".into(),
            status: 403,
        },
        Case {
            name: "a made-up scheme",
            request: "DELETE /v1/allowlist/keep.test HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: evil://127.0.0.1\r\nConnection: close\r\n\r\n".into(),
            status: 403,
        },
        Case {
            name: "another port",
            request: "DELETE /v1/allowlist/keep.test HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1:8080\r\nConnection: close\r\n\r\n".into(),
            status: 403,
        },
        Case {
            name: "a sandboxed frame's null origin",
            request: "DELETE /v1/allowlist/keep.test HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: null\r\nConnection: close\r\n\r\n".into(),
            status: 403,
        },
        Case {
            name: "the listener's own origin passes (the entry is not there: 404)",
            request: "DELETE /v1/allowlist/nope.test HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nConnection: close\r\n\r\n".into(),
            status: 404,
        },
        Case {
            name: "a rebound name on the loopback listener",
            request: "GET /v1/schedules HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n".into(),
            status: 403,
        },
        Case {
            name: "health answers any Host",
            request: "GET /healthz HTTP/1.1\r\nHost: egressd-admin\r\nConnection: close\r\n\r\n".into(),
            status: 200,
        },
        Case {
            name: "the console page",
            request: "GET / HTTP/1.1\r\nHost: localhost:9901\r\nConnection: close\r\n\r\n".into(),
            status: 200,
        },
    ];
    for case in cases {
        let raw = raw_exchange(proxy.admin, case.request.as_bytes()).await;
        assert_eq!(status(&raw), case.status, "{}: {raw}", case.name);
    }
    let page = raw_exchange(
        proxy.admin,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let csp = header(&page, "content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !page.contains("http://") || !page.contains("<script src=\"http"),
        "no CDN"
    );
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(!text.contains("x.test"), "nothing was written: {text}");
    assert!(text.contains("keep.test"), "nothing was removed: {text}");
}

/// Every state-changing route against every content type: a route that reads a body takes
/// JSON only, a route without one takes no content type or JSON's, never a form's. A refused
/// request changes nothing.
#[tokio::test]
async fn every_state_change_refuses_a_body_that_is_not_declared_json() {
    let functions = "[[functions]]\nname = \"refresh-token\"\nstate = \"productive\"\nurl = \"http://fn.test:9/invoke\"\n";
    let proxy = egressd().allow_local("keep.test").table(functions).start();
    let schedule = r#"{"function": "refresh-token", "cron": "@daily", "payload": "p"}"#;
    // (method, path, body); an empty body marks a route that reads none.
    let routes = [
        ("POST", "/v1/reload", ""),
        ("POST", "/v1/schedules", schedule),
        ("DELETE", "/v1/schedules/sch_nope", ""),
        ("POST", "/v1/schedules/sch_nope/run", ""),
        ("POST", "/v1/allowlist", r#"{"domain": "ct.test"}"#),
        ("DELETE", "/v1/allowlist/nope.test", ""),
        ("POST", "/v1/trace", r#"{"url": "http://nope.test/"}"#),
    ];
    // (Content-Type header lines, accepted on a JSON route, accepted on a route without a body)
    let types = [
        ("", false, true),
        ("Content-Type: text/plain\r\n", false, false),
        ("Content-Type: text/plain;charset=UTF-8\r\n", false, false),
        (
            "Content-Type: application/x-www-form-urlencoded\r\n",
            false,
            false,
        ),
        (
            "Content-Type: multipart/form-data; boundary=x\r\n",
            false,
            false,
        ),
        ("Content-Type: application/xml\r\n", false, false),
        ("Content-Type: text/html\r\n", false, false),
        ("Content-Type: application/octet-stream\r\n", false, false),
        ("Content-Type: application/jsonx\r\n", false, false),
        (
            "Content-Type: application/json-patch+json\r\n",
            false,
            false,
        ),
        ("Content-Type: text/json\r\n", false, false),
        (
            "Content-Type: application/json; charset=latin1\r\n",
            false,
            false,
        ),
        (
            "Content-Type: application/json\r\nContent-Type: text/plain\r\n",
            false,
            false,
        ),
        ("Content-Type: application/json\r\n", true, true),
        (
            "Content-Type: Application/JSON; charset=utf-8\r\n",
            true,
            true,
        ),
    ];
    let send = |method: &str, path: &str, body: &str, content_type: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let config_before = std::fs::read_to_string(&proxy.config_path).unwrap();
    let mut wrong = Vec::new();
    // Refusals first, so that "changes nothing" is checked before an accepted request changes
    // something.
    for accepted_pass in [false, true] {
        for (method, path, body) in routes {
            for (content_type, json_ok, empty_ok) in types {
                let accepted = if body.is_empty() { empty_ok } else { json_ok };
                if accepted != accepted_pass {
                    continue;
                }
                let raw = raw_exchange(
                    proxy.admin,
                    send(method, path, body, content_type).as_bytes(),
                )
                .await;
                let refused = status(&raw) == 415;
                if refused == accepted {
                    wrong.push(format!(
                        "{method} {path} with {content_type:?}: {}",
                        raw.lines().next().unwrap_or("")
                    ));
                }
            }
        }
        if !accepted_pass {
            let (_, schedules) = proxy.admin_get("/v1/schedules").await;
            assert_eq!(
                schedules.trim(),
                "[]",
                "no refused request created a schedule"
            );
            let config = std::fs::read_to_string(&proxy.config_path).unwrap();
            assert_eq!(
                config, config_before,
                "no refused request edited the allowlist"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let (_, schedules) = proxy.admin_get("/v1/schedules").await;
    let created: Value = serde_json::from_str(&schedules).unwrap();
    assert_eq!(
        created.as_array().unwrap().len(),
        2,
        "each JSON type created one: {created}"
    );
}

/// Bodies the API takes are JSON objects; anything else is a 400 naming what was expected.
#[tokio::test]
async fn json_bodies_must_be_objects() {
    let functions = "[[functions]]\nname = \"refresh-token\"\nstate = \"productive\"\nurl = \"http://fn.test:9/invoke\"\n";
    let proxy = egressd().allow_local("keep.test").table(functions).start();
    let cases = [
        ("/v1/schedules", r#"["refresh-token", "0 0 1 1 *", "pl"]"#),
        ("/v1/schedules", r#""refresh-token""#),
        ("/v1/schedules", "42"),
        ("/v1/schedules", "null"),
        ("/v1/allowlist", r#"["ct.test"]"#),
        ("/v1/trace", r#"["http://nope.test/"]"#),
    ];
    for (path, body) in cases {
        let (status, answer) = proxy.admin_json("POST", path, body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let error: Value = serde_json::from_str(&answer).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains("expected a JSON object"),
            "{path} {body}: {message}"
        );
    }
    let (_, schedules) = proxy.admin_get("/v1/schedules").await;
    assert_eq!(schedules.trim(), "[]");
    let (status, answer) = proxy
        .admin_json("POST", "/v1/allowlist", r#"{"domain": "[::1]"}"#)
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.contains(r#"write \"::1\""#),
        "the hint gives the accepted form: {answer}"
    );
}
