//! A secret's name and its value, as types that cannot hold a bad one: a [`SecretKey`] is
//! `[A-Za-z0-9._-]{1,128}`, a [`SecretValue`] is UTF-8 of at most [`MAX_VALUE_BYTES`], wiped
//! from memory when dropped and never printed (its `Debug` says how long it is, nothing else).

use std::fmt;

use zeroize::Zeroizing;

/// The longest key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// The largest value, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// At most this many secrets exist at once.
pub const MAX_SECRETS: usize = 1000;

/// A secret's name: safe in a URL path, a log line and a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey(String);

/// Why a key or a value is refused; the message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    #[error("a secret key is 1 to {MAX_KEY_CHARS} characters of A-Z, a-z, 0-9, '.', '_' and '-'; {0:?} is not")]
    Key(String),
    #[error("a secret value is at most {MAX_VALUE_BYTES} bytes (64 KiB); this one is {0} bytes")]
    TooLarge(usize),
    #[error("a secret value is UTF-8 text; this one is not")]
    NotUtf8,
}

impl SecretKey {
    pub fn parse(text: &str) -> Result<SecretKey, InvalidSecret> {
        let valid = !text.is_empty()
            && text.len() <= MAX_KEY_CHARS
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            // Shown back in the error: cut, so an oversized key does not make a huge message.
            let shown: String = text.chars().take(MAX_KEY_CHARS + 8).collect();
            return Err(InvalidSecret::Key(shown));
        }
        Ok(SecretKey(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret's plaintext. Wiped when dropped; `Debug` prints its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Checks size and encoding. Takes the bytes, so no second copy is left unwiped.
    pub fn new(bytes: Vec<u8>) -> Result<SecretValue, InvalidSecret> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(InvalidSecret::TooLarge(bytes.len()));
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(InvalidSecret::NotUtf8);
        }
        Ok(SecretValue(bytes))
    }

    pub fn from_string(text: String) -> Result<SecretValue, InvalidSecret> {
        SecretValue::new(text.into_bytes())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes, redacted>)", self.0.len())
    }
}

/// Who changed a secret last: an operator (admin API, console) or a function (through the
/// proxy, with its identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writer {
    Operator,
    Function(String),
}

impl Writer {
    /// `operator` or `function:NAME`, as stored and shown.
    pub fn label(&self) -> String {
        match self {
            Writer::Operator => "operator".into(),
            Writer::Function(name) => format!("function:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        // (name, key, valid?)
        let cases = [
            (
                "letters, digits and the three marks",
                "partner-token_v2.prod",
                true,
            ),
            ("one character", "a", true),
            ("the longest", &"k".repeat(MAX_KEY_CHARS), true),
            ("empty", "", false),
            ("one too long", &"k".repeat(MAX_KEY_CHARS + 1), false),
            ("a slash", "a/b", false),
            ("a space", "a b", false),
            ("non-ASCII", "clé", false),
            ("percent-encoding left in", "a%2Fb", false),
        ];
        for (name, key, valid) in cases {
            assert_eq!(SecretKey::parse(key).is_ok(), valid, "{name}");
        }
    }

    #[test]
    fn values_are_bounded_utf8_and_never_printed() {
        let value = SecretValue::from_string("hunter2-very-secret".into()).unwrap();
        let shown = format!("{value:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("19 bytes"), "{shown}");
        assert!(SecretValue::new(vec![b'x'; MAX_VALUE_BYTES]).is_ok());
        assert_eq!(
            SecretValue::new(vec![b'x'; MAX_VALUE_BYTES + 1]),
            Err(InvalidSecret::TooLarge(MAX_VALUE_BYTES + 1))
        );
        assert_eq!(
            SecretValue::new(vec![0xff, 0xfe]),
            Err(InvalidSecret::NotUtf8)
        );
    }
}
