//! The forge with the real `git` client against real node processes: `git push`, `clone`,
//! `fetch`, `pull` and `ls-remote` through `git-remote-aspen`, the rules refs obey, token
//! scopes, push events, racing pushes, corrupt packs and a leader killed mid-push.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_forge::ForgeClient;
use aspen_forge::records::{self, PushEvent};
use aspen_kv::KvExt;
use aspen_net::ClusterTicket;
use aspen_net::token::Token;
use aspen_testkit::harness::TestCluster;

/// The environment every git command here runs in: the helper on PATH, no user or system
/// config, a fixed identity, the cluster's ticket and a token.
struct GitEnv {
    home: tempfile::TempDir,
    ticket: String,
    token: String,
}

fn helper_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_git-remote-aspen")).parent().expect("bin dir").to_path_buf()
}

impl GitEnv {
    fn new(c: &TestCluster) -> Self {
        let nodes = (0..c.nodes.len()).map(|i| c.node_addr(i)).collect();
        let ticket = ClusterTicket { cluster_id: String::new(), nodes, token: None }.encode();
        GitEnv { home: tempfile::tempdir().expect("home"), ticket, token: c.token.encode() }
    }

    fn with_token(&self, token: &Token) -> GitEnv {
        GitEnv { home: tempfile::tempdir().expect("home"), ticket: self.ticket.clone(), token: token.encode() }
    }

    fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let path = format!("{}:{}", helper_dir().display(), std::env::var("PATH").unwrap_or_default());
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(dir)
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.org")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.org")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("ASPEN_TICKET", &self.ticket)
            .env("ASPEN_TOKEN", &self.token)
            .env_remove("ASPEN_TICKET_FILE")
            .env_remove("ASPEN_TOKEN_FILE")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir, args).output().expect("run git")
    }

    /// Runs git; panics with its stderr unless it succeeds. Returns stdout.
    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs git; panics unless it fails. Returns stderr.
    fn fails(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(!out.status.success(), "git {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).expect("utf-8")
    }
}

