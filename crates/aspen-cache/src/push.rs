//! Pushing store paths to a cache and pulling them back, with nix's own tools: `nix
//! path-info --json` says what a path is and what it references, `nix-store --dump` writes
//! its NAR, and `nix copy --from` (through a gateway on loopback) brings paths into a store,
//! checking the cache's signatures as any substituter's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;

use aspen_core::AspenError;
use serde::Deserialize;

use crate::client::CacheClient;
use crate::narinfo::{Sha256, StorePathName};
use crate::protocol::PathUpload;

/// How `nix` is run: which store, with what settings.
#[derive(Debug, Clone, Default)]
pub struct NixCommand {
    /// `--store` for every command (a chroot store directory, say); the default store
    /// otherwise.
    pub store: Option<String>,
    /// Directory holding `nix` and `nix-store`; `$PATH` otherwise.
    pub bin_dir: Option<PathBuf>,
}

/// What `nix path-info --json` says of one path.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoJson {
    /// Given in nix's older list form; the key of the newer map form.
    #[serde(default)]
    path: String,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    ca: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
    valid: Option<bool>,
}

impl NixCommand {
    fn program(&self, name: &str) -> tokio::process::Command {
        let program = match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("--extra-experimental-features").arg("nix-command");
        if let Some(store) = &self.store {
            cmd.arg("--store").arg(store);
        }
        cmd.kill_on_drop(true);
        cmd
    }

