//! A service registry: live instances of named services, each a key on its registrant's
//! session lease, so the session's keepalive is the health check and a dead instance
//! disappears within its TTL.
//!
//! An instance is `_aspen/coord/service/<name>/<instance id>`, its value the JSON of
//! [`Instance`] (`{"addr": ..., "tags": [...], "meta": {...}}`) so other tools can read it.
//! Registering an id again replaces the instance and moves it to the new session (a restarted
//! process takes its id back without waiting for the old lease to end); deregistering deletes
//! it only while it is still this session's, so a replaced registrant cannot remove its
//! successor. Both are idempotent, so they are retried across leader changes.
//!
//! [`Service::watch`] reads every instance at revision R and watches from R + 1, so no change
//! falls between the snapshot and the stream. If the watch ends (its history compacted, or
//! the cluster out of reach for too long), it reads again and reports the difference from
//! what it last reported, so the caller's view always converges on the registry.

use std::collections::{BTreeMap, VecDeque};

use aspen_kv::{
    Compare, CompareOp, CompareTarget, EventKind, KeyValue, KvWatch, LeaseId, ReadConsistency, SharedKv, Txn, TxnOp,
};
use aspen_kv::{Kv as _, KvExt as _};
use serde::{Deserialize, Serialize};

use crate::idempotent::{is_lease_gone, retry};
use crate::name::{child_name, validate_name};
use crate::{COORD_PREFIX, CoordError, Session};

/// Most instances one discovery reads.
pub const MAX_INSTANCES: u32 = 10_000;
/// Times in a row a watch may end and be re-read without any change getting through before
/// its error is returned.
const WATCH_RESYNCS: usize = 5;

/// What an instance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Instance {
    /// Where to reach it, in whatever form its clients understand (`host:port`, a URL, a ticket).
    pub addr: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// A live instance, as discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInstance {
    pub id: String,
    pub instance: Instance,
    /// The registrant's session lease.
    pub lease: Option<LeaseId>,
    /// The revision it was last registered at.
    pub revision: u64,
}

/// A named service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Service {
    client: SharedKv,
    name: String,
    prefix: Vec<u8>,
}

/// One instance registered by this process; it lasts until deregistered or until its
/// session ends.
#[derive(Debug)]
pub struct Registration {
    session: Session,
    key: Vec<u8>,
    id: String,
}

/// A change to a service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceChange {
    /// An instance registered, or registered again with new details.
    Up(ServiceInstance),
    /// An instance deregistered, or its session ended.
    Down { id: String },
}

/// The instances of a service, kept current from a watch.
#[derive(Debug)]
pub struct ServiceWatch {
    service: Service,
    known: BTreeMap<String, ServiceInstance>,
    pending: VecDeque<ServiceChange>,
    stream: KvWatch,
}

impl Instance {
    /// Whether this instance carries every tag in `tags`.
    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| self.tags.contains(t))
    }
}

impl Service {
    /// The service `name` (non-empty, no `/`).
    pub fn new(kv: impl aspen_kv::IntoSharedKv, name: &str) -> Result<Service, CoordError> {
        validate_name("service name", name)?;
        let prefix = format!("{COORD_PREFIX}service/{name}/").into_bytes();
        Ok(Service { client: kv.into_shared_kv(), name: name.to_string(), prefix })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers instance `id` on `session`'s lease, replacing any earlier registration of
    /// the same id. `session` should be one of this service's client's.
    pub async fn register(&self, session: &Session, id: &str, instance: &Instance) -> Result<Registration, CoordError> {
        validate_name("instance id", id)?;
        if session.ended() {
            return Err(CoordError::SessionEnded);
        }
        let value = serde_json::to_vec(instance)
            .map_err(|e| CoordError::Corrupt(format!("cannot encode instance {id}: {e}")))?;
        let key = [self.prefix.as_slice(), id.as_bytes()].concat();
        let put = || session.kv().put_with_lease(&key, value.clone(), session.lease());
        match retry("service register", put).await {
            Err(e) if is_lease_gone(&e) => Err(CoordError::SessionEnded),
            Err(e) => Err(e),
            Ok(_) => Ok(Registration { session: session.clone(), key, id: id.to_string() }),
        }
    }

    /// The live instances carrying every tag in `tags` (all of them when `tags` is empty),
    /// in id order.
    pub async fn discover(&self, tags: &[String]) -> Result<Vec<ServiceInstance>, CoordError> {
        let (instances, _) = self.read().await?;
        Ok(instances.into_values().filter(|i| i.instance.has_tags(tags)).collect())
    }

    /// Every instance now, and a stream of changes from then on.
    pub async fn watch(&self) -> Result<ServiceWatch, CoordError> {
        let (known, revision) = self.read().await?;
        let stream = self.client.watch(&self.prefix, revision + 1);
        Ok(ServiceWatch { service: self.clone(), known, pending: VecDeque::new(), stream })
    }

    /// Every decodable instance, by id, and the revision they were read at.
    async fn read(&self) -> Result<(BTreeMap<String, ServiceInstance>, u64), CoordError> {
        let page = self.client.scan_prefix(&self.prefix, MAX_INSTANCES, ReadConsistency::Linearizable).await?;
        if page.more {
            tracing::warn!(service = %self.name, "over {MAX_INSTANCES} instances; discovery sees the first by id");
        }
        let instances = page.kvs.iter().filter_map(|kv| self.decode(kv)).map(|i| (i.id.clone(), i)).collect();
        Ok((instances, page.revision))
    }

    /// The instance a key holds; `None` (logged) for keys that are not one.
    fn decode(&self, kv: &KeyValue) -> Option<ServiceInstance> {
        let id = child_name(&self.prefix, &kv.key)?;
        match serde_json::from_slice::<Instance>(&kv.value) {
            Ok(instance) => {
                Some(ServiceInstance { id: id.to_string(), instance, lease: kv.lease, revision: kv.mod_revision })
            }
            Err(e) => {
                tracing::warn!(service = %self.name, id, "ignoring an instance that is not valid JSON: {e}");
                None
            }
        }
    }
}

impl Registration {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes the instance, unless another session has registered its id since.
    pub async fn deregister(self) -> Result<(), CoordError> {
        let txn = Txn {
            compare: vec![Compare {
                key: self.key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Lease(self.session.lease().0),
            }],
            success: vec![TxnOp::Delete { key: self.key.clone() }],
            failure: vec![],
        };
        retry("service deregister", || self.session.kv().txn(txn.clone())).await.map(drop)
    }
}

impl ServiceWatch {
    /// The instances as of the last change returned (at first: the snapshot), in id order.
    pub fn instances(&self) -> impl Iterator<Item = &ServiceInstance> {
        self.known.values()
    }

