//! Function identity: which function sent a request, from the credentials in its proxy URL
//! (`HTTPS_PROXY=http://FUNCTION:TOKEN@egressd:3128`, which clients send as
//! `Proxy-Authorization: Basic base64(FUNCTION:TOKEN)`).
//!
//! Tokens are kept only as SHA-256 digests, read from each function's `token_file` (a
//! plaintext token, or `sha256:HEX` for operators who keep no usable credential in egressd's
//! files). A presented token is hashed and compared with every digest of the named function
//! in constant time; an unknown function is compared against a digest nobody holds, so the
//! answer and its timing are the same for an unknown name and a wrong token.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use http::header::{HeaderMap, PROXY_AUTHORIZATION};
use subtle::ConstantTimeEq;

use super::{Denial, DenyReason};

/// `proxy.identity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdentityMode {
    /// Credentials are ignored (and, like every hop-by-hop header, not forwarded).
    Off,
    /// Credentials are optional; when present they must be valid.
    #[default]
    Optional,
    /// Every request must carry a configured function's valid credentials.
    Required,
}

impl IdentityMode {
    pub fn parse(text: &str) -> Option<IdentityMode> {
        match text {
            "off" => Some(IdentityMode::Off),
            "optional" => Some(IdentityMode::Optional),
            "required" => Some(IdentityMode::Required),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityMode::Off => "off",
            IdentityMode::Optional => "optional",
            IdentityMode::Required => "required",
        }
    }
}

/// The SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &[u8]) -> TokenDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        TokenDigest(bytes)
    }

    fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(****)")
    }
}

/// Shortest and longest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
pub const MAX_TOKEN_LEN: usize = 512;
/// The longest base64 a valid `FUNCTION:TOKEN` needs (63 + 1 + 512 bytes), rounded up.
const MAX_ENCODED_LEN: usize = 1024;
/// Tokens one function may hold at once: the current one and the next, while it rolls over.
pub const MAX_TOKENS: usize = 2;

/// Why a token file cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    #[error("the file holds no token (one per line: the token itself, or sha256:HEX)")]
    Empty,
    #[error("line {0}: more than {MAX_TOKENS} tokens; a function holds at most the current token and the next while it rolls over")]
    TooMany(usize),
    #[error("line {0}: a token is {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)")]
    Token(usize),
    #[error("line {0}: sha256: must be followed by 64 hex digits")]
    Digest(usize),
}

/// The digests a token file holds: one token per line (blank lines and `#` comments
/// skipped), each the token itself or `sha256:` and its digest in hex.
pub fn parse_token_file(text: &str) -> Result<Vec<TokenDigest>, TokenFileError> {
    let mut digests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (number, line) = (i + 1, line.trim());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if digests.len() == MAX_TOKENS {
            return Err(TokenFileError::TooMany(number));
        }
        let digest = match line.strip_prefix("sha256:") {
            Some(hex) => parse_hex_digest(hex).ok_or(TokenFileError::Digest(number))?,
            None if valid_token(line.as_bytes()) => TokenDigest::of(line.as_bytes()),
            None => return Err(TokenFileError::Token(number)),
        };
        digests.push(digest);
    }
    if digests.is_empty() {
        return Err(TokenFileError::Empty);
    }
    Ok(digests)
}

fn valid_token(token: &[u8]) -> bool {
    (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
        && token.iter().all(|b| b.is_ascii_graphic())
}

fn parse_hex_digest(hex: &str) -> Option<TokenDigest> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(TokenDigest(bytes))
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Caller {
    /// No credentials (or `proxy.identity = "off"`).
    #[default]
    Anonymous,
    /// A configured function, by name.
    Function(Arc<str>),
}

/// The name logged and used as the metric label for callers without an identity. Reserved:
/// no function may take it ([`super::function::parse_name`]).
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => ANONYMOUS,
            Caller::Function(name) => name,
        }
    }

    /// The function's name; `None` for an anonymous caller.
    pub fn function(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Function(name) => Some(name),
        }
    }
}

