//! Garbage collection of a repository's objects.
//!
//! Pushes add packs; force pushes and deleted branches leave objects no ref reaches. A
//! collection of repository `R` repacks R's packs older than the grace period into one pack
//! holding only the objects of those packs that are still reachable, and drops the old
//! packs (their records and pins go; the blob store's own collection then frees the blobs).
//!
//! - **Forks.** A fork reads its ancestors' packs, so "reachable" means from the refs of R
//!   *and of every fork below it*; objects a fork still reaches are kept.
//! - **Grace.** Only packs older than the grace period are touched: a pack pushed a moment
//!   ago, or objects a client may be about to build on, stay as they are.
//! - **Races.** The collection reads the records and activity markers of R and its forks
//!   first, and its one transaction requires them unchanged: a push or a fork that landed
//!   meanwhile fails it (the next round tries again). The transaction also re-puts those
//!   records, so a push that read the old packs and lands later fails its own compare on
//!   the record, and is reported to the client as "push again", instead of moving a ref to
//!   an object in a dropped pack.
//! - **Bounded.** At most [`MAX_PACKS_PER_ROUND`] packs per collection, so its transaction
//!   stays within the cluster's limit; a repository with more gets there over rounds.
//!
//! Reachability and the new pack come from git itself (`git rev-list --objects`, then
//! `git pack-objects`), run over a session directory whose refs are those of R and its forks
//! and whose packs are hard links: the same tools and code paths git's own `gc` trusts.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp};
use aspen_kv::KvExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::protocol::GcReport;
use crate::records::{self, PackRecord};
use crate::server::{ForgeHandler, kv_error};
use crate::upload::{git_command, git_program};

/// Most packs one collection repacks.
pub const MAX_PACKS_PER_ROUND: usize = 16;
/// Most forks below a repository a collection accounts for in its one transaction.
pub const MAX_FORKS: usize = 32;
/// Local pack copies younger than this are never pruned: their record may be on its way.
const PRUNE_MIN_AGE: Duration = Duration::from_secs(600);

fn io_error(what: &str, e: std::io::Error) -> AspenError {
    AspenError::internal(format!("{what}: {e}"))
}

/// One member of the family a collection reads: R or one of its forks.
struct Member {
    name: String,
    record_value: Vec<u8>,
    record_revision: u64,
    /// The activity marker's mod revision; 0 when the repository never had a push.
    activity_revision: u64,
}