    /// Waits for the next change.
    pub async fn next(&mut self) -> Result<ServiceChange, CoordError> {
        let mut resyncs = 0;
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            match self.stream.next().await {
                Some(Ok(event)) => {
                    let instance = match event.kind {
                        EventKind::Put => self.service.decode(&event.kv),
                        EventKind::Delete => None,
                    };
                    let change = match instance {
                        Some(instance) => self.learn(instance),
                        // A delete, or a put of something that is not an instance.
                        None => child_name(&self.service.prefix, &event.kv.key)
                            .and_then(|id| self.known.remove(id))
                            .map(|gone| ServiceChange::Down { id: gone.id }),
                    };
                    self.pending.extend(change);
                }
                ended => {
                    resyncs += 1;
                    let error = match ended {
                        Some(Err(e)) => CoordError::Kv(e),
                        _ => CoordError::Corrupt("the watch stream closed".into()),
                    };
                    if resyncs > WATCH_RESYNCS {
                        return Err(error);
                    }
                    tracing::debug!(service = %self.service.name, "watch ended, reading the registry again: {error}");
                    self.resync().await?;
                }
            }
        }
    }

    /// Records `instance`; the change, unless it is what was known already.
    fn learn(&mut self, instance: ServiceInstance) -> Option<ServiceChange> {
        let same = |known: &ServiceInstance| known.instance == instance.instance && known.lease == instance.lease;
        if self.known.get(&instance.id).is_some_and(same) {
            return None;
        }
        self.known.insert(instance.id.clone(), instance.clone());
        Some(ServiceChange::Up(instance))
    }

    /// Reads the registry again, queues the difference from what was known, and watches
    /// from the new read on.
    async fn resync(&mut self) -> Result<(), CoordError> {
        let (now, revision) = self.service.read().await?;
        let gone: Vec<String> = self.known.keys().filter(|id| !now.contains_key(*id)).cloned().collect();
        for id in gone {
            self.known.remove(&id);
            self.pending.push_back(ServiceChange::Down { id });
        }
        for instance in now.into_values() {
            if let Some(change) = self.learn(instance) {
                self.pending.push_back(change);
            }
        }
        self.stream = self.service.client.watch(&self.service.prefix, revision + 1);
        Ok(())
    }
}

#[cfg(test)]
mod golden {
    use std::collections::BTreeMap;

    use aspen_core::golden::recorded_text;

    use super::Instance;

    /// An instance record is JSON in the KV, read by every discoverer.
    #[test]
    fn instance_records_keep_their_json() {
        let path = aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden/service_records.txt");
        let instance = Instance {
            addr: "10.0.0.1:8080".into(),
            tags: vec!["blue".into()],
            meta: BTreeMap::from([("version".into(), "1.2".into())]),
        };
        let json = serde_json::to_string(&instance).unwrap();
        let recorded = recorded_text(&path, "Instance", || json.clone());
        assert_eq!(recorded, json);
        assert_eq!(serde_json::from_str::<Instance>(&recorded).unwrap(), instance);
        // Written by hand, without the defaulted fields: still read.
        let minimal: Instance = serde_json::from_str(r#"{"addr":"x"}"#).unwrap();
        assert_eq!(minimal.addr, "x");
    }
}
