//! Golden bytes of the cache's formats: its protocol (`aspen/cache/1`) and the records it
//! keeps in the KV. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_cache::protocol::{CacheInfo, CacheRequest, CacheResponse, CacheSettings, GcReport, PathAdded, PathUpload};
use aspen_cache::records::{self, CacheRecord, Compression, PathRecord, PinRecord, StagedNar};
use aspen_core::AspenError;
use aspen_core::golden::{check_file, recorded_text, sample};

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

const PATH: &str = "5klx9pxl1c90q0j01ph753cpfm5dz3as-hello.txt";

fn cache_record() -> CacheRecord {
    CacheRecord {
        created_ms: 1_700_000_000_000,
        public_key: "main-1:KtECX6znoOeY7pMvkeseXbzIqeh/VZcLXC6jAzHrAXw=".into(),
        public_reads: true,
        compression: Compression::Zstd,
        retention_secs: 86_400,
        priority: 40,
    }
}

fn upload() -> PathUpload {
    PathUpload {
        store_path: PATH.into(),
        nar_hash: [1; 32],
        nar_size: 120,
        references: vec![PATH.into()],
        deriver: Some("afkyq3acdsbm3wbjxwdvmjy1lx6d4pb0-hello.drv".into()),
        ca: Some("fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h".into()),
        sigs: vec!["test-1:AAAA".into()],
    }
}

fn requests() -> Vec<(&'static str, CacheRequest)> {
    let settings = CacheSettings {
        public_reads: false,
        compression: Compression::Xz,
        retention_secs: 3_600,
        priority: 30,
        key_name: Some("main-1".into()),
    };
    let cache = || "main".to_string();
    vec![
        ("CreateCache", CacheRequest::CreateCache { name: cache(), settings }),
        ("ListCaches", CacheRequest::ListCaches { after: Some("a".into()), limit: 10 }),
        ("ShowCache", CacheRequest::ShowCache { name: cache() }),
        ("QueryMissing", CacheRequest::QueryMissing { cache: cache(), store_paths: vec![PATH.into()] }),
        ("NarInfo", CacheRequest::NarInfo { cache: cache(), hash_part: PATH[..32].into() }),
        ("AddPath", CacheRequest::AddPath { cache: cache(), path: upload() }),
        (
            "ReadNar",
            CacheRequest::ReadNar {
                cache: cache(),
                hash_part: PATH[..32].into(),
                nar_hash: Some([2; 32]),
                offset: 5,
                len: 100,
            },
        ),
        ("StageNar", CacheRequest::StageNar { cache: cache(), file_name: "abc.nar.xz".into() }),
        ("AddNarInfo", CacheRequest::AddNarInfo { cache: cache(), text: "StorePath: x\n".into() }),
        ("Pin", CacheRequest::Pin { cache: cache(), name: "release".into(), store_path: PATH.into() }),
        ("Unpin", CacheRequest::Unpin { cache: cache(), name: "release".into() }),
        ("ListPins", CacheRequest::ListPins { cache: cache() }),
        ("CollectGarbage", CacheRequest::CollectGarbage { cache: cache(), dry_run: true }),
    ]
}

fn responses() -> Vec<(&'static str, CacheResponse)> {
    let info = CacheInfo { name: "main".into(), record: cache_record() };
    vec![
        ("Error", CacheResponse::Error(AspenError::invalid("bad"))),
        ("Cache", CacheResponse::Cache(info.clone())),
        ("Caches", CacheResponse::Caches { caches: vec![info], more: true }),
        ("Missing", CacheResponse::Missing(vec![PATH.into()])),
        ("NarInfo", CacheResponse::NarInfo(Some("StorePath: x\n".into()))),
        ("Added", CacheResponse::Added(PathAdded { store_path: PATH.into(), nar_blob: [3; 32], replicas: 2 })),
        ("Nar", CacheResponse::Nar { size: 120 }),
        ("Staged", CacheResponse::Staged { nar_hash: [4; 32], nar_size: 120 }),
        ("Done", CacheResponse::Done),
        ("Pins", CacheResponse::Pins(vec![("release".into(), PinRecord { store_path: PATH.into(), created_ms: 1 })])),
        ("Collected", CacheResponse::Collected(GcReport { kept: 3, deleted: 1, deleted_bytes: 120, dry_run: false })),
    ]
}

