//! Barriers: [`Barrier`] holds everyone back until it is released; [`DoubleBarrier`] lets N
//! participants start a phase together and finish it together.
//!
//! # Barrier
//!
//! One key, `_aspen/coord/barrier/<name>`. [`Barrier::hold`] creates it (with no lease, so it
//! stays until someone releases it, whether or not its setter lives on; [`Barrier::hold_in`]
//! ties it to a session instead), [`Barrier::release`] deletes it, and [`Barrier::wait`]
//! returns once it is absent. `wait` reads the key at revision R and, while it is there,
//! watches it from R + 1: the watch replays history from R + 1, so a release that lands
//! between the read and the watch is still seen.
//!
//! # Double barrier
//!
//! Keys under `_aspen/coord/dbarrier/<name>/`: one `in/<lease>` per participant, on its
//! session's lease, and `ready`, written (with no lease) when a round fills up. A round is
//! named by `ready`'s mod revision M, its *mark*: the round's members are the participants
//! whose keys were created before M.
//!
//! - [`DoubleBarrier::enter`] creates this session's key (create revision C) and returns once
//!   `ready`'s mark is greater than C. Any waiting participant that reads at least N keys
//!   created after the current mark (the arrivals since the last round) writes `ready`, in a
//!   transaction guarded by the mark it read, so each round is marked once. So nobody passes
//!   `enter` before N participants had entered; more may pass if they arrive together.
//! - [`DoubleBarrier::leave`] deletes this session's key and returns once no key created
//!   before its round's mark is left: every member has left, or ended its session. The last
//!   one out deletes `ready`, guarded by the mark, so a later round's `ready` is never touched.
//!
//! A stale `ready` (everyone died before leaving) is harmless: the next round's keys are
//! created after it, so they wait for a new mark. A participant that dies takes its key with
//! its lease: before the round fills, it no longer counts; after, the others' `leave` stops
//! waiting for it within its session's TTL. Every participant must agree on N.

use std::time::Duration;

use aspen_kv::{Compare, CompareOp, CompareTarget, EventKind, ReadConsistency, SharedKv, Txn, TxnOp};
use aspen_kv::{Kv as _, KvExt as _};

use crate::idempotent::retry;
use crate::name::{invalid, validate_name};
use crate::wake::wait_for;
use crate::{COORD_PREFIX, CoordError, Session};

/// Most keys one double barrier may hold (its participants and `ready`): one scan reads all.
const MAX_BARRIER_KEYS: u32 = 10_000;
/// Most participants a double barrier may wait for.
pub const MAX_BARRIER_PARTICIPANTS: usize = 5_000;

/// A barrier that holds waiters back while its key exists; cheap to clone.
#[derive(Debug, Clone)]
pub struct Barrier {
    client: SharedKv,
    name: String,
    key: Vec<u8>,
}

