//! Upstream and client faults: each gets a clear status (or a cut the client can see), and
//! afterwards egressd holds nothing more than before — open file descriptors, the connection
//! and tunnel gauges back at their starting values.

use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the faulty upstream behaves once it has read a request head (or, for a tunnel, the
/// first bytes).
#[derive(Clone, Copy, Debug)]
enum Upstream {
    /// Sends a response head promising 1000 bytes, 10 of them, then resets (RST).
    ResetMidBody,
    /// Never answers.
    Stall,
    /// Sends a response head and 10 of 1000 body bytes, then goes quiet.
    StallMidBody,
    /// For a tunnel: reads the first bytes, then closes.
    CloseHalfway,
}

async fn faulty_upstream(behaviour: Upstream) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
                match behaviour {
                    Upstream::ResetMidBody => {
                        let _ = stream.write_all(HEAD).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                    Upstream::Stall | Upstream::StallMidBody => {
                        if let Upstream::StallMidBody = behaviour {
                            let _ = stream.write_all(HEAD).await;
                        }
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Upstream::CloseHalfway => drop(stream),
                }
            });
        }
    });
    port
}

/// What egressd still holds when it has not settled. Displayed only in the failure, which
/// then also lists egressd's TCP and UDP sockets as `ss` shows them, to tell which fd is which.
struct Unsettled<'a> {
    proxy: &'a Egressd,
    connections: f64,
    tunnels: f64,
    fds: usize,
    baseline: usize,
    new_fds: Vec<String>,
}

impl std::fmt::Display for Unsettled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = format!("pid={},", self.proxy.child.id());
        let sockets = std::process::Command::new("ss")
            .args(["-tuanpe"])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|line| line.contains(&pid))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|e| format!("ss: {e}"));
        write!(
            f,
            "{} connections, {} tunnels, {} fds against {} at the start; new since the start: \
             {:?}; its sockets (ss):\n{sockets}",
            self.connections, self.tunnels, self.fds, self.baseline, self.new_fds
        )
    }
}

/// The fds egressd holds once no client connection or tunnel is open.
async fn settled_fds(proxy: &Egressd) -> Vec<String> {
    eventually("connections and tunnels to close", || async {
        let connections = proxy.metric("egressd_active_connections").await;
        let tunnels = proxy.metric("egressd_active_tunnels").await;
        (connections == 0.0 && tunnels == 0.0).then_some(())
    })
    .await;
    open_fds(proxy.child.id())
}

/// Waits until egressd holds no more fds than at `baseline`, with no client connection and
/// no tunnel open; on timeout, names the fds it still holds beyond the baseline.
async fn settles(proxy: &Egressd, baseline: &[String], case: &str) {
    let what = format!("{case}: resources back to the start");
    eventually_explained(&what, || async {
        let connections = proxy.metric("egressd_active_connections").await;
        let tunnels = proxy.metric("egressd_active_tunnels").await;
        let fds = open_fds(proxy.child.id());
        if connections == 0.0 && tunnels == 0.0 && fds.len() <= baseline.len() {
            return Ok(());
        }
        Err(Unsettled {
            proxy,
            connections,
            tunnels,
            fds: fds.len(),
            baseline: baseline.len(),
            new_fds: fds
                .into_iter()
                .filter(|fd| !baseline.contains(fd))
                .collect(),
        })
    })
    .await
}

#[tokio::test]
async fn upstream_faults_get_a_clear_answer_and_release_everything() {
    struct Case {
        name: &'static str,
        upstream: Option<Upstream>,
        /// curl's exit code, and the status line it printed (`-i`), if any.
        exit: i32,
        status_line: &'static str,
    }
    let cases = [
        Case {
            name: "the upstream refuses the connection",
            upstream: None,
            exit: 0,
            status_line: "HTTP/1.1 502 connect-refused:",
        },
        Case {
            name: "the upstream resets mid-body",
            upstream: Some(Upstream::ResetMidBody),
            exit: 18,
            status_line: "HTTP/1.1 200 OK",
        },
        Case {
            name: "the upstream never answers",
            upstream: Some(Upstream::Stall),
            exit: 0,
            status_line: "HTTP/1.1 504 upstream-timeout:",
        },
        Case {
            name: "the upstream stops mid-body",
            upstream: Some(Upstream::StallMidBody),
            exit: 18,
            status_line: "HTTP/1.1 200 OK",
        },
    ];
    for case in cases {
        // Held for the case: the closed port stays closed.
        let (port, _closed) = match case.upstream {
            Some(behaviour) => (faulty_upstream(behaviour).await, None),
            None => {
                let closed = closed_port();
                (*closed, Some(closed))
            }
        };
        let proxy = http_proxy("api.test", port)
            .proxy("response_header_timeout = \"1s\"")
            .proxy("idle_timeout = \"1s\"")
            .start();
        let url = format!("http://api.test:{port}/");
        // The first run warms what egressd keeps by design (worker runtimes, the pool); the
        // next ones must each give back everything they took.
        let mut baseline = None;
        for _ in 0..3 {
            let (exit, out, err) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
            assert_eq!(exit, case.exit, "{}: {err}", case.name);
            assert!(out.starts_with(case.status_line), "{}: {out:?}", case.name);
            match baseline {
                None => baseline = Some(settled_fds(&proxy).await),
                Some(ref fds) => settles(&proxy, fds, case.name).await,
            }
        }
    }
}

