//! `aspen bench vm`: microVM boot and teardown times, and VirtioFS figures measured inside the
//! guest with Aspen's backend beside the `virtiofsd` reference serving the same host directory.
//!
//! Boot: `--runs` VMs each run `true` with one share (Aspen's backend); the runner's own phase
//! timings give boot to job start (hypervisor launch to the job's process starting) and job end
//! to teardown (exit report to hypervisor and backends gone), as p50, min and max, with the
//! boot target for QEMU TCG.
//!
//! VirtioFS: a host directory holds a `--read-mib` MiB file of random bytes and a tree of
//! `--files` 64-byte files in 20 directories. Each measurement is a fresh VM (cold guest cache;
//! the host's page cache holds the files for both backends) that times, with the guest kernel's
//! monotonic clock: `find` over the tree (lookup and getattr of every entry), `cat` of every
//! small file (open, read, release), and `dd` of the big file in 1 MiB reads. Three VMs per
//! backend, alternating, median of each figure, and the ratio aspen/virtiofsd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_vm::doctor::{HypervisorChoice, default_image_dir, find_in_path, pick_hypervisor};
use aspen_vm::hypervisor::{Accel, Hypervisor};
use aspen_vm::image::GuestImage;
use aspen_vm::runner::{JobSpec, JobStatus, Outcome, Share, ShareBackend, ShareSource, VmEvent, VmSpec, run_job};
use rand::RngCore as _;

use crate::cmd::cluster::spinner;

/// The boot target: p50 boot to job start on QEMU TCG.
const BOOT_TARGET: Duration = Duration::from_millis(2500);
/// VMs per backend for the VirtioFS figures.
const FS_SAMPLES: usize = 3;
/// Directories the small files are spread over.
const TREE_DIRS: usize = 20;
/// Bytes in each small file.
const SMALL_FILE_BYTES: usize = 64;
/// The most VMs `--runs` may ask for.
const MAX_RUNS: usize = 1000;
/// The largest `--read-mib`.
const MAX_READ_MIB: u64 = 16 << 10;
/// The most small files.
const MAX_FILES: usize = 200_000;
/// Wall-clock limit of each VM.
const VM_TIME_LIMIT: Duration = Duration::from_secs(600);
/// The share's tag.
const SHARE_TAG: &str = "work";
/// Where the guest mounts the share.
const GUEST_DIR: &str = "/work";
/// virtiofsd's arguments: the runner fills in `{socket}` and `{dir}`. The same cache policy as
/// Aspen's backend (`auto`), no sandbox (the bench runs as root; Aspen's backend has none
/// either), its default single-threaded request handling and seccomp filter.
const VIRTIOFSD_ARGS: &[&str] = &[
    "--socket-path",
    "{socket}",
    "--shared-dir",
    "{dir}",
    "--cache",
    "auto",
    "--sandbox",
    "none",
    "--log-level",
    "error",
];

#[derive(Debug, clap::Args)]
pub struct BenchVmArgs {
    /// The guest image directory [default: ~/.cache/aspen/vm-image].
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The backend: one of auto, qemu, qemu-tcg, cloud-hypervisor (as for `aspen vm run`).
    #[arg(long, default_value = "auto")]
    pub hypervisor: HypervisorChoice,
    /// VMs booted for the boot and teardown times.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Size of the file read sequentially in the guest, in MiB.
    #[arg(long, default_value_t = 256)]
    pub read_mib: u64,
    /// Small files walked and read in the guest.
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// The reference vhost-user-fs daemon [default: `virtiofsd` on PATH, else
    /// ~/.cache/aspen/tools/bin/virtiofsd]. Without one, its column is skipped.
    #[arg(long)]
    pub virtiofsd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u32,
}

/// What one VM measured in the guest.
#[derive(Debug, Clone, Copy)]
struct FsSample {
    read_mb_s: f64,
    walk_per_s: f64,
    small_reads_per_s: f64,
}

impl FsSample {
    fn figures(&self) -> [f64; 3] {
        [self.read_mb_s, self.walk_per_s, self.small_reads_per_s]
    }
}

