//! The forge with the real `git` client against real node processes: `git push`, `clone`,
//! `fetch`, `pull` and `ls-remote` through `git-remote-aspen`, the rules refs obey, token
//! scopes, push events, racing pushes, corrupt packs and a leader killed mid-push.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_forge::ForgeClient;
use aspen_forge::records::{self, PushEvent};
use aspen_kv::KvExt;
use aspen_testkit::git::GitEnv;
use aspen_testkit::harness::TestCluster;

/// Where `git-remote-aspen` is, for [`GitEnv`].
fn helper_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_git-remote-aspen")).parent().expect("bin dir").to_path_buf()
}

/// `git show-ref` (or `ls-remote`) output as sorted `(name, id)` pairs, peeled entries
/// and HEAD left out.
fn refs(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(['\t', ' '])?;
            (name.starts_with("refs/") && !name.ends_with("^{}")).then(|| (name.to_string(), id.to_string()))
        })
        .collect();
    out.sort();
    out
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// A history with what a real repository has: several commits, a binary file, a rename, a
/// branch merged back, an annotated and a lightweight tag.
fn make_history(git: &GitEnv, dir: &Path) {
    git.ok(dir, &["init", "-q", "-b", "main"]);
    for i in 0..5 {
        write(&dir.join(format!("src/file{i}.txt")), format!("line {i}\n").repeat(50 + i));
        git.ok(dir, &["add", "-A"]);
        git.ok(dir, &["commit", "-qm", &format!("commit {i}")]);
    }
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    write(&dir.join("assets/blob.bin"), &binary);
    git.ok(dir, &["add", "-A"]);
    git.ok(dir, &["commit", "-qm", "a binary file"]);
    git.ok(dir, &["mv", "src/file0.txt", "src/renamed.txt"]);
    git.ok(dir, &["commit", "-qm", "a rename"]);
    git.ok(dir, &["checkout", "-qb", "topic"]);
    write(&dir.join("src/topic.txt"), "topic work\n");
    git.ok(dir, &["add", "-A"]);
    git.ok(dir, &["commit", "-qm", "topic work"]);
    git.ok(dir, &["checkout", "-q", "main"]);
    write(&dir.join("src/file1.txt"), "changed on main\n");
    git.ok(dir, &["commit", "-qam", "main work"]);
    git.ok(dir, &["merge", "-q", "--no-edit", "--no-ff", "topic"]);
    git.ok(dir, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    git.ok(dir, &["tag", "light"]);
}

fn forge_cap(right: &str, scope: &str) -> Capability {
    Capability::App { app: "forge".into(), right: right.into(), scope: scope.as_bytes().to_vec() }
}

async fn events(c: &TestCluster) -> Vec<PushEvent> {
    let client = c.client().await;
    let (kvs, _) = client.scan_all(records::EVENT_PREFIX, ReadConsistency::Linearizable).await.expect("scan events");
    client.close().await;
    kvs.iter().map(|kv| postcard::from_bytes(&kv.value).expect("event decodes")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_round_trips_a_repository_and_refs_follow_the_rules() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let forge = ForgeClient::new(&client);
    forge.create_repo("team/app", "", "main").await.unwrap();
    let git = GitEnv::new(&c, helper_dir());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_history(&git, &src);
    git.ok(&src, &["remote", "add", "origin", "aspen://default/team/app"]);

    // Push everything, clone it back: same refs, and the clone passes fsck --strict.
    git.ok(&src, &["push", "-q", "origin", "main", "topic"]);
    git.ok(&src, &["push", "-q", "--tags", "origin"]);
    let source_refs = refs(&git.ok(&src, &["show-ref", "--heads", "--tags"]));
    assert_eq!(refs(&git.ok(&src, &["ls-remote", "origin"])), source_refs);
    git.ok(work.path(), &["clone", "-q", "aspen://default/team/app", "clone"]);
    let clone = work.path().join("clone");
    git.ok(&clone, &["fsck", "--strict"]);
    git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/team/app", "mirror.git"]);
    let mirror = work.path().join("mirror.git");
    git.ok(&mirror, &["fsck", "--strict"]);
    assert_eq!(refs(&git.ok(&mirror, &["show-ref", "--heads", "--tags"])), source_refs);
    assert_eq!(
        std::fs::read(clone.join("assets/blob.bin")).unwrap(),
        std::fs::read(src.join("assets/blob.bin")).unwrap()
    );
    assert!(clone.join("src/renamed.txt").is_file() && !clone.join("src/file0.txt").exists());

    // A new commit moves only what is new; fetch and pull bring it.
    write(&src.join("src/new.txt"), "new\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "one more"]);
    let pushed = git.run(&src, &["push", "origin", "main"]);
    assert!(pushed.status.success());
    let progress = String::from_utf8_lossy(&pushed.stderr);
    assert!(progress.contains("main -> main"), "{progress}");
    git.ok(&clone, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(git.ok(&clone, &["rev-parse", "HEAD"]), git.ok(&src, &["rev-parse", "HEAD"]));

    // Shallow clone, then deepen.
    git.ok(work.path(), &["clone", "-q", "--depth", "1", "aspen://default/team/app", "shallow"]);
    let shallow = work.path().join("shallow");
    assert_eq!(git.ok(&shallow, &["rev-list", "--count", "HEAD"]).trim(), "1");
    git.ok(&shallow, &["fetch", "-q", "--deepen", "1"]);
    assert_eq!(git.ok(&shallow, &["rev-list", "--count", "HEAD"]).trim(), "2", "the tip and the merge below it");
    git.ok(&shallow, &["fetch", "-q", "--unshallow"]);
    assert_eq!(git.ok(&shallow, &["rev-list", "--count", "HEAD"]), git.ok(&src, &["rev-list", "--count", "HEAD"]));
    git.ok(&shallow, &["fsck", "--strict"]);

    // Partial clone: history without old blobs, which are fetched when first needed.
    git.ok(work.path(), &["clone", "-q", "--filter=blob:none", "aspen://default/team/app", "partial"]);
    let partial = work.path().join("partial");
    let missing = git.ok(&partial, &["rev-list", "--objects", "--missing=print", "--all"]);
    assert!(missing.lines().any(|l| l.starts_with('?')), "a blob:none clone lacks old blobs");
    assert_eq!(git.ok(&partial, &["show", "HEAD~3:src/file2.txt"]), git.ok(&src, &["show", "HEAD~3:src/file2.txt"]));

    // Non-fast-forward: refused unless forced.
    let main_before = git.ok(&src, &["rev-parse", "main"]);
    git.ok(&src, &["reset", "-q", "--hard", "HEAD~1"]);
    write(&src.join("diverged.txt"), "diverged\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "diverged"]);
    let err = git.fails(&src, &["push", "origin", "main"]);
    assert!(err.contains("[rejected]") && err.contains("non-fast-forward"), "{err}");
    git.ok(&src, &["push", "-q", "--force", "origin", "main"]);
    assert_eq!(
        refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"]))[0].1,
        git.ok(&src, &["rev-parse", "main"]).trim()
    );

    // A protected branch refuses force pushes and deletes; others can be deleted.
    forge.protect("team/app", "main", true).await.unwrap();
    git.ok(&src, &["reset", "-q", "--hard", main_before.trim()]);
    let err = git.fails(&src, &["push", "--force", "origin", "main"]);
    assert!(err.contains("remote rejected") && err.contains("protected branch main"), "{err}");
    let err = git.fails(&src, &["push", "origin", ":main"]);
    assert!(err.contains("refusing to delete the protected branch main"), "{err}");
    git.ok(&src, &["push", "-q", "origin", ":topic"]);
    assert!(refs(&git.ok(&src, &["ls-remote", "origin"])).iter().all(|(n, _)| n != "refs/heads/topic"));

    // --atomic: all or nothing. One ref may not move (the protected main), so neither does.
    let head_main = refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"]));
    git.ok(&src, &["checkout", "-qb", "feature"]);
    let err = git.fails(&src, &["push", "--atomic", "--force", "origin", "feature", "main"]);
    assert!(err.contains("atomic"), "{err}");
    let after = refs(&git.ok(&src, &["ls-remote", "origin"]));
    assert!(after.iter().all(|(n, _)| n != "refs/heads/feature"), "{after:?}");
    assert_eq!(refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"])), head_main);
    git.ok(&src, &["push", "-q", "--atomic", "origin", "feature", "HEAD:refs/heads/second"]);

    // Token scopes: read on team/ clones team/app but cannot push; nothing under other/.
    forge.create_repo("other/secret", "", "main").await.unwrap();
    let reader = git.with_token(&c.token_with(vec![forge_cap("read", "team/")]));
    reader.ok(work.path(), &["clone", "-q", "aspen://default/team/app", "as-reader"]);
    let err = reader.fails(&work.path().join("as-reader"), &["push", "origin", "HEAD:refs/heads/reader"]);
    assert!(err.contains("permission denied") && err.contains("forge:push"), "{err}");
    let err = reader.fails(work.path(), &["clone", "-q", "aspen://default/other/secret", "nope"]);
    assert!(err.contains("permission denied") && err.contains("forge:read"), "{err}");
    let err = git.fails(work.path(), &["clone", "-q", "aspen://default/team/missing", "missing"]);
    assert!(err.contains("does not exist"), "{err}");

    // Every accepted ref update left exactly one event, in the same transaction.
    let events = events(&c).await;
    let main_events = events.iter().filter(|e| e.repo == "team/app" && e.ref_name == "refs/heads/main").count();
    assert_eq!(main_events, 3, "created, fast-forwarded, forced: {events:#?}");
    let deleted = events.iter().find(|e| e.ref_name == "refs/heads/topic" && e.new.is_none()).expect("delete event");
    assert!(deleted.old.is_some());
    assert!(events.iter().any(|e| e.ref_name == "refs/tags/v1.0"));
    assert!(events.iter().all(|e| e.pusher.len() == 64));
    client.close().await;
}

/// A deterministic history of `commits` commits touching `files` files each, written with
/// `git fast-import` (fast, and the same bytes on every run).
fn bulk_history(git: &GitEnv, dir: &Path, commits: usize, files: usize) {
    git.ok(dir, &["init", "-q", "-b", "main"]);
    let mut stream = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for c in 0..commits {
        stream.extend_from_slice(b"commit refs/heads/main\n");
        stream.extend_from_slice(
            format!("committer Ada <ada@example.org> {} +0000\n", 1_600_000_000 + c * 60).as_bytes(),
        );
        let message = format!("commit {c}\n");
        stream.extend_from_slice(format!("data {}\n{message}", message.len()).as_bytes());
        for _ in 0..files {
            let n = next() % (files as u64 * 4);
            let body: String = (0..40).map(|i| format!("{:x} line {i} of file {n}\n", next())).collect();
            stream.extend_from_slice(format!("M 100644 inline dir{}/file{n}.txt\n", n % 16).as_bytes());
            stream.extend_from_slice(format!("data {}\n{body}\n", body.len()).as_bytes());
        }
        stream.push(b'\n');
    }
    stream.extend_from_slice(b"done\n");
    let mut child = git.command(dir, &["fast-import", "--quiet", "--done"]).stdin(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stream).unwrap();
    }
    assert!(child.wait().unwrap().success(), "fast-import");
    git.ok(dir, &["reset", "-q", "--hard", "main"]);
}

/// Speaks receive-pack directly (as no honest git client would): one command, then `pack`
/// as the pack. Returns the report's lines.
async fn raw_push(client: &aspen_client::Client, repo: &str, command: &str, pack: &[u8]) -> Vec<String> {
    use aspen_forge::pktline::{self, Pkt};
    use aspen_forge::protocol::{FORGE_ALPN, ForgeRequest, ForgeResponse, GitService};
    use tokio::io::AsyncWriteExt;
    let mut s = client.app(FORGE_ALPN).open_stream().await.unwrap();
    let request =
        ForgeRequest::Connect { repo: repo.into(), service: GitService::ReceivePack, protocol: String::new() };
    aspen_net::write_frame(&mut s.send, &request).await.unwrap();
    let answer: ForgeResponse = aspen_net::read_frame(&mut s.recv).await.unwrap().unwrap();
    assert_eq!(answer, ForgeResponse::Connected);
    while let Some(Pkt::Data(_)) = pktline::read_pkt(&mut s.recv).await.unwrap() {}
    let mut out = pktline::encode(format!("{command}\0report-status\n").as_bytes());
    out.extend_from_slice(pktline::FLUSH);
    out.extend_from_slice(pack);
    AsyncWriteExt::write_all(&mut s.send, &out).await.unwrap();
    s.send.finish().unwrap();
    let mut lines = Vec::new();
    while let Some(Pkt::Data(line)) = pktline::read_pkt(&mut s.recv).await.unwrap() {
        lines.push(String::from_utf8_lossy(pktline::chomp(&line)).into_owned());
    }
    lines
}

/// A pack of exactly the objects named on stdin (`--revs` when `revs`), from `dir`.
fn pack_objects(git: &GitEnv, dir: &Path, input: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["pack-objects", "--stdout", "-q"];
    args.extend_from_slice(extra);
    let mut child = git.command(dir, &args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "pack-objects");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_packs_are_refused_and_no_ref_moves() {
    let c = TestCluster::start(1).await;
    let client = c.client().await;
    ForgeClient::new(&client).create_repo("packs", "", "main").await.unwrap();
    let git = GitEnv::new(&c, helper_dir());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_history(&git, &src);
    let base = git.ok(&src, &["rev-parse", "main~1"]).trim().to_string();
    git.ok(&src, &["push", "-q", "aspen://default/packs", &format!("{base}:refs/heads/main")]);
    let tip = git.ok(&src, &["rev-parse", "main"]).trim().to_string();
    let zero = "0".repeat(40);
    let update = format!("{base} {tip} refs/heads/main");
    let good = pack_objects(&git, &src, &format!("{tip}\n^{base}\n"), &["--revs"]);

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let mut bad_trailer = good.clone();
    *bad_trailer.last_mut().unwrap() ^= 1;
    let truncated = good[..good.len() - 30].to_vec();
    // Deltas against an object the server never had.
    let elsewhere = tempfile::tempdir().unwrap();
    make_history(&git, elsewhere.path());
    write(&elsewhere.path().join("src/file1.txt"), "changed on main\nand again\n");
    git.ok(elsewhere.path(), &["commit", "-qam", "not on the server"]);
    let foreign_base = git.ok(elsewhere.path(), &["rev-parse", "HEAD~1"]).trim().to_string();
    let foreign_tip = git.ok(elsewhere.path(), &["rev-parse", "HEAD"]).trim().to_string();
    let thin =
        pack_objects(&git, elsewhere.path(), &format!("{foreign_tip}\n^{foreign_base}\n"), &["--revs", "--thin"]);
    // A commit whose tree and parent the pack lacks.
    let lone_commit = pack_objects(&git, &src, &format!("{tip}\n"), &[]);

    let cases: [(&str, &[u8], String); 6] = [
        ("a flipped byte", &flipped, update.clone()),
        ("a wrong trailer", &bad_trailer, update.clone()),
        ("a truncated pack", &truncated, update.clone()),
        ("a thin pack with a foreign base", &thin, format!("{zero} {foreign_tip} refs/heads/foreign")),
        ("a commit without its tree", &lone_commit, update.clone()),
        ("no pack at all", b"PACK", update.clone()),
    ];
    for (what, pack, command) in cases {
        let report = raw_push(&client, "packs", &command, pack).await;
        eprintln!("{what}: {report:?}");
        assert!(report.first().is_some_and(|l| l.starts_with("unpack ") && l != "unpack ok"), "{what}: {report:?}");
        assert!(report.iter().skip(1).all(|l| l.starts_with("ng ")), "{what}: {report:?}");
        let remote = refs(&git.ok(&src, &["ls-remote", "aspen://default/packs"]));
        assert_eq!(remote, vec![("refs/heads/main".to_string(), base.clone())], "{what} moved a ref");
    }
    let report = raw_push(&client, "packs", &format!("{zero} {tip} refs/heads/lone"), &lone_commit).await;
    assert!(report[0].contains("names tree") || report[0].contains("names parent"), "{report:?}");

    // The good pack is taken, and the repository is whole.
    let report = raw_push(&client, "packs", &update, &good).await;
    assert_eq!(report, ["unpack ok", "ok refs/heads/main"]);
    git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/packs", "check.git"]);
    git.ok(&work.path().join("check.git"), &["fsck", "--strict"]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pushes_to_one_branch_have_exactly_one_winner() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    ForgeClient::new(&client).create_repo("race", "", "main").await.unwrap();
    let git = GitEnv::new(&c, helper_dir());
    let work = tempfile::tempdir().unwrap();
    let seed = work.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    make_history(&git, &seed);
    git.ok(&seed, &["push", "-q", "aspen://default/race", "main"]);
    const PUSHERS: usize = 4;
    const ROUNDS: usize = 3;
    let mut clones = Vec::new();
    for i in 0..PUSHERS {
        let name = format!("c{i}");
        git.ok(work.path(), &["clone", "-q", "aspen://default/race", &name]);
        clones.push(work.path().join(name));
    }
    for round in 0..ROUNDS {
        for (i, dir) in clones.iter().enumerate() {
            git.ok(dir, &["fetch", "-q", "origin"]);
            git.ok(dir, &["reset", "-q", "--hard", "origin/main"]);
            write(&dir.join(format!("round{round}-pusher{i}.txt")), format!("{round} {i}\n"));
            git.ok(dir, &["add", "-A"]);
            git.ok(dir, &["commit", "-qm", &format!("round {round} by {i}")]);
        }
        let children: Vec<_> = clones
            .iter()
            .map(|dir| {
                git.command(dir, &["push", "origin", "main"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let winners: Vec<usize> = (0..PUSHERS).filter(|&i| outputs[i].status.success()).collect();
        for out in &outputs {
            eprintln!(
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| l.contains("main"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect::<Vec<_>>()
        );
        for (i, out) in outputs.iter().enumerate().filter(|(i, _)| *i != winners[0]) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("cannot lock ref") || err.contains("fetch first") || err.contains("non-fast-forward"),
                "round {round}, pusher {i}: {err}"
            );
        }
        let winner_head = git.ok(&clones[winners[0]], &["rev-parse", "HEAD"]);
        let remote = refs(&git.ok(&clones[0], &["ls-remote", "origin", "refs/heads/main"]));
        assert_eq!(remote[0].1, winner_head.trim(), "round {round}");
    }
    let main_events = events(&c).await.into_iter().filter(|e| e.ref_name == "refs/heads/main").count();
    assert_eq!(main_events, 1 + ROUNDS, "one event per accepted update, none for the losers");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_push_leaves_the_old_ref_or_the_new_never_a_dangling_one() {
    let mut c = TestCluster::start(3).await;
    let client = c.client().await;
    ForgeClient::new(&client).create_repo("crash", "", "main").await.unwrap();
    client.close().await;
    let git = GitEnv::new(&c, helper_dir());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    bulk_history(&git, &src, 120, 40);
    let commits: Vec<String> = git.ok(&src, &["rev-list", "--reverse", "main"]).lines().map(str::to_string).collect();
    let mut expected: Option<String> = None;
    for (round, delay_ms) in [50u64, 300, 900].into_iter().enumerate() {
        let target = commits[(round + 1) * commits.len() / 3 - 1].clone();
        let push = git
            .command(&src, &["push", "--force", "aspen://default/crash", &format!("{target}:refs/heads/main")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        c.kill_and_restart_leader().await;
        let pushed = tokio::task::spawn_blocking(move || push.wait_with_output().unwrap()).await.unwrap();
        c.wait_for_leader().await;
        eprintln!("round {round}: push {} ({})", pushed.status, String::from_utf8_lossy(&pushed.stderr).trim());

        // The ref is where it was or where the push put it, and what it names is whole.
        let remote = aspen_testkit::harness::eventually("ls-remote answers", || async {
            let out = git.run(&src, &["ls-remote", "aspen://default/crash", "refs/heads/main"]);
            out.status.success().then(|| refs(&String::from_utf8_lossy(&out.stdout)))
        })
        .await;
        let now = remote.first().map(|(_, id)| id.clone());
        assert!(
            now == expected || now.as_deref() == Some(target.as_str()),
            "round {round}: main is at {now:?}, neither the old {expected:?} nor the pushed {target} (push: {})",
            String::from_utf8_lossy(&pushed.stderr)
        );
        if pushed.status.success() {
            assert_eq!(now.as_deref(), Some(target.as_str()), "round {round}: git said the push succeeded");
        }
        if now.is_some() {
            let clone = format!("clone{round}");
            git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/crash", &clone]);
            git.ok(&work.path().join(&clone), &["fsck", "--strict"]);
        }

        // As a user would: push again until it is in.
        aspen_testkit::harness::eventually("the push goes through", || async {
            let out = git
                .run(&src, &["push", "-q", "--force", "aspen://default/crash", &format!("{target}:refs/heads/main")]);
            out.status.success().then_some(())
        })
        .await;
        expected = Some(target);
    }
    git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/crash", "final.git"]);
    let final_repo = work.path().join("final.git");
    git.ok(&final_repo, &["fsck", "--strict"]);
    let expected = expected.unwrap();
    assert_eq!(git.ok(&final_repo, &["rev-parse", "main"]).trim(), expected);

    // The events, in revision order, are one unbroken chain of the ref's moves: none lost
    // (each starts where the last ended) and none written twice (a repeat would restart
    // from an old id), across three leader kills.
    let client = c.client().await;
    let (events, _) = ForgeClient::new(&client).events("crash", 0, 0).await.unwrap();
    client.close().await;
    let hex = |id: &Option<[u8; 20]>| id.map(|i| records::hex(&i));
    let mut at: Option<String> = None;
    for e in &events {
        assert_eq!(
            hex(&e.event.old),
            at,
            "event at revision {} does not start where the last ended: {events:#?}",
            e.revision
        );
        at = hex(&e.event.new);
    }
    assert_eq!(at.as_deref(), Some(expected.as_str()), "the last event ends at the ref: {events:#?}");
    assert_eq!(events.len(), 3, "one move per round: {events:#?}");
}

/// How many objects the repository's pack records hold.
async fn stored_objects(c: &TestCluster, repo: &str) -> (usize, u64) {
    let client = c.client().await;
    let (kvs, _) =
        client.scan_all(records::packs_prefix(repo), ReadConsistency::Linearizable).await.expect("scan packs");
    client.close().await;
    let objects = kvs.iter().map(|kv| postcard::from_bytes::<records::PackRecord>(&kv.value).unwrap().objects as u64);
    (kvs.len(), objects.sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_share_objects_and_collection_keeps_what_any_fork_reaches() {
    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let forge = ForgeClient::new(&client);
    forge.create_repo("gc/base", "", "main").await.unwrap();
    let git = GitEnv::new(&c, helper_dir());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_history(&git, &src);
    git.ok(&src, &["remote", "add", "origin", "aspen://default/gc/base"]);
    git.ok(&src, &["remote", "add", "fork", "aspen://default/gc/fork"]);
    git.ok(&src, &["push", "-q", "origin", "main", "topic"]);

    // A branch only the fork will reach once the base drops it.
    git.ok(&src, &["checkout", "-qb", "shared", "main"]);
    write(&src.join("shared.txt"), "kept alive by the fork\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "shared"]);
    git.ok(&src, &["push", "-q", "origin", "shared"]);
    let shared = git.ok(&src, &["rev-parse", "shared"]).trim().to_string();

    // The fork: same refs, no pack of its own, clones whole.
    let (base_packs, _) = stored_objects(&c, "gc/base").await;
    let info = forge.fork_repo("gc/base", "gc/fork").await.unwrap();
    assert_eq!(info.parent.as_deref(), Some("gc/base"));
    assert_eq!(stored_objects(&c, "gc/fork").await, (0, 0), "a fork copies no objects");
    assert_eq!(refs(&git.ok(&src, &["ls-remote", "fork"])), refs(&git.ok(&src, &["ls-remote", "origin"])));
    git.ok(work.path(), &["clone", "-q", "aspen://default/gc/fork", "fork-clone"]);
    git.ok(&work.path().join("fork-clone"), &["fsck", "--strict"]);
    // A push to the fork stores only what is new.
    git.ok(&src, &["checkout", "-qb", "on-fork", "shared"]);
    write(&src.join("fork.txt"), "fork work\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "fork work"]);
    git.ok(&src, &["push", "-q", "fork", "on-fork"]);
    let (fork_packs, fork_objects) = stored_objects(&c, "gc/fork").await;
    assert_eq!(fork_packs, 1);
    assert!(fork_objects <= 4, "one commit, its tree and blob (and a tree above): {fork_objects}");

    // Garbage in the base: a branch pushed and deleted (no one reaches it), and the base
    // dropping `shared` (the fork still reaches it).
    git.ok(&src, &["checkout", "-qb", "junk", "main"]);
    write(&src.join("junk.bin"), (0..50_000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>());
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "junk"]);
    let junk = git.ok(&src, &["rev-parse", "junk"]).trim().to_string();
    git.ok(&src, &["push", "-q", "origin", "junk"]);
    git.ok(&src, &["push", "-q", "origin", ":junk", ":shared"]);
    let (packs_before, objects_before) = stored_objects(&c, "gc/base").await;
    assert_eq!(packs_before, base_packs + 1);

    // The deleting client sees the base refuse deletion while the fork exists.
    let err = forge.delete_repo("gc/base").await.unwrap_err().to_string();
    assert!(err.contains("has forks") && err.contains("gc/fork"), "{err}");

    // Within the grace period nothing is collected; with none, the junk goes.
    let report = forge.collect_garbage("gc/base", None).await.unwrap();
    assert_eq!(report.packs_collected, 0, "{report:?}");
    let report = forge.collect_garbage("gc/base", Some(0)).await.unwrap();
    assert_eq!(report.packs_collected as usize, packs_before, "{report:?}");
    assert_eq!(report.packs_after, 1, "{report:?}");
    let (_, objects_after) = stored_objects(&c, "gc/base").await;
    assert_eq!(objects_after, report.objects_kept);
    assert_eq!(objects_before - objects_after, 3, "the junk commit, its tree and its blob: {report:?}");

    // Everything still reachable is still there: both repositories clone whole, the fork
    // still has `shared`, and the junk commit is gone from every pack.
    git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/gc/base", "base-after.git"]);
    git.ok(&work.path().join("base-after.git"), &["fsck", "--strict"]);
    git.ok(work.path(), &["clone", "-q", "--mirror", "aspen://default/gc/fork", "fork-after.git"]);
    let fork_after = work.path().join("fork-after.git");
    git.ok(&fork_after, &["fsck", "--strict"]);
    assert_eq!(git.ok(&fork_after, &["rev-parse", "refs/heads/shared"]).trim(), shared);
    let out = git.run(&fork_after, &["cat-file", "-e", &junk]);
    assert!(!out.status.success(), "the junk commit was collected");
    // A second collection has nothing to gain.
    let again = forge.collect_garbage("gc/base", Some(0)).await.unwrap();
    assert_eq!((again.packs_collected, again.packs_after), (0, 1), "{again:?}");

    // Events: every ref update of the family, in revision order, resumable from a revision,
    // and followed live.
    let (all, next) = forge.events("gc/", 0, 0).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].revision <= w[1].revision));
    assert_eq!(all.iter().filter(|e| e.event.repo == "gc/fork").count(), 1, "{all:#?}");
    assert_eq!(
        all.iter().filter(|e| e.event.repo == "gc/base").count(),
        6,
        "main, topic, shared, junk and two deletes: {all:#?}"
    );
    let (none, _) = forge.events("gc/", next, 0).await.unwrap();
    assert!(none.is_empty());
    let base: Vec<u64> = all.iter().filter(|e| e.event.repo == "gc/base").map(|e| e.revision).collect();
    let (tail, _) = forge.events("gc/base", base[3], 0).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.revision).collect::<Vec<_>>(), base[3..]);
    let follower = {
        let forge = forge.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let followed = forge
                .follow_events("gc/fork", next, |events, _| {
                    seen.extend(events);
                    seen.len() < 2
                })
                .await;
            (followed, seen)
        })
    };
    git.ok(&src, &["push", "-q", "fork", "main:refs/heads/live-1"]);
    git.ok(&src, &["push", "-q", "fork", "main:refs/heads/live-2"]);
    let (followed, seen) = tokio::time::timeout(std::time::Duration::from_secs(60), follower).await.unwrap().unwrap();
    followed.unwrap();
    let names: Vec<&str> = seen.iter().map(|e| e.event.ref_name.as_str()).collect();
    assert_eq!(names, ["refs/heads/live-1", "refs/heads/live-2"]);

    // Deleting the fork frees the base; deleting the base drops its packs.
    forge.delete_repo("gc/fork").await.unwrap();
    forge.delete_repo("gc/base").await.unwrap();
    assert_eq!(stored_objects(&c, "gc/base").await, (0, 0));
    assert_eq!(stored_objects(&c, "gc/fork").await, (0, 0));
    client.close().await;
}

/// The `aspen` CLI, run with a git environment's ticket and token.
trait AspenCli {
    /// Runs the `aspen` CLI as a user whose configuration (and signing key) is in `config`;
    /// panics unless it succeeds. Returns stdout.
    fn aspen(&self, config: &Path, args: &[&str]) -> String {
        let out = self.aspen_run(config, args);
        assert!(out.status.success(), "aspen {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn aspen_run(&self, config: &Path, args: &[&str]) -> Output;

    fn aspen_json(&self, config: &Path, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.aspen(config, &all)).expect("json")
    }
}

impl AspenCli for GitEnv {
    fn aspen_run(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(args)
            .env("ASPEN_CONFIG_DIR", config)
            .env("ASPEN_TICKET", self.ticket())
            .env("ASPEN_TOKEN", self.token())
            .env_remove("ASPEN_TICKET_FILE")
            .env_remove("ASPEN_TOKEN_FILE")
            .env_remove("ASPEN_SIGNING_KEY_FILE")
            .env_remove("ASPEN_CLUSTER")
            .stdin(Stdio::null())
            .output()
            .expect("run aspen")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_and_patches_from_two_writers_converge_and_a_merge_moves_the_branch_like_a_push() {
    use aspen_forge::cob::{Action, Change, CobKind, CobStatus};

    let c = TestCluster::start(3).await;
    let client = c.client().await;
    let forge = ForgeClient::new(&client);
    forge.create_repo("collab/app", "", "main").await.unwrap();
    let git = GitEnv::new(&c, helper_dir());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_history(&git, &src);
    git.ok(&src, &["remote", "add", "origin", "aspen://default/collab/app"]);
    git.ok(&src, &["checkout", "-qb", "feature", "main"]);
    write(&src.join("feature.txt"), "a feature\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "a feature"]);
    git.ok(&src, &["push", "-q", "origin", "main", "feature"]);

    // Two users, each with a signing key of their own.
    let ada = work.path().join("ada");
    let bob = work.path().join("bob");
    let err =
        String::from_utf8(git.aspen_run(&ada, &["issue", "create", "collab/app", "--title", "x"]).stderr).unwrap();
    assert!(err.contains("aspen identity create"), "{err}");
    let ada_key = git.aspen_json(&ada, &["identity", "create"])["public_key"].as_str().unwrap().to_string();
    let bob_key = git.aspen_json(&bob, &["identity", "create"])["public_key"].as_str().unwrap().to_string();
    assert_ne!(ada_key, bob_key);
    let err = String::from_utf8(git.aspen_run(&ada, &["identity", "create"]).stderr).unwrap();
    assert!(err.contains("--force"), "{err}");

    // An issue, then concurrent edits from both: built on the same heads, sent at once.
    let issue = git.aspen_json(&ada, &["issue", "create", "collab/app", "--title", "Crash on start", "--body", "boom"]);
    let id = issue["id"].as_str().unwrap().to_string();
    assert_eq!(issue["author"].as_str().unwrap(), ada_key);
    let (state, _) = forge.show_cob("collab/app", CobKind::Issue, &id[..8]).await.unwrap();
    let key = |dir: &Path| aspen_net::identity::read_secret_key(&dir.join("signing.key")).unwrap();
    let (ada_secret, bob_secret) = (key(&ada), key(&bob));
    let edit = |secret: &iroh::SecretKey, body: &str, label: &str, status: Action| {
        let actions = vec![
            Action::Comment { body: body.into(), reply_to: None },
            Action::Label { add: vec![label.into()], remove: vec![] },
            status,
        ];
        Change::child(CobKind::Issue, state.id, state.heads.clone(), &secret.public(), 1_000, actions)
            .sign(secret)
            .unwrap()
    };
    let from_ada = edit(&ada_secret, "I see it too", "bug", Action::Close);
    let from_bob = edit(&bob_secret, "on arm64 only", "arm64", Action::Reopen);
    let (a, b) =
        tokio::join!(forge.append_change("collab/app", &from_ada), forge.append_change("collab/app", &from_bob));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.comments.len() + b.comments.len() >= 3, "each saw at least its own edit");
    // Sent again (a retry): stored once.
    forge.append_change("collab/app", &from_ada).await.unwrap();
    let seen_by_ada = git.aspen_json(&ada, &["issue", "show", "collab/app", &id]);
    let seen_by_bob = git.aspen_json(&bob, &["issue", "show", "collab/app", &id[..10]]);
    assert_eq!(seen_by_ada, seen_by_bob, "both writers read one state");
    let bodies: Vec<&str> =
        seen_by_ada["comments"].as_array().unwrap().iter().map(|c| c["body"].as_str().unwrap()).collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(bodies.contains(&"I see it too") && bodies.contains(&"on arm64 only"));
    assert_eq!(seen_by_ada["labels"], serde_json::json!(["arm64", "bug"]));
    assert_eq!(seen_by_ada["heads"].as_array().unwrap().len(), 2, "two concurrent heads");
    // The next change joins the heads.
    let closed = git.aspen_json(&bob, &["issue", "close", "collab/app", &id]);
    assert_eq!((closed["state"].as_str(), closed["heads"].as_array().unwrap().len()), (Some("closed"), 1));
    git.aspen(&ada, &["issue", "label", "collab/app", &id, "--remove", "arm64"]);
    let open = git.aspen_json(&ada, &["issue", "list", "collab/app"]);
    assert_eq!(open["issues"].as_array().unwrap().len(), 0);
    let all = git.aspen_json(&ada, &["issue", "list", "collab/app", "--state", "all"]);
    assert_eq!(all["issues"][0]["labels"], serde_json::json!(["bug"]));

    // Bad changes are refused with a reason, and nothing is stored.
    let mut forged = edit(&ada_secret, "forged", "x", Action::Close);
    forged.signature[0] ^= 1;
    let request = aspen_forge::protocol::ForgeRequest::AppendChange {
        repo: "collab/app".into(),
        kind: CobKind::Issue,
        change: forged.encode(),
    };
    let answer: Result<aspen_forge::protocol::ForgeResponse, _> =
        client.app(aspen_forge::FORGE_ALPN).call("cob_append", &request, false).await;
    let e = answer.expect_err("a forged change was taken");
    assert!(e.to_string().contains("signature does not verify"), "{e}");
    let orphan = Change::child(CobKind::Issue, state.id, vec![[9; 32]], &ada_secret.public(), 1, vec![Action::Close])
        .sign(&ada_secret);
    let err = forge.append_change("collab/app", &orphan.unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("parent"), "{err}");
    let err = String::from_utf8(git.aspen_run(&ada, &["issue", "show", "collab/app", "abc"]).stderr).unwrap();
    assert!(err.contains("at least 6 hex digits"), "{err}");

    // A patch: opened by Ada, reviewed by Bob, refused while main has moved past it, revised
    // after a rebase, then merged: main fast-forwards with an event, like a push.
    let patch = git.aspen_json(
        &ada,
        &["patch", "create", "collab/app", "--from", "feature", "--onto", "main", "--title", "Add the feature"],
    );
    let pid = patch["id"].as_str().unwrap().to_string();
    let reviewed = git.aspen_json(&bob, &["patch", "review", "collab/app", &pid, "--accept", "-m", "lgtm"]);
    assert_eq!(reviewed["reviews"][0]["verdict"], "accept");
    assert_eq!(reviewed["reviews"][0]["author"].as_str().unwrap(), bob_key);
    git.ok(&src, &["checkout", "-q", "main"]);
    write(&src.join("hotfix.txt"), "hotfix\n");
    git.ok(&src, &["add", "-A"]);
    git.ok(&src, &["commit", "-qm", "hotfix"]);
    git.ok(&src, &["push", "-q", "origin", "main"]);
    let refused = git.aspen_run(&bob, &["patch", "merge", "collab/app", &pid]);
    let err = String::from_utf8(refused.stderr).unwrap();
    assert!(!refused.status.success() && err.contains("non-fast-forward"), "{err}");
    let reader = git.with_token(&c.token_with(vec![forge_cap("read", "collab/")]));
    let err = String::from_utf8(reader.aspen_run(&bob, &["patch", "merge", "collab/app", &pid]).stderr).unwrap();
    assert!(err.contains("permission denied") && err.contains("forge:push"), "{err}");
    reader.aspen(&bob, &["issue", "create", "collab/app", "--title", "readers may file issues"]);
    git.ok(&src, &["checkout", "-q", "feature"]);
    git.ok(&src, &["rebase", "-q", "main"]);
    git.ok(&src, &["push", "-q", "--force", "origin", "feature"]);
    let revised = git.aspen_json(&ada, &["patch", "revise", "collab/app", &pid, "--from", "feature", "-m", "rebased"]);
    assert_eq!(revised["revisions"].as_array().unwrap().len(), 2);
    let merged = git.aspen_json(&bob, &["patch", "merge", "collab/app", &pid]);
    assert_eq!(merged["state"], "merged");
    let feature_head = git.ok(&src, &["rev-parse", "feature"]).trim().to_string();
    assert_eq!(merged["merged"]["commit"].as_str().unwrap(), feature_head);
    assert_eq!(refs(&git.ok(&src, &["ls-remote", "origin", "refs/heads/main"]))[0].1, feature_head);
    let last =
        events(&c).await.into_iter().filter(|e| e.ref_name == "refs/heads/main").max_by_key(|e| e.time_ms).unwrap();
    assert_eq!(last.new.map(|n| records::hex(&n)), Some(feature_head));
    let err = String::from_utf8(git.aspen_run(&bob, &["patch", "merge", "collab/app", &pid]).stderr).unwrap();
    assert!(err.contains("already merged"), "{err}");
    let (patch_state, changes) = forge.show_cob("collab/app", CobKind::Patch, &pid).await.unwrap();
    assert!(matches!(patch_state.state, CobStatus::Merged { .. }));
    assert_eq!(changes.len(), 4, "open, review, revise, merge");
    client.close().await;
}
