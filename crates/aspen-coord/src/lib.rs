//! Coordination primitives built on the Aspen KV client, and nothing else: every state
//! change is a KV write (usually a transaction), expiry is a KV lease (decided by the Raft
//! leader's clock, through the log), and waiting is a KV watch.
//!
//! Keys live under [`COORD_PREFIX`], so a token granting that prefix (or part of it) is
//! what a coordination user needs.

mod counter;
mod election;
mod error;
mod lock;
mod rwlock;
mod semaphore;
mod session;

pub use counter::{Counter, Sequence};
pub use election::{Election, Leader, Leadership};
pub use error::CoordError;
pub use lock::{Lock, LockGuard};
pub use rwlock::{RwGuard, RwLock};
pub use semaphore::{Permit, Semaphore};
pub use session::Session;

/// Where coordination keys live.
pub const COORD_PREFIX: &str = "_aspen/coord/";
