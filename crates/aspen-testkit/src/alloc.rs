//! Leasing a subnet index to one test network, safely across threads and processes, and
//! sweeping the namespaces and bridges that crashed test processes leaked.
//!
//! Protocol, all under an exclusive `flock` on `/run/aspen-testkit/lock`:
//! * a lease is the state file `net-<k>` holding the owner's `pid starttime` (the start time
//!   guards against pid reuse); it is written before any resource of subnet `k` is created and
//!   removed only after all of them are deleted;
//! * hence resources of subnet `k` whose state file is missing, or names a process that no longer
//!   exists, are leftovers: the sweep kills the processes still inside those namespaces and
//!   deletes namespaces, veths, bridge and state file. Resources of live owners are never touched.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cmd;
use crate::names::{self, BRIDGE_PREFIX, NETNS_PREFIX, SUBNETS, VETH_PREFIX};

const STATE_DIR: &str = "/run/aspen-testkit";
const NETNS_DIR: &str = "/run/netns";
const SYS_NET_DIR: &str = "/sys/class/net";

/// A held lock on the allocation state; released on drop.
pub(crate) struct Locked {
    dir: PathBuf,
    _file: File,
}

/// Takes the allocation lock, blocking until other holders release it.
pub(crate) fn lock() -> anyhow::Result<Locked> {
    let dir = PathBuf::from(STATE_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    loop {
        // SAFETY: flock on a descriptor we own; the lock dies with the descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    Ok(Locked { dir, _file: file })
}

/// What exists for one subnet index.
#[derive(Debug, Default)]
struct Resources {
    namespaces: Vec<String>,
    links: Vec<String>,
    owner: Option<String>,
}

/// The lease file of subnet `k`.
pub(crate) fn state_file(k: u16) -> PathBuf {
    Path::new(STATE_DIR).join(format!("net-{k}"))
}

impl Locked {
    /// Deletes every resource whose owner is gone. Failures are logged, not returned: a sweep
    /// must never stop a test from getting its own network.
    pub(crate) fn sweep_stale(&self) {
        for (k, res) in self.inventory() {
            if res.owner.as_deref().is_some_and(owner_alive) {
                continue;
            }
            tracing::info!(subnet = k, ?res, "sweeping leftover aspen-testkit network");
            for ns in &res.namespaces {
                kill_processes_in(ns);
                cmd::run_quiet("ip", &["netns", "del", ns]);
            }
            for link in &res.links {
                if Path::new(SYS_NET_DIR).join(link).exists() {
                    cmd::run_quiet("ip", &["link", "del", link]);
                }
            }
            if res.owner.is_some() {
                remove_file_quiet(&state_file(k));
            }
        }
    }

    /// Leases the lowest free subnet index to this process.
    pub(crate) fn claim(&self) -> anyhow::Result<u16> {
        let taken = self.inventory();
        let in_use = local_ipv4_addrs()?;
        for k in 0..SUBNETS {
            if taken.contains_key(&k) || in_use.iter().any(|a| names::in_subnet(k, *a)) {
                continue;
            }
            let path = state_file(k);
            let tmp = self.dir.join(format!(".net-{k}.tmp"));
            fs::write(&tmp, format!("{}\n", own_identity()?))
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            fs::rename(&tmp, &path).with_context(|| format!("cannot create {}", path.display()))?;
            return Ok(k);
        }
        bail!("all {SUBNETS} test subnets of 198.18.0.0/15 are in use")
    }

    /// Ends the lease of `k`; call after its resources are gone.
    pub(crate) fn release(&self, k: u16) {
        remove_file_quiet(&state_file(k));
    }

    fn inventory(&self) -> BTreeMap<u16, Resources> {
        let mut map: BTreeMap<u16, Resources> = BTreeMap::new();
        for name in dir_names(Path::new(NETNS_DIR)) {
            if let Some(k) = names::parse_index(&name, NETNS_PREFIX) {
                map.entry(k).or_default().namespaces.push(name);
            }
        }
        for name in dir_names(Path::new(SYS_NET_DIR)) {
            let k = names::parse_index(&name, VETH_PREFIX).or_else(|| names::parse_index(&name, BRIDGE_PREFIX));
            if let Some(k) = k {
                map.entry(k).or_default().links.push(name);
            }
        }
        for name in dir_names(&self.dir) {
            let Some(k) = name.strip_prefix("net-").and_then(|d| d.parse::<u16>().ok()) else {
                continue;
            };
            let content = fs::read_to_string(self.dir.join(&name)).unwrap_or_default();
            map.entry(k).or_default().owner = Some(content);
        }
        // Veths before bridges, so deleting a bridge never races its ports.
        for res in map.values_mut() {
            res.links.sort_by_key(|l| l.starts_with(BRIDGE_PREFIX));
        }
        map
    }
}

/// `pid starttime` of this process.
fn own_identity() -> anyhow::Result<String> {
    let pid = std::process::id();
    let start = start_time(pid).context("cannot read own start time from /proc/self/stat")?;
    Ok(format!("{pid} {start}"))
}

/// Whether the process recorded as `pid starttime` still exists.
fn owner_alive(identity: &str) -> bool {
    let mut parts = identity.split_whitespace();
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is parenthesised and may contain spaces.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn kill_processes_in(ns: &str) {
    let Ok(out) = cmd::run("ip", &["netns", "pids", ns]) else {
        return;
    };
    for pid in out.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
        tracing::info!(pid, ns, "killing leftover process in stale namespace");
        // SAFETY: sending a signal has no memory-safety implications.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn local_ipv4_addrs() -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
    let out = cmd::run("ip", &["-4", "-o", "addr", "show"])?;
    Ok(out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet")
        .filter_map(|w| w[1].split('/').next()?.parse().ok())
        .collect())
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
}

fn remove_file_quiet(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_fake_one_is_not() {
        let me = own_identity().expect("identity");
        assert!(owner_alive(&me));
        let pid = std::process::id();
        assert!(!owner_alive(&format!("{pid} 1")), "start time mismatch means pid reuse");
        assert!(!owner_alive("garbage"));
        assert!(!owner_alive(""));
    }
}
