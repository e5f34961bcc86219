//! Property tests over every parser that reads hostile or hand-written input: request targets,
//! host names, allowlist patterns and matching, redirect `Location`s, TLS ClientHellos, the
//! config file, allowlist edits and cron expressions (issue 14, "Fuzzing"). This is the
//! stable-toolchain stand-in for `cargo fuzz`: each property runs on generated inputs that mix
//! arbitrary text with the fragments that break parsers (`@`, `\`, `%`, brackets, dots, number
//! forms), and checks a statement that could be false — a round trip, a reference
//! implementation, another parser's reading — not only "no panic".
//!
//! Each property runs 256 cases by default, so the file stays under half a minute in CI.
//! A longer run: `PROPTEST_CASES=100000 cargo test --release --test it -- properties::`. A failure is
//! shrunk and its seed saved under `proptest-regressions/`, which is committed: saved seeds run
//! first on every later run.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use http::{Request, Uri};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use egressd::control::config::Config;
use egressd::control::edit::{add_entry, remove_entry, EditError};
use egressd::policy::allowlist::{Allowlist, Lookup, Pattern, RuleId};
use egressd::policy::host::{Host, HostError};
use egressd::policy::url::{resolve_location, target_of};
use egressd::policy::Target;
use egressd::proxy::request::{connect_target, forward_target};
use egressd::proxy::sni::{parse_client_hello, Hello};
use egressd::schedule::cron::CronExpr;

/// 256 cases a property unless `PROPTEST_CASES` says otherwise; failures are saved beside the
/// other regression files.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(
        "proptest-regressions/properties.txt",
    )));
    config
}

// ---------------------------------------------------------------------------------------------
// Generators

/// Pieces that parsers of hosts and authorities disagree on.
const TRICKY: &[&str] = &[
    "a",
    "B",
    "example",
    "com",
    "xn--bcher-kva",
    "_s",
    "x-y",
    "-",
    ".",
    "..",
    ":",
    "443",
    "80",
    "0",
    "1",
    "127",
    "255",
    "256",
    "0x7f",
    "0X",
    "017",
    "4294967295",
    "[",
    "]",
    "::",
    "::1",
    "::ffff:",
    "%",
    "%2e",
    "%25",
    "%00",
    "@",
    "u:p@",
    "\\",
    "#",
    "?",
    "/",
    "*",
    " ",
    "\t",
    "\r\n",
    "\0",
    "ü",
    "\u{ff0e}",
    "\u{3002}",
    "http://",
    "HTTP://",
];

/// Text built from [`TRICKY`] pieces and arbitrary characters.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(TRICKY).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// A DNS label, often one of a few so that generated names and patterns collide.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&["a", "b", "c", "www", "api", "example", "com", "org", "x-y", "_t", "a1"][..])
            .prop_map(str::to_string),
        1 => "[a-z_][a-z0-9_-]{0,12}[a-z0-9]",
    ]
}

/// A domain name of 1 to `max` labels (not ending in a number, so never an IP).
fn domain(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..=max).prop_map(|labels| labels.join("."))
}

