//! `aspen bench fs`: the FUSE anchor's workloads (`../shared/anchors/fuse`) on a plain
//! directory, on a `bindfs` passthrough mount of another directory, and on an AspenFS mount
//! of a fresh prefix, in one run, with each one's ratio to the plain directory and
//! AspenFS's to bindfs.
//!
//! Per target: sequential write of SIZE MiB in 1 MiB writes then fsync; drop the page
//! cache; sequential read in 1 MiB reads; FILES files of 64 bytes in one directory: create
//! (O_CREAT|O_EXCL, write, close), stat, unlink; then `git clone file://…` of a generated
//! repository into the target.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aspen_blob::BlobClient;
use aspen_client::{Client, ClusterTicket};
use aspen_fs::{BlobChunks, ChunkStore, MountOptions, mount};
use aspen_kv::{KvExt, SharedKv};
use serde_json::json;

use crate::cmd::cluster::spinner;
use crate::context::Ctx;

#[derive(Debug, clap::Args)]
pub struct BenchFsArgs {
    /// Size of the file written and read, in MiB.
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Small files created, stat'ed and unlinked.
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Commits of the generated repository cloned into each target (each changes 20 of its
    /// files; the repository has 10 files per commit, so 100 commits make 1,000 files).
    #[arg(long, default_value_t = 100)]
    pub commits: usize,
    /// Start a 3-node cluster in a temporary directory for the run, and stop it after.
    #[arg(long)]
    pub start_cluster: bool,
}

#[derive(Debug, Clone, Default)]
struct Figures {
    write_mb_s: f64,
    read_mb_s: f64,
    create_per_s: f64,
    stat_per_s: f64,
    unlink_per_s: f64,
    clone_s: f64,
}

impl Figures {
    fn rows(&self) -> [(&'static str, f64); 6] {
        [
            ("write_MB_s", self.write_mb_s),
            ("read_MB_s", self.read_mb_s),
            ("create_per_s", self.create_per_s),
            ("stat_per_s", self.stat_per_s),
            ("unlink_per_s", self.unlink_per_s),
            ("git_clone_s", self.clone_s),
        ]
    }
}

fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// The anchor's workloads on `dir`.
fn workload(dir: &Path, size_mib: u64, files: usize, repo: &Path) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    let big = dir.join("big");
    let mut block = vec![0u8; 1024 * 1024];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for b in block.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    let bytes = size_mib * 1024 * 1024;
    let t = Instant::now();
    let mut f = std::fs::File::create(&big).with_context(|| format!("creating {}", big.display()))?;
    for i in 0..size_mib {
        // Every block differs, so no store can keep one block for all.
        block[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block).context("writing the big file")?;
    }
    f.sync_all().context("fsync of the big file")?;
    drop(f);
    figures.write_mb_s = bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop_caches();
    let t = Instant::now();
    let mut f = std::fs::File::open(&big)?;
    let mut read = 0u64;
    loop {
        let n = f.read(&mut block)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    figures.read_mb_s = read as f64 / t.elapsed().as_secs_f64() / 1e6;
    if read != bytes {
        bail!("read {read} bytes of {bytes} back from {}", big.display());
    }
    std::fs::remove_file(&big)?;

    let small = dir.join("small");
    std::fs::create_dir(&small)?;
    let names: Vec<PathBuf> = (0..files).map(|i| small.join(format!("f{i:05}"))).collect();
    let t = Instant::now();
    for p in &names {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(p)?;
        f.write_all(&[b'x'; 64])?;
    }
    figures.create_per_s = files as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &names {
        std::fs::metadata(p)?;
    }
    figures.stat_per_s = files as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &names {
        std::fs::remove_file(p)?;
    }
    figures.unlink_per_s = files as f64 / t.elapsed().as_secs_f64();
    std::fs::remove_dir(&small)?;

    let clone = dir.join("clone");
    let t = Instant::now();
    git(dir, &["clone", "-q", &format!("file://{}", repo.display()), clone.to_str().context("utf-8 path")?])?;
    figures.clone_s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&clone)?;
    Ok(figures)
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.org")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.org")
        .stdin(Stdio::null())
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A repository of `commits` commits, each touching 20 of its files (10 new per commit).
fn make_repo(dir: &Path, commits: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    for c in 0..commits {
        for k in 0..20 {
            let file = (c * 10 + k) % (10 * commits).max(1);
            let path = dir.join(format!("d{:02}/f{file:05}.txt", file % 50));
            std::fs::create_dir_all(path.parent().expect("parent"))?;
            std::fs::write(&path, format!("file {file}, commit {c}\n").repeat(40))?;
        }
        git(dir, &["add", "-A"])?;
        git(dir, &["commit", "-qm", &format!("commit {c}")])?;
    }
    Ok(())
}

fn is_mounted(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*point))
}

/// A bindfs passthrough mount of `src` at `mnt`, unmounted and waited for on drop.
struct Bindfs {
    child: std::process::Child,
    mnt: PathBuf,
}

