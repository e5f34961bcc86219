//! The commands through the real binary: `check`, `explain`, `cron`, `health`, `completions`
//! and `man`.

use std::path::Path;

use assert_cmd::Command;

/// Writes `text` as the config; a `[proxy]` table gets a state_dir inside `dir`, so no test
/// reads activation state from the working directory.
fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("egressd.toml");
    let state = format!(
        "[proxy]\nstate_dir = {:?}\n",
        dir.join("state").display().to_string()
    );
    let text = if text.contains("[proxy]\n") {
        text.replacen("[proxy]\n", &state, 1)
    } else {
        text.to_string()
    };
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `egressd <command> --config <config> <args>` to the end.
fn egressd(command: &str, config: &Path, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("egressd")
        .unwrap()
        .args([command, "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `egressd <args>` to the end.
fn egressd_args(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("egressd")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_shipped_example() {
    let out = egressd("check", Path::new("config/egressd.toml"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("config/egressd.toml: OK"), "{text}");
    assert!(
        text.contains("3 entries: 1 exact, 1 wildcard, 1 IP"),
        "{text}"
    );
}

/// `config/<name>` with the image's paths moved into `dir` (the token file holds a token, the
/// state dir does not exist yet) and `extra` (path, replacement) pairs; returns the copy.
fn container_config(dir: &Path, name: &str, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let token = dir.join("admin.token");
    std::fs::write(&token, "test-token\n").unwrap();
    let state = dir.join("state");
    let mut text = std::fs::read_to_string(Path::new("config").join(name)).unwrap();
    let moves = [
        ("/etc/egressd/admin.token", token.to_str().unwrap()),
        ("/var/lib/egressd", state.to_str().unwrap()),
    ];
    for (from, to) in moves.iter().chain(extra) {
        let quoted = format!("\"{from}\"");
        assert!(text.contains(&quoted), "config/{name} lacks {quoted}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_container_example() {
    // config/docker.toml names the image's paths; the token file and the state dir move to
    // a temp dir, the rest is checked as shipped.
    let dir = tempfile::tempdir().unwrap();
    let path = container_config(dir.path(), "docker.toml", &[]);
    let out = egressd("check", &path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("proxy      0.0.0.0:3128"), "{stdout}");
    assert!(
        stdout.contains("admin      0.0.0.0:9901 (bearer token required)"),
        "{stdout}"
    );
    assert!(stdout.contains("state      file backend"), "{stdout}");
}

#[test]
fn check_accepts_the_container_ha_example() {
    // config/docker-ha.toml (the ha overlay's ConfigMap) adds [state] backend = "postgres";
    // `check` connects, so database.url moves too and names a fresh test database.
    let db = crate::support::postgres::database();
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("database.url");
    std::fs::write(&url_file, format!("{}\n", db.url)).unwrap();
    let path = container_config(
        dir.path(),
        "docker-ha.toml",
        &[("/etc/egressd/database.url", url_file.to_str().unwrap())],
    );
    let out = egressd("check", &path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("proxy      0.0.0.0:3128"), "{stdout}");
    assert!(stdout.contains("state      postgres"), "{stdout}");
    assert!(stdout.contains("no schema yet"), "{stdout}");
}

#[test]
fn check_lists_every_invalid_pattern_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [
        ("*", "a bare \"*\" would allow every host"),
        ("*.", "\"*.\" needs a domain after it"),
        (
            "*.*.example.com",
            "only one leading wildcard is allowed; use \"*.example.com\"",
        ),
        ("a.*.com", "a wildcard must be the whole first label"),
        ("*x.com", "use \"*.x.com\" for its subdomains or \"x.com\""),
        ("x.*", "a wildcard must be the whole first label"),
        ("*.com", "at least two labels"),
        ("a..example.com", "empty label"),
        ("https://example.com", "not URLs; write \"example.com\""),
        ("example.com/api", "without a path; write \"example.com\""),
        ("example.com:443", "without a port; write \"example.com\""),
        ("bücher.example", "punycode form \"xn--bcher-kva.example\""),
        ("0x7f.1", "not a canonical IPv4 address"),
    ];
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    let mut text = String::from("[allowlist]\ndomains = [\n  \"good.example.com\",\n");
    for (entry, _) in &entries {
        text.push_str(&format!("  \"{entry}\",\n"));
    }
    text.push_str(&format!("  \"{long_label}\",\n  \"{long_name}\",\n]\n"));
    let path = write(dir.path(), &text);
    let out = egressd("check", &path, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), entries.len() + 2, "{stderr}");
    for (i, (entry, message)) in entries.iter().enumerate() {
        let prefix = format!(
            "{}:{}: allowlist.domains[{}] \"{}\": ",
            path.display(),
            i + 4,
            i + 1,
            entry
        );
        assert!(
            lines[i].starts_with(&prefix),
            "{:?} should start with {prefix:?}",
            lines[i]
        );
        assert!(
            lines[i].contains(message),
            "{:?} lacks {message:?}",
            lines[i]
        );
    }
    assert!(
        lines[entries.len()].contains("longer than 63 bytes"),
        "{stderr}"
    );
    assert!(
        lines[entries.len() + 1].contains("longer than 253 bytes"),
        "{stderr}"
    );
}

#[test]
fn check_reports_unknown_keys_and_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[proxy]\nlisten = \"127.0.0.1:3128\"\nconect_ports = [443]\n",
    );
    let out = egressd("check", &path, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{}:4: ", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `conect_ports`"), "{stderr}");

    let path = write(dir.path(), "[allowlist]\ndomains = [\"a.com\"\n");
    let out = egressd("check", &path, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with(&format!("{}:", path.display())));
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[allowlist]\ndomains = [\"*\"]\n");
    let out = egressd("run", &path, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("allowlist.domains[0] \"*\""));
}

#[test]
fn explain_prints_decision_reason_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[proxy]\nhttp_ports = [80]\n[dns]\noverrides = { \"db.example.org\" = \"10.1.2.3\" }\n[allowlist]\ndomains = [\n  \"example.com\",\n  \"*.example.org\",\n]\n",
    );
    let cases: [(&str, i32, &str); 7] = [
        ("www.example.com", 1, "denied (not-allowlisted): \"example.com\" is allowlisted but does not cover subdomains; add \"www.example.com\" or \"*.example.com\""),
        ("example.com", 0, "allowed: CONNECT to example.com:443 matches rule \"example.com\" (line 8)"),
        ("https://a.b.example.org/path", 0, "allowed: CONNECT to a.b.example.org:443 matches rule \"*.example.org\" (line 9)"),
        ("http://example.com/", 0, "allowed: HTTP to example.com:80 matches rule \"example.com\" (line 8)"),
        ("example.org", 1, "denied (not-allowlisted): \"*.example.org\" covers subdomains only, not \"example.org\" itself; add \"example.org\""),
        ("example.com:8443", 1, "denied (port-not-allowed): port 8443 is not open for connect requests"),
        ("db.example.org", 1, "denied (private-destination): 10.1.2.3 is in the private 10.0.0.0/8 range"),
    ];
    let mut failures = Vec::new();
    for (target, code, expected) in cases {
        let out = egressd("explain", &path, &[target]);
        let stdout = String::from_utf8(out.stdout).unwrap();
        if out.status.code() != Some(code) || !stdout.starts_with(expected) {
            failures.push(format!(
                "{target}: expected exit {code} and {expected:?}, got {:?} and {stdout:?}",
                out.status.code()
            ));
        }
    }
    crate::support::assert_no_failures(&failures, cases.len());
}

#[test]
fn cron_prints_the_next_runs_in_utc_and_local_time() {
    let out = Command::cargo_bin("egressd")
        .unwrap()
        .args([
            "cron",
            "*/5 * * * *",
            "--count",
            "3",
            "--after",
            "2026-11-28T10:03:00Z",
        ])
        // A POSIX TZ string: no tzdata package needed (New York rules).
        .env("TZ", "EST5EDT,M3.2.0,M11.1.0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "2026-11-28T10:05:00Z  2026-11-28 05:05:00 -05:00 (local)\n\
         2026-11-28T10:10:00Z  2026-11-28 05:10:00 -05:00 (local)\n\
         2026-11-28T10:15:00Z  2026-11-28 05:15:00 -05:00 (local)\n"
    );
}

#[test]
fn cron_explains_an_invalid_expression_with_examples() {
    let out = egressd_args(&["cron", "61 * * * *"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("minute field \"61\""), "{err}");
    assert!(
        err.contains("`30 2 * * MON-FRI` (weekdays at 02:30 UTC)"),
        "{err}"
    );
}

#[test]
fn health_exits_0_when_healthz_says_ok_and_1_when_unreachable() {
    let proxy = crate::support::egressd().allow("www.example.com").start();
    let out = egressd_args(&["health", "--admin", &format!("http://{}", proxy.admin)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "ok\n");

    let port = crate::support::closed_port();
    let closed = format!("http://127.0.0.1:{port}");
    let out = egressd_args(&["health", "--admin", &closed, "--timeout", "2s"]);
    // Docker reads 1 as unhealthy (and reserves 2).
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot reach the admin listener"), "{err}");
}

#[test]
fn bash_completions_name_every_command() {
    let out = egressd_args(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("complete -F _egressd"), "{script}");
    for command in [
        "run",
        "check",
        "explain",
        "schedules",
        "cron",
        "health",
        "completions",
        "man",
    ] {
        assert!(
            script.contains(&format!("egressd,{command})")),
            "{command} missing"
        );
    }
}

#[test]
fn man_prints_a_roff_page_and_writes_one_per_command() {
    let out = egressd_args(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).unwrap();
    // clap_mangen first defines the apostrophe string (`.ie`/`.el`), then the title.
    let first = page
        .lines()
        .find(|line| !line.starts_with(".ie") && !line.starts_with(".el"));
    assert!(
        first.is_some_and(|line| line.starts_with(".TH egressd 1")),
        "{page}"
    );
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out = egressd_args(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let run = std::fs::read_to_string(dir.path().join("egressd-run.1")).unwrap();
    assert!(run.contains(".TH egressd-run 1"), "{run}");
    assert!(run.contains("config"), "{run}");
}

/// The README's `egressd explain` examples, run on the example config (with a state dir of
/// their own, as on a first start): each prints what the README says it prints.
#[test]
fn the_readme_explain_examples_print_what_the_readme_says() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string("config/egressd.toml").unwrap();
    let config = dir.path().join("egressd.toml");
    std::fs::write(&config, example).unwrap();
    let mut lines = readme.lines();
    let mut examples = 0;
    let mut wrong = Vec::new();
    while let Some(line) = lines.next() {
        let Some(target) = line.strip_prefix("$ egressd explain --config config/egressd.toml ")
        else {
            continue;
        };
        let said = lines.next().unwrap_or("");
        examples += 1;
        let out = Command::cargo_bin("egressd")
            .unwrap()
            .current_dir(dir.path())
            .args(["explain", "--config", "egressd.toml", target])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        if printed != said {
            wrong.push(format!(
                "{target}: the README says\n  {said}\nbut egressd prints\n  {printed}"
            ));
        }
    }
    assert!(examples >= 2, "the README's explain examples were found");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
