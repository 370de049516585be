//! The pipeline language of Aspen CI: a repository's `.aspen/ci.ncl`, written in Nickel,
//! evaluated against the contract Aspen ships ([`CONTRACT`]) and checked into plain Rust data
//! ([`Pipeline`]).
//!
//! - Evaluation ([`evaluate`]): Nickel parses, typechecks and evaluates the one file with the
//!   contract applied; syntax, contract and evaluation errors come back as Nickel's own
//!   diagnostics, with the file name and line:column ([`PipelineError::Nickel`]).
//! - Rules Nickel cannot state well (job names, `needs` naming known jobs without a cycle, the
//!   fields each executor requires, artifact paths staying in the workspace, how many jobs)
//!   are checked afterwards in Rust ([`PipelineError::Invalid`]).
//! - The job graph ([`topological_order`]) and push triggers ([`Triggers::matches_push`],
//!   [`pattern_matches`]).
//!
//! Pure: no network, no processes, no filesystem. `import` is refused, because resolving one
//! would read files beside the pipeline and a pipeline is one file.
//!
//! Not here: running jobs, expanding `flake_checks` into jobs (that needs the flake), secret
//! values.

mod checks;
mod flake_checks;
mod graph;
mod nesting;
mod nickel;
mod triggers;

use std::collections::BTreeMap;

pub use graph::topological_order;
pub use triggers::pattern_matches;

/// The contract's Nickel source, as shipped (for docs and `aspen ci contract`).
pub const CONTRACT: &str = include_str!("contract.ncl");

/// The largest pipeline file evaluated, in bytes. A pipeline is a page or two of Nickel; the
/// limit keeps a hostile file from costing the parser much before anything else is checked.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// The deepest nesting of expressions accepted (brackets, `let`s, operator chains: each adds a
/// level). Real pipelines stay well under a few dozen; Nickel's typechecker and evaluator
/// recurse once per level, using several KiB of stack each.
pub const MAX_NESTING: usize = 200;

/// The stack of the thread evaluation runs on. [`MAX_NESTING`] levels of source need about
/// 2 MiB (tokio's blocking threads have just that); the rest is room for values a file builds
/// deep at run time, which no check before evaluation sees. Only the pages touched are ever
/// allocated.
pub const EVALUATION_STACK_BYTES: usize = 64 * 1024 * 1024;

/// The most jobs a pipeline may have. Bounds the scheduler's work per run and the depth of the
/// graph walks here.
pub const MAX_JOBS: usize = 200;

/// Where a pipeline runs its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// A shell script on the worker.
    Shell,
    /// A Nix build.
    Nix,
    /// A shell script inside a throwaway VM.
    Vm,
}

/// What a job may use on its worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// Virtual CPUs; 1 unless the pipeline says otherwise.
    pub cpus: u32,
    /// Memory in MiB; 1024 unless the pipeline says otherwise.
    pub memory_mib: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpus: 1, memory_mib: 1024 }
    }
}

/// One job of a pipeline, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobDef {
    /// Where the job runs.
    pub executor: ExecutorKind,
    /// shell and vm: a shell script run with `sh -eu -c` (required for those executors)
    pub run: Option<String>,
    /// nix: what to build: a flake attribute like ".#checks.x86_64-linux.fmt" or ".#hello", or a
    /// file like "default.nix" (built with nix-build); required for nix unless `flake_checks`
    pub build: Option<String>,
    /// nix: expand into one job per `checks.<system>.*` attribute of the flake (buildbot-nix style)
    pub flake_checks: bool,
    /// Jobs that must succeed before this one starts.
    pub needs: Vec<String>,
    /// Environment variables set for the job.
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit for one attempt: 1..=86400, 3600 by default.
    pub timeout_secs: u64,
    /// Further attempts after a failure: at most 10, 0 by default.
    pub retries: u32,
    /// What the job may use on its worker.
    pub resources: Resources,
    /// Paths (relative to the workspace, no "..", not absolute) kept as artifacts after the job.
    pub artifacts: Vec<String>,
    /// nix: push the outputs to the cluster's Nix cache
    pub cache_push: bool,
    /// Names of secrets the job is given as environment variables (values come from elsewhere).
    pub secrets: Vec<String>,
    /// vm: the guest image name; None means the worker's default image.
    pub image: Option<String>,
}

/// What starts a run of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Triggers {
    /// Branch name patterns that start a run on push: exact names or globs with `*` (matches any
    /// run of characters except '/') and `**` (anything). Empty (the default) means the
    /// repository's default branch only.
    pub branches: Vec<String>,
    /// Tag name patterns (the same globs) that start a run on push; none by default.
    pub tags: Vec<String>,
    /// Whether a patch opened or revised starts a run; true by default.
    pub patches: bool,
    /// Whether `aspen ci run` may start one; true by default.
    pub manual: bool,
}

/// A checked pipeline: what a repository's `.aspen/ci.ncl` asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pipeline {
    /// What starts a run.
    pub triggers: Triggers,
    /// By job name (names: 1-64 chars of [A-Za-z0-9_.-], starting with a letter or digit).
    pub jobs: BTreeMap<String, JobDef>,
}

/// Why a pipeline file was refused. `Display` is the whole user-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// Nickel refused it (syntax, contract, evaluation): Nickel's own diagnostic text, with the
    /// file name and line:column, no ANSI colours.
    #[error("{0}")]
    Nickel(String),
    /// A rule Aspen checks refused it: the file is too large or uses `import` (checked before
    /// evaluation, the latter with its position), or it evaluated but the jobs do not form a
    /// DAG or break a rule the contract cannot state (checked after).
    #[error("{0}")]
    Invalid(String),
}

/// Evaluates `source` (the text of the file called `file_name` in messages, e.g. ".aspen/ci.ncl")
/// against Aspen's contract and checks the job graph. `import` of other files is refused (the
/// pipeline is one file).
///
/// Nickel offers no bound on evaluation steps or memory, so a file that loops
/// (`let rec f = fun x => f x in f 0`) does not return: run this on a blocking thread under a
/// wall-clock timeout. Nickel also recurses on the native stack, and a stack overflow aborts
/// the process. Evaluation therefore runs on a thread of its own with
/// [`EVALUATION_STACK_BYTES`] of stack, and source nested deeper than [`MAX_NESTING`] is refused
/// before Nickel compiles it; but a file that *builds* a deeply nested value at run time (a fold
/// wrapping a record ten thousand times) can still overflow it. Where pipeline files are
/// untrusted, evaluate them in a child process.
pub fn evaluate(file_name: &str, source: &str) -> Result<Pipeline, PipelineError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(PipelineError::Invalid(format!(
            "{file_name}: the pipeline file is {} bytes, over the limit of {MAX_SOURCE_BYTES}",
            source.len()
        )));
    }
    std::thread::scope(|scope| {
        let evaluation = std::thread::Builder::new()
            .name("aspen-ci-pipeline".to_owned())
            .stack_size(EVALUATION_STACK_BYTES)
            .spawn_scoped(scope, || evaluate_on_this_thread(file_name, source));
        match evaluation {
            Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // Without a thread of its own, evaluation still works on the caller's stack, only
            // with less room.
            Err(_) => evaluate_on_this_thread(file_name, source),
        }
    })
}

fn evaluate_on_this_thread(file_name: &str, source: &str) -> Result<Pipeline, PipelineError> {
    let pipeline = nickel::evaluate_with_contract(file_name, source)?;
    checks::check_pipeline(file_name, &pipeline)?;
    Ok(pipeline)
}

#[cfg(test)]
mod tests;
