//! AspenFS against a real cluster and the real kernel: a FUSE mount in this process (or the
//! `aspen fs mount` command), driven with ordinary system calls, `git` and the KV itself.
//! Needs root (or `fusermount3`) and `/dev/fuse`; CI runs as root.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aspen_blob::BlobClient;
use aspen_fs::{BlobChunks, ChunkStore, Mount, MountOptions, mount};
use aspen_kv::{KvExt, ReadConsistency, SharedKv};
use aspen_testkit::harness::{TestCluster, aspen_bin};

const PREFIX: &str = "fs/t/";

/// Whether this machine can mount FUSE filesystems at all; without `/dev/fuse` (a kernel
/// device no package provides) each test says it is skipped.
fn no_fuse(test: &str) -> bool {
    let missing = !Path::new("/dev/fuse").exists();
    if missing {
        eprintln!("{test}: skipped, this machine has no /dev/fuse");
    }
    missing
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

struct Env {
    rt: tokio::runtime::Runtime,
    cluster: Option<TestCluster>,
    kv: SharedKv,
    chunks: Arc<dyn ChunkStore>,
    dir: tempfile::TempDir,
}

impl Env {
    fn start(nodes: usize) -> Env {
        let rt = runtime();
        let cluster = rt.block_on(TestCluster::start(nodes));
        let client = rt.block_on(cluster.client());
        let chunks: Arc<dyn ChunkStore> =
            Arc::new(BlobChunks::new(BlobClient::new(&client), BlobChunks::scope_for(PREFIX)));
        let kv: SharedKv = Arc::new(client);
        Env { rt, cluster: Some(cluster), kv, chunks, dir: tempfile::tempdir().expect("temp dir") }
    }

    fn mount(&self, name: &str, options: MountOptions) -> Mount {
        let point = self.dir.path().join(name);
        std::fs::create_dir_all(&point).expect("mountpoint");
        mount(self.kv.clone(), Some(self.chunks.clone()), self.rt.handle(), &point, &options).expect("mount")
    }

    fn key(&self, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(self.kv.get(key, ReadConsistency::Linearizable)).expect("kv get").map(|kv| kv.value)
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let (kvs, _) = self.rt.block_on(self.kv.scan_all(prefix, ReadConsistency::Linearizable)).expect("kv scan");
        kvs.into_iter().map(|kv| String::from_utf8(kv.key).expect("utf-8 key")).collect()
    }
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("the call must fail").raw_os_error().expect("an errno")
}

/// Polls `check` until it holds, at most `limit`.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_mounted(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let point = point.to_str().expect("utf-8 path");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(point))
}

