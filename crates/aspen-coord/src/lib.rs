//! Coordination primitives built on the Aspen KV client, and nothing else: every state
//! change is a KV write (usually a transaction), expiry is a KV lease (decided by the Raft
//! leader's clock, through the log), and waiting is a KV watch.
//!
//! Keys live under [`COORD_PREFIX`], so a token granting that prefix (or part of it) is
//! what a coordination user needs.

mod barrier;
mod counter;
mod election;
mod error;
mod idempotent;
mod lock;
mod name;
mod queue;
mod ratelimit;
mod rwlock;
mod semaphore;
mod service;
mod session;
mod wake;
mod worker;

/// The queue's own vocabulary, from the state machine that applies it.
pub use aspen_core::queue::{Enqueued, NewItem, QueueConfig, Receipt};
pub use aspen_core::ratelimit::RateLimitResult;
pub use barrier::{Barrier, DoubleBarrier, MAX_BARRIER_PARTICIPANTS};
pub use counter::{Counter, Sequence};
pub use election::{Election, Leader, Leadership};
pub use error::CoordError;
pub use lock::{Lock, LockGuard};
pub use name::{MAX_NAME_BYTES, validate_name};
pub use queue::{ItemInfo, Message, Queue, QueueStats};
pub use ratelimit::RateLimiter;
pub use rwlock::{RwGuard, RwLock};
pub use semaphore::{Permit, Semaphore};
pub use service::{Instance, MAX_INSTANCES, Registration, Service, ServiceChange, ServiceInstance, ServiceWatch};
pub use session::Session;
pub use worker::{
    Completed, Completion, MAX_LISTED, MAX_TASK_PAYLOAD_BYTES, MAX_WORKER_CAPACITY, Submitted, Task, TaskInfo,
    WorkPool, Worker, WorkerInfo,
};

/// Where coordination keys live.
pub const COORD_PREFIX: &str = "_aspen/coord/";
