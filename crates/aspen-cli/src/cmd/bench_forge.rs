//! `aspen bench forge`: the real `git` client against the forge, beside `git daemon` serving
//! the same repository on loopback in the same run.
//!
//! Timed, for each server: a full push of every branch and tag into an empty repository; a
//! full clone and a `--depth 1` clone (both `--no-checkout`, as the anchor's harness does,
//! so the time is transfer and indexing); then one new commit pushed, and fetched into the
//! existing full clone. Each figure is the median of `--rounds` runs. With
//! `--start-cluster` it also reads each node's peak resident memory (`VmHWM`) after the run.
//!
//! The repository is `--repo PATH` (for the anchor, the one
//! `anchors/git/make-repo.sh` generates: 5,000 commits, 112,731 objects), or one generated
//! here deterministically with `git fast-import` (`--commits`, `--files`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::{Client, ClusterTicket};
use aspen_forge::ForgeClient;
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

use crate::context::Ctx;
use crate::output;

/// How long `git daemon` may take to answer its first `ls-remote`.
const DAEMON_START: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct BenchForgeArgs {
    /// The repository to push (bare or not); without it one is generated.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Commits of the generated repository.
    #[arg(long, default_value_t = 1_000)]
    pub commits: usize,
    /// Files the generated repository's commits touch, in all.
    #[arg(long, default_value_t = 4_000)]
    pub files: usize,
    /// Runs of each measurement; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Start a 3-node cluster in a temporary directory for the run, and stop it after.
    #[arg(long)]
    pub start_cluster: bool,
}

/// One measurement on both servers.
struct Row {
    what: &'static str,
    aspen: f64,
    daemon: f64,
}