/// The reference daemon, or why there is none.
enum Reference {
    Found { program: PathBuf, version: String },
    Skipped(String),
}

pub fn run(args: &BenchVmArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let image_dir = args.image.clone().unwrap_or_else(default_image_dir);
    let image = GuestImage::in_dir(&image_dir);
    if !image.exists() {
        bail!(
            "no guest image in {} (needs vmlinuz and initramfs.cpio): build one with `aspen vm image build`, \
             or pass --image",
            image_dir.display()
        );
    }
    let hypervisor = pick_hypervisor(args.hypervisor).map_err(anyhow::Error::msg)?;
    let reference = find_reference(args.virtiofsd.as_deref())?;
    if let Reference::Skipped(why) = &reference {
        eprintln!("aspen bench vm: the virtiofsd column will be skipped: {why}");
    }

    let scratch = tempfile::Builder::new().prefix("aspen-bench-vm-").tempdir().context("a scratch directory")?;
    let host_dir = scratch.path().canonicalize().context("the scratch directory")?;
    let progress = spinner(&format!("writing {} MiB of random bytes and {} small files", args.read_mib, args.files));
    write_data(&host_dir, args.read_mib, args.files)?;

    let spec = |backend: ShareBackend| VmSpec {
        hypervisor: hypervisor.clone(),
        image: image.clone(),
        vcpus: 1,
        memory_mib: args.memory_mib,
        shares: vec![Share {
            tag: SHARE_TAG.into(),
            source: ShareSource::Dir(host_dir.clone()),
            guest_path: GUEST_DIR.into(),
            read_only: false,
            backend,
        }],
        network: false,
        timeout: VM_TIME_LIMIT,
        serial_log: None,
    };
    let aspen = spec(ShareBackend::Aspen);

    let mut boots = Vec::with_capacity(args.runs);
    let mut teardowns = Vec::with_capacity(args.runs);
    let mut totals = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        progress.set_message(format!("boot {}/{}: `true` with one share", i + 1, args.runs));
        let (outcome, _) = run_guest(&aspen, vec!["true".into()]).context("a VM running `true`")?;
        boots.push(outcome.timings.boot_to_job_start.context("the runner reported no boot time")?);
        teardowns.push(outcome.timings.job_end_to_teardown.context("the runner reported no teardown time")?);
        totals.push(outcome.timings.total);
    }

    let script = guest_script();
    let reference_spec = match &reference {
        Reference::Found { program, .. } => Some(spec(ShareBackend::External {
            program: program.clone(),
            args: VIRTIOFSD_ARGS.iter().map(|a| a.to_string()).collect(),
        })),
        Reference::Skipped(_) => None,
    };
    let mut aspen_fs = Vec::with_capacity(FS_SAMPLES);
    let mut reference_fs = Vec::with_capacity(FS_SAMPLES);
    for round in 0..FS_SAMPLES {
        // Alternate which backend goes first, so drift in the host's load falls on both.
        let mut order: Vec<(&str, &VmSpec, &mut Vec<FsSample>)> = vec![("aspen", &aspen, &mut aspen_fs)];
        if let Some(reference_spec) = &reference_spec {
            order.push(("virtiofsd", reference_spec, &mut reference_fs));
        }
        if round % 2 == 1 {
            order.reverse();
        }
        for (name, spec, samples) in order {
            progress.set_message(format!("VirtioFS {}/{FS_SAMPLES}: {name}", round + 1));
            let (_, stdout) = run_guest(spec, vec!["sh".into(), "-c".into(), script.clone()])
                .with_context(|| format!("the VirtioFS workload over {name}"))?;
            samples.push(
                parse_fs_sample(&stdout, args)
                    .with_context(|| format!("the VirtioFS workload over {name} printed:\n{stdout}"))?,
            );
        }
    }
    progress.finish_and_clear();
    drop(scratch);

    let version = match &hypervisor {
        Hypervisor::Qemu { binary, .. } => first_line_of(binary, "--version"),
        Hypervisor::CloudHypervisor { binary } => first_line_of(binary, "--version"),
    };
    println!(
        "{} ({}), 1 vCPU, {} MiB, image {}",
        hypervisor.name(),
        version.unwrap_or_else(|| "version unknown".into()),
        args.memory_mib,
        image_dir.display()
    );
    print_boot(&hypervisor, &boots, &teardowns, &totals);
    println!();
    print_fs(args, &reference, &aspen_fs, &reference_fs);
    Ok(())
}

