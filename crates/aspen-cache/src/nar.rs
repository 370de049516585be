//! Checking a NAR (Nix ARchive) as it streams past: its grammar, and its SHA-256 and size,
//! the `NarHash` and `NarSize` of its narinfo. File contents are never held in memory.
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" ( "regular" ["executable" ""] "contents" BYTES
//!                    | "symlink" "target" TARGET
//!                    | "directory" { "entry" "(" "name" NAME "node" node ")" } ) ")"
//! ```
//!
//! Every token is a string: a little-endian u64 length, the bytes, zero padding to 8. Entry
//! names are strictly increasing (so unique), never empty, `.`, `..`, or holding `/` or NUL;
//! padding must be zero; nothing may follow the root node. That is what Nix itself refuses.

use std::io::Read;

use aspen_core::AspenError;
use sha2::Digest;

use crate::narinfo::Sha256;

/// Longest entry name.
pub const MAX_NAME: u64 = 255;
/// Longest symlink target.
pub const MAX_TARGET: u64 = 4_096;
/// Deepest directory nesting.
pub const MAX_DEPTH: usize = 256;
/// Longest token that is neither contents, a name nor a target.
const MAX_TOKEN: u64 = 64;

/// What a whole, well-formed NAR hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    pub nar_hash: Sha256,
    pub nar_size: u64,
}

struct Reader<R> {
    inner: R,
    hasher: sha2::Sha256,
    size: u64,
}

fn bad(why: impl std::fmt::Display) -> AspenError {
    AspenError::invalid(format!("malformed NAR: {why}"))
}

impl<R: Read> Reader<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AspenError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(format!("it ends early, after {} bytes", self.size)),
            _ => AspenError::invalid(format!("cannot read the NAR: {e}")),
        })?;
        self.hasher.update(&*buf);
        self.size += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, AspenError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), AspenError> {
        let pad = ((8 - len % 8) % 8) as usize;
        let mut b = [0u8; 8];
        self.fill(&mut b[..pad])?;
        if b[..pad].iter().any(|x| *x != 0) {
            return Err(bad(format!("non-zero padding at byte {}", self.size)));
        }
        Ok(())
    }

    /// A short string, at most `max` bytes.
    fn string(&mut self, max: u64, what: &str) -> Result<Vec<u8>, AspenError> {
        let len = self.u64()?;
        if len > max {
            return Err(bad(format!("a {what} of {len} bytes at byte {}; the most is {max}", self.size)));
        }
        let mut s = vec![0u8; len as usize];
        self.fill(&mut s)?;
        self.padding(len)?;
        Ok(s)
    }

    fn expect(&mut self, token: &str) -> Result<(), AspenError> {
        let at = self.size;
        let got = self.string(MAX_TOKEN, "token")?;
        if got != token.as_bytes() {
            return Err(bad(format!("expected {token:?} at byte {at}, found {:?}", String::from_utf8_lossy(&got))));
        }
        Ok(())
    }

    /// File contents: streamed through the hash, never kept.
    fn contents(&mut self) -> Result<(), AspenError> {
        let len = self.u64()?;
        let mut left = len;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..n])?;
            left -= n as u64;
        }
        self.padding(len)
    }

    fn node(&mut self, depth: usize) -> Result<(), AspenError> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("directories nest deeper than {MAX_DEPTH}")));
        }
        self.expect("(")?;
        self.expect("type")?;
        let at = self.size;
        match self.string(MAX_TOKEN, "token")?.as_slice() {
            b"regular" => {
                let at = self.size;
                match self.string(MAX_TOKEN, "token")?.as_slice() {
                    b"executable" => {
                        self.expect("")?;
                        self.expect("contents")?;
                    }
                    b"contents" => {}
                    other => {
                        return Err(bad(format!(
                            "expected \"executable\" or \"contents\" at byte {at}, found {:?}",
                            String::from_utf8_lossy(other)
                        )));
                    }
                }
                self.contents()?;
                self.expect(")")
            }
            b"symlink" => {
                self.expect("target")?;
                let target = self.string(MAX_TARGET, "symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return Err(bad("a symlink target is empty or holds NUL"));
                }
                self.expect(")")
            }
            b"directory" => {
                let mut last: Option<Vec<u8>> = None;
                loop {
                    let at = self.size;
                    match self.string(MAX_TOKEN, "token")?.as_slice() {
                        b")" => return Ok(()),
                        b"entry" => {}
                        other => {
                            return Err(bad(format!(
                                "expected \"entry\" or \")\" at byte {at}, found {:?}",
                                String::from_utf8_lossy(other)
                            )));
                        }
                    }
                    self.expect("(")?;
                    self.expect("name")?;
                    let name = self.string(MAX_NAME, "name")?;
                    let shown = String::from_utf8_lossy(&name).into_owned();
                    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                        return Err(bad(format!("entry name {shown:?} is not allowed")));
                    }
                    if last.as_ref().is_some_and(|l| *l >= name) {
                        return Err(bad(format!("entry {shown:?} is out of order or repeated")));
                    }
                    self.expect("node")?;
                    self.node(depth + 1)?;
                    self.expect(")")?;
                    last = Some(name);
                }
            }
            other => Err(bad(format!("unknown node type {:?} at byte {at}", String::from_utf8_lossy(other)))),
        }
    }
}

