//! The server side of `git push`: git's receive-pack protocol (gitprotocol-pack), spoken
//! by the forge itself so that every ref update is a compare-and-swap in Raft.
//!
//! One push, in order:
//! 1. advertise the refs (one KV snapshot) and the capabilities;
//! 2. read the commands (`old new ref`) the client sends;
//! 3. read the pack, verify it and its references ([`crate::objects::receive_pack`]);
//! 4. judge each command: the old id matches, the new object is there, protected branches
//!    move only forward and are never deleted, the default branch is never deleted;
//! 5. store the pack and its index as blobs (replicated before the add returns);
//! 6. move the refs in transactions that also pin the pack, record it, and append one push
//!    event per ref; a ref that moved since the snapshot fails its compare and is reported
//!    as git reports a lost ref lock;
//! 7. report per ref, over side-band when the client asked for it.
//!
//! `--atomic` pushes go in one transaction, so at most [`MAX_REFS_PER_TXN`] refs: a larger
//! atomic push is refused whole, with a message saying so. A push without `--atomic` is
//! split into as many transactions as it needs, the pack pinned by the first.

use std::sync::Arc;
use std::time::Duration;

use aspen_app::Caller;
use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_kv::KvExt;
use iroh::endpoint::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;

use crate::names::{branch_ref, validate_ref_name};
use crate::objects::{PackSet, Received};
use crate::pktline::{self, Pkt};
use crate::records::{self, ObjectId, PackRecord, PushEvent};
use crate::server::{ForgeHandler, Snapshot, kv_error};

/// Most refs one transaction moves: each takes a compare, a put and an event, beside the
/// pack's record, pins and the activity marker, within `MAX_TXN_OPS` (128).
pub const MAX_REFS_PER_TXN: usize = 60;
/// Attempts at one group of ref updates that lost a race or met a leader change.
const TXN_ATTEMPTS: usize = 8;
/// Longest a client may take to send its commands, and each read of its pack.
const CLIENT_IDLE: Duration = Duration::from_secs(300);

const ZERO_ID: &str = "0000000000000000000000000000000000000000";
const CAPABILITIES: &str =
    "report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta object-format=sha1";

/// One command the client sent, and what became of it.
#[derive(Debug, Clone)]
struct Command {
    name: String,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
    /// Why it was refused (git's `ng` reason), once judged.
    refused: Option<String>,
}

/// What the client asked for beside its commands.
#[derive(Debug, Default)]
struct Options {
    report_status: bool,
    side_band: bool,
    quiet: bool,
    atomic: bool,
}

fn parse_id(text: &[u8]) -> Result<Option<ObjectId>, AspenError> {
    let text = std::str::from_utf8(text).map_err(|_| AspenError::invalid("an object id is not text"))?;
    if text == ZERO_ID {
        return Ok(None);
    }
    records::parse_object_id(text).map(Some)
}

/// Writes all of `bytes` (through tokio's trait: iroh's own `write_all` has another error).
async fn put(send: &mut SendStream, bytes: &[u8]) -> std::io::Result<()> {
    AsyncWriteExt::write_all(send, bytes).await
}

fn agent() -> String {
    format!("agent=aspen/{}", env!("CARGO_PKG_VERSION"))
}

/// Writes the report (and progress) the client reads, over side-band when asked.
struct Reporter<'a> {
    send: &'a mut SendStream,
    side_band: bool,
    quiet: bool,
}

impl Reporter<'_> {
    async fn progress(&mut self, text: &str) {
        if self.side_band && !self.quiet {
            let _ = put(self.send, &pktline::encode_band(pktline::BAND_PROGRESS, text.as_bytes())).await;
        }
    }

    async fn report(&mut self, unpack: &str, commands: &[Command]) -> std::io::Result<()> {
        let mut body = pktline::encode(format!("unpack {unpack}\n").as_bytes());
        for c in commands {
            let line = match &c.refused {
                None => format!("ok {}\n", c.name),
                Some(why) => format!("ng {} {}\n", c.name, why.replace('\n', " ")),
            };
            body.extend_from_slice(&pktline::encode(line.as_bytes()));
        }
        body.extend_from_slice(pktline::FLUSH);
        if self.side_band {
            let mut out = pktline::encode_band(pktline::BAND_DATA, &body);
            out.extend_from_slice(pktline::FLUSH);
            put(self.send, &out).await
        } else {
            put(self.send, &body).await
        }
    }
}