fn check_args(args: &BenchVmArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.runs > MAX_RUNS {
        bail!("--runs must be between 1 and {MAX_RUNS}");
    }
    if args.read_mib == 0 || args.read_mib > MAX_READ_MIB {
        bail!("--read-mib must be between 1 and {MAX_READ_MIB}");
    }
    if args.files == 0 || args.files > MAX_FILES {
        bail!("--files must be between 1 and {MAX_FILES}");
    }
    Ok(())
}

/// The first line a program prints for `arg`, if it runs.
fn first_line_of(program: &Path, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim().to_string())
}

/// The `virtiofsd` to compare against: the one asked for (which must work), else the one on
/// PATH, else the one `cargo install --root ~/.cache/aspen/tools` put in the cache.
fn find_reference(asked: Option<&Path>) -> anyhow::Result<Reference> {
    let cached = default_image_dir().parent().map(|cache| cache.join("tools/bin/virtiofsd"));
    let program = match asked {
        Some(path) => {
            if !path.is_file() {
                bail!("--virtiofsd {}: no such file", path.display());
            }
            path.to_path_buf()
        }
        None => match find_in_path("virtiofsd").or(cached.clone().filter(|p| p.is_file())) {
            Some(path) => path,
            None => {
                let cached = cached.map(|p| p.display().to_string()).unwrap_or_else(|| "the cache".into());
                return Ok(Reference::Skipped(format!(
                    "no virtiofsd on PATH or at {cached}; build it with `apt-get install libseccomp-dev \
                     libcap-ng-dev && cargo install virtiofsd --locked --root ~/.cache/aspen/tools`, or pass \
                     --virtiofsd"
                )));
            }
        },
    };
    match first_line_of(&program, "--version") {
        Some(version) => Ok(Reference::Found { program, version }),
        None if asked.is_some() => bail!("--virtiofsd {}: `--version` did not run", program.display()),
        None => Ok(Reference::Skipped(format!("{} --version did not run", program.display()))),
    }
}

