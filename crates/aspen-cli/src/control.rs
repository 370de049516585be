//! The control socket of `aspen cluster up`: `<dir>/control.sock`, mode 0600.
//!
//! The process that runs a local cluster owns its node processes, so only it can restart a
//! node on another executable. `aspen cluster upgrade` asks it to, one node at a time, over
//! this socket: one JSON request line, one JSON answer line per connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::local_cluster::{LocalCluster, NodeView, READY_TIMEOUT, STOP_GRACE};

/// The socket's name in the cluster directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// What each node runs.
    Nodes,
    /// Stop node `node` and start it on `exe`; answered once it serves or failed to.
    Restart { node: u64, exe: PathBuf },
}

/// The answer: the error, if the request failed, and the nodes as they are afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub error: Option<String>,
    pub nodes: Vec<NodeView>,
}

/// Longest socket path bound or connected to as it is; a socket address holds 108 bytes.
const MAX_DIRECT_PATH: usize = 100;

/// The path to bind or connect to for `<dir>/control.sock`. A deep directory (a CI job's
/// scratch dir) is reached through `/proc/self/fd/N/`, N an open handle on it that the
/// caller keeps until the bind or connect is done.
fn socket_path(dir: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    let path = dir.join(CONTROL_SOCKET);
    if path.as_os_str().len() <= MAX_DIRECT_PATH {
        return Ok((path, None));
    }
    let handle = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}/{CONTROL_SOCKET}", handle.as_raw_fd()));
    Ok((short, Some(handle)))
}

/// Binds `<dir>/control.sock`, replacing a socket left by an earlier run.
pub fn bind(dir: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(CONTROL_SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove the old {}", path.display())),
    }
    let (address, _handle) = socket_path(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let listener = UnixListener::bind(&address).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

/// Answers one connection.
pub async fn serve(stream: UnixStream, cluster: &mut LocalCluster) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => answer(cluster, Some("no request within 10 s".into())),
        Ok(Err(e)) => answer(cluster, Some(format!("cannot read the request: {e}"))),
        Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(line.trim()) {
            Err(e) => answer(cluster, Some(format!("bad request {:?}: {e}", line.trim()))),
            Ok(ControlRequest::Nodes) => answer(cluster, None),
            Ok(ControlRequest::Restart { node, exe }) => {
                eprintln!("restarting node {node} on {}", exe.display());
                let error = match cluster.restart_node(node, &exe).await {
                    Ok(()) => {
                        eprintln!("node {node} serves on {}", exe.display());
                        None
                    }
                    Err(e) => {
                        eprintln!("node {node} failed on {}: {e:#}", exe.display());
                        Some(format!("{e:#}"))
                    }
                };
                answer(cluster, error)
            }
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    if let Err(e) = write.write_all(text.as_bytes()).await {
        tracing::warn!(%e, "cannot answer on the control socket");
    }
}

fn answer(cluster: &LocalCluster, error: Option<String>) -> ControlResponse {
    ControlResponse { error, nodes: cluster.views() }
}

/// Sends `request` to the supervisor of the cluster in `dir`; a failed request is an error
/// carrying the supervisor's reason and the nodes as they are afterwards.
pub async fn ask(dir: &Path, request: &ControlRequest) -> Result<Vec<NodeView>, ControlError> {
    let path = dir.join(CONTROL_SOCKET);
    let unreachable = |e: std::io::Error| {
        ControlError::Unreachable(format!(
            "cannot reach the supervisor at {} ({e}); is `aspen cluster up --data-dir {}` running?",
            path.display(),
            dir.display()
        ))
    };
    let (address, handle) = socket_path(dir).map_err(unreachable)?;
    let connected = UnixStream::connect(&address).await;
    drop(handle);
    let mut stream = connected.map_err(unreachable)?;
    let mut text = serde_json::to_string(request).map_err(|e| ControlError::Unreachable(e.to_string()))?;
    text.push('\n');
    // A restart stops the node (up to STOP_GRACE) and waits for it to serve.
    let limit = STOP_GRACE + READY_TIMEOUT + Duration::from_secs(30);
    let exchange = async {
        stream.write_all(text.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = match tokio::time::timeout(limit, exchange).await {
        Err(_) => return Err(ControlError::Unreachable(format!("the supervisor did not answer within {limit:?}"))),
        Ok(Err(e)) => return Err(ControlError::Unreachable(format!("control socket {}: {e}", path.display()))),
        Ok(Ok(line)) => line,
    };
    let response: ControlResponse = serde_json::from_str(line.trim())
        .map_err(|e| ControlError::Unreachable(format!("the supervisor answered {:?}: {e}", line.trim())))?;
    match response.error {
        None => Ok(response.nodes),
        Some(reason) => Err(ControlError::Failed { reason, nodes: response.nodes }),
    }
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{reason}")]
    Failed { reason: String, nodes: Vec<NodeView> },
}

/// The node views of a successful `Nodes` request, or the error as text.
pub async fn nodes(dir: &Path) -> anyhow::Result<Vec<NodeView>> {
    match ask(dir, &ControlRequest::Nodes).await {
        Ok(nodes) => Ok(nodes),
        Err(e) => bail!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket address holds 108 bytes; a CI job's scratch directory is deeper than that.
    #[tokio::test]
    async fn a_supervisor_in_a_deep_directory_is_reached() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("a-rather-long-directory-name/".repeat(4)).join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(dir.join(CONTROL_SOCKET).as_os_str().len() > 108);
        let listener = bind(&dir).unwrap();
        assert!(dir.join(CONTROL_SOCKET).exists(), "the socket is in the cluster's directory");
        let answer = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            assert_eq!(serde_json::from_str::<ControlRequest>(line.trim()).unwrap(), ControlRequest::Nodes);
            write.write_all(b"{\"error\":null,\"nodes\":[]}\n").await.unwrap();
        });
        assert_eq!(nodes(&dir).await.unwrap(), Vec::new());
        answer.await.unwrap();
    }
}
