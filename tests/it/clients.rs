//! The HTTP clients that function code actually uses, pointed at the real binary through
//! environment variables only: curl, wget, Python's urllib, requests, httpx and aiohttp,
//! Node's undici and built-in fetch, Go's net/http. Each row of [`clients`] names the
//! variables a client is given and what it shows a program of four requests: a plain-HTTP GET
//! and an HTTPS GET (through CONNECT, to a TLS origin whose certificate the client is told to
//! trust its usual way) to an allowed host, and the same two to a host that is not on the
//! allowlist. [`ignoring_clients`] shows the variables that clients do not read.
//!
//! Every row runs and all failures are reported together. The measured table is printed and
//! written to `target/tmp/clients.md`; docs/clients.md ("Using egressd from your function")
//! quotes it. The runtimes come from Debian's packages and the libraries from the pinned
//! files in `tests/clients/`: `.ci/run` installs both (the libraries through
//! `tests/clients/setup`). A missing one fails the test, naming what to install; nothing is
//! skipped.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::*;
use serde::Deserialize;

/// The reason phrase of every denial here: `denied.test` resolves, but is not allowed.
const REASON: &str = r#"not-allowlisted: "denied.test" is not on the allowlist; add "denied.test""#;

/// How long one client run may take (each client has its own 10 s request timeout).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// How a client is run.
#[derive(Clone, Copy, Debug)]
enum Program {
    /// `curl -q -sS -i URL`: response heads (a refused CONNECT's too) on stdout, `curl: (N)
    /// ...` on stderr.
    Curl,
    /// `wget -S -O - --tries=1 URL`: response heads on stderr, the body on stdout.
    Wget,
    /// `tests/clients/py_client.py LIBRARY URL` with the pinned venv's Python.
    Python(&'static str),
    /// `node tests/clients/node_client.mjs CLIENT URL`.
    Node(&'static str),
    /// `tests/clients/go_client`, built here (standard library only).
    Go,
}

/// How a client is told to trust the test origin's certificate: its usual way.
#[derive(Clone, Copy, Debug)]
enum Trust {
    /// A command-line flag before the file: `--cacert FILE`.
    Flag(&'static str),
    /// A variable naming the file: `SSL_CERT_FILE=FILE`.
    Env(&'static str),
}

/// What a program shows of a denied request.
#[derive(Clone, Copy, Debug)]
enum Seen {
    /// A response it can inspect: status 403, the reason phrase [`REASON`] and
    /// `x-egress-denied: not-allowlisted`.
    Response,
    /// A failure whose text carries the reason phrase.
    ErrorWithReason,
    /// A failure whose text says this, and not the reason.
    Error(&'static str),
    /// A failure whose text says this, while the output also holds the proxy's refusal head
    /// (status 403 with the reason phrase).
    ErrorAndHead(&'static str),
}

/// One client, the way function code configures it, and what it must show.
struct Client {
    name: &'static str,
    program: Program,
    /// The proxy variables it is given, each set to egressd's URL; no other proxy variable
    /// (`NO_PROXY` included) is set.
    proxy_vars: &'static [&'static str],
    /// Other variables it needs.
    env: &'static [(&'static str, &'static str)],
    trust: Trust,
    denied_http: Seen,
    denied_https: Seen,
    /// Where the client reports that its runtime cannot read the proxy variables, the error
    /// every request gets instead (it went around egressd, where the names do not resolve).
    unsupported: Option<&'static str>,
}

fn clients() -> Vec<Client> {
    use Program::*;
    use Seen::*;
    use Trust::*;
    const UPPER_CASE: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY"];
    let undici_refusal = Error("Proxy response (403) !== 200 when HTTP Tunneling");
    let client = |name, program, proxy_vars, trust, denied_http, denied_https| Client {
        name,
        program,
        proxy_vars,
        env: &[],
        trust,
        denied_http,
        denied_https,
        unsupported: None,
    };
    vec![
        // curl reads only lower-case http_proxy (upper-case HTTPS_PROXY is fine). Without -i
        // or -v a refused CONNECT is only "CONNECT tunnel failed, response 403"; with -i the
        // refusal's head, reason phrase included, is on stdout.
        client(
            "curl -i",
            Curl,
            &["http_proxy", "HTTPS_PROXY"],
            Flag("--cacert"),
            Response,
            ErrorAndHead("curl: (56) CONNECT tunnel failed, response 403"),
        ),
        // wget reads only lower-case variables.
        client(
            "wget",
            Wget,
            &["http_proxy", "https_proxy"],
            Flag("--ca-certificate"),
            Response,
            ErrorWithReason,
        ),
        client(
            "Python urllib",
            Python("urllib"),
            UPPER_CASE,
            Env("SSL_CERT_FILE"),
            Response,
            ErrorWithReason,
        ),
        client(
            "Python requests",
            Python("requests"),
            UPPER_CASE,
            Env("REQUESTS_CA_BUNDLE"),
            Response,
            ErrorWithReason,
        ),
        client(
            "Python httpx",
            Python("httpx"),
            UPPER_CASE,
            Env("SSL_CERT_FILE"),
            Response,
            ErrorWithReason,
        ),
        client(
            "Python aiohttp, trust_env=True",
            Python("aiohttp"),
            UPPER_CASE,
            Env("SSL_CERT_FILE"),
            Response,
            ErrorWithReason,
        ),
        // undici tunnels http:// URLs through CONNECT too, so a denied plain-HTTP request is
        // a refused CONNECT: the program gets an error with the status, never the response.
        client(
            "Node undici EnvHttpProxyAgent",
            Node("undici"),
            UPPER_CASE,
            Env("NODE_EXTRA_CA_CERTS"),
            undici_refusal,
            undici_refusal,
        ),
        // Where NODE_USE_ENV_PROXY works (Node v24, v22.21) fetch uses undici's agent, so it
        // should fail as undici does; Debian's Node is older and says so.
        Client {
            env: &[("NODE_USE_ENV_PROXY", "1")],
            unsupported: Some("ENOTFOUND"),
            ..client(
                "Node built-in fetch, NODE_USE_ENV_PROXY=1",
                Node("fetch"),
                UPPER_CASE,
                Env("NODE_EXTRA_CA_CERTS"),
                undici_refusal,
                undici_refusal,
            )
        },
        client(
            "Go net/http",
            Go,
            UPPER_CASE,
            Env("SSL_CERT_FILE"),
            Response,
            ErrorWithReason,
        ),
    ]
}

/// Where a request goes when the client does not read the variables it is given.
#[derive(Clone, Copy, Debug)]
enum Around {
    /// To `api.test`, which only egressd resolves: the client fails with this text.
    Unresolved(&'static str),
    /// To `127.0.0.1`: the client reaches the origin itself, without egressd's `Via`.
    Direct,
}

/// A client given variables it ignores: a plain-HTTP GET goes around egressd.
struct Ignoring {
    name: &'static str,
    program: Program,
    proxy_vars: &'static [&'static str],
    around: Around,
}

fn ignoring_clients() -> Vec<Ignoring> {
    use Around::*;
    use Program::*;
    vec![
        Ignoring {
            name: "curl with upper-case HTTP_PROXY only",
            program: Curl,
            proxy_vars: &["HTTP_PROXY"],
            around: Unresolved("curl: (6) Could not resolve host: api.test"),
        },
        Ignoring {
            name: "wget with upper-case variables only",
            program: Wget,
            proxy_vars: &["HTTP_PROXY", "HTTPS_PROXY"],
            // Quoted with ‘’ or '' depending on the locale.
            around: Unresolved("wget: unable to resolve host address"),
        },
        Ignoring {
            name: "Python aiohttp without trust_env=True",
            program: Python("aiohttp-default"),
            proxy_vars: &["HTTP_PROXY", "HTTPS_PROXY"],
            around: Unresolved("Cannot connect to host api.test"),
        },
        Ignoring {
            name: "Node built-in fetch without NODE_USE_ENV_PROXY",
            program: Node("fetch"),
            proxy_vars: &["HTTP_PROXY", "HTTPS_PROXY"],
            around: Unresolved("getaddrinfo ENOTFOUND api.test"),
        },
        Ignoring {
            name: "Go net/http to a loopback address",
            program: Go,
            proxy_vars: &["HTTP_PROXY", "HTTPS_PROXY"],
            around: Direct,
        },
    ]
}

#[tokio::test]
async fn every_client_reaches_allowed_hosts_and_shows_why_others_are_denied() {
    let tools = tools();
    let origin = origin().await;
    let (tls, pem) = tls_origin("api.test").await;
    let proxy = egressd()
        .allow_local("api.test")
        .dns("denied.test", "127.0.0.1")
        .ports(&[tls.port()], &[origin.port()])
        .start();
    let ca = proxy.dir().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let http = |host: &str| format!("http://{host}:{}/echo", origin.port());
    let https = |host: &str| format!("https://{host}:{}/echo", tls.port());

    let mut failures = Vec::new();
    let mut table = String::from(
        "| client | variables | allowed http:// | allowed https:// | denied http:// | denied https:// |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for client in clients() {
        let env = client_env(
            &proxy,
            client.proxy_vars,
            client.env,
            Some((client.trust, &ca)),
        );
        let run = |url: String| tools.run(client.program, url, env.clone(), client.trust, &ca);
        let outcomes = [
            run(http("api.test")).await,
            run(https("api.test")).await,
            run(http("denied.test")).await,
            run(https("denied.test")).await,
        ];
        let checks = match (client.unsupported, &outcomes[0].unsupported) {
            (Some(error), Some(_)) => outcomes
                .iter()
                .map(|o| bypassed(o, Around::Unresolved(error)))
                .collect(),
            _ => vec![
                allowed(&outcomes[0], true),
                allowed(&outcomes[1], false),
                denied(&outcomes[2], client.denied_http),
                denied(&outcomes[3], client.denied_https),
            ],
        };
        let cases = [
            "allowed http",
            "allowed https",
            "denied http",
            "denied https",
        ];
        for ((case, check), outcome) in cases.iter().zip(checks).zip(&outcomes) {
            if let Err(why) = check {
                failures.push(format!(
                    "{} / {case}: {why}\n    saw: {outcome:?}",
                    client.name
                ));
            }
        }
        let cells: Vec<String> = outcomes.iter().map(Outcome::shown).collect();
        table.push_str(&format!(
            "| {} ({}) | {} | {} |\n",
            client.name,
            tools.version(client.program).await,
            client.proxy_vars.join(", "),
            cells.join(" | ")
        ));
    }
    report("clients.md", &table);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn clients_go_around_egressd_when_they_ignore_the_variables_given() {
    let tools = tools();
    let origin = origin().await;
    let proxy = http_proxy("api.test", origin.port()).start();
    let mut failures = Vec::new();
    let mut table = String::from("| client | variables | plain-HTTP GET |\n| --- | --- | --- |\n");
    for client in ignoring_clients() {
        let host = match client.around {
            Around::Unresolved(_) => "api.test",
            Around::Direct => "127.0.0.1",
        };
        let url = format!("http://{host}:{}/echo", origin.port());
        let env = client_env(&proxy, client.proxy_vars, &[], None);
        let outcome = tools
            .run(
                client.program,
                url,
                env,
                Trust::Env("SSL_CERT_FILE"),
                Path::new(""),
            )
            .await;
        if let Err(why) = bypassed(&outcome, client.around) {
            failures.push(format!("{}: {why}\n    saw: {outcome:?}", client.name));
        }
        let shown = match client.around {
            Around::Direct => format!("{} (straight to the origin)", outcome.shown()),
            Around::Unresolved(_) => outcome.shown(),
        };
        table.push_str(&format!(
            "| {} | {} | {shown} |\n",
            client.name,
            client.proxy_vars.join(", ")
        ));
    }
    report("clients-ignoring.md", &table);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The token of `fn-a` in [`every_client_sends_the_credentials_in_its_proxy_url`].
const FN_A_TOKEN: &str = "fn-a-token-0123456789abcdef";

/// What egressd saw of one client run: each request's method, status and function, from its
/// access lines.
fn seen_by_egressd(lines: &[serde_json::Value]) -> Vec<(String, u64, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap_or("").to_string(),
                l["status"].as_u64().unwrap_or(0),
                l["function"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Whether the requests of `method` in a run carried fn-a's credentials: "yes", "no", or
/// "–" when the client sent none of that method.
fn sends_on(seen: &[(String, u64, String)], method: &str) -> &'static str {
    let of: Vec<_> = seen.iter().filter(|(m, _, _)| m == method).collect();
    match (of.is_empty(), of.iter().any(|(_, _, f)| f == "fn-a")) {
        (true, _) => "–",
        (false, true) => "yes",
        (false, false) => "no",
    }
}

#[tokio::test]
async fn every_client_sends_the_credentials_in_its_proxy_url() {
    let tools = tools();
    let origin = origin().await;
    let (tls, pem) = tls_origin("api.test").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fn-a.token"), FN_A_TOKEN).unwrap();
    let proxy = egressd()
        .allow_local("api.test")
        .ports(&[tls.port()], &[origin.port()])
        .proxy("identity = \"required\"")
        .table("[[functions]]\nname = \"fn-a\"\nstate = \"productive\"\nurl = \"http://fn-a.test/\"\ntoken_file = \"fn-a.token\"\n")
        .start_in(dir.path());
    let ca = proxy.dir().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let http = format!("http://api.test:{}/echo", origin.port());
    let https = format!("https://api.test:{}/echo", tls.port());
    let with = |token: &str| format!("http://fn-a:{token}@{}", proxy.proxy);

    let mut failures = Vec::new();
    let mut table = String::from(
        "| client | valid http:// | valid https:// | wrong token http:// | wrong token https:// | sends on plain requests | sends on CONNECT | retries after 407 |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for client in clients().into_iter().filter(|c| c.unsupported.is_none()) {
        let mut cells = Vec::new();
        let mut seen_all = Vec::new();
        let mut retries = Vec::new();
        for (case, token, url) in [
            ("valid http", FN_A_TOKEN, &http),
            ("valid https", FN_A_TOKEN, &https),
            ("wrong http", "fn-a-token-wrong-0123456789", &http),
            ("wrong https", "fn-a-token-wrong-0123456789", &https),
        ] {
            let env = client_env_with(
                &proxy,
                &with(token),
                client.proxy_vars,
                client.env,
                Some((client.trust, &ca)),
            );
            let before = proxy.access_logs().len();
            let outcome = tools
                .run(client.program, url.clone(), env, client.trust, &ca)
                .await;
            // Each request's line is written when it ends, before the client sees it end.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let seen = seen_by_egressd(&proxy.access_logs()[before..]);
            let valid = case.starts_with("valid");
            let check = if valid {
                allowed(&outcome, case.ends_with("http"))
            } else if outcome.status == Some(200) {
                Err("a wrong token got 200".into())
            } else if seen.iter().any(|(_, status, _)| *status != 407) {
                Err(format!(
                    "egressd answered a wrong token with something else than 407: {seen:?}"
                ))
            } else {
                Ok(())
            };
            if let Err(why) = check {
                failures.push(format!(
                    "{} / {case}: {why}\n    saw: {outcome:?}\n    egressd saw: {seen:?}",
                    client.name
                ));
            }
            if !valid {
                retries.push(seen.len().saturating_sub(1));
            }
            cells.push(outcome.shown());
            seen_all.extend(seen.into_iter().filter(|_| valid));
        }
        let retried = match retries.iter().max() {
            Some(0) | None => "no".to_string(),
            Some(n) => format!("yes ({n} more)"),
        };
        table.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {retried} |\n",
            client.name,
            tools.version(client.program).await,
            cells.join(" | "),
            sends_on(&seen_all, "GET"),
            sends_on(&seen_all, "CONNECT"),
        ));
    }
    report("clients-identity.md", &table);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The client's whole environment: `PATH`, a fresh `HOME` (no rc files), the proxy variables
/// set to egressd, `extra`, and the CA variable when the client trusts through one.
fn client_env(
    proxy: &Egressd,
    proxy_vars: &[&str],
    extra: &[(&str, &str)],
    trust: Option<(Trust, &Path)>,
) -> Vec<(String, String)> {
    client_env_with(proxy, &proxy.proxy_url(), proxy_vars, extra, trust)
}

/// [`client_env`] with the proxy variables set to `proxy_url` (credentials in it, say).
fn client_env_with(
    proxy: &Egressd,
    proxy_url: &str,
    proxy_vars: &[&str],
    extra: &[(&str, &str)],
    trust: Option<(Trust, &Path)>,
) -> Vec<(String, String)> {
    let home = proxy.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        ),
        ("HOME".to_string(), home.display().to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    env.extend(
        proxy_vars
            .iter()
            .map(|v| (v.to_string(), proxy_url.to_string())),
    );
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    if let Some((Trust::Env(var), ca)) = trust {
        env.push((var.to_string(), ca.display().to_string()));
    }
    env
}

/// What a program got: a response (any status), an error, or both (a command-line tool that
/// printed a response head and failed).
#[derive(Debug, Default, Deserialize)]
struct Outcome {
    status: Option<u16>,
    reason: Option<String>,
    /// The `x-egress-denied` header.
    denied: Option<String>,
    body: Option<String>,
    error: Option<String>,
    /// Set by a client whose runtime cannot read the proxy variables.
    unsupported: Option<String>,
}

impl Outcome {
    /// One table cell.
    fn shown(&self) -> String {
        let mut parts = Vec::new();
        if let Some(why) = &self.unsupported {
            parts.push(format!("not supported: {why}"));
        }
        if let Some(status) = self.status {
            let reason = self.reason.as_deref().unwrap_or("");
            parts.push(format!("`{status} {reason}`"));
        }
        if let Some(denied) = &self.denied {
            parts.push(format!("`x-egress-denied: {denied}`"));
        }
        if let Some(error) = &self.error {
            parts.push(format!("error `{error}`"));
        }
        parts.join(", ").replace('|', "\\|")
    }
}

/// An allowed GET of `/echo`: 200 and the origin's echo of the request, which shows egressd's
/// `Via` when egressd forwarded it (plain HTTP). HTTPS needs no such proof: only egressd
/// resolves `api.test`.
fn allowed(o: &Outcome, forwarded: bool) -> Result<(), String> {
    if o.status != Some(200) || o.error.is_some() {
        return Err("expected 200 without an error".into());
    }
    let body = o.body.as_deref().unwrap_or("");
    if !body.starts_with("GET /echo HTTP/1.1") {
        return Err("expected the origin's echo of the request".into());
    }
    if forwarded && !body.contains("via: 1.1 egressd") {
        return Err("expected the request to pass egressd (its Via header)".into());
    }
    Ok(())
}

fn denied(o: &Outcome, seen: Seen) -> Result<(), String> {
    let error = o.error.as_deref().unwrap_or("");
    let head = o.status == Some(403) && o.reason.as_deref() == Some(REASON);
    let ok = match seen {
        Seen::Response => head && o.denied.as_deref() == Some("not-allowlisted"),
        Seen::ErrorWithReason => o.status.is_none() && error.contains(REASON),
        Seen::Error(text) => o.status.is_none() && error.contains(text),
        Seen::ErrorAndHead(text) => head && error.contains(text),
    };
    ok.then_some(())
        .ok_or_else(|| format!("expected the denial to show as {seen:?}"))
}

fn bypassed(o: &Outcome, around: Around) -> Result<(), String> {
    let ok = match around {
        Around::Unresolved(text) => {
            o.status.is_none() && o.error.as_deref().is_some_and(|e| e.contains(text))
        }
        Around::Direct => {
            o.status == Some(200)
                && o.body.as_deref().is_some_and(|b| {
                    b.starts_with("GET /echo HTTP/1.1") && !b.contains("via: 1.1 egressd")
                })
        }
    };
    ok.then_some(())
        .ok_or_else(|| format!("expected the request to go around egressd: {around:?}"))
}

/// Prints a measured table and keeps it in the target's tmp dir.
fn report(file: &str, table: &str) {
    println!("{table}");
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join(file), table).unwrap();
}

/// The client programs, found (and the Go client built) once per test binary.
struct Tools {
    clients_dir: PathBuf,
    python: PathBuf,
    go_client: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(Tools::find)
}

/// Runs `cmd` to completion, or says what is missing.
fn probe(cmd: &mut std::process::Command) -> Result<std::process::Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Tools {
    /// Checks that every runtime and pinned library is installed and builds the Go client;
    /// panics naming what is missing. Never skips.
    fn find() -> Tools {
        use std::process::Command;
        let clients_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let python = clients_dir.join(".venv/bin/python");
        let go_client = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go_client");
        let mut missing = Vec::new();
        for (tool, arg) in [
            ("curl", "--version"),
            ("wget", "--version"),
            ("node", "--version"),
        ] {
            if let Err(e) = probe(Command::new(tool).arg(arg)) {
                missing.push(e);
            }
        }
        let libraries = "import aiohttp, httpx, requests";
        if let Err(e) = probe(Command::new(&python).args(["-c", libraries])) {
            missing.push(e);
        }
        if !clients_dir
            .join("node_modules/undici/package.json")
            .exists()
        {
            missing.push("tests/clients/node_modules/undici is not installed".into());
        }
        // Offline, standard library only: no module download can happen here.
        let mut go = Command::new("go");
        go.args(["build", "-o"])
            .arg(&go_client)
            .arg(".")
            .current_dir(clients_dir.join("go_client"))
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GO111MODULE", "on");
        if std::env::var_os("HOME").is_none() {
            go.env("HOME", env!("CARGO_TARGET_TMPDIR"));
        }
        if let Err(e) = probe(&mut go) {
            missing.push(e);
        }
        assert!(
            missing.is_empty(),
            "the client matrix needs every client; tests/run installs them (tests/setup: \
             Debian packages curl wget nodejs npm golang python3-venv, then tests/clients/setup \
             for the pinned libraries). Missing:\n{}",
            missing.join("\n")
        );
        Tools {
            clients_dir,
            python,
            go_client,
        }
    }

    fn command(&self, program: Program) -> tokio::process::Command {
        let mut cmd = match program {
            Program::Curl => {
                let mut cmd = tokio::process::Command::new("curl");
                cmd.args(["-q", "-sS", "-i", "--max-time", "10"]);
                cmd
            }
            Program::Wget => {
                let mut cmd = tokio::process::Command::new("wget");
                cmd.args(["-S", "-O", "-", "--tries=1", "--timeout=10"]);
                cmd
            }
            Program::Python(library) => {
                let mut cmd = tokio::process::Command::new(&self.python);
                cmd.arg(self.clients_dir.join("py_client.py")).arg(library);
                cmd
            }
            Program::Node(client) => {
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(self.clients_dir.join("node_client.mjs"))
                    .arg(client);
                cmd
            }
            Program::Go => tokio::process::Command::new(&self.go_client),
        };
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs one GET of `url` with exactly `env`, trusting `ca` the client's way.
    async fn run(
        &self,
        program: Program,
        url: String,
        env: Vec<(String, String)>,
        trust: Trust,
        ca: &Path,
    ) -> Outcome {
        let mut cmd = self.command(program);
        if let Trust::Flag(flag) = trust {
            cmd.arg(flag).arg(ca);
        }
        cmd.arg(&url).env_clear().envs(env);
        let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{program:?} {url}: no result within {RUN_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{program:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failed = !out.status.success();
        match program {
            Program::Curl => curl_outcome(&stdout, &stderr, failed),
            Program::Wget => wget_outcome(&stdout, &stderr, failed),
            _ => stdout
                .lines()
                .last()
                .and_then(|line| serde_json::from_str(line).ok())
                .unwrap_or_else(|| Outcome {
                    error: Some(format!(
                        "no JSON line; stdout {stdout:?}, stderr {stderr:?}"
                    )),
                    ..Outcome::default()
                }),
        }
    }

    /// The client's version, for the table.
    async fn version(&self, program: Program) -> String {
        let (cmd, args): (&Path, Vec<&str>) = match program {
            Program::Curl => (Path::new("curl"), vec!["--version"]),
            Program::Wget => (Path::new("wget"), vec!["--version"]),
            Program::Python("urllib") => (&self.python, vec!["-V"]),
            Program::Python(library) => {
                let library = library.trim_end_matches("-default");
                let script = format!(
                    "import importlib.metadata as m; print('{library}', m.version('{library}'))"
                );
                return self.output(&self.python, &["-c", &script]).await;
            }
            Program::Node("undici") => {
                let script = "process.version + ', undici ' + \
                              require('./node_modules/undici/package.json').version";
                return self.output(Path::new("node"), &["-p", script]).await;
            }
            Program::Node(_) => (Path::new("node"), vec!["--version"]),
            Program::Go => (Path::new("go"), vec!["version"]),
        };
        let line = self.output(cmd, &args).await;
        match program {
            // "curl 7.88.1 (x86_64-pc-linux-gnu) ...", "GNU Wget 1.21.3 built on ...",
            // "go version go1.19.8 linux/amd64"
            Program::Curl => line.split(' ').take(2).collect::<Vec<_>>().join(" "),
            Program::Wget => line.split(' ').take(3).collect::<Vec<_>>().join(" "),
            Program::Go => line.split(' ').nth(2).unwrap_or(&line).to_string(),
            _ => line,
        }
    }

    /// The first line `cmd args` prints, run in `tests/clients`.
    async fn output(&self, cmd: &Path, args: &[&str]) -> String {
        let out = tokio::process::Command::new(cmd)
            .args(args)
            .current_dir(&self.clients_dir)
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("?")
            .to_string()
    }
}

/// curl with `-i`: every response head it read is on stdout, a proxy's answer to CONNECT
/// first; the last head is the response, unless the CONNECT was refused.
fn curl_outcome(stdout: &str, stderr: &str, failed: bool) -> Outcome {
    let mut outcome = Outcome::default();
    let mut rest = stdout;
    while rest.starts_with("HTTP/") {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let status_line = head.lines().next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        outcome.status = parts.nth(1).and_then(|s| s.parse().ok());
        outcome.reason = parts.next().map(str::to_string);
        outcome.denied = header(head, "x-egress-denied").map(str::to_string);
        outcome.body = Some(body.to_string());
        rest = body;
    }
    if failed {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("curl:")).collect();
        outcome.error = Some(lines.join(" / "));
    }
    outcome
}

/// wget with `-S`: each response head on stderr, indented by two spaces, between wget's own
/// messages; its last message says why it failed.
fn wget_outcome(stdout: &str, stderr: &str, failed: bool) -> Outcome {
    let mut outcome = Outcome::default();
    let mut head = String::new();
    for line in stderr.lines() {
        let Some(line) = line.strip_prefix("  ") else {
            continue;
        };
        if let Some(status_line) = line.strip_prefix("HTTP/") {
            head.clear();
            let mut parts = status_line.splitn(3, ' ');
            outcome.status = parts.nth(1).and_then(|s| s.parse().ok());
            outcome.reason = parts.next().map(str::to_string);
        }
        head.push_str(line);
        head.push('\n');
    }
    outcome.denied = header(&head, "x-egress-denied").map(str::to_string);
    if outcome.status.is_some() {
        outcome.body = Some(stdout.to_string());
    }
    if failed {
        let message = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty() && !l.starts_with(' '))
            .unwrap_or("");
        outcome.error = Some(strip_timestamp(message).to_string());
    }
    outcome
}

/// `line` without wget's `2026-11-29 05:45:26 ` prefix.
fn strip_timestamp(line: &str) -> &str {
    let b = line.as_bytes();
    let stamped = b.len() > 20 && b[4] == b'-' && b[10] == b' ' && b[13] == b':';
    if stamped {
        &line[20..]
    } else {
        line
    }
}

/// A function reads and updates a secret with curl, Python requests and Node (undici), each
/// configured only by `HTTP_PROXY=http://FUNCTION:TOKEN@egressd`: the store answers through
/// the proxy, `If-Match` with the ETag read writes, the next read sees the new value.
#[tokio::test]
async fn functions_read_and_update_secrets_with_every_client() {
    let tools = tools();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fn-a.token"), FN_A_TOKEN).unwrap();
    std::fs::write(dir.path().join("secrets.key"), "5".repeat(64)).unwrap();
    set_mode(&dir.path().join("secrets.key"), 0o600);
    let proxy = egressd()
        .table("[secrets]\nkey_file = \"secrets.key\"\n")
        .table("[[functions]]\nname = \"fn-a\"\nstate = \"productive\"\nurl = \"http://fn-a.test/\"\ntoken_file = \"fn-a.token\"\n")
        .start_in(dir.path());
    let proxy_url = format!("http://fn-a:{FN_A_TOKEN}@{}", proxy.proxy);
    let env = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", dir.path().display().to_string()),
        ("HTTP_PROXY", proxy_url.clone()),
        ("http_proxy", proxy_url.clone()),
        ("NO_PROXY", String::new()),
    ];
    let mut failures = Vec::new();
    for (client, n) in [("curl", 0), ("python-requests", 1), ("node-undici", 2)] {
        let key = format!("token-{client}");
        let create = format!("{{\"key\": \"{key}\", \"value\": \"first-{client}\"}}");
        assert_eq!(
            proxy.admin_json("POST", "/v1/secrets", &create).await.0,
            201
        );
        let url = format!("http://secrets.egressd.internal/v1/secrets/{key}");
        let new_value = format!("second-{client}");
        let mut cmd = match n {
            0 => {
                // curl: the same three steps in shell, the ETag carried by hand.
                let mut cmd = tokio::process::Command::new("sh");
                cmd.arg("-c").arg(
                    r#"set -e
read_body=$(curl -q -sS -D headers --max-time 10 "$1")
etag=$(tr -d '\r' < headers | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
put_status=$(curl -q -sS -o /dev/null -D put_headers -w '%{http_code}' --max-time 10 -X PUT -H "If-Match: $etag" --data-binary "$2" "$1")
put_etag=$(tr -d '\r' < put_headers | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
reread=$(curl -q -sS --max-time 10 "$1")
printf '{"read": "%s", "etag": %s, "put_status": %s, "put_etag": %s, "reread": "%s"}\n' "$read_body" "$(printf '%s' "$etag" | sed 's/"/\\"/g; s/^/"/; s/$/"/')" "$put_status" "$(printf '%s' "$put_etag" | sed 's/"/\\"/g; s/^/"/; s/$/"/')" "$reread""#,
                )
                .arg("sh")
                .current_dir(dir.path());
                cmd
            }
            1 => {
                let mut cmd = tokio::process::Command::new(&tools.python);
                cmd.arg(tools.clients_dir.join("secrets_client.py"));
                cmd
            }
            _ => {
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(tools.clients_dir.join("secrets_client.mjs"));
                cmd
            }
        };
        cmd.arg(&url)
            .arg(&new_value)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true);
        if n == 2 {
            cmd.current_dir(&tools.clients_dir);
        }
        let out = tokio::time::timeout(PATIENCE, cmd.output())
            .await
            .expect("the client finishes")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: serde_json::Value = match stdout.lines().last().map(serde_json::from_str) {
            Some(Ok(got)) => got,
            _ => {
                failures.push(format!(
                    "{client}: no JSON line: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
        };
        let want = serde_json::json!({
            "read": format!("first-{client}"),
            "etag": "\"1\"",
            "put_status": 200,
            "put_etag": "\"2\"",
            "reread": new_value,
        });
        if got != want {
            failures.push(format!("{client}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