pub(crate) async fn git(dir: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.org")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.org")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.with_context(|| format!("cannot run git {args:?}"))?;
    if !out.status.success() {
        bail!("git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn timed(dir: &Path, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<f64> {
    let start = Instant::now();
    git(dir, args, env).await?;
    Ok(start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A deterministic repository: `commits` commits on `main` touching `files` files (some
/// binary, some renamed), a topic branch merged back every 200 commits and a tag every 250.
pub fn generate_repository(dir: &Path, commits: usize, files: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let status = std::process::Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(dir).status()?;
    if !status.success() {
        bail!("git init failed");
    }
    let mut child = std::process::Command::new("git")
        .args(["fast-import", "--quiet", "--done"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run git fast-import")?;
    let mut input = std::io::BufWriter::new(child.stdin.take().context("fast-import stdin")?);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let files = files.max(1) as u64;
    let mut mark = 0u64;
    // Paths on main, so a rename names one that exists.
    let mut on_main: Vec<String> = Vec::new();
    let (mut main_mark, mut topic_mark) = (0u64, 0u64);
    for c in 0..commits {
        let branch = if c % 200 >= 190 { "topic" } else { "main" };
        mark += 1;
        writeln!(input, "commit refs/heads/{branch}\nmark :{mark}")?;
        writeln!(input, "committer Bench <bench@example.org> {} +0000", 1_600_000_000 + c as u64 * 600)?;
        let message = format!("change {c}\n");
        write!(input, "data {}\n{message}", message.len())?;
        if c % 200 == 190 && main_mark > 0 {
            writeln!(input, "from :{main_mark}")?;
        }
        if branch == "main" && c % 200 == 0 && topic_mark > 0 {
            writeln!(input, "merge :{topic_mark}")?;
        }
        for _ in 0..4 {
            let n = next() % files;
            let path = format!("d{}/e{}/file{n}.{}", n % 23, n % 7, if n.is_multiple_of(60) { "bin" } else { "txt" });
            let body: Vec<u8> = if n.is_multiple_of(60) {
                (0..8_192).map(|_| next() as u8).collect()
            } else {
                (0..30).flat_map(|i| format!("{i}: {:016x} {n}\n", next() % 1_000_000).into_bytes()).collect()
            };
            if branch == "main" && !on_main.contains(&path) && !path.ends_with(".bin") {
                on_main.push(path.clone());
            }
            writeln!(input, "M 100644 inline {path}\ndata {}", body.len())?;
            input.write_all(&body)?;
            writeln!(input)?;
        }
        if branch == "main" && c % 25 == 24 && !on_main.is_empty() {
            let i = (next() % on_main.len() as u64) as usize;
            let from = on_main[i].clone();
            let to = format!("{}-renamed-{c}.txt", from.trim_end_matches(".txt"));
            writeln!(input, "R {from} {to}")?;
            on_main[i] = to;
        }
        writeln!(input)?;
        if branch == "main" {
            main_mark = mark;
        } else {
            topic_mark = mark;
        }
        if branch == "main" && c % 250 == 249 {
            writeln!(input, "reset refs/tags/v{}\nfrom :{mark}\n", c / 250)?;
        }
    }
    writeln!(input, "done")?;
    input.flush()?;
    drop(input);
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    let status = std::process::Command::new("git").args(["repack", "-q", "-a", "-d"]).current_dir(dir).status()?;
    if !status.success() {
        bail!("git repack failed");
    }
    Ok(())
}

/// `git daemon` on a free loopback port, exporting `base`, receive-pack enabled.
struct Daemon {
    /// Killed when dropped (`kill_on_drop`).
    _child: tokio::process::Child,
    port: u16,
}

impl Daemon {
    async fn start(base: &Path) -> anyhow::Result<Daemon> {
        let port = crate::local_cluster::free_ports(1)?[0];
        let child = Command::new("git")
            .args(["daemon", "--reuseaddr", "--listen=127.0.0.1", "--export-all", "--enable=receive-pack"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run git daemon")?;
        let daemon = Daemon { _child: child, port };
        let deadline = Instant::now() + DAEMON_START;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!("git daemon did not start listening on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

/// Peak resident memory of each of `pids`, in MiB, from `/proc/<pid>/status`.
fn peak_rss_mib(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .collect()
}

/// Objects and packed bytes of a repository.
fn describe(repo: &Path) -> String {
    let out = std::process::Command::new("git").args(["count-objects", "-v"]).current_dir(repo).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_else(|| "?".into())
    };
    format!("{} objects, {} KiB packed", field("in-pack:"), field("size-pack:"))
}

pub async fn run(ctx: &Ctx, args: &BenchForgeArgs, ticket: ClusterTicket, node_pids: Vec<u32>) -> anyhow::Result<()> {
    if args.rounds == 0 || args.rounds > 20 {
        bail!("--rounds must be between 1 and 20");
    }
    let scratch = tempfile::Builder::new().prefix("aspen-bench-forge-").tempdir().context("scratch directory")?;
    let scratch = scratch.path();
    let source = match &args.repo {
        Some(repo) => repo.canonicalize().with_context(|| format!("no repository at {}", repo.display()))?,
        None => {
            let dir = scratch.join("source.git");
            let progress = crate::cmd::cluster::spinner("generating the repository");
            generate_repository(&dir, args.commits, args.files)?;
            progress.finish_and_clear();
            dir
        }
    };
    let helper_dir = std::env::current_exe()?.parent().context("the executable's directory")?.to_path_buf();
    if !helper_dir.join("git-remote-aspen").is_file() {
        bail!(
            "git-remote-aspen is not beside {}: build it (cargo build -p aspen-cli)",
            std::env::current_exe()?.display()
        );
    }
    let path = format!("{}:{}", helper_dir.display(), std::env::var("PATH").unwrap_or_default());
    let token = ctx.token_for(&ticket)?;
    let mut aspen_ticket = ticket.clone();
    aspen_ticket.token = token.as_ref().map(|t| t.to_bytes());
    let env = vec![("PATH", path), ("ASPEN_TICKET", aspen_ticket.encode())];

    let client = Client::over_nodes_as(ticket.nodes.clone(), ctx.client_config(), token, ctx.identity()?).await?;
    let forge = ForgeClient::new(&client);
    let served = scratch.join("daemon");
    std::fs::create_dir_all(&served)?;
    let daemon = Daemon::start(&served).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let refspecs = ["refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"];

    let mut rows: Vec<Row> = Vec::new();
    let mut push_a = Vec::new();
    let mut push_d = Vec::new();
    let mut clone_a = Vec::new();
    let mut clone_d = Vec::new();
    let mut shallow_a = Vec::new();
    let mut shallow_d = Vec::new();
    let mut inc_push_a = Vec::new();
    let mut inc_push_d = Vec::new();
    let mut fetch_a = Vec::new();
    let mut fetch_d = Vec::new();
    let progress = crate::cmd::cluster::spinner("timing pushes, clones and fetches");
    for round in 0..args.rounds {
        let name = format!("bench-{run_id}-{round}");
        forge.create_repo(&format!("bench/{name}"), "aspen bench forge", "main").await?;
        git(scratch, &["init", "-q", "--bare", "-b", "main", &format!("daemon/{name}.git")], &env).await?;
        let aspen_url = format!("aspen://default/bench/{name}");
        let daemon_url = daemon.url(&format!("{name}.git"));

        let (pa, pd) = (
            ["push", "-q", aspen_url.as_str(), refspecs[0], refspecs[1]],
            ["push", "-q", daemon_url.as_str(), refspecs[0], refspecs[1]],
        );
        push_d.push(timed(&source, &pd, &env).await?);
        push_a.push(timed(&source, &pa, &env).await?);

        let (ca, cd) = (format!("clone-a-{round}"), format!("clone-d-{round}"));
        clone_d.push(timed(scratch, &["clone", "-q", "--no-checkout", &daemon_url, &cd], &env).await?);
        clone_a.push(timed(scratch, &["clone", "-q", "--no-checkout", &aspen_url, &ca], &env).await?);
        let (sa, sd) = (format!("shallow-a-{round}"), format!("shallow-d-{round}"));
        shallow_d
            .push(timed(scratch, &["clone", "-q", "--no-checkout", "--depth", "1", &daemon_url, &sd], &env).await?);
        shallow_a.push(timed(scratch, &["clone", "-q", "--no-checkout", "--depth", "1", &aspen_url, &sa], &env).await?);

        // One new commit, pushed from a work tree, fetched into the full clones.
        let work = scratch.join(format!("work-{round}"));
        git(scratch, &["clone", "-q", "--depth", "2", &daemon_url, &work.display().to_string()], &env).await?;
        std::fs::write(work.join(format!("bench-change-{round}.txt")), format!("round {round}\n"))?;
        git(&work, &["add", "-A"], &env).await?;
        git(&work, &["commit", "-qm", "one more commit"], &env).await?;
        inc_push_d.push(timed(&work, &["push", "-q", &daemon_url, "HEAD:refs/heads/main"], &env).await?);
        inc_push_a.push(timed(&work, &["push", "-q", &aspen_url, "HEAD:refs/heads/main"], &env).await?);
        fetch_d.push(timed(&scratch.join(&cd), &["fetch", "-q", "origin"], &env).await?);
        fetch_a.push(timed(&scratch.join(&ca), &["fetch", "-q", "origin"], &env).await?);
        for dir in [ca, cd, sa, sd] {
            let _ = std::fs::remove_dir_all(scratch.join(dir));
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    progress.finish_and_clear();
    for (what, a, d) in [
        ("full push", push_a, push_d),
        ("full clone", clone_a, clone_d),
        ("clone --depth 1", shallow_a, shallow_d),
        ("push 1 commit", inc_push_a, inc_push_d),
        ("fetch 1 commit", fetch_a, fetch_d),
    ] {
        rows.push(Row { what, aspen: median(a), daemon: median(d) });
    }
    let memory = peak_rss_mib(&node_pids);
    drop(daemon);
    client.close().await;

    let repo_text = describe(&source);
    if ctx.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| json!({"what": r.what, "aspen_s": r.aspen, "git_daemon_s": r.daemon, "ratio": r.aspen / r.daemon}))
            .collect();
        output::print_json(&json!({
            "repository": repo_text,
            "rounds": args.rounds,
            "figures": rows,
            "node_peak_rss_mib": memory,
        }))?;
        return Ok(());
    }
    let mut text =
        format!("forge benchmark: {repo_text}; median of {} rounds; git {}\n", args.rounds, git_version().await);
    text.push_str(&format!("{:<18} {:>10} {:>12} {:>8}\n", "", "aspen", "git daemon", "ratio"));
    for r in &rows {
        text.push_str(&format!(
            "{:<18} {:>8.2} s {:>10.2} s {:>7.2}x\n",
            r.what,
            r.aspen,
            r.daemon,
            r.aspen / r.daemon
        ));
    }
    if !memory.is_empty() {
        let nodes: Vec<String> = memory
            .iter()
            .enumerate()
            .map(|(i, m)| m.map_or(format!("n{} ?", i + 1), |m| format!("n{} {m:.0} MiB", i + 1)))
            .collect();
        text.push_str(&format!("node peak RSS: {}\n", nodes.join(", ")));
    }
    print!("{text}");
    Ok(())
}

async fn git_version() -> String {
    match Command::new("git").arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("git version ").to_string(),
        Err(_) => "?".into(),
    }
}
