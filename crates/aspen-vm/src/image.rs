//! The guest image builder: turns Debian's cloud kernel package, a static busybox and the
//! (static) guest agent into a `vmlinuz` plus an uncompressed newc `initramfs.cpio`.
//!
//! The initramfs runs the agent as `/init`, carries busybox with one symlink per applet, the
//! virtio kernel modules the guest needs (with their dependencies, in load order, listed in
//! `/etc/aspen/modules`) and a small `/etc/aspen/image` description.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::cpio::CpioWriter;

/// File name of the kernel inside an image directory.
const KERNEL_FILE: &str = "vmlinuz";
/// File name of the initramfs inside an image directory.
const INITRAMFS_FILE: &str = "initramfs.cpio";
/// Meta package whose `Depends:` names the current versioned cloud kernel package.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Package providing a statically linked busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Where Debian's busybox-static installs busybox.
const HOST_BUSYBOX: &str = "/bin/busybox";
/// Modules the guest must load, as `(name, required)`; their dependencies come along.
const ROOT_MODULES: &[(&str, bool)] = &[
    ("virtio_pci", true),
    ("virtio_console", true),
    ("virtiofs", true),
    ("vmw_vsock_virtio_transport", true),
    ("virtio_net", false),
];
/// Directories of the initramfs with their permission bits, parents first.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("etc", 0o755),
    ("etc/aspen", 0o755),
    ("lib", 0o755),
    ("lib/modules", 0o755),
    ("mnt", 0o755),
    ("work", 0o755),
];

/// What to build a guest image from and where to put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Directory that receives `vmlinuz` and `initramfs.cpio` (created if missing).
    pub out_dir: PathBuf,
    /// The statically linked guest agent, installed as `/init`.
    pub agent: PathBuf,
    /// Where the kernel and its modules come from.
    pub kernel: KernelSource,
    /// A static busybox to use instead of `/bin/busybox` (or a downloaded busybox-static).
    pub busybox: Option<PathBuf>,
}

/// Where the guest kernel and its modules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Debian's current cloud kernel, fetched with `apt-get download`.
    Apt,
    /// A Debian kernel package (`linux-image-*.deb`).
    Deb(PathBuf),
    /// A kernel image and its modules directory (`lib/modules/<version>`, whose name is the
    /// version), as a Nix build provides them.
    Files {
        /// The bootable kernel image (bzImage / vmlinuz).
        image: PathBuf,
        /// The modules directory.
        modules: PathBuf,
    },
}

/// The two files a microVM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The kernel image (`vmlinuz`).
    pub kernel: PathBuf,
    /// The uncompressed newc initramfs (`initramfs.cpio`).
    pub initramfs: PathBuf,
}

impl GuestImage {
    /// The image files `build` writes into `dir` (whether or not they exist yet).
    #[must_use]
    pub fn in_dir(dir: &Path) -> GuestImage {
        GuestImage { kernel: dir.join(KERNEL_FILE), initramfs: dir.join(INITRAMFS_FILE) }
    }

    /// Whether both the kernel and the initramfs are present.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.kernel.is_file() && self.initramfs.is_file()
    }
}

