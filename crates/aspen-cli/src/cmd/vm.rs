//! `aspen vm`: run a command in a microVM, build the guest image, and check what this host can run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_vm::doctor::{HypervisorChoice, default_image_dir, doctor, pick_hypervisor};
use aspen_vm::image::{GuestImage, ImageSpec, KernelSource};
use std::sync::Arc;

use aspen_blob::BlobClient;
use aspen_fs::{BlobChunks, ChunkStore};
use aspen_kv::SharedKv;
use aspen_vm::runner::{JobSpec, JobStatus, KvShare, Share, ShareSource, VmEvent, VmSpec, run_job};

use crate::context::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Say which hypervisor backends work on this host, and why the others do not.
    Doctor {
        /// The guest image directory to check.
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot a microVM, run one command in it, and tear it down. Exits with the command's exit
    /// code; 124 when --time-limit killed it, 125 when it could not start.
    Run(RunArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Assemble a kernel and initramfs (busybox, the guest agent, virtio/virtiofs/vsock modules)
    /// from Debian's cloud kernel package.
    Build {
        /// Where to write `vmlinuz` and `initramfs.cpio` [default: ~/.cache/aspen/vm-image].
        #[arg(long)]
        out: Option<PathBuf>,
        /// The statically linked guest agent [default: aspen-vm-agent next to this program].
        #[arg(long)]
        agent: Option<PathBuf>,
        /// A linux-image-*-cloud-amd64 .deb to use instead of `apt-get download`.
        #[arg(long, conflicts_with_all = ["kernel", "modules"])]
        kernel_deb: Option<PathBuf>,
        /// A kernel image to use (with --modules) instead of a Debian package, as the Nix build
        /// of the image does.
        #[arg(long, requires = "modules")]
        kernel: Option<PathBuf>,
        /// The kernel's modules directory, lib/modules/VERSION (with --kernel).
        #[arg(long, requires = "kernel")]
        modules: Option<PathBuf>,
        /// A static busybox [default: /bin/busybox, else busybox-static from apt].
        #[arg(long)]
        busybox: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The guest image directory [default: ~/.cache/aspen/vm-image].
    #[arg(long)]
    image: Option<PathBuf>,
    /// The backend: `auto` picks Cloud Hypervisor or QEMU with KVM where a guest runs, else QEMU TCG.
    /// One of auto, qemu, qemu-tcg, cloud-hypervisor.
    #[arg(long, default_value = "auto")]
    hypervisor: HypervisorChoice,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// A host directory shared over VirtioFS: TAG:HOST_DIR:GUEST_PATH[:ro]. Repeatable.
    #[arg(long = "share", value_name = "TAG:HOST_DIR:GUEST_PATH[:ro]")]
    shares: Vec<String>,
    /// A KV prefix shown to the guest as a filesystem (AspenFS) over VirtioFS, served straight
    /// from the cluster with this command's ticket and token: TAG:PREFIX:GUEST_PATH[:ro].
    /// Repeatable. The guest is not told of changes made elsewhere; it sees them within 1 s.
    #[arg(long = "share-kv", value_name = "TAG:PREFIX:GUEST_PATH[:ro]")]
    kv_shares: Vec<String>,
    /// Give the guest a network (QEMU user-mode networking). Off by default.
    #[arg(long)]
    network: bool,
    /// Kill the VM when the command has not finished this many seconds after launch.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    time_limit: u64,
    /// Write the guest's serial console here.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Working directory in the guest.
    #[arg(long, default_value = "/")]
    cwd: String,
    /// An environment variable for the command, KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A guest file to copy back after the command. Repeatable.
    #[arg(long = "output", value_name = "GUEST_PATH")]
    outputs: Vec<String>,
    /// Where output files go on the host.
    #[arg(long, default_value = ".")]
    output_dir: PathBuf,
    /// Print boot and teardown times to stderr.
    #[arg(long)]
    timings: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

pub fn run(ctx: &Ctx, cmd: VmCommand) -> anyhow::Result<()> {
    let code = run_command(ctx, cmd)?;
    if code == 0 { Ok(()) } else { Err(crate::context::ExitWith(code).into()) }
}

fn run_command(ctx: &Ctx, cmd: VmCommand) -> anyhow::Result<u8> {
    match cmd {
        VmCommand::Doctor { image } => {
            let image = image.unwrap_or_else(default_image_dir);
            let mut usable = false;
            for check in doctor(&image) {
                let mark = if check.ok { "ok  " } else { "no  " };
                println!("{mark} {:<18} {}", check.name, check.detail);
                usable |= check.ok && check.is_backend;
            }
            Ok(if usable { 0 } else { 1 })
        }
        VmCommand::Image(ImageCommand::Build { out, agent, kernel_deb, kernel, modules, busybox }) => {
            let agent = match agent {
                Some(agent) => agent,
                None => sibling("aspen-vm-agent")?,
            };
            let kernel = match (kernel_deb, kernel, modules) {
                (Some(deb), _, _) => KernelSource::Deb(deb),
                (None, Some(image), Some(modules)) => KernelSource::Files { image, modules },
                _ => KernelSource::Apt,
            };
            let spec = ImageSpec { out_dir: out.unwrap_or_else(default_image_dir), agent, kernel, busybox };
            let image = aspen_vm::image::build(&spec)?;
            println!("{}", image.kernel.display());
            println!("{}", image.initramfs.display());
            Ok(0)
        }
        VmCommand::Run(args) => run_vm(ctx, args),
    }
}

/// A program installed beside this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found; pass --agent (build it statically: see docs/vm.md)", path.display());
    }
    Ok(path)
}

/// Splits TAG:SOURCE:GUEST_PATH[:ro].
fn split_share<'a>(flag: &str, what: &str, spec: &'a str) -> anyhow::Result<(&'a str, &'a str, &'a str, bool)> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [tag, source, guest] => Ok((tag, source, guest, false)),
        [tag, source, guest, "ro"] => Ok((tag, source, guest, true)),
        _ => bail!("{flag} {spec:?}: expected TAG:{what}:GUEST_PATH or TAG:{what}:GUEST_PATH:ro"),
    }
}

