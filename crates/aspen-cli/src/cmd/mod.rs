//! One module per command family, each holding its clap arguments and what it does.

pub mod barrier;
pub mod bench;
pub mod bench_blob;
pub mod bench_cache;
pub mod bench_forge;
pub mod blob;
pub mod cache;
pub mod cluster;
pub mod collab;
pub mod coord;
pub mod counter;
pub mod election;
pub mod forge;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod node;
pub mod queue;
pub mod ratelimit;
pub mod rwlock;
pub mod semaphore;
pub mod sequence;
pub mod service;
pub mod token;
pub mod watch;
pub mod worker;
