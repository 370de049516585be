//! The rules Aspen checks once Nickel has evaluated a pipeline: the ones a contract cannot state
//! (they relate fields or jobs to each other) or would state with worse messages. Each message
//! names the file, the job and what to change.

use crate::{ExecutorKind, JobDef, MAX_JOBS, Pipeline, PipelineError, graph};

/// The longest job name: it appears in paths, logs and the UI.
const MAX_JOB_NAME_LEN: usize = 64;

/// Checks every rule, reporting the first broken one (jobs in name order).
pub(crate) fn check_pipeline(file_name: &str, pipeline: &Pipeline) -> Result<(), PipelineError> {
    let invalid = |problem: String| PipelineError::Invalid(format!("{file_name}: {problem}"));
    check_job_count(pipeline.jobs.len()).map_err(invalid)?;
    for pattern in pipeline.triggers.branches.iter() {
        check_pattern("triggers.branches", pattern).map_err(invalid)?;
    }
    for pattern in pipeline.triggers.tags.iter() {
        check_pattern("triggers.tags", pattern).map_err(invalid)?;
    }
    for (name, job) in pipeline.jobs.iter() {
        check_job_name(name).map_err(invalid)?;
        check_job(job).map_err(|problem| invalid(format!("job `{name}`: {problem}")))?;
        for needed in job.needs.iter() {
            if !pipeline.jobs.contains_key(needed) {
                return Err(invalid(format!("job `{name}` needs `{needed}`, which is not a job of this pipeline")));
            }
        }
    }
    if let Some(cycle) = graph::find_cycle(pipeline) {
        return Err(invalid(cycle_message(&cycle)));
    }
    Ok(())
}

fn check_job_count(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err("the pipeline has no jobs: define at least one under `jobs`".to_owned());
    }
    if count > MAX_JOBS {
        return Err(format!("the pipeline has {count} jobs, over the limit of {MAX_JOBS}"));
    }
    Ok(())
}

fn check_pattern(field: &str, pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(format!("`{field}` holds an empty pattern, which matches nothing"));
    }
    Ok(())
}

/// Names are 1-64 characters of `[A-Za-z0-9_.-]` starting with a letter or digit, so they are
/// safe as path components and in URLs.
fn check_job_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let starts_well = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_JOB_NAME_LEN || !starts_well || !name.chars().all(allowed) {
        return Err(format!(
            "job name `{name}` is not allowed: use 1 to {MAX_JOB_NAME_LEN} letters, digits, \
             '_', '.' or '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The rules for one job on its own.
fn check_job(job: &JobDef) -> Result<(), String> {
    check_executor_fields(job)?;
    for path in job.artifacts.iter() {
        check_artifact_path(path)?;
    }
    for key in job.env.keys() {
        if !is_env_name(key) {
            return Err(format!(
                "`env` key `{key}` is not an environment variable name: use a letter or '_', \
                 then letters, digits or '_'"
            ));
        }
        if job.secrets.contains(key) {
            return Err(format!(
                "`{key}` is both in `env` and in `secrets`; a secret is given as the variable \
                 of its name, so keep one"
            ));
        }
    }
    Ok(())
}

/// Each executor requires what it runs and refuses fields only another executor reads, so a
/// field that would be silently ignored is reported instead.
fn check_executor_fields(job: &JobDef) -> Result<(), String> {
    let has_run = job.run.as_deref().is_some_and(|run| !run.trim().is_empty());
    let has_build = job.build.as_deref().is_some_and(|build| !build.trim().is_empty());
    match job.executor {
        ExecutorKind::Shell | ExecutorKind::Vm => {
            let executor = if job.executor == ExecutorKind::Shell { "shell" } else { "vm" };
            if !has_run {
                return Err(format!("a {executor} job needs `run`, the script to run (with `sh -eu -c`)"));
            }
            let nix_only =
                [("build", job.build.is_some()), ("flake_checks", job.flake_checks), ("cache_push", job.cache_push)];
            refuse_fields(executor, "nix", &nix_only)?;
            if job.executor == ExecutorKind::Shell {
                refuse_fields(executor, "vm", &[("image", job.image.is_some())])?;
            }
        }
        ExecutorKind::Nix => {
            if has_build && job.flake_checks {
                return Err("set either `build` or `flake_checks = true`, not both: `flake_checks` \
                     builds every check of the flake"
                    .to_owned());
            }
            if !has_build && !job.flake_checks {
                return Err("a nix job needs `build` (like \".#hello\" or \"default.nix\") or \
                     `flake_checks = true`"
                    .to_owned());
            }
            refuse_fields("nix", "shell and vm", &[("run", job.run.is_some())])?;
            refuse_fields("nix", "vm", &[("image", job.image.is_some())])?;
        }
    }
    Ok(())
}

fn refuse_fields(executor: &str, owners: &str, fields: &[(&str, bool)]) -> Result<(), String> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(format!("`{field}` only applies to {owners} jobs, and this is a {executor} job")),
        None => Ok(()),
    }
}

/// Artifacts are collected from inside the job's workspace; anything that could name a path
/// outside it is refused.
fn check_artifact_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("an artifact path is empty".to_owned());
    }
    if path.starts_with('/') {
        return Err(format!("artifact path `{path}` is absolute; give it relative to the workspace"));
    }
    if path.split('/').any(|component| component == "..") {
        return Err(format!("artifact path `{path}` contains `..`; artifacts must stay inside the workspace"));
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// "jobs a -> b -> a form a cycle": the path, back to where it started.
fn cycle_message(cycle: &[String]) -> String {
    match cycle {
        [only] => format!("job `{only}` needs itself"),
        _ => {
            let mut path: Vec<&str> = cycle.iter().map(String::as_str).collect();
            path.extend(cycle.first().map(String::as_str));
            format!("jobs {} form a cycle (each needs the next), so none of them can start", path.join(" -> "))
        }
    }
}
