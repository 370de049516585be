//! What this host can run: which hypervisor backends work and why the others do not, and the
//! choice of backend for `auto`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use crate::hypervisor::{Accel, Hypervisor};
use crate::image::GuestImage;

/// The QEMU binary looked up in `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Cloud Hypervisor binary looked up in `PATH`.
pub const CLOUD_HYPERVISOR_BINARY: &str = "cloud-hypervisor";

/// One line of the doctor's report.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it works.
    pub ok: bool,
    /// What was found, or why it does not work.
    pub detail: String,
    /// True for the rows that are hypervisor backends.
    pub is_backend: bool,
}

/// Which backend to run VMs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypervisorChoice {
    /// Cloud Hypervisor where KVM runs guests and the binary exists, else QEMU with KVM, else
    /// QEMU with TCG.
    Auto,
    /// QEMU, with KVM if it runs guests, else TCG.
    Qemu,
    /// QEMU with TCG, even where KVM works.
    QemuTcg,
    /// Cloud Hypervisor.
    CloudHypervisor,
}

impl FromStr for HypervisorChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(HypervisorChoice::Auto),
            "qemu" => Ok(HypervisorChoice::Qemu),
            "qemu-tcg" => Ok(HypervisorChoice::QemuTcg),
            "cloud-hypervisor" => Ok(HypervisorChoice::CloudHypervisor),
            other => Err(format!("unknown hypervisor {other:?}: expected auto, qemu, qemu-tcg or cloud-hypervisor")),
        }
    }
}

/// The default guest image directory: `$XDG_CACHE_HOME/aspen/vm-image` or
/// `~/.cache/aspen/vm-image`.
pub fn default_image_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    cache.join("aspen").join("vm-image")
}

/// The first `name` on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn qemu_version(binary: &Path) -> Result<String, String> {
    let out = Command::new(binary).arg("--version").output().map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_string).ok_or_else(|| format!("{} --version printed nothing", binary.display()))
}

/// Checks the backends and what they need; hypervisor rows have `is_backend`.
pub fn doctor(image_dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let kvm = crate::kvm::probe();
    checks.push(Check { name: "kvm", ok: kvm.is_ok(), detail: kvm.clone().unwrap_or_else(|e| e), is_backend: false });
    let memfd = memfd_works();
    checks.push(Check {
        name: "shared memory",
        ok: memfd.is_ok(),
        detail: memfd
            .clone()
            .map(|()| "memfd_create works (vhost-user needs shareable guest memory)".into())
            .unwrap_or_else(|e| e),
        is_backend: false,
    });
    let qemu = find_in_path(QEMU_BINARY)
        .ok_or_else(|| format!("{QEMU_BINARY} is not on PATH (Debian: apt-get install qemu-system-x86)"))
        .and_then(|b| qemu_version(&b).map(|v| (b, v)));
    let ch = find_in_path(CLOUD_HYPERVISOR_BINARY).ok_or_else(|| format!("{CLOUD_HYPERVISOR_BINARY} is not on PATH"));
    let need_memfd = |detail: String| match &memfd {
        Ok(()) => Ok(detail),
        Err(e) => Err(e.clone()),
    };
    let rows: [(&'static str, Result<String, String>); 3] = [
        (
            "cloud-hypervisor",
            ch.and_then(|b| {
                kvm.clone()
                    .map(|_| format!("{} with KVM", b.display()))
                    .map_err(|e| format!("found {}, but KVM does not run guests: {e}", b.display()))
            })
            .and_then(need_memfd),
        ),
        (
            "qemu-kvm",
            qemu.clone()
                .and_then(|(_, v)| kvm.clone().map(|_| v.clone()).map_err(|e| format!("KVM does not run guests: {e}")))
                .and_then(need_memfd),
        ),
        ("qemu-tcg", qemu.map(|(_, v)| format!("{v} (emulated: slow but works anywhere)")).and_then(need_memfd)),
    ];
    for (name, row) in rows {
        checks.push(Check { name, ok: row.is_ok(), detail: row.unwrap_or_else(|e| e), is_backend: true });
    }
    let image = GuestImage::in_dir(image_dir);
    checks.push(Check {
        name: "guest image",
        ok: image.exists(),
        detail: if image.exists() {
            format!("{}", image_dir.display())
        } else {
            format!("none at {} (build it with `aspen vm image build`)", image_dir.display())
        },
        is_backend: false,
    });
    checks
}

fn memfd_works() -> Result<(), String> {
    // SAFETY: creates and immediately closes a memfd.
    let fd = unsafe { libc::memfd_create(c"aspen-vm-doctor".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: closes the fd just created.
    unsafe { libc::close(fd) };
    Ok(())
}

/// The backend for `choice` on this host, or why there is none.
pub fn pick_hypervisor(choice: HypervisorChoice) -> Result<Hypervisor, String> {
    let qemu = || {
        find_in_path(QEMU_BINARY)
            .ok_or_else(|| format!("{QEMU_BINARY} is not on PATH (Debian: apt-get install qemu-system-x86)"))
    };
    match choice {
        HypervisorChoice::QemuTcg => Ok(Hypervisor::Qemu { binary: qemu()?, accel: Accel::Tcg }),
        HypervisorChoice::Qemu => {
            let binary = qemu()?;
            let accel = if crate::kvm::probe().is_ok() { Accel::Kvm } else { Accel::Tcg };
            Ok(Hypervisor::Qemu { binary, accel })
        }
        HypervisorChoice::CloudHypervisor => {
            let binary = find_in_path(CLOUD_HYPERVISOR_BINARY)
                .ok_or_else(|| format!("{CLOUD_HYPERVISOR_BINARY} is not on PATH"))?;
            crate::kvm::probe().map_err(|e| format!("Cloud Hypervisor needs KVM: {e}"))?;
            Ok(Hypervisor::CloudHypervisor { binary })
        }
        HypervisorChoice::Auto => {
            let kvm = crate::kvm::probe().is_ok();
            if kvm && let Some(binary) = find_in_path(CLOUD_HYPERVISOR_BINARY) {
                return Ok(Hypervisor::CloudHypervisor { binary });
            }
            Ok(Hypervisor::Qemu { binary: qemu()?, accel: if kvm { Accel::Kvm } else { Accel::Tcg } })
        }
    }
}
