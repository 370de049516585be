//! Runs one job in one microVM: starts the share backends and the hypervisor, hands the job to
//! the guest agent, streams its output, enforces the wall-clock timeout, and leaves nothing behind.
//!
//! Cleanup after any outcome: the hypervisor is killed and reaped, the share backends end, and the
//! runtime directory (sockets) is removed as soon as the guest is up, so even a SIGKILL of the
//! runner leaves no files; the hypervisor gets `PR_SET_PDEATHSIG` so it dies with the runner.
//! A runtime directory orphaned by a runner killed during boot is swept by the next runner.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aspen_vm_agent::{
    ExitStatus, FrameError, GuestMsg, GuestNetwork, HostMsg, Job, PROTOCOL_VERSION, ShareMount, VSOCK_PORT, read_frame,
    write_frame,
};

use crate::hypervisor::{Accel, Hypervisor, LaunchPlan, command_line};
use crate::image::GuestImage;
use aspen_fs::{AspenFs, ChunkStore, FsConfig, FsStore, VirtioFs};
use aspen_kv::SharedKv;

use crate::readonly::ReadOnly;
use crate::virtiofs::{ShareError, ShareServer, passthrough};

/// How much of the serial console and hypervisor stderr an error report quotes.
const LOG_TAIL_BYTES: usize = 8 << 10;
/// How long a powered-off guest's hypervisor may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long share backends may take to end after the hypervisor is gone.
const BACKEND_STOP_LIMIT: Duration = Duration::from_secs(10);
/// The most shares one VM may have.
pub const MAX_SHARES: usize = 16;
/// Prefix of runtime directories under the temp dir: `aspen-vm.<runner pid>.<n>`.
const RUNTIME_PREFIX: &str = "aspen-vm.";
/// The address QEMU's user-mode network gives the guest.
const USER_NET: (&str, &str, &str) = ("10.0.2.15/24", "10.0.2.2", "10.0.2.3");

/// A host directory served to the guest over VirtioFS.
#[derive(Debug, Clone)]
pub struct Share {
    /// The virtiofs tag (unique per VM).
    pub tag: String,
    /// What the guest sees there.
    pub source: ShareSource,
    /// Where the guest mounts it.
    pub guest_path: String,
    /// Read-only: mounted so in the guest and refused by Aspen's backend on the host (an
    /// external backend is trusted to be started read-only by its arguments).
    pub read_only: bool,
    /// Which VirtioFS backend serves it.
    pub backend: ShareBackend,
}

/// What a share shows the guest.
#[derive(Debug, Clone)]
pub enum ShareSource {
    /// A host directory (a job's workspace).
    Dir(PathBuf),
    /// A KV prefix as AspenFS shows it, served straight from the cluster (no host mount).
    Kv(KvShare),
}

/// A KV prefix served as a filesystem to a guest, through the caller's cluster client.
#[derive(Clone)]
pub struct KvShare {
    /// The cluster's KV, with the caller's token.
    pub kv: SharedKv,
    /// Where files past one KV value keep their chunks (without it they cannot be written).
    pub chunks: Option<Arc<dyn ChunkStore>>,
    /// The prefix, ending in '/'.
    pub prefix: String,
    /// The runtime the cluster client runs on.
    pub runtime: tokio::runtime::Handle,
    /// How long one filesystem request may wait for the cluster (EIO after).
    pub op_timeout: Duration,
    /// How long the guest keeps entries and attributes: it is not told of changes made
    /// elsewhere, so this is how stale its view may be.
    pub ttl: Duration,
}

impl std::fmt::Debug for KvShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvShare").field("prefix", &self.prefix).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl KvShare {
    fn filesystem(&self) -> Result<VirtioFs, VmError> {
        let store = FsStore::new(self.kv.clone(), self.prefix.clone().into_bytes(), self.op_timeout)
            .map_err(|e| VmError::Invalid(format!("share of KV prefix {:?}: {e}", self.prefix)))?;
        let config = FsConfig { ttl: self.ttl, watched_ttl: self.ttl, uid: 0, gid: 0 };
        Ok(VirtioFs(AspenFs::new(store, self.chunks.clone(), self.runtime.clone(), config)))
    }
}