/// Every variant has a sample: a new one fails to compile here until it gets one.
fn request_variant(r: &CacheRequest) -> &'static str {
    match r {
        CacheRequest::CreateCache { .. } => "CreateCache",
        CacheRequest::ListCaches { .. } => "ListCaches",
        CacheRequest::ShowCache { .. } => "ShowCache",
        CacheRequest::QueryMissing { .. } => "QueryMissing",
        CacheRequest::NarInfo { .. } => "NarInfo",
        CacheRequest::AddPath { .. } => "AddPath",
        CacheRequest::ReadNar { .. } => "ReadNar",
        CacheRequest::StageNar { .. } => "StageNar",
        CacheRequest::AddNarInfo { .. } => "AddNarInfo",
        CacheRequest::Pin { .. } => "Pin",
        CacheRequest::Unpin { .. } => "Unpin",
        CacheRequest::ListPins { .. } => "ListPins",
        CacheRequest::CollectGarbage { .. } => "CollectGarbage",
    }
}

fn response_variant(r: &CacheResponse) -> &'static str {
    match r {
        CacheResponse::Error(_) => "Error",
        CacheResponse::Cache(_) => "Cache",
        CacheResponse::Caches { .. } => "Caches",
        CacheResponse::Missing(_) => "Missing",
        CacheResponse::NarInfo(_) => "NarInfo",
        CacheResponse::Added(_) => "Added",
        CacheResponse::Nar { .. } => "Nar",
        CacheResponse::Staged { .. } => "Staged",
        CacheResponse::Done => "Done",
        CacheResponse::Pins(_) => "Pins",
        CacheResponse::Collected(_) => "Collected",
    }
}

#[test]
fn every_variant_has_a_sample() {
    assert!(requests().iter().all(|(n, r)| *n == request_variant(r)));
    assert!(responses().iter().all(|(n, r)| *n == response_variant(r)));
    assert_eq!(requests().len(), 13);
    assert_eq!(responses().len(), 11);
}

#[test]
fn cache_protocol_frames_keep_their_bytes() {
    let mut samples: Vec<_> = requests().iter().map(|(n, r)| sample(format!("Request.{n}"), r)).collect();
    samples.extend(responses().iter().map(|(n, r)| sample(format!("Response.{n}"), r)));
    check_file(&fixture("protocol.txt"), &samples);
}

#[test]
fn cache_records_keep_their_bytes_and_keys_their_shape() {
    let path = PathRecord {
        store_path: PATH.into(),
        nar_blob: [5; 32],
        nar_hash: [6; 32],
        nar_size: 120,
        references: vec![PATH.into()],
        deriver: None,
        ca: None,
        sigs: vec!["main-1:AAAA".into()],
        pushed_ms: 1_700_000_000_000,
    };
    let staged = StagedNar { nar_blob: [7; 32], nar_hash: [8; 32], nar_size: 9 };
    let pin = PinRecord { store_path: PATH.into(), created_ms: 1_700_000_000_000 };
    check_file(
        &fixture("records.txt"),
        &[
            sample("CacheRecord", &cache_record()),
            sample("PathRecord", &path),
            sample("StagedNar", &staged),
            sample("PinRecord", &pin),
            sample("Compression.None", &Compression::None),
            sample("Compression.Xz", &Compression::Xz),
            sample("Compression.Zstd", &Compression::Zstd),
        ],
    );
    let file = fixture("keys.txt");
    for (name, key) in [
        ("cache_key", records::cache_key("main")),
        ("secret_key", records::secret_key("main")),
        ("path_key", records::path_key("main", &PATH[..32])),
        ("staged_key", records::staged_key("main", "abc.nar.xz")),
        ("pin_key", records::pin_key("main", "release")),
        ("activity_key", records::activity_key("main")),
        ("gc_fence_key", records::gc_fence_key("main")),
        ("blob_pin", records::blob_pin("main", &PATH[..32]).into_bytes()),
    ] {
        let text = String::from_utf8(key).unwrap();
        assert_eq!(recorded_text(&file, name, || text.clone()), text, "{name} changed shape");
    }
}
