//! Whether KVM really runs a guest on this host: opening `/dev/kvm` is not enough (a nested or
//! restricted host may create VMs whose vCPUs never run), so the probe runs five bytes of
//! real-mode code (`mov al, 0x42; out 0x10, al; hlt`) and checks the exits it causes.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;
/// `struct kvm_sregs` is 312 bytes; `struct kvm_regs` 18 u64s.
const SREGS_BYTES: usize = 312;
/// The probe's guest code, loaded at guest address 0x1000.
const CODE: [u8; 5] = [0xB0, 0x42, 0xE6, 0x10, 0xF4];
/// How long the probe guest may take before KVM is called unusable.
pub const PROBE_LIMIT: Duration = Duration::from_secs(3);

fn ioctl(fd: &impl AsRawFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: callers pass requests whose argument is either an integer or a pointer to a
    // buffer of the size the request encodes.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Runs the probe guest; `Ok` says what ran, `Err` why KVM cannot be used. Bounded by
/// [`PROBE_LIMIT`]: a vCPU that never returns leaves its probe thread behind, which is why the
/// probe belongs in short-lived commands (`aspen vm doctor`, backend selection).
pub fn probe() -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(run_probe());
        })
        .map_err(|e| format!("starting the KVM probe: {e}"))?;
    match rx.recv_timeout(PROBE_LIMIT) {
        Ok(result) => result,
        Err(_) => Err(format!("/dev/kvm created a VM but its vCPU did not run a test guest within {PROBE_LIMIT:?}")),
    }
}

fn run_probe() -> Result<String, String> {
    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm").map_err(|e| format!("/dev/kvm: {e}"))?;
    let version = ioctl(&kvm, KVM_GET_API_VERSION, 0).map_err(|e| format!("KVM_GET_API_VERSION: {e}"))?;
    if version != 12 {
        return Err(format!("KVM API version {version}, expected 12"));
    }
    let vm = owned(ioctl(&kvm, KVM_CREATE_VM, 0).map_err(|e| format!("KVM_CREATE_VM: {e}"))?);

    // One page of guest memory at 0x1000 holding the code.
    // SAFETY: an anonymous private mapping of one page, unmapped when the probe ends.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    struct Unmap(*mut libc::c_void, usize);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made above.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }
    let _mem_guard = Unmap(mem, 4096);
    // SAFETY: the mapping is 4096 bytes and CODE is 5.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.cast::<u8>(), CODE.len()) };
    // struct kvm_userspace_memory_region { slot u32, flags u32, guest_phys_addr u64,
    // memory_size u64, userspace_addr u64 }
    let mut region = [0u64; 4];
    region[1] = 0x1000;
    region[2] = 4096;
    region[3] = mem as u64;
    ioctl(&vm, KVM_SET_USER_MEMORY_REGION, region.as_ptr() as libc::c_ulong)
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;

    let vcpu = owned(ioctl(&vm, KVM_CREATE_VCPU, 0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?);
    let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0).map_err(|e| format!("KVM_GET_VCPU_MMAP_SIZE: {e}"))?;
    let run_size = usize::try_from(run_size).map_err(|_| "bad vCPU mmap size".to_string())?;
    // SAFETY: maps the vCPU's shared kvm_run structure at the size KVM reports.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    };
    if run == libc::MAP_FAILED {
        return Err(format!("mmap of the vCPU: {}", io::Error::last_os_error()));
    }
    let _run_guard = Unmap(run, run_size);

    // Real mode with CS at 0: code runs from physical 0x1000.
    let mut sregs = [0u8; SREGS_BYTES];
    ioctl(&vcpu, KVM_GET_SREGS, sregs.as_mut_ptr() as libc::c_ulong).map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs[0..8].copy_from_slice(&0u64.to_le_bytes()); // cs.base
    sregs[12..14].copy_from_slice(&0u16.to_le_bytes()); // cs.selector
    ioctl(&vcpu, KVM_SET_SREGS, sregs.as_ptr() as libc::c_ulong).map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = [0u64; 18];
    regs[16] = 0x1000; // rip
    regs[17] = 0x2; // rflags (bit 1 is always set)
    ioctl(&vcpu, KVM_SET_REGS, regs.as_ptr() as libc::c_ulong).map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let exit_reason = || {
        // SAFETY: kvm_run starts with request_interrupt_window etc.; exit_reason is the u32 at
        // offset 8, inside the mapping.
        unsafe { std::ptr::read_volatile(run.cast::<u8>().add(8).cast::<u32>()) }
    };
    ioctl(&vcpu, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"))?;
    if exit_reason() != KVM_EXIT_IO {
        return Err(format!("the test guest exited with reason {} instead of port I/O", exit_reason()));
    }
    ioctl(&vcpu, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"))?;
    if exit_reason() != KVM_EXIT_HLT {
        return Err(format!("the test guest exited with reason {} instead of hlt", exit_reason()));
    }
    Ok("a test guest ran (KVM API 12)".into())
}
