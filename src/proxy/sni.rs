//! The first flight of a CONNECT tunnel: when the client opens with a TLS ClientHello, the
//! host it names (SNI) must pass the policy too. Otherwise a function could `CONNECT
//! allowed.example:443` and then ask a shared front end for another host (domain fronting).
//!
//! The ClientHello is read whole — it may come in several TCP segments and span several TLS
//! records — before any byte goes upstream. A tunnel where the upstream speaks first (SMTP,
//! SSH) is not inspected: its first bytes are not a ClientHello. A first flight that starts as
//! a TLS handshake but does not parse is refused: what egressd cannot read, it cannot check.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How CONNECT tunnels treat the SNI of a TLS ClientHello (`proxy.connect_sni`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SniCheck {
    /// The SNI must be allowed by the policy in its own right (allowlist, activation, port).
    #[default]
    Allowlisted,
    /// The SNI must name the CONNECT host itself.
    Match,
    /// Not inspected.
    Off,
}

impl SniCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            SniCheck::Allowlisted => "allowlisted",
            SniCheck::Match => "match",
            SniCheck::Off => "off",
        }
    }
}

/// The largest ClientHello read (post-quantum key shares make hellos of a few KiB; TLS allows
/// up to 2^24, nobody sends that).
const MAX_HELLO: usize = 64 * 1024;
/// Largest TLS record payload (2^14) plus the allowed expansion.
const MAX_RECORD: usize = 16384 + 2048;

/// What the bytes so far are.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake: nothing to check.
    NotTls,
    /// A ClientHello, not all of it yet.
    Incomplete,
    /// A whole ClientHello, with its SNI host name if it has one.
    Complete(Option<String>),
    /// A TLS handshake egressd cannot read.
    Malformed(&'static str),
}

/// Parses the start of a client's byte stream as TLS records carrying a ClientHello.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    match buf.first() {
        None => return Hello::Incomplete,
        Some(0x16) => {}
        Some(_) => return Hello::NotTls,
    }
    // The handshake bytes: borrowed from the one record that usually carries them all.
    let mut handshake: Cow<[u8]> = Cow::Borrowed(&[]);
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + 5) else {
            return Hello::Incomplete;
        };
        if header[0] != 0x16 {
            return Hello::Malformed("a non-handshake record came before the ClientHello ended");
        }
        if header[1] != 0x03 {
            return Hello::Malformed("not a TLS record");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Hello::Malformed("a TLS record of impossible length");
        }
        let Some(payload) = buf.get(pos + 5..pos + 5 + len) else {
            return Hello::Incomplete;
        };
        handshake = if handshake.is_empty() {
            Cow::Borrowed(payload)
        } else {
            let mut joined = handshake.into_owned();
            joined.extend_from_slice(payload);
            Cow::Owned(joined)
        };
        pos += 5 + len;
        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != 0x01 {
            return Hello::Malformed("the first handshake message is not a ClientHello");
        }
        let body_len = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
        if body_len > MAX_HELLO {
            return Hello::Malformed("a ClientHello over 64 KiB");
        }
        if let Some(body) = handshake.get(4..4 + body_len) {
            return match server_name(body) {
                Ok(sni) => Hello::Complete(sni),
                Err(why) => Hello::Malformed(why),
            };
        }
    }
}

/// A cursor over a ClientHello body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a ClientHello cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Result<&'a [u8], &'static str> {
        let len = if len_bytes == 1 {
            self.u8()?
        } else {
            self.u16()?
        };
        self.take(len)
    }
}

/// The `server_name` extension's host name (RFC 6066 §3), if the hello has one.
fn server_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader(r.vec(2)?);
    let mut found = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec(2)?;
        if kind != 0 {
            continue;
        }
        if found.is_some() {
            return Err("two server_name extensions");
        }
        let mut list = Reader(Reader(data).vec(2)?);
        let mut name = None;
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let value = list.vec(2)?;
            if name_type != 0 {
                continue;
            }
            if name.is_some() {
                return Err("two host names in server_name");
            }
            let text = std::str::from_utf8(value).map_err(|_| "a server_name that is not ASCII")?;
            if text.is_empty() || !text.is_ascii() {
                return Err("a server_name that is not an ASCII host name");
            }
            name = Some(text.to_string());
        }
        found = Some(name);
    }
    Ok(found.flatten())
}

