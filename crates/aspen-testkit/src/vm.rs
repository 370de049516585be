//! A guest image for microVM tests, built once per test process from the real parts: the guest
//! agent compiled statically by cargo, Debian's cloud kernel (`apt-get download`) and
//! busybox-static. `None` when this host has no QEMU, so callers can say they skip.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use aspen_vm::doctor::{QEMU_BINARY, find_in_path};
use aspen_vm::image::{GuestImage, ImageSpec, KernelSource};

/// The target triple the agent is built for; an explicit `--target` keeps its static build
/// apart from the workspace's dynamic artifacts.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// The workspace's root: two levels above the crate under test (cargo's variable when it
/// runs the test), else above this crate as it was compiled. A test binary reused from a build
/// in another checkout (a shared target dir) then still builds in this checkout.
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| PathBuf::from(dir).join("../.."))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// Builds the statically linked guest agent and returns its path.
pub fn build_static_agent() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = target_dir();
    let out = Command::new(&cargo)
        .args(["build", "--release", "-p", "aspen-vm-agent", "--target", AGENT_TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static -C strip=debuginfo")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!("building the static agent failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(target_dir.join(AGENT_TARGET).join("release").join("aspen-vm-agent"))
}

/// The test image, built on first use; `Ok(None)` when QEMU is not installed.
pub fn test_image() -> Result<Option<GuestImage>, String> {
    static IMAGE: OnceLock<Result<Option<GuestImage>, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if find_in_path(QEMU_BINARY).is_none() {
                eprintln!("SKIP: {QEMU_BINARY} is not installed (scripts/test.sh installs qemu-system-x86)");
                return Ok(None);
            }
            let agent = build_static_agent()?;
            let out_dir = target_dir().join("aspen-vm-test-image");
            let spec = ImageSpec { out_dir, agent, kernel: KernelSource::Apt, busybox: None };
            aspen_vm::image::build(&spec).map(Some).map_err(|e| e.to_string())
        })
        .clone()
}
