//! A node's persisted iroh secret key: its identity across restarts.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use iroh::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read secret key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write secret key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("secret key file {path} holds {len} bytes; a secret key is exactly 32 bytes")]
    BadLength { path: String, len: usize },
}

fn key_from_bytes(path: &Path, bytes: &[u8]) -> Result<SecretKey, IdentityError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| IdentityError::BadLength { path: path.display().to_string(), len: bytes.len() })?;
    Ok(SecretKey::from_bytes(&arr))
}

/// Reads the secret key at `path`, which must exist (a key provisioned from outside).
pub fn read_secret_key(path: &Path) -> Result<SecretKey, IdentityError> {
    let bytes =
        std::fs::read(path).map_err(|source| IdentityError::Read { path: path.display().to_string(), source })?;
    key_from_bytes(path, &bytes)
}

/// Loads the secret key at `path`, creating it (mode 0600) on first use.
pub fn load_or_create_secret_key(path: &Path) -> Result<SecretKey, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => key_from_bytes(path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            let tmp = path.with_extension("tmp");
            let write = |p: &Path| -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(p)?;
                f.write_all(&key.to_bytes())?;
                f.sync_all()
            };
            write(&tmp).map_err(|source| IdentityError::Write { path: tmp.display().to_string(), source })?;
            std::fs::rename(&tmp, path)
                .map_err(|source| IdentityError::Write { path: path.display().to_string(), source })?;
            Ok(key)
        }
        Err(source) => Err(IdentityError::Read { path: path.display().to_string(), source }),
    }
}

/// Writes a secret (a token, a key) to `path` with mode 0600, atomically.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
