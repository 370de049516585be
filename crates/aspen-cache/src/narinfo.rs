//! Narinfo files, as binary caches serve them at `/<hash>.narinfo`, and the parts they are
//! made of: store paths and `sha256:` hashes.

use std::fmt::Write as _;

use aspen_core::AspenError;

use crate::nix32;

/// The store directory this cache serves (Nix's default; others are not supported).
pub const STORE_DIR: &str = "/nix/store";
/// Characters of a store path's hash part.
pub const HASH_PART_LEN: usize = 32;
/// Longest name part Nix accepts.
pub const MAX_NAME_LEN: usize = 211;
/// Longest narinfo file read.
pub const MAX_NARINFO_BYTES: usize = 1024 * 1024;

/// A store path's base name, `<hash part>-<name>`, checked as Nix checks it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePathName(String);

impl StorePathName {
    /// Checks a base name (`abc...-hello-1.0`).
    pub fn parse(base: &str) -> Result<Self, AspenError> {
        let bad = |why: &str| AspenError::invalid(format!("{base:?} is not a store path name: {why}"));
        let (hash, name) = base.split_at_checked(HASH_PART_LEN).ok_or_else(|| bad("too short"))?;
        if nix32::decode(hash, 20).is_err() {
            return Err(bad("its first 32 characters are not a hash in Nix's base-32"));
        }
        let name = name.strip_prefix('-').ok_or_else(|| bad("no '-' after the hash"))?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(bad(&format!("its name must be 1 to {MAX_NAME_LEN} characters")));
        }
        if name.starts_with('.') {
            return Err(bad("its name starts with '.'"));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c))) {
            return Err(bad(&format!("its name has {c:?}")));
        }
        Ok(StorePathName(base.to_string()))
    }

    /// Checks a full path under [`STORE_DIR`].
    pub fn from_path(path: &str) -> Result<Self, AspenError> {
        let base = path
            .strip_prefix(STORE_DIR)
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| AspenError::invalid(format!("{path:?} is not under {STORE_DIR}/")))?;
        StorePathName::parse(base)
    }

    /// The hash part, the name under which the cache serves the narinfo.
    pub fn hash_part(&self) -> &str {
        &self.0[..HASH_PART_LEN]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path.
    pub fn path(&self) -> String {
        format!("{STORE_DIR}/{}", self.0)
    }
}

/// A SHA-256, read from any of the forms Nix writes (`sha256:<base-32>`, `sha256:<hex>`,
/// `sha256-<base64>`), written as narinfo files write it (`sha256:<base-32>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn parse(text: &str) -> Result<Self, AspenError> {
        let bad = || {
            AspenError::invalid(format!("{text:?} is not a sha256 hash (sha256:<base-32 or hex>, or sha256-<base64>)"))
        };
        let bytes = if let Some(rest) = text.strip_prefix("sha256:") {
            match rest.len() {
                52 => nix32::decode(rest, 32)?,
                64 => data_encoding::HEXLOWER_PERMISSIVE.decode(rest.as_bytes()).map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        } else if let Some(rest) = text.strip_prefix("sha256-") {
            data_encoding::BASE64.decode(rest.as_bytes()).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        Ok(Sha256(bytes.try_into().map_err(|_| bad())?))
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", nix32::encode(&self.0))
    }
}

/// One narinfo: what a cache says about a store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePathName,
    /// Where the NAR is served, relative to the cache (`nar/<file hash>.nar.zst`).
    pub url: String,
    /// `none`, `xz`, `zstd`, ...
    pub compression: String,
    /// The hash and size of the file at `url` (the compressed NAR).
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    /// Base names, sorted as Nix sorts them.
    pub references: Vec<StorePathName>,
    pub deriver: Option<StorePathName>,
    /// `name:base64` signatures.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

