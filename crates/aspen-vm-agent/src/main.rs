//! `aspen-vm-agent`: PID 1 of an Aspen microVM guest.
//!
//! It brings the guest up (pseudo filesystems, kernel modules listed in `/etc/aspen/modules`),
//! opens the channel to the host (a virtio-serial port under QEMU, vsock under Cloud
//! Hypervisor), runs the one job the host sends, streams its output, returns its exit status and
//! output files, and powers the VM off. Built statically so the image needs no libc.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_vm_agent::{
    ExitStatus, GuestMsg, GuestNetwork, HostMsg, Job, MAX_OUTPUT_FILE_BYTES, MAX_OUTPUT_FILES, MAX_STREAM_CHUNK,
    PROTOCOL_VERSION, SERIAL_PORT_NAME, ShareMount, VSOCK_PORT, read_frame, write_frame,
};

/// How long the agent waits for its channel device to appear after the modules load.
const CHANNEL_WAIT: Duration = Duration::from_secs(20);
/// Where the image lists the kernel modules to load, in order.
const MODULE_LIST: &str = "/etc/aspen/modules";

type Channel = Arc<Mutex<File>>;

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 && let Err(e) = init_guest() {
        log(&format!("guest setup failed: {e}"));
    }
    let result = serve();
    if let Err(e) = &result {
        log(e);
    }
    if pid1 {
        // SAFETY: plain syscalls; as PID 1 the agent ends the VM once the job is reported.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

fn log(msg: &str) {
    eprintln!("aspen-vm-agent: {msg}");
}

/// Mounts the pseudo filesystems and loads the image's modules.
fn init_guest() -> io::Result<()> {
    for (source, target, fstype, data) in [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", ""),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
    ] {
        fs::create_dir_all(target)?;
        mount(source, target, fstype, 0, data)
            .map_err(|e| io::Error::new(e.kind(), format!("mounting {target}: {e}")))?;
    }
    if let Ok(list) = fs::read_to_string(MODULE_LIST) {
        for module in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Err(e) = load_module(module) {
                log(&format!("loading {module}: {e}"));
            }
        }
    }
    // Loopback is always there; it is not a network to the outside.
    let _ = Command::new(ip_program()).args(["link", "set", "lo", "up"]).status();
    Ok(())
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::other(format!("NUL in {s:?}")));
    let (source, target, fstype, data) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn load_module(path: &str) -> io::Result<()> {
    let file = File::open(path)?;
    let params = c"";
    // SAFETY: finit_module with a valid fd and an empty parameter string.
    let rc =
        unsafe { libc::syscall(libc::SYS_finit_module, std::os::fd::AsRawFd::as_raw_fd(&file), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) { Ok(()) } else { Err(err) }
}

/// Talks to the host: hello, one job, its results.
fn serve() -> Result<(), String> {
    let file = open_channel()?;
    let chan: Channel = Arc::new(Mutex::new(file.try_clone().map_err(|e| format!("duplicating the channel: {e}"))?));
    let mut reader = file;
    send(&chan, &GuestMsg::Hello { version: PROTOCOL_VERSION, kernel: kernel_release() })?;
    let job = match read_frame::<_, HostMsg>(&mut reader) {
        Ok(HostMsg::Job(job)) => job,
        Err(e) => return Err(format!("reading the job: {e}")),
    };
    match run_job(&job, &chan) {
        Ok(status) => send(&chan, &GuestMsg::Exit(status)),
        Err(message) => send(&chan, &GuestMsg::Failed { message }),
    }
}

fn send(chan: &Channel, msg: &GuestMsg) -> Result<(), String> {
    let mut file = chan.lock().map_err(|_| "channel lock poisoned".to_string())?;
    write_frame(&mut *file, msg).map_err(|e| format!("writing to the host: {e}"))
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Finds the virtio-serial port named for the agent, or else listens on vsock.
fn open_channel() -> Result<File, String> {
    let deadline = Instant::now() + CHANNEL_WAIT;
    loop {
        if let Some(dev) = find_serial_port() {
            return OpenOptions::new().read(true).write(true).open(&dev).map_err(|e| format!("opening {dev}: {e}"));
        }
        if vsock_present() {
            return accept_vsock();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no channel to the host: neither a virtio-serial port named {SERIAL_PORT_NAME} \
                 nor a virtio vsock device appeared within {CHANNEL_WAIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_serial_port() -> Option<String> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == SERIAL_PORT_NAME {
            let dev = format!("/dev/{}", entry.file_name().to_string_lossy());
            if Path::new(&dev).exists() {
                return Some(dev);
            }
        }
    }
    None
}

fn vsock_present() -> bool {
    fs::read_dir("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("virtio")))
        .unwrap_or(false)
}

fn accept_vsock() -> Result<File, String> {
    let os = |what: &str| format!("vsock {what}: {}", io::Error::last_os_error());
    // SAFETY: socket/bind/listen/accept on a fresh fd with a fully initialised sockaddr_vm.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os("socket"));
        }
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = VSOCK_PORT;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        if libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) != 0 {
            return Err(os("bind"));
        }
        if libc::listen(fd, 1) != 0 {
            return Err(os("listen"));
        }
        let conn = libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
        libc::close(fd);
        if conn < 0 {
            return Err(os("accept"));
        }
        Ok(File::from_raw_fd(conn))
    }
}

/// Mounts the shares, runs the job with its output streamed, and collects its outputs.
fn run_job(job: &Job, chan: &Channel) -> Result<ExitStatus, String> {
    if let Some(net) = &job.network {
        setup_network(net)?;
    }
    for share in &job.mounts {
        mount_share(share)?;
    }
    let (program, args) = job.argv.split_first().ok_or_else(|| "the job has an empty argv".to_string())?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&job.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {program:?} in {}: {e}", job.cwd))?;
    send(chan, &GuestMsg::Started)?;
    let pumps = [
        child.stdout.take().map(|out| pump(out, chan.clone(), GuestMsg::Stdout)),
        child.stderr.take().map(|err| pump(err, chan.clone(), GuestMsg::Stderr)),
    ];
    let status = child.wait().map_err(|e| format!("waiting for the job: {e}"))?;
    // Background processes the job left may still hold its pipes: end them so the pumps see EOF.
    // SAFETY: kill on the job's own process group.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    for pump in pumps.into_iter().flatten() {
        let _ = pump.join();
    }
    for path in job.outputs.iter().take(MAX_OUTPUT_FILES) {
        let msg = match read_output(path) {
            Ok(data) => GuestMsg::Output { path: path.clone(), data },
            Err(message) => GuestMsg::OutputError { path: path.clone(), message },
        };
        send(chan, &msg)?;
    }
    // SAFETY: plain syscall; writes through shares reach the host before the exit report.
    unsafe { libc::sync() };
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(sig)) => ExitStatus::Signal(sig),
        (None, None) => ExitStatus::Code(-1),
    })
}

