//! The executors: how a job's command runs on a worker, once its commit is checked out.
//!
//! - `shell`: `sh -eu -c RUN` in the workspace, with nothing of the worker's environment but
//!   `PATH`, a private `HOME` and `TMPDIR`, in its own process group, and, where the kernel
//!   allows it, in new PID, mount, IPC and UTS namespaces (`unshare`), so that killing it
//!   kills everything it started.
//! - `nix`: `nix-build FILE` or `nix build ATTR` in the workspace; its outputs are what the
//!   worker pushes to the cluster's cache when the job asks.
//! - `vm`: the same script in a fresh microVM (`aspen-vm`), the workspace shared into the
//!   guest over Aspen's own VirtioFS backend at `/workspace`, no network: the executor for
//!   code nobody vouched for.
//!
//! Every executor ends at the job's time limit or when it is cancelled, and leaves no
//! process behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aspen_ci_pipeline::{ExecutorKind, JobDef};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where the guest sees the workspace in the `vm` executor.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// How a job's command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Cancelled,
    /// It could not run at all (no such program, no VM image, ...).
    Error(String),
}

/// What a worker offers its executors.
#[derive(Debug, Clone, Default)]
pub struct ExecutorSettings {
    /// Run shell jobs in new namespaces (checked once at start; off where `unshare` fails).
    pub isolate: bool,
    /// The microVM settings, when this worker runs `vm` jobs.
    pub vm: Option<VmSettings>,
}

/// How this worker boots microVMs.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// A directory with the guest's kernel and initramfs (`aspen vm image build`).
    pub image_dir: PathBuf,
    pub hypervisor: aspen_vm::hypervisor::Hypervisor,
}

/// One run of one job's command.
#[derive(Debug)]
pub struct ExecJob<'a> {
    pub workspace: &'a Path,
    /// A private directory for `HOME` and `TMPDIR` (shell and nix).
    pub scratch: &'a Path,
    pub def: &'a JobDef,
    /// The whole environment the command gets (besides `PATH`, `HOME`, `TMPDIR`).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Whether `unshare` can give a job new PID and mount namespaces here.
pub fn isolation_works() -> bool {
    std::process::Command::new("unshare")
        .args(unshare_args())
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn unshare_args() -> Vec<&'static str> {
    let mut args = vec!["--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts"];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        args.insert(0, "--map-root-user");
        args.insert(0, "--user");
    }
    args
}

