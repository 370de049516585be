//! The cache's operations on a node: what both its iroh protocol ([`crate::server`]) and
//! its HTTP gateway ([`crate::gateway`]) call. Records go through the KV the node gives the
//! app (its own prefix, and the blob pins it declares); NARs go to this node's blob store.
//!
//! Every operation takes the caller's capabilities, `None` for an anonymous HTTP request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_app::{SecretBox, Services};
use aspen_blob::{LocalBlobs, RangeStream};
use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_core::{KeyValue, LeaseId};
use aspen_kv::{KvError, KvExt, SharedKv};
use tokio::io::AsyncRead;

use crate::gc;
use crate::nar::NarSummary;
use crate::narinfo::{NarInfo, Sha256, StorePathName};
use crate::nix32;
use crate::protocol::{CacheInfo, CacheSettings, GcReport, PathAdded, PathUpload};
use crate::records::{
    self, CacheRecord, Compression, PathRecord, PinRecord, StagedNar, activity_key, blob_pin, cache_key, path_key,
    pin_key, secret_key, staged_key,
};
use crate::rights::{self, ADMIN, READ, WRITE};
use crate::signing::SigningKey;

/// Attempts of a commit or a collection that lost a race with another.
const ATTEMPTS: usize = 8;
/// How long a staged NAR waits for its narinfo.
const STAGED_TTL: Duration = Duration::from_secs(2 * 3600);
/// Most signatures a path keeps, and their longest.
const MAX_SIGS: usize = 16;
const MAX_SIG_BYTES: usize = 512;
/// Most rendered narinfo kept per cache (about 0.5 KiB each); past it, that cache's memo
/// starts afresh.
const MAX_RENDERED: usize = 16_384;
/// A rendered narinfo: for which version of the path entry and which compression.
type Rendered = ((u64, Compression), Arc<str>);
/// Paths whose deletes go in one transaction (three operations each).
const GC_BATCH: usize = 40;

