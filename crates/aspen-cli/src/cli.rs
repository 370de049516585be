//! The command line's shape: global flags and the command tree (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cmd::bench::BenchCommand;
use crate::cmd::cluster::ClusterCommand;
use crate::cmd::kv::KvCommand;
use crate::cmd::lease::LeaseCommand;
use crate::cmd::node::NodeCommand;
use crate::cmd::watch::WatchArgs;
use crate::duration::parse_duration;

/// Aspen: a distributed key-value store.
///
/// Commands that talk to a cluster find its ticket in, in order: --ticket, --ticket-file,
/// $ASPEN_TICKET, $ASPEN_TICKET_FILE, then ./.aspen/cluster/cluster.ticket (written by
/// `aspen cluster up`). The capability token comes from --token, --token-file, $ASPEN_TOKEN,
/// $ASPEN_TOKEN_FILE, or else from the ticket (`cluster up` puts the root token in its ticket).
#[derive(Debug, Parser)]
#[command(name = "aspen", version, propagate_version = true)]
pub struct Cli {
    /// Cluster ticket to connect with (also $ASPEN_TICKET).
    #[arg(long, global = true, help_heading = "Global options", value_name = "TICKET")]
    pub ticket: Option<String>,
    /// File holding the cluster ticket (also $ASPEN_TICKET_FILE).
    #[arg(long, global = true, help_heading = "Global options", value_name = "PATH")]
    pub ticket_file: Option<PathBuf>,
    /// A cluster saved with `aspen cluster save NAME` (its ticket file in the configuration
    /// directory), when no --ticket-file is given.
    #[arg(long, global = true, help_heading = "Global options", value_name = "NAME", env = "ASPEN_CLUSTER")]
    pub cluster: Option<String>,
    /// Capability token to present (also $ASPEN_TOKEN).
    #[arg(long, global = true, help_heading = "Global options", value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the capability token (also $ASPEN_TOKEN_FILE).
    #[arg(long, global = true, help_heading = "Global options", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// This client's key file (created, mode 0600, if missing): its public key is what a
    /// token made with `token create --audience` names (also $ASPEN_IDENTITY_FILE).
    #[arg(long, global = true, help_heading = "Global options", value_name = "PATH", env = "ASPEN_IDENTITY_FILE")]
    pub identity_file: Option<PathBuf>,
    /// Print machine-readable JSON. Keys and values are UTF-8 strings, or base64 in a
    /// `<field>_base64` field when they are not UTF-8.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Longest one request may take, retries and failover included (e.g. 10s, 500ms).
    #[arg(long, global = true, help_heading = "Global options", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read and write keys.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Grant, keep alive, revoke and list leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Print changes to keys under a prefix as they happen (PUT key=value rev=N / DELETE key rev=N).
    Watch(WatchArgs),
    /// Run a local cluster; show and change membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run one node in this process.
    Node(Box<NodeCommand>),
    /// Measure throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a command while holding a cluster-wide lock (fencing token in $ASPEN_LOCK_TOKEN).
    Lock(crate::cmd::lock::LockArgs),
    /// Run a command while holding a read or write lock (fencing token in $ASPEN_LOCK_TOKEN).
    #[command(subcommand)]
    Rwlock(crate::cmd::rwlock::RwLockCommand),
    /// Run a command while holding one of a semaphore's N permits.
    Semaphore(crate::cmd::semaphore::SemaphoreArgs),
    /// Run a command as an election's leader (term in $ASPEN_ELECTION_TERM); show the leader.
    #[command(subcommand)]
    Election(crate::cmd::election::ElectionCommand),
    /// Read and change shared counters.
    #[command(subcommand)]
    Counter(crate::cmd::counter::CounterCommand),
    /// Draw unique, increasing ids from a shared sequence.
    #[command(subcommand)]
    Sequence(crate::cmd::sequence::SequenceCommand),
    /// Hold, release and wait on barriers; run a command inside a double barrier of N.
    #[command(subcommand)]
    Barrier(crate::cmd::barrier::BarrierCommand),
    /// Register service instances while a command runs; list and watch them.
    #[command(subcommand)]
    Service(crate::cmd::service::ServiceCommand),
    /// Submit tasks to a pool; run workers that claim them; list workers and tasks.
    #[command(subcommand)]
    Worker(crate::cmd::worker::WorkerCommand),
    /// Work queues: push, pop with a visibility timeout, ack, nack, dead letters, redrive.
    #[command(subcommand)]
    Queue(crate::cmd::queue::QueueCommand),
    /// Take tokens from a token bucket the whole cluster shares.
    #[command(subcommand)]
    Ratelimit(crate::cmd::ratelimit::RatelimitCommand),
    /// Git repositories hosted on the cluster.
    #[command(subcommand)]
    Forge(crate::cmd::forge::ForgeCommand),
    /// CI: runs of repositories' Nickel pipelines, their jobs and logs; the worker.
    #[command(subcommand)]
    Ci(crate::cmd::ci::CiCommand),
    /// Nix binary caches: create, push, pull, pin, collect, serve over HTTP.
    #[command(subcommand)]
    Cache(crate::cmd::cache::CacheCommand),
    /// Add, read, check and list content-addressed blobs.
    #[command(subcommand)]
    Blob(crate::cmd::blob::BlobCommand),
    /// AspenFS: mount a KV prefix as a filesystem (FUSE).
    #[command(subcommand)]
    Fs(crate::cmd::fs::FsCommand),
    /// MicroVMs: run a command in one, build the guest image, check the host.
    #[command(subcommand)]
    Vm(crate::cmd::vm::VmCommand),
    /// Make, read and revoke capability tokens.
    #[command(subcommand)]
    Token(crate::cmd::token::TokenCommand),
    /// Your signing key, which signs your issues, patches and reviews.
    #[command(subcommand)]
    Identity(crate::cmd::collab::IdentityCommand),
    /// Issues of forge repositories (signed change DAGs).
    #[command(subcommand)]
    Issue(crate::cmd::collab::IssueCommand),
    /// Patches of forge repositories: proposed merges with revisions and reviews.
    #[command(subcommand)]
    Patch(crate::cmd::collab::PatchCommand),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cmd::kv::KvCommand;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(line.split_whitespace())
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_documented_shape_parses() {
        let shapes = [
            "aspen cluster up",
            "aspen token create --read app/ --write app/jobs/ --ttl 1h",
            "aspen token create --read app/ --audience 0000000000000000000000000000000000000000000000000000000000000000",
            "aspen token inspect",
            "aspen lock deploy -- echo hi",
            "aspen lock deploy --timeout 5s --ttl 10s",
            "aspen rwlock read table -- echo hi",
            "aspen rwlock write table --timeout 5s --ttl 10s -- echo hi",
            "aspen semaphore slots --permits 4 --timeout 1m --ttl 10s -- echo hi",
            "aspen election campaign primary node-a --ttl 10s -- echo hi",
            "aspen election campaign primary node-a --timeout 1m",
            "aspen election leader primary",
            "aspen election watch primary --json",
            "aspen counter get hits",
            "aspen counter add hits -3",
            "aspen counter cas hits 3 10",
            "aspen sequence next order-ids --count 100",
            "aspen token revoke 00",
            "aspen barrier hold release-gate",
            "aspen barrier release release-gate",
            "aspen barrier wait release-gate --timeout 1m",
            "aspen barrier enter phase --count 3 --ttl 10s -- echo hi",
            "aspen barrier enter phase --count 3",
            "aspen service register web --id web-1 --addr 10.0.0.1:80 --tag prod --tag eu --meta v=2 --ttl 10s -- sleep 1",
            "aspen service register web --id web-1 --addr 10.0.0.1:80",
            "aspen service list web --tag prod --json",
            "aspen service watch web",
            "aspen worker submit jobs t-0001 payload",
            "aspen worker submit jobs t-0001",
            "aspen worker run jobs --id w1 --capacity 4 --ttl 10s --max-tasks 10 -- sh -c cat",
            "aspen worker list jobs --json",
            "aspen cluster up --nodes 3 --data-dir .aspen/cluster --base-port 7701",
            "aspen kv put app/config hello",
            "aspen kv put app/config --file /tmp/v",
            "aspen kv put app/config -",
            "aspen kv put app/config",
            "aspen kv put --lease 7 k v",
            "aspen kv get app/config",
            "aspen kv get app/config --stale --json",
            "aspen kv scan app/ --limit 100 --from app/x --stale",
            "aspen kv delete KEY",
            "aspen kv delete --prefix P",
            "aspen kv cas app/config --expect hello world",
            "aspen kv cas app/config --expect-absent world",
            "aspen lease grant 10s",
            "aspen lease keepalive 5",
            "aspen lease keepalive 5 --every 2s",
            "aspen lease revoke 5",
            "aspen lease list",
            "aspen watch app/",
            "aspen watch app/ --from-revision 42",
            "aspen cluster status",
            "aspen cluster init",
            "aspen cluster init --member 2=aspenxyz --member 3=aspenabc",
            "aspen cluster add-learner 4 aspenxyz",
            "aspen cluster promote 4",
            "aspen cluster remove 4",
            "aspen cluster transfer-leader 2",
            "aspen cluster ticket",
            "aspen cluster snapshot",
            "aspen node --data-dir /tmp/n1 --bind 127.0.0.1:7701 --node-id 1",
            "aspen bench kv --clients 64 --seconds 10 --op put",
            "aspen bench kv --op get --value-size 256 --keyspace 100000 --start-cluster",
            "aspen --ticket aspenx --timeout 500ms kv get k",
        ];
        for shape in shapes {
            if let Err(e) = parse(shape) {
                panic!("{shape:?} does not parse: {e}");
            }
        }
    }