/// Why a guest image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The agent binary does not exist.
    #[error("guest agent binary {0} not found")]
    AgentMissing(PathBuf),
    /// The agent is not a static ELF executable (the guest has no dynamic loader).
    #[error("guest agent {0} is not a statically linked ELF executable (the guest has no dynamic loader)")]
    AgentNotStatic(PathBuf),
    /// No busybox was found or could be downloaded.
    #[error("busybox not found: {0}")]
    BusyboxMissing(String),
    /// The busybox binary is not statically linked.
    #[error("busybox {0} is not a statically linked ELF executable")]
    BusyboxNotStatic(PathBuf),
    /// An external command (apt-get, apt-cache, dpkg, xz, busybox) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// An external command could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line that was attempted.
        command: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// `apt-cache depends` did not name a versioned kernel package.
    #[error("`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image-* package:\n{0}")]
    NoKernelPackage(String),
    /// The kernel package contains no `boot/vmlinuz-*`.
    #[error("no boot/vmlinuz-* in kernel package {0}")]
    NoVmlinuz(PathBuf),
    /// A module the guest needs is not in the kernel package.
    #[error("required kernel module {module} not found under {dir}")]
    ModuleMissing {
        /// The module name.
        module: String,
        /// The modules directory that was searched.
        dir: PathBuf,
    },
    /// A kernel module file could not be understood.
    #[error("kernel module {path}: {reason}")]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Kernel module dependencies form a cycle.
    #[error("kernel module dependency cycle through {0}")]
    ModuleCycle(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Builds `vmlinuz` and `initramfs.cpio` in `spec.out_dir` and returns their paths.
///
/// Both files are written under temporary names and renamed into place at the end (the
/// initramfs last), so [`GuestImage::exists`] never sees a half-written image.
pub fn build(spec: &ImageSpec) -> Result<GuestImage, ImageError> {
    let agent = read_agent(&spec.agent)?;
    create_dir_all(&spec.out_dir)?;
    let work = WorkDir::create(&spec.out_dir)?;

    let (version, vmlinuz, modules_dir) = match &spec.kernel {
        KernelSource::Files { image, modules } => {
            if !image.is_file() {
                return Err(io_err(image, io::Error::new(io::ErrorKind::NotFound, "kernel image not found")));
            }
            let version =
                modules.file_name().and_then(OsStr::to_str).filter(|_| modules.is_dir()).ok_or_else(|| {
                    io_err(modules, io::Error::new(io::ErrorKind::NotFound, "not a lib/modules/<version> directory"))
                })?;
            (version.to_string(), image.clone(), modules.clone())
        }
        KernelSource::Deb(_) | KernelSource::Apt => {
            let deb = match &spec.kernel {
                KernelSource::Deb(deb) if !deb.is_file() => {
                    return Err(io_err(deb, io::Error::new(io::ErrorKind::NotFound, "kernel package not found")));
                }
                KernelSource::Deb(deb) => deb.clone(),
                _ => download_kernel(&work.0)?,
            };
            tracing::info!(deb = %deb.display(), "extracting kernel package");
            let kernel_root = work.0.join("kernel");
            dpkg_extract(&deb, &kernel_root)?;
            let (version, vmlinuz) = find_vmlinuz(&kernel_root, &deb)?;
            let modules_dir = modules_dir(&kernel_root, &version)?;
            (version, vmlinuz, modules_dir)
        }
    };
    tracing::info!(%version, "found kernel");
    let modules = collect_modules(&modules_dir)?;
    tracing::info!(
        count = modules.len(),
        order = %modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(","),
        "kernel modules in load order"
    );

    let busybox = find_busybox(spec.busybox.as_deref(), &work.0)?;
    let busybox_bytes = read(&busybox)?;
    if !is_static_elf(&busybox_bytes) {
        return Err(ImageError::BusyboxNotStatic(busybox));
    }
    let applets = busybox_applets(&busybox)?;
    tracing::info!(busybox = %busybox.display(), applets = applets.len(), "using busybox");

    let image = GuestImage::in_dir(&spec.out_dir);
    let kernel_tmp = TempFile(temp_name(&image.kernel));
    let initramfs_tmp = TempFile(temp_name(&image.initramfs));
    fs::copy(&vmlinuz, &kernel_tmp.0).map_err(|e| io_err(&vmlinuz, e))?;
    sync_file(&kernel_tmp.0)?;
    let contents = Contents {
        agent: &agent,
        busybox: &busybox_bytes,
        applets: &applets,
        modules: &modules,
        kernel_version: &version,
    };
    write_initramfs(&initramfs_tmp.0, &contents)?;

    // Remove the old initramfs first so a crash between the renames leaves no mismatched pair.
    match fs::remove_file(&image.initramfs) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&image.initramfs, e)),
    }
    kernel_tmp.persist(&image.kernel)?;
    initramfs_tmp.persist(&image.initramfs)?;
    tracing::info!(
        kernel = %image.kernel.display(),
        initramfs = %image.initramfs.display(),
        "guest image ready"
    );
    Ok(image)
}

