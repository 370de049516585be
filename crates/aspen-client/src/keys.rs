//! Key-range arithmetic, from `aspen-core`.

pub use aspen_core::keys::{key_successor, prefix_end};
