//! The runner as users run it (`aspen vm run`), and AspenFS served to a guest: real processes,
//! a real cluster, real QEMU (TCG). Each test skips with a notice where QEMU or /dev/fuse is
//! missing.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aspen_testkit::harness::{TestCluster, aspen_bin};
use aspen_vm::doctor::{QEMU_BINARY, find_in_path};
use aspen_vm::hypervisor::{Accel, Hypervisor};
use aspen_vm::image::GuestImage;
use aspen_vm::runner::{JobSpec, JobStatus, Share, ShareBackend, ShareSource, VmEvent, VmSpec, run_job};
use aspen_vm_agent::ExitStatus;

fn image() -> Option<GuestImage> {
    aspen_testkit::vm::test_image().expect("building the test guest image")
}

/// Polls `check` until it holds, at most `limit`.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line contains `needle`, as (pid, state) with state from
/// /proc/PID/stat ('Z' for a zombie nobody reaped yet).
fn processes_with(needle: &str) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|rest| rest.trim().chars().next()).unwrap_or('?');
        found.push((pid, state));
    }
    found
}

#[test]
fn a_sigkill_of_the_runner_leaves_no_vm_process_socket_or_directory() {
    let Some(image) = image() else { return };
    let ws = tempfile::tempdir().unwrap();
    let image_dir = image.kernel.parent().unwrap();
    let mut runner = Command::new(aspen_bin())
        .args(["vm", "run", "--hypervisor", "qemu-tcg", "--memory-mib", "256"])
        .arg("--image")
        .arg(image_dir)
        .arg("--share")
        .arg(format!("work:{}:/work", ws.path().display()))
        .args(["--", "sh", "-c", "echo started; sleep 100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aspen vm run");
    let runner_pid = runner.id();
    let mut stdout = BufReader::new(runner.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    if line != "started\n" {
        let _ = runner.kill();
        let mut stderr = String::new();
        runner.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        panic!("the job did not start: {line:?}\n{stderr}");
    }
    let marker = format!("-name aspen-vm.{runner_pid}.");
    let vms = processes_with(&marker);
    assert_eq!(vms.len(), 1, "one QEMU runs for the job: {vms:?}");

    runner.kill().unwrap();
    runner.wait().unwrap();
    within(Duration::from_secs(30), "the VM dies with its runner", || {
        processes_with(&marker).iter().all(|(_, state)| *state == 'Z')
    });
    let prefix = format!("aspen-vm.{runner_pid}.");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "runtime directories left: {left:?}");
}

#[test]
fn aspen_vm_run_passes_the_exit_code_and_returns_output_files() {
    let Some(image) = image() else { return };
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(aspen_bin())
        .args(["vm", "run", "--hypervisor", "qemu-tcg", "--memory-mib", "256", "--env", "GREETING=hi"])
        .arg("--image")
        .arg(image.kernel.parent().unwrap())
        .args(["--output", "/tmp/report.txt", "--output-dir"])
        .arg(out.path())
        .args(["--", "sh", "-c", "echo $GREETING; echo report > /tmp/report.txt; exit 42"])
        .output()
        .expect("aspen vm run");
    assert_eq!(output.status.code(), Some(42), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, b"hi\n");
    assert_eq!(std::fs::read_to_string(out.path().join("report.txt")).unwrap(), "report\n");

    // A TMPDIR too deep for a socket address (a CI job's scratch dir) still runs a VM, and
    // leaves nothing behind there.
    let deep = out.path().join("a-rather-long-directory-name/".repeat(3)).join("tmp");
    std::fs::create_dir_all(&deep).unwrap();
    let output = Command::new(aspen_bin())
        .args(["vm", "run", "--hypervisor", "qemu-tcg", "--memory-mib", "256", "--image"])
        .arg(image.kernel.parent().unwrap())
        .args(["--", "true"])
        .env("TMPDIR", &deep)
        .output()
        .expect("aspen vm run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0, "nothing is left in TMPDIR");

    let output = Command::new(aspen_bin())
        .args(["vm", "run", "--share", "bad-share-spec", "--", "true"])
        .output()
        .expect("aspen vm run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected TAG:HOST_DIR:GUEST_PATH"), "{stderr}");
}

fn is_mounted(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let point = point.to_str().expect("utf-8 path");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(point))
}