/// Returns whether `bytes` is an ELF executable that needs no program interpreter (no
/// `PT_INTERP` program header), i.e. a static or static-pie binary.
#[must_use]
pub fn is_static_elf(bytes: &[u8]) -> bool {
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;
    let Some(elf) = Elf::parse(bytes) else {
        return false;
    };
    let (Some(e_type), Some(phoff), Some(phentsize), Some(phnum)) = (
        elf.u16(0x10),
        elf.word(if elf.is64 { 0x20 } else { 0x1c }),
        elf.u16(if elf.is64 { 0x36 } else { 0x2a }),
        elf.u16(if elf.is64 { 0x38 } else { 0x2c }),
    ) else {
        return false;
    };
    if !(e_type == ET_EXEC || e_type == ET_DYN) || phnum == 0 {
        return false;
    }
    (0..u64::from(phnum)).all(|i| {
        phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| elf.u32(off))
            .is_some_and(|p_type| p_type != PT_INTERP)
    })
}

/// A bounds-checked view of an ELF file's bytes (32 or 64 bit, either byte order).
struct Elf<'a> {
    bytes: &'a [u8],
    is64: bool,
    big_endian: bool,
}

impl<'a> Elf<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.get(..4)? != b"\x7fELF" {
            return None;
        }
        let is64 = match bytes.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let big_endian = match bytes.get(5)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        Some(Elf { bytes, is64, big_endian })
    }

    fn array<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let slice = self.bytes.get(off..off.checked_add(N)?)?;
        let mut out: [u8; N] = slice.try_into().ok()?;
        if !self.big_endian {
            out.reverse();
        }
        Some(out)
    }

    fn u16(&self, off: usize) -> Option<u16> {
        self.array(off).map(u16::from_be_bytes)
    }

    fn u32(&self, off: usize) -> Option<u32> {
        self.array(off).map(u32::from_be_bytes)
    }

    /// An address-sized field (4 or 8 bytes depending on the class).
    fn word(&self, off: usize) -> Option<u64> {
        if self.is64 { self.array(off).map(u64::from_be_bytes) } else { self.u32(off).map(u64::from) }
    }

    /// The contents of the section called `name`, if present.
    fn section(&self, name: &str) -> Option<&'a [u8]> {
        let shoff = self.word(if self.is64 { 0x28 } else { 0x20 })?;
        let shentsize = usize::from(self.u16(if self.is64 { 0x3a } else { 0x2e })?);
        let mut shnum = u64::from(self.u16(if self.is64 { 0x3c } else { 0x30 })?);
        let mut shstrndx = u64::from(self.u16(if self.is64 { 0x3e } else { 0x32 })?);
        if shoff == 0 {
            return None;
        }
        let header = |index: u64| -> Option<usize> {
            let off = shoff.checked_add(index.checked_mul(shentsize as u64)?)?;
            let off = usize::try_from(off).ok()?;
            self.bytes.get(off..off.checked_add(shentsize)?)?;
            Some(off)
        };
        // Extended numbering: the real counts live in section header 0.
        let (size_field, link_field) = if self.is64 { (0x20, 0x28) } else { (0x14, 0x18) };
        if shnum == 0 {
            shnum = self.word(header(0)? + size_field)?;
        }
        if shstrndx == 0xffff {
            shstrndx = u64::from(self.u32(header(0)? + link_field)?);
        }
        let contents = |index: u64| -> Option<&'a [u8]> {
            let h = header(index)?;
            let (offset, size) = if self.is64 {
                (self.word(h + 0x18)?, self.word(h + 0x20)?)
            } else {
                (self.word(h + 0x10)?, self.word(h + 0x14)?)
            };
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            self.bytes.get(start..end)
        };
        let names = contents(shstrndx)?;
        (0..shnum).find_map(|index| {
            let name_off = usize::try_from(self.u32(header(index)?)?).ok()?;
            let rest = names.get(name_off..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            if &rest[..end] == name.as_bytes() { contents(index) } else { None }
        })
    }
}

