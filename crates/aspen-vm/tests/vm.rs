//! Real microVMs under QEMU (TCG here): a Debian cloud kernel, the static guest agent, shares
//! served by Aspen's own VirtioFS backend. Each test skips with a notice where QEMU is missing.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_vm::doctor::{QEMU_BINARY, find_in_path};
use aspen_vm::hypervisor::{Accel, Hypervisor};
use aspen_vm::image::GuestImage;
use aspen_vm::runner::{
    JobSpec, JobStatus, Outcome, Share, ShareBackend, ShareSource, VmError, VmEvent, VmSpec, run_job,
};
use aspen_vm_agent::ExitStatus;

/// Generous: TCG boots in about 2.5 s on an idle machine, CI machines are slower and busy.
const TIME_LIMIT: Duration = Duration::from_secs(120);

fn image() -> Option<GuestImage> {
    aspen_testkit::vm::test_image().expect("building the test guest image")
}

fn spec(image: GuestImage, shares: Vec<Share>) -> VmSpec {
    VmSpec {
        hypervisor: Hypervisor::Qemu { binary: find_in_path(QEMU_BINARY).unwrap(), accel: Accel::Tcg },
        image,
        vcpus: 1,
        memory_mib: 256,
        shares,
        network: false,
        timeout: TIME_LIMIT,
        serial_log: None,
    }
}

fn share(tag: &str, dir: &Path, guest: &str) -> Share {
    Share {
        tag: tag.into(),
        source: ShareSource::Dir(dir.to_path_buf()),
        guest_path: guest.into(),
        read_only: false,
        backend: ShareBackend::Aspen,
    }
}

fn sh(script: &str) -> JobSpec {
    JobSpec { argv: vec!["sh".into(), "-c".into(), script.into()], env: vec![], cwd: "/".into(), outputs: vec![] }
}

#[derive(Default)]
struct Log {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    booted: bool,
    started: bool,
}

fn run(spec: &VmSpec, job: &JobSpec) -> (Result<Outcome, VmError>, Log) {
    let mut log = Log::default();
    let result = run_job(spec, job, &mut |event| match event {
        VmEvent::Booted { .. } => log.booted = true,
        VmEvent::Started => log.started = true,
        VmEvent::Stdout(b) => log.stdout.extend_from_slice(b),
        VmEvent::Stderr(b) => log.stderr.extend_from_slice(b),
    });
    (result, log)
}

/// No QEMU process outlives the run, and its runtime directory is gone.
fn assert_nothing_left(outcome: &Outcome) {
    let marker = format!("-name {} ", outcome.vm_name);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&marker), "a VM process is left: {cmdline}");
    }
    let dir = std::env::temp_dir().join(&outcome.vm_name);
    assert!(!dir.exists(), "the runtime dir is left: {}", dir.display());
}

#[test]
fn job_reads_an_input_from_its_share_and_writes_an_output_with_a_live_log() {
    let Some(image) = image() else { return };
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("input.txt"), "hello from the host\n").unwrap();
    let spec = spec(image, vec![share("work", ws.path(), "/work")]);
    let mut job = sh(
        // The job waits for a file the host writes only after it saw the first line: the log
        // must stream while the job runs, not arrive at its end.
        "cat input.txt; tr a-z A-Z < input.txt > output.txt; echo to-stderr >&2; \
         i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         [ -e go ] && echo saw-go; ip link show lo | grep -q ',UP' && echo lo-up; \
         echo result > /tmp/result; exit 0",
    );
    job.cwd = "/work".into();
    job.outputs = vec!["/tmp/result".into(), "/tmp/missing".into()];
    let go = ws.path().join("go");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let outcome = run_job(&spec, &job, &mut |event| match event {
        VmEvent::Stdout(b) => {
            stdout.extend_from_slice(b);
            if stdout.starts_with(b"hello from the host\n") && !go.exists() {
                std::fs::write(&go, "").unwrap();
            }
        }
        VmEvent::Stderr(b) => stderr.extend_from_slice(b),
        _ => {}
    })
    .unwrap();
    assert_eq!(outcome.status, JobStatus::Exited(ExitStatus::Code(0)));
    assert_eq!(String::from_utf8_lossy(&stdout), "hello from the host\nsaw-go\nlo-up\n", "loopback is up");
    assert_eq!(String::from_utf8_lossy(&stderr), "to-stderr\n");
    assert_eq!(std::fs::read_to_string(ws.path().join("output.txt")).unwrap(), "HELLO FROM THE HOST\n");
    assert_eq!(outcome.outputs.len(), 2);
    assert_eq!(outcome.outputs[0].path, "/tmp/result");
    assert_eq!(outcome.outputs[0].data.as_deref(), Ok(&b"result\n"[..]));
    assert!(outcome.outputs[1].data.is_err(), "a missing output is reported as such");
    assert!(outcome.timings.boot_to_job_start.is_some());
    assert_nothing_left(&outcome);
}

