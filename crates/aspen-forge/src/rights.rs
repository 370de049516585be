//! Who may do what with repositories: the forge app's rights, `forge:read:SCOPE`,
//! `forge:push:SCOPE` and `forge:admin:SCOPE`, where a scope is a prefix of repository names.
//! A token with `read` on `repos/a/` can clone `repos/a/x` but not push to it, nor read
//! `repos/b/x`.

use aspen_core::AspenError;
use aspen_core::capability::Capability;

/// The forge app's name.
pub const APP: &str = "forge";
/// Reading repositories: listing, showing, cloning, fetching.
pub const READ: &str = "read";
/// Moving refs: pushing.
pub const PUSH: &str = "push";
/// Creating, deleting and protecting repositories.
pub const ADMIN: &str = "admin";

/// Fails unless `caps` grant `right` over repository (or prefix) `name`.
pub fn require(caps: &[Capability], right: &str, name: &str) -> Result<(), AspenError> {
    if aspen_app::rights::allows(caps, APP, right, name.as_bytes()) {
        Ok(())
    } else {
        Err(aspen_app::rights::denied(APP, right, name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(right: &str, scope: &str) -> Capability {
        Capability::App { app: APP.into(), right: right.into(), scope: scope.as_bytes().to_vec() }
    }

    #[test]
    fn a_read_right_on_a_prefix_reads_under_it_only() {
        let caps = [cap(READ, "repos/a/")];
        assert!(require(&caps, READ, "repos/a/x").is_ok());
        assert!(require(&caps, PUSH, "repos/a/x").is_err());
        assert!(require(&caps, READ, "repos/b/x").is_err());
        assert!(require(&[Capability::All], ADMIN, "anything").is_ok());
    }
}