impl Bindfs {
    fn start(src: &Path, mnt: &Path) -> anyhow::Result<Bindfs> {
        let child = Command::new("bindfs")
            .arg("-f")
            .arg(src)
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("bindfs (apt-get install -y bindfs fuse3)")?;
        let bindfs = Bindfs { child, mnt: mnt.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(mnt) {
            if Instant::now() > deadline {
                bail!("bindfs did not mount {} within 10 s", mnt.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bindfs)
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(ctx: &Ctx, args: &BenchFsArgs, ticket: ClusterTicket) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("aspen-bench-fs-").tempdir().context("a scratch directory")?;
    let root = scratch.path().to_path_buf();
    let progress = spinner(&format!("generating a repository of {} commits", args.commits));
    let repo = root.join("repo");
    let commits = args.commits;
    let r = repo.clone();
    tokio::task::spawn_blocking(move || make_repo(&r, commits)).await??;
    let (size_mib, files) = (args.size_mib, args.files);
    let mut results: Vec<(&str, Figures)> = Vec::new();

    progress.set_message("plain directory");
    let plain = root.join("plain");
    std::fs::create_dir(&plain)?;
    let r = repo.clone();
    results.push(("plain", tokio::task::spawn_blocking(move || workload(&plain, size_mib, files, &r)).await??));

    let have_bindfs = Command::new("bindfs").arg("--version").output().is_ok_and(|o| o.status.success());
    if have_bindfs {
        progress.set_message("bindfs");
        let (src, mnt) = (root.join("bindfs-src"), root.join("bindfs-mnt"));
        std::fs::create_dir(&src)?;
        std::fs::create_dir(&mnt)?;
        let r = repo.clone();
        let figures = tokio::task::spawn_blocking(move || -> anyhow::Result<Figures> {
            let _bindfs = Bindfs::start(&src, &mnt)?;
            workload(&mnt, size_mib, files, &r)
        })
        .await??;
        results.push(("bindfs", figures));
    }

    progress.set_message("AspenFS");
    let token = ctx.token_for(&ticket)?;
    let client = Client::over_nodes_with_token(ticket.nodes.clone(), ctx.client_config(), token).await?;
    let prefix = format!("bench/fs-{}/", std::process::id());
    let scope = BlobChunks::scope_for(&prefix);
    let blobs = BlobClient::new(&client);
    let chunks: Arc<dyn ChunkStore> = Arc::new(BlobChunks::new(blobs.clone(), scope.clone()));
    let kv: SharedKv = Arc::new(client);
    let mnt = root.join("aspenfs");
    std::fs::create_dir(&mnt)?;
    let rt = tokio::runtime::Handle::current();
    let (k, p, r) = (kv.clone(), prefix.clone(), repo.clone());
    let figures = tokio::task::spawn_blocking(move || -> anyhow::Result<Figures> {
        let mounted = mount(k, Some(chunks), &rt, &mnt, &MountOptions::new(p.into_bytes()))?;
        let figures = workload(&mnt, size_mib, files, &r);
        mounted.unmount().context("unmounting AspenFS")?;
        figures
    })
    .await??;
    results.push(("aspenfs", figures));
    // Leave nothing behind: the prefix's keys and the chunks' pins.
    kv.delete_prefix(prefix.as_bytes()).await?;
    loop {
        let (pins, more) = blobs.pins(&scope, None, 1000).await?;
        for pin in &pins {
            blobs.unpin(&pin.name).await?;
        }
        if !more || pins.is_empty() {
            break;
        }
    }
    progress.finish_and_clear();
    print(ctx, args, &results);
    Ok(())
}

fn print(ctx: &Ctx, args: &BenchFsArgs, results: &[(&str, Figures)]) {
    let find = |name: &str| results.iter().find(|(n, _)| *n == name).map(|(_, f)| f.clone());
    let (plain, bindfs, aspen) = (find("plain"), find("bindfs"), find("aspenfs"));
    let ratio = |a: &Option<Figures>, b: &Option<Figures>| -> Vec<Option<f64>> {
        match (a, b) {
            (Some(a), Some(b)) => a.rows().iter().zip(b.rows()).map(|((_, x), (_, y))| Some(x / y)).collect(),
            _ => vec![None; 6],
        }
    };
    let bindfs_plain = ratio(&bindfs, &plain);
    let aspen_plain = ratio(&aspen, &plain);
    let aspen_bindfs = ratio(&aspen, &bindfs);
    if ctx.json {
        let figures = |f: &Option<Figures>| {
            f.as_ref()
                .map(|f| f.rows().iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect::<serde_json::Map<_, _>>())
        };
        let out = json!({
            "size_mib": args.size_mib, "files": args.files, "commits": args.commits,
            "plain": figures(&plain), "bindfs": figures(&bindfs), "aspenfs": figures(&aspen),
            "ratio_bindfs_plain": bindfs_plain, "ratio_aspenfs_plain": aspen_plain, "ratio_aspenfs_bindfs": aspen_bindfs,
        });
        println!("{out}");
        return;
    }
    println!(
        "{} MiB file, {} small files, clone of {} commits (git_clone_s: seconds, lower is better)",
        args.size_mib, args.files, args.commits
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>13} {:>14} {:>15}",
        "", "plain", "bindfs", "aspenfs", "bindfs/plain", "aspenfs/plain", "aspenfs/bindfs"
    );
    let cell = |f: &Option<Figures>, i: usize| f.as_ref().map_or("-".to_string(), |f| format!("{:.1}", f.rows()[i].1));
    let r = |v: &[Option<f64>], i: usize| v[i].map_or("-".to_string(), |x| format!("{x:.2}x"));
    for i in 0..6 {
        let name = plain.as_ref().or(aspen.as_ref()).map(|f| f.rows()[i].0).unwrap_or("");
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>13} {:>14} {:>15}",
            name,
            cell(&plain, i),
            cell(&bindfs, i),
            cell(&aspen, i),
            r(&bindfs_plain, i),
            r(&aspen_plain, i),
            r(&aspen_bindfs, i)
        );
    }
    if !std::path::Path::new("/proc/sys/vm/drop_caches").exists() {
        println!("(no drop_caches here: reads may come from the page cache)");
    }
}
