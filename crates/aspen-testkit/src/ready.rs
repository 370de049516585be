//! Waiting for a freshly started node to announce readiness by writing `node.ticket`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::error::TestkitError;
use crate::logs;
use crate::process::NodeProcess;

/// How often the ticket file is checked.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// Log lines quoted when a node fails to come up.
pub(crate) const LOG_LINES_ON_FAILURE: usize = 40;

/// Outcome of waiting for one node.
pub(crate) enum Readiness {
    /// The ticket file exists.
    Ready,
    /// The process exited; it has been reaped.
    Exited(TestkitError),
}

/// Polls until `ticket` exists, the process exits, or `timeout` passes.
pub(crate) async fn wait_for_ticket(
    index: usize,
    process: &mut NodeProcess,
    ticket: &Path,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Readiness> {
    let started = Instant::now();
    loop {
        // The node renames the file into place, so existing means complete.
        match std::fs::metadata(ticket) {
            Ok(_) => return Ok(Readiness::Ready),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", ticket.display())),
        }
        if let Some(status) = process.try_exit()? {
            let log = logs::tail(log, LOG_LINES_ON_FAILURE);
            return Ok(Readiness::Exited(TestkitError::ExitedBeforeReady { index, status, log }));
        }
        let waited = started.elapsed();
        if waited >= timeout {
            let log = logs::tail(log, LOG_LINES_ON_FAILURE);
            return Err(TestkitError::NotReady { index, waited, log }.into());
        }
        tokio::time::sleep(POLL).await;
    }
}
