//! Aspen microVMs: a runner with a QEMU and a Cloud Hypervisor backend, the guest image builder
//! and a VirtioFS (vhost-user-fs) backend that serves shares to guests.
//!
//! Not here: the guest agent and its wire protocol (`aspen-vm-agent`), and what runs in the VMs
//! (the CI executor builds on [`runner::run_job`]).

pub mod cpio;
pub mod doctor;
pub mod hypervisor;
pub mod image;
pub mod kvm;
pub mod readonly;
pub mod runner;
pub mod virtiofs;