/// Runs `job` with its executor; its output goes to `log` as it comes. Returns how it ended
/// and, for `nix`, the store paths it built.
pub async fn execute(
    settings: &ExecutorSettings,
    job: &ExecJob<'_>,
    log: mpsc::Sender<Vec<u8>>,
    cancel: &CancellationToken,
) -> (ExecEnd, Vec<String>) {
    match job.def.executor {
        ExecutorKind::Shell => {
            let Some(script) = job.def.run.clone() else {
                return (ExecEnd::Error("a shell job without `run`".into()), Vec::new());
            };
            let mut argv: Vec<String> = Vec::new();
            if settings.isolate {
                argv.push("unshare".into());
                argv.extend(unshare_args().into_iter().map(String::from));
            }
            argv.extend(["sh".into(), "-eu".into(), "-c".into(), script]);
            (run_process(&argv, job, log, cancel, None).await, Vec::new())
        }
        ExecutorKind::Nix => {
            let Some(target) = job.def.build.clone() else {
                return (
                    ExecEnd::Error("a nix job without `build` (flake checks are expanded at evaluation)".into()),
                    Vec::new(),
                );
            };
            let argv: Vec<String> = if target.contains('#') {
                [
                    "nix",
                    "--extra-experimental-features",
                    "nix-command flakes",
                    "build",
                    "--no-link",
                    // The outputs as JSON (`--print-out-paths` is newer than nix 2.8).
                    "--json",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([target])
                .collect()
            } else {
                vec!["nix-build".into(), "--no-out-link".into(), target]
            };
            // The worker's own nix settings (NIX_CONFIG, NIX_REMOTE, NIX_PATH, ...) reach the
            // build as they reach the cache push after it, which runs in the worker's
            // environment: both must see one store and one configuration. The job's `env`
            // comes last and wins.
            let env = std::env::vars().filter(|(k, _)| k.starts_with("NIX_")).chain(job.env.iter().cloned()).collect();
            let job = ExecJob { env, ..*job };
            let mut outputs = Vec::new();
            let end = run_process(&argv, &job, log, cancel, Some(&mut outputs)).await;
            (end, outputs)
        }
        ExecutorKind::Vm => match &settings.vm {
            Some(vm) => (run_vm(vm, job, log, cancel).await, Vec::new()),
            None => (ExecEnd::Error("this worker runs no vm jobs (no --vm-image)".into()), Vec::new()),
        },
    }
}

/// Runs `argv` in the workspace; `outputs`, when given, collects the lines of stdout that
/// are store paths (what `nix-build` prints).
async fn run_process(
    argv: &[String],
    job: &ExecJob<'_>,
    log: mpsc::Sender<Vec<u8>>,
    cancel: &CancellationToken,
    outputs: Option<&mut Vec<String>>,
) -> ExecEnd {
    let home = job.scratch.join("home");
    let tmp = job.scratch.join("tmp");
    for dir in [&home, &tmp] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return ExecEnd::Error(format!("cannot make {}: {e}", dir.display()));
        }
    }
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(job.workspace)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The job dies with its worker, even on SIGKILL: a job whose worker is gone is given
    // to another worker, and must not run on beside it. (`unshare --kill-child` takes the
    // rest of the namespace down with it.)
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return ExecEnd::Error(format!("cannot start {}: {e}", argv[0])),
    };
    let pid = child.id().map(|p| p as libc::pid_t);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let want_paths = outputs.is_some();
    let out_task = tokio::spawn(pump(stdout, log.clone(), want_paths));
    let err_task = tokio::spawn(pump(stderr, log, false));
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => ExecEnd::Exited(code),
                (None, Some(sig)) => ExecEnd::Signalled(sig),
                _ => ExecEnd::Error("the job ended with no status".into()),
            },
            Err(e) => ExecEnd::Error(format!("waiting for the job: {e}")),
        },
        () = tokio::time::sleep(job.timeout) => ExecEnd::TimedOut,
        () = cancel.cancelled() => ExecEnd::Cancelled,
    };
    // Whatever ended it, nothing of the job's process group outlives it.
    if let Some(pid) = pid {
        // SAFETY: signalling a process group we created.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.wait().await;
    let paths = out_task.await.unwrap_or_default();
    let _ = err_task.await;
    if let Some(outputs) = outputs {
        outputs.extend(paths);
    }
    end
}

/// Copies a pipe into the log; returns the lines that look like store paths when asked.
async fn pump(mut pipe: impl AsyncRead + Unpin, log: mpsc::Sender<Vec<u8>>, paths: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut line = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if paths {
            for &b in &buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim().to_string();
                    if text.starts_with("/nix/store/") && !text.contains(' ') {
                        found.push(text);
                    } else if text.starts_with('[') {
                        found.extend(json_outputs(&text));
                    }
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        if log.send(buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
    found
}

/// The output paths in `nix build --json`'s answer: `[{"drvPath": …, "outputs": {"out": PATH, …}}, …]`.
fn json_outputs(text: &str) -> Vec<String> {
    let Ok(serde_json::Value::Array(built)) = serde_json::from_str(text) else { return Vec::new() };
    built
        .iter()
        .filter_map(|b| b.get("outputs")?.as_object())
        .flat_map(|outputs| outputs.values().filter_map(|p| p.as_str().map(str::to_string)))
        .collect()
}

/// The guest image a vm job asks for: the worker's own, or `image = "NAME"` in
/// `<image dir>/images/NAME/`.
pub fn image_dir(vm: &VmSettings, name: Option<&str>) -> Result<PathBuf, String> {
    let Some(name) = name else { return Ok(vm.image_dir.clone()) };
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!("vm image name {name:?} is not a name (letters, digits, '.', '_', '-')"));
    }
    let dir = vm.image_dir.join("images").join(name);
    if !dir.is_dir() {
        return Err(format!("this worker has no vm image {name:?} (no {})", dir.display()));
    }
    Ok(dir)
}

