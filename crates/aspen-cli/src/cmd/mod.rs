//! One module per command family, each holding its clap arguments and what it does.

pub mod bench;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod node;
pub mod token;
pub mod watch;