/// The module names listed in the `depends=` entry of a module's `.modinfo` section.
fn module_depends(bytes: &[u8]) -> Result<Vec<String>, String> {
    let elf = Elf::parse(bytes).ok_or("not an ELF file")?;
    let modinfo = elf.section(".modinfo").ok_or("no .modinfo section")?;
    let mut depends = Vec::new();
    for entry in modinfo.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            let list = std::str::from_utf8(list).map_err(|_| "depends= is not UTF-8")?;
            depends.extend(list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        }
    }
    Ok(depends)
}

/// Module names treat `-` and `_` as the same character.
fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

/// Orders the modules reachable from `roots` so every module comes after its dependencies.
///
/// `deps` maps normalized module names to their dependencies; names missing from it are built
/// into the kernel and are left out. Roots missing from it are skipped as well.
fn load_order(deps: &BTreeMap<String, Vec<String>>, roots: &[String]) -> Result<Vec<String>, ImageError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        marks: &mut HashMap<String, Mark>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        let name = normalize_module(name);
        let Some(children) = deps.get(&name) else {
            return Ok(());
        };
        match marks.get(&name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => return Err(ImageError::ModuleCycle(name)),
            None => {}
        }
        marks.insert(name.clone(), Mark::Visiting);
        for child in children {
            visit(child, deps, marks, order)?;
        }
        marks.insert(name.clone(), Mark::Done);
        order.push(name);
        Ok(())
    }
    let mut marks = HashMap::new();
    let mut order = Vec::new();
    for root in roots {
        visit(root, deps, &mut marks, &mut order)?;
    }
    Ok(order)
}

/// A kernel module going into the initramfs.
struct Module {
    /// Normalized name.
    name: String,
    /// File name in the guest's `/lib/modules` (the original name plus `.ko`).
    file_name: String,
    /// Uncompressed module contents.
    data: Vec<u8>,
}

/// Finds the root modules and their dependency closure in an extracted kernel package and
/// returns them in load order.
/// The modules the kernel has built in, by normalized name, from `modules.builtin` (paths such
/// as `kernel/drivers/virtio/virtio_pci.ko`); empty when the file is absent.
fn builtin_modules(dir: &Path) -> std::collections::HashSet<String> {
    fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .map(|file| normalize_module(file.trim_end_matches(".ko")))
        .collect()
}

/// The modules directory of `version` in an extracted kernel package.
fn modules_dir(kernel_root: &Path, version: &str) -> Result<PathBuf, ImageError> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| kernel_root.join(base).join(version))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| {
            let dir = kernel_root.join("lib/modules").join(version);
            io_err(&dir, io::Error::new(io::ErrorKind::NotFound, "no modules directory for the kernel"))
        })
}

fn collect_modules(dir: &Path) -> Result<Vec<Module>, ImageError> {
    let dir = dir.to_path_buf();
    let mut index = HashMap::new();
    index_modules(&dir, &mut index)?;

    let mut loaded: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    let mut deps = BTreeMap::new();
    let mut roots = Vec::new();
    let mut queue = Vec::new();
    let builtin = builtin_modules(&dir);
    for &(root, required) in ROOT_MODULES {
        let name = normalize_module(root);
        if index.contains_key(&name) {
            roots.push(name.clone());
            queue.push(name);
        } else if builtin.contains(&name) {
            tracing::info!(module = root, "built into the kernel");
        } else if required {
            return Err(ImageError::ModuleMissing { module: root.to_string(), dir });
        } else {
            tracing::warn!(module = root, "optional kernel module not in the package, skipping");
        }
    }
    while let Some(name) = queue.pop() {
        if deps.contains_key(&name) {
            continue;
        }
        let Some(path) = index.get(&name) else {
            tracing::debug!(module = %name, "dependency has no module file, assuming built in");
            continue;
        };
        let data = read_module(path)?;
        let depends = module_depends(&data).map_err(|reason| ImageError::BadModule { path: path.clone(), reason })?;
        let depends: Vec<String> = depends.iter().map(|d| normalize_module(d)).collect();
        queue.extend(depends.iter().cloned());
        loaded.insert(name.clone(), (module_file_name(path), data));
        deps.insert(name, depends);
    }

    let order = load_order(&deps, &roots)?;
    let mut modules = Vec::with_capacity(order.len());
    for name in order {
        if let Some((file_name, data)) = loaded.remove(&name) {
            modules.push(Module { name, file_name, data });
        }
    }
    Ok(modules)
}