/// Runs a vm job: the script in a fresh guest with the workspace shared read-write.
async fn run_vm(vm: &VmSettings, job: &ExecJob<'_>, log: mpsc::Sender<Vec<u8>>, cancel: &CancellationToken) -> ExecEnd {
    use aspen_vm::image::GuestImage;
    use aspen_vm::runner::{JobSpec, JobStatus, Share, ShareBackend, ShareSource, VmEvent, VmSpec};
    let Some(script) = job.def.run.clone() else { return ExecEnd::Error("a vm job without `run`".into()) };
    if let Err(e) = std::fs::create_dir_all(job.scratch) {
        return ExecEnd::Error(format!("cannot make {}: {e}", job.scratch.display()));
    }
    let image_dir = match image_dir(vm, job.def.image.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return ExecEnd::Error(e),
    };
    let spec = VmSpec {
        hypervisor: vm.hypervisor.clone(),
        image: GuestImage::in_dir(&image_dir),
        vcpus: job.def.resources.cpus.max(1),
        memory_mib: job.def.resources.memory_mib.clamp(128, u32::MAX as u64) as u32,
        shares: vec![Share {
            tag: "workspace".into(),
            source: ShareSource::Dir(job.workspace.to_path_buf()),
            guest_path: GUEST_WORKSPACE.into(),
            read_only: false,
            backend: ShareBackend::Aspen,
        }],
        network: false,
        timeout: job.timeout,
        serial_log: Some(job.scratch.join("serial.log")),
    };
    let mut env = job.env.clone();
    env.push(("HOME".into(), "/tmp".into()));
    let guest_job = JobSpec {
        argv: vec!["/bin/sh".into(), "-eu".into(), "-c".into(), script],
        env,
        cwd: GUEST_WORKSPACE.into(),
        outputs: Vec::new(),
    };
    let flag = Arc::new(AtomicBool::new(false));
    let watcher = {
        let flag = flag.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        })
    };
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let mut on_event = |event: VmEvent<'_>| {
            let bytes = match event {
                VmEvent::Stdout(b) | VmEvent::Stderr(b) => b.to_vec(),
                VmEvent::Booted { kernel } => format!("[aspen-ci] guest up (kernel {kernel})\n").into_bytes(),
                VmEvent::Started => return,
            };
            let _ = runtime.block_on(log.send(bytes));
        };
        aspen_vm::runner::run_job_until(&spec, &guest_job, &mut on_event, &flag)
    })
    .await;
    watcher.abort();
    match result {
        Ok(Ok(outcome)) => match outcome.status {
            JobStatus::Exited(aspen_vm_agent::ExitStatus::Code(code)) => ExecEnd::Exited(code),
            JobStatus::Exited(aspen_vm_agent::ExitStatus::Signal(sig)) => ExecEnd::Signalled(sig),
            JobStatus::TimedOut => ExecEnd::TimedOut,
            JobStatus::Cancelled => ExecEnd::Cancelled,
            JobStatus::NotStarted(message) => ExecEnd::Error(format!("the job did not start in the VM: {message}")),
        },
        Ok(Err(e)) => ExecEnd::Error(format!("the VM failed: {e}")),
        Err(e) => ExecEnd::Error(format!("the VM's thread failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_build_json_names_the_outputs() {
        let text =
            r#"[{"drvPath":"/nix/store/a-x.drv","outputs":{"dev":"/nix/store/b-x-dev","out":"/nix/store/c-x"}}]"#;
        assert_eq!(json_outputs(text), ["/nix/store/b-x-dev", "/nix/store/c-x"]);
        assert!(json_outputs("[not json").is_empty());
    }

    #[test]
    fn a_vm_job_s_image_is_the_worker_s_or_a_named_one_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmSettings {
            image_dir: dir.path().to_path_buf(),
            hypervisor: aspen_vm::hypervisor::Hypervisor::Qemu {
                binary: "qemu-system-x86_64".into(),
                accel: aspen_vm::hypervisor::Accel::Tcg,
            },
        };
        assert_eq!(image_dir(&vm, None).unwrap(), dir.path());
        let err = image_dir(&vm, Some("big")).unwrap_err();
        assert!(err.contains("no vm image \"big\""), "{err}");
        std::fs::create_dir_all(dir.path().join("images/big")).unwrap();
        assert_eq!(image_dir(&vm, Some("big")).unwrap(), dir.path().join("images/big"));
        for bad in ["../big", ".hidden", "a/b", ""] {
            assert!(image_dir(&vm, Some(bad)).unwrap_err().contains("is not a name"), "{bad}");
        }
    }
}
