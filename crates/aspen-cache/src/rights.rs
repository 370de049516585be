//! Who may do what with caches: the cache app's rights, `cache:read:SCOPE`,
//! `cache:write:SCOPE` and `cache:admin:SCOPE`, where a scope is a prefix of cache names.
//! Reading a cache made with public reads needs no right at all.

use aspen_core::AspenError;
use aspen_core::capability::Capability;

/// The cache app's name.
pub const APP: &str = "cache";
/// Reading narinfo and NARs of a cache that is not public.
pub const READ: &str = "read";
/// Pushing paths, pinning and unpinning.
pub const WRITE: &str = "write";
/// Creating caches and collecting their garbage.
pub const ADMIN: &str = "admin";

/// Fails unless `caps` grant `right` over cache `name`.
pub fn require(caps: &[Capability], right: &str, name: &str) -> Result<(), AspenError> {
    if allows(caps, right, name) { Ok(()) } else { Err(aspen_app::rights::denied(APP, right, name.as_bytes())) }
}

pub fn allows(caps: &[Capability], right: &str, name: &str) -> bool {
    aspen_app::rights::allows(caps, APP, right, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_are_per_cache_prefix() {
        let caps = [Capability::App { app: APP.into(), right: WRITE.into(), scope: b"ci-".to_vec() }];
        assert!(require(&caps, WRITE, "ci-main").is_ok());
        assert!(require(&caps, READ, "ci-main").is_err(), "write does not grant read");
        assert!(require(&caps, WRITE, "main").is_err());
        assert!(require(&[Capability::All], ADMIN, "main").is_ok());
    }
}
