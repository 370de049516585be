//! The two hypervisor backends, as command lines: QEMU (KVM or TCG) and Cloud Hypervisor (KVM).
//!
//! Pure functions from a VM description to an argv, so both are tested without launching
//! anything; the runner executes the result.

use std::path::{Path, PathBuf};

use crate::image::GuestImage;

/// Which hypervisor runs the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hypervisor {
    /// `qemu-system-x86_64`.
    Qemu {
        /// The binary.
        binary: PathBuf,
        /// Hardware acceleration or the TCG emulator.
        accel: Accel,
    },
    /// `cloud-hypervisor` (needs KVM).
    CloudHypervisor {
        /// The binary.
        binary: PathBuf,
    },
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's portable emulator; slow but runs anywhere.
    Tcg,
}

impl Hypervisor {
    /// A short name for logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Hypervisor::Qemu { accel: Accel::Kvm, .. } => "qemu-kvm",
            Hypervisor::Qemu { accel: Accel::Tcg, .. } => "qemu-tcg",
            Hypervisor::CloudHypervisor { .. } => "cloud-hypervisor",
        }
    }
}

/// Everything a command line needs: the guest, its limits, and the sockets the runner made.
#[derive(Debug, Clone)]
pub struct LaunchPlan<'a> {
    /// A name that identifies this VM's processes (`-name` for QEMU).
    pub name: &'a str,
    /// Kernel and initramfs.
    pub image: &'a GuestImage,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// `(tag, vhost-user socket)` per VirtioFS share.
    pub shares: Vec<(&'a str, &'a Path)>,
    /// The agent channel: a Unix socket the runner listens on (QEMU's virtio-serial connects to
    /// it) or the vsock socket Cloud Hypervisor creates.
    pub agent_socket: &'a Path,
    /// User-mode networking for the guest.
    pub network: bool,
}

/// The guest kernel's command line. `quiet` keeps the serial log short; `panic=-1` turns an
/// agent crash into a reboot, which `-no-reboot` / Cloud Hypervisor turn into an exit.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 rdinit=/init random.trust_cpu=on i8042.noaux i8042.nokbd \
     i8042.nomux i8042.dumbkbd tsc=reliable no_timer_check";

/// The command line that boots `plan` under `hypervisor`, program first.
pub fn command_line(hypervisor: &Hypervisor, plan: &LaunchPlan<'_>) -> Result<Vec<String>, String> {
    match hypervisor {
        Hypervisor::Qemu { binary, accel } => Ok(qemu(binary, *accel, plan)),
        Hypervisor::CloudHypervisor { binary } => cloud_hypervisor(binary, plan),
    }
}

fn qemu(binary: &Path, accel: Accel, plan: &LaunchPlan<'_>) -> Vec<String> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg", "max"),
    };
    let mem = plan.memory_mib;
    let mut argv: Vec<String> = vec![
        binary.display().to_string(),
        "-name".into(),
        plan.name.into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-machine".into(),
        format!("q35,accel={accel},memory-backend=mem"),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        plan.vcpus.to_string(),
        "-m".into(),
        format!("{mem}M"),
        // vhost-user backends map guest memory, so it must be shareable.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-kernel".into(),
        plan.image.kernel.display().to_string(),
        "-initrd".into(),
        plan.image.initramfs.display().to_string(),
        "-append".into(),
        KERNEL_CMDLINE.into(),
        "-serial".into(),
        "stdio".into(),
        "-device".into(),
        "virtio-serial-pci,id=vser0".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={}", plan.agent_socket.display()),
        "-device".into(),
        format!("virtserialport,bus=vser0.0,chardev=agent,name={}", aspen_vm_agent::SERIAL_PORT_NAME),
    ];
    for (i, (tag, socket)) in plan.shares.iter().enumerate() {
        argv.extend([
            "-chardev".into(),
            format!("socket,id=fs{i},path={}", socket.display()),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=fs{i},tag={tag},queue-size=1024"),
        ]);
    }
    if plan.network {
        argv.extend(["-nic".into(), "user,model=virtio-net-pci".into()]);
    } else {
        argv.extend(["-nic".into(), "none".into()]);
    }
    argv
}

