//! The server side of `git fetch`, `git clone` and `git ls-remote`: git's own
//! `git upload-pack`, run over a git directory made for this one fetch.
//!
//! The refs come from one KV snapshot (written as `packed-refs`), the objects from hard
//! links to this node's copies of the packs the KV lists for the repository and its
//! ancestors, fetched from the blob store when this node lacks them. Serving with git's own upload-pack gives every fetch feature git clients use
//! (protocol v2, shallow and deepening fetches, partial clone filters, multi-ack
//! negotiation, pack reuse) exactly as git implements them; the forge's part is the storage
//! and the consistency of what is served. This is how Radicle and Forgejo serve fetches too.

use std::path::Path;
use std::process::Stdio;

use aspen_core::AspenError;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::names::branch_ref;
use crate::records;
use crate::server::{ForgeHandler, Snapshot};

/// Seconds `git upload-pack` waits on an idle client before it gives up.
const IDLE_TIMEOUT_S: u32 = 300;

/// Environment variable naming the git program the node runs (default: `git` on `PATH`).
pub const GIT_ENV: &str = "ASPEN_FORGE_GIT";

fn io_error(what: &str, e: std::io::Error) -> AspenError {
    AspenError::internal(format!("{what}: {e}"))
}

/// The git program to run.
pub fn git_program() -> String {
    std::env::var(GIT_ENV).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "git".into())
}

/// The git program run with nothing of the node's environment but `PATH`: no system or
/// user config, `HOME` at `home`, killed when dropped.
pub(crate) fn git_command(home: &Path) -> Command {
    let mut command = Command::new(git_program());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", home)
        .kill_on_drop(true);
    command
}

/// Writes the git directory of one fetch: `HEAD`, `config` and `packed-refs` (its packs are
/// linked in by [`crate::store::PackStore::link_packs`]).
pub(crate) fn write_session(dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("refs"))?;
    std::fs::create_dir_all(dir.join("objects/info"))?;
    std::fs::create_dir_all(dir.join("objects/pack"))?;
    std::fs::write(dir.join("HEAD"), format!("ref: {}\n", branch_ref(&snapshot.record.default_branch)))?;
    std::fs::write(
        dir.join("config"),
        "[core]\n\trepositoryformatversion = 0\n\tbare = true\n[uploadpack]\n\tallowFilter = true\n\tallowReachableSHA1InWant = true\n",
    )?;
    let mut refs = String::from("# pack-refs with: sorted \n");
    for (name, id) in &snapshot.refs {
        refs.push_str(&format!("{} {name}\n", records::hex(id)));
    }
    std::fs::write(dir.join("packed-refs"), refs)?;
    Ok(())
}

impl ForgeHandler {
    /// Serves one fetch (the caller's `read` right already checked).
    pub(crate) async fn upload_pack(
        &self,
        snapshot: Snapshot,
        protocol: &str,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), AspenError> {
        let dir = self.store.session_dir()?;
        let served = async {
            write_session(&dir, &snapshot).map_err(|e| io_error("cannot write the fetch's git directory", e))?;
            self.store.link_packs(&dir.join("objects/pack"), &snapshot.packs).await?;
            let mut command = git_command(&dir);
            command
                .arg("upload-pack")
                .arg("--strict")
                .arg(format!("--timeout={IDLE_TIMEOUT_S}"))
                .arg(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if protocol == "version=2" || protocol == "version=1" {
                command.env("GIT_PROTOCOL", protocol);
            }
            let mut child = command.spawn().map_err(|e| io_error(&format!("cannot run {}", git_program()), e))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let mut stdout = child.stdout.take().expect("piped stdout");
            let mut stderr = child.stderr.take().expect("piped stderr");
            let to_git = async {
                let _ = tokio::io::copy(&mut recv, &mut stdin).await;
                let _ = stdin.shutdown().await;
                drop(stdin);
            };
            let from_git = async {
                let copied = tokio::io::copy(&mut stdout, &mut send).await;
                let _ = send.finish();
                copied
            };
            let errors = async {
                let mut text = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut text).await;
                text
            };
            // The client half-closes only when it is done; once git has said all it will,
            // the fetch is over whatever the client still holds open.
            let (copied, errors) = tokio::select! {
                done = async { tokio::join!(from_git, errors) } => done,
                () = async { to_git.await; std::future::pending::<()>().await } => unreachable!(),
            };
            let status = child.wait().await.map_err(|e| io_error("git upload-pack", e))?;
            if !status.success() {
                tracing::debug!(
                    repo = %snapshot.repo,
                    %status,
                    stderr = %String::from_utf8_lossy(&errors).trim(),
                    "git upload-pack ended with an error"
                );
            }
            copied.map(drop).map_err(|e| io_error("fetch stream", e))
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        served
    }
}
