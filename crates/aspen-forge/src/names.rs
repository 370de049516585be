//! Repository and ref names: what is accepted, checked before anything is stored.
//!
//! A repository name is 1..=200 bytes of ASCII letters, digits and `.`, `_`, `-`, in
//! segments separated by single `/` (`team/service`, `repos/aspen`); no segment is `.` or
//! `..` or starts with `.`, and it does not end in `.git` (that suffix is for URLs). Names are
//! what rights are scoped by: `forge:push:repos/a/` covers `repos/a/x`.
//!
//! A ref name follows git's own rules (`git check-ref-format`), restricted to `refs/...`
//! names of at most 255 bytes.

use aspen_core::AspenError;

/// Longest repository name, in bytes.
pub const MAX_REPO_NAME_BYTES: usize = 200;
/// Longest ref name, in bytes.
pub const MAX_REF_NAME_BYTES: usize = 255;

/// Checks a repository name (see the module docs).
pub fn validate_repo_name(name: &str) -> Result<(), AspenError> {
    let bad = |why: &str| {
        Err(AspenError::invalid(format!(
            "repository name {name:?} {why}: use 1..={MAX_REPO_NAME_BYTES} bytes of letters, digits, '.', '_', '-' in \
             segments separated by '/'"
        )))
    };
    if name.is_empty() || name.len() > MAX_REPO_NAME_BYTES {
        return bad("has the wrong length");
    }
    if name.ends_with(".git") {
        return bad("ends in .git");
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return bad("has an empty segment");
        }
        if segment.starts_with('.') {
            return bad("has a segment starting with '.'");
        }
        if !segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return bad("has a character outside the allowed set");
        }
    }
    Ok(())
}

/// Checks a ref name by git's rules (`refs/...`, no `..`, no control characters, none of
/// `~^:?*[\` or space, no `@{`, no component starting with `.` or ending in `.lock`, no
/// trailing `/` or `.`).
pub fn validate_ref_name(name: &str) -> Result<(), AspenError> {
    let bad = |why: &str| Err(AspenError::invalid(format!("ref name {name:?} {why}")));
    if !name.starts_with("refs/") {
        return bad("does not start with refs/");
    }
    if name.len() > MAX_REF_NAME_BYTES {
        return bad(&format!("is over {MAX_REF_NAME_BYTES} bytes"));
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") {
        return bad("contains '..', '@{' or '//'");
    }
    if name.ends_with('/') || name.ends_with('.') {
        return bad("ends with '/' or '.'");
    }
    if name.chars().any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c) || c == '\u{7f}') {
        return bad("contains a space, a control character or one of ~^:?*[\\");
    }
    for component in name.split('/') {
        if component.is_empty() || component.starts_with('.') || component.ends_with(".lock") {
            return bad("has a component that is empty, starts with '.' or ends with .lock");
        }
    }
    Ok(())
}

/// The ref of branch `branch`.
pub fn branch_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_are_path_like_and_plain() {
        for good in ["aspen", "repos/aspen", "team-a/svc_1.core", "a/b/c"] {
            assert!(validate_repo_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", ".hidden", "a/.b", "x.git", "sp ace", "ü", &"x".repeat(201)] {
            assert!(validate_repo_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ref_names_follow_git() {
        for good in ["refs/heads/main", "refs/tags/v1.0", "refs/heads/feature/x-1", "refs/patches/1/head"] {
            assert!(validate_ref_name(good).is_ok(), "{good}");
        }
        for bad in [
            "main",
            "HEAD",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/x.lock",
            "refs/heads/.x",
            "refs/heads/x/",
            "refs/heads/x.",
            "refs/heads/a@{1}",
            "refs/heads/a~1",
            "refs/heads/a:b",
            "refs//heads",
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad:?}");
        }
    }
}