    #[test]
    fn txn_flags_repeat_and_keep_their_order() {
        let cli = Cli::try_parse_from([
            "aspen",
            "kv",
            "txn",
            "--if",
            "mod_rev(app/x) == 7",
            "--then",
            "put app/x 1",
            "--then",
            "del app/y",
            "--else",
            "get app/x",
        ])
        .unwrap();
        let Command::Kv(KvCommand::Txn { compares, then_ops, else_ops }) = cli.command else {
            panic!("not a txn");
        };
        assert_eq!(compares, vec!["mod_rev(app/x) == 7"]);
        assert_eq!(then_ops, vec!["put app/x 1", "del app/y"]);
        assert_eq!(else_ops, vec!["get app/x"]);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse("aspen kv get k --json --timeout 2s --ticket-file /t").unwrap();
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_secs(2));
        assert_eq!(cli.ticket_file, Some(PathBuf::from("/t")));
    }

    #[test]
    fn misuse_is_a_usage_error() {
        for bad in [
            "aspen kv frob",
            "aspen kv get",
            "aspen kv delete",
            "aspen kv delete k --prefix p",
            "aspen kv cas k new",
            "aspen kv cas k --expect a --expect-absent b",
            "aspen lease grant 10parsecs",
            "aspen bench kv --op scan",
            "aspen --timeout forever kv get k",
            "aspen lock a/b",
            "aspen barrier enter a/b --count 2",
            "aspen barrier enter phase --count 0",
            "aspen service register web --id a/b --addr x",
            "aspen service register web --id a --addr x --meta novalue",
            "aspen worker run jobs --id w1 --capacity 0 -- true",
            "aspen worker run jobs --id w1",
            "aspen worker submit jobs a/b x",
            "aspen semaphore slots --permits 0 -- true",
            "aspen semaphore slots --permits 2",
            "aspen counter add hits many",
            "aspen sequence next ids --count 0",
        ] {
            let err = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn help_renders_for_every_subcommand() {
        fn walk(cmd: &mut clap::Command, path: &mut Vec<String>) {
            let rendered = cmd.render_long_help().to_string();
            assert!(!rendered.is_empty(), "no help for {path:?}");
            for sub in cmd.get_subcommands_mut() {
                path.push(sub.get_name().to_string());
                walk(sub, path);
                path.pop();
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        walk(&mut cmd, &mut vec!["aspen".into()]);
    }
}
