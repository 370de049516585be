//! Golden bytes of AspenFS's records, as mounts write them under a prefix. A stored value is
//! `record::MAGIC` followed by these bytes. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_core::golden::{check_file, sample};
use aspen_fs::record::{FileData, MAGIC, Record};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn records() -> Vec<(&'static str, Record)> {
    vec![
        (
            "File.Inline",
            Record::File {
                mode: 0o644,
                mtime_ns: 1_700_000_000_123_456_789,
                data: FileData::Inline(b"hello\n".to_vec()),
            },
        ),
        (
            "File.Chunks",
            Record::File {
                mode: 0o755,
                mtime_ns: 1_700_000_000_000_000_002,
                data: FileData::Chunks { size: 5_000_000, chunk_bytes: 4_194_304, chunks: vec![[1; 32], [2; 32]] },
            },
        ),
        ("Dir", Record::Dir { mode: 0o755, mtime_ns: 1_700_000_000_000_000_000 }),
        ("Symlink", Record::Symlink { target: b"../a/b".to_vec(), mtime_ns: 1_700_000_000_000_000_001 }),
    ]
}

#[test]
fn every_variant_has_a_sample() {
    let names: Vec<&str> = records()
        .iter()
        .map(|(_, r)| match r {
            Record::File { data: FileData::Inline(_), .. } => "File.Inline",
            Record::File { data: FileData::Chunks { .. }, .. } => "File.Chunks",
            Record::Dir { .. } => "Dir",
            Record::Symlink { .. } => "Symlink",
        })
        .collect();
    assert_eq!(names, ["File.Inline", "File.Chunks", "Dir", "Symlink"]);
}

#[test]
fn records_keep_their_bytes() {
    let samples: Vec<_> = records().iter().map(|(n, r)| sample(format!("Record.{n}"), r)).collect();
    check_file(&fixture("records.txt"), &samples);
    for (_, r) in records() {
        let value = r.encode();
        assert_eq!(&value[..MAGIC.len()], MAGIC.as_slice());
        assert_eq!(value[MAGIC.len()..], postcard::to_stdvec(&r).unwrap());
    }
}