pub(crate) fn kv_error(e: KvError) -> AspenError {
    match e {
        KvError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

fn missing_cache(name: &str) -> AspenError {
    AspenError::invalid(format!("there is no cache named {name:?} (make it with `aspen cache create {name}`)"))
}

/// The cache's operations (see the module docs).
pub struct CacheService {
    kv: SharedKv,
    services: Arc<Services>,
    secrets: Option<Arc<SecretBox>>,
    /// Signing keys opened so far, by cache.
    keys: Mutex<HashMap<String, Arc<SigningKey>>>,
    /// Narinfo rendered so far, by cache and hash part, each with the path entry's
    /// `mod_revision` and the compression it was rendered for: a hit still reads both
    /// records, so it is exactly as fresh as a render, without the decoding and rendering.
    rendered: Mutex<HashMap<String, HashMap<String, Rendered>>>,
    /// The lease staged NARs share for a while.
    staged_lease: tokio::sync::Mutex<Option<(LeaseId, Instant)>>,
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService").finish_non_exhaustive()
    }
}

/// Whether `caps` may read cache `name` made as `record`: anyone reads a public cache,
/// holders of `read` or `write` read the others.
fn may_read(caps: Option<&[Capability]>, name: &str, record: &CacheRecord) -> Result<(), AspenError> {
    if record.public_reads {
        return Ok(());
    }
    match caps {
        None => Err(AspenError::Unauthenticated { reason: format!("cache {name:?} is readable only with a token") }),
        Some(caps) if rights::allows(caps, WRITE, name) => Ok(()),
        Some(caps) => rights::require(caps, READ, name),
    }
}

/// The narinfo the gateway serves for `record` of a cache serving `compression`.
pub fn render_narinfo(record: &PathRecord, compression: Compression) -> Result<String, AspenError> {
    let store_path = StorePathName::parse(&record.store_path)?;
    let nar_hash = Sha256(record.nar_hash);
    let url = format!("nar/{}-{}{}", store_path.hash_part(), nix32::encode(&record.nar_hash), compression.extension());
    let uncompressed = compression == Compression::None;
    let info = NarInfo {
        url,
        compression: compression.nix_name().to_string(),
        file_hash: uncompressed.then_some(nar_hash),
        file_size: uncompressed.then_some(record.nar_size),
        nar_hash,
        nar_size: record.nar_size,
        references: record.references.iter().map(|r| StorePathName::parse(r)).collect::<Result<_, _>>()?,
        deriver: record.deriver.as_deref().map(StorePathName::parse).transpose()?,
        sigs: record.sigs.clone(),
        ca: record.ca.clone(),
        store_path,
    };
    Ok(info.render())
}

/// Parses a NAR URL the gateway hands out: `<hash part>-<nar hash>` and its compression.
pub fn parse_nar_file(file: &str) -> Result<(String, [u8; 32], Compression), AspenError> {
    let compression = Compression::of_file_name(file)?;
    let stem = &file[..file.len() - compression.extension().len()];
    let bad =
        || AspenError::invalid(format!("NAR file {file:?} is not <hash part>-<nar hash>{}", compression.extension()));
    let (hash_part, nar_hash) = stem.split_once('-').ok_or_else(bad)?;
    if hash_part.len() != crate::narinfo::HASH_PART_LEN {
        return Err(bad());
    }
    let nar_hash: [u8; 32] = nix32::decode(nar_hash, 32).map_err(|_| bad())?.try_into().map_err(|_| bad())?;
    Ok((hash_part.to_string(), nar_hash, compression))
}

impl CacheService {
    pub fn new(kv: SharedKv, services: Arc<Services>, secrets: Option<Arc<SecretBox>>) -> Self {
        CacheService {
            kv,
            services,
            secrets,
            keys: Mutex::new(HashMap::new()),
            rendered: Mutex::new(HashMap::new()),
            staged_lease: tokio::sync::Mutex::new(None),
        }
    }

    fn blobs(&self) -> Result<Arc<LocalBlobs>, AspenError> {
        self.services.get::<LocalBlobs>(LocalBlobs::SERVICE).ok_or_else(|| AspenError::Unavailable {
            reason: "the cache needs the blob app on this node, and it is not running".into(),
        })
    }

    /// Cache `name`'s record, if it exists.
    async fn record(&self, name: &str, consistency: ReadConsistency) -> Result<Option<CacheRecord>, AspenError> {
        match self.kv.get(cache_key(name), consistency).await.map_err(kv_error)? {
            Some(kv) => Ok(Some(records::decode("cache", &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Cache `name`'s record if `caps` may read it; `None` if there is no such cache.
    pub async fn readable(
        &self,
        caps: Option<&[Capability]>,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<Option<CacheRecord>, AspenError> {
        records::validate_cache_name(name)?;
        let Some(record) = self.record(name, consistency).await? else { return Ok(None) };
        may_read(caps, name, &record)?;
        Ok(Some(record))
    }

    pub async fn create_cache(
        &self,
        caps: &[Capability],
        name: &str,
        settings: &CacheSettings,
    ) -> Result<CacheInfo, AspenError> {
        records::validate_cache_name(name)?;
        rights::require(caps, ADMIN, name)?;
        let secrets = self.secrets.as_ref().ok_or_else(|| aspen_app::secrets::no_secrets_key(rights::APP))?;
        let key_name = settings.key_name.clone().unwrap_or_else(|| format!("{name}-1"));
        let key = SigningKey::generate(&key_name)?;
        let record = CacheRecord {
            created_ms: aspen_net::now_ms(),
            public_key: key.public_key(),
            public_reads: settings.public_reads,
            compression: settings.compression,
            retention_secs: settings.retention_secs,
            priority: settings.priority,
        };
        let label = secret_key(name);
        let sealed = secrets.seal(&label, key.to_secret_text().as_bytes())?;
        let txn = Txn {
            compare: vec![Compare { key: cache_key(name), op: CompareOp::Equal, target: CompareTarget::Version(0) }],
            success: vec![
                TxnOp::Put { key: cache_key(name), value: records::encode(&record), lease: None },
                TxnOp::Put { key: label, value: sealed, lease: None },
            ],
            failure: Vec::new(),
        };
        if !self.kv.txn(txn).await.map_err(kv_error)?.succeeded {
            return Err(AspenError::invalid(format!("cache {name:?} exists already")));
        }
        Ok(CacheInfo { name: name.to_string(), record })
    }

    /// Caches after `after`, those `caps` may read.
    pub async fn list_caches(
        &self,
        caps: &[Capability],
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<CacheInfo>, bool), AspenError> {
        let (all, _) =
            self.kv.scan_all(records::caches_prefix(), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let mut caches = Vec::new();
        for kv in all {
            let name = records::last_part(&kv.key);
            if after.is_some_and(|a| name.as_str() <= a) {
                continue;
            }
            let record: CacheRecord = records::decode("cache", &kv.value)?;
            if may_read(Some(caps), &name, &record).is_ok() || rights::allows(caps, ADMIN, &name) {
                caches.push(CacheInfo { name, record });
            }
        }
        let limit = (limit.clamp(1, crate::protocol::MAX_LIST)) as usize;
        let more = caches.len() > limit;
        caches.truncate(limit);
        Ok((caches, more))
    }

    /// The signing key of cache `name`, opened with the secrets key.
    async fn signing_key(&self, name: &str) -> Result<Arc<SigningKey>, AspenError> {
        if let Some(key) = self.keys.lock().ok().and_then(|k| k.get(name).cloned()) {
            return Ok(key);
        }
        let secrets = self.secrets.as_ref().ok_or_else(|| aspen_app::secrets::no_secrets_key(rights::APP))?;
        let label = secret_key(name);
        let sealed = self
            .kv
            .get(&label, ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?
            .ok_or_else(|| AspenError::internal(format!("cache {name:?} has no signing key stored")))?;
        let text = secrets.open(&label, &sealed.value)?;
        let text = String::from_utf8(text).map_err(|_| AspenError::internal("a stored signing key is not text"))?;
        let key = Arc::new(SigningKey::parse(&text)?);
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(name.to_string(), key.clone());
        }
        Ok(key)
    }

    /// The signed narinfo of `hash_part` in `cache`, as served. A hit is read from this
    /// node's state; a miss is confirmed with a linearizable read, since nix remembers a
    /// miss for an hour.
    pub async fn narinfo(
        &self,
        caps: Option<&[Capability]>,
        cache: &str,
        hash_part: &str,
    ) -> Result<Option<String>, AspenError> {
        let Some((record, kv)) = self.lookup(caps, cache, hash_part).await? else { return Ok(None) };
        let version = (kv.mod_revision, record.compression);
        if let Ok(memo) = self.rendered.lock()
            && let Some((v, text)) = memo.get(cache).and_then(|paths| paths.get(hash_part))
            && *v == version
        {
            return Ok(Some(text.to_string()));
        }
        let text = render_narinfo(&records::decode("path", &kv.value)?, record.compression)?;
        if let Ok(mut memo) = self.rendered.lock() {
            let paths = memo.entry(cache.to_string()).or_default();
            if paths.len() >= MAX_RENDERED {
                paths.clear();
            }
            paths.insert(hash_part.to_string(), (version, Arc::from(text.as_str())));
        }
        Ok(Some(text))
    }

    /// A cache's record and one of its paths' KV entry, read stale first, then
    /// linearizable on a miss (a path just pushed through another node).
    async fn lookup(
        &self,
        caps: Option<&[Capability]>,
        cache: &str,
        hash_part: &str,
    ) -> Result<Option<(CacheRecord, KeyValue)>, AspenError> {
        validate_hash_part(hash_part)?;
        for consistency in [ReadConsistency::Stale, ReadConsistency::Linearizable] {
            let Some(record) = self.readable(caps, cache, consistency).await? else { continue };
            if let Some(kv) = self.kv.get(path_key(cache, hash_part), consistency).await.map_err(kv_error)? {
                return Ok(Some((record, kv)));
            }
        }
        Ok(None)
    }

    /// The record of `hash_part` if `caps` may read the cache, it holds the path, and its NAR
    /// hashes to `nar_hash` (when given).
    pub async fn nar_path(
        &self,
        caps: Option<&[Capability]>,
        cache: &str,
        hash_part: &str,
        nar_hash: Option<[u8; 32]>,
    ) -> Result<Option<PathRecord>, AspenError> {
        let Some((_, kv)) = self.lookup(caps, cache, hash_part).await? else { return Ok(None) };
        let path: PathRecord = records::decode("path", &kv.value)?;
        Ok(nar_hash.is_none_or(|h| h == path.nar_hash).then_some(path))
    }

    /// Bytes `offset..offset + len` of `path`'s NAR, uncompressed.
    pub async fn open_nar(&self, path: &PathRecord, offset: u64, len: u64) -> Result<RangeStream, AspenError> {
        self.blobs()?.read_range(path.nar_blob, offset, len).await
    }

    /// Which of `store_paths` (base names) the cache lacks.
    pub async fn query_missing(
        &self,
        caps: &[Capability],
        cache: &str,
        store_paths: &[String],
    ) -> Result<Vec<String>, AspenError> {
        if store_paths.len() > crate::protocol::MAX_LIST as usize {
            return Err(AspenError::invalid(format!(
                "{} paths in one query; at most MAX_LIST = {}",
                store_paths.len(),
                crate::protocol::MAX_LIST
            )));
        }
        self.readable(Some(caps), cache, ReadConsistency::Linearizable).await?.ok_or_else(|| missing_cache(cache))?;
        let mut missing = Vec::new();
        for path in store_paths {
            let name = StorePathName::parse(path)?;
            let found = self.kv.get(path_key(cache, name.hash_part()), ReadConsistency::Linearizable).await;
            if found.map_err(kv_error)?.is_none() {
                missing.push(path.clone());
            }
        }
        Ok(missing)
    }

    /// Adds a path whose NAR `input` streams: checked, hashed against the declared hash,
    /// stored, signed and recorded. Nothing is recorded unless all of it holds.
    pub async fn add_path(
        &self,
        caps: &[Capability],
        cache: &str,
        upload: PathUpload,
        input: impl AsyncRead + Unpin + Send,
    ) -> Result<PathAdded, AspenError> {
        self.writable(caps, cache).await?;
        check_upload(&upload)?;
        let expected = NarSummary { nar_hash: Sha256(upload.nar_hash), nar_size: upload.nar_size };
        let (added, _) = crate::ingest::ingest(&*self.blobs()?, input, Some(expected)).await?;
        self.commit(cache, upload, added.hash, added.replicas, None).await
    }

    /// Fails unless `caps` may write to `cache` and it exists.
    async fn writable(&self, caps: &[Capability], cache: &str) -> Result<CacheRecord, AspenError> {
        records::validate_cache_name(cache)?;
        rights::require(caps, WRITE, cache)?;
        self.record(cache, ReadConsistency::Linearizable).await?.ok_or_else(|| missing_cache(cache))
    }

    /// Stages a NAR file `nix copy --to http://` uploads before its narinfo. The file is
    /// compressed as its name says; when its name is a nix32 SHA-256, the file must hash
    /// to it.
    pub async fn stage_nar(
        &self,
        caps: &[Capability],
        cache: &str,
        file_name: &str,
        input: impl AsyncRead + Unpin + Send + 'static,
    ) -> Result<StagedNar, AspenError> {
        self.writable(caps, cache).await?;
        validate_file_name(file_name)?;
        let compression = Compression::of_file_name(file_name)?;
        let stem = &file_name[..file_name.len() - compression.extension().len()];
        let declared: Option<[u8; 32]> = nix32::decode(stem, 32).ok().and_then(|d| d.try_into().ok());
        let (hashing, file_hash) = crate::compress::HashingReader::new(input);
        let decoded = crate::compress::decoder(compression, hashing);
        let (added, summary) = crate::ingest::ingest(&*self.blobs()?, decoded, None).await?;
        if let Some(declared) = declared {
            let found = file_hash.get();
            if found != declared {
                return Err(AspenError::invalid(format!(
                    "NAR file {file_name:?} hashes to {}, not to its name; nothing was stored",
                    nix32::encode(&found)
                )));
            }
        }
        let staged = StagedNar { nar_blob: added.hash, nar_hash: summary.nar_hash.0, nar_size: summary.nar_size };
        let lease = self.staged_lease().await?;
        self.kv
            .put_with_lease(staged_key(cache, file_name), records::encode(&staged), lease)
            .await
            .map_err(kv_error)?;
        Ok(staged)
    }

    async fn staged_lease(&self) -> Result<LeaseId, AspenError> {
        let mut cached = self.staged_lease.lock().await;
        if let Some((id, granted)) = *cached
            && granted.elapsed() < STAGED_TTL / 4
        {
            return Ok(id);
        }
        let granted = Instant::now();
        let lease = self.kv.lease_grant(STAGED_TTL).await.map_err(kv_error)?;
        *cached = Some((lease.id, granted));
        Ok(lease.id)
    }

    /// Adds a path from a narinfo whose URL names a NAR staged in this cache.
    pub async fn add_narinfo(&self, caps: &[Capability], cache: &str, text: &str) -> Result<PathAdded, AspenError> {
        self.writable(caps, cache).await?;
        let info = NarInfo::parse(text)?;
        let file_name = info.url.strip_prefix("nar/").unwrap_or(&info.url);
        validate_file_name(file_name)?;
        let staged_at = staged_key(cache, file_name);
        let staged = self.kv.get(&staged_at, ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let staged: StagedNar = match staged {
            Some(kv) => records::decode("staged NAR", &kv.value)?,
            None => {
                return Err(AspenError::invalid(format!(
                    "the narinfo of {} names NAR {:?}, which was not uploaded to cache {cache:?} (or its upload was refused)",
                    info.store_path.path(),
                    info.url
                )));
            }
        };
        if staged.nar_hash != info.nar_hash.0 || staged.nar_size != info.nar_size {
            return Err(AspenError::invalid(format!(
                "the narinfo of {} declares NarHash {} and NarSize {}, but the uploaded NAR hashes to {} with {} bytes; nothing was stored",
                info.store_path.path(),
                info.nar_hash,
                info.nar_size,
                Sha256(staged.nar_hash),
                staged.nar_size
            )));
        }
        let upload = PathUpload {
            store_path: info.store_path.as_str().to_string(),
            nar_hash: info.nar_hash.0,
            nar_size: info.nar_size,
            references: info.references.iter().map(|r| r.as_str().to_string()).collect(),
            deriver: info.deriver.as_ref().map(|d| d.as_str().to_string()),
            ca: info.ca.clone(),
            sigs: info.sigs.clone(),
        };
        check_upload(&upload)?;
        let replicas = self.blobs()?.has(staged.nar_blob).await?.map(|_| 1).unwrap_or(0);
        if replicas == 0 {
            return Err(AspenError::invalid(format!("the staged NAR {:?} is gone; upload it again", info.url)));
        }
        self.commit(cache, upload, staged.nar_blob, replicas, Some(staged_at)).await
    }

    /// Records a path whose NAR is blob `blob`: signed with the cache's key, its NAR pinned,
    /// its references required present. Fenced against garbage collection: the commit
    /// requires that no collection deleted anything since the references were checked.
    async fn commit(
        &self,
        cache: &str,
        upload: PathUpload,
        blob: [u8; 32],
        replicas: u32,
        staged: Option<Vec<u8>>,
    ) -> Result<PathAdded, AspenError> {
        let key = self.signing_key(cache).await?;
        let name = StorePathName::parse(&upload.store_path)?;
        let hash_part = name.hash_part().to_string();
        let mut record = PathRecord {
            store_path: upload.store_path.clone(),
            nar_blob: blob,
            nar_hash: upload.nar_hash,
            nar_size: upload.nar_size,
            references: upload.references.clone(),
            deriver: upload.deriver.clone(),
            ca: upload.ca.clone(),
            sigs: Vec::new(),
            pushed_ms: aspen_net::now_ms(),
        };
        let fingerprint = NarInfo::parse(&render_narinfo(&record, Compression::None)?)?.fingerprint();
        let own = key.sign(&fingerprint);
        record.sigs.push(own);
        let prefix = format!("{}:", key.name());
        record.sigs.extend(upload.sigs.iter().filter(|s| !s.starts_with(&prefix)).cloned());
        for _ in 0..ATTEMPTS {
            let fence =
                self.kv.get(records::gc_fence_key(cache), ReadConsistency::Linearizable).await.map_err(kv_error)?;
            let fence_revision = fence.map(|f| f.mod_revision).unwrap_or(0);
            for reference in &record.references {
                let r = gc::hash_part(reference);
                if r == hash_part {
                    continue;
                }
                if self.kv.get(path_key(cache, r), ReadConsistency::Linearizable).await.map_err(kv_error)?.is_none() {
                    return Err(AspenError::invalid(format!(
                        "{} references {}, which cache {cache:?} does not hold: push the whole closure, references first",
                        name.path(),
                        StorePathName::parse(reference).map(|r| r.path()).unwrap_or_else(|_| reference.clone())
                    )));
                }
            }
            let current =
                self.kv.get(path_key(cache, &hash_part), ReadConsistency::Linearizable).await.map_err(kv_error)?;
            let replaced = match &current {
                Some(kv) => Some(records::decode::<PathRecord>("path", &kv.value)?.nar_blob),
                None => None,
            };
            let mut success = vec![
                TxnOp::Put { key: path_key(cache, &hash_part), value: records::encode(&record), lease: None },
                TxnOp::Put { key: activity_key(cache), value: Vec::new(), lease: None },
            ];
            success.extend(aspen_blob::records::pin_ops(&blob_pin(cache, &hash_part), &blob, replaced.as_ref()));
            if let Some(staged) = &staged {
                success.push(TxnOp::Delete { key: staged.clone() });
            }
            let txn = Txn {
                compare: vec![
                    Compare { key: cache_key(cache), op: CompareOp::Greater, target: CompareTarget::Version(0) },
                    Compare {
                        key: records::gc_fence_key(cache),
                        op: CompareOp::Equal,
                        target: CompareTarget::ModRevision(fence_revision),
                    },
                ],
                success,
                failure: Vec::new(),
            };
            if self.kv.txn(txn).await.map_err(kv_error)?.succeeded {
                return Ok(PathAdded { store_path: upload.store_path, nar_blob: blob, replicas });
            }
            if self.record(cache, ReadConsistency::Linearizable).await?.is_none() {
                return Err(missing_cache(cache));
            }
        }
        Err(AspenError::Unavailable {
            reason: format!("adding {} kept losing races with garbage collection; try again", name.path()),
        })
    }

    pub async fn pin(&self, caps: &[Capability], cache: &str, pin: &str, store_path: &str) -> Result<(), AspenError> {
        self.writable(caps, cache).await?;
        records::validate_pin_name(pin)?;
        let name = StorePathName::parse(store_path.strip_prefix("/nix/store/").unwrap_or(store_path))?;
        let record = PinRecord { store_path: name.as_str().to_string(), created_ms: aspen_net::now_ms() };
        let txn = Txn {
            compare: vec![Compare {
                key: path_key(cache, name.hash_part()),
                op: CompareOp::Greater,
                target: CompareTarget::Version(0),
            }],
            success: vec![TxnOp::Put { key: pin_key(cache, pin), value: records::encode(&record), lease: None }],
            failure: Vec::new(),
        };
        if !self.kv.txn(txn).await.map_err(kv_error)?.succeeded {
            return Err(AspenError::invalid(format!("cache {cache:?} does not hold {}", name.path())));
        }
        Ok(())
    }

    pub async fn unpin(&self, caps: &[Capability], cache: &str, pin: &str) -> Result<(), AspenError> {
        self.writable(caps, cache).await?;
        records::validate_pin_name(pin)?;
        let deleted = self.kv.delete(pin_key(cache, pin)).await.map_err(kv_error)?;
        if deleted.deleted == 0 {
            return Err(AspenError::invalid(format!("cache {cache:?} has no pin named {pin:?}")));
        }
        Ok(())
    }

    pub async fn list_pins(&self, caps: &[Capability], cache: &str) -> Result<Vec<(String, PinRecord)>, AspenError> {
        self.readable(Some(caps), cache, ReadConsistency::Linearizable).await?.ok_or_else(|| missing_cache(cache))?;
        let (pins, _) =
            self.kv.scan_all(records::pins_prefix(cache), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        pins.iter().map(|kv| Ok((records::last_part(&kv.key), records::decode("pin", &kv.value)?))).collect()
    }

    /// Collects cache `cache`'s garbage (see [`crate::gc`]): deletes the paths no pin and no
    /// recent push keeps, never a reference of a kept path. Each batch of deletes requires
    /// that no path was added since the decision; if one was, the decision is made again.
    pub async fn collect_garbage(
        &self,
        caps: Option<&[Capability]>,
        cache: &str,
        dry_run: bool,
    ) -> Result<GcReport, AspenError> {
        if let Some(caps) = caps {
            rights::require(caps, ADMIN, cache)?;
        }
        let record = self.record(cache, ReadConsistency::Linearizable).await?.ok_or_else(|| missing_cache(cache))?;
        'attempt: for _ in 0..ATTEMPTS {
            let activity = self.kv.get(activity_key(cache), ReadConsistency::Linearizable).await.map_err(kv_error)?;
            let activity_revision = activity.map(|a| a.mod_revision).unwrap_or(0);
            let (paths, _) = self
                .kv
                .scan_all(records::paths_prefix(cache), ReadConsistency::Linearizable)
                .await
                .map_err(kv_error)?;
            let paths: BTreeMap<String, PathRecord> = paths
                .iter()
                .map(|kv| Ok((records::last_part(&kv.key), records::decode("path", &kv.value)?)))
                .collect::<Result<_, AspenError>>()?;
            let pinned: BTreeSet<String> = self
                .kv
                .scan_all(records::pins_prefix(cache), ReadConsistency::Linearizable)
                .await
                .map_err(kv_error)?
                .0
                .iter()
                .filter_map(|kv| records::decode::<PinRecord>("pin", &kv.value).ok())
                .map(|p| gc::hash_part(&p.store_path).to_string())
                .collect();
            let kept = gc::keep(&paths, &pinned, aspen_net::now_ms(), record.retention_secs.saturating_mul(1000));
            let doomed: Vec<(&String, &PathRecord)> = paths.iter().filter(|(h, _)| !kept.contains(*h)).collect();
            let mut report = GcReport { kept: kept.len() as u64, dry_run, ..GcReport::default() };
            if dry_run {
                report.deleted = doomed.len() as u64;
                report.deleted_bytes = doomed.iter().map(|(_, p)| p.nar_size).sum();
                return Ok(report);
            }
            for batch in doomed.chunks(GC_BATCH) {
                let mut success =
                    vec![TxnOp::Put { key: records::gc_fence_key(cache), value: Vec::new(), lease: None }];
                for (hash, path) in batch {
                    success.push(TxnOp::Delete { key: path_key(cache, hash) });
                    success.extend(aspen_blob::records::unpin_ops(&blob_pin(cache, hash), &path.nar_blob));
                }
                let txn = Txn {
                    compare: vec![Compare {
                        key: activity_key(cache),
                        op: CompareOp::Equal,
                        target: CompareTarget::ModRevision(activity_revision),
                    }],
                    success,
                    failure: Vec::new(),
                };
                if !self.kv.txn(txn).await.map_err(kv_error)?.succeeded {
                    continue 'attempt;
                }
                report.deleted += batch.len() as u64;
                report.deleted_bytes += batch.iter().map(|(_, p)| p.nar_size).sum::<u64>();
            }
            return Ok(report);
        }
        Err(AspenError::Unavailable { reason: format!("collecting {cache:?} kept racing pushes; try again") })
    }

    /// Every cache's name, for background collection.
    pub async fn cache_names(&self) -> Result<Vec<(String, CacheRecord)>, AspenError> {
        let (all, _) =
            self.kv.scan_all(records::caches_prefix(), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        all.iter().map(|kv| Ok((records::last_part(&kv.key), records::decode("cache", &kv.value)?))).collect()
    }
}

fn validate_hash_part(hash_part: &str) -> Result<(), AspenError> {
    if hash_part.len() != crate::narinfo::HASH_PART_LEN || nix32::decode(hash_part, 20).is_err() {
        return Err(AspenError::invalid(format!("{hash_part:?} is not a store path hash (32 nix32 characters)")));
    }
    Ok(())
}

/// Upload file names: what nix names them (`<nix32>.nar.xz`), or any name of `a-z 0-9 - _ .`.
fn validate_file_name(name: &str) -> Result<(), AspenError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(AspenError::invalid(format!("{name:?} cannot name an uploaded NAR file")));
    }
    Ok(())
}

fn check_upload(upload: &PathUpload) -> Result<(), AspenError> {
    StorePathName::parse(&upload.store_path)?;
    for r in &upload.references {
        StorePathName::parse(r)?;
    }
    if let Some(d) = &upload.deriver {
        StorePathName::parse(d)?;
    }
    if upload.sigs.len() > MAX_SIGS || upload.sigs.iter().any(|s| s.len() > MAX_SIG_BYTES) {
        return Err(AspenError::invalid(format!(
            "a path carries at most {MAX_SIGS} signatures of at most {MAX_SIG_BYTES} bytes"
        )));
    }
    for s in &upload.sigs {
        crate::signing::split_signature(s)?;
    }
    Ok(())
}
