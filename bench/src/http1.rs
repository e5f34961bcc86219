//! Just enough HTTP/1.1 for the load client and the upstream: find the end of a head and
//! read the three headers that decide framing. Heads here are small and well formed (we wrote
//! them, or a proxy relayed ours), so a byte scan beats a general parser.

/// The length of the head at the start of `buf`, including the blank line, once complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What a head says about the message that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code for a response, 0 for a request.
    pub status: u16,
    /// Body length from `Content-Length`; `None` means none was given.
    pub content_length: Option<usize>,
    /// The connection ends after this message (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// `Transfer-Encoding: chunked`, which the harness neither sends nor expects back.
    pub chunked: bool,
}

impl Head {
    /// Reads a complete head (as delimited by [`head_len`]).
    pub fn parse(head: &[u8]) -> Head {
        let mut lines = head.split(|b| *b == b'\n').map(trim_cr);
        let first = lines.next().unwrap_or_default();
        let status = match first.strip_prefix(b"HTTP/1.") {
            Some(rest) => rest
                .get(2..5)
                .and_then(|code| std::str::from_utf8(code).ok())
                .and_then(|code| code.parse().ok())
                .unwrap_or(0),
            None => 0,
        };
        let http10 = first.windows(8).any(|w| w == b"HTTP/1.0");
        let mut parsed = Head {
            status,
            content_length: None,
            close: http10,
            chunked: false,
        };
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                parsed.content_length =
                    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if name.eq_ignore_ascii_case(b"connection")
                || name.eq_ignore_ascii_case(b"proxy-connection")
            {
                if value.eq_ignore_ascii_case(b"close") {
                    parsed.close = true;
                } else if value.eq_ignore_ascii_case(b"keep-alive") {
                    parsed.close = false;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                parsed.chunked = value.eq_ignore_ascii_case(b"chunked");
            }
        }
        parsed
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_after_the_blank_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"), Some(27));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn response_framing_headers_are_read() {
        let head =
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nconnection: Close\r\n\r\n");
        assert_eq!(
            head,
            Head {
                status: 200,
                content_length: Some(12),
                close: true,
                chunked: false
            }
        );
    }

    #[test]
    fn http10_closes_unless_kept_alive() {
        assert!(Head::parse(b"HTTP/1.0 200 OK\r\n\r\n").close);
        assert!(!Head::parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(Head::parse(b"GET / HTTP/1.0\r\n\r\n").close);
        assert_eq!(Head::parse(b"GET / HTTP/1.1\r\n\r\n").status, 0);
    }
}