impl Barrier {
    /// The barrier `name` (non-empty, no `/`).
    pub fn new(kv: impl aspen_kv::IntoSharedKv, name: &str) -> Result<Barrier, CoordError> {
        validate_name("barrier name", name)?;
        let key = format!("{COORD_PREFIX}barrier/{name}").into_bytes();
        Ok(Barrier { client: kv.into_shared_kv(), name: name.to_string(), key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raises the barrier until [`Barrier::release`]; does nothing if it is already up.
    pub async fn hold(&self) -> Result<(), CoordError> {
        self.put_if_absent(None).await
    }

    /// Raises the barrier until released or until `session` ends, whichever is first.
    pub async fn hold_in(&self, session: &Session) -> Result<(), CoordError> {
        self.put_if_absent(Some(session)).await
    }

    async fn put_if_absent(&self, session: Option<&Session>) -> Result<(), CoordError> {
        let txn = Txn {
            compare: vec![Compare {
                key: self.key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![TxnOp::Put { key: self.key.clone(), value: Vec::new(), lease: session.map(Session::lease) }],
            failure: vec![],
        };
        retry("barrier hold", || self.client.txn(txn.clone())).await.map(drop)
    }

    /// Lowers the barrier: every waiter goes on.
    pub async fn release(&self) -> Result<(), CoordError> {
        retry("barrier release", || self.client.delete(&self.key)).await.map(drop)
    }

    /// Whether the barrier is up now.
    pub async fn is_held(&self) -> Result<bool, CoordError> {
        Ok(self.client.get(&self.key, ReadConsistency::Linearizable).await?.is_some())
    }

    /// Returns once the barrier is down (at once if it is not up), waiting at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<(), CoordError> {
        tokio::time::timeout(timeout, self.wait_forever())
            .await
            .map_err(|_| CoordError::Timeout(timeout, format!("barrier {} to be released", self.name)))?
    }

    async fn wait_forever(&self) -> Result<(), CoordError> {
        loop {
            let read = self.client.get_with_revision(&self.key, ReadConsistency::Linearizable).await?;
            if read.kv.is_none() {
                return Ok(());
            }
            let mut watch = self.client.watch(&self.key, read.revision + 1);
            wait_for(&mut watch, |kind, key| kind == EventKind::Delete && key == self.key.as_slice()).await;
        }
    }
}

/// A barrier for N participants around a phase: `enter` waits for all N, `leave` waits for
/// all of them to finish. One participant per session.
#[derive(Debug)]
pub struct DoubleBarrier {
    session: Session,
    name: String,
    count: usize,
    prefix: Vec<u8>,
    arrivals: Vec<u8>,
    ready: Vec<u8>,
    my_key: Vec<u8>,
    /// The mark of the round this participant entered, until it leaves.
    round: Option<u64>,
}

/// The double barrier's keys as read at one revision.
struct Snapshot {
    revision: u64,
    /// `ready`'s mod revision; 0 when absent.
    mark: u64,
    /// Each participant key with its create revision.
    participants: Vec<(Vec<u8>, u64)>,
}

impl DoubleBarrier {
    /// The double barrier `name` for `count` participants (1 to [`MAX_BARRIER_PARTICIPANTS`]).
    pub fn new(session: &Session, name: &str, count: usize) -> Result<DoubleBarrier, CoordError> {
        validate_name("barrier name", name)?;
        if count == 0 || count > MAX_BARRIER_PARTICIPANTS {
            return Err(invalid(format!(
                "double barrier {name:?} needs a participant count from 1 to {MAX_BARRIER_PARTICIPANTS}, not {count}"
            )));
        }
        let prefix = format!("{COORD_PREFIX}dbarrier/{name}/").into_bytes();
        let arrivals = [prefix.as_slice(), b"in/"].concat();
        let ready = [prefix.as_slice(), b"ready"].concat();
        let my_key = [arrivals.as_slice(), format!("{:016x}", session.lease().0).as_bytes()].concat();
        Ok(DoubleBarrier {
            session: session.clone(),
            name: name.to_string(),
            count,
            prefix,
            arrivals,
            ready,
            my_key,
            round: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins and waits (at most `timeout`) until N participants have joined. On timeout,
    /// leaves again (the others may have counted this participant meanwhile).
    pub async fn enter(&mut self, timeout: Duration) -> Result<(), CoordError> {
        match tokio::time::timeout(timeout, self.enter_forever()).await {
            Ok(Ok(mark)) => {
                self.round = Some(mark);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let _ = self.delete_my_key().await;
                Err(CoordError::Timeout(
                    timeout,
                    format!("{} participants to enter double barrier {}", self.count, self.name),
                ))
            }
        }
    }

    /// Leaves and waits (at most `timeout`) until every member of the round entered has left
    /// or ended its session. Leaving before entering is an error.
    pub async fn leave(&mut self, timeout: Duration) -> Result<(), CoordError> {
        let Some(mark) = self.round else {
            return Err(invalid(format!("double barrier {}: leave called before a successful enter", self.name)));
        };
        self.delete_my_key().await?;
        self.round = None;
        tokio::time::timeout(timeout, self.wait_all_left(mark))
            .await
            .map_err(|_| CoordError::Timeout(timeout, format!("everyone to leave double barrier {}", self.name)))?
    }

    /// Registers (idempotently) and returns the round's mark once it is filled.
    async fn enter_forever(&self) -> Result<u64, CoordError> {
        if self.session.ended() {
            return Err(CoordError::SessionEnded);
        }
        let joined = self.join().await?;
        loop {
            let snap = self.read().await?;
            if !snap.participants.iter().any(|(key, _)| *key == self.my_key) {
                return Err(CoordError::SessionEnded);
            }
            if snap.mark > joined {
                return Ok(snap.mark);
            }
            let arrived = snap.participants.iter().filter(|(_, created)| *created > snap.mark).count();
            if arrived >= self.count {
                // Mark the round, unless another arrival just did (then the read shows it).
                let txn = Txn {
                    compare: vec![Compare {
                        key: self.ready.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::ModRevision(snap.mark),
                    }],
                    success: vec![TxnOp::Put {
                        key: self.ready.clone(),
                        value: arrived.to_string().into_bytes(),
                        lease: None,
                    }],
                    failure: vec![],
                };
                let resp = retry("double barrier ready", || self.session.kv().txn(txn.clone())).await?;
                if resp.succeeded {
                    return Ok(resp.revision);
                }
                continue;
            }
            // Wait for an arrival, a new mark, or the end of our own key.
            let mut watch = self.session.kv().watch(&self.prefix, snap.revision + 1);
            wait_for(&mut watch, |kind, key| match kind {
                EventKind::Put => true,
                EventKind::Delete => key == self.my_key.as_slice(),
            })
            .await;
            if self.session.ended() {
                return Err(CoordError::SessionEnded);
            }
        }
    }

    /// Creates this participant's key if absent; returns its create revision.
    async fn join(&self) -> Result<u64, CoordError> {
        let txn = Txn {
            compare: vec![Compare {
                key: self.my_key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![TxnOp::Put {
                key: self.my_key.clone(),
                value: Vec::new(),
                lease: Some(self.session.lease()),
            }],
            failure: vec![TxnOp::Get { key: self.my_key.clone() }],
        };
        let resp = retry("double barrier enter", || self.session.kv().txn(txn.clone())).await;
        let resp = match resp {
            Err(e) if crate::idempotent::is_lease_gone(&e) => return Err(CoordError::SessionEnded),
            other => other?,
        };
        if resp.succeeded {
            return Ok(resp.revision);
        }
        match resp.results.into_iter().next() {
            Some(aspen_kv::TxnOpResult::Get { kv: Some(kv) }) => Ok(kv.create_revision),
            // Created and gone again between the compare and the read: the lease ended.
            _ => Err(CoordError::SessionEnded),
        }
    }

    async fn wait_all_left(&self, mark: u64) -> Result<(), CoordError> {
        loop {
            let snap = self.read().await?;
            if !snap.participants.iter().any(|(_, created)| *created < mark) {
                if snap.mark == mark {
                    self.tidy(mark).await;
                }
                return Ok(());
            }
            let mut watch = self.session.kv().watch(&self.arrivals, snap.revision + 1);
            wait_for(&mut watch, |kind, _| kind == EventKind::Delete).await;
        }
    }

    /// The last one out deletes the round's `ready`, unless a later round has rewritten it.
    /// Best effort: a stale `ready` does no harm.
    async fn tidy(&self, mark: u64) {
        let txn = Txn {
            compare: vec![Compare {
                key: self.ready.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(mark),
            }],
            success: vec![TxnOp::Delete { key: self.ready.clone() }],
            failure: vec![],
        };
        if let Err(e) = self.session.kv().txn(txn).await {
            tracing::debug!(barrier = %self.name, "could not delete the ready key: {e}");
        }
    }

    async fn delete_my_key(&self) -> Result<(), CoordError> {
        retry("double barrier leave", || self.session.kv().delete(&self.my_key)).await.map(drop)
    }

    async fn read(&self) -> Result<Snapshot, CoordError> {
        let page = self.session.kv().scan_prefix(&self.prefix, MAX_BARRIER_KEYS, ReadConsistency::Linearizable).await?;
        if page.more {
            return Err(invalid(format!("double barrier {} holds more than {MAX_BARRIER_KEYS} keys", self.name)));
        }
        let mut snap = Snapshot { revision: page.revision, mark: 0, participants: Vec::new() };
        for kv in page.kvs {
            if kv.key == self.ready {
                snap.mark = kv.mod_revision;
            } else if kv.key.starts_with(&self.arrivals) {
                snap.participants.push((kv.key, kv.create_revision));
            }
        }
        Ok(snap)
    }
}
