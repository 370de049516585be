//! Who may do what with blobs: the blob app's rights, `blob:read:SCOPE` and
//! `blob:write:SCOPE`, where a scope is a prefix of pin names.
//!
//! - Pinning, unpinning and listing pins need the right over the pin's name (or the listed
//!   prefix): a token for `blob:write:forge/` pins `forge/...` and nothing else.
//! - Reading a blob (get, has, status) needs `read` over every name (an empty scope), or
//!   `read` over a scope under which some pin names the blob (looked up in the pin index):
//!   an app's token reads what its own pins keep, not what other apps store.
//! - Adding needs `write` over some scope: content-addressed bytes harm nobody, and they are
//!   kept only as long as a pin in the writer's scope names them.
//! - Listing every blob the cluster holds needs `read` over every name.
//!
//! Tokens minted before the blob app existed carry `BlobRead` and `BlobWrite`; they keep
//! their meaning, unscoped `read` and `write`.

use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_kv::{Kv, KvExt};

use crate::protocol::{APP, READ, WRITE};
use crate::records::{BlobHash, by_hash_prefix};

/// Whether `caps` grant `right` over `scope`.
pub fn allows(caps: &[Capability], right: &str, scope: &[u8]) -> bool {
    aspen_app::rights::allows(caps, APP, right, scope) || caps.iter().any(|c| legacy(c, right))
}

/// The rights of the first version, which had no scope.
fn legacy(cap: &Capability, right: &str) -> bool {
    matches!((cap, right), (Capability::BlobRead, READ) | (Capability::BlobWrite, WRITE))
}

/// Whether `caps` grant `right` over some scope.
pub fn allows_some(caps: &[Capability], right: &str) -> bool {
    caps.iter().any(|c| match c {
        Capability::All => true,
        Capability::App { app, right: r, .. } => app == APP && r == right,
        other => legacy(other, right),
    })
}

/// Fails unless `caps` grant `right` over `scope`.
pub fn require(caps: &[Capability], right: &str, scope: &[u8]) -> Result<(), AspenError> {
    if allows(caps, right, scope) { Ok(()) } else { Err(aspen_app::rights::denied(APP, right, scope)) }
}

/// Fails unless `caps` grant `right` over some scope.
pub fn require_some(caps: &[Capability], right: &str) -> Result<(), AspenError> {
    if allows_some(caps, right) {
        Ok(())
    } else {
        Err(AspenError::PermissionDenied {
            reason: format!(
                "the token does not allow {APP}:{right} over any scope (it needs --app {APP}:{right}:PREFIX)"
            ),
        })
    }
}

/// Fails unless `caps` may read `hash`: unscoped `read`, or `read` over a scope under which
/// a pin names it. `kv` is the blob app's own view of the KV, where the pin index lives.
pub async fn require_read_blob(kv: &dyn Kv, caps: &[Capability], hash: &BlobHash) -> Result<(), AspenError> {
    if allows(caps, READ, b"") {
        return Ok(());
    }
    let scopes: Vec<&[u8]> = caps
        .iter()
        .filter_map(|c| match c {
            Capability::App { app, right, scope } if app == APP && right == READ => Some(scope.as_slice()),
            _ => None,
        })
        .collect();
    if scopes.is_empty() {
        return Err(aspen_app::rights::denied(APP, READ, b""));
    }
    for scope in &scopes {
        let page = kv
            .scan_prefix(by_hash_prefix(hash, scope), 1, ReadConsistency::Linearizable)
            .await
            .map_err(|e| e.aspen().cloned().unwrap_or_else(|| AspenError::internal(e)))?;
        if !page.kvs.is_empty() {
            return Ok(());
        }
    }
    Err(AspenError::PermissionDenied {
        reason: format!(
            "the token allows {APP}:{READ} only for blobs pinned under {}, and no pin there names blob {}",
            scopes.iter().map(|s| format!("{:?}", String::from_utf8_lossy(s))).collect::<Vec<_>>().join(", "),
            data_encoding::HEXLOWER.encode(hash)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(right: &str, scope: &str) -> Capability {
        Capability::App { app: APP.into(), right: right.into(), scope: scope.as_bytes().to_vec() }
    }

    #[test]
    fn scoped_rights_cover_pins_under_their_prefix() {
        let caps = [app(WRITE, "forge/")];
        assert!(allows(&caps, WRITE, b"forge/repo/main"));
        assert!(!allows(&caps, WRITE, b"cache/x"));
        assert!(!allows(&caps, READ, b"forge/repo/main"));
        assert!(allows_some(&caps, WRITE));
        assert!(!allows_some(&caps, READ));
    }

    #[test]
    fn first_version_rights_are_unscoped() {
        assert!(allows(&[Capability::BlobRead], READ, b"anything"));
        assert!(allows(&[Capability::BlobWrite], WRITE, b""));
        assert!(!allows(&[Capability::BlobRead], WRITE, b""));
        assert!(allows(&[Capability::All], WRITE, b"x"));
        assert!(!allows(&[Capability::Write(Vec::new())], WRITE, b"x"), "a KV right is no blob right");
    }
}