#[test]
fn files_round_trip_and_each_path_is_a_key() {
    if no_fuse("files_round_trip_and_each_path_is_a_key") {
        return;
    }
    let env = Env::start(1);
    let m = env.mount("m", MountOptions::new(PREFIX));
    let root = m.mountpoint().to_path_buf();

    // Write, read, append, overwrite in place, truncate.
    std::fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    assert_eq!(std::fs::read(root.join("hello.txt")).unwrap(), b"hello world\n");
    let mut f = std::fs::OpenOptions::new().append(true).open(root.join("hello.txt")).unwrap();
    f.write_all(b"more\n").unwrap();
    f.sync_all().unwrap(); // fsync: durable in the cluster before it returns
    drop(f);
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(root.join("hello.txt")).unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD").unwrap();
    f.set_len(12).unwrap();
    drop(f);
    assert_eq!(std::fs::read(root.join("hello.txt")).unwrap(), b"hello WORLD\n");
    let value = env.key("fs/t/hello.txt").expect("the file is a key");
    assert!(value.ends_with(b"hello WORLD\n"), "{value:?}");

    // Attributes: size, mode, mtime.
    std::fs::set_permissions(root.join("hello.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options().write(true).open(root.join("hello.txt")).unwrap().set_modified(when).unwrap();
    let meta = std::fs::metadata(root.join("hello.txt")).unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o7777, meta.mtime()), (12, 0o600, 1_700_000_000));

    // Directories: explicit entries (an empty one exists), listing, rmdir rules.
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/file"), b"x").unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "empty", "hello.txt"]);
    assert!(std::fs::metadata(root.join("a/b")).unwrap().is_dir());
    assert_eq!(errno_of(std::fs::remove_dir(root.join("a/b"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(std::fs::create_dir(root.join("empty"))), libc::EEXIST);
    assert_eq!(errno_of(std::fs::read(root.join("missing"))), libc::ENOENT);
    std::fs::remove_dir(root.join("empty")).unwrap();
    assert!(!root.join("empty").exists());
    assert_eq!(env.keys("fs/t/a/"), ["fs/t/a/", "fs/t/a/b/", "fs/t/a/b/c/", "fs/t/a/b/file"]);

    // Symlinks.
    symlink("hello.txt", root.join("link")).unwrap();
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), PathBuf::from("hello.txt"));
    assert_eq!(std::fs::read(root.join("link")).unwrap(), b"hello WORLD\n");
    assert!(std::fs::symlink_metadata(root.join("link")).unwrap().file_type().is_symlink());

    // Renames: a file over another, a directory with its subtree.
    std::fs::write(root.join("other.txt"), b"other").unwrap();
    std::fs::rename(root.join("other.txt"), root.join("hello.txt")).unwrap();
    assert_eq!(std::fs::read(root.join("hello.txt")).unwrap(), b"other");
    assert_eq!(errno_of(std::fs::metadata(root.join("other.txt"))), libc::ENOENT);
    std::fs::rename(root.join("a"), root.join("z")).unwrap();
    assert_eq!(std::fs::read(root.join("z/b/file")).unwrap(), b"x");
    assert!(env.keys("fs/t/a/").is_empty());
    assert_eq!(env.keys("fs/t/z/"), ["fs/t/z/", "fs/t/z/b/", "fs/t/z/b/c/", "fs/t/z/b/file"]);

    // Unlink; the open file keeps its bytes until closed, and is not written back.
    let mut open = std::fs::File::open(root.join("hello.txt")).unwrap();
    std::fs::remove_file(root.join("hello.txt")).unwrap();
    let mut kept = String::new();
    open.read_to_string(&mut kept).unwrap();
    assert_eq!(kept, "other");
    drop(open);
    assert_eq!(env.key("fs/t/hello.txt"), None);
    // An unlinked file still open changes size through its descriptor.
    let mut open = std::fs::File::options().read(true).write(true).create_new(true).open(root.join("gone")).unwrap();
    open.write_all(b"hello world").unwrap();
    std::fs::remove_file(root.join("gone")).unwrap();
    open.set_len(5).unwrap();
    assert_eq!(open.metadata().unwrap().len(), 5);
    let mut kept = String::new();
    open.seek(SeekFrom::Start(0)).unwrap();
    open.read_to_string(&mut kept).unwrap();
    assert_eq!(kept, "hello");
    drop(open);
    assert_eq!(env.key("fs/t/gone"), None);

    // A copy as `git clone` makes one from a local path: create exclusively, write, close,
    // then set the times by path at once, while the close's release may still be in flight.
    std::fs::create_dir(root.join("copies")).unwrap();
    for i in 0..50 {
        let path = root.join(format!("copies/{i}"));
        let mut f = std::fs::File::options().write(true).create_new(true).open(&path).unwrap();
        f.write_all(format!("copy {i}").as_bytes()).unwrap();
        drop(f);
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let times = libc::utimbuf { actime: 1_600_000_000, modtime: 1_600_000_000 + i };
        // SAFETY: a NUL-terminated path and a valid utimbuf, both live for the call.
        let rc = unsafe { libc::utime(c_path.as_ptr(), &times) };
        assert_eq!(rc, 0, "utime of copy {i}: {}", std::io::Error::last_os_error());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mtime(), meta.len()), (1_600_000_000 + i, format!("copy {i}").len() as u64));
    }

    // A file larger than a KV value goes into chunks (blobs) and reads back by range.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 123u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    assert_eq!(std::fs::metadata(root.join("big.bin")).unwrap().len(), big.len() as u64);
    let mut f = std::fs::File::open(root.join("big.bin")).unwrap();
    let mut middle = vec![0u8; 100_000];
    f.seek(SeekFrom::Start(4 * 1024 * 1024 - 50_000)).unwrap(); // across a chunk boundary
    f.read_exact(&mut middle).unwrap();
    assert_eq!(middle, big[4 * 1024 * 1024 - 50_000..4 * 1024 * 1024 + 50_000]);
    drop(f);
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), big, "the whole file reads back");
    let record = env.key("fs/t/big.bin").expect("the file's record");
    assert!(record.len() < 1024, "the record lists chunks, it does not hold the bytes: {} bytes", record.len());
    // Change a few bytes in the middle, and cut the end off: one chunk changes.
    let mut f = std::fs::OpenOptions::new().write(true).open(root.join("big.bin")).unwrap();
    f.seek(SeekFrom::Start(5_000_000)).unwrap();
    f.write_all(b"patched").unwrap();
    f.set_len(6_000_000).unwrap();
    drop(f);
    let mut expect = big[..6_000_000].to_vec();
    expect[5_000_000..5_000_007].copy_from_slice(b"patched");
    assert_eq!(std::fs::read(root.join("big.bin")).unwrap(), expect);
    // The same bytes in another file share the chunks; a rename moves only the record.
    std::fs::copy(root.join("big.bin"), root.join("copy.bin")).unwrap();
    std::fs::rename(root.join("copy.bin"), root.join("z/copy.bin")).unwrap();
    assert_eq!(std::fs::read(root.join("z/copy.bin")).unwrap(), expect);

    m.unmount().expect("unmount");
    assert!(!is_mounted(&root));
}