impl ForgeHandler {
    /// Serves one push on `repo` (the caller's `push` right already checked).
    pub(crate) async fn receive_pack(
        &self,
        caller: &Caller,
        snapshot: Snapshot,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), AspenError> {
        let io = |e: std::io::Error| AspenError::Unavailable { reason: format!("push stream: {e}") };
        put(&mut send, &advertisement(&snapshot)).await.map_err(io)?;

        let (options, mut commands) = match tokio::time::timeout(CLIENT_IDLE, read_commands(&mut recv)).await {
            Ok(Ok(Some(read))) => read,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => {
                let _ = put(&mut send, &pktline::encode(format!("ERR {e}\n").as_bytes())).await;
                return Err(e);
            }
            Err(_) => return Err(AspenError::invalid("the client sent no commands in time")),
        };
        let mut reporter = Reporter { send: &mut send, side_band: options.side_band, quiet: options.quiet };
        let wants_pack = commands.iter().any(|c| c.new.is_some());

        let received = if wants_pack {
            match self.read_pack(&snapshot, recv).await {
                Ok(received) => received,
                Err(e) => {
                    let why = match e {
                        AspenError::InvalidRequest { reason } => reason,
                        other => other.to_string(),
                    };
                    for c in &mut commands {
                        c.refused = Some("unpacker error".into());
                    }
                    if options.report_status {
                        reporter.report(&why, &commands).await.map_err(io)?;
                    }
                    let _ = reporter.send.finish();
                    return Ok(());
                }
            }
        } else {
            None
        };

        // The pack's files stay in this node's cache even if no ref comes to reach them:
        // harmless, and a retry of the same push finds them there.
        let outcome = self.apply(caller, &snapshot, &options, &mut commands, received.as_ref(), &mut reporter).await;
        if let Err(e) = outcome {
            for c in commands.iter_mut().filter(|c| c.refused.is_none()) {
                c.refused = Some(format!("not stored: {e}"));
            }
        }
        if options.report_status {
            reporter.report("ok", &commands).await.map_err(io)?;
        }
        let _ = reporter.send.finish();
        Ok(())
    }