/// Maps the normalized name of every module file under `dir` to its path.
fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<(), ImageError> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_err(dir, e))?;
    entries.sort();
    for path in entries {
        let file_type = fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?.file_type();
        if file_type.is_dir() {
            index_modules(&path, index)?;
        } else if file_type.is_file()
            && let Some(stem) = module_stem(&path)
        {
            index.entry(normalize_module(stem)).or_insert(path);
        }
    }
    Ok(())
}

/// The module name of a `.ko` or `.ko.xz` file, or `None` for other files.
fn module_stem(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".ko").or_else(|| name.strip_suffix(".ko.xz")).filter(|s| !s.is_empty())
}

fn module_file_name(path: &Path) -> String {
    format!("{}.ko", module_stem(path).unwrap_or("module"))
}

/// Reads a module file, decompressing `.ko.xz` with `xz -d`.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    if path.extension() == Some(OsStr::new("xz")) {
        let out = run(Command::new("xz").args(["-d", "-c", "--"]).arg(path))?;
        Ok(out.stdout)
    } else {
        read(path)
    }
}

/// Finds `boot/vmlinuz-<version>` in an extracted kernel package.
fn find_vmlinuz(kernel_root: &Path, deb: &Path) -> Result<(String, PathBuf), ImageError> {
    let boot = kernel_root.join("boot");
    let mut found = Vec::new();
    if boot.is_dir() {
        for entry in fs::read_dir(&boot).map_err(|e| io_err(&boot, e))? {
            let path = entry.map_err(|e| io_err(&boot, e))?.path();
            if let Some(version) = path
                .file_name()
                .and_then(OsStr::to_str)
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .filter(|v| !v.is_empty())
            {
                found.push((version.to_string(), path.clone()));
            }
        }
    }
    found.sort();
    found.into_iter().next_back().ok_or_else(|| ImageError::NoVmlinuz(deb.to_path_buf()))
}

/// Downloads the current versioned cloud kernel package into `work` and returns its path.
fn download_kernel(work: &Path) -> Result<PathBuf, ImageError> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let package =
        kernel_package_from_depends(&listing).ok_or_else(|| ImageError::NoKernelPackage(listing.to_string()))?;
    tracing::info!(%package, "downloading kernel package");
    apt_download(&package, work)
}

/// Picks the versioned `linux-image-*` package out of `apt-cache depends` output.
fn kernel_package_from_depends(listing: &str) -> Option<String> {
    listing.lines().find_map(|line| {
        let value = line.trim().trim_start_matches('|').strip_prefix("Depends:")?.trim();
        (value.starts_with("linux-image-") && !value.contains(['<', ' '])).then(|| value.to_string())
    })
}

/// Runs `apt-get download <package>` in `dir` and returns the downloaded `.deb`.
fn apt_download(package: &str, dir: &Path) -> Result<PathBuf, ImageError> {
    run(Command::new("apt-get").args(["download", "--", package]).current_dir(dir))?;
    let prefix = format!("{package}_");
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            debs.push(path);
        }
    }
    debs.sort();
    debs.pop().ok_or_else(|| ImageError::Command {
        command: format!("apt-get download {package}"),
        status: "no .deb file appeared".to_string(),
        stderr: format!("nothing named {prefix}*.deb in {}", dir.display()),
    })
}

/// Unpacks a `.deb` into `dest` with `dpkg -x`.
fn dpkg_extract(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    create_dir_all(dest)?;
    run(Command::new("dpkg").arg("-x").arg(deb).arg(dest))?;
    Ok(())
}

