//! Names that become one component of a coordination key (a barrier, service, pool, instance,
//! worker or task name), and why they are checked: a `/` would let one name reach into
//! another's keys (service `a` with instance `b/c` is service `a/b`'s instance `c`), and an
//! empty name would make a prefix that covers every sibling.

use crate::CoordError;

/// Longest name, in bytes: keys stay far below `MAX_KEY_BYTES` with two names in them.
pub const MAX_NAME_BYTES: usize = 512;

/// Checks that `name` can be one key component; `what` says what it names ("service name",
/// "task id"), for the error.
pub fn validate_name(what: &str, name: &str) -> Result<(), CoordError> {
    let problem = if name.is_empty() {
        format!("{what} must not be empty")
    } else if name.contains('/') {
        format!("{what} {name:?} must not contain '/'")
    } else if name.len() > MAX_NAME_BYTES {
        format!("{what} is {} bytes, over the limit of {MAX_NAME_BYTES}", name.len())
    } else {
        return Ok(());
    };
    Err(invalid(problem))
}

/// An argument the caller got wrong, as the error every primitive returns for one.
pub(crate) fn invalid(reason: String) -> CoordError {
    CoordError::Invalid(reason)
}

/// The name in the last component of `key` under `prefix`, when `key` is a direct child.
pub(crate) fn child_name<'k>(prefix: &[u8], key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    let name = std::str::from_utf8(rest).ok()?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        assert!(validate_name("service name", "web-1.prod").is_ok());
    }

    #[test]
    fn empty_slashed_and_huge_names_are_refused_with_the_reason() {
        let err = validate_name("service name", "").unwrap_err().to_string();
        assert!(err.contains("service name must not be empty"), "{err}");
        let err = validate_name("task id", "a/b").unwrap_err().to_string();
        assert!(err.contains("task id \"a/b\" must not contain '/'"), "{err}");
        let err = validate_name("pool name", &"x".repeat(MAX_NAME_BYTES + 1)).unwrap_err().to_string();
        assert!(err.contains("over the limit"), "{err}");
    }

    #[test]
    fn child_names_are_direct_children_only() {
        assert_eq!(child_name(b"p/", b"p/a"), Some("a"));
        assert_eq!(child_name(b"p/", b"p/a/b"), None);
        assert_eq!(child_name(b"p/", b"p/"), None);
        assert_eq!(child_name(b"p/", b"q/a"), None);
    }
}