#[test]
fn changes_through_the_kv_and_another_mount_show() {
    if no_fuse("changes_through_the_kv_and_another_mount_show") {
        return;
    }
    let env = Env::start(1);
    // A long TTL: only the watch can make these changes show in time.
    let mut options = MountOptions::new(PREFIX);
    options.ttl = Duration::from_secs(600);
    options.watched_ttl = Duration::from_secs(600);
    let one = env.mount("one", options.clone());
    let two = env.mount("two", options);
    let (r1, r2) = (one.mountpoint().to_path_buf(), two.mountpoint().to_path_buf());

    std::fs::write(r1.join("shared.txt"), b"v1").unwrap();
    assert_eq!(std::fs::read(r2.join("shared.txt")).unwrap(), b"v1");
    env.rt.block_on(env.kv.put("fs/t/shared.txt", "v2 from the kv")).unwrap();
    within(Duration::from_secs(30), "a KV put shows in the mount", || {
        std::fs::read(r2.join("shared.txt")).ok().as_deref() == Some(b"v2 from the kv".as_slice())
    });
    // Attributes too (the mount keeps them while its watch runs).
    env.rt.block_on(env.kv.put("fs/t/shared.txt", "v2, longer, from the kv")).unwrap();
    within(Duration::from_secs(30), "a KV put's size shows in stat", || {
        std::fs::metadata(r2.join("shared.txt")).map(|m| m.len()).ok() == Some(23)
    });
    // A name looked up while absent (the kernel keeps that too) shows once a key makes it.
    assert!(!r2.join("late.txt").exists());
    env.rt.block_on(env.kv.put("fs/t/late.txt", "arrived")).unwrap();
    within(Duration::from_secs(30), "a name the kernel knew as absent shows", || {
        std::fs::read(r2.join("late.txt")).ok().as_deref() == Some(b"arrived".as_slice())
    });
    env.rt.block_on(env.kv.put("fs/t/dir/made-by-kv", "plain")).unwrap();
    within(Duration::from_secs(30), "a key below a new prefix shows as a directory", || {
        std::fs::read(r1.join("dir/made-by-kv")).ok().as_deref() == Some(b"plain".as_slice())
    });
    std::fs::write(r1.join("shared.txt"), b"v3 from mount one").unwrap();
    within(Duration::from_secs(30), "a write through one mount shows in the other", || {
        std::fs::read(r2.join("shared.txt")).ok().as_deref() == Some(b"v3 from mount one".as_slice())
    });
    env.rt.block_on(env.kv.delete("fs/t/shared.txt")).unwrap();
    within(Duration::from_secs(30), "a KV delete shows in the mount", || !r2.join("shared.txt").exists());
}