/// The process that serves a share over vhost-user-fs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ShareBackend {
    /// Aspen's own backend, on a thread of the runner.
    #[default]
    Aspen,
    /// Another vhost-user-fs daemon (the `virtiofsd` reference, for comparison), started per
    /// VM. In `args`, `{socket}` and `{dir}` stand for the socket path and the shared directory.
    External {
        /// The daemon's binary.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// One VM for one job.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The hypervisor backend.
    pub hypervisor: Hypervisor,
    /// Kernel and initramfs.
    pub image: GuestImage,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// VirtioFS shares.
    pub shares: Vec<Share>,
    /// Give the guest a user-mode network (no network otherwise).
    pub network: bool,
    /// Wall-clock limit from launch to job end; the VM is killed when it passes.
    pub timeout: Duration,
    /// Where the serial console is written, if anywhere.
    pub serial_log: Option<PathBuf>,
}

/// The job, as the runner's caller describes it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment (nothing else is inherited; a default `PATH` is added if absent).
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    pub cwd: String,
    /// Guest files to return after the job.
    pub outputs: Vec<String>,
}

/// Something that happened while the job ran, delivered as it happens.
#[derive(Debug)]
pub enum VmEvent<'a> {
    /// The agent answered: the guest is up.
    Booted {
        /// The guest kernel release.
        kernel: &'a str,
    },
    /// The job's process started.
    Started,
    /// A chunk of the job's stdout.
    Stdout(&'a [u8]),
    /// A chunk of the job's stderr.
    Stderr(&'a [u8]),
}

/// How the job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// The process ended with this status.
    Exited(ExitStatus),
    /// The wall-clock limit passed; the VM was killed.
    TimedOut,
    /// The agent could not start the job (a share would not mount, no such program, ...).
    NotStarted(String),
    /// The caller cancelled the run; the VM was killed.
    Cancelled,
}

/// A file the job named as output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Its guest path.
    pub path: String,
    /// Its contents, or why it could not be returned.
    pub data: Result<Vec<u8>, String>,
}

/// Phase timings of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// From launching the hypervisor to the job's process starting in the guest.
    pub boot_to_job_start: Option<Duration>,
    /// From the job's exit report to the hypervisor and backends being gone.
    pub job_end_to_teardown: Option<Duration>,
    /// The whole run.
    pub total: Duration,
}

/// The result of a run that got as far as a verdict on the job.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The VM's name: its runtime directory under the temp dir and QEMU's `-name`.
    pub vm_name: String,
    /// How the job ended.
    pub status: JobStatus,
    /// The named output files.
    pub outputs: Vec<OutputFile>,
    /// Phase timings.
    pub timings: Timings,
}

/// A run that failed before the job had a verdict.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The request itself is wrong.
    #[error("invalid VM request: {0}")]
    Invalid(String),
    /// The guest image is missing.
    #[error("no guest image at {0} (build one with `aspen vm image build`)")]
    NoImage(PathBuf),
    /// A share could not be served.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The hypervisor could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// The VM ended or broke before the job's verdict.
    #[error("the VM failed: {message}\n--- hypervisor stderr ---\n{stderr}\n--- serial console ---\n{serial}")]
    Crashed {
        /// What was observed.
        message: String,
        /// The end of the hypervisor's stderr.
        stderr: String,
        /// The end of the serial console.
        serial: String,
    },
    /// Host-side I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// The last bytes of a stream, for error reports.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<u8>>>);

impl Tail {
    fn push(&self, bytes: &[u8]) {
        if let Ok(mut t) = self.0.lock() {
            t.extend(bytes);
            let excess = t.len().saturating_sub(LOG_TAIL_BYTES);
            t.drain(..excess);
        }
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .map(|t| String::from_utf8_lossy(&t.iter().copied().collect::<Vec<_>>()).into_owned())
            .unwrap_or_default()
    }
}