    /// Reads, verifies and caches the pack the client sends.
    async fn read_pack(&self, snapshot: &Snapshot, recv: RecvStream) -> Result<Option<Received>, AspenError> {
        let indexes = self.store.index_paths(&snapshot.packs).await?;
        let existing = Arc::new(PackSet::open(&indexes)?);
        let dir = self.store.incoming_dir()?;
        let checked_against = existing;
        let target = dir.clone();
        let handle = tokio::runtime::Handle::current();
        let received = tokio::task::spawn_blocking(move || {
            let _guard = handle.enter();
            let bridge = tokio_util::io::SyncIoBridge::new_with_handle(recv, handle.clone());
            let mut input = std::io::BufReader::with_capacity(256 * 1024, bridge);
            crate::objects::receive_pack(&mut input, &target, checked_against)
        })
        .await
        .map_err(|e| AspenError::internal(format!("the pack reader stopped: {e}")))?;
        let received = match received {
            Ok(Some(r)) => r,
            Ok(None) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        self.store.adopt(&received.name, &received.pack, &received.index)?;
        let _ = std::fs::remove_dir_all(&dir);
        let (pack, index) = self.store.pack_paths(&received.name);
        Ok(Some(Received { pack, index, ..received }))
    }

    /// Judges the commands, stores the pack and moves the refs.
    async fn apply(
        &self,
        caller: &Caller,
        snapshot: &Snapshot,
        options: &Options,
        commands: &mut [Command],
        received: Option<&Received>,
        reporter: &mut Reporter<'_>,
    ) -> Result<(), AspenError> {
        // A shallow client's `shallow` lines need no handling: the pack passed the check
        // that everything it names is stored, so no ref can come to reach a missing parent.
        let mut indexes = self.store.index_paths(&snapshot.packs).await?;
        indexes.extend(received.map(|r| r.index.clone()));
        let judged = {
            let (snapshot, mut commands) = (snapshot.clone(), commands.to_vec());
            tokio::task::spawn_blocking(move || {
                let objects = PackSet::open(&indexes)?;
                judge(&snapshot, &mut commands, &objects).map(|()| commands)
            })
            .await
            .map_err(|e| AspenError::internal(format!("judging the push stopped: {e}")))??
        };
        commands.clone_from_slice(&judged);
        if options.atomic && commands.iter().any(|c| c.refused.is_some()) {
            for c in commands.iter_mut().filter(|c| c.refused.is_none()) {
                c.refused = Some("atomic push failure".into());
            }
            return Ok(());
        }
        let accepted: Vec<usize> = (0..commands.len()).filter(|&i| commands[i].refused.is_none()).collect();
        if accepted.is_empty() {
            return Ok(());
        }
        if options.atomic && accepted.len() > MAX_REFS_PER_TXN {
            let why = format!(
                "atomic push of {} refs is over the {MAX_REFS_PER_TXN} one transaction holds; push them in smaller \
                 groups, or without --atomic",
                accepted.len()
            );
            for &i in &accepted {
                commands[i].refused = Some(why.clone());
            }
            return Ok(());
        }

        // Store the pack, unless it holds nothing new.
        let mut pack = None;
        if let Some(r) = received {
            let (pack_hash, index_hash, replicas) = self.store.store_blobs(&r.pack, &r.index).await?;
            reporter
                .progress(&format!(
                    "aspen: stored pack {} ({} objects, {} bytes) on {} nodes\n",
                    &r.name[..12],
                    r.objects,
                    r.bytes,
                    replicas
                ))
                .await;
            let record = PackRecord {
                pack: pack_hash,
                index: index_hash,
                objects: r.objects,
                bytes: r.bytes,
                added_ms: aspen_net::now_ms(),
            };
            pack = Some((r.name.clone(), record));
        }

        let pusher = data_encoding::HEXLOWER.encode(&caller.remote_key());
        let groups: Vec<Vec<usize>> = accepted.chunks(MAX_REFS_PER_TXN).map(<[usize]>::to_vec).collect();
        for group in groups {
            let stored = self.move_refs(snapshot, commands, &group, pack.as_ref(), &pusher).await?;
            if stored {
                pack = None;
            }
        }
        Ok(())
    }

    /// Moves the refs of `group` in one transaction (with the pack's record and pins, when
    /// given), retrying without the refs that lost a race. Returns whether the pack was
    /// recorded.
    async fn move_refs(
        &self,
        snapshot: &Snapshot,
        commands: &mut [Command],
        group: &[usize],
        pack: Option<&(String, PackRecord)>,
        pusher: &str,
    ) -> Result<bool, AspenError> {
        let repo = snapshot.repo.as_str();
        let mut live: Vec<usize> = group.to_vec();
        for attempt in 0..TXN_ATTEMPTS {
            if live.is_empty() {
                return Ok(false);
            }
            let now = aspen_net::now_ms();
            let mut compare = vec![Compare {
                key: records::repo_key(repo),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(snapshot.record_revision),
            }];
            let mut success = Vec::new();
            if let Some((name, record)) = pack {
                success.extend(records::pack_put_ops(repo, name, record)?);
            }
            success.push(TxnOp::Put {
                key: records::activity_key(repo),
                value: now.to_be_bytes().to_vec(),
                lease: None,
            });
            let mut event_keys = Vec::with_capacity(live.len());
            for &i in &live {
                let c = &commands[i];
                let key = records::ref_key(repo, &c.name);
                compare.push(Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: match c.old {
                        Some(old) => CompareTarget::Value(old.to_vec()),
                        None => CompareTarget::Version(0),
                    },
                });
                success.push(match c.new {
                    Some(new) => TxnOp::Put { key, value: new.to_vec(), lease: None },
                    None => TxnOp::Delete { key },
                });
                let event = PushEvent {
                    repo: repo.to_string(),
                    ref_name: c.name.clone(),
                    old: c.old,
                    new: c.new,
                    pusher: pusher.to_string(),
                    time_ms: now,
                };
                let event_key = records::event_key(now, rand::random());
                event_keys.push(event_key.clone());
                success.push(TxnOp::Put { key: event_key, value: records::encode(&event)?, lease: None });
            }
            let txn = Txn { compare, success, failure: Vec::new() };
            let outcome = self.kv().txn(txn).await;
            let committed = match outcome {
                Ok(done) if done.succeeded => true,
                Ok(_) => false,
                Err(e) if e.is_transient() => {
                    // The outcome is unknown: the events say whether it happened.
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                    self.exists(&event_keys[0]).await?
                }
                Err(e) => return Err(kv_error(e)),
            };
            if committed {
                return Ok(pack.is_some());
            }
            // Someone moved a ref (or the repository's settings) first: find out which.
            let (record, revision) = self.record(repo).await?;
            if revision != snapshot.record_revision && record.protected != snapshot.record.protected {
                for &i in &live {
                    commands[i].refused =
                        Some("the repository's protected branches changed during the push; push again".into());
                }
                return Ok(false);
            }
            if revision != snapshot.record_revision {
                return Err(AspenError::Unavailable {
                    reason: "the repository record changed during the push; push again".into(),
                });
            }
            let mut still = Vec::with_capacity(live.len());
            for &i in &live {
                let c = &mut commands[i];
                let current = self.current_ref(repo, &c.name).await?;
                if current == c.old {
                    still.push(i);
                } else {
                    let hex = |id: Option<ObjectId>| id.map(|i| records::hex(&i)).unwrap_or_else(|| ZERO_ID.into());
                    c.refused = Some(format!(
                        "cannot lock ref '{}': is at {} but expected {}",
                        c.name,
                        hex(current),
                        hex(c.old)
                    ));
                }
            }
            live = still;
        }
        Err(AspenError::Unavailable { reason: "the refs kept changing during the push; push again".into() })
    }