/// `name` as a user might spell it: random case, maybe a trailing dot.
fn respelt(name: String) -> impl Strategy<Value = String> {
    (any::<u64>(), any::<bool>()).prop_map(move |(bits, dot)| {
        let mut text: String = name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        if dot {
            text.push('.');
        }
        text
    })
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        prop::sample::select(
            &[
                [127, 0, 0, 1],
                [0, 0, 0, 0],
                [203, 0, 113, 7],
                [10, 0, 0, 1]
            ][..]
        )
        .prop_map(Ipv4Addr::from),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        ipv4().prop_map(IpAddr::V4),
        prop::sample::select(&["::1", "::", "2001:db8::1", "::ffff:127.0.0.1"][..])
            .prop_map(|s| s.parse().unwrap()),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Request targets

/// What every accepted target must satisfy: nothing a second parser could read differently
/// survives in the host, and the target prints as an authority that parses back to itself.
fn check_accepted(target: &Target) -> Result<(), TestCaseError> {
    let host = target.host.to_string();
    prop_assert!(
        !host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '@' | '\\' | '#' | '%' | '?' | '/')),
        "accepted host {host:?}"
    );
    prop_assert!(host.is_ascii(), "accepted host {host:?}");
    prop_assert_eq!(
        Target::parse_authority(&target.to_string()),
        Ok(target.clone())
    );
    prop_assert_eq!(Host::parse(&host), Ok(target.host.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// CONNECT targets: never a panic, and what is accepted is what the `http` crate (which
    /// hyper used to read the request line) also reads as host and port.
    #[test]
    fn connect_targets_agree_with_the_http_crate(text in tricky_text()) {
        if let Ok(target) = Target::parse_authority(&text) {
            check_accepted(&target)?;
        }
        let _ = Target::parse_authority_or(&text, 80);
        let Ok(uri) = text.parse::<Uri>() else { return Ok(()) };
        let Ok(target) = connect_target(&uri) else { return Ok(()) };
        check_accepted(&target)?;
        let authority = uri.authority().expect("authority-form");
        prop_assert_eq!(Host::parse(authority.host()).ok(), Some(target.host.clone()));
        prop_assert_eq!(authority.port_u16(), Some(target.port));
    }

    /// Forwarded requests: `http://` + anything + a path, with or without a Host header.
    #[test]
    fn forward_targets_agree_with_the_http_crate(
        authority in tricky_text(),
        path in prop::sample::select(&["", "/", "/x?y", "#f", "?q"][..]),
        host_header in prop_oneof![Just(None), Just(Some(String::new())), tricky_text().prop_map(Some)],
        same_host in any::<bool>(),
    ) {
        let mut builder = Request::builder().uri(format!("http://{authority}{path}"));
        let header = if same_host { Some(authority.clone()) } else { host_header };
        if let Some(h) = &header {
            builder = builder.header(http::header::HOST, h.as_str());
        }
        let Ok(req) = builder.body(()) else { return Ok(()) };
        let Ok(target) = forward_target(&req) else { return Ok(()) };
        check_accepted(&target)?;
        prop_assert_eq!(Host::parse(req.uri().host().unwrap()).ok(), Some(target.host.clone()));
        prop_assert_eq!(req.uri().port_u16().unwrap_or(80), target.port);
        if let Some(h) = header {
            prop_assert_eq!(Target::parse_authority_or(&h, 80).ok(), Some(target));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host names

/// An IPv4 address written in one of the shorthand forms C resolvers accept: fewer than four
/// parts, hex or octal parts, leading zeros.
fn non_canonical_ipv4() -> impl Strategy<Value = (Ipv4Addr, String)> {
    fn part(value: u32, form: u8) -> String {
        match form % 3 {
            0 => format!("{value}"),
            1 => format!("0x{value:x}"),
            _ => format!("0{value:o}"),
        }
    }
    (ipv4(), 1..=4usize, any::<[u8; 4]>(), any::<bool>())
        .prop_map(|(ip, parts, forms, dot)| {
            let n = u32::from(ip);
            let o = ip.octets().map(u32::from);
            let mut text = match parts {
                1 => part(n, forms[0]),
                2 => format!("{}.{}", part(o[0], forms[0]), part(n & 0xff_ffff, forms[1])),
                3 => format!(
                    "{}.{}.{}",
                    part(o[0], forms[0]),
                    part(o[1], forms[1]),
                    part(n & 0xffff, forms[2])
                ),
                _ => {
                    // Four parts: at least one written in hex or octal (or with a leading zero).
                    let mut forms = forms;
                    if forms.iter().all(|f| f % 3 == 0) {
                        forms[0] = 1 + forms[0] % 2;
                    }
                    o.iter()
                        .zip(forms)
                        .map(|(v, f)| part(*v, f))
                        .collect::<Vec<_>>()
                        .join(".")
                }
            };
            if dot {
                text.push('.');
            }
            (ip, text)
        })
        // "0.1.2.3" in four decimal parts is canonical; so is a one-part form only when written
        // in hex or octal of a number that needs no other reading... none is. Skip the rare
        // collision where the shorthand happens to be the canonical text.
        .prop_filter("canonical by accident", |(ip, text)| {
            text.trim_end_matches('.') != ip.to_string()
        })
}

proptest! {
    #![proptest_config(config())]

    /// `Host::parse` never panics, and what it returns is normal: re-parsing the printed form
    /// gives it back; a name is lower-case ASCII, no trailing dot, DNS-sized.
    #[test]
    fn hosts_are_normal_and_reparse_to_themselves(text in prop_oneof![tricky_text(), domain(6).prop_flat_map(respelt)]) {
        let Ok(host) = Host::parse(&text) else { return Ok(()) };
        prop_assert_eq!(Host::parse(&host.to_string()), Ok(host.clone()));
        match &host {
            Host::Domain(name) => {
                prop_assert!(!name.ends_with('.') && name.len() <= 253, "{name:?}");
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'), "{name:?}");
                prop_assert!(name.split('.').all(|l| (1..=63).contains(&l.len())), "{name:?}");
                prop_assert_eq!(Host::parse(&text.to_ascii_uppercase()), Ok(host.clone()));
            }
            Host::Ip(IpAddr::V4(ip)) => {
                prop_assert_eq!(text.trim_end_matches('.').parse::<Ipv4Addr>().ok(), Some(*ip));
            }
            Host::Ip(IpAddr::V6(_)) => {}
        }
    }

    /// Every shorthand IPv4 form is refused as a non-canonical IP, never read as a name or as
    /// another address; the canonical form of the same address is accepted.
    #[test]
    fn shorthand_ipv4_literals_are_refused((ip, text) in non_canonical_ipv4()) {
        prop_assert!(
            matches!(Host::parse(&text), Err(HostError::NonCanonicalIp(_))),
            "{text:?} gave {:?}", Host::parse(&text)
        );
        prop_assert_eq!(Host::parse(&ip.to_string()), Ok(Host::Ip(IpAddr::V4(ip))));
    }

    /// IP literals print and parse back to the same address.
    #[test]
    fn ip_literals_round_trip(ip in ip()) {
        let host = Host::Ip(ip);
        prop_assert_eq!(Host::parse(&host.to_string()), Ok(host.clone()));
        let target = Target { host, port: 443 };
        prop_assert_eq!(Target::parse_authority(&target.to_string()), Ok(target));
    }
}

// ---------------------------------------------------------------------------------------------
// Allowlist

/// A valid pattern: an exact name, a wildcard over two or more labels, or an IP.
fn pattern() -> impl Strategy<Value = Pattern> {
    prop_oneof![
        3 => domain(4).prop_map(|d| Pattern::parse(&d).unwrap()),
        3 => (domain(3), label()).prop_map(|(d, l)| Pattern::parse(&format!("*.{d}.{l}")).unwrap()),
        1 => ip().prop_map(Pattern::Ip),
    ]
}

/// A host to look up: a name from the same labels as the patterns, or an IP.
fn lookup_host() -> impl Strategy<Value = Host> {
    prop_oneof![
        6 => domain(7).prop_map(|d| Host::parse(&d).unwrap()),
        1 => ip().prop_map(Host::Ip),
    ]
}

/// The naive reading of the allowlist: scan every pattern; the most specific match wins (an
/// exact entry, then the longest wildcard suffix); of duplicates, the first.
fn reference_candidates(patterns: &[(Pattern, u64)], host: &Host) -> Vec<(usize, u64)> {
    let mut seen = Vec::new();
    let mut found: Vec<(usize, usize, u64)> = Vec::new();
    for (pattern, active_at) in patterns {
        if seen.contains(pattern) {
            continue;
        }
        let id = seen.len();
        seen.push(pattern.clone());
        if pattern.matches(host) {
            let specificity = match pattern {
                Pattern::Wildcard(suffix) => suffix.len(),
                _ => usize::MAX,
            };
            found.push((specificity, id, *active_at));
        }
    }
    found.sort_by_key(|(specificity, _, _)| std::cmp::Reverse(*specificity));
    found.into_iter().map(|(_, id, at)| (id, at)).collect()
}

fn reference_lookup(patterns: &[(Pattern, u64)], host: &Host, now: u64) -> Lookup {
    let candidates = reference_candidates(patterns, host);
    if let Some((id, _)) = candidates.iter().find(|(_, at)| *at <= now) {
        return Lookup::Active(*id as RuleId);
    }
    // The one due first; of equal times, the most specific.
    let mut pending: Option<(usize, u64)> = None;
    for (id, at) in candidates {
        if pending.is_none_or(|(_, p)| at < p) {
            pending = Some((id, at));
        }
    }
    pending.map_or(Lookup::NoMatch, |(id, _)| Lookup::Pending(id as RuleId))
}

proptest! {
    #![proptest_config(config())]

    /// `Pattern::parse` never panics, and a parsed pattern prints as an entry that parses back
    /// to it. A wildcard never matches its own apex.
    #[test]
    fn patterns_reparse_and_wildcards_skip_the_apex(
        text in prop_oneof![
            tricky_text(),
            tricky_text().prop_map(|t| format!("*.{t}")),
            domain(5).prop_flat_map(respelt).prop_map(|d| format!("*.{d}")),
        ]
    ) {
        let Ok(pattern) = Pattern::parse(&text) else { return Ok(()) };
        prop_assert_eq!(Pattern::parse(&pattern.to_string()), Ok(pattern.clone()));
        if let Pattern::Wildcard(suffix) = &pattern {
            let apex = Host::parse(suffix).unwrap();
            prop_assert!(!pattern.matches(&apex), "{pattern} matched {apex}");
            let sub = Host::parse(&format!("x.{suffix}")).unwrap();
            prop_assert!(pattern.matches(&sub), "{pattern} missed {sub}");
        }
    }

    /// The hash index answers as a scan over every pattern would, with activation times.
    #[test]
    fn allowlist_agrees_with_a_scan(
        entries in prop::collection::vec((pattern(), prop::sample::select(&[0u64, 10, 20][..])), 0..24),
        hosts in prop::collection::vec(lookup_host(), 1..16),
        now in prop::sample::select(&[0u64, 5, 10, 15, 20, u64::MAX][..]),
    ) {
        let mut list = Allowlist::new(entries.iter().map(|(p, _)| p.clone()));
        // Duplicates keep the first occurrence: its activation time is the one that counts.
        let mut unique: Vec<&(Pattern, u64)> = Vec::new();
        for entry in &entries {
            if !unique.iter().any(|u| u.0 == entry.0) {
                unique.push(entry);
            }
        }
        for (id, (_, at)) in unique.iter().enumerate() {
            list.set_active_at(id as RuleId, *at);
        }
        // Hosts that the patterns name, and their subdomains and parents, besides random ones.
        let mut probes = hosts;
        for (pattern, _) in &entries {
            let text = pattern.to_string();
            let bare = text.trim_start_matches("*.");
            for candidate in [bare.to_string(), format!("z.{bare}"), bare.split_once('.').map_or(String::new(), |(_, p)| p.to_string())] {
                if let Ok(host) = Host::parse(&candidate) {
                    probes.push(host);
                }
            }
        }
        for host in &probes {
            let want = reference_lookup(&entries, host, now);
            prop_assert_eq!(list.lookup(host, now), want, "{}", host);
            let any_time = reference_lookup(&entries, host, u64::MAX).rule();
            prop_assert_eq!(list.find(host), any_time, "{}", host);
        }
    }

    /// Deep names (up to DNS's 127 labels) against wildcards of every depth: the index's
    /// label-count bitmap and word-at-a-time dot scan agree with the scan too.
    #[test]
    fn deep_names_agree_with_a_scan(
        depth in 1usize..=127,
        wildcard_depths in prop::collection::vec(2usize..=127, 0..6),
        exact_depths in prop::collection::vec(1usize..=127, 0..3),
        letters in prop::collection::vec(prop::sample::select(&["a", "b", "ab"][..]), 127),
    ) {
        let name_of = |labels: usize| -> String {
            let start = 127 - labels;
            letters[start..].join(".")
        };
        let fits = |n: usize| name_of(n).len() <= 253;
        // "ab" labels make some depths too long for DNS: take the deepest that fits.
        let depth = (1..=depth).rev().find(|d| fits(*d)).unwrap();
        let mut patterns = Vec::new();
        for d in wildcard_depths.into_iter().filter(|d| fits(*d)) {
            patterns.push((Pattern::parse(&format!("*.{}", name_of(d))).unwrap(), 0));
        }
        for d in exact_depths.into_iter().filter(|d| fits(*d)) {
            patterns.push((Pattern::parse(&name_of(d)).unwrap(), 0));
        }
        let list = Allowlist::new(patterns.iter().map(|(p, _)| p.clone()));
        let host = Host::parse(&name_of(depth)).unwrap();
        prop_assert_eq!(list.find(&host), reference_lookup(&patterns, &host, 0).rule());
    }
}

// ---------------------------------------------------------------------------------------------
// Redirect locations

/// A base URL as the access log writes it.
fn base_url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["http", "https"][..]),
        domain(3),
        prop::option::of(1u16..),
        prop::sample::select(&["", "/", "/a/b", "/a/b/", "/a?x=/y", "?q", "#f"][..]),
    )
        .prop_map(|(scheme, host, port, path)| match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        })
}

