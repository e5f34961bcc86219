//! Encryption at rest: every value is sealed with AES-256-GCM (ring's AEAD, the crate that
//! already does egressd's TLS) under the 32-byte key of `secrets.key_file`, with a fresh
//! random nonce per write and the secret's key name as associated data, so a sealed value
//! copied onto another key's row does not open.
//!
//! The store records a [`MasterKey::check`] value beside the sealed values: a key file
//! that is not the one the store was sealed with is refused at start, before anything is
//! read or written, instead of failing value by value later.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::value::{SecretKey, SecretValue};

/// The key length `secrets.key_file` must hold.
pub const KEY_BYTES: usize = 32;
/// Associated data: this prefix, then the secret's key.
const AAD_PREFIX: &[u8] = b"egressd secret v1\0";

/// The key that seals every value. `Debug` shows its check value only.
pub struct MasterKey {
    aead: LessSafeKey,
    check: String,
    /// Where it was read from, for messages.
    pub path: PathBuf,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("path", &self.path)
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: expected a 32-byte key: 32 raw bytes, 64 hex digits or base64 of 32 bytes (egressd secrets new-key {} makes one); found {found}", path.display(), path.display())]
    Format { path: PathBuf, found: String },
}

/// A sealed value that did not open: a wrong key, or a value moved or damaged.
#[derive(Debug, thiserror::Error)]
#[error("the value of secret {key:?} does not decrypt with this key (a different secrets.key_file, or the stored value was damaged or moved)")]
pub struct OpenError {
    pub key: String,
}

impl MasterKey {
    /// Reads a key file: 32 raw bytes, 64 hex digits, or base64 of 32 bytes (surrounding
    /// whitespace ignored in the text forms).
    pub fn read(path: &Path) -> Result<MasterKey, KeyFileError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?);
        let key = decode_key(&bytes).ok_or_else(|| KeyFileError::Format {
            path: path.to_path_buf(),
            found: describe_contents(&bytes),
        })?;
        Ok(MasterKey::from_bytes(&key, path))
    }

    pub fn from_bytes(key: &[u8; KEY_BYTES], path: &Path) -> MasterKey {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("32 bytes is an AES-256 key");
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"egressd secrets key check\0".as_slice(), key].concat(),
        );
        let check = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        MasterKey {
            aead: LessSafeKey::new(unbound),
            check,
            path: path.to_path_buf(),
        }
    }

    /// 16 hex digits that tell keys apart without revealing them.
    pub fn check(&self) -> &str {
        &self.check
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, key: &SecretKey, value: &SecretValue) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut body = value.expose().to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key)),
                &mut body,
            )
            .expect("a value of at most 64 KiB seals");
        let mut sealed = Vec::with_capacity(NONCE_LEN + body.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        sealed
    }

    /// The value sealed under `key`.
    pub fn open(&self, key: &str, sealed: &[u8]) -> Result<SecretValue, OpenError> {
        let failed = || OpenError {
            key: key.to_string(),
        };
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(failed());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
        let mut buffer = Zeroizing::new(body.to_vec());
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(aad_text(key)), &mut buffer)
            .map_err(|_| failed())?;
        SecretValue::new(plain.to_vec()).map_err(|_| failed())
    }
}

fn aad(key: &SecretKey) -> Vec<u8> {
    aad_text(key.as_str())
}

fn aad_text(key: &str) -> Vec<u8> {
    [AAD_PREFIX, key.as_bytes()].concat()
}

/// 32 raw bytes, or the text forms.
fn decode_key(bytes: &[u8]) -> Option<[u8; KEY_BYTES]> {
    if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(bytes) {
        // 32 bytes that happen to be printable are read as text only if they decode as it.
        if !bytes.iter().all(|b| b.is_ascii_hexdigit()) {
            return Some(raw);
        }
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let decoded: Zeroizing<Vec<u8>> = if text.len() == 2 * KEY_BYTES {
        Zeroizing::new(
            (0..KEY_BYTES)
                .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?,
        )
    } else {
        use base64::Engine;
        Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
        )
    };
    <[u8; KEY_BYTES]>::try_from(decoded.as_slice()).ok()
}

/// What a file that is not a key holds, without quoting it (it may be a key of another kind).
fn describe_contents(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{} characters of text", text.trim().chars().count()),
        Err(_) => format!("{} bytes", bytes.len()),
    }
}

/// A new random key as 64 hex digits and a newline (`egressd secrets new-key`).
pub fn new_key_text() -> Zeroizing<String> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    SystemRandom::new()
        .fill(key.as_mut())
        .expect("the system random source works");
    let mut text = Zeroizing::new(String::with_capacity(2 * KEY_BYTES + 1));
    for b in key.iter() {
        text.push_str(&format!("{b:02x}"));
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; KEY_BYTES], Path::new("test.key"))
    }

    #[test]
    fn a_sealed_value_opens_under_its_key_name_and_master_key_only() {
        let name = SecretKey::parse("partner-token").unwrap();
        let value = SecretValue::from_string("Bearer abc.def".into()).unwrap();
        let sealed = key(1).seal(&name, &value);
        assert!(!sealed
            .windows(b"Bearer abc".len())
            .any(|w| w == b"Bearer abc"));
        assert_eq!(key(1).open("partner-token", &sealed).unwrap(), value);
        assert!(
            key(2).open("partner-token", &sealed).is_err(),
            "another master key"
        );
        assert!(
            key(1).open("other-token", &sealed).is_err(),
            "moved to another key"
        );
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(key(1).open("partner-token", &damaged).is_err(), "damaged");
        assert!(
            key(1).open("partner-token", &sealed[..10]).is_err(),
            "cut short"
        );
        assert_ne!(key(1).seal(&name, &value), sealed, "a fresh nonce per seal");
    }

    #[test]
    fn key_files_in_every_accepted_form_and_refused_ones() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let raw = [7u8; KEY_BYTES];
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let want = MasterKey::from_bytes(&raw, Path::new("x"))
            .check()
            .to_string();
        // (name, contents, accepted?)
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("raw bytes", raw.to_vec(), true),
            ("hex with a newline", format!("{hex}\n").into_bytes(), true),
            ("base64", format!("{b64}\n").into_bytes(), true),
            ("generated", new_key_text().as_bytes().to_vec(), true),
            ("too short", vec![7u8; 16], false),
            (
                "a password",
                b"correct horse battery staple\n".to_vec(),
                false,
            ),
            ("hex one digit short", hex.as_bytes()[1..].to_vec(), false),
            ("empty", Vec::new(), false),
        ];
        for (name, contents, accepted) in cases {
            let path = dir.path().join(name.replace(' ', "-"));
            std::fs::write(&path, &contents).unwrap();
            let read = MasterKey::read(&path);
            assert_eq!(read.is_ok(), accepted, "{name}: {read:?}");
            if let (Ok(key), true) = (&read, name != "generated") {
                assert_eq!(key.check(), want, "{name}");
            }
            if let Err(err) = read {
                let text = err.to_string();
                assert!(text.contains(&path.display().to_string()), "{name}: {text}");
                assert!(!text.contains("horse"), "{name} quotes the file: {text}");
            }
        }
        assert!(matches!(
            MasterKey::read(&dir.path().join("missing")),
            Err(KeyFileError::Read { .. })
        ));
    }
}
