//! Reading the end of a node's log file for error messages and panic reports.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// At most this many bytes from the end of the file are examined.
const MAX_TAIL_BYTES: u64 = 256 * 1024;

/// The last `n` lines of the file at `path`, or a note saying why there are none.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match read_tail(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Drop the partial first line.
        let cut = text.find('\n').map_or(0, |p| p + 1);
        text.drain(..cut);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        assert!(tail(&dir.path().join("missing"), 3).starts_with("(cannot read"));
    }
}
