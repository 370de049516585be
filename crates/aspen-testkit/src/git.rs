//! [`GitEnv`]: the real `git` client, set up to talk to a [`TestCluster`]'s forge through
//! `git-remote-aspen`, for tests that push, clone and fetch as a user would.
//!
//! Every command gets the helper's directory first on `PATH`, a home of its own with no
//! user or system configuration, a fixed identity, the cluster's ticket and a token (in
//! `ASPEN_TICKET` and `ASPEN_TOKEN`, with the `*_FILE` variants removed so nothing of the
//! machine's own setup leaks in). The helper binary is built by the crate that owns it, so its
//! directory comes from the caller (`CARGO_BIN_EXE_git-remote-aspen`'s parent there).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aspen_net::ClusterTicket;
use aspen_net::token::Token;

use crate::harness::TestCluster;

/// The environment git commands run in; see the module's documentation.
pub struct GitEnv {
    home: tempfile::TempDir,
    helper_dir: PathBuf,
    ticket: String,
    token: String,
}

impl GitEnv {
    /// An environment for `cluster` with its root token; `helper_dir` holds
    /// `git-remote-aspen`.
    pub fn new(cluster: &TestCluster, helper_dir: impl Into<PathBuf>) -> GitEnv {
        let nodes = (0..cluster.nodes.len()).map(|i| cluster.node_addr(i)).collect();
        let ticket = ClusterTicket { cluster_id: String::new(), nodes, token: None }.encode();
        GitEnv {
            home: tempfile::tempdir().expect("home"),
            helper_dir: helper_dir.into(),
            ticket,
            token: cluster.token.encode(),
        }
    }

    /// The same cluster, another token, a home of its own.
    pub fn with_token(&self, token: &Token) -> GitEnv {
        GitEnv {
            home: tempfile::tempdir().expect("home"),
            helper_dir: self.helper_dir.clone(),
            ticket: self.ticket.clone(),
            token: token.encode(),
        }
    }

    /// The cluster's ticket, encoded, as `ASPEN_TICKET` or `--ticket` takes it.
    pub fn ticket(&self) -> &str {
        &self.ticket
    }

    /// The token git presents, encoded.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `git ARGS` in `dir`, ready to run (or to be given stdin and pipes first).
    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let path = format!("{}:{}", self.helper_dir.display(), std::env::var("PATH").unwrap_or_default());
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(dir)
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // A file in the test's own home, not /dev/null: a git that writes its global
            // config (lockfile, then rename) must not replace the device node.
            .env("GIT_CONFIG_GLOBAL", self.home.path().join(".gitconfig"))
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

    /// Runs git, whatever it answers.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir, args).output().expect("run git")
    }

    /// Runs git; panics with its stderr unless it succeeds. Returns stdout.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs git; panics unless it fails. Returns stderr.
    pub fn fails(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(!out.status.success(), "git {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).expect("utf-8")
    }

    /// A new local repository whose `main` holds `files` (relative path, contents) in one
    /// commit, pushed to the forge repository `repo` (which must exist) as its `origin`.
    /// Returns the local clone.
    pub fn push_new_repo(&self, repo: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("repo dir");
        let d = dir.path();
        self.ok(d, &["init", "-q", "-b", "main"]);
        for (path, contents) in files {
            let path = d.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, contents).expect("write");
        }
        self.ok(d, &["add", "-A"]);
        self.ok(d, &["commit", "-qm", "the first commit"]);
        self.ok(d, &["remote", "add", "origin", &format!("aspen://default/{repo}")]);
        self.ok(d, &["push", "-q", "origin", "main"]);
        dir
    }
}
