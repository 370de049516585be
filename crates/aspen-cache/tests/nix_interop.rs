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

#[test]
fn nars_nix_dumps_check_and_hash_as_nix_records_them() {
    if !nix_available() {
        eprintln!("SKIPPED: no nix-store on PATH (scripts/test.sh installs nix-bin)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("a.txt"), "a\n").unwrap();
    std::fs::write(tree.join("sub/deeper/big.bin"), vec![7u8; 300_001]).unwrap();
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    std::fs::create_dir(tree.join("empty")).unwrap();

    let dump = Command::new("nix-store").arg("--dump").arg(&tree).output().unwrap();
    assert!(dump.status.success());
    let summary = aspen_cache::nar::check_nar(&dump.stdout[..]).unwrap();
    assert_eq!(summary.nar_size, dump.stdout.len() as u64);

    // What nix records for the same tree, added to a store of its own.
    let store = dir.path().join("store");
    let mut add = Command::new("nix-store");
    add.arg("--store").arg(&store).arg("--add").arg(&tree);
    let path = run(&mut add).trim().to_string();
    let mut info = Command::new("nix");
    info.args(["--extra-experimental-features", "nix-command", "--store"])
        .arg(&store)
        .args(["path-info", "--json"])
        .arg(&path);
    let info: serde_json::Value = serde_json::from_str(&run(&mut info)).unwrap();
    assert_eq!(summary.nar_hash, Sha256::parse(info[0]["narHash"].as_str().unwrap()).unwrap());
    assert_eq!(summary.nar_size, info[0]["narSize"].as_u64().unwrap());

    // A cut NAR is refused.
    let cut = &dump.stdout[..dump.stdout.len() - 8];
    assert!(aspen_cache::nar::check_nar(cut).unwrap_err().to_string().contains("ends early"));
}