proptest! {
    #![proptest_config(config())]

    /// `target_of` and `resolve_location` never panic; when a `Location` resolves to a URL
    /// whose target egressd reads, that target is the host and port a WHATWG URL parser (a
    /// browser, most HTTP clients) would go to next. Otherwise the access log and `trace`
    /// would vouch for one host while the client follows the redirect to another.
    #[test]
    fn locations_resolve_to_the_host_a_browser_would_visit(
        base in base_url(),
        location in prop_oneof![
            tricky_text(),
            tricky_text().prop_map(|t| format!("/{t}")),
            tricky_text().prop_map(|t| format!("//{t}")),
            (prop::sample::select(&["http://", "https://", "HTTP://", "http:/", "http:", "//", "/\\", "\\\\"][..]), tricky_text())
                .prop_map(|(a, b)| format!("{a}{b}")),
        ],
    ) {
        let _ = target_of(&location);
        let next = resolve_location(&base, &location);
        let Ok((target, _)) = target_of(&next) else { return Ok(()) };
        let Ok(browser) = url::Url::parse(&base).and_then(|b| b.join(&location)) else { return Ok(()) };
        if !matches!(browser.scheme(), "http" | "https") {
            return Ok(());
        }
        let Some(host) = browser.host_str() else { return Ok(()) };
        prop_assert_eq!(
            (Host::parse(host).ok(), browser.port_or_known_default()),
            (Some(target.host.clone()), Some(target.port)),
            "base {:?} + Location {:?}: egressd reads {:?} as {}, a browser goes to {}",
            base, location, next, target, browser
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TLS ClientHello

/// The handshake message of a ClientHello with `sni` (if any) among other extensions.
fn client_hello(
    sni: Option<&str>,
    session_id: &[u8],
    suites: usize,
    extensions: &[(u16, Vec<u8>)],
    sni_at: usize,
) -> Vec<u8> {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }
    let mut exts: Vec<(u16, Vec<u8>)> = extensions.to_vec();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend(vec16(name.as_bytes()));
        exts.insert(sni_at.min(exts.len()), (0, vec16(&entry)));
    }
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend(vec16(&vec![0x13; suites * 2]));
    body.extend([1, 0]);
    let mut ext_bytes = Vec::new();
    for (kind, data) in &exts {
        ext_bytes.extend(kind.to_be_bytes());
        ext_bytes.extend(vec16(data));
    }
    body.extend(vec16(&ext_bytes));
    let len = body.len() as u32;
    let mut msg = vec![1, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    msg.extend(body);
    msg
}

/// `handshake` in TLS records whose payloads have the given sizes (the last takes the rest).
fn in_records(handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = handshake;
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .map_or(rest.len(), |s| (*s).clamp(1, rest.len()));
        let (chunk, tail) = rest.split_at(n);
        out.extend([0x16, 0x03, 0x01]);
        out.extend((n as u16).to_be_bytes());
        out.extend(chunk);
        rest = tail;
    }
    out
}

/// A hello with random surroundings: (record bytes, the SNI it carries).
fn hello_records() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    (
        prop::option::of(domain(5)),
        prop::collection::vec(any::<u8>(), 0..=32),
        1usize..40,
        prop::collection::vec((1u16.., prop::collection::vec(any::<u8>(), 0..64)), 0..6),
        0usize..8,
        prop::collection::vec(1usize..300, 0..8),
    )
        .prop_map(|(sni, session, suites, exts, at, sizes)| {
            let msg = client_hello(sni.as_deref(), &session, suites, &exts, at);
            (in_records(&msg, &sizes), sni)
        })
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes, and bytes that start like a TLS handshake record: no panic.
    #[test]
    fn client_hello_parsing_is_total(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        record in any::<bool>(),
    ) {
        let mut buf = if record { vec![0x16, 0x03, 0x01] } else { Vec::new() };
        buf.extend(bytes);
        let _ = parse_client_hello(&buf);
    }

    /// A hello in records of any sizes gives its SNI; every strict prefix is Incomplete (never
    /// a verdict on half a hello); bytes after it do not change the answer; a flipped byte
    /// anywhere gives some answer without a panic.
    #[test]
    fn client_hellos_in_any_records(
        (bytes, sni) in hello_records(),
        trailer in prop::collection::vec(any::<u8>(), 0..32),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        prop_assert_eq!(parse_client_hello(&bytes), Hello::Complete(sni.clone()));
        for cut in 0..bytes.len() {
            prop_assert_eq!(parse_client_hello(&bytes[..cut]), Hello::Incomplete, "cut at {}", cut);
        }
        let mut longer = bytes.clone();
        longer.extend(trailer);
        prop_assert_eq!(parse_client_hello(&longer), Hello::Complete(sni));
        let mut mutated = bytes;
        let at = flip.0.index(mutated.len());
        mutated[at] ^= flip.1 | 1;
        let _ = parse_client_hello(&mutated);
    }

    /// A real client's hello (rustls, with its key shares and extensions) names the host it was
    /// given.
    #[test]
    fn rustls_hellos_name_their_host(name in domain(5)) {
        let Ok(server) = rustls::pki_types::ServerName::try_from(name.clone()) else { return Ok(()) };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut bytes = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut bytes).unwrap();
        }
        prop_assert_eq!(parse_client_hello(&bytes), Hello::Complete(Some(name)));
    }
}