/// Picks the busybox binary: the given one, `/bin/busybox`, or one from busybox-static.
fn find_busybox(given: Option<&Path>, work: &Path) -> Result<PathBuf, ImageError> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(ImageError::BusyboxMissing(format!("{} does not exist", path.display())))
        };
    }
    let host = Path::new(HOST_BUSYBOX);
    // Debian's plain `busybox` package installs a dynamic one at the same path.
    if fs::read(host).is_ok_and(|bytes| is_static_elf(&bytes)) {
        return Ok(host.to_path_buf());
    }
    tracing::info!("no static {HOST_BUSYBOX} on the host, downloading {BUSYBOX_PACKAGE}");
    let download = work.join("busybox-deb");
    create_dir_all(&download)?;
    let deb = apt_download(BUSYBOX_PACKAGE, &download)?;
    let root = work.join("busybox");
    dpkg_extract(&deb, &root)?;
    ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::BusyboxMissing(format!("no bin/busybox in {}", deb.display())))
}

/// Asks busybox for its applets (`--list-full`) and keeps those that get a symlink.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = run(Command::new(busybox).arg("--list-full"))?;
    Ok(applet_links(&String::from_utf8_lossy(&out.stdout)))
}

/// Filters `busybox --list-full` output down to the paths that become symlinks: relative,
/// without `..`, not busybox itself and not `init`/`linuxrc` (the agent is `/init`).
fn applet_links(listing: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    listing
        .lines()
        .map(|line| line.trim().trim_start_matches('/'))
        .filter(|path| {
            let base = path.rsplit('/').next().unwrap_or(path);
            !path.is_empty()
                && *path != "bin/busybox"
                && base != "init"
                && base != "linuxrc"
                && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        })
        .filter(|path| seen.insert(path.to_string()))
        .map(String::from)
        .collect()
}

/// Everything that goes into the initramfs besides the fixed directories and devices.
struct Contents<'a> {
    agent: &'a [u8],
    busybox: &'a [u8],
    applets: &'a [String],
    modules: &'a [Module],
    kernel_version: &'a str,
}

/// Writes the initramfs to `path` and syncs it.
fn write_initramfs(path: &Path, contents: &Contents<'_>) -> Result<(), ImageError> {
    let file = fs::File::create(path).map_err(|e| io_err(path, e))?;
    let mut tree = Tree { cpio: CpioWriter::new(BufWriter::new(file)), paths: HashSet::new() };
    fill_initramfs(&mut tree, contents).map_err(|e| io_err(path, e))?;
    let file = tree
        .cpio
        .finish()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .map_err(|e| io_err(path, e))?;
    file.sync_all().map_err(|e| io_err(path, e))
}

fn fill_initramfs<W: Write>(tree: &mut Tree<W>, contents: &Contents<'_>) -> io::Result<()> {
    for &(dir, mode) in DIRS {
        tree.dir(dir, mode)?;
    }
    tree.char_device("dev/console", 0o600, 5, 1)?;
    tree.char_device("dev/null", 0o666, 1, 3)?;
    tree.file("init", 0o755, contents.agent)?;
    tree.file("bin/busybox", 0o755, contents.busybox)?;
    for applet in contents.applets {
        tree.symlink(applet, "/bin/busybox")?;
    }
    let mut list = String::new();
    for module in contents.modules {
        let guest_path = format!("lib/modules/{}", module.file_name);
        tree.file(&guest_path, 0o644, &module.data)?;
        list.push_str(&format!("/{guest_path}\n"));
    }
    tree.file("etc/aspen/modules", 0o644, list.as_bytes())?;
    let info = format!("kernel={}\nagent-bytes={}\n", contents.kernel_version, contents.agent.len());
    tree.file("etc/aspen/image", 0o644, info.as_bytes())
}

/// A cpio writer that remembers what it wrote: it creates missing parent directories and
/// skips (with a debug log) entries whose path is already taken.
struct Tree<W: Write> {
    cpio: CpioWriter<W>,
    paths: HashSet<String>,
}