    async fn exists(&self, key: &[u8]) -> Result<bool, AspenError> {
        for attempt in 0..TXN_ATTEMPTS {
            match self.kv().get(key, ReadConsistency::Linearizable).await {
                Ok(found) => return Ok(found.is_some()),
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await,
                Err(e) => return Err(kv_error(e)),
            }
        }
        Err(AspenError::Unavailable { reason: "the cluster did not answer whether the push was stored".into() })
    }

    async fn current_ref(&self, repo: &str, name: &str) -> Result<Option<ObjectId>, AspenError> {
        let found =
            self.kv().get(records::ref_key(repo, name), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        found.map(|kv| records::object_id(&kv.value)).transpose()
    }
}

/// The ref advertisement of receive-pack: every ref, the capabilities on the first line,
/// and the ancestors' tips as `.have` lines so a fork's pushes delta against them.
fn advertisement(snapshot: &Snapshot) -> Vec<u8> {
    let caps = format!("{CAPABILITIES} {}", agent());
    let mut out = Vec::new();
    let mut first = true;
    let mut line = |id: &str, name: &str| {
        let text = if first { format!("{id} {name}\0{caps}\n") } else { format!("{id} {name}\n") };
        first = false;
        out.extend_from_slice(&pktline::encode(text.as_bytes()));
    };
    for (name, id) in &snapshot.refs {
        line(&records::hex(id), name);
    }
    for id in &snapshot.ancestor_tips {
        line(&records::hex(id), ".have");
    }
    if snapshot.refs.is_empty() && snapshot.ancestor_tips.is_empty() {
        line(ZERO_ID, "capabilities^{}");
    }
    out.extend_from_slice(pktline::FLUSH);
    out
}

/// Reads the commands up to the flush; `None` when the client has nothing to push.
async fn read_commands(recv: &mut RecvStream) -> Result<Option<(Options, Vec<Command>)>, AspenError> {
    let bad = |why: String| AspenError::invalid(format!("bad push command: {why}"));
    let mut options = Options::default();
    let mut commands = Vec::new();
    let mut first = true;
    loop {
        let pkt = pktline::read_pkt(recv).await.map_err(|e| bad(e.to_string()))?;
        let line = match pkt {
            None => return Ok(None),
            Some(Pkt::Flush) => break,
            Some(Pkt::Data(line)) => line,
            Some(other) => return Err(bad(format!("unexpected {other:?}"))),
        };
        let line = pktline::chomp(&line);
        let (line, caps) = match line.iter().position(|&b| b == 0) {
            Some(nul) if first => (&line[..nul], Some(&line[nul + 1..])),
            _ => (line, None),
        };
        if let Some(caps) = caps {
            for cap in caps.split(|&b| b == b' ') {
                match cap {
                    b"report-status" | b"report-status-v2" => options.report_status = true,
                    b"side-band-64k" => options.side_band = true,
                    b"quiet" => options.quiet = true,
                    b"atomic" => options.atomic = true,
                    _ => {}
                }
            }
        }
        if let Some(id) = line.strip_prefix(b"shallow ") {
            parse_id(id)?;
            continue;
        }
        first = false;
        let mut parts = line.splitn(3, |&b| b == b' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!("{:?} is not `old new ref`", String::from_utf8_lossy(line))));
        };
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("a ref name is not UTF-8".into()))?;
        commands.push(Command { name, old: parse_id(old)?, new: parse_id(new)?, refused: None });
    }
    if commands.is_empty() {
        return Ok(None);
    }
    Ok(Some((options, commands)))
}