fn parse_share(spec: &str) -> anyhow::Result<Share> {
    let (tag, host, guest, read_only) = split_share("--share", "HOST_DIR", spec)?;
    let host_dir = Path::new(host).canonicalize().with_context(|| format!("--share {spec:?}: host dir {host}"))?;
    let source = ShareSource::Dir(host_dir);
    Ok(Share { tag: tag.to_string(), source, guest_path: guest.to_string(), read_only, backend: Default::default() })
}

/// A `--share-kv`: the cluster client is made once, on first use.
fn parse_kv_share(ctx: &Ctx, client: &mut Option<aspen_client::Client>, spec: &str) -> anyhow::Result<Share> {
    let (tag, prefix, guest, read_only) = split_share("--share-kv", "PREFIX", spec)?;
    let runtime = tokio::runtime::Handle::current();
    let client = match client {
        Some(client) => client,
        None => client.insert(runtime.block_on(ctx.client())?),
    };
    let chunks: Arc<dyn ChunkStore> = Arc::new(BlobChunks::new(BlobClient::new(client), BlobChunks::scope_for(prefix)));
    let kv: SharedKv = Arc::new(client.clone());
    let source = ShareSource::Kv(KvShare {
        kv,
        chunks: Some(chunks),
        prefix: prefix.to_string(),
        runtime,
        op_timeout: Duration::from_secs(30),
        ttl: Duration::from_secs(1),
    });
    Ok(Share { tag: tag.to_string(), source, guest_path: guest.to_string(), read_only, backend: Default::default() })
}

fn run_vm(ctx: &Ctx, args: RunArgs) -> anyhow::Result<u8> {
    let image = GuestImage::in_dir(&args.image.unwrap_or_else(default_image_dir));
    let hypervisor = pick_hypervisor(args.hypervisor).map_err(anyhow::Error::msg)?;
    let mut shares = args.shares.iter().map(|s| parse_share(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = None;
    for spec in &args.kv_shares {
        shares.push(parse_kv_share(ctx, &mut client, spec)?);
    }
    let env = args
        .env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = VmSpec {
        hypervisor,
        image,
        vcpus: args.cpus,
        memory_mib: args.memory_mib,
        shares,
        network: args.network,
        timeout: Duration::from_secs(args.time_limit),
        serial_log: args.serial_log,
    };
    let job = JobSpec { argv: args.argv, env, cwd: args.cwd, outputs: args.outputs };
    let mut on_event = |event: VmEvent<'_>| match event {
        VmEvent::Booted { kernel } => tracing::info!(kernel, "guest up"),
        VmEvent::Started => tracing::info!("job started"),
        VmEvent::Stdout(bytes) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
        VmEvent::Stderr(bytes) => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(bytes);
            let _ = err.flush();
        }
    };
    let outcome = run_job(&spec, &job, &mut on_event)?;
    for output in &outcome.outputs {
        match &output.data {
            Ok(data) => {
                let name = Path::new(&output.path).file_name().map(|n| n.to_os_string()).unwrap_or_default();
                let dest = args.output_dir.join(name);
                std::fs::write(&dest, data).with_context(|| format!("writing {}", dest.display()))?;
            }
            Err(message) => eprintln!("aspen vm run: output {}: {message}", output.path),
        }
    }
    if args.timings {
        let ms = |d: Option<Duration>| d.map(|d| format!("{} ms", d.as_millis())).unwrap_or_else(|| "-".into());
        eprintln!(
            "boot to job start: {}; job end to teardown: {}; total: {} ms",
            ms(outcome.timings.boot_to_job_start),
            ms(outcome.timings.job_end_to_teardown),
            outcome.timings.total.as_millis()
        );
    }
    let code = match outcome.status {
        JobStatus::Exited(aspen_vm_agent::ExitStatus::Code(code)) => code.clamp(0, 255) as u8,
        JobStatus::Exited(aspen_vm_agent::ExitStatus::Signal(sig)) => (128 + sig.clamp(0, 127)) as u8,
        JobStatus::TimedOut => {
            eprintln!("aspen vm run: the command did not finish within {} s; the VM was killed", args.time_limit);
            124
        }
        JobStatus::NotStarted(message) => {
            eprintln!("aspen vm run: the command did not start: {message}");
            125
        }
        // Nothing here sets the cancel flag; kept for completeness.
        JobStatus::Cancelled => 130,
    };
    Ok(code)
}