impl<W: Write> Tree<W> {
    /// Claims `path` after making sure its parents exist; false if it is already taken.
    fn claim(&mut self, path: &str) -> io::Result<bool> {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !self.paths.contains(parent)
        {
            self.dir(parent, 0o755)?;
        }
        let fresh = self.paths.insert(path.to_string());
        if !fresh {
            tracing::debug!(path, "initramfs path already present, skipping");
        }
        Ok(fresh)
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        if self.claim(path)? {
            self.cpio.dir(path, mode)?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        if self.claim(path)? {
            self.cpio.file(path, mode, data)?;
        }
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if self.claim(path)? {
            self.cpio.symlink(path, target)?;
        }
        Ok(())
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        if self.claim(path)? {
            self.cpio.char_device(path, mode, major, minor)?;
        }
        Ok(())
    }
}

/// Reads the agent and checks it exists and is static.
fn read_agent(path: &Path) -> Result<Vec<u8>, ImageError> {
    if !path.is_file() {
        return Err(ImageError::AgentMissing(path.to_path_buf()));
    }
    let bytes = read(path)?;
    if !is_static_elf(&bytes) {
        return Err(ImageError::AgentNotStatic(path.to_path_buf()));
    }
    Ok(bytes)
}

/// Runs a command with stdin closed and returns its output, or an error carrying its stderr.
fn run(cmd: &mut Command) -> Result<Output, ImageError> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(command = %line, "running");
    let out =
        cmd.stdin(Stdio::null()).output().map_err(|source| ImageError::Spawn { command: line.clone(), source })?;
    if !out.status.success() {
        return Err(ImageError::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// A scratch directory under the output directory, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(parent: &Path) -> Result<Self, ImageError> {
        let path = parent.join(format!(".aspen-image-work-{}-{}", std::process::id(), unique_suffix()));
        fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove work dir");
        }
    }
}

/// A file written under a temporary name, removed when dropped unless persisted.
struct TempFile(PathBuf);

impl TempFile {
    /// Renames the file to `dest`.
    fn persist(self, dest: &Path) -> Result<(), ImageError> {
        fs::rename(&self.0, dest).map_err(|e| io_err(dest, e))
        // On success the drop below finds nothing to remove.
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %self.0.display(), error = %e, "could not remove temp file"),
        }
    }
}

fn temp_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{}", std::process::id(), unique_suffix()));
    dest.with_file_name(name)
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn sync_file(path: &Path) -> Result<(), ImageError> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| io_err(path, e))
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|e| io_err(path, e))
}

fn create_dir_all(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(|e| io_err(path, e))
}

