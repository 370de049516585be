//! [`SecretBox`]: secrets an app keeps in the KV, sealed with the cluster's secrets key.
//!
//! An app that must hold a secret in the cluster (the cache's signing keys, CI's job
//! secrets) stores it sealed under its own KV prefix: AES-256-GCM under the secrets key,
//! with the KV key it is stored under as associated data, so a sealed value copied to another
//! key does not open. The KV's replicas, its snapshots and its backups hold only ciphertext;
//! a token that may read the app's prefix reads only ciphertext. Only the app, on a node
//! that has the secrets key, opens it, and it decides by its own rights who may use it.
//!
//! The secrets key is 32 bytes in a file each node names with `--secrets-key-file` (a
//! systemd credential, say); every node that opens secrets needs the same file. A node
//! without one keeps no secrets and says so when an app asks.
//!
//! Sealed layout (frozen): version byte `1`, 12-byte random nonce, ciphertext and 16-byte tag.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aspen_core::AspenError;

/// The first byte of every value sealed by this version.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The cluster's secrets key, able to seal and open secrets.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        SecretBox { cipher: Aes256Gcm::new(key.into()) }
    }

    /// Reads the key from `path`: 32 raw bytes, or 64 hex digits (a trailing newline is
    /// allowed).
    pub fn from_file(path: &Path) -> Result<Self, AspenError> {
        let bytes = std::fs::read(path)
            .map_err(|e| AspenError::invalid(format!("cannot read the secrets key file {}: {e}", path.display())))?;
        Self::from_bytes(&bytes).map_err(|e| AspenError::invalid(format!("secrets key file {}: {e}", path.display())))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
            return Ok(Self::new(&raw));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "it is neither 32 raw bytes nor hex text".to_string())?;
        let decoded = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim_end().as_bytes())
            .map_err(|e| format!("it is neither 32 raw bytes nor 64 hex digits ({e})"))?;
        let raw: [u8; 32] = decoded.try_into().map_err(|d: Vec<u8>| format!("it holds {} bytes, not 32", d.len()))?;
        Ok(Self::new(&raw))
    }

    /// A new random key as 64 hex digits and a newline: a key file's text.
    pub fn generate_text() -> String {
        let key: [u8; 32] = rand::random();
        format!("{}\n", data_encoding::HEXLOWER.encode(&key))
    }

    /// Seals `plaintext` for storage under KV key `label`.
    pub fn seal(&self, label: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AspenError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: label })
            .map_err(|_| AspenError::internal("sealing a secret failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`SecretBox::seal`] sealed under `label`. Fails on another key, another
    /// label or any change to the bytes.
    pub fn open(&self, label: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AspenError> {
        let what = || String::from_utf8_lossy(label).into_owned();
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(AspenError::invalid(format!("the sealed secret at {:?} is empty", what())));
        };
        if version != VERSION {
            return Err(AspenError::invalid(format!(
                "the sealed secret at {:?} has version {version}; this node reads version {VERSION}",
                what()
            )));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(AspenError::invalid(format!("the sealed secret at {:?} is truncated", what())));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: label }).map_err(|_| {
            AspenError::PermissionDenied {
                reason: format!(
                    "the secret at {:?} does not open with this node's secrets key (another key, or altered)",
                    what()
                ),
            }
        })
    }
}

/// The error an app gives when its node has no secrets key.
pub fn no_secrets_key(app: &str) -> AspenError {
    AspenError::Unavailable {
        reason: format!(
            "app {app} needs the cluster's secrets key, and this node has none: start it with \
             --secrets-key-file FILE (the same file on every node that serves {app})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_label() {
        let a = SecretBox::new(&[1; 32]);
        let b = SecretBox::new(&[2; 32]);
        let sealed = a.seal(b"_aspen/cache/secret/main", b"seed").unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"seed"), "the plaintext is not in the sealed bytes");
        assert_eq!(a.open(b"_aspen/cache/secret/main", &sealed).unwrap(), b"seed");
        assert!(b.open(b"_aspen/cache/secret/main", &sealed).is_err(), "another key");
        assert!(a.open(b"_aspen/cache/secret/other", &sealed).is_err(), "another label");
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(a.open(b"_aspen/cache/secret/main", &altered).is_err(), "altered bytes");
        assert!(a.open(b"x", &[]).is_err());
        assert!(a.open(b"x", &[2, 0, 0]).unwrap_err().to_string().contains("version 2"));
    }

    /// Sealed by the first version: every later one opens it.
    #[test]
    fn a_secret_sealed_by_version_1_still_opens() {
        let sealed = data_encoding::HEXLOWER
            .decode(b"017e0c5c269454bca41adc83c3521c0df0f9030b10e13ac2aac3a10ad257680b4ef7e22a1b125f37")
            .unwrap();
        let opened = SecretBox::new(&[9; 32]).open(b"_aspen/cache/secret/main", &sealed).unwrap();
        assert_eq!(opened, b"main-1:seed");
    }

    #[test]
    fn key_files_hold_raw_bytes_or_hex() {
        let text = SecretBox::generate_text();
        assert_eq!(text.len(), 65);
        let from_hex = SecretBox::from_bytes(text.as_bytes()).unwrap();
        let sealed = from_hex.seal(b"k", b"v").unwrap();
        let raw = data_encoding::HEXLOWER.decode(text.trim_end().as_bytes()).unwrap();
        assert_eq!(SecretBox::from_bytes(&raw).unwrap().open(b"k", &sealed).unwrap(), b"v");
        assert!(SecretBox::from_bytes(b"short").unwrap_err().contains("neither"));
        assert!(SecretBox::from_bytes("ab".repeat(31).as_bytes()).unwrap_err().contains("31 bytes"));
    }
}