fn pump(
    mut from: impl Read + Send + 'static,
    chan: Channel,
    wrap: fn(Vec<u8>) -> GuestMsg,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_STREAM_CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if send(&chan, &wrap(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

fn read_output(path: &str) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    if meta.len() > MAX_OUTPUT_FILE_BYTES as u64 {
        return Err(format!(
            "{path} has {} bytes, over the limit of {MAX_OUTPUT_FILE_BYTES} for an output file; \
             write large results into a share",
            meta.len()
        ));
    }
    fs::read(path).map_err(|e| format!("{path}: {e}"))
}

fn mount_share(share: &ShareMount) -> Result<(), String> {
    fs::create_dir_all(&share.path).map_err(|e| format!("creating {}: {e}", share.path))?;
    let flags = if share.read_only { libc::MS_RDONLY } else { 0 };
    mount(&share.tag, &share.path, "virtiofs", flags, "")
        .map_err(|e| format!("mounting virtiofs share {:?} at {}: {e}", share.tag, share.path))
}

/// busybox's `ip`: its applet list puts it in /sbin; an image may also have it in /bin.
fn ip_program() -> &'static str {
    if Path::new("/sbin/ip").exists() { "/sbin/ip" } else { "/bin/ip" }
}

fn setup_network(net: &GuestNetwork) -> Result<(), String> {
    let ip = |args: &[&str]| -> Result<(), String> {
        let status =
            Command::new(ip_program()).args(args).status().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if status.success() { Ok(()) } else { Err(format!("ip {} failed ({status})", args.join(" "))) }
    };
    ip(&["link", "set", "eth0", "up"])?;
    ip(&["addr", "add", &net.address, "dev", "eth0"])?;
    ip(&["route", "add", "default", "via", &net.gateway])?;
    fs::write("/etc/resolv.conf", format!("nameserver {}\n", net.dns))
        .map_err(|e| format!("writing /etc/resolv.conf: {e}"))
}