/// The runner's directory for sockets, removed when dropped (or earlier, once the guest is up).
struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    fn create() -> Result<RuntimeDir, VmError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = runtime_base().join(format!(
            "{RUNTIME_PREFIX}{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(RuntimeDir { path })
    }

    fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Where runtime directories go: the temp dir, unless its path leaves too little of a socket
/// address's 108 bytes for `<dir>/aspen-vm.<pid>.<n>/fs<i>.sock` (a CI job's deep scratch
/// dir as TMPDIR); then /tmp.
fn runtime_base() -> PathBuf {
    const LONGEST: &str = "aspen-vm.4294967295.18446744073709551615/fs99.sock";
    let base = std::env::temp_dir();
    if base.join(LONGEST).as_os_str().len() <= 100 { base } else { PathBuf::from("/tmp") }
}

/// Removes runtime directories whose runner process is gone (killed while its VM booted).
pub fn sweep_orphaned_runtime_dirs() {
    let mut bases = vec![std::env::temp_dir()];
    if runtime_base() != bases[0] {
        bases.push(runtime_base());
    }
    for base in bases {
        sweep_in(&base);
    }
}

fn sweep_in(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(RUNTIME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A launched hypervisor and everything it uses. Dropping it kills and reaps the hypervisor,
/// stops the share backends and removes the runtime directory, whatever state the run is in.
struct Vm {
    child: Option<Child>,
    servers: Vec<ShareServer>,
    external_backends: Vec<Child>,
    log_threads: Vec<JoinHandle<()>>,
    serial: Tail,
    stderr: Tail,
    runtime: RuntimeDir,
}

impl Vm {
    fn crashed(&mut self, message: impl Into<String>) -> VmError {
        let mut message = message.into();
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            message = format!("{message} (hypervisor {status})");
        }
        self.kill();
        VmError::Crashed { message, stderr: self.stderr.text(), serial: self.serial.text() }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for mut backend in self.external_backends.drain(..) {
            let _ = backend.kill();
            let _ = backend.wait();
        }
        // Every process writing to a log pipe is gone now; the readers end at EOF.
        for t in self.log_threads.drain(..) {
            let _ = t.join();
        }
        for server in self.servers.drain(..) {
            if let Err(e) = server.stop(BACKEND_STOP_LIMIT) {
                tracing::warn!(error = %e, "virtiofs backend");
            }
        }
        self.runtime.remove();
    }

    /// Waits for a guest that powered itself off, killing it after `EXIT_GRACE`.
    fn wait_for_exit(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let deadline = Instant::now() + EXIT_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.kill();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_log_reader(from: impl Read + Send + 'static, tail: Tail, mut file: Option<fs::File>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut from = from;
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    if let Some(f) = file.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                }
            }
        }
    })
}

fn validate(spec: &VmSpec, job: &JobSpec) -> Result<(), VmError> {
    let invalid = |m: String| Err(VmError::Invalid(m));
    if job.argv.is_empty() {
        return invalid("the job has no command".into());
    }
    if spec.vcpus == 0 || spec.vcpus > 64 {
        return invalid(format!("{} vCPUs is outside 1..=64", spec.vcpus));
    }
    if spec.memory_mib < 64 || spec.memory_mib > 64 << 10 {
        return invalid(format!("{} MiB of memory is outside 64..=65536", spec.memory_mib));
    }
    if spec.shares.len() > MAX_SHARES {
        return invalid(format!("{} shares exceed the limit of {MAX_SHARES}", spec.shares.len()));
    }
    for (i, share) in spec.shares.iter().enumerate() {
        if share.tag.is_empty() || share.tag.len() > 36 || share.tag.contains([',', '=', ' ']) {
            return invalid(format!("share tag {:?} must be 1 to 36 characters without ',', '=' or spaces", share.tag));
        }
        if spec.shares[..i].iter().any(|s| s.tag == share.tag) {
            return invalid(format!("share tag {:?} is used twice", share.tag));
        }
        if !share.guest_path.starts_with('/') {
            return invalid(format!("share guest path {:?} must be absolute", share.guest_path));
        }
    }
    if !spec.image.kernel.exists() || !spec.image.initramfs.exists() {
        return Err(VmError::NoImage(spec.image.kernel.parent().map(Path::to_path_buf).unwrap_or_default()));
    }
    Ok(())
}