/// Refuses the commands that may not happen (see the module docs).
fn judge(snapshot: &Snapshot, commands: &mut [Command], objects: &PackSet) -> Result<(), AspenError> {
    let default_branch = branch_ref(&snapshot.record.default_branch);
    let mut seen = std::collections::BTreeSet::new();
    for c in commands.iter_mut() {
        c.refused = judge_one(snapshot, c, objects, &default_branch, &mut seen)?;
    }
    Ok(())
}

fn judge_one(
    snapshot: &Snapshot,
    c: &Command,
    objects: &PackSet,
    default_branch: &str,
    seen: &mut std::collections::BTreeSet<String>,
) -> Result<Option<String>, AspenError> {
    if let Err(e) = validate_ref_name(&c.name) {
        return Ok(Some(format!("funny refname: {e}")));
    }
    if !seen.insert(c.name.clone()) {
        return Ok(Some("the ref is named twice in one push".into()));
    }
    let current = snapshot.refs.get(&c.name).copied();
    if current != c.old {
        let hex = |id: Option<ObjectId>| id.map(|i| records::hex(&i)).unwrap_or_else(|| ZERO_ID.into());
        return Ok(Some(format!("stale info: the ref is at {} but the push expected {}", hex(current), hex(c.old))));
    }
    let branch = c.name.strip_prefix("refs/heads/");
    let protected = branch.is_some_and(|b| snapshot.record.protected.iter().any(|p| p == b));
    let Some(new) = c.new else {
        if protected {
            return Ok(Some(format!("refusing to delete the protected branch {}", branch.unwrap_or_default())));
        }
        if c.name == default_branch {
            return Ok(Some("refusing to delete the current branch (the repository's default branch)".into()));
        }
        return Ok(None);
    };
    let Some(kind) = objects.kind(&new)? else {
        return Ok(Some("missing necessary objects".into()));
    };
    if branch.is_some() && kind != gix_object::Kind::Commit {
        return Ok(Some(format!("refs/heads/ must point at a commit, not a {kind}")));
    }
    if let (true, Some(old)) = (protected, c.old)
        && !objects.is_ancestor(&old, &new)?
    {
        return Ok(Some(format!(
            "protected branch {}: non-fast-forward updates are refused",
            branch.unwrap_or_default()
        )));
    }
    Ok(None)
}