/// Why credentials were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `required`, and none were sent: 407.
    Missing,
    /// Sent, but not `Basic base64(FUNCTION:TOKEN)`: 407 with what is wrong with the form.
    Malformed(&'static str),
    /// Well-formed, but the function is unknown or the token wrong (one answer for both).
    Invalid,
    /// More than one `Proxy-Authorization` header: 400.
    Duplicate,
}

impl Refusal {
    /// The denial shown to the client (not for [`Refusal::Duplicate`], a bad request).
    pub fn denial(&self) -> Denial {
        match self {
            Refusal::Missing => Denial::new(
                DenyReason::IdentityRequired,
                "proxy.identity is \"required\": put the function's credentials in the proxy URL, HTTPS_PROXY=http://FUNCTION:TOKEN@HOST:PORT",
            ),
            Refusal::Malformed(why) => Denial::new(
                DenyReason::IdentityInvalid,
                format!("{why}; expected Proxy-Authorization: Basic base64(FUNCTION:TOKEN), as clients send for http://FUNCTION:TOKEN@HOST:PORT"),
            ),
            Refusal::Invalid => Denial::new(
                DenyReason::IdentityInvalid,
                "unknown function or wrong token",
            ),
            Refusal::Duplicate => Denial::new(
                DenyReason::IdentityInvalid,
                "more than one Proxy-Authorization header",
            ),
        }
    }

    /// The `reason` label of `egressd_identity_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed(_) => "malformed",
            Refusal::Invalid => "invalid",
            Refusal::Duplicate => "duplicate",
        }
    }
}

/// `FUNCTION` and `TOKEN` of a well-formed `Basic` credential.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented {
    pub function: String,
    pub token: String,
}

/// The credentials in `headers`, if any: exactly one `Proxy-Authorization` of scheme `Basic`
/// (in any case, RFC 9110 §11.1), whose base64 decodes to UTF-8 `FUNCTION:TOKEN`, both
/// non-empty.
pub fn presented(headers: &HeaderMap) -> Result<Option<Presented>, Refusal> {
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::Duplicate);
    }
    let value = value.as_bytes();
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(Refusal::Malformed("only the Basic scheme is accepted"));
    }
    let encoded = rest.trim_ascii();
    // Checked before decoding: no valid name and token need more.
    if encoded.len() > MAX_ENCODED_LEN {
        return Err(Refusal::Malformed(
            "the credentials are longer than any function name and token",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| Refusal::Malformed("the credentials are not valid base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Refusal::Malformed("the credentials are not UTF-8"))?;
    let Some((function, token)) = text.split_once(':') else {
        return Err(Refusal::Malformed(
            "the credentials have no colon between function and token",
        ));
    };
    if function.is_empty() || token.is_empty() {
        return Err(Refusal::Malformed("the function or the token is empty"));
    }
    Ok(Some(Presented {
        function: function.to_string(),
        token: token.to_string(),
    }))
}

/// The identities in force: the mode and each function's token digests.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    pub mode: IdentityMode,
    functions: HashMap<Arc<str>, Vec<TokenDigest>>,
}

/// Compared against when the named function is unknown, so that case costs what a wrong
/// token does. No token hashes to it that anyone knows.
const NOBODY: TokenDigest = TokenDigest([0x5a; 32]);

impl Identities {
    pub fn new(mode: IdentityMode, functions: Vec<(String, Vec<TokenDigest>)>) -> Self {
        Identities {
            mode,
            functions: functions
                .into_iter()
                .map(|(name, digests)| (Arc::from(name), digests))
                .collect(),
        }
    }

    /// Whether `function` has tokens here.
    pub fn knows(&self, function: &str) -> bool {
        self.functions.contains_key(function)
    }

    /// Functions with tokens, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.functions.keys().map(|n| &**n).collect();
        names.sort_unstable();
        names
    }

    /// Whether a request with `function`'s valid credentials (none: without credentials) is
    /// refused before the allowlist is asked.
    pub fn refuses(&self, function: Option<&str>) -> bool {
        match (self.mode, function) {
            (IdentityMode::Off, _) => false,
            (IdentityMode::Required, None) => true,
            (IdentityMode::Optional, None) => false,
            (_, Some(name)) => !self.knows(name),
        }
    }

    /// Who sent a request with `headers`, or why it is refused.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if self.mode == IdentityMode::Off {
            return Ok(Caller::Anonymous);
        }
        match presented(headers)? {
            Some(presented) => self.verify(&presented),
            None if self.mode == IdentityMode::Required => Err(Refusal::Missing),
            None => Ok(Caller::Anonymous),
        }
    }

    /// The function that sent a request with `headers`, whatever the mode: for what only a
    /// function may do (the secret store), no credentials is a refusal too.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Arc<str>, Refusal> {
        let presented = presented(headers)?.ok_or(Refusal::Missing)?;
        match self.verify(&presented)? {
            Caller::Function(name) => Ok(name),
            Caller::Anonymous => Err(Refusal::Invalid),
        }
    }

    /// Checks a presented token against every digest of its function, all of them, in
    /// constant time.
    pub fn verify(&self, presented: &Presented) -> Result<Caller, Refusal> {
        let digest = TokenDigest::of(presented.token.as_bytes());
        let (name, digests) = match self.functions.get_key_value(presented.function.as_str()) {
            Some((name, digests)) => (Some(name), digests.as_slice()),
            None => (None, std::slice::from_ref(&NOBODY)),
        };
        let matched = digests
            .iter()
            .fold(false, |found, known| found | known.matches(&digest));
        match name {
            Some(name) if matched => Ok(Caller::Function(name.clone())),
            _ => Err(Refusal::Invalid),
        }
    }
}

