//! Golden-byte checks for every format that outlives a process (test support).
//!
//! A fixture file holds one line per sample value: its name, a space, and the hex of its
//! postcard encoding, written once by the code of the day it was recorded. [`check_file`]
//! fails when a sample no longer encodes to its recorded bytes, when the recorded bytes no
//! longer decode to something that encodes back the same, or when a recorded name has no
//! sample any more. Those are the changes that would make a node misread its own log or a
//! peer's message: a variant inserted in the middle of an enum, a field reordered or retyped.
//!
//! A sample with no recorded line (a variant appended at the end, which is allowed) fails
//! too, unless the test runs with `ASPEN_BLESS=1`: then its line is appended to the file.
//! Blessing never rewrites a line that exists.
//!
//! This module reads and appends fixture files; it is used only by tests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Set to `1` to record samples that have no golden line yet.
pub const BLESS_ENV: &str = "ASPEN_BLESS";

/// One named sample, encoded.
pub struct Sample {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Decodes recorded bytes and encodes them again (so a fixture is checked to still
    /// decode as this type).
    reencode: fn(&[u8]) -> Result<Vec<u8>, String>,
}

fn reencode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let value: T = postcard::from_bytes(bytes).map_err(|e| format!("does not decode: {e}"))?;
    postcard::to_allocvec(&value).map_err(|e| format!("does not encode again: {e}"))
}

/// Encodes `value` as the sample `name`.
pub fn sample<T: Serialize + DeserializeOwned>(name: impl Into<String>, value: &T) -> Sample {
    let name = name.into();
    assert!(!name.contains(char::is_whitespace), "sample name {name:?} must have no whitespace");
    let bytes = postcard::to_allocvec(value).unwrap_or_else(|e| panic!("sample {name} does not encode: {e}"));
    Sample { name, bytes, reencode: reencode::<T> }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("bad hex at {i}: {e}")))
        .collect()
}

/// The recorded lines of a fixture, in file order.
pub fn parse(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, hexed) = line.split_once(' ').ok_or_else(|| format!("line {}: no space", n + 1))?;
        lines.push((name.to_string(), unhex(hexed.trim()).map_err(|e| format!("line {}: {e}", n + 1))?));
    }
    Ok(lines)
}

/// What is wrong between recorded lines and today's samples; empty when they agree.
/// Samples without a line are returned separately: recording them is allowed.
pub fn compare(recorded: &[(String, Vec<u8>)], samples: &[Sample]) -> (Vec<String>, Vec<usize>) {
    let mut problems = Vec::new();
    let mut unrecorded = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if samples[..i].iter().any(|o| o.name == s.name) {
            problems.push(format!("{}: two samples share this name", s.name));
        }
        match recorded.iter().find(|(name, _)| *name == s.name) {
            None => unrecorded.push(i),
            Some((_, bytes)) => {
                if *bytes != s.bytes {
                    problems.push(format!(
                        "{}: encodes to {} but the recorded bytes are {}: the format changed",
                        s.name,
                        hex(&s.bytes),
                        hex(bytes)
                    ));
                }
                match (s.reencode)(bytes) {
                    Ok(again) if again == *bytes => {}
                    Ok(again) => problems.push(format!(
                        "{}: the recorded bytes decode, but encode back as {}",
                        s.name,
                        hex(&again)
                    )),
                    Err(e) => problems.push(format!("{}: the recorded bytes {e}", s.name)),
                }
            }
        }
    }
    for (name, _) in recorded {
        if !samples.iter().any(|s| s.name == *name) {
            problems.push(format!("{name}: recorded, but no sample has this name any more (a removed variant?)"));
        }
    }
    (problems, unrecorded)
}

/// The directory of the crate under test: `CARGO_MANIFEST_DIR` as cargo sets it when it runs
/// the test, else `compiled` (pass `env!("CARGO_MANIFEST_DIR")`). A test binary reused from
/// a build in another checkout (a shared target dir) then still reads this checkout's files.
pub fn crate_dir(compiled: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(compiled))
}