fn io_err(path: &Path, source: io::Error) -> ImageError {
    ImageError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(name, deps)| (name.to_string(), deps.iter().map(|d| d.to_string()).collect())).collect()
    }

    fn position(order: &[String], name: &str) -> usize {
        order.iter().position(|n| n == name).unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let map = deps(&[
            ("virtio_pci", &["virtio_ring", "virtio_pci_modern_dev", "virtio"]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_ring", &[]),
            ("virtio", &[]),
            ("virtiofs", &["fuse", "virtio", "virtio_ring"]),
            ("fuse", &[]),
            ("virtio_net", &["net-failover", "virtio"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
            ("unrelated", &[]),
        ]);
        let roots: Vec<String> =
            ["virtio_pci", "virtiofs", "virtio_net", "builtin_root"].iter().map(|s| s.to_string()).collect();
        let order = load_order(&map, &roots).unwrap();
        for (name, children) in &map {
            if name == "unrelated" {
                continue;
            }
            for child in children {
                let child = normalize_module(child);
                assert!(position(&order, &child) < position(&order, name), "{child} after {name}: {order:?}");
            }
        }
        assert!(!order.contains(&"unrelated".to_string()));
        assert!(!order.contains(&"builtin_root".to_string()));
        let mut unique = order.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), order.len(), "duplicates in {order:?}");
        assert_eq!(order.len(), 9);
    }

    #[test]
    fn builtin_modules_are_read_from_modules_builtin() {
        let dir = std::env::temp_dir().join(format!("aspen-builtin-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/fuse/virtio-fs.ko\n")
            .unwrap();
        let builtin = builtin_modules(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert!(builtin.contains("virtio_pci") && builtin.contains("virtio_fs"), "{builtin:?}");
        assert!(builtin_modules(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn load_order_skips_builtin_and_detects_cycles() {
        let map = deps(&[("a", &["b", "built_in"]), ("b", &[])]);
        assert_eq!(load_order(&map, &["a".to_string()]).unwrap(), ["b", "a"]);
        let cyclic = deps(&[("a", &["b"]), ("b", &["a"])]);
        assert!(matches!(load_order(&cyclic, &["a".to_string()]), Err(ImageError::ModuleCycle(_))));
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"#!/bin/sh\necho hi\n"));
        assert!(!is_static_elf(b"\x7fELF\x02\x01\x01"));
        match fs::read("/bin/busybox") {
            Ok(bytes) => assert!(is_static_elf(&bytes), "/bin/busybox should be static"),
            Err(_) => eprintln!("skipping busybox check: no /bin/busybox"),
        }
        match fs::read("/bin/ls") {
            Ok(bytes) => assert!(!is_static_elf(&bytes), "/bin/ls should be dynamic"),
            Err(_) => eprintln!("skipping ls check: no /bin/ls"),
        }
    }

    #[test]
    fn modinfo_depends_of_real_modules() {
        let base = Path::new("/tmp/kpkg/x/lib/modules");
        let Some(dir) = fs::read_dir(base).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) else {
            eprintln!("skipping: no extracted kernel package at {}", base.display());
            return;
        };
        let mut index = HashMap::new();
        index_modules(&dir.path(), &mut index).unwrap();
        let depends_of = |name: &str| {
            let path = &index[name];
            module_depends(&read_module(path).unwrap()).unwrap()
        };
        let virtiofs = depends_of("virtiofs");
        assert!(virtiofs.contains(&"fuse".to_string()), "{virtiofs:?}");
        assert!(virtiofs.contains(&"virtio".to_string()), "{virtiofs:?}");
        assert!(depends_of("virtio").is_empty());
        assert!(module_depends(b"not an elf").is_err());
    }

    #[test]
    fn xz_compressed_module_is_decompressed() {
        let module = Path::new("/tmp/kpkg/x/lib/modules/6.1.0-48-cloud-amd64/kernel/drivers/virtio/virtio_pci.ko");
        let Ok(original) = fs::read(module) else {
            eprintln!("skipping: no extracted kernel package at {}", module.display());
            return;
        };
        let dir = std::env::temp_dir().join(format!("aspen-image-xz-{}-{}", std::process::id(), unique_suffix()));
        fs::create_dir_all(&dir).unwrap();
        let compressed = dir.join("virtio-pci.ko.xz");
        let xz = Command::new("xz").args(["-z", "-c"]).arg(module).output();
        let result = match xz {
            Ok(out) if out.status.success() => {
                fs::write(&compressed, &out.stdout).unwrap();
                let mut index = HashMap::new();
                index_modules(&dir, &mut index).unwrap();
                Some((index, read_module(&compressed).unwrap()))
            }
            _ => None,
        };
        fs::remove_dir_all(&dir).unwrap();
        let Some((index, data)) = result else {
            eprintln!("skipping: no working xz");
            return;
        };
        assert_eq!(index.get("virtio_pci"), Some(&compressed));
        assert_eq!(module_file_name(&compressed), "virtio-pci.ko");
        assert_eq!(data, original);
        assert!(module_depends(&data).unwrap().contains(&"virtio".to_string()));
    }

    #[test]
    fn kernel_package_is_read_from_apt_cache_output() {
        let listing = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-48-cloud-amd64\n";
        assert_eq!(kernel_package_from_depends(listing).as_deref(), Some("linux-image-6.1.0-48-cloud-amd64"));
        assert_eq!(kernel_package_from_depends("linux-image-cloud-amd64\n  Depends: <virt>\n"), None);
    }

    #[test]
    fn applet_links_skip_busybox_and_init() {
        let links = applet_links("bin/busybox\nbin/sh\nsbin/init\nlinuxrc\nsbin/run-init\nusr/bin/env\n../x\nbin/sh\n");
        assert_eq!(links, ["bin/sh", "sbin/run-init", "usr/bin/env"]);
    }

    #[test]
    fn guest_image_paths() {
        let image = GuestImage::in_dir(Path::new("/nonexistent/img"));
        assert_eq!(image.kernel, Path::new("/nonexistent/img/vmlinuz"));
        assert_eq!(image.initramfs, Path::new("/nonexistent/img/initramfs.cpio"));
        assert!(!image.exists());
    }
}