    /// The closure of `paths`, each with what `PathUpload` needs, references before the
    /// paths that reference them.
    pub async fn closure(&self, paths: &[String]) -> Result<Vec<PathUpload>, AspenError> {
        let mut cmd = self.program("nix");
        cmd.arg("path-info").arg("--json").arg("--recursive").args(paths);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| AspenError::invalid(format!("cannot run nix path-info (is nix installed?): {e}")))?;
        if !output.status.success() {
            return Err(AspenError::invalid(format!(
                "nix path-info failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let infos = parse_path_info(&output.stdout)?;
        let mut uploads = BTreeMap::new();
        for info in infos {
            if info.valid == Some(false) {
                return Err(AspenError::invalid(format!("{} is not a valid path in the store", info.path)));
            }
            let name = StorePathName::from_path(&info.path)?;
            let missing = |field: &str| AspenError::invalid(format!("nix path-info gave {} no {field}", info.path));
            let nar_hash = Sha256::parse(info.nar_hash.as_deref().ok_or_else(|| missing("narHash"))?)?;
            let references =
                info.references.iter().map(|r| StorePathName::from_path(r).map(|n| n.as_str().to_string()));
            uploads.insert(
                name.as_str().to_string(),
                PathUpload {
                    store_path: name.as_str().to_string(),
                    nar_hash: nar_hash.0,
                    nar_size: info.nar_size.ok_or_else(|| missing("narSize"))?,
                    references: references.collect::<Result<_, _>>()?,
                    deriver: info
                        .deriver
                        .as_deref()
                        .map(StorePathName::from_path)
                        .transpose()?
                        .map(|d| d.as_str().to_string()),
                    ca: info.ca,
                    sigs: info.signatures,
                },
            );
        }
        Ok(references_first(uploads))
    }

    /// A running `nix-store --dump` of `path`, whose stdout is its NAR.
    pub fn dump(&self, store_path: &str) -> Result<tokio::process::Child, AspenError> {
        let mut cmd = self.program("nix-store");
        cmd.arg("--dump").arg(store_path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| AspenError::invalid(format!("cannot run nix-store --dump (is nix installed?): {e}")))
    }
}

/// Reads `nix path-info --json`: a list of objects with `path` (nix before 2.19), or an
/// object keyed by path whose values are the info, or null for an invalid path (2.19 on).
fn parse_path_info(json: &[u8]) -> Result<Vec<PathInfoJson>, AspenError> {
    let unreadable =
        |e: serde_json::Error| AspenError::invalid(format!("nix path-info printed what this does not read: {e}"));
    let value: serde_json::Value = serde_json::from_slice(json).map_err(unreadable)?;
    match value {
        serde_json::Value::Array(_) => serde_json::from_value(value).map_err(unreadable),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(path, info)| {
                if info.is_null() {
                    return Err(AspenError::invalid(format!("{path} is not a valid path in the store")));
                }
                let mut info: PathInfoJson = serde_json::from_value(info).map_err(unreadable)?;
                info.path = path;
                Ok(info)
            })
            .collect(),
        _ => Err(AspenError::invalid("nix path-info printed neither a list nor an object")),
    }
}

/// `uploads` ordered so that every path comes after the paths it references.
fn references_first(uploads: BTreeMap<String, PathUpload>) -> Vec<PathUpload> {
    let mut done = BTreeSet::new();
    let mut ordered = Vec::with_capacity(uploads.len());
    for start in uploads.keys() {
        // Depth first, iteratively: (path, whether its references are done).
        let mut stack = vec![(start.clone(), false)];
        while let Some((path, expanded)) = stack.pop() {
            if done.contains(&path) {
                continue;
            }
            let Some(upload) = uploads.get(&path) else { continue };
            if expanded {
                done.insert(path);
                ordered.push(upload.clone());
                continue;
            }
            stack.push((path.clone(), true));
            for r in &upload.references {
                if *r != path && !done.contains(r) {
                    stack.push((r.clone(), false));
                }
            }
        }
    }
    ordered
}

/// What one push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Paths in the closures pushed.
    pub closure: usize,
    /// Paths the cache had already.
    pub skipped: usize,
    /// Paths uploaded, and their NAR bytes.
    pub pushed: usize,
    pub bytes: u64,
}

/// Pushes the closures of `paths` to `cache`, references first, skipping what it has.
pub async fn push(
    client: &CacheClient,
    nix: &NixCommand,
    cache: &str,
    paths: &[String],
    mut progress: impl FnMut(&PathUpload),
) -> Result<PushReport, AspenError> {
    let closure = nix.closure(paths).await?;
    let mut missing = BTreeSet::new();
    for chunk in closure.chunks(crate::protocol::MAX_LIST as usize) {
        let names = chunk.iter().map(|u| u.store_path.clone()).collect();
        missing.extend(client.query_missing(cache, names).await.map_err(client_error)?);
    }
    let mut report =
        PushReport { closure: closure.len(), skipped: closure.len() - missing.len(), ..Default::default() };
    for upload in closure.into_iter().filter(|u| missing.contains(&u.store_path)) {
        progress(&upload);
        let path = format!("{}/{}", crate::narinfo::STORE_DIR, upload.store_path);
        let mut child = nix.dump(&path)?;
        let stdout = child.stdout.take().ok_or_else(|| AspenError::internal("nix-store --dump has no stdout"))?;
        let size = upload.nar_size;
        let added = client.add_path(cache, upload, stdout).await;
        let output = child.wait_with_output().await.map_err(|e| AspenError::internal(format!("nix-store: {e}")))?;
        if !output.status.success() {
            return Err(AspenError::invalid(format!(
                "nix-store --dump {path} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        added.map_err(client_error)?;
        report.pushed += 1;
        report.bytes += size;
    }
    Ok(report)
}

fn client_error(e: aspen_client::ClientError) -> AspenError {
    match e {
        aspen_client::ClientError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(name: &str, refs: &[&str]) -> PathUpload {
        PathUpload {
            store_path: name.into(),
            nar_hash: [0; 32],
            nar_size: 1,
            references: refs.iter().map(|r| r.to_string()).collect(),
            deriver: None,
            ca: None,
            sigs: Vec::new(),
        }
    }

    #[test]
    fn both_forms_of_path_info_are_read() {
        let old = br#"[{"path":"/nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt","narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"signatures":["test-1:x"]}]"#;
        let new = br#"{"/nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt":{"narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"signatures":["test-1:x"],"ca":null,"deriver":null}}"#;
        for json in [&old[..], &new[..]] {
            let infos = parse_path_info(json).unwrap();
            assert_eq!(infos.len(), 1);
            assert_eq!(infos[0].path, "/nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt");
            assert_eq!(infos[0].nar_size, Some(120));
        }
        let invalid = br#"{"/nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt":null}"#;
        assert!(parse_path_info(invalid).unwrap_err().to_string().contains("not a valid path"));
        assert!(parse_path_info(b"7").is_err());
    }

    #[test]
    fn references_come_first() {
        let mut all = BTreeMap::new();
        for (name, refs) in [("a", vec!["b", "a"]), ("b", vec!["c"]), ("c", vec![]), ("d", vec!["a", "c"])] {
            all.insert(name.to_string(), upload(name, &refs));
        }
        let order: Vec<String> = references_first(all.clone()).into_iter().map(|u| u.store_path).collect();
        assert_eq!(order.len(), 4);
        let at = |n: &str| order.iter().position(|o| o == n).unwrap();
        for (name, u) in &all {
            for r in &u.references {
                assert!(at(r) <= at(name), "{r} before {name} in {order:?}");
            }
        }
    }
}
