//! DNS faults, against a real DNS server on loopback (a small UDP responder written here):
//! timeouts, SERVFAIL, NXDOMAIN, answers mixing a public and a private address, and answers
//! that change between lookups — the address checked is always the address dialled.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::support::*;
use tokio::net::UdpSocket;

/// What the server answers for a name's A query (AAAA queries get no records).
fn answer_for(name: &str, flips: &AtomicU32) -> Option<(u8, Vec<Ipv4Addr>)> {
    const NOERROR: u8 = 0;
    match name {
        "timeout.test" => None,
        "servfail.test" => Some((2, vec![])),
        "nxdomain.test" => Some((3, vec![])),
        "mixed.test" => Some((
            NOERROR,
            vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 1, 2, 3)],
        )),
        // Loopback (where the origin listens, allowed in these tests) and a private address,
        // in turn.
        "flip.test" => {
            let n = flips.fetch_add(1, Ordering::Relaxed);
            let ip = if n.is_multiple_of(2) {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::new(10, 9, 9, 9)
            };
            Some((NOERROR, vec![ip]))
        }
        _ => Some((NOERROR, vec![Ipv4Addr::LOCALHOST])),
    }
}

/// The question's name and type, and where the question ends.
fn parse_question(packet: &[u8]) -> Option<(String, u16, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *packet.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(packet.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(pos)?, *packet.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

/// A UDP DNS server on loopback; returns its address.
async fn dns_server() -> SocketAddr {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let flips = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            let Some((name, qtype, end)) = parse_question(query) else {
                continue;
            };
            let (rcode, ips) = if qtype == 1 {
                match answer_for(&name, &flips) {
                    Some(answer) => answer,
                    None => continue, // no reply at all
                }
            } else if name == "timeout.test" {
                continue;
            } else {
                (0, vec![])
            };
            let mut reply = Vec::with_capacity(end + 16 * ips.len());
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x81 | (query[2] & 0x01), 0x80 | rcode]); // QR, RD, RA
            reply.extend_from_slice(&[0, 1]); // one question
            reply.extend_from_slice(&(ips.len() as u16).to_be_bytes());
            reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
            reply.extend_from_slice(&query[12..end]);
            for ip in ips {
                // Name by pointer to the question, A, IN, TTL 0 (no caching), 4 bytes.
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                reply.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn dns_faults_get_the_right_status_and_the_checked_address_is_dialled() {
    let origin = origin().await;
    let p = origin.port();
    let server = dns_server().await;
    let names = ["timeout", "servfail", "nxdomain", "mixed", "flip"].map(|n| format!("{n}.test"));
    let mut builder = egressd()
        .ports(&[443], &[p])
        .dns_line(&format!("servers = [\"{server}\"]"))
        .dns_line("timeout = \"1s\"");
    for name in &names {
        builder = builder.allow(name);
    }
    let proxy = builder.start();
    let get = |name: &str| {
        format!(
            "GET http://{name}:{p}/echo HTTP/1.1\r\nHost: {name}:{p}\r\nConnection: close\r\n\r\n"
        )
    };
    struct Case {
        name: &'static str,
        host: &'static str,
        status_line: &'static str,
    }
    let cases = [
        Case {
            name: "no answer",
            host: "timeout.test",
            status_line: "HTTP/1.1 502 dns:",
        },
        Case {
            name: "SERVFAIL",
            host: "servfail.test",
            status_line: "HTTP/1.1 502 dns:",
        },
        Case {
            name: "NXDOMAIN",
            host: "nxdomain.test",
            status_line: "HTTP/1.1 502 dns:",
        },
        Case {
            name: "a public and a private address: every address is checked",
            host: "mixed.test",
            status_line: "HTTP/1.1 403 private-destination: 10.1.2.3",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let response = raw_exchange(proxy.proxy, get(case.host).as_bytes()).await;
        if !response.starts_with(case.status_line) {
            failures.push(format!(
                "{}: expected {:?}, got {response:?}",
                case.name, case.status_line
            ));
        }
    }
    assert_no_failures(&failures, cases.len());
    // An answer that changes between lookups: each request is either allowed and reaches the
    // loopback origin, or refused for the private address it was given — never dialled to an
    // address other than the one checked (that would be a 502 connect error or a timeout).
    let (mut reached, mut refused) = (0, 0);
    for _ in 0..10 {
        let response = raw_exchange(proxy.proxy, get("flip.test").as_bytes()).await;
        if response.starts_with("HTTP/1.1 200") {
            assert!(body(&response).starts_with("GET /echo"), "{response}");
            reached += 1;
        } else {
            assert!(
                response.starts_with("HTTP/1.1 403 private-destination: 10.9.9.9"),
                "{response}"
            );
            refused += 1;
        }
    }
    assert!(
        reached > 0 && refused > 0,
        "{reached} reached, {refused} refused"
    );
}