impl NarInfo {
    /// Parses narinfo text. Unknown fields are ignored (newer Nix versions add some);
    /// missing required ones, malformed values and repeated single fields are refused,
    /// naming the line.
    pub fn parse(text: &str) -> Result<Self, AspenError> {
        if text.len() > MAX_NARINFO_BYTES {
            return Err(AspenError::invalid(format!("a narinfo of {} bytes is over {MAX_NARINFO_BYTES}", text.len())));
        }
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let (mut file_hash, mut file_size, mut nar_hash, mut nar_size) = (None, None, None, None);
        let mut references = None;
        let (mut deriver, mut ca) = (None, None);
        let mut sigs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let at = |e: AspenError| AspenError::invalid(format!("narinfo line {}: {e}", n + 1));
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| at(AspenError::invalid(format!("{line:?} is not `Key: value`"))))?;
            fn once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), AspenError> {
                if slot.replace(value).is_some() {
                    return Err(AspenError::invalid(format!("{key} appears twice")));
                }
                Ok(())
            }
            let number =
                |v: &str| v.parse::<u64>().map_err(|_| AspenError::invalid(format!("{key} {v:?} is not a number")));
            let parsed = match key {
                "StorePath" => StorePathName::from_path(value).and_then(|p| once(&mut store_path, key, p)),
                "URL" => once(&mut url, key, value.to_string()),
                "Compression" => once(&mut compression, key, value.to_string()),
                "FileHash" => Sha256::parse(value).and_then(|h| once(&mut file_hash, key, h)),
                "FileSize" => number(value).and_then(|v| once(&mut file_size, key, v)),
                "NarHash" => Sha256::parse(value).and_then(|h| once(&mut nar_hash, key, h)),
                "NarSize" => number(value).and_then(|v| once(&mut nar_size, key, v)),
                "References" => value
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(StorePathName::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|r| once(&mut references, key, r)),
                "Deriver" if value == "unknown-deriver" => Ok(()),
                "Deriver" => StorePathName::parse(value).and_then(|d| once(&mut deriver, key, d)),
                "Sig" => {
                    crate::signing::split_signature(value)?;
                    sigs.push(value.to_string());
                    Ok(())
                }
                "CA" => once(&mut ca, key, value.to_string()),
                _ => Ok(()),
            };
            parsed.map_err(at)?;
        }
        let missing = |field: &str| AspenError::invalid(format!("the narinfo has no {field}"));
        Ok(NarInfo {
            store_path: store_path.ok_or_else(|| missing("StorePath"))?,
            url: url.ok_or_else(|| missing("URL"))?,
            compression: compression.unwrap_or_else(|| "bzip2".into()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size: nar_size.ok_or_else(|| missing("NarSize"))?,
            references: references.unwrap_or_default(),
            deriver,
            sigs,
            ca,
        })
    }

    /// The text a cache serves.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "StorePath: {}", self.store_path.path());
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(s) = self.file_size {
            let _ = writeln!(out, "FileSize: {s}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash);
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        let refs: Vec<&str> = self.references.iter().map(StorePathName::as_str).collect();
        let _ = writeln!(out, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {}", d.as_str());
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// What a signature covers: `1;<path>;<nar hash>;<nar size>;<references as full paths,
    /// comma-separated>`.
    pub fn fingerprint(&self) -> String {
        let refs: Vec<String> = self.references.iter().map(StorePathName::path).collect();
        format!("1;{};{};{};{}", self.store_path.path(), self.nar_hash, self.nar_size, refs.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "StorePath: /nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 212
NarHash: sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=
NarSize: 120
References: 5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt
Deriver: unknown-deriver
Sig: test-1:6NjxNLg8vmWUI9PKmWdXJihWe6pUahDowNNdXRro0EcWdQymeb/eOm72U1RIh3jMGPE7KQcl0Oht8koqPXAyCw==
CA: fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
X-Future-Field: ignored
";

    #[test]
    fn parses_renders_and_parses_back() {
        let info = NarInfo::parse(SAMPLE).unwrap();
        assert_eq!(info.store_path.hash_part(), "5klx9pxl1c90q0j01ph753cpfm5dz3as");
        assert_eq!(info.nar_size, 120);
        assert_eq!(info.deriver, None);
        assert_eq!(info.sigs.len(), 1);
        let text = info.render();
        assert!(text.contains("NarHash: sha256:") && !text.contains("X-Future"), "{text}");
        assert_eq!(NarInfo::parse(&text).unwrap(), info);
        assert_eq!(
            info.fingerprint(),
            format!(
                "1;/nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt;{};120;/nix/store/5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt",
                info.nar_hash
            )
        );
    }

    #[test]
    fn malformed_narinfo_is_refused_naming_the_line() {
        for (text, expected) in [
            ("StorePath /nix/store/x\n", "line 1"),
            ("StorePath: /tmp/x\n", "not under /nix/store"),
            (&SAMPLE.replace("NarSize: 120", "NarSize: many"), "not a number"),
            (&SAMPLE.replace("NarSize: 120\n", ""), "no NarSize"),
            (&SAMPLE.replace("URL: nar/", "URL: a\nURL: nar/"), "appears twice"),
            (&SAMPLE.replace("NarHash: sha256-", "NarHash: md5-"), "not a sha256"),
            (&SAMPLE.replace("References: 5klx", "References: 5kl!"), "not a store path name"),
        ] {
            let err = NarInfo::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn store_path_names_follow_nix_rules() {
        assert!(StorePathName::parse("5klx9pxl1c90q0j01ph753cpfm5dz3as-hello-1.0_x+y?=z").is_ok());
        for bad in [
            "5klx9pxl1c90q0j01ph753cpfm5dz3as",
            "5klx9pxl1c90q0j01ph753cpfm5dz3as-",
            "5klx9pxl1c90q0j01ph753cpfm5dz3as-.hidden",
            "5klx9pxl1c90q0j01ph753cpfm5dz3as-a/b",
            "eeee9pxl1c90q0j01ph753cpfm5dz3as-hello",
        ] {
            assert!(StorePathName::parse(bad).is_err(), "{bad}");
        }
    }
}