#[tokio::test]
async fn a_tunnel_whose_upstream_closes_halfway_ends_and_releases_everything() {
    let port = faulty_upstream(Upstream::CloseHalfway).await;
    // One worker: each worker thread keeps its own pipe pool, and which one a tunnel lands
    // on is up to SO_REUSEPORT.
    let proxy = tunnel_proxy("api.test", port).proxy("workers = 1").start();
    let mut baseline = None;
    for _ in 0..3 {
        let mut tunnel = open_tunnel(proxy.proxy, &format!("api.test:{port}")).await;
        tunnel.write_all(b"SSH-2.0-client\r\n").await.unwrap();
        let rest = read_to_close(&mut tunnel, "the tunnel").await;
        assert!(
            matches!(&rest, Ok(b) if b.is_empty()) || rest.is_err(),
            "{rest:?}"
        );
        drop(tunnel);
        match baseline {
            // The first tunnel leaves a pipe pair in the thread's pool, by design.
            None => baseline = Some(settled_fds(&proxy).await),
            Some(ref fds) => settles(&proxy, fds, "tunnel closed by the upstream").await,
        }
    }
    proxy
        .wait_for_log(|l| l["method"] == "CONNECT" && l["tunnel_end"] == "closed")
        .await;
}

#[tokio::test]
async fn slow_clients_are_cut_by_deadlines_and_others_are_unaffected() {
    let origin = origin().await;
    // One worker: each worker keeps its own upstream pool, so with two the second request
    // could land on the other worker and leave a second idle upstream connection pooled.
    let proxy = api_proxy(&origin)
        .proxy("workers = 1")
        .proxy("header_read_timeout = \"1s\"")
        .proxy("idle_timeout = \"2s\"")
        .start();
    let p = origin.port();
    let url = format!("http://api.test:{p}/echo");
    let (exit, _, _) = curl(&["-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(exit, 0);
    let baseline = settled_fds(&proxy).await;
    // A slow head: half a request line, then nothing.
    let mut slow_head = TcpStream::connect(proxy.proxy).await.unwrap();
    slow_head.write_all(b"GET http://api.test").await.unwrap();
    // A slow body: a head promising 100 bytes, 5 sent.
    let mut slow_body = TcpStream::connect(proxy.proxy).await.unwrap();
    slow_body
        .write_all(
            format!("POST http://api.test:{p}/body HTTP/1.1\r\nHost: api.test:{p}\r\nContent-Length: 100\r\n\r\nhello").as_bytes(),
        )
        .await
        .unwrap();
    // Meanwhile another client is served at once.
    let (exit, out, _) = curl(&["-i", "-x", &proxy.proxy_url(), &url], &[]).await;
    assert_eq!(exit, 0);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // The slow head is cut by header_read_timeout.
    let head = read_to_close(&mut slow_head, "the slow head").await;
    assert!(
        head.as_ref()
            .map_or(true, |b| !b.starts_with(b"HTTP/1.1 200")),
        "{head:?}"
    );
    // The slow body is given up after idle_timeout: 408 to the client.
    let body = read_to_close(&mut slow_body, "the slow body")
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/1.1 408 client-timeout:"), "{body}");
    drop((slow_head, slow_body));
    settles(&proxy, &baseline, "slow clients").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    // 64 KiB chunks of zeros, as fast as they go.
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(0u8, 0x10000));
    chunk.extend_from_slice(b"\r\n");
    let port = endless_upstream(chunk, Duration::ZERO).await;
    let proxy = http_proxy("api.test", port)
        .proxy("idle_timeout = \"1s\"")
        .start();
    let mut client = TcpStream::connect(proxy.proxy).await.unwrap();
    client
        .write_all(
            format!("GET http://api.test:{port}/ HTTP/1.1\r\nHost: api.test:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Read the head, then nothing: the socket buffers fill and egressd's writes block.
    read_head(&mut client).await;
    eventually("the connection to be open", || async {
        (proxy.metric("egressd_active_connections").await == 1.0).then_some(())
    })
    .await;
    // Cut once its writes have been blocked for idle_timeout, though the client never closed.
    eventually("the stalled reader to be cut", || async {
        (proxy.metric("egressd_active_connections").await == 0.0).then_some(())
    })
    .await;
    drop(client);
}
