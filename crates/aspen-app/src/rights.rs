//! App rights: `Capability::App { app, right, scope }` and what it allows.
//!
//! A right's scope is a byte prefix of whatever the app names things by (repository names,
//! pin names, cache names): holding `forge:push:repos/a/` allows pushing to `repos/a/x`, not
//! to `repos/b/x`. Delegation narrows scopes like key prefixes (`Capability::covers`). The
//! root token's `All` allows every app's every right.

use aspen_core::AspenError;
use aspen_core::capability::Capability;

/// The KV prefix an app keeps its records under: `_aspen/<app>/`. A node gives each app a
/// KV that may touch only this prefix.
pub fn app_prefix(app: &str) -> String {
    format!("_aspen/{app}/")
}

/// Whether `caps` grant `app`'s `right` over `scope`.
pub fn allows(caps: &[Capability], app: &str, right: &str, scope: &[u8]) -> bool {
    caps.iter().any(|c| allows_one(c, app, right, scope))
}

/// Whether one capability grants `app`'s `right` over `scope`.
pub fn allows_one(cap: &Capability, app: &str, right: &str, scope: &[u8]) -> bool {
    match cap {
        Capability::All => true,
        Capability::App { app: a, right: r, scope: s } => a == app && r == right && scope.starts_with(s),
        _ => false,
    }
}

/// The error a request gets when the token lacks a right.
pub fn denied(app: &str, right: &str, scope: &[u8]) -> AspenError {
    AspenError::PermissionDenied {
        reason: format!(
            "the token does not allow {app}:{right} on {:?} (a token needs --app {app}:{right}:PREFIX with a prefix of it)",
            String::from_utf8_lossy(scope)
        ),
    }
}

/// Parses `APP:RIGHT:SCOPE` (the scope may be empty, and may itself hold ':').
pub fn parse(text: &str) -> Result<Capability, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(app), Some(right), Some(scope)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("app right {text:?} is not APP:RIGHT:SCOPE (e.g. forge:push:repos/aspen/)"));
    };
    if app.is_empty() || right.is_empty() {
        return Err(format!("app right {text:?} names no app or no right"));
    }
    Ok(Capability::App { app: app.to_string(), right: right.to_string(), scope: scope.as_bytes().to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(app: &str, right: &str, scope: &str) -> Capability {
        Capability::App { app: app.into(), right: right.into(), scope: scope.as_bytes().to_vec() }
    }

    #[test]
    fn a_scoped_right_covers_names_under_its_prefix_only() {
        let caps = [app("forge", "read", "repos/a/")];
        assert!(allows(&caps, "forge", "read", b"repos/a/x"));
        assert!(!allows(&caps, "forge", "read", b"repos/b/x"));
        assert!(!allows(&caps, "forge", "push", b"repos/a/x"), "another right");
        assert!(!allows(&caps, "cache", "read", b"repos/a/x"), "another app");
        assert!(allows(&[Capability::All], "anything", "any", b""));
        assert!(!allows(&[Capability::Read(Vec::new())], "forge", "read", b""), "KV rights grant no app right");
    }

    #[test]
    fn app_rights_parse_with_their_scope() {
        assert_eq!(parse("forge:push:repos/aspen/").unwrap(), app("forge", "push", "repos/aspen/"));
        assert_eq!(parse("blob:read:").unwrap(), app("blob", "read", ""));
        assert_eq!(parse("cache:write:a:b").unwrap(), app("cache", "write", "a:b"));
        assert!(parse("forge:push").is_err());
        assert!(parse(":push:x").is_err());
    }
}
