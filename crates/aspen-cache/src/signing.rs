//! Nix's narinfo signatures: ed25519 over the path's fingerprint
//! ([`crate::narinfo::NarInfo::fingerprint`]), with keys and signatures written
//! `name:base64`, as `nix-store --generate-binary-cache-key` writes keys and `nix store
//! sign` writes signatures.

use aspen_core::AspenError;

/// A signing key: its name and its ed25519 secret.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    secret: iroh::SecretKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: keys end up in logs through Debug.
        f.debug_struct("SigningKey").field("name", &self.name).field("public", &self.public_key()).finish()
    }
}

/// Splits `name:base64` and checks the name (what Nix accepts: non-empty, no `:`).
fn split(text: &str, what: &str) -> Result<(String, Vec<u8>), AspenError> {
    let (name, data) = text
        .split_once(':')
        .ok_or_else(|| AspenError::invalid(format!("a {what} is `name:base64`; this has no ':'")))?;
    if name.is_empty() {
        return Err(AspenError::invalid(format!("a {what} needs a name before the ':'")));
    }
    let bytes = data_encoding::BASE64
        .decode(data.trim().as_bytes())
        .map_err(|e| AspenError::invalid(format!("the {what} named {name:?} is not base64: {e}")))?;
    Ok((name.to_string(), bytes))
}

/// A signature's key name and its 64 bytes.
pub fn split_signature(text: &str) -> Result<(String, [u8; 64]), AspenError> {
    let (name, bytes) = split(text, "signature")?;
    let len = bytes.len();
    let sig = bytes
        .try_into()
        .map_err(|_| AspenError::invalid(format!("the signature by {name:?} is {len} bytes, not 64")))?;
    Ok((name, sig))
}

impl SigningKey {
    /// Makes a new key named `name` (the name goes into every signature; by convention
    /// `cache.example.org-1`).
    pub fn generate(name: &str) -> Result<Self, AspenError> {
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(AspenError::invalid(format!("{name:?} cannot name a key: no ':', no spaces, not empty")));
        }
        Ok(SigningKey { name: name.to_string(), secret: iroh::SecretKey::generate() })
    }

    /// Reads a secret key file's text: `name:base64(32-byte seed, then 32-byte public key)`.
    pub fn parse(text: &str) -> Result<Self, AspenError> {
        let (name, bytes) = split(text.trim(), "secret key")?;
        if bytes.len() != 64 {
            return Err(AspenError::invalid(format!("the secret key {name:?} is {} bytes, not 64", bytes.len())));
        }
        let seed: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
        let secret = iroh::SecretKey::from_bytes(&seed);
        if secret.public().as_bytes()[..] != bytes[32..] {
            return Err(AspenError::invalid(format!("the secret key {name:?} does not hold its own public key")));
        }
        Ok(SigningKey { name, secret })
    }

    /// The secret key file's text (mode 0600 material).
    pub fn to_secret_text(&self) -> String {
        let mut bytes = self.secret.to_bytes().to_vec();
        bytes.extend_from_slice(self.secret.public().as_bytes());
        format!("{}:{}", self.name, data_encoding::BASE64.encode(&bytes))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `trusted-public-keys` entry: `name:base64(public key)`.
    pub fn public_key(&self) -> String {
        format!("{}:{}", self.name, data_encoding::BASE64.encode(self.secret.public().as_bytes()))
    }

    /// Signs a fingerprint: `name:base64(signature)`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.secret.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, data_encoding::BASE64.encode(&sig.to_bytes()))
    }
}

/// Whether `signature` is a valid signature of `fingerprint` by one of `trusted` (public
/// keys as `name:base64`). A signature by a key not in `trusted` is not valid.
pub fn verify(fingerprint: &str, signature: &str, trusted: &[String]) -> Result<bool, AspenError> {
    let (name, sig) = split_signature(signature)?;
    for key in trusted {
        let (key_name, bytes) = split(key, "public key")?;
        if key_name != name {
            continue;
        }
        let len = bytes.len();
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| AspenError::invalid(format!("the public key {key_name:?} is {len} bytes, not 32")))?;
        let public = iroh::PublicKey::from_bytes(&bytes)
            .map_err(|e| AspenError::invalid(format!("the public key {key_name:?} is not an ed25519 point: {e}")))?;
        return Ok(public.verify(fingerprint.as_bytes(), &iroh::Signature::from_bytes(&sig)).is_ok());
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_verify() {
        let key = SigningKey::generate("cache.example.org-1").unwrap();
        let again = SigningKey::parse(&key.to_secret_text()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let sig = key.sign("1;/nix/store/x;sha256:y;1;");
        assert!(sig.starts_with("cache.example.org-1:"));
        let trusted = vec![key.public_key()];
        assert!(verify("1;/nix/store/x;sha256:y;1;", &sig, &trusted).unwrap());
        assert!(!verify("1;/nix/store/x;sha256:y;2;", &sig, &trusted).unwrap(), "another fingerprint");
        let other = SigningKey::generate("cache.example.org-1").unwrap();
        assert!(!verify("1;/nix/store/x;sha256:y;1;", &sig, &[other.public_key()]).unwrap(), "another key");
        assert!(!verify("1;/nix/store/x;sha256:y;1;", &sig, &[]).unwrap(), "untrusted");
        assert!(!format!("{key:?}").contains(&key.to_secret_text()[20..40]), "Debug hides the secret");
    }

    #[test]
    fn malformed_keys_and_signatures_are_refused() {
        let key = SigningKey::generate("k").unwrap();
        let mut bytes = data_encoding::BASE64.decode(&key.to_secret_text().as_bytes()[2..]).unwrap();
        bytes[63] ^= 1;
        let wrong_public = format!("k:{}", data_encoding::BASE64.encode(&bytes));
        for (bad, expected) in [
            ("nocolon".to_string(), "no ':'"),
            (":AAAA".to_string(), "needs a name"),
            ("k:%%%".to_string(), "not base64"),
            ("k:AAAA".to_string(), "not 64"),
            (wrong_public, "own public key"),
        ] {
            let err = SigningKey::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
        assert!(split_signature("k:AAAA").unwrap_err().to_string().contains("not 64"));
        assert!(SigningKey::generate("a:b").is_err());
    }
}