/// Why a first flight was refused before the relay started.
#[derive(Debug, PartialEq, Eq)]
pub enum FlightError {
    Malformed(&'static str),
    /// The ClientHello did not arrive whole within the deadline.
    Timeout,
    /// Neither side sent a byte within the idle timeout.
    Idle,
    /// The client closed (or the tunnel was revoked) before the ClientHello ended.
    Closed,
}

/// What reading the first flight gave: the bytes read (to send upstream first) and the SNI of
/// the ClientHello they hold, if they are one.
pub struct FirstFlight {
    pub early: Bytes,
    pub sni: Option<String>,
}

/// Reads the client's first flight, starting from `early` (bytes already read with the
/// CONNECT head). Returns at once, uninspected, if the upstream speaks first. Waits up to
/// `first_byte` for the client's first byte and `whole` for the rest of a ClientHello.
pub async fn read_first_flight<C: AsyncRead + Unpin>(
    client: &mut C,
    early: Bytes,
    upstream: &TcpStream,
    first_byte: Duration,
    whole: Duration,
    cancel: &CancellationToken,
) -> Result<FirstFlight, FlightError> {
    let mut buf = BytesMut::from(&early[..]);
    // A copy: `early` is a slice of hyper's 8 KiB read buffer, even when empty, and a tunnel
    // whose client has not spoken yet (a server-speaks-first protocol) would pin it all that
    // while.
    drop(early);
    let mut deadline = None;
    loop {
        match parse_client_hello(&buf) {
            Hello::NotTls => {
                return Ok(FirstFlight {
                    early: buf.freeze(),
                    sni: None,
                })
            }
            Hello::Complete(sni) => {
                return Ok(FirstFlight {
                    early: buf.freeze(),
                    sni,
                })
            }
            Hello::Malformed(why) => return Err(FlightError::Malformed(why)),
            Hello::Incomplete => {}
        }
        if buf.len() > MAX_HELLO + 5 * (MAX_HELLO / 16384 + 1) {
            return Err(FlightError::Malformed("a ClientHello over 64 KiB"));
        }
        if buf.is_empty() {
            // Nobody has spoken: whoever does first decides whether there is a hello.
            tokio::select! {
                read = client.read_buf(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Err(FlightError::Closed);
                    }
                    deadline = Some(tokio::time::Instant::now() + whole);
                }
                _ = upstream.readable() => {
                    return Ok(FirstFlight { early: buf.freeze(), sni: None });
                }
                _ = tokio::time::sleep(first_byte) => return Err(FlightError::Idle),
                _ = cancel.cancelled() => return Err(FlightError::Closed),
            }
            continue;
        }
        let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + whole);
        tokio::select! {
            read = tokio::time::timeout_at(until, client.read_buf(&mut buf)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(FlightError::Closed),
                Err(_) => return Err(FlightError::Timeout),
            },
            _ = cancel.cancelled() => return Err(FlightError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls sends it, naming `sni`.
    fn rustls_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// The hello re-framed as one TLS record per `chunk` bytes of handshake.
    fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
        let handshake = &hello[5..];
        let mut out = Vec::new();
        for part in handshake.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn client_hellos_parse_to_their_sni() {
        let hello = rustls_hello("api.example.com");
        let many_records = split_records(&hello, 7);
        let cases: Vec<(&str, Vec<u8>, Hello)> = vec![
            (
                "one record",
                hello.clone(),
                Hello::Complete(Some("api.example.com".into())),
            ),
            (
                "a record per 7 bytes",
                many_records.clone(),
                Hello::Complete(Some("api.example.com".into())),
            ),
            (
                "cut in the record header",
                hello[..3].to_vec(),
                Hello::Incomplete,
            ),
            (
                "cut in the body",
                hello[..hello.len() - 1].to_vec(),
                Hello::Incomplete,
            ),
            (
                "cut across records",
                many_records[..many_records.len() / 2].to_vec(),
                Hello::Incomplete,
            ),
            (
                "HTTP, not TLS",
                b"GET / HTTP/1.1\r\n".to_vec(),
                Hello::NotTls,
            ),
            (
                "an alert record first",
                vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
                Hello::NotTls,
            ),
            (
                "a handshake that is not a ClientHello",
                vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00],
                Hello::Malformed("the first handshake message is not a ClientHello"),
            ),
            (
                "a zero-length record",
                vec![0x16, 0x03, 0x01, 0x00, 0x00],
                Hello::Malformed("a TLS record of impossible length"),
            ),
            (
                "not a TLS version",
                vec![0x16, 0x09, 0x01, 0x00, 0x01, 0x01],
                Hello::Malformed("not a TLS record"),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(parse_client_hello(&bytes), want, "{name}");
        }
    }

    #[test]
    fn a_hello_whose_lengths_lie_is_malformed() {
        let mut hello = rustls_hello("api.example.com");
        // Claim a longer extensions block than the body holds: the body length stays right,
        // so the parse runs off the end of the extensions.
        let body = &hello[9..];
        let session_len = body[34] as usize;
        let suites_at = 35 + session_len;
        let suites_len = u16::from_be_bytes([body[suites_at], body[suites_at + 1]]) as usize;
        let comp_at = suites_at + 2 + suites_len;
        let comp_len = body[comp_at] as usize;
        let ext_at = 9 + comp_at + 1 + comp_len;
        hello[ext_at] = 0xff;
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Malformed("a ClientHello cut short")
        );
    }
}