/// The identities in force, swapped on reload and when a token file changes.
pub type IdentityHandle = Arc<arc_swap::ArcSwap<Identities>>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TOKEN: &str = "0123456789abcdef-current";
    const NEXT: &str = "0123456789abcdef-next";

    fn identities(mode: IdentityMode) -> Identities {
        let digests = parse_token_file(&format!("# rolling over\n{TOKEN}\n\n{NEXT}\n")).unwrap();
        Identities::new(mode, vec![("fn-a".into(), digests)])
    }

    fn basic(user_token: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_token)
        )
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(PROXY_AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn credentials_are_judged() {
        let current = basic(&format!("fn-a:{TOKEN}"));
        let next = basic(&format!("fn-a:{NEXT}"));
        let lower = current.replacen("Basic", "bASIC", 1);
        let wrong = basic("fn-a:0123456789abcdef-wrong");
        let unknown = basic(&format!("fn-b:{TOKEN}"));
        let no_colon = basic("fn-a");
        let empty_token = basic("fn-a:");
        let empty_user = basic(&format!(":{TOKEN}"));
        let non_utf8 = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b"fn-a:\xff\xfe-token-token-token")
        );
        let fn_a = Ok(Caller::Function("fn-a".into()));
        let malformed = |s| Err(Refusal::Malformed(s));
        // (name, mode, headers, expected)
        type Case<'a> = (
            &'a str,
            IdentityMode,
            Vec<&'a [u8]>,
            Result<Caller, Refusal>,
        );
        let cases: Vec<Case> = vec![
            (
                "current token",
                IdentityMode::Required,
                vec![current.as_bytes()],
                fn_a.clone(),
            ),
            (
                "next token, while rolling over",
                IdentityMode::Required,
                vec![next.as_bytes()],
                fn_a.clone(),
            ),
            (
                "Basic in another case (RFC 9110 §11.1)",
                IdentityMode::Required,
                vec![lower.as_bytes()],
                fn_a.clone(),
            ),
            (
                "none, optional",
                IdentityMode::Optional,
                vec![],
                Ok(Caller::Anonymous),
            ),
            (
                "none, required",
                IdentityMode::Required,
                vec![],
                Err(Refusal::Missing),
            ),
            (
                "wrong token, optional",
                IdentityMode::Optional,
                vec![wrong.as_bytes()],
                Err(Refusal::Invalid),
            ),
            (
                "unknown function: the same answer",
                IdentityMode::Required,
                vec![unknown.as_bytes()],
                Err(Refusal::Invalid),
            ),
            (
                "wrong token, off: ignored",
                IdentityMode::Off,
                vec![wrong.as_bytes()],
                Ok(Caller::Anonymous),
            ),
            (
                "two headers",
                IdentityMode::Optional,
                vec![current.as_bytes(), current.as_bytes()],
                Err(Refusal::Duplicate),
            ),
            (
                "Bearer",
                IdentityMode::Optional,
                vec![b"Bearer abc"],
                malformed("only the Basic scheme is accepted"),
            ),
            (
                "Digest",
                IdentityMode::Optional,
                vec![b"Digest username=\"fn-a\""],
                malformed("only the Basic scheme is accepted"),
            ),
            (
                "scheme alone",
                IdentityMode::Optional,
                vec![b"Basic"],
                malformed("the credentials have no colon between function and token"),
            ),
            (
                "not base64",
                IdentityMode::Optional,
                vec![b"Basic !!!"],
                malformed("the credentials are not valid base64"),
            ),
            (
                "not UTF-8",
                IdentityMode::Optional,
                vec![non_utf8.as_bytes()],
                malformed("the credentials are not UTF-8"),
            ),
            (
                "no colon",
                IdentityMode::Optional,
                vec![no_colon.as_bytes()],
                malformed("the credentials have no colon between function and token"),
            ),
            (
                "empty token",
                IdentityMode::Optional,
                vec![empty_token.as_bytes()],
                malformed("the function or the token is empty"),
            ),
            (
                "empty function",
                IdentityMode::Optional,
                vec![empty_user.as_bytes()],
                malformed("the function or the token is empty"),
            ),
        ];
        for (name, mode, values, want) in cases {
            let got = identities(mode).authenticate(&headers(&values));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn token_files() {
        let digest_line = format!(
            "sha256:{}",
            TokenDigest::of(TOKEN.as_bytes())
                .0
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let cases: &[(&str, &str, Result<usize, TokenFileError>)] = &[
            ("one token", "0123456789abcdef\n", Ok(1)),
            (
                "two, with a comment",
                "# next\n0123456789abcdef\n0123456789abcdeg\n",
                Ok(2),
            ),
            ("a digest", &digest_line, Ok(1)),
            ("empty", "\n# nothing\n", Err(TokenFileError::Empty)),
            (
                "three",
                "0123456789abcdef\n0123456789abcdeg\n0123456789abcdeh\n",
                Err(TokenFileError::TooMany(3)),
            ),
            ("too short", "short\n", Err(TokenFileError::Token(1))),
            (
                "a space inside",
                "0123456789 abcdef\n",
                Err(TokenFileError::Token(1)),
            ),
            (
                "a short digest",
                "sha256:abcd\n",
                Err(TokenFileError::Digest(1)),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(&parse_token_file(text).map(|d| d.len()), want, "{name}");
        }
        // A digest line admits the token it is the digest of.
        let digests = parse_token_file(&digest_line).unwrap();
        let ids = Identities::new(IdentityMode::Required, vec![("fn-a".into(), digests)]);
        let presented = Presented {
            function: "fn-a".into(),
            token: TOKEN.into(),
        };
        assert_eq!(ids.verify(&presented), Ok(Caller::Function("fn-a".into())));
    }

    #[test]
    fn digests_never_show_in_debug() {
        let ids = identities(IdentityMode::Required);
        assert!(!format!("{ids:?}").contains(&format!("{:?}", TokenDigest::of(TOKEN.as_bytes()).0)));
    }
}
