//! SNI on CONNECT: a tunnel to an allowed host whose TLS ClientHello asks for another host
//! (domain fronting) is closed before any byte reaches the upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A ClientHello built by hand, as the wire carries it: `sni` in the server_name extension,
/// `padding` bytes of padding extension (RFC 7685), framed in TLS records of at most 16 KiB.
pub fn client_hello(sni: &str, padding: usize) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut extensions = Vec::new();
    let name = sni.as_bytes();
    let list_len = name.len() + 3;
    extensions.extend_from_slice(&[0x00, 0x00]);
    extensions.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    extensions.extend_from_slice(&(list_len as u16).to_be_bytes());
    extensions.push(0); // host_name
    extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
    extensions.extend_from_slice(name);
    if padding > 0 {
        extensions.extend_from_slice(&[0x00, 0x15]);
        extensions.extend_from_slice(&(padding as u16).to_be_bytes());
        extensions.extend(std::iter::repeat_n(0u8, padding));
    }
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut records = Vec::new();
    for chunk in handshake.chunks(16384) {
        records.extend_from_slice(&[0x16, 0x03, 0x01]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}

/// What the upstream received on each connection, in accept order.
type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// A TCP upstream that records every byte it receives (until the client closes), after
/// sending `banner` if there is one.
async fn recording_upstream(banner: Option<&'static [u8]>) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sink = sink.clone();
            let index = {
                let mut all = sink.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            tokio::spawn(async move {
                if let Some(banner) = banner {
                    let _ = stream.write_all(banner).await;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, received)
}

/// How the client writes its first flight.
#[derive(Clone, Copy, Debug)]
enum Send {
    /// One write.
    Whole,
    /// One byte a write, 1 ms apart: a hello across many TCP segments.
    ByteByByte,
}

async fn send(stream: &mut TcpStream, bytes: &[u8], how: Send) {
    match how {
        Send::Whole => stream.write_all(bytes).await.unwrap(),
        Send::ByteByByte => {
            stream.set_nodelay(true).unwrap();
            for b in bytes {
                stream.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// What should become of the tunnel.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Every byte reaches the upstream.
    Relayed,
    /// Closed with this access-log reason; the upstream got nothing.
    Refused(&'static str),
}

struct Case {
    name: &'static str,
    mode: &'static str,
    first_flight: Vec<u8>,
    how: Send,
    expect: Expect,
}

#[tokio::test]
async fn the_sni_of_a_tunnel_must_pass_the_policy_too() {
    let big = 20_000; // handshake over 16 KiB: two TLS records, several reads
    let cases = vec![
        Case {
            name: "SNI names the CONNECT host",
            mode: "allowlisted",
            first_flight: client_hello("front.test", 0),
            how: Send::Whole,
            expect: Expect::Relayed,
        },
        Case {
            name: "SNI names another allowed host",
            mode: "allowlisted",
            first_flight: client_hello("other.test", 0),
            how: Send::Whole,
            expect: Expect::Relayed,
        },
        Case {
            name: "SNI names a host not on the allowlist (domain fronting)",
            mode: "allowlisted",
            first_flight: client_hello("hidden.test", 0),
            how: Send::Whole,
            expect: Expect::Refused("sni-not-allowlisted"),
        },
        Case {
            name: "SNI case and trailing dot are normalised",
            mode: "match",
            first_flight: client_hello("FRONT.test.", 0),
            how: Send::Whole,
            expect: Expect::Relayed,
        },
        Case {
            name: "a fronting hello split over many segments",
            mode: "allowlisted",
            first_flight: client_hello("hidden.test", 0),
            how: Send::ByteByByte,
            expect: Expect::Refused("sni-not-allowlisted"),
        },
        Case {
            name: "an allowed hello split over many segments",
            mode: "allowlisted",
            first_flight: client_hello("other.test", 0),
            how: Send::ByteByByte,
            expect: Expect::Relayed,
        },
        Case {
            name: "a fronting hello over two records and several reads",
            mode: "allowlisted",
            first_flight: client_hello("hidden.test", big),
            how: Send::Whole,
            expect: Expect::Refused("sni-not-allowlisted"),
        },
        Case {
            name: "an allowed hello over two records and several reads",
            mode: "allowlisted",
            first_flight: client_hello("other.test", big),
            how: Send::Whole,
            expect: Expect::Relayed,
        },
        Case {
            name: "match: another allowed host is still refused",
            mode: "match",
            first_flight: client_hello("other.test", 0),
            how: Send::Whole,
            expect: Expect::Refused("sni-mismatch"),
        },
        Case {
            name: "off: nothing is inspected",
            mode: "off",
            first_flight: client_hello("hidden.test", 0),
            how: Send::Whole,
            expect: Expect::Relayed,
        },
        Case {
            name: "a handshake egressd cannot read",
            mode: "allowlisted",
            first_flight: vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0],
            how: Send::Whole,
            expect: Expect::Refused("sni-unreadable"),
        },
        Case {
            name: "not TLS at all",
            mode: "allowlisted",
            first_flight: b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
            how: Send::Whole,
            expect: Expect::Relayed,
        },
    ];
    let (upstream, received) = recording_upstream(None).await;
    let port = upstream.port();
    for mode in ["allowlisted", "match", "off"] {
        let proxy = egressd()
            .proxy(&format!("connect_sni = \"{mode}\""))
            .allow_local("front.test")
            .allow_local("other.test")
            .dns("hidden.test", "127.0.0.1")
            .ports(&[port], &[])
            .start();
        for case in cases.iter().filter(|c| c.mode == mode) {
            let before = received.lock().unwrap().len();
            let mut tunnel = open_tunnel(proxy.proxy, &format!("front.test:{port}")).await;
            send(&mut tunnel, &case.first_flight, case.how).await;
            match case.expect {
                Expect::Relayed => {
                    tunnel.shutdown().await.unwrap();
                    let want = case.first_flight.clone();
                    eventually(case.name, || async {
                        let all = received.lock().unwrap();
                        (all.len() > before && all[before] == want).then_some(())
                    })
                    .await;
                }
                Expect::Refused(reason) => {
                    let mut buf = [0u8; 64];
                    let read = tokio::time::timeout(PATIENCE, tunnel.read(&mut buf))
                        .await
                        .unwrap_or_else(|_| panic!("{}: the tunnel stayed open", case.name));
                    assert!(matches!(read, Ok(0) | Err(_)), "{}: {read:?}", case.name);
                    let line = proxy.wait_for_log(|l| l["reason"] == reason).await;
                    assert_eq!(line["decision"], "denied", "{}: {line}", case.name);
                    let got = received.lock().unwrap().get(before).map_or(0, Vec::len);
                    assert_eq!(got, 0, "{}: the upstream received bytes", case.name);
                    let counted = proxy
                        .metric(&format!(
                            "egressd_tunnels_refused_total{{reason=\"{reason}\"}}"
                        ))
                        .await;
                    assert!(counted >= 1.0, "{}: counted {counted}", case.name);
                }
            }
        }
    }
}

#[tokio::test]
async fn an_sni_pending_activation_is_refused_until_active() {
    let (upstream, received) = recording_upstream(None).await;
    let port = upstream.port();
    let proxy = egressd()
        .proxy("activation_delay = \"1h\"")
        .allow_local("front.test")
        .dns("new.test", "127.0.0.1")
        .ports(&[port], &[])
        .start();
    let generation = proxy.generation().await;
    proxy.set_domains(&["front.test", "new.test"], Write::Rename);
    proxy.wait_generation_above(generation).await;
    let mut tunnel = open_tunnel(proxy.proxy, &format!("front.test:{port}")).await;
    tunnel
        .write_all(&client_hello("new.test", 0))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, tunnel.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    let line = proxy
        .wait_for_line(|l| {
            l["message"].as_str().is_some_and(|m| {
                m.contains("names \"new.test\", which is not allowed (pending-activation)")
            })
        })
        .await;
    assert_eq!(line["reason"], "sni-not-allowlisted", "{line}");
    assert!(received.lock().unwrap().iter().all(Vec::is_empty));
}

#[tokio::test]
async fn an_upstream_that_speaks_first_is_not_held_back() {
    let (upstream, received) = recording_upstream(Some(b"220 smtp.test ESMTP\r\n")).await;
    let port = upstream.port();
    let proxy = tunnel_proxy("front.test", port).start();
    let mut tunnel = open_tunnel(proxy.proxy, &format!("front.test:{port}")).await;
    let banner = read_until(&mut tunnel, b"\r\n").await;
    assert_eq!(banner, "220 smtp.test ESMTP\r\n");
    tunnel.write_all(b"EHLO fn\r\n").await.unwrap();
    tunnel.shutdown().await.unwrap();
    eventually("the upstream to get EHLO", || async {
        let all = received.lock().unwrap();
        (all.first().map(Vec::as_slice) == Some(b"EHLO fn\r\n".as_slice())).then_some(())
    })
    .await;
}

#[tokio::test]
async fn removing_the_sni_host_cuts_the_tunnel_like_removing_its_connect_host() {
    let (upstream, received) = recording_upstream(None).await;
    let port = upstream.port();
    let proxy = egressd()
        .allow_local("front.test")
        .allow_local("named.test")
        .allow_local("other.test")
        .ports(&[port], &[])
        .start();
    // Two tunnels to the same front: one names named.test, the other its own host. Each is
    // opened once the one before reached the upstream, so `received` holds them in order.
    let mut tunnels = Vec::new();
    for (n, sni) in ["named.test", "front.test"].into_iter().enumerate() {
        let mut tunnel = open_tunnel(proxy.proxy, &format!("front.test:{port}")).await;
        let hello = client_hello(sni, 0);
        tunnel.write_all(&hello).await.unwrap();
        eventually("the hello to reach the upstream", || async {
            (received.lock().unwrap().get(n) == Some(&hello)).then_some(())
        })
        .await;
        tunnels.push(tunnel);
    }
    let [mut fronted, mut direct] = <[TcpStream; 2]>::try_from(tunnels).unwrap();

    // Removing a host neither tunnel uses cuts nothing; removing the SNI host cuts the
    // tunnel that named it, and only that one.
    let generation = proxy.generation().await;
    proxy.set_domains(&["front.test", "named.test"], Write::Rename);
    proxy.wait_generation_above(generation).await;
    proxy.set_domains(&["front.test"], Write::Rename);
    let _ = read_to_close(&mut fronted, "the tunnel whose SNI host was removed").await;
    let log = proxy
        .wait_for_log(|v| v["method"] == "CONNECT" && v["tunnel_end"].is_string())
        .await;
    assert_eq!(log["tunnel_end"], "revoked", "{log}");
    assert_eq!(
        proxy.metric("egressd_revoked_total{kind=\"tunnel\"}").await,
        1.0
    );
    direct.write_all(b"still open").await.unwrap();
    eventually("the other tunnel to carry more bytes", || async {
        received.lock().unwrap()[1]
            .ends_with(b"still open")
            .then_some(())
    })
    .await;
}
