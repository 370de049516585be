//! Which build this node runs: the answer to `NodeBuild`.
//!
//! The executable's BLAKE3 is the blob hash of the artifact the node was started from, so a
//! rolling upgrade can tell that a restarted node runs exactly the binary it shipped. It is
//! read from `/proc/self/exe`, which names the running file even after it was replaced.

use std::sync::OnceLock;

use aspen_core::api::NodeBuild;

static STARTED_MS: OnceLock<u64> = OnceLock::new();
static EXE_BLAKE3: tokio::sync::OnceCell<Option<[u8; 32]>> = tokio::sync::OnceCell::const_new();

/// Notes the start of the node process; the first call wins.
pub fn record_start() {
    STARTED_MS.get_or_init(aspen_net::now_ms);
}

fn hash_exe() -> Option<[u8; 32]> {
    let mut file = match std::fs::File::open("/proc/self/exe") {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(%e, "cannot read the running executable to hash it");
            return None;
        }
    };
    let mut hasher = blake3::Hasher::new();
    match std::io::copy(&mut file, &mut hasher) {
        Ok(_) => Some(*hasher.finalize().as_bytes()),
        Err(e) => {
            tracing::warn!(%e, "cannot read the running executable to hash it");
            None
        }
    }
}

/// This node's build. Hashing the executable happens once, off the async threads.
pub async fn node_build(node_id: u64) -> NodeBuild {
    let exe_blake3 =
        *EXE_BLAKE3.get_or_init(|| async { tokio::task::spawn_blocking(hash_exe).await.ok().flatten() }).await;
    NodeBuild {
        node_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: option_env!("ASPEN_GIT_COMMIT").filter(|c| !c.is_empty()).map(str::to_string),
        exe_blake3,
        started_ms: *STARTED_MS.get_or_init(aspen_net::now_ms),
        pid: std::process::id(),
    }
}