/// Boots a VM for `job`, streams its events to `on_event`, and tears everything down.
pub fn run_job(spec: &VmSpec, job: &JobSpec, on_event: &mut dyn FnMut(VmEvent<'_>)) -> Result<Outcome, VmError> {
    run_job_until(spec, job, on_event, &AtomicBool::new(false))
}

/// [`run_job`], ended early with [`JobStatus::Cancelled`] once `cancel` is set (checked every
/// [`CANCEL_POLL`]; a VM still booting is killed once its agent connects).
pub fn run_job_until(
    spec: &VmSpec,
    job: &JobSpec,
    on_event: &mut dyn FnMut(VmEvent<'_>),
    cancel: &AtomicBool,
) -> Result<Outcome, VmError> {
    let done = &AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<UnixStream>();
        // Cancelling shuts the agent channel down under the reading loop, which then kills
        // the VM; the thread ends with the run.
        scope.spawn(move || {
            let mut channel = None;
            while !done.load(Ordering::SeqCst) {
                if let Ok(stream) = rx.try_recv() {
                    channel = Some(stream);
                }
                if cancel.load(Ordering::SeqCst)
                    && let Some(stream) = &channel
                {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
                std::thread::sleep(CANCEL_POLL);
            }
        });
        let result = run_job_inner(spec, job, on_event, cancel, &tx);
        done.store(true, Ordering::SeqCst);
        result
    })
}

/// How often a run looks at its cancel flag.
pub const CANCEL_POLL: Duration = Duration::from_millis(100);

fn run_job_inner(
    spec: &VmSpec,
    job: &JobSpec,
    on_event: &mut dyn FnMut(VmEvent<'_>),
    cancel: &AtomicBool,
    channel: &std::sync::mpsc::Sender<UnixStream>,
) -> Result<Outcome, VmError> {
    validate(spec, job)?;
    sweep_orphaned_runtime_dirs();
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let runtime = RuntimeDir::create()?;

    let mut vm = Vm {
        child: None,
        servers: Vec::new(),
        external_backends: Vec::new(),
        log_threads: Vec::new(),
        serial: Tail::default(),
        stderr: Tail::default(),
        runtime,
    };
    let mut sockets = Vec::new();
    for (i, share) in spec.shares.iter().enumerate() {
        let socket = vm.runtime.path.join(format!("fs{i}.sock"));
        match (&share.source, &share.backend) {
            (ShareSource::Dir(dir), ShareBackend::Aspen) if share.read_only => {
                vm.servers.push(ShareServer::start(&socket, ReadOnly(passthrough(dir)?))?)
            }
            (ShareSource::Dir(dir), ShareBackend::Aspen) => {
                vm.servers.push(ShareServer::start(&socket, passthrough(dir)?)?)
            }
            (ShareSource::Kv(kv), ShareBackend::Aspen) if share.read_only => {
                vm.servers.push(ShareServer::start(&socket, ReadOnly(kv.filesystem()?))?)
            }
            (ShareSource::Kv(kv), ShareBackend::Aspen) => {
                vm.servers.push(ShareServer::start(&socket, kv.filesystem()?)?)
            }
            (ShareSource::Dir(dir), ShareBackend::External { program, args }) => {
                start_external_backend(&mut vm, program, args, &socket, dir, deadline)?
            }
            (ShareSource::Kv(_), ShareBackend::External { .. }) => {
                return Err(VmError::Invalid(format!(
                    "share {:?}: an external backend serves directories only",
                    share.tag
                )));
            }
        }
        sockets.push(socket);
    }
    let agent_socket = vm.runtime.path.join("agent.sock");
    let listener = match spec.hypervisor {
        Hypervisor::Qemu { .. } => {
            Some(UnixListener::bind(&agent_socket).map_err(io_err(format!("binding {}", agent_socket.display())))?)
        }
        Hypervisor::CloudHypervisor { .. } => None,
    };
    let name = vm.runtime.name();
    let plan = LaunchPlan {
        name: &name,
        image: &spec.image,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        shares: spec.shares.iter().zip(&sockets).map(|(s, p)| (s.tag.as_str(), p.as_path())).collect(),
        agent_socket: &agent_socket,
        network: spec.network,
    };
    let argv = command_line(&spec.hypervisor, &plan).map_err(VmError::Invalid)?;
    tracing::debug!(?argv, "launching VM");

    let serial_file = match &spec.serial_log {
        Some(path) => Some(fs::File::create(path).map_err(io_err(format!("creating {}", path.display())))?),
        None => None,
    };
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    dies_with_runner(&mut command);
    let mut child = command.spawn().map_err(|source| VmError::Spawn { program: argv[0].clone(), source })?;
    if let Some(out) = child.stdout.take() {
        vm.log_threads.push(spawn_log_reader(out, vm.serial.clone(), serial_file));
    }
    if let Some(err) = child.stderr.take() {
        vm.log_threads.push(spawn_log_reader(err, vm.stderr.clone(), None));
    }
    vm.child = Some(child);

    // Until the agent says hello, the guest is booting: that ends by the job's deadline
    // or the boot limit, whichever comes first.
    let boot_deadline = deadline.min(started + BOOT_LIMIT);
    let connected = match &listener {
        Some(listener) => accept_agent(&mut vm, listener, boot_deadline),
        None => connect_vsock(&mut vm, &agent_socket, boot_deadline),
    };
    let mut stream = match connected {
        Ok(Some(stream)) => stream,
        Ok(None) if boot_deadline < deadline => return Err(vm.crashed(not_booted(&spec.hypervisor))),
        Ok(None) => return Ok(timed_out(&mut vm, &name, started, None)),
        Err(e) => return Err(e),
    };
    if let Ok(clone) = stream.try_clone() {
        let _ = channel.send(clone);
    }
    drop(listener);

    let mut outputs = Vec::new();
    let mut timings = Timings::default();
    let mut hello = false;
    let status = loop {
        let until = if hello { deadline } else { boot_deadline };
        let remaining = until.saturating_duration_since(Instant::now());
        let booting_too_long = !hello && boot_deadline < deadline;
        if remaining.is_zero() {
            if booting_too_long {
                return Err(vm.crashed(not_booted(&spec.hypervisor)));
            }
            return Ok(timed_out(&mut vm, &name, started, timings.boot_to_job_start));
        }
        stream.set_read_timeout(Some(remaining)).map_err(io_err("setting the agent channel timeout"))?;
        let msg = match read_frame::<_, GuestMsg>(&mut stream) {
            Ok(msg) => msg,
            Err(FrameError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if booting_too_long {
                    return Err(vm.crashed(not_booted(&spec.hypervisor)));
                }
                return Ok(timed_out(&mut vm, &name, started, timings.boot_to_job_start));
            }
            Err(_) if cancel.load(Ordering::SeqCst) => {
                let mut outcome = timed_out(&mut vm, &name, started, timings.boot_to_job_start);
                outcome.status = JobStatus::Cancelled;
                return Ok(outcome);
            }
            Err(e) => {
                let phase = if hello { "while the job ran" } else { "before the agent said hello" };
                return Err(vm.crashed(format!("the agent channel broke {phase}: {e}")));
            }
        };
        match msg {
            GuestMsg::Hello { version, kernel } => {
                if version != PROTOCOL_VERSION {
                    return Err(vm.crashed(format!(
                        "the guest agent speaks protocol {version}, the runner {PROTOCOL_VERSION}; \
                         rebuild the image with this aspen"
                    )));
                }
                hello = true;
                // Every device is connected by now: nothing needs the sockets on disk.
                vm.runtime.remove();
                on_event(VmEvent::Booted { kernel: &kernel });
                write_frame(&mut stream, &HostMsg::Job(guest_job(spec, job)))
                    .map_err(|e| vm.crashed(format!("sending the job: {e}")))?;
            }
            GuestMsg::Started => {
                timings.boot_to_job_start = Some(started.elapsed());
                on_event(VmEvent::Started);
            }
            GuestMsg::Stdout(bytes) => on_event(VmEvent::Stdout(&bytes)),
            GuestMsg::Stderr(bytes) => on_event(VmEvent::Stderr(&bytes)),
            GuestMsg::Output { path, data } => outputs.push(OutputFile { path, data: Ok(data) }),
            GuestMsg::OutputError { path, message } => outputs.push(OutputFile { path, data: Err(message) }),
            GuestMsg::Exit(exit) => break JobStatus::Exited(exit),
            GuestMsg::Failed { message } => break JobStatus::NotStarted(message),
        }
    };
    let job_end = Instant::now();
    vm.wait_for_exit();
    timings.job_end_to_teardown = Some(job_end.elapsed());
    timings.total = started.elapsed();
    Ok(Outcome { vm_name: name, status, outputs, timings })
}

/// Makes a child process die with the runner, even on SIGKILL (the signal follows the thread
/// that spawns it, which is the thread running [`run_job`] for the whole run).
fn dies_with_runner(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("the runner exited while launching"));
            }
            Ok(())
        });
    }
}

