//! What the coordination commands share: checking a primitive's name, and running a command
//! while holding a lock, a read or write lock, a semaphore permit or a leadership.
//!
//! A hold belongs to a session lease this process keeps alive while the command runs. The
//! hold is released when the command ends, however it ends; if this process dies instead,
//! the lease ends and frees the hold within its TTL. Ctrl-C while waiting for the hold
//! revokes the session, so the queue forgets this process at once; Ctrl-C while the command
//! runs reaches the command (it is in the same process group), and the hold is released once
//! it exits.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::{AspenError, KvError};
use aspen_coord::{CoordError, Leadership, LockGuard, Permit, RwGuard, Session, validate_name};
use serde_json::json;

use crate::context::Ctx;
use crate::output;

/// Checks a primitive's name (a clap value parser) by aspen-coord's rules for a name that
/// becomes one key segment: not empty, no '/', at most [`aspen_coord::MAX_NAME_BYTES`].
pub fn parse_name(name: &str) -> Result<String, String> {
    match validate_name("the name", name) {
        Ok(()) => Ok(name.to_string()),
        // Only the reason: clap already says that the value is invalid.
        Err(CoordError::Kv(KvError::Aspen(AspenError::InvalidRequest { reason })) | CoordError::Invalid(reason)) => {
            Err(reason)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The number a command run under a hold gets in its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldToken {
    /// The environment variable holding it, e.g. `ASPEN_LOCK_TOKEN`.
    pub var: &'static str,
    /// Its field in `--json` output, e.g. `token`.
    pub field: &'static str,
    pub value: u64,
}

/// A hold on a primitive that a command can run under.
pub trait Hold {
    /// What the command is told about the hold, if anything.
    fn token(&self) -> Option<HoldToken>;
    /// Gives the hold up: the next waiter gets it.
    fn release(self) -> impl Future<Output = Result<(), CoordError>>;
}

impl Hold for LockGuard {
    fn token(&self) -> Option<HoldToken> {
        Some(HoldToken { var: "ASPEN_LOCK_TOKEN", field: "token", value: LockGuard::token(self) })
    }

    fn release(self) -> impl Future<Output = Result<(), CoordError>> {
        LockGuard::release(self)
    }
}

impl Hold for RwGuard {
    fn token(&self) -> Option<HoldToken> {
        Some(HoldToken { var: "ASPEN_LOCK_TOKEN", field: "token", value: RwGuard::token(self) })
    }

    fn release(self) -> impl Future<Output = Result<(), CoordError>> {
        RwGuard::release(self)
    }
}

impl Hold for Permit {
    /// Permits have no fencing token: several holders share the semaphore.
    fn token(&self) -> Option<HoldToken> {
        None
    }

    fn release(self) -> impl Future<Output = Result<(), CoordError>> {
        Permit::release(self)
    }
}

impl Hold for Leadership {
    fn token(&self) -> Option<HoldToken> {
        Some(HoldToken { var: "ASPEN_ELECTION_TERM", field: "term", value: self.term() })
    }

    fn release(self) -> impl Future<Output = Result<(), CoordError>> {
        self.resign()
    }
}

/// The command run under a hold failed; `aspen` exits with the command's status.
#[derive(Debug, thiserror::Error)]
#[error("the command exited with {0}")]
pub struct CommandFailed(pub ExitStatus);

impl CommandFailed {
    /// The status to exit with: the command's own exit code, or 128 + the signal that
    /// killed it (as a shell reports it); 1 when neither fits in an exit status.
    pub fn exit_code(&self) -> u8 {
        let code = match (self.0.code(), self.0.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 1,
        };
        u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1)
    }
}

/// Takes a hold with `acquire` in a new session of `ttl`, runs `command` under it (with no
/// command, prints the hold's token instead), then releases it. Fails with
/// [`CommandFailed`] when the command does. `kind` and `name` name the primitive in
/// messages (`lock deploy`).
pub async fn run_holding<H, Fut>(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    ttl: Duration,
    command: &[String],
    acquire: impl FnOnce(Session) -> Fut,
) -> anyhow::Result<()>
where
    H: Hold,
    Fut: Future<Output = Result<H, CoordError>>,
{
    let what = format!("{kind} {name}");
    ctx.with_client(async |client| {
        let session = Session::new(client, ttl).await.with_context(|| format!("cannot start a session for {what}"))?;
        let result = hold_and_run(ctx, &what, name, &session, command, acquire).await;
        // Revoking the lease also frees what an error or Ctrl-C left held or queued.
        let _ = session.close().await;
        result
    })
    .await
}

async fn hold_and_run<H, Fut>(
    ctx: &Ctx,
    what: &str,
    name: &str,
    session: &Session,
    command: &[String],
    acquire: impl FnOnce(Session) -> Fut,
) -> anyhow::Result<()>
where
    H: Hold,
    Fut: Future<Output = Result<H, CoordError>>,
{
    // Listening for Ctrl-C from here on also keeps it from killing this process while the
    // command runs, so the hold is released after the command (which gets it too) exits.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let hold = tokio::select! {
        Ok(()) = &mut interrupted => bail!("interrupted while waiting for {what}"),
        hold = acquire(session.clone()) => hold?,
    };
    let token = hold.token();
    let ran = match command.split_first() {
        None => print_token(ctx, name, token).map(|()| None),
        Some((program, args)) => run_command(program, args, token).await.map(Some),
    };
    let released = hold.release().await.with_context(|| format!("cannot release {what}"));
    let status = ran?;
    released?;
    match status {
        Some(status) if !status.success() => Err(CommandFailed(status).into()),
        _ => Ok(()),
    }
}

async fn run_command(program: &str, args: &[String], token: Option<HoldToken>) -> anyhow::Result<ExitStatus> {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    if let Some(token) = token {
        command.env(token.var, token.value.to_string());
    }
    command.status().await.with_context(|| format!("cannot run {program}"))
}

fn print_token(ctx: &Ctx, name: &str, token: Option<HoldToken>) -> anyhow::Result<()> {
    let Some(token) = token else {
        return Ok(());
    };
    if ctx.json {
        output::print_json(&json!({"name": name, token.field: token.value}))?;
    } else {
        output::print_line(&token.value.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_nonempty_key_segment() {
        assert_eq!(parse_name("deploy"), Ok("deploy".to_string()));
        assert_eq!(parse_name(""), Err("the name must not be empty".to_string()));
        assert_eq!(parse_name("a/b"), Err("the name \"a/b\" must not contain '/'".to_string()));
        let too_long = parse_name(&"x".repeat(aspen_coord::MAX_NAME_BYTES + 1)).unwrap_err();
        assert!(too_long.contains("over the limit"), "{too_long}");
    }

    #[test]
    fn a_failed_command_passes_its_status_on() {
        assert_eq!(CommandFailed(ExitStatus::from_raw(3 << 8)).exit_code(), 3);
        assert_eq!(CommandFailed(ExitStatus::from_raw(libc::SIGTERM)).exit_code(), 128 + 15);
    }
}