fn cloud_hypervisor(binary: &Path, plan: &LaunchPlan<'_>) -> Result<Vec<String>, String> {
    if plan.network {
        return Err("networking under Cloud Hypervisor needs a tap device, which the runner does not set \
             up; run jobs that need a network under QEMU"
            .into());
    }
    let mut argv: Vec<String> = vec![
        binary.display().to_string(),
        "--kernel".into(),
        plan.image.kernel.display().to_string(),
        "--initramfs".into(),
        plan.image.initramfs.display().to_string(),
        "--cmdline".into(),
        KERNEL_CMDLINE.into(),
        "--cpus".into(),
        format!("boot={}", plan.vcpus),
        "--memory".into(),
        format!("size={}M,shared=on", plan.memory_mib),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
        // Hybrid vsock: Cloud Hypervisor listens on this Unix socket; the runner connects and
        // asks for the agent's port.
        "--vsock".into(),
        format!("cid=3,socket={}", plan.agent_socket.display()),
    ];
    for (tag, socket) in &plan.shares {
        argv.extend(["--fs".into(), format!("tag={tag},socket={},num_queues=1,queue_size=1024", socket.display())]);
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan<'a>(image: &'a GuestImage, network: bool) -> LaunchPlan<'a> {
        LaunchPlan {
            name: "aspen-vm.1.0",
            image,
            vcpus: 2,
            memory_mib: 512,
            shares: vec![("work", Path::new("/run/x/fs0.sock"))],
            agent_socket: Path::new("/run/x/agent.sock"),
            network,
        }
    }

    fn image() -> GuestImage {
        GuestImage::in_dir(Path::new("/img"))
    }

    fn has_pair(argv: &[String], flag: &str, value: &str) -> bool {
        argv.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn qemu_tcg_shares_memory_and_wires_agent_and_shares() {
        let image = image();
        let hv = Hypervisor::Qemu { binary: "qemu-system-x86_64".into(), accel: Accel::Tcg };
        let argv = command_line(&hv, &plan(&image, false)).unwrap();
        assert_eq!(argv[0], "qemu-system-x86_64");
        assert!(has_pair(&argv, "-machine", "q35,accel=tcg,memory-backend=mem"));
        assert!(has_pair(&argv, "-object", "memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(has_pair(&argv, "-m", "512M"));
        assert!(has_pair(&argv, "-smp", "2"));
        assert!(has_pair(&argv, "-kernel", "/img/vmlinuz"));
        assert!(has_pair(&argv, "-initrd", "/img/initramfs.cpio"));
        assert!(has_pair(&argv, "-chardev", "socket,id=fs0,path=/run/x/fs0.sock"));
        assert!(has_pair(&argv, "-device", "vhost-user-fs-pci,chardev=fs0,tag=work,queue-size=1024"));
        assert!(has_pair(&argv, "-chardev", "socket,id=agent,path=/run/x/agent.sock"));
        assert!(has_pair(&argv, "-nic", "none"), "no network unless asked");
        assert!(argv.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn qemu_network_only_when_asked_and_kvm_uses_host_cpu() {
        let image = image();
        let hv = Hypervisor::Qemu { binary: "qemu".into(), accel: Accel::Kvm };
        let argv = command_line(&hv, &plan(&image, true)).unwrap();
        assert!(has_pair(&argv, "-nic", "user,model=virtio-net-pci"));
        assert!(has_pair(&argv, "-cpu", "host"));
        assert!(has_pair(&argv, "-machine", "q35,accel=kvm,memory-backend=mem"));
    }

    #[test]
    fn cloud_hypervisor_command_line() {
        let image = image();
        let hv = Hypervisor::CloudHypervisor { binary: "/usr/bin/cloud-hypervisor".into() };
        let argv = command_line(&hv, &plan(&image, false)).unwrap();
        assert_eq!(argv[0], "/usr/bin/cloud-hypervisor");
        assert!(has_pair(&argv, "--kernel", "/img/vmlinuz"));
        assert!(has_pair(&argv, "--initramfs", "/img/initramfs.cpio"));
        assert!(has_pair(&argv, "--cmdline", KERNEL_CMDLINE));
        assert!(has_pair(&argv, "--cpus", "boot=2"));
        assert!(has_pair(&argv, "--memory", "size=512M,shared=on"));
        assert!(has_pair(&argv, "--serial", "tty"));
        assert!(has_pair(&argv, "--console", "off"));
        assert!(has_pair(&argv, "--vsock", "cid=3,socket=/run/x/agent.sock"));
        assert!(has_pair(&argv, "--fs", "tag=work,socket=/run/x/fs0.sock,num_queues=1,queue_size=1024"));
        assert!(!argv.iter().any(|a| a == "--net"), "no network unless asked");
        let err = command_line(&hv, &plan(&image, true)).unwrap_err();
        assert!(err.contains("tap device"), "{err}");
    }
}