/// Checks `samples` against the fixture at `path` (see the module docs). Panics with every
/// problem found.
pub fn check_file(path: &Path, samples: &[Sample]) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read golden file {}: {e}", path.display()),
    };
    let recorded = parse(&text).unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    let (mut problems, unrecorded) = compare(&recorded, samples);
    if !unrecorded.is_empty() {
        if std::env::var(BLESS_ENV).as_deref() == Ok("1") {
            let mut add = String::new();
            if text.is_empty() {
                add.push_str("# name, then the hex of its postcard encoding; recorded once, never rewritten\n");
            } else if !text.ends_with('\n') {
                add.push('\n');
            }
            for i in &unrecorded {
                let _ = writeln!(add, "{} {}", samples[*i].name, hex(&samples[*i].bytes));
            }
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let mut all = text.clone();
            all.push_str(&add);
            std::fs::write(path, all).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        } else {
            for i in unrecorded {
                problems.push(format!(
                    "{}: no golden bytes recorded; if this is a new variant at the END of its enum, record it with \
                     {BLESS_ENV}=1",
                    samples[i].name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "golden file {} disagrees:\n  {}", path.display(), problems.join("\n  "));
}

/// A recorded text value (a ticket, a token) named `name` in the fixture at `path`: the
/// recorded one when it exists; otherwise, with `ASPEN_BLESS=1`, `make()` is recorded and
/// returned, and without it the test fails. Text fixtures hold values made once with
/// randomness (a token's nonce), which later code must still accept.
pub fn recorded_text(path: &Path, name: &str, make: impl FnOnce() -> String) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        if let Some((n, value)) = line.split_once(' ')
            && n == name
        {
            return value.trim().to_string();
        }
    }
    assert!(
        std::env::var(BLESS_ENV).as_deref() == Ok("1"),
        "golden file {} has no value {name}; record it with {BLESS_ENV}=1",
        path.display()
    );
    let value = make();
    assert!(!value.contains('\n'), "a recorded text value must be one line");
    let mut all = text;
    if all.is_empty() {
        all.push_str("# name, then a text value recorded once and never rewritten\n");
    } else if !all.ends_with('\n') {
        all.push('\n');
    }
    let _ = writeln!(all, "{name} {value}");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, all).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    value
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize)]
    enum Before {
        A(u8),
        B,
    }

    #[derive(Serialize, Deserialize)]
    enum Inserted {
        A(u8),
        New,
        B,
    }

    #[test]
    fn inserting_a_variant_in_the_middle_is_caught() {
        let recorded = vec![
            ("A".to_string(), postcard::to_allocvec(&Before::A(7)).unwrap()),
            ("B".to_string(), postcard::to_allocvec(&Before::B).unwrap()),
        ];
        let today = [sample("A", &Inserted::A(7)), sample("New", &Inserted::New), sample("B", &Inserted::B)];
        let (problems, unrecorded) = compare(&recorded, &today);
        assert_eq!(unrecorded, vec![1]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("B: encodes to"), "{problems:?}");
    }

    #[test]
    fn appending_a_variant_only_needs_recording() {
        #[derive(Serialize, Deserialize)]
        enum Appended {
            A(u8),
            B,
            New,
        }
        let recorded = vec![
            ("A".to_string(), postcard::to_allocvec(&Before::A(7)).unwrap()),
            ("B".to_string(), postcard::to_allocvec(&Before::B).unwrap()),
        ];
        let today = [sample("A", &Appended::A(7)), sample("B", &Appended::B), sample("New", &Appended::New)];
        let (problems, unrecorded) = compare(&recorded, &today);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(unrecorded, vec![2]);
    }

    #[test]
    fn a_removed_variant_and_bad_lines_are_reported() {
        let recorded = vec![("Gone".to_string(), vec![1])];
        let (problems, _) = compare(&recorded, &[]);
        assert!(problems[0].contains("removed"), "{problems:?}");
        assert!(parse("A 0g").is_err());
        assert!(parse("A").is_err());
        assert_eq!(parse("# c\nA 00ff\n").unwrap(), vec![("A".to_string(), vec![0, 255])]);
    }
}
