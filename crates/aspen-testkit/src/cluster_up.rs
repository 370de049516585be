//! `aspen cluster up` run as users run it: one supervisor process owning its node
//! processes, in a directory of its own. Stopped (SIGINT, as Ctrl-C) on drop; the nodes die
//! with it in any case, since the supervisor asks the kernel to signal them if it dies.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::harness::aspen_bin;

/// Longest wait for `cluster up` to write the cluster ticket.
pub const UP_LIMIT: Duration = Duration::from_secs(120);
/// Longest wait for `cluster up` to stop its nodes and exit.
const STOP_LIMIT: Duration = Duration::from_secs(40);

/// A running `aspen cluster up`.
#[derive(Debug)]
pub struct ClusterUp {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    base: u16,
}

/// `count` consecutive ports on 127.0.0.1, each free over UDP (a node's endpoint) and TCP
/// (its cache gateway) a moment ago.
pub fn free_base_port(count: u16) -> anyhow::Result<u16> {
    Ok(aspen_net::ports::free_base_port(count)?)
}

impl ClusterUp {
    /// Starts `aspen cluster up --data-dir DIR --nodes N` on free ports and waits for the
    /// cluster ticket. Its output goes to `DIR.up.log`. DIR may hold an earlier cluster.
    pub fn start(dir: &Path, nodes: u16) -> anyhow::Result<ClusterUp> {
        // Another process may take the ports between the check and the bind: try others.
        let mut attempt = 1;
        loop {
            match Self::start_at(dir, nodes, free_base_port(nodes)?) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("cannot bind") => {
                    eprintln!("cluster up could not bind its ports; trying others");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Starts `cluster up` with node 1 on port `base`: a cluster restarted on its data must
    /// come back on the ports its members know it by.
    pub fn start_at(dir: &Path, nodes: u16, base: u16) -> anyhow::Result<ClusterUp> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let _ = std::fs::remove_file(dir.join("cluster.ticket"));
        let log = dir.with_extension("up.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(aspen_bin())
            .args(["cluster", "up", "--nodes", &nodes.to_string(), "--base-port", &base.to_string(), "--data-dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("cannot start aspen cluster up")?;
        let mut up = ClusterUp { child, dir: dir.to_path_buf(), log, base };
        let deadline = Instant::now() + UP_LIMIT;
        while !up.ticket_file().is_file() {
            if let Some(status) = up.child.try_wait()? {
                bail!("cluster up exited ({status}):\n{}", up.output());
            }
            if Instant::now() >= deadline {
                bail!("cluster up wrote no ticket within {UP_LIMIT:?}:\n{}", up.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(up)
    }

    /// Node 1's port; node i has BASE+i-1.
    pub fn base_port(&self) -> u16 {
        self.base
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ticket_file(&self) -> PathBuf {
        self.dir.join("cluster.ticket")
    }

    /// What `cluster up` printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the cluster as Ctrl-C would; returns how `cluster up` exited.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self.child.wait()?;
                bail!("cluster up did not stop within {STOP_LIMIT:?}; killed ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ClusterUp {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
    }
}
