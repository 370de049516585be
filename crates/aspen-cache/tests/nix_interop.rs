//! The cache's formats against the real `nix` (2.8 here): keys `nix-store
//! --generate-binary-cache-key` makes are read, and a path signed by `nix store sign` gets
//! the same signature from [`SigningKey::sign`] over [`NarInfo::fingerprint`], which
//! verifies with the public key nix wrote.

use std::process::Command;

use aspen_cache::signing::verify;
use aspen_cache::{NarInfo, Sha256, SigningKey, StorePathName};

fn nix_available() -> bool {
    Command::new("nix-store").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run nix");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn signatures_match_what_nix_itself_makes() {
    if !nix_available() {
        eprintln!("SKIPPED: no nix-store on PATH (scripts/test.sh installs nix-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("sk"), dir.path().join("pk"));
    run(Command::new("nix-store").arg("--generate-binary-cache-key").arg("interop-1").arg(&sk).arg(&pk));
    let key = SigningKey::parse(&std::fs::read_to_string(&sk).unwrap()).unwrap();
    let nix_public = std::fs::read_to_string(&pk).unwrap();
    assert_eq!(key.public_key(), nix_public.trim(), "the public key nix wrote");
    assert_eq!(SigningKey::parse(&key.to_secret_text()).unwrap().public_key(), key.public_key());

    // A path in a store of its own (a chroot store under the temp dir), signed by nix.
    let store = dir.path().join("store");
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, format!("signed by nix and by aspen, {:?}\n", std::time::SystemTime::now())).unwrap();
    let nix = || {
        let mut c = Command::new("nix");
        c.args(["--extra-experimental-features", "nix-command", "--store"]).arg(&store);
        c
    };
    let path = run(nix().args(["store", "add-file"]).arg(&file)).trim().to_string();
    run(nix().args(["store", "sign", "--key-file"]).arg(&sk).arg(&path));
    let info: serde_json::Value =
        serde_json::from_str(&run(nix().args(["path-info", "--json", "--sigs"]).arg(&path))).unwrap();
    let info = &info[0];
    let nix_sig = info["signatures"][0].as_str().unwrap().to_string();

    let narinfo = NarInfo {
        store_path: StorePathName::from_path(&path).unwrap(),
        url: "nar/x.nar".into(),
        compression: "none".into(),
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::parse(info["narHash"].as_str().unwrap()).unwrap(),
        nar_size: info["narSize"].as_u64().unwrap(),
        references: Vec::new(),
        deriver: None,
        sigs: vec![nix_sig.clone()],
        ca: info["ca"].as_str().map(str::to_string),
    };
    let fingerprint = narinfo.fingerprint();
    assert_eq!(key.sign(&fingerprint), nix_sig, "ed25519 is deterministic: the same key signs the same bytes alike");
    assert!(verify(&fingerprint, &nix_sig, &[nix_public.trim().to_string()]).unwrap());
    let parsed = NarInfo::parse(&narinfo.render()).unwrap();
    assert_eq!(parsed, narinfo);
    let tampered = NarInfo { nar_size: narinfo.nar_size + 1, ..narinfo.clone() }.fingerprint();
    assert_ne!(tampered, fingerprint);
    assert!(!verify(&tampered, &nix_sig, &[nix_public.trim().to_string()]).unwrap(), "another size, no match");
}
