//! Who may do what with CI: `ci:read:SCOPE` (runs, jobs, logs), `ci:run:SCOPE` (start,
//! cancel, retry runs), `ci:admin:SCOPE` (enable and disable repositories, trust patch
//! authors) and `ci:secrets:SCOPE` (set, list and delete job secrets; a worker needs it to
//! be given the secrets of the trusted jobs it runs), where a scope is a prefix of repository
//! names. Workers are not callers of this protocol: they work on
//! the KV (see docs/ci.md for the token a worker needs).

use aspen_core::AspenError;
use aspen_core::capability::Capability;

/// The CI app's name.
pub const APP: &str = "ci";
pub const READ: &str = "read";
pub const RUN: &str = "run";
pub const ADMIN: &str = "admin";
pub const SECRETS: &str = "secrets";

/// Fails unless `caps` grant `right` over repository `repo`.
pub fn require(caps: &[Capability], right: &str, repo: &str) -> Result<(), AspenError> {
    if allows(caps, right, repo) { Ok(()) } else { Err(aspen_app::rights::denied(APP, right, repo.as_bytes())) }
}

pub fn allows(caps: &[Capability], right: &str, repo: &str) -> bool {
    aspen_app::rights::allows(caps, APP, right, repo.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_are_per_repository_prefix() {
        let caps = [Capability::App { app: APP.into(), right: RUN.into(), scope: b"team/".to_vec() }];
        assert!(require(&caps, RUN, "team/app").is_ok());
        assert!(require(&caps, READ, "team/app").is_err(), "run does not grant read");
        assert!(require(&caps, RUN, "other/app").is_err());
        assert!(require(&[Capability::All], ADMIN, "x").is_ok());
    }
}