#[test]
fn a_non_zero_exit_and_a_job_that_cannot_start_are_reported() {
    let Some(image) = image() else { return };
    let spec = spec(image, vec![]);
    let (outcome, log) = run(&spec, &sh("echo failing; exit 7"));
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, JobStatus::Exited(ExitStatus::Code(7)));
    assert_eq!(log.stdout, b"failing\n");
    assert_nothing_left(&outcome);

    let (outcome, _) = run(&spec, &sh("kill -9 $$"));
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, JobStatus::Exited(ExitStatus::Signal(9)));
    assert_nothing_left(&outcome);

    let job = JobSpec { argv: vec!["/no/such/program".into()], env: vec![], cwd: "/".into(), outputs: vec![] };
    let (outcome, log) = run(&spec, &job);
    let outcome = outcome.unwrap();
    match &outcome.status {
        JobStatus::NotStarted(message) => assert!(message.contains("/no/such/program"), "{message}"),
        other => panic!("expected NotStarted, got {other:?}"),
    }
    assert!(log.booted && !log.started);
    assert_nothing_left(&outcome);
}

#[test]
fn a_hanging_job_is_killed_at_its_time_limit() {
    let Some(image) = image() else { return };
    let mut spec = spec(image, vec![]);
    // Long enough to boot on a slow machine, so the kill lands while the job hangs.
    spec.timeout = Duration::from_secs(30);
    let (outcome, log) = run(&spec, &sh("echo hanging; sleep 100000"));
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, JobStatus::TimedOut);
    assert!(log.started, "the job had started before the limit");
    assert_eq!(log.stdout, b"hanging\n");
    assert!(outcome.timings.total >= Duration::from_secs(30));
    assert_nothing_left(&outcome);
}

#[test]
fn two_vms_at_once_see_only_their_own_shares() {
    let Some(image) = image() else { return };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, dir) in dirs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("marker-{i}")), format!("vm {i}\n")).unwrap();
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for (i, dir) in dirs.iter().enumerate() {
            let spec = spec(image.clone(), vec![share(&format!("work{i}"), dir.path(), "/work")]);
            let results = results.clone();
            scope.spawn(move || {
                let (outcome, log) = run(&spec, &sh("find / -name 'marker-*' 2>/dev/null; ls /work"));
                let outcome = outcome.unwrap();
                assert_nothing_left(&outcome);
                results.lock().unwrap().push((i, outcome.status, String::from_utf8(log.stdout).unwrap()));
            });
        }
    });
    let results = results.lock().unwrap();
    assert_eq!(results.len(), 2);
    for (i, status, stdout) in results.iter() {
        assert_eq!(*status, JobStatus::Exited(ExitStatus::Code(0)));
        assert_eq!(stdout, &format!("/work/marker-{i}\nmarker-{i}\n"), "VM {i} sees exactly its own share");
    }
}

#[test]
fn a_read_only_share_refuses_writes_even_after_the_guest_remounts_it() {
    let Some(image) = image() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "original\n").unwrap();
    let mut ro = share("ro", dir.path(), "/ro");
    ro.read_only = true;
    let spec = spec(image, vec![ro]);
    let (outcome, log) = run(
        &spec,
        &sh("cat /ro/file; echo a > /ro/new || echo refused-new; mount -o remount,rw /ro && echo remounted; \
             echo b > /ro/after-remount || echo refused-after-remount; \
             echo c >> /ro/file || echo refused-append; rm /ro/file || echo refused-rm; true"),
    );
    let outcome = outcome.unwrap();
    assert_eq!(outcome.status, JobStatus::Exited(ExitStatus::Code(0)));
    let stdout = String::from_utf8_lossy(&log.stdout);
    assert!(stdout.starts_with("original\nrefused-new\nremounted\n"), "{stdout}");
    assert!(stdout.contains("refused-after-remount") && stdout.contains("refused-append"), "{stdout}");
    assert!(stdout.contains("refused-rm"), "{stdout}");
    assert!(stdout.contains("remounted"), "the guest did remount read-write: the host refused: {stdout}");
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["file"], "nothing was created on the host");
    assert_eq!(std::fs::read_to_string(dir.path().join("file")).unwrap(), "original\n");
    assert_nothing_left(&outcome);
}

#[test]
fn bad_requests_are_refused_before_anything_starts() {
    let image = GuestImage::in_dir(Path::new("/nonexistent-image-dir"));
    let Some(qemu) = find_in_path(QEMU_BINARY) else {
        eprintln!("SKIP: {QEMU_BINARY} is not installed");
        return;
    };
    let mut spec = VmSpec {
        hypervisor: Hypervisor::Qemu { binary: qemu, accel: Accel::Tcg },
        image,
        vcpus: 1,
        memory_mib: 256,
        shares: vec![],
        network: false,
        timeout: TIME_LIMIT,
        serial_log: None,
    };
    let err = run(&spec, &sh("true")).0.unwrap_err();
    assert!(err.to_string().contains("no guest image at /nonexistent-image-dir"), "{err}");
    let err = run(&spec, &JobSpec { argv: vec![], env: vec![], cwd: "/".into(), outputs: vec![] }).0.unwrap_err();
    assert!(err.to_string().contains("no command"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    spec.shares = vec![share("a,b", dir.path(), "/work")];
    let err = run(&spec, &sh("true")).0.unwrap_err();
    assert!(err.to_string().contains("share tag"), "{err}");
    spec.shares = vec![share("a", dir.path(), "/x"), share("a", dir.path(), "/y")];
    let err = run(&spec, &sh("true")).0.unwrap_err();
    assert!(err.to_string().contains("used twice"), "{err}");
}
