//! A client writing throughout a disruption (an upgrade, a deploy): `roll/<n>` = n, one
//! after another, each acknowledged write read back. Afterwards every acknowledged write must
//! be there; a write that failed has an unknown outcome and is not counted either way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aspen_client::{Client, ReadConsistency};

use crate::harness::eventually;

/// Prefix of the writer's keys.
pub const PREFIX: &str = "roll/";

/// The running writer.
pub struct AckedWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(Vec<u64>, u64)>,
}

fn key(n: u64) -> String {
    format!("{PREFIX}{n:06}")
}

impl AckedWriter {
    /// Starts writing through `client` (closed when the writer finishes).
    pub fn start(client: Client) -> AckedWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut reads = 0;
            let mut n = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                if client.put(key(n), n.to_string()).await.is_ok() {
                    ok.push(n);
                    acked2.fetch_add(1, Ordering::SeqCst);
                    if let Ok(Some(kv)) = client.get(key(n), ReadConsistency::Linearizable).await {
                        assert_eq!(kv.value, n.to_string().as_bytes(), "a read of an acknowledged write");
                        reads += 1;
                    }
                }
                n += 1;
            }
            client.close().await;
            (ok, reads)
        });
        AckedWriter { stop, acked, task }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits (bounded, generously) until `n` writes were acknowledged.
    pub async fn acked_at_least(&self, n: u64) {
        eventually(&format!("{n} writes acknowledged"), || async { (self.acked() >= n).then_some(()) }).await;
    }

    /// Stops writing; returns the acknowledged writes and how many read-backs succeeded.
    pub async fn finish(self) -> (Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(60), self.task).await.expect("the writer stops").expect("the writer")
    }
}

/// Panics unless every write in `acked` reads back with its value through `client`.
pub async fn assert_all_present(client: &Client, acked: &[u64]) {
    let mut present = BTreeMap::new();
    let mut start = PREFIX.as_bytes().to_vec();
    let end = prefix_end();
    loop {
        let page = client.scan(&start, &end, 5_000, ReadConsistency::Linearizable).await.expect("scan the writes");
        let Some(last) = page.kvs.last() else { break };
        start = [last.key.as_slice(), b"\0"].concat();
        present.extend(page.kvs.into_iter().map(|kv| (kv.key, kv.value)));
    }
    for n in acked {
        assert_eq!(
            present.get(key(*n).as_bytes()),
            Some(&n.to_string().into_bytes()),
            "acknowledged write {n} was lost"
        );
    }
}

fn prefix_end() -> Vec<u8> {
    let mut end = PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