// ---------------------------------------------------------------------------------------------
// Config file and allowlist edits

const EXAMPLE_CONFIG: &str = include_str!("../../config/egressd.toml");

/// A path no file is at: relative paths in a mutated config resolve to nothing.
fn config_path() -> &'static Path {
    Path::new("/nonexistent/egressd-properties/egressd.toml")
}

fn allowlist_of(config: &Config) -> Vec<String> {
    config
        .policy
        .allowlist
        .patterns()
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Delete(prop::sample::Index, usize),
    Duplicate(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        prop::sample::select(&b"\"'[]{}=#,.*\n \t\\0123456789-:_aZ"[..]),
        any::<u8>(),
    ];
    prop_oneof![
        4 => (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<prop::sample::Index>(), 1usize..80).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match m {
            Mutation::Set(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Delete(i, n) => {
                let at = i.index(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Duplicate(i, n) => {
                let at = i.index(bytes.len());
                let end = (at + n).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            Mutation::Truncate(i) => {
                let at = i.index(bytes.len());
                bytes.truncate(at);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(config())]

    /// Mutated copies of the example config load or are refused with problems; never a panic.
    #[test]
    fn mutated_configs_never_panic(mutations in prop::collection::vec(mutation(), 1..6)) {
        let text = mutate(EXAMPLE_CONFIG, &mutations);
        if let Err(err) = Config::parse(config_path(), &text) {
            prop_assert!(!err.problems().is_empty());
        }
    }

    /// A file cut short while being written is refused or loads the whole allowlist: never a
    /// shorter list (the example keeps `[allowlist]` last for this).
    #[test]
    fn truncated_configs_never_load_part_of_the_allowlist(cut in any::<prop::sample::Index>()) {
        let full = Config::parse(config_path(), EXAMPLE_CONFIG).unwrap();
        let text = &EXAMPLE_CONFIG[..cut.index(EXAMPLE_CONFIG.len())];
        if let Ok(config) = Config::parse(config_path(), text) {
            prop_assert_eq!(allowlist_of(&config), allowlist_of(&full), "cut to {:?}", text);
        }
    }
}

/// How the `domains` array and what surrounds it are written.
#[derive(Clone, Debug)]
struct Layout {
    multiline: bool,
    trailing_comma: bool,
    indent: &'static str,
    /// An end-of-line comment after each entry (multi-line only).
    comments: Vec<bool>,
    /// A comment on its own line above each entry (multi-line only).
    above: Vec<bool>,
    /// Each entry on the previous entry's line rather than its own (multi-line only).
    shared: Vec<bool>,
    /// Comment lines between the last entry and `]` (multi-line only).
    before_close: usize,
    /// `]` on the last entry's line when nothing in between needs a line break.
    bracket_on_last_line: bool,
    /// `allowlist = { domains = [...] }` instead of an `[allowlist]` table.
    inline_table: bool,
    /// A comment after the closing bracket.
    closing_comment: bool,
    /// Another table after the allowlist.
    table_after: bool,
}

prop_compose! {
    fn layout()(
        multiline in any::<bool>(),
        trailing_comma in any::<bool>(),
        indent in prop::sample::select(&["", "  ", "    ", "\t"][..]),
        comments in prop::collection::vec(any::<bool>(), 16),
        above in prop::collection::vec(prop::bool::weighted(0.3), 16),
        shared in prop::collection::vec(prop::bool::weighted(0.2), 16),
        before_close in 0..3usize,
        bracket_on_last_line in prop::bool::weighted(0.2),
        inline_table in prop::bool::weighted(0.2),
        closing_comment in any::<bool>(),
        table_after in any::<bool>(),
    ) -> Layout {
        let multiline = multiline && !inline_table;
        Layout {
            multiline, trailing_comma, indent, comments, above, shared, before_close,
            bracket_on_last_line, inline_table, closing_comment, table_after,
        }
    }
}

/// The multi-line array of `quoted` entries in `layout`.
fn render_multiline(quoted: &[String], layout: &Layout) -> String {
    let mut a = String::from("[");
    let shares_line = |i: usize| i > 0 && i < quoted.len() && layout.shared[i % 16];
    let mut ends_in_comment = false;
    for (i, q) in quoted.iter().enumerate() {
        if shares_line(i) {
            a.push(' ');
        } else {
            a.push('\n');
            if layout.above[i % 16] {
                a.push_str(&format!("{}# above {i}\n", layout.indent));
            }
            a.push_str(layout.indent);
        }
        a.push_str(q);
        if i + 1 < quoted.len() || layout.trailing_comma {
            a.push(',');
        }
        ends_in_comment = !shares_line(i + 1) && layout.comments[i % 16];
        if ends_in_comment {
            a.push_str(&format!("  # note {i}"));
        }
    }
    let bracket_follows = layout.bracket_on_last_line
        && !quoted.is_empty()
        && !ends_in_comment
        && layout.before_close == 0;
    if !bracket_follows {
        a.push('\n');
    }
    for k in 0..layout.before_close {
        a.push_str(&format!("{}# before close {k}\n", layout.indent));
    }
    a.push(']');
    a
}

/// A config file with `entries` (as written, any spelling) in `layout`.
fn render(entries: &[String], layout: &Layout) -> String {
    let quoted: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
    let array = if layout.multiline {
        render_multiline(&quoted, layout)
    } else {
        let comma = if layout.trailing_comma && !quoted.is_empty() {
            ","
        } else {
            ""
        };
        format!("[{}{comma}]", quoted.join(", "))
    };
    let closing = if layout.closing_comment { " # end" } else { "" };
    let body = if layout.inline_table {
        format!("allowlist = {{ domains = {array} }}{closing}\n")
    } else {
        format!("[allowlist]\n# the list\ndomains = {array}{closing}\n")
    };
    let after = if layout.table_after {
        "\n[dns]\n# overrides\noverrides = {}\n"
    } else {
        ""
    };
    let proxy = "[proxy]\nlisten = \"127.0.0.1:3128\"\n";
    if layout.inline_table {
        // A dotted key after a table header would land in that table.
        format!("# egressd\n{body}\n{proxy}{after}")
    } else {
        format!("# egressd\n{proxy}\n{body}{after}")
    }
}

/// Every comment of `text`, in order (no entry or key in these files holds a `#`).
fn comments_of(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.find('#').map(|at| line[at..].trim_end()))
        .collect()
}

/// The `allowlist.domains` strings of `text`, read by the `toml` crate as egressd's loader does.
fn domains_in(text: &str) -> Result<Vec<Pattern>, TestCaseError> {
    let value: toml::Table = toml::from_str(text)
        .map_err(|e| TestCaseError::fail(format!("not TOML ({e}):\n{text}")))?;
    let domains = value["allowlist"]["domains"].as_array().expect("array");
    Ok(domains
        .iter()
        .map(|v| Pattern::parse(v.as_str().expect("string")).expect("valid entry"))
        .collect())
}

/// Distinct patterns, each with the spelling it is written in.
fn entries() -> impl Strategy<Value = Vec<(Pattern, String)>> {
    prop::collection::vec(pattern(), 0..10).prop_flat_map(|patterns| {
        let mut unique: Vec<Pattern> = Vec::new();
        for p in patterns {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        unique
            .into_iter()
            .map(|p| {
                // A trailing dot is for names (and IPv4): `::1.` is no IPv6 address.
                let text = p.to_string();
                let spelt = if text.contains(':') {
                    Just(text).boxed()
                } else {
                    respelt(text).boxed()
                };
                spelt.prop_map(move |s| (p.clone(), s))
            })
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(config())]

    /// Adding an entry and removing it again gives back the file byte for byte, whatever
    /// comments stand before, after and beside the entries and the closing bracket; in
    /// between, the file is TOML whose `domains` are exactly the old ones plus the new one,
    /// every comment is still there, and a second add is refused as a duplicate.
    #[test]
    fn add_then_remove_gives_back_the_file(
        entries in entries(),
        new in pattern(),
        layout in layout(),
    ) {
        let patterns: Vec<Pattern> = entries.iter().map(|(p, _)| p.clone()).collect();
        prop_assume!(!patterns.contains(&new));
        let spellings: Vec<String> = entries.iter().map(|(_, s)| s.clone()).collect();
        let original = render(&spellings, &layout);
        prop_assert_eq!(domains_in(&original)?, patterns.clone());
        let added = add_entry(&original, &new).map_err(|e| TestCaseError::fail(format!("{e}\n{original}")))?;
        let mut want = patterns.clone();
        want.push(new.clone());
        prop_assert_eq!(domains_in(&added)?, want, "added {} to\n{}\ngot\n{}", new, original, added);
        prop_assert_eq!(comments_of(&added), comments_of(&original), "added {} to\n{}\ngot\n{}", new, original, added);
        prop_assert!(Config::parse(config_path(), &added).is_ok(), "{}", added);
        prop_assert!(matches!(add_entry(&added, &new), Err(EditError::Duplicate(..))));
        let removed = remove_entry(&added, &new).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&removed, &original, "added {} then removed it; in between:\n{}", new, added);
    }

    /// Removing any entry leaves TOML whose `domains` are the others, in order, and every
    /// comment but the one on the removed entry's own line; removing it again is refused.
    #[test]
    fn remove_takes_out_exactly_one_entry(
        entries in entries().prop_filter("non-empty", |e| !e.is_empty()),
        which in any::<prop::sample::Index>(),
        layout in layout(),
    ) {
        let patterns: Vec<Pattern> = entries.iter().map(|(p, _)| p.clone()).collect();
        let spellings: Vec<String> = entries.iter().map(|(_, s)| s.clone()).collect();
        let original = render(&spellings, &layout);
        let index = which.index(patterns.len());
        let gone = patterns[index].clone();
        let removed = remove_entry(&original, &gone).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<Pattern> = patterns.iter().filter(|p| **p != gone).cloned().collect();
        prop_assert_eq!(domains_in(&removed)?, want, "removed {} from\n{}\ngot\n{}", gone, original, removed);
        let own_comment = format!("# note {index}");
        let kept: Vec<&str> = comments_of(&original).into_iter().filter(|c| *c != own_comment).collect();
        let left: Vec<&str> = comments_of(&removed).into_iter().filter(|c| *c != own_comment).collect();
        prop_assert_eq!(left, kept, "removed {} from\n{}\ngot\n{}", gone, original, removed);
        prop_assert!(matches!(remove_entry(&removed, &gone), Err(EditError::NotFound(_))));
    }
}

// ---------------------------------------------------------------------------------------------
// Cron

/// One cron field over `lo..=hi`: its text and the values it selects.
fn cron_field(lo: u32, hi: u32) -> impl Strategy<Value = (String, BTreeSet<u32>)> {
    // croner refuses a bare `*` inside a list (`*,5`), which Vixie cron reads as `*`; a list
    // with it means nothing more than `*` alone, so it is generated alone.
    let star = Just(("*".to_string(), (lo..=hi).collect::<BTreeSet<u32>>()));
    let atom = prop_oneof![
        3 => (lo..=hi).prop_map(|n| (n.to_string(), BTreeSet::from([n]))),
        2 => (lo..=hi, lo..=hi).prop_map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}-{b}"), (a..=b).collect())
        }),
        2 => (1..=hi).prop_map(move |s| (format!("*/{s}"), (lo..=hi).step_by(s as usize).collect())),
        1 => (lo..=hi, lo..=hi, 1..=hi).prop_map(|(a, b, s)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}-{b}/{s}"), (a..=b).step_by(s as usize).collect())
        }),
    ];
    let list = prop::collection::vec(atom, 1..=3).prop_map(|atoms| {
        let text = atoms
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let set = atoms.into_iter().flat_map(|(_, s)| s).collect();
        (text, set)
    });
    prop_oneof![1 => star, 3 => list]
}

/// A five-field expression and a naive matcher for it (Vixie cron's day rule).
#[derive(Clone, Debug)]
struct CronCase {
    text: String,
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    days: BTreeSet<u32>,
    months: BTreeSet<u32>,
    weekdays: BTreeSet<u32>,
    /// Either day field starts with `*`: a day must match both.
    and_days: bool,
}

impl CronCase {
    fn matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.days.contains(&t.day());
        let dow = self.weekdays.contains(&t.weekday().num_days_from_sunday());
        let day = if self.and_days {
            dom && dow
        } else {
            dom || dow
        };
        self.minutes.contains(&t.minute())
            && self.hours.contains(&t.hour())
            && self.months.contains(&t.month())
            && day
    }
}