#[test]
fn a_guest_reads_and_writes_the_aspenfs_view_of_a_prefix_over_virtiofs() {
    let Some(image) = image() else { return };
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: this machine has no /dev/fuse");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = rt.block_on(TestCluster::start(1));
    let client = rt.block_on(cluster.client());
    rt.block_on(client.put("fs/vm/hello.txt", b"from the kv\n".to_vec())).unwrap();
    rt.block_on(client.put("fs/vm/dir/nested", b"nested value\n".to_vec())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let ticket_file = dir.path().join("ticket");
    std::fs::write(&ticket_file, cluster.nodes.node_ticket(0).unwrap()).unwrap();
    let mut mount = Command::new(aspen_bin())
        .args(["fs", "mount", point.to_str().unwrap(), "--prefix", "fs/vm/"])
        .env("ASPEN_TICKET_FILE", &ticket_file)
        .env("ASPEN_TOKEN", cluster.token.encode())
        .env_remove("ASPEN_TICKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aspen fs mount");
    within(Duration::from_secs(60), "the AspenFS mount appears", || is_mounted(&point));

    let spec = VmSpec {
        hypervisor: Hypervisor::Qemu { binary: find_in_path(QEMU_BINARY).unwrap(), accel: Accel::Tcg },
        image,
        vcpus: 1,
        memory_mib: 256,
        shares: vec![Share {
            tag: "kv".into(),
            source: ShareSource::Dir(point.clone()),
            guest_path: "/kv".into(),
            read_only: false,
            backend: ShareBackend::Aspen,
        }],
        network: false,
        timeout: Duration::from_secs(120),
        serial_log: None,
    };
    let job = JobSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /kv/hello.txt /kv/dir/nested; ls /kv; echo from the guest > /kv/dir/written".into(),
        ],
        env: vec![],
        cwd: "/".into(),
        outputs: vec![],
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let outcome = run_job(&spec, &job, &mut |event| match event {
        VmEvent::Stdout(b) => stdout.extend_from_slice(b),
        VmEvent::Stderr(b) => stderr.extend_from_slice(b),
        _ => {}
    })
    .unwrap();
    assert_eq!(outcome.status, JobStatus::Exited(ExitStatus::Code(0)), "stderr: {}", String::from_utf8_lossy(&stderr));
    assert_eq!(String::from_utf8_lossy(&stdout), "from the kv\nnested value\ndir\nhello.txt\n");
    // The guest's write went through the mount into the cluster: a fresh read of the key finds it.
    let stored = rt.block_on(client.get("fs/vm/dir/written", aspen_core::api::ReadConsistency::Linearizable)).unwrap();
    assert!(stored.is_some(), "the guest's file is a key in the cluster");
    assert_eq!(std::fs::read_to_string(point.join("dir/written")).unwrap(), "from the guest\n");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(mount.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = mount.kill();
            panic!("aspen fs mount did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&point), "unmounted on SIGTERM");
}

#[test]
fn aspen_vm_run_serves_a_kv_prefix_to_the_guest_without_a_host_mount() {
    let Some(image) = image() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = rt.block_on(TestCluster::start(1));
    let client = rt.block_on(cluster.client());
    rt.block_on(client.put("fs/direct/config", b"version 1\n".to_vec())).unwrap();
    rt.block_on(client.put("fs/direct/docs/readme", b"read me\n".to_vec())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ticket_file = dir.path().join("ticket");
    std::fs::write(&ticket_file, cluster.nodes.node_ticket(0).unwrap()).unwrap();

    // The guest prints the value, then waits for a change made through the KV while it runs
    // (it has no watch: it sees it once its 1 s cache lapses), writes a file, and finds the
    // read-only share refusing a write.
    let script = "cat /kv/config /kv/docs/readme; \
                  i=0; until grep -q 'version 2' /kv/config || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done; \
                  cat /kv/config; mkdir /kv/out && echo from the guest > /kv/out/result; \
                  echo nope > /ro/x 2>/dev/null || echo refused; ls /kv";
    let mut runner = Command::new(aspen_bin())
        .args(["vm", "run", "--hypervisor", "qemu-tcg", "--memory-mib", "256"])
        .arg("--image")
        .arg(image.kernel.parent().unwrap())
        .args(["--share-kv", "kv:fs/direct/:/kv", "--share-kv", "ro:fs/direct/:/ro:ro", "--", "sh", "-c", script])
        .env("ASPEN_TICKET_FILE", &ticket_file)
        .env("ASPEN_TOKEN", cluster.token.encode())
        .env_remove("ASPEN_TICKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aspen vm run");
    let mut stdout = BufReader::new(runner.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "version 1\n");
    rt.block_on(client.put("fs/direct/config", b"version 2\n".to_vec())).unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = runner.wait().unwrap();
    let mut stderr = String::new();
    runner.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(rest, "read me\nversion 2\nrefused\nconfig\ndocs\nout\n");
    let stored = rt.block_on(client.get("fs/direct/out/result", aspen_core::api::ReadConsistency::Linearizable));
    let stored = stored.unwrap().expect("the guest's file is a key in the cluster");
    assert!(stored.value.ends_with(b"from the guest\n"), "{:?}", stored.value);
}
