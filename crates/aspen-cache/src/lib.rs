//! The Nix binary cache on an Aspen cluster.
//!
//! This first part is Nix's own formats, checked against the real `nix`: store path names
//! and Nix's base-32 ([`nix32`]), narinfo files and the fingerprint a signature covers
//! ([`narinfo`]), and ed25519 signing keys and signatures in Nix's `name:base64` form
//! ([`signing`]), and NARs checked and hashed as they stream past ([`nar`]). The app (NARs in blobs, narinfo in the KV, the HTTP gateway) builds on
//! them.

pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod signing;

pub use narinfo::{NarInfo, Sha256, StorePathName};
pub use signing::SigningKey;
