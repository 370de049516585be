//! Running the `ip` and `tc` tools: one place that turns a failed exit status into an error
//! carrying the full command line and its stderr.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs `program args...` to completion and returns its stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}` (is iproute2 installed?)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`run`], but only logs a failure: for best-effort cleanup.
pub(crate) fn run_quiet(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        tracing::debug!("ignored cleanup failure: {e:#}");
    }
}
