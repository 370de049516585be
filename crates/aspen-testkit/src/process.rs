//! One running node process: signals to its process group, reaping, and state queries.
//!
//! The node is spawned as the leader of a new process group, so signals reach any helper it
//! forks too. The child is reaped only through [`NodeProcess`], so its pid (and group id) cannot
//! be reused while we still hold it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long `pause`/`resume` wait for the kernel to act on the signal.
const STATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `terminate` checks whether the process has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A spawned node process that has not been reaped yet.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    child: Child,
}

impl NodeProcess {
    /// Spawns `cmd` as leader of a new process group.
    pub(crate) fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("cannot spawn {:?}", cmd.get_program()))?;
        Ok(Self { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the node's process group.
    pub(crate) fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pgid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: signalling a process group we created and have not reaped.
        if unsafe { libc::kill(-pgid, signal) } != 0 {
            let err = io::Error::last_os_error();
            // ESRCH: everything in the group already exited (leader is a zombie).
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err).with_context(|| format!("cannot send signal {signal} to process group {pgid}"));
            }
        }
        Ok(())
    }

    /// SIGSTOP, returning once the kernel reports the process stopped.
    pub(crate) fn pause(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)?;
        self.await_state(|s| s == 'T', "stopped")
    }

    /// SIGCONT, returning once the process is no longer stopped.
    pub(crate) fn resume(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)?;
        self.await_state(|s| s != 'T', "continued")
    }

    /// Signal delivery is asynchronous: poll `/proc` until `want` holds for the state letter.
    fn await_state(&self, want: impl Fn(char) -> bool, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            match process_state(self.pid()) {
                Some(s) if want(s) => return Ok(()),
                Some('Z') | None => bail!("process {} exited instead of being {what}", self.pid()),
                Some(s) if Instant::now() >= deadline => {
                    bail!("process {} not {what} after {STATE_TIMEOUT:?} (state {s})", self.pid())
                }
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Exit status if the process has exited (reaping it), `None` while it runs.
    pub(crate) fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("cannot poll process {}", self.pid()))
    }

    /// SIGKILLs the process group (continuing it first, in case it is stopped) and reaps it.
    pub(crate) fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGCONT)?;
        self.signal(libc::SIGKILL)?;
        self.child.wait().with_context(|| format!("cannot reap process {}", self.pid()))
    }

    /// SIGTERM (plus SIGCONT so a stopped process can handle it); SIGKILL after `grace`.
    pub(crate) async fn terminate(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.signal(libc::SIGCONT)?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        tracing::warn!(pid = self.pid(), "node ignored SIGTERM for {grace:?}; sending SIGKILL");
        self.kill()
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...), if the process exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}
