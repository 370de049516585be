#![recursion_limit = "256"]
//! CI on an Aspen cluster: an app on the node's seam (`aspen_app::App`), its client, and the
//! worker that runs jobs.
//!
//! - Pipelines: `.aspen/ci.ncl` in the repository, Nickel checked against Aspen's contract
//!   (`aspen-ci-pipeline`).
//! - Protocol: [`protocol::CI_ALPN`] (`aspen/ci/1`); rights `ci:read|run|admin:SCOPE` by
//!   repository name prefix ([`rights`]).
//! - Records: runs, jobs, logs and reuse records under `_aspen/ci/` ([`records`]); jobs wait
//!   as tasks in the coordination work pool `ci`.
//! - Node side ([`service`]): a push to an enabled repository starts one run (one per push,
//!   across leader changes and restarts); jobs are queued as the plan ([`plan`]) allows.
//! - Worker ([`worker`]): claims tasks it can run (executor, resources), evaluates
//!   pipelines, checks the commit out through the forge, runs the job with its executor
//!   ([`executor`]: shell, nix, vm), streams its log, and records exactly one result per job
//!   with writes fenced by its claim.
//!
//! See docs/ci.md.

pub mod client;
pub mod executor;
pub mod mask;
pub mod plan;
pub mod protocol;
pub mod records;
pub mod rights;
mod server;
pub mod service;
pub mod worker;

use std::sync::Arc;

use aspen_app::{App, AppHandler, AppInfo, BoxFuture, NodeContext};
use aspen_core::AspenError;
use aspen_core::capability::Capability;
pub use client::CiClient;
pub use protocol::CI_ALPN;

/// The CI app's settings as node flags, each with an environment-variable twin.
#[derive(Debug, Clone, clap::Args)]
pub struct CiArgs {
    /// Do not start runs from pushes or advance runs on this node (it still answers the CI
    /// protocol). Runs advance as long as one node does it.
    #[arg(long, env = "ASPEN_CI_NO_SCHEDULER")]
    pub ci_no_scheduler: bool,
    /// Finished runs kept per repository (with their jobs, logs and artifacts); older ones
    /// are deleted, except those a kept run reuses. 0 keeps every run.
    #[arg(long, env = "ASPEN_CI_KEEP_RUNS", default_value_t = 500)]
    pub ci_keep_runs: u32,
    /// Seconds between prunings of old runs (on scheduling nodes).
    #[arg(long, env = "ASPEN_CI_PRUNE_INTERVAL_SECS", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ci_prune_interval_secs: u64,
}

impl CiArgs {
    pub fn settings(&self) -> CiSettings {
        CiSettings {
            scheduler: !self.ci_no_scheduler,
            keep_runs: self.ci_keep_runs,
            prune_interval: std::time::Duration::from_secs(self.ci_prune_interval_secs),
        }
    }
}

/// CI's settings on a node.
#[derive(Debug, Clone)]
pub struct CiSettings {
    pub scheduler: bool,
    pub keep_runs: u32,
    pub prune_interval: std::time::Duration,
}

impl Default for CiSettings {
    fn default() -> Self {
        CiSettings { scheduler: true, keep_runs: 500, prune_interval: std::time::Duration::from_secs(3_600) }
    }
}

/// The CI app, ready to be started on a node.
#[derive(Debug, Clone, Default)]
pub struct CiApp {
    settings: CiSettings,
}

impl CiApp {
    pub fn new(settings: CiSettings) -> Self {
        CiApp { settings }
    }
}

impl App for CiApp {
    fn info(&self) -> AppInfo {
        AppInfo {
            name: rights::APP.into(),
            alpn: CI_ALPN.to_vec(),
            rights: vec![rights::READ.into(), rights::RUN.into(), rights::ADMIN.into(), rights::SECRETS.into()],
        }
    }

    /// The forge's repositories, refs, push and patch revision events (read, watch), its
    /// commit statuses (write: CI reports each run on its commit), the work pool's tasks
    /// (what the scheduler submits and withdraws), and the blob pins of CI's logs and
    /// artifacts (what pruning removes).
    fn kv_rights(&self) -> Vec<Capability> {
        let forge = aspen_forge::records::FORGE_PREFIX.as_bytes().to_vec();
        let pool = format!("_aspen/coord/work/{}/", records::POOL).into_bytes();
        let mut rights = vec![
            Capability::Read(forge.clone()),
            Capability::Watch(forge),
            Capability::Write(aspen_forge::status::STATUS_PREFIX.as_bytes().to_vec()),
            Capability::Read(pool.clone()),
            Capability::Write(pool.clone()),
            Capability::Delete(pool.clone()),
            Capability::Watch(pool),
        ];
        // Pruning unpins old runs' logs and artifacts.
        rights.extend(aspen_blob::records::pin_rights(records::PIN_SCOPE));
        rights
    }

    fn start(&self, node: NodeContext) -> BoxFuture<'static, Result<Arc<dyn AppHandler>, AspenError>> {
        let settings = self.settings.clone();
        Box::pin(async move {
            let service = Arc::new(service::CiService::new(node.kv.clone())?);
            let stop = tokio_util::sync::CancellationToken::new();
            if settings.scheduler {
                tokio::spawn(service.clone().follow_pushes(stop.clone()));
                tokio::spawn(service.clone().follow_patches(stop.clone()));
                if settings.keep_runs > 0 {
                    let (every, keep) = (settings.prune_interval, settings.keep_runs as usize);
                    tokio::spawn(service.clone().prune_every(every, keep, stop.clone()));
                }
                tokio::spawn(service.clone().follow_jobs(stop.clone()));
            }
            let blobs = node.services.get::<aspen_blob::LocalBlobs>(aspen_blob::LocalBlobs::SERVICE);
            let handler =
                server::CiHandler { service, kv: node.kv.clone(), blobs, secrets: node.secrets.clone(), stop };
            Ok(Arc::new(handler) as Arc<dyn AppHandler>)
        })
    }
}