/// Starts an external vhost-user-fs daemon and waits for its socket.
fn start_external_backend(
    vm: &mut Vm,
    program: &Path,
    args: &[String],
    socket: &Path,
    dir: &Path,
    deadline: Instant,
) -> Result<(), VmError> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{socket}", &socket.to_string_lossy()).replace("{dir}", &dir.to_string_lossy()))
        .collect();
    let mut command = Command::new(program);
    command.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    dies_with_runner(&mut command);
    let mut child =
        command.spawn().map_err(|source| VmError::Spawn { program: program.display().to_string(), source })?;
    if let Some(err) = child.stderr.take() {
        vm.log_threads.push(spawn_log_reader(err, vm.stderr.clone(), None));
    }
    vm.external_backends.push(child);
    while !socket.exists() {
        let exited = vm.external_backends.last_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited || Instant::now() > deadline {
            return Err(vm.crashed(format!("{} did not create {}", program.display(), socket.display())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Longest a guest may take from start to its agent's hello. A TCG guest of Aspen's image
/// boots in about 2 s here; a guest that has not said hello in two minutes is not booting
/// (a `/dev/kvm` that opens but runs no guest, a kernel that hangs), and waiting for the
/// job's whole time limit would only hide that.
pub const BOOT_LIMIT: Duration = Duration::from_secs(120);

fn not_booted(hypervisor: &Hypervisor) -> String {
    let mut message = format!("the guest did not boot within {} s", BOOT_LIMIT.as_secs());
    if let Hypervisor::Qemu { accel: Accel::Kvm, .. } = hypervisor {
        message.push_str(" (with KVM: if /dev/kvm runs no guest on this machine, use the qemu-tcg hypervisor)");
    }
    message
}

fn timed_out(vm: &mut Vm, name: &str, started: Instant, boot: Option<Duration>) -> Outcome {
    let killed = Instant::now();
    vm.kill();
    Outcome {
        vm_name: name.to_string(),
        status: JobStatus::TimedOut,
        outputs: Vec::new(),
        timings: Timings {
            boot_to_job_start: boot,
            job_end_to_teardown: Some(killed.elapsed()),
            total: started.elapsed(),
        },
    }
}

/// Waits for QEMU's virtio-serial chardev to connect; `None` when the deadline passes.
fn accept_agent(vm: &mut Vm, listener: &UnixListener, deadline: Instant) -> Result<Option<UnixStream>, VmError> {
    listener.set_nonblocking(true).map_err(io_err("agent listener"))?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(io_err("agent channel"))?;
                return Ok(Some(stream));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_err("accepting the agent channel")(e)),
        }
        if hypervisor_exited(vm) {
            return Err(vm.crashed("the hypervisor exited before connecting the agent channel"));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Connects to the guest agent through Cloud Hypervisor's hybrid vsock socket, retrying while the
/// guest boots; `None` when the deadline passes.
fn connect_vsock(vm: &mut Vm, socket: &Path, deadline: Instant) -> Result<Option<UnixStream>, VmError> {
    loop {
        if let Ok(mut stream) = UnixStream::connect(socket) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            if stream.write_all(format!("CONNECT {VSOCK_PORT}\n").as_bytes()).is_ok() {
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut line).is_ok() && line.starts_with("OK ") {
                    // The reader buffers nothing beyond the line: the agent speaks only after
                    // the connection is up, and says hello first.
                    let _ = stream.set_read_timeout(None);
                    return Ok(Some(stream));
                }
            }
        }
        if hypervisor_exited(vm) {
            return Err(vm.crashed("the hypervisor exited before the agent listened on vsock"));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hypervisor_exited(vm: &mut Vm) -> bool {
    vm.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
}

/// The job as the agent receives it: the caller's job plus the share mounts and network.
fn guest_job(spec: &VmSpec, job: &JobSpec) -> Job {
    let mut env = job.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/bin:/sbin:/usr/bin:/usr/sbin".into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), "/tmp".into()));
    }
    Job {
        argv: job.argv.clone(),
        env,
        cwd: job.cwd.clone(),
        mounts: spec
            .shares
            .iter()
            .map(|s| ShareMount { tag: s.tag.clone(), path: s.guest_path.clone(), read_only: s.read_only })
            .collect(),
        outputs: job.outputs.clone(),
        network: spec.network.then(|| GuestNetwork {
            address: USER_NET.0.into(),
            gateway: USER_NET.1.into(),
            dns: USER_NET.2.into(),
        }),
    }
}
