//! `aspen`: the command line of an Aspen cluster (see the `aspen_cli` library).

/// mimalloc: the node allocates per request and per Raft message; glibc malloc cost
/// 15% of a node's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    aspen_cli::main()
}