#[test]
fn a_directory_rename_is_atomic_under_a_concurrent_reader() {
    if no_fuse("a_directory_rename_is_atomic_under_a_concurrent_reader") {
        return;
    }
    let env = Env::start(1);
    let m = env.mount("m", MountOptions::new(PREFIX));
    let root = m.mountpoint().to_path_buf();
    const FILES: usize = 20;
    std::fs::create_dir(root.join("a")).unwrap();
    for i in 0..FILES {
        std::fs::write(root.join(format!("a/f{i:02}")), format!("file {i}")).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (kv, stop) = (env.kv.clone(), stop.clone());
        env.rt.spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // One page: one revision of the KV.
                let page = kv.scan_prefix(PREFIX, 1000, ReadConsistency::Linearizable).await.expect("scan");
                let count = |dir: &str| page.kvs.iter().filter(|kv| kv.key.starts_with(dir.as_bytes())).count();
                let (a, b) = (count("fs/t/a/"), count("fs/t/b/"));
                // Each side holds the files and the explicit entry, or nothing.
                assert!((a, b) == (FILES + 1, 0) || (a, b) == (0, FILES + 1), "a half-renamed directory: {a} / {b}");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..30 {
        let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
        std::fs::rename(root.join(from), root.join(to)).unwrap();
        // A reader through the mount sees the whole directory at its new name.
        assert_eq!(std::fs::read_dir(root.join(to)).unwrap().count(), FILES);
    }
    stop.store(true, Ordering::Relaxed);
    let reads = env.rt.block_on(reader).expect("the reader saw no half-renamed directory");
    assert!(reads > 0);
    assert_eq!(std::fs::read(root.join("a/f07")).unwrap(), b"file 7");
}

#[test]
fn git_clone_into_the_mount_then_fsck() {
    if no_fuse("git_clone_into_the_mount_then_fsck") {
        return;
    }
    let env = Env::start(1);
    let m = env.mount("m", MountOptions::new(PREFIX));
    let src = env.dir.path().join("src");
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", env.dir.path().join(".gitconfig"))
            .env("GIT_AUTHOR_NAME", "Ada")
            .env("GIT_AUTHOR_EMAIL", "ada@example.org")
            .env("GIT_COMMITTER_NAME", "Ada")
            .env("GIT_COMMITTER_EMAIL", "ada@example.org")
            .stdin(Stdio::null())
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    std::fs::create_dir(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    for i in 0..8 {
        std::fs::create_dir_all(src.join(format!("dir{}", i % 3))).unwrap();
        std::fs::write(src.join(format!("dir{}/file{i}.txt", i % 3)), format!("line {i}\n").repeat(100 + i)).unwrap();
        git(&src, &["add", "-A"]);
        git(&src, &["commit", "-qm", &format!("commit {i}")]);
    }
    std::os::unix::fs::symlink("dir0/file0.txt", src.join("link")).unwrap();
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-qm", "a symlink"]);
    let clone = m.mountpoint().join("clone");
    git(env.dir.path(), &["clone", "-q", src.to_str().unwrap(), clone.to_str().unwrap()]);
    git(&clone, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&clone, &["status", "--porcelain"]), "", "a fresh clone has no changes");
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), git(&src, &["rev-parse", "HEAD"]));
    // Commit in the mount, and the source fetches it back.
    std::fs::write(clone.join("new.txt"), "made in the mount\n").unwrap();
    git(&clone, &["add", "-A"]);
    git(&clone, &["commit", "-qm", "from the mount"]);
    git(&src, &["fetch", "-q", clone.to_str().unwrap(), "main"]);
    assert_eq!(git(&src, &["show", "FETCH_HEAD:new.txt"]), "made in the mount\n");
}

#[test]
fn the_mount_command_fails_calls_with_eio_when_the_cluster_is_gone_and_unmounts_on_sigterm() {
    if no_fuse("the_mount_command_fails_calls_with_eio_when_the_cluster_is_gone_and_unmounts_on_sigterm") {
        return;
    }
    let mut env = Env::start(1);
    let cluster = env.cluster.as_mut().unwrap();
    let point = env.dir.path().join("cli");
    std::fs::create_dir(&point).unwrap();
    let ticket_file = env.dir.path().join("ticket");
    std::fs::write(&ticket_file, cluster.nodes.node_ticket(0).unwrap()).unwrap();
    let mut child = Command::new(aspen_bin())
        .args(["fs", "mount", point.to_str().unwrap(), "--prefix", PREFIX, "--op-timeout", "3", "--ttl-ms", "0"])
        .env("ASPEN_TICKET_FILE", &ticket_file)
        .env("ASPEN_TOKEN", cluster.token.encode())
        .env_remove("ASPEN_TICKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aspen fs mount");
    within(Duration::from_secs(60), "the mount appears", || is_mounted(&point));
    std::fs::write(point.join("kept"), b"before the failure").unwrap();

    cluster.nodes.kill(0).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = point.join("never-looked-up");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&probe).map(drop));
    });
    let result = rx.recv_timeout(Duration::from_secs(60)).expect("a call on a dead cluster returns, not hangs");
    assert_eq!(errno_of(result), libc::EIO);

    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("aspen fs mount did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(!is_mounted(&point), "still mounted after SIGTERM");

    // The write made before the failure survives the restart.
    env.rt.block_on(cluster.nodes.start(0)).unwrap();
    let kv: SharedKv = Arc::new(env.rt.block_on(cluster.client()));
    env.kv = kv;
    within(Duration::from_secs(60), "the restarted node serves the file", || {
        env.rt.block_on(env.kv.get("fs/t/kept", ReadConsistency::Linearizable)).ok().flatten().is_some()
    });
}