impl ForgeHandler {
    /// One background round: on the leader, collects every repository; on every node,
    /// prunes local copies of packs no repository holds.
    pub(crate) async fn gc_round(&self) {
        if self.ctx.cluster.members().is_leader() {
            match self.kv().scan_all(records::REPO_PREFIX.as_bytes(), ReadConsistency::Linearizable).await {
                Ok((kvs, _)) => {
                    for kv in kvs {
                        let Some(name) = records::repo_name(&kv.key) else { continue };
                        match self.collect(name, self.settings.gc_grace).await {
                            Ok(report) if report.packs_collected > 0 => {
                                tracing::info!(repo = name, ?report, "forge: collected garbage")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(repo = name, error = %e, "forge: collection skipped"),
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "forge: cannot list repositories for collection"),
            }
        }
        if let Err(e) = self.prune_local().await {
            tracing::debug!(error = %e, "forge: cannot prune local pack copies");
        }
    }

    /// Removes this node's copies of packs no pack record names.
    async fn prune_local(&self) -> Result<usize, AspenError> {
        let (kvs, _) = self
            .kv()
            .scan_all(records::PACK_PREFIX.as_bytes(), ReadConsistency::Linearizable)
            .await
            .map_err(kv_error)?;
        let keep: HashSet<String> = kvs
            .iter()
            .filter_map(|kv| std::str::from_utf8(&kv.key).ok()?.rsplit_once(':').map(|(_, pack)| pack.to_string()))
            .collect();
        self.store.prune(&keep, PRUNE_MIN_AGE)
    }

    async fn member(&self, name: &str) -> Result<Member, AspenError> {
        let kv = self.kv().get(records::repo_key(name), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        let kv = kv.ok_or_else(|| AspenError::invalid(format!("repository {name:?} does not exist")))?;
        let activity =
            self.kv().get(records::activity_key(name), ReadConsistency::Linearizable).await.map_err(kv_error)?;
        Ok(Member {
            name: name.to_string(),
            record_value: kv.value,
            record_revision: kv.mod_revision,
            activity_revision: activity.map(|a| a.mod_revision).unwrap_or(0),
        })
    }

    /// Collects `repo`'s garbage (see the module docs).
    pub(crate) async fn collect(&self, repo: &str, grace: Duration) -> Result<GcReport, AspenError> {
        // The family first, so anything that moves after these reads fails the commit.
        let mut family = vec![self.member(repo).await?];
        let mut next = 0;
        while next < family.len() {
            let below = self.forks(&family[next].name).await?;
            for fork in below {
                if family.len() > MAX_FORKS {
                    return Err(AspenError::invalid(format!(
                        "{repo:?} has more than {MAX_FORKS} forks below it; its garbage is not collected"
                    )));
                }
                family.push(self.member(&fork).await?);
            }
            next += 1;
        }
        let snapshot = self.snapshot(repo).await?;
        let own = self.packs(repo).await?;
        let now = aspen_net::now_ms();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut old: Vec<(String, PackRecord)> =
            own.iter().filter(|(_, r)| r.added_ms.saturating_add(grace_ms) <= now).cloned().collect();
        old.sort_by_key(|(_, r)| r.added_ms);
        old.truncate(MAX_PACKS_PER_ROUND);
        let mut report =
            GcReport { packs_before: own.len() as u32, packs_after: own.len() as u32, ..GcReport::default() };
        if old.is_empty() {
            return Ok(report);
        }

        // Everything the family's refs reach, over every pack any of them reads.
        let dir = self.store.session_dir()?;
        let outcome = async {
            let mut packs = snapshot.packs.clone();
            let mut refs = Vec::new();
            for (i, member) in family.iter().enumerate() {
                let member_snapshot = if i == 0 { snapshot.clone() } else { self.snapshot(&member.name).await? };
                for (name, id) in &member_snapshot.refs {
                    refs.push((format!("refs/gc/{i}/{}", name.trim_start_matches("refs/")), *id));
                }
                packs.extend(member_snapshot.packs);
            }
            packs.sort_by(|a, b| a.0.cmp(&b.0));
            packs.dedup_by(|a, b| a.0 == b.0);
            write_gc_dir(&dir, &refs).map_err(|e| io_error("cannot write the collection's git directory", e))?;
            self.store.link_packs(&dir.join("objects/pack"), &packs).await?;
            let in_old = old_objects(&self.store.index_paths(&old).await?)?;
            report.objects_collected = in_old.len() as u64;
            report.bytes_collected = old.iter().map(|(_, r)| r.bytes).sum();
            let keep = reachable_in(&dir, &in_old).await?;
            report.objects_kept = keep.len() as u64;
            if old.len() == 1 && keep.len() == in_old.len() {
                // One pack, all of it live: nothing to gain.
                return Ok(None);
            }
            let new_pack = if keep.is_empty() { None } else { Some(pack_objects(&dir, &keep).await?) };
            Ok::<_, AspenError>(Some(new_pack))
        }
        .await;
        let new_pack = match outcome {
            Ok(Some(new_pack)) => new_pack,
            Ok(None) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                report.objects_collected = 0;
                report.bytes_collected = 0;
                report.objects_kept = 0;
                return Ok(report);
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };

        // Store the new pack as blobs, then swap it for the old ones in one transaction.
        let mut success = Vec::new();
        let mut stored = None;
        if let Some((name, pack_path, index_path, objects)) = &new_pack {
            let (pack_hash, index_hash, _) = self.store.store_blobs(pack_path, index_path).await?;
            let bytes = tokio::fs::metadata(pack_path).await.map_err(|e| io_error("the new pack", e))?.len();
            let record = PackRecord {
                pack: pack_hash,
                index: index_hash,
                objects: *objects,
                bytes,
                added_ms: old.iter().map(|(_, r)| r.added_ms).max().unwrap_or(now),
            };
            report.bytes_written = bytes;
            if !old.iter().any(|(n, _)| n == name) {
                success.extend(records::pack_put_ops(repo, name, &record)?);
            }
            stored = Some((name.clone(), pack_path.clone(), index_path.clone()));
        }
        for (name, record) in &old {
            if stored.as_ref().is_some_and(|(n, _, _)| n == name) {
                continue;
            }
            success.extend(records::pack_delete_ops(repo, name, record));
        }
        let mut compare = Vec::new();
        for member in &family {
            let key = records::repo_key(&member.name);
            compare.push(Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(member.record_revision),
            });
            compare.push(Compare {
                key: records::activity_key(&member.name),
                op: CompareOp::Equal,
                target: match member.activity_revision {
                    0 => CompareTarget::Version(0),
                    r => CompareTarget::ModRevision(r),
                },
            });
            success.push(TxnOp::Put { key, value: member.record_value.clone(), lease: None });
        }
        success.push(TxnOp::Put { key: records::activity_key(repo), value: now.to_be_bytes().to_vec(), lease: None });
        let committed = self.kv().txn(Txn { compare, success, failure: Vec::new() }).await;
        let committed = match committed {
            Ok(done) => done.succeeded,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(kv_error(e));
            }
        };
        if committed && let Some((name, pack, index)) = &stored {
            let _ = self.store.adopt(name, pack, index);
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        if !committed {
            return Err(AspenError::Unavailable {
                reason: format!("repository {repo:?} or one of its forks changed during the collection; try again"),
            });
        }
        let dropped: HashSet<String> =
            old.iter().map(|(n, _)| n.clone()).filter(|n| stored.as_ref().is_none_or(|(s, _, _)| s != n)).collect();
        // This node's copies of the dropped packs: fetches under way hold hard links.
        for name in &dropped {
            let (pack, index) = self.store.pack_paths(name);
            let _ = tokio::fs::remove_file(index).await;
            let _ = tokio::fs::remove_file(pack).await;
        }
        report.packs_collected = old.len() as u32;
        report.packs_after = (own.len() - old.len() + usize::from(stored.is_some())) as u32;
        Ok(report)
    }
}

/// The collection's git directory: `packed-refs` from `refs`, packs linked in afterwards.
fn write_gc_dir(dir: &Path, refs: &[(String, records::ObjectId)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("refs"))?;
    std::fs::create_dir_all(dir.join("objects/pack"))?;
    std::fs::write(dir.join("HEAD"), "ref: refs/heads/none\n")?;
    std::fs::write(dir.join("config"), "[core]\n\trepositoryformatversion = 0\n\tbare = true\n")?;
    let mut text = String::from("# pack-refs with: sorted \n");
    let mut sorted: Vec<_> = refs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, id) in sorted {
        text.push_str(&format!("{} {name}\n", records::hex(id)));
    }
    std::fs::write(dir.join("packed-refs"), text)
}

/// The ids of every object in the packs whose indexes are `indexes`.
fn old_objects(indexes: &[std::path::PathBuf]) -> Result<HashSet<records::ObjectId>, AspenError> {
    let mut ids = HashSet::new();
    for path in indexes {
        let index = gix_pack::index::File::at(path, gix_hash::Kind::Sha1)
            .map_err(|e| AspenError::internal(format!("cannot open the index {}: {e}", path.display())))?;
        for entry in index.iter() {
            let mut id = [0u8; 20];
            id.copy_from_slice(entry.oid.as_slice());
            ids.insert(id);
        }
    }
    Ok(ids)
}

fn git(dir: &Path) -> Command {
    let mut command = git_command(dir);
    command.arg("--git-dir").arg(dir);
    command
}

/// The `git rev-list --objects --all` lines (`id path`) of objects in `among`.
async fn reachable_in(dir: &Path, among: &HashSet<records::ObjectId>) -> Result<Vec<String>, AspenError> {
    let mut child = git(dir)
        .args(["rev-list", "--objects", "--all"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_error(&format!("cannot run {}", git_program()), e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut keep = Vec::new();
    while let Some(line) = lines.next_line().await.map_err(|e| io_error("git rev-list", e))? {
        let hex = line.split(' ').next().unwrap_or_default();
        let Ok(id) = records::parse_object_id(hex) else { continue };
        if among.contains(&id) {
            keep.push(line);
        }
    }
    let output = child.wait_with_output().await.map_err(|e| io_error("git rev-list", e))?;
    if !output.status.success() {
        return Err(AspenError::internal(format!(
            "git rev-list failed ({}): {}; nothing is collected",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(keep)
}

/// Packs the objects of `lines` (rev-list's `id path` lines) into one new pack in `dir`.
/// Returns its name, paths and object count.
async fn pack_objects(
    dir: &Path,
    lines: &[String],
) -> Result<(String, std::path::PathBuf, std::path::PathBuf, u32), AspenError> {
    let base = dir.join("new");
    let mut child = git(dir)
        .args(["pack-objects", "--delta-base-offset", "-q"])
        .arg(&base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_error(&format!("cannot run {}", git_program()), e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = lines.join("\n") + "\n";
    let feed = async move {
        let written = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
        written
    };
    let (fed, output) = tokio::join!(feed, child.wait_with_output());
    let output = output.map_err(|e| io_error("git pack-objects", e))?;
    fed.map_err(|e| io_error("git pack-objects input", e))?;
    if !output.status.success() {
        return Err(AspenError::internal(format!(
            "git pack-objects failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let name = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if name.len() != 40 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AspenError::internal(format!("git pack-objects printed {name:?}, not a pack name")));
    }
    let pack = dir.join(format!("new-{name}.pack"));
    let index = dir.join(format!("new-{name}.idx"));
    Ok((name, pack, index, lines.len() as u32))
}