/// `git show-ref` (or `ls-remote`) output as sorted `(name, id)` pairs, peeled entries
/// and HEAD left out.
fn refs(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(['\t', ' '])?;
            (name.starts_with("refs/") && !name.ends_with("^{}")).then(|| (name.to_string(), id.to_string()))
        })
        .collect();
    out.sort();
    out
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// A history with what a real repository has: several commits, a binary file, a rename, a
/// branch merged back, an annotated and a lightweight tag.
fn make_history(git: &GitEnv, dir: &Path) {
    git.ok(dir, &["init", "-q", "-b", "main"]);
    for i in 0..5 {
        write(&dir.join(format!("src/file{i}.txt")), format!("line {i}\n").repeat(50 + i));
        git.ok(dir, &["add", "-A"]);
        git.ok(dir, &["commit", "-qm", &format!("commit {i}")]);
    }
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    write(&dir.join("assets/blob.bin"), &binary);
    git.ok(dir, &["add", "-A"]);
    git.ok(dir, &["commit", "-qm", "a binary file"]);
    git.ok(dir, &["mv", "src/file0.txt", "src/renamed.txt"]);
    git.ok(dir, &["commit", "-qm", "a rename"]);
    git.ok(dir, &["checkout", "-qb", "topic"]);
    write(&dir.join("src/topic.txt"), "topic work\n");
    git.ok(dir, &["add", "-A"]);
    git.ok(dir, &["commit", "-qm", "topic work"]);
    git.ok(dir, &["checkout", "-q", "main"]);
    write(&dir.join("src/file1.txt"), "changed on main\n");
    git.ok(dir, &["commit", "-qam", "main work"]);
    git.ok(dir, &["merge", "-q", "--no-edit", "--no-ff", "topic"]);
    git.ok(dir, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    git.ok(dir, &["tag", "light"]);
}

fn forge_cap(right: &str, scope: &str) -> Capability {
    Capability::App { app: "forge".into(), right: right.into(), scope: scope.as_bytes().to_vec() }
}

async fn events(c: &TestCluster) -> Vec<PushEvent> {
    let client = c.client().await;
    let (kvs, _) = client.scan_all(records::EVENT_PREFIX, ReadConsistency::Linearizable).await.expect("scan events");
    client.close().await;
    kvs.iter().map(|kv| postcard::from_bytes(&kv.value).expect("event decodes")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_round_trips_a_repository_and_refs_follow_the_rules() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let forge = ForgeClient::new(&client);
    forge.create_repo("team/app", "", "main").await.unwrap();
    let git = GitEnv::new(&c);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_history(&git, &src);
    git.ok(&src, &["remote", "add", "origin", "aspen://default/team/app"]);

    // Push everything, clone it back: same refs, and the clone passes fsck --strict.
    git.ok(&src, &["push", "-q", "origin", "main", "topic"]);
    git.ok(&src, &["push", "-q", "--tags", "origin"]);
    let source_refs = refs(&git.ok(&src, &["show-ref", "--heads", "--tags"]));
    assert_eq!(refs(&git.ok(&src, &["ls-remote", "origin"])), source_refs);
    git.ok(work.path(), &["clone", "-q", "aspen://default/team/app", "clone"]);
    let clone = work.path().join("clone");
    git.ok(&clone, &["fsck", "--strict"]);
    git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/team/app", "mirror.git"]);
    let mirror = work.path().join("mirror.git");
    git.ok(&mirror, &["fsck", "--strict"]);
    assert_eq!(refs(&git.ok(&mirror, &["show-ref", "--heads", "--tags"])), source_refs);
    assert_eq!(
        std::fs::read(clone.join("assets/blob.bin")).unwrap(),
        std::fs::read(src.join("assets/blob.bin")).unwrap()
    );
    assert!(clone.join("src/renamed.txt").is_file() && !clone.join("src/file0.txt").exists());

    // A new commit moves only what is new; fetch and pull bring it.
    write(&src.join("src/new.txt"), "new\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "one more"]);
    let pushed = git.run(&src, &["push", "origin", "main"]);
    assert!(pushed.status.success());
    let progress = String::from_utf8_lossy(&pushed.stderr);
    assert!(progress.contains("main -> main"), "{progress}");
    git.ok(&clone, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(git.ok(&clone, &["rev-parse", "HEAD"]), git.ok(&src, &["rev-parse", "HEAD"]));

    // Shallow clone, then deepen.
    git.ok(work.path(), &["clone", "-q", "--depth", "1", "aspen://default/team/app", "shallow"]);
    let shallow = work.path().join("shallow");
    assert_eq!(git.ok(&shallow, &["rev-list", "--count", "HEAD"]).trim(), "1");
    git.ok(&shallow, &["fetch", "-q", "--deepen", "1"]);
    assert_eq!(git.ok(&shallow, &["rev-list", "--count", "HEAD"]).trim(), "2", "the tip and the merge below it");
    git.ok(&shallow, &["fetch", "-q", "--unshallow"]);
    assert_eq!(git.ok(&shallow, &["rev-list", "--count", "HEAD"]), git.ok(&src, &["rev-list", "--count", "HEAD"]));
    git.ok(&shallow, &["fsck", "--strict"]);

    // Non-fast-forward: refused unless forced.
    let main_before = git.ok(&src, &["rev-parse", "main"]);
    git.ok(&src, &["reset", "-q", "--hard", "HEAD~1"]);
    write(&src.join("diverged.txt"), "diverged\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "diverged"]);
    let err = git.fails(&src, &["push", "origin", "main"]);
    assert!(err.contains("[rejected]") && err.contains("non-fast-forward"), "{err}");
    git.ok(&src, &["push", "-q", "--force", "origin", "main"]);
    assert_eq!(
        refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"]))[0].1,
        git.ok(&src, &["rev-parse", "main"]).trim()
    );

    // A protected branch refuses force pushes and deletes; others can be deleted.
    forge.protect("team/app", "main", true).await.unwrap();
    git.ok(&src, &["reset", "-q", "--hard", main_before.trim()]);
    let err = git.fails(&src, &["push", "--force", "origin", "main"]);
    assert!(err.contains("remote rejected") && err.contains("protected branch main"), "{err}");
    let err = git.fails(&src, &["push", "origin", ":main"]);
    assert!(err.contains("refusing to delete the protected branch main"), "{err}");
    git.ok(&src, &["push", "-q", "origin", ":topic"]);
    assert!(refs(&git.ok(&src, &["ls-remote", "origin"])).iter().all(|(n, _)| n != "refs/heads/topic"));

    // --atomic: all or nothing. One ref may not move (the protected main), so neither does.
    let head_main = refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"]));
    git.ok(&src, &["checkout", "-qb", "feature"]);
    let err = git.fails(&src, &["push", "--atomic", "--force", "origin", "feature", "main"]);
    assert!(err.contains("atomic"), "{err}");
    let after = refs(&git.ok(&src, &["ls-remote", "origin"]));
    assert!(after.iter().all(|(n, _)| n != "refs/heads/feature"), "{after:?}");
    assert_eq!(refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"])), head_main);
    git.ok(&src, &["push", "-q", "--atomic", "origin", "feature", "HEAD:refs/heads/second"]);

    // Token scopes: read on team/ clones team/app but cannot push; nothing under other/.
    forge.create_repo("other/secret", "", "main").await.unwrap();
    let reader = git.with_token(&c.token_with(vec![forge_cap("read", "team/")]));
    reader.ok(work.path(), &["clone", "-q", "aspen://default/team/app", "as-reader"]);
    let err = reader.fails(&work.path().join("as-reader"), &["push", "origin", "HEAD:refs/heads/reader"]);
    assert!(err.contains("permission denied") && err.contains("forge:push"), "{err}");
    let err = reader.fails(work.path(), &["clone", "-q", "aspen://default/other/secret", "nope"]);
    assert!(err.contains("permission denied") && err.contains("forge:read"), "{err}");
    let err = git.fails(work.path(), &["clone", "-q", "aspen://default/team/missing", "missing"]);
    assert!(err.contains("does not exist"), "{err}");

    // Every accepted ref update left exactly one event, in the same transaction.
    let events = events(&c).await;
    let main_events = events.iter().filter(|e| e.repo == "team/app" && e.ref_name == "refs/heads/main").count();
    assert_eq!(main_events, 3, "created, fast-forwarded, forced: {events:#?}");
    let deleted = events.iter().find(|e| e.ref_name == "refs/heads/topic" && e.new.is_none()).expect("delete event");
    assert!(deleted.old.is_some());
    assert!(events.iter().any(|e| e.ref_name == "refs/tags/v1.0"));
    assert!(events.iter().all(|e| e.pusher.len() == 64));
    client.close().await;
}
