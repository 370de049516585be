//! The `aspen` command line: key-value commands, leases, watches, cluster administration,
//! a local-cluster launcher, an in-process node and a benchmark.
//!
//! Everything that talks to a cluster goes through `aspen-client`; this crate only parses
//! arguments, resolves the ticket and prints results (text, or JSON with `--json`).

pub mod cli;
pub mod cmd;
pub mod context;
pub mod control;
pub mod duration;
pub mod local_cluster;
pub mod output;
pub mod txn_parse;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::cmd::cluster::ClusterCommand;
use crate::context::{AlreadyReported, Ctx, ExitWith};

/// Parses the command line, runs the command and turns failure into `error: ...` on stderr
/// and exit status 1 (clap's own usage errors exit with 2).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Node(_)));
    // A node picks its own runtime (`--worker-threads`); the other commands are clients.
    let runtime = match &cli.command {
        Command::Node(cmd) => cmd.args.runtime(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for tasks stuck on the network (a watch, a dead node).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<AlreadyReported>() => ExitCode::FAILURE,
        Err(e) if e.is::<ExitWith>() => e.downcast_ref::<ExitWith>().map_or(ExitCode::FAILURE, |c| ExitCode::from(c.0)),
        Err(e) => {
            eprintln!("error: {e:#}");
            // A command run under a hold (`aspen lock NAME -- CMD`) passes its status on.
            e.downcast_ref::<cmd::coord::CommandFailed>().map_or(ExitCode::FAILURE, |f| ExitCode::from(f.exit_code()))
        }
    }
}

/// Logs go to stderr; a node logs at `info`, the other commands only warnings and errors
/// (unless `RUST_LOG` says otherwise). A command's own transport noise is hidden: QUIC
/// path warnings, iroh's complaint when a close gives up on a dead node's handshake, and
/// fuser's second unmount attempt after the filesystem was unmounted from outside.
fn init_tracing(is_node: bool) {
    let default = if is_node {
        "info"
    } else {
        "warn,iroh=error,iroh::socket=off,noq=error,noq::connection=off,noq_proto=error,fuser::session=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    // Colours only on a terminal: a node's log usually goes to a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).try_init();
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ticket_file = match (cli.ticket_file, cli.cluster) {
        (Some(file), _) => Some(file),
        (None, Some(name)) => Some(aspen_client::discovery::saved_cluster_file(&name).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    let ctx = Ctx::new(cli.json, cli.timeout, cli.ticket, ticket_file)
        .with_token(cli.token, cli.token_file)
        .with_identity(cli.identity_file);
    match cli.command {
        Command::Node(cmd) => cmd::node::run(*cmd).await,
        Command::Cluster(ClusterCommand::Up(args)) => cmd::cluster::up(&ctx, args).await,
        Command::Cluster(ClusterCommand::Init { members }) => cmd::cluster::init(&ctx, members).await,
        Command::Cluster(ClusterCommand::Upgrade(args)) => cmd::upgrade::upgrade(&ctx, args).await,
        Command::Cluster(ClusterCommand::RestartNode { id, exe, data_dir }) => {
            cmd::upgrade::restart_node(&ctx, &data_dir, id, &exe).await
        }
        Command::Bench(cmd) => cmd::bench::run(&ctx, cmd).await,
        Command::Token(cmd) => cmd::token::run(&ctx, cmd).await,
        Command::Lock(args) => cmd::lock::run(&ctx, args).await,
        Command::Rwlock(cmd) => cmd::rwlock::run(&ctx, cmd).await,
        Command::Semaphore(args) => cmd::semaphore::run(&ctx, args).await,
        Command::Election(cmd) => cmd::election::run(&ctx, cmd).await,
        Command::Counter(cmd) => cmd::counter::run(&ctx, cmd).await,
        Command::Sequence(cmd) => cmd::sequence::run(&ctx, cmd).await,
        Command::Barrier(cmd) => cmd::barrier::run(&ctx, cmd).await,
        Command::Service(cmd) => cmd::service::run(&ctx, cmd).await,
        Command::Worker(cmd) => cmd::worker::run(&ctx, cmd).await,
        Command::Kv(cmd) => ctx.with_client(async |client| cmd::kv::run(&ctx, client, cmd).await).await,
        Command::Blob(cmd) => ctx.with_client(async |client| cmd::blob::run(&ctx, client, cmd).await).await,
        Command::Cache(cmd) => cmd::cache::run(&ctx, cmd).await,
        Command::Ci(cmd) => cmd::ci::run(&ctx, cmd).await,
        Command::Fs(cmd) => cmd::fs::run(&ctx, cmd).await,
        // Blocking: the runner spawns the hypervisor from the calling thread, which must live as
        // long as the VM (the hypervisor's parent-death signal follows that thread).
        Command::Vm(cmd) => tokio::task::block_in_place(|| cmd::vm::run(&ctx, cmd)),
        Command::Forge(cmd) => ctx.with_client(async |client| cmd::forge::run(&ctx, client, cmd).await).await,
        Command::Identity(cmd) => cmd::collab::run_identity(&ctx, cmd),
        Command::Issue(cmd) => ctx.with_client(async |client| cmd::collab::run_issue(&ctx, client, cmd).await).await,
        Command::Patch(cmd) => ctx.with_client(async |client| cmd::collab::run_patch(&ctx, client, cmd).await).await,
        Command::Queue(cmd) => ctx.with_client(async |client| cmd::queue::run(&ctx, client, cmd).await).await,
        Command::Ratelimit(cmd) => ctx.with_client(async |client| cmd::ratelimit::run(&ctx, client, cmd).await).await,
        Command::Lease(cmd) => ctx.with_client(async |client| cmd::lease::run(&ctx, client, cmd).await).await,
        Command::Watch(args) => ctx.with_client(async |client| cmd::watch::run(&ctx, client, args).await).await,
        Command::Cluster(cmd) => ctx.with_client(async |client| cmd::cluster::run(&ctx, client, cmd).await).await,
    }
}