/// Reads a whole NAR from `input`, checking it, and returns its hash and size. Refuses a
/// malformed NAR, naming the problem and the byte where it is.
pub fn check_nar(input: impl Read) -> Result<NarSummary, AspenError> {
    let mut r = Reader { inner: input, hasher: sha2::Sha256::new(), size: 0 };
    r.expect("nix-archive-1")?;
    r.node(0)?;
    let mut extra = [0u8; 1];
    match r.inner.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(bad(format!("bytes follow the end of the archive at byte {}", r.size))),
        Err(e) => return Err(AspenError::invalid(format!("cannot read the NAR: {e}"))),
    }
    let digest: [u8; 32] = r.hasher.finalize().into();
    Ok(NarSummary { nar_hash: Sha256(digest), nar_size: r.size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().div_ceil(8) * 8, 0);
    }

    fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            token(&mut out, t);
        }
        out
    }

    fn file(contents: &[u8]) -> Vec<u8> {
        nar(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")"])
    }

    fn dir(names: &[&[u8]]) -> Vec<u8> {
        let mut t: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
        for n in names {
            t.extend_from_slice(&[
                b"entry", b"(", b"name", n, b"node", b"(", b"type", b"symlink", b"target", b"x", b")", b")",
            ]);
        }
        t.push(b")");
        nar(&t)
    }

    #[test]
    fn a_well_formed_nar_hashes_as_its_bytes() {
        let bytes = file(b"hello\n");
        let summary = check_nar(&bytes[..]).unwrap();
        assert_eq!(summary.nar_size, bytes.len() as u64);
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        assert_eq!(summary.nar_hash, Sha256(digest));
        assert!(check_nar(&dir(&[b"a", b"b"])[..]).is_ok());
    }

    #[test]
    fn malformed_nars_are_refused_with_the_reason() {
        let good = file(b"hello\n");
        let mut padded = good.clone();
        let at = good.len() - 16; // the padding after "hello\n" sits before ")"
        padded[at - 1] = 1;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "ends early"),
            ([good.clone(), vec![0]].concat(), "bytes follow"),
            (nar(&[b"nix-archive-2"]), "expected \"nix-archive-1\""),
            (padded, "non-zero padding"),
            (dir(&[b"b", b"a"]), "out of order"),
            (dir(&[b"a", b"a"]), "out of order"),
            (dir(&[b".."]), "not allowed"),
            (dir(&[b"a/b"]), "not allowed"),
            (nar(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"]), "unknown node type"),
        ];
        for (bytes, expected) in cases {
            let err = check_nar(&bytes[..]).unwrap_err().to_string();
            assert!(err.contains("malformed NAR") && err.contains(expected), "{expected}: {err}");
        }
        let mut huge = Vec::new();
        token(&mut huge, b"nix-archive-1");
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_nar(&huge[..]).unwrap_err().to_string().contains("the most is"));
    }
}