fn cron_case() -> impl Strategy<Value = CronCase> {
    (
        cron_field(0, 59),
        cron_field(0, 23),
        prop_oneof![2 => Just(("*".to_string(), (1..=31).collect())), 1 => cron_field(1, 31)],
        prop_oneof![3 => Just(("*".to_string(), (1..=12).collect())), 1 => cron_field(1, 12)],
        prop_oneof![2 => Just(("*".to_string(), (0..=7).collect())), 1 => cron_field(0, 7)],
    )
        .prop_map(|(mi, h, dom, mo, dow)| CronCase {
            text: format!("{} {} {} {} {}", mi.0, h.0, dom.0, mo.0, dow.0),
            and_days: dom.0.starts_with('*') || dow.0.starts_with('*'),
            minutes: mi.1,
            hours: h.1,
            days: dom.1,
            months: mo.1,
            // 7 is Sunday too.
            weekdays: dow.1.into_iter().map(|d| d % 7).collect(),
        })
}

/// A time between 1970 and 2099, to the nanosecond.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_102_444_800, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| Utc.timestamp_opt(secs, nanos).unwrap())
}

proptest! {
    #![proptest_config(config())]

    /// `CronExpr::parse` never panics, on arbitrary text or on cron-shaped text.
    #[test]
    fn cron_parsing_is_total(
        text in prop_oneof![
            tricky_text(),
            "[0-9*/,\\- ]{0,30}",
            "[0-9A-Za-z*/,#?@\\- ]{0,30}",
            prop::collection::vec("[0-9]{1,3}|\\*|\\*/[0-9]{1,3}|[0-9]{1,2}-[0-9]{1,2}|[A-Za-z]{3}", 0..8).prop_map(|f| f.join(" ")),
        ],
        t in instant(),
    ) {
        if let Ok(expr) = CronExpr::parse(&text) {
            if let Some(next) = expr.next_after(t) {
                prop_assert!(next > t, "{text:?}: {next} after {t}");
            }
        }
    }

    /// For generated expressions: the next run is after `t`, on a whole minute, and is the
    /// first minute the naive matcher accepts (within a three-day window, or beyond it when
    /// the matcher finds none).
    #[test]
    fn cron_next_run_matches_a_minute_by_minute_scan(case in cron_case(), t in instant()) {
        let expr = CronExpr::parse(&case.text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let next = expr.next_after(t);
        if let Some(next) = next {
            prop_assert!(next > t, "{}: {} after {}", case.text, next, t);
            prop_assert_eq!((next.second(), next.nanosecond()), (0, 0), "{}: {}", case.text, next);
        }
        let first = t.with_second(0).unwrap().with_nanosecond(0).unwrap() + Duration::minutes(1);
        let window = 3 * 24 * 60;
        let want = (0..window).map(|i| first + Duration::minutes(i)).find(|m| case.matches(*m));
        match want {
            Some(want) => prop_assert_eq!(next, Some(want), "{}", case.text),
            None => prop_assert!(
                next.is_none_or(|n| n >= first + Duration::minutes(window)),
                "{}: {:?} does not match", case.text, next
            ),
        }
        if let Some(next) = next {
            prop_assert!(case.matches(next), "{}: {} does not match", case.text, next);
        }
    }
}