/// The big file (`big`, random bytes) and the tree of small files (`tree/dNN/fNNNNNN`).
fn write_data(dir: &Path, read_mib: u64, files: usize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let big = dir.join("big");
    let mut f = std::fs::File::create(&big).with_context(|| format!("creating {}", big.display()))?;
    let mut block = vec![0u8; 1 << 20];
    let mut rng = rand::rng();
    for _ in 0..read_mib {
        rng.fill_bytes(&mut block);
        f.write_all(&block).with_context(|| format!("writing {}", big.display()))?;
    }
    f.sync_all().with_context(|| format!("fsync of {}", big.display()))?;
    let tree = dir.join("tree");
    for d in 0..TREE_DIRS {
        std::fs::create_dir_all(tree.join(format!("d{d:02}"))).context("creating the small-file tree")?;
    }
    let content = [b'x'; SMALL_FILE_BYTES];
    for i in 0..files {
        let path = tree.join(format!("d{:02}/f{i:06}", i % TREE_DIRS));
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The guest's workload. Times come from the kernel's monotonic clock in nanoseconds, the
/// "now at" line of `/proc/timer_list`, read with shell builtins (no fork; about 0.3 ms under
/// TCG): this busybox's `date` has no `%N` and its `dd` prints no rate. `cal` lines time two
/// clock reads back to back; the host subtracts the smallest from each figure. Each timed
/// command still includes its own fork and exec (a few ms under TCG), on both backends alike.
fn guest_script() -> String {
    format!(
        "set -e
now() {{ {{ read -r t; read -r t; read -r t; }} < /proc/timer_list; t=${{t#now at }}; t=${{t% nsecs}}; }}
for i in 1 2 3; do now; a=$t; now; echo \"cal $a $t 0\"; done
now; a=$t; n=$(find {GUEST_DIR}/tree | wc -l); now; echo \"walk $a $t $n\"
now; a=$t; n=$(cat {GUEST_DIR}/tree/*/* | wc -c); now; echo \"cat $a $t $n\"
now; a=$t; dd if={GUEST_DIR}/big of=/dev/null bs=1M 2>/tmp/dd; now; b=$t
echo \"read $a $b $(head -1 /tmp/dd | cut -d+ -f1)\"
"
    )
}

/// The figures in the guest's report (`LABEL START_NS END_NS COUNT` lines), after checking
/// each count.
fn parse_fs_sample(stdout: &str, args: &BenchVmArgs) -> anyhow::Result<FsSample> {
    let mut calibration = u64::MAX;
    let mut lines = std::collections::HashMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [label, a, b, n] = fields.as_slice() else {
            continue;
        };
        let (a, b, n): (u64, u64, u64) = (a.parse()?, b.parse()?, n.parse()?);
        let ns = b.checked_sub(a).context("the guest clock went backwards")?;
        if *label == "cal" {
            calibration = calibration.min(ns);
        } else {
            lines.insert(label.to_string(), (ns, n));
        }
    }
    let calibration = if calibration == u64::MAX { 0 } else { calibration };
    let mut measured = |label: &str, expected: u64| -> anyhow::Result<f64> {
        let (ns, n) = lines.remove(label).with_context(|| format!("no {label:?} line"))?;
        if n != expected {
            bail!("{label}: the guest counted {n}, expected {expected}");
        }
        let ns = ns.saturating_sub(calibration).max(1);
        Ok(ns as f64 / 1e9)
    };
    let entries = (args.files + TREE_DIRS + 1) as u64;
    let walk_s = measured("walk", entries)?;
    let cat_s = measured("cat", (args.files * SMALL_FILE_BYTES) as u64)?;
    let read_s = measured("read", args.read_mib)?;
    Ok(FsSample {
        read_mb_s: (args.read_mib << 20) as f64 / read_s / 1e6,
        walk_per_s: entries as f64 / walk_s,
        small_reads_per_s: args.files as f64 / cat_s,
    })
}

/// Runs one job to completion, returning the outcome and its stdout; anything but exit 0 is an
/// error quoting the job's output.
fn run_guest(spec: &VmSpec, argv: Vec<String>) -> anyhow::Result<(Outcome, String)> {
    let job = JobSpec { argv, env: Vec::new(), cwd: "/".into(), outputs: Vec::new() };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut on_event = |event: VmEvent<'_>| match event {
        VmEvent::Stdout(bytes) => stdout.extend_from_slice(bytes),
        VmEvent::Stderr(bytes) => stderr.extend_from_slice(bytes),
        VmEvent::Booted { .. } | VmEvent::Started => {}
    };
    let outcome = run_job(spec, &job, &mut on_event)?;
    let (stdout, stderr) = (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr));
    match &outcome.status {
        JobStatus::Exited(aspen_vm_agent::ExitStatus::Code(0)) => Ok((outcome, stdout)),
        JobStatus::Exited(status) => bail!("the job ended with {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        JobStatus::TimedOut => bail!("the job did not finish within {} s", VM_TIME_LIMIT.as_secs()),
        JobStatus::NotStarted(message) => bail!("the job did not start: {message}"),
        JobStatus::Cancelled => bail!("the job was cancelled"),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_boot(hypervisor: &Hypervisor, boots: &[Duration], teardowns: &[Duration], totals: &[Duration]) {
    let ms = |d: &[Duration]| d.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>();
    let (boots, teardowns, totals) = (ms(boots), ms(teardowns), ms(totals));
    println!("{} VMs running `true` with one share over Aspen's backend (ms)", boots.len());
    println!("{:<22} {:>8} {:>8} {:>8}", "", "p50", "min", "max");
    for (name, v) in [("boot_to_job_start", &boots), ("job_end_to_teardown", &teardowns), ("total", &totals)] {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        println!("{name:<22} {:>8.0} {min:>8.0} {max:>8.0}", median(v));
    }
    let p50 = median(&boots) / 1e3;
    let target = BOOT_TARGET.as_secs_f64();
    let verdict = if p50 <= target { "met" } else { "NOT met" };
    let tcg = matches!(hypervisor, Hypervisor::Qemu { accel: Accel::Tcg, .. });
    if tcg {
        println!("target: boot to job start at most {target:.1} s on QEMU TCG: {verdict} (p50 {p50:.2} s)");
    } else {
        println!(
            "target: boot to job start at most {target:.1} s on QEMU TCG; this run used {} (p50 {p50:.2} s, {verdict} \
             if it applied)",
            hypervisor.name()
        );
    }
}

fn print_fs(args: &BenchVmArgs, reference: &Reference, aspen: &[FsSample], virtiofsd: &[FsSample]) {
    match reference {
        Reference::Found { program, version } => {
            println!("reference: {version} ({}) {}", program.display(), VIRTIOFSD_ARGS.join(" "))
        }
        Reference::Skipped(why) => println!("reference: skipped, the virtiofsd column is empty: {why}"),
    }
    println!(
        "VirtioFS measured in the guest, median of {FS_SAMPLES} fresh VMs per backend (min-max in brackets); \
         host files in the host page cache"
    );
    println!("{:<28} {:>22} {:>22} {:>16}", "", "aspen", "virtiofsd", "aspen/virtiofsd");
    let names = [
        format!("read_MB_s ({} MiB, dd 1M)", args.read_mib),
        format!("walk_entries_per_s ({})", args.files + TREE_DIRS + 1),
        format!("small_reads_per_s ({}x{}B)", args.files, SMALL_FILE_BYTES),
    ];
    let column = |samples: &[FsSample], i: usize| -> Option<(f64, String)> {
        if samples.is_empty() {
            return None;
        }
        let v: Vec<f64> = samples.iter().map(|s| s.figures()[i]).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        let m = median(&v);
        Some((m, format!("{m:.1} [{min:.0}-{max:.0}]")))
    };
    for (i, name) in names.iter().enumerate() {
        let a = column(aspen, i);
        let r = column(virtiofsd, i);
        let ratio = match (&a, &r) {
            (Some((a, _)), Some((r, _))) => format!("{:.2}x", a / r),
            _ => "-".into(),
        };
        let cell = |c: &Option<(f64, String)>| c.as_ref().map_or("-".to_string(), |(_, s)| s.clone());
        println!("{name:<28} {:>22} {:>22} {ratio:>16}", cell(&a), cell(&r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchVmArgs {
        BenchVmArgs {
            image: None,
            hypervisor: HypervisorChoice::QemuTcg,
            runs: 1,
            read_mib: 4,
            files: 10,
            virtiofsd: None,
            memory_mib: 512,
        }
    }

    #[test]
    fn parses_the_guest_report_and_subtracts_the_clock_cost() {
        let out = "cal 100 1100 0\ncal 2000 2500 0\nwalk 0 500000500 31\ncat 0 10000500 640\nread 0 1000000500 4\n";
        let s = parse_fs_sample(out, &args()).unwrap();
        assert!((s.walk_per_s - 62.0).abs() < 1e-6);
        assert!((s.small_reads_per_s - 1000.0).abs() < 1e-6);
        assert!((s.read_mb_s - 4.0 * 1048576.0 / 1e6).abs() < 1e-6);
    }

    #[test]
    fn a_short_read_is_an_error() {
        let out = "walk 0 5 31\ncat 0 10 640\nread 0 10 3\n";
        let e = parse_fs_sample(out, &args()).unwrap_err().to_string();
        assert!(e.contains("read: the guest counted 3, expected 4"), "{e}");
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
