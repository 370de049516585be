//! The scheduling decisions, as pure functions of a run and its jobs: which jobs may be
//! queued, which are skipped because something they need failed, which are cancelled, and
//! when the run is over. The scheduler ([`crate::scheduler`]) carries them out, each as a
//! transaction that compares the records it read, so several schedulers deciding at once
//! (one per node) carry out each decision once.

use std::collections::{BTreeMap, BTreeSet};

use aspen_ci_pipeline::ExecutorKind;
use aspen_forge::status::{CommitStatus, StatusState};

use crate::records::{JobRecord, RunRecord, State};

/// How the message of a job skipped because its run is untrusted starts.
pub const UNTRUSTED: &str = "not run for an untrusted patch";

/// Why job `job` may not run in untrusted run `run`, if it may not: untrusted code runs only
/// in a microVM, and never gets secrets.
fn untrusted_refusal(run: &RunRecord, job: &JobRecord) -> Option<String> {
    if run.trusted {
        return None;
    }
    if job.executor != ExecutorKind::Vm {
        return Some(format!("{UNTRUSTED}: only vm jobs run code from outside"));
    }
    match job.def() {
        Ok(def) if !def.secrets.is_empty() => Some(format!("{UNTRUSTED}: it names secrets")),
        Ok(_) => None,
        Err(e) => Some(format!("{UNTRUSTED}: {e}")),
    }
}

fn skipped_untrusted(job: &JobRecord) -> bool {
    job.state == State::Skipped && job.message.as_deref().is_some_and(|m| m.starts_with(UNTRUSTED))
}

/// One step the scheduler takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Everything the job needs succeeded: put it in the work pool.
    Queue { job: String },
    /// A job it needs ended without success: it will not run.
    Skip { job: String, because: String },
    /// The run was cancelled before the job started.
    Cancel { job: String },
    /// Every job is over: the run ends in `state`.
    Finish { state: State, message: Option<String> },
}

/// What to do next for `run`, whose jobs are `jobs` (by name).
pub fn advance(run: &RunRecord, jobs: &BTreeMap<String, JobRecord>) -> Vec<Action> {
    if run.state != State::Running {
        return Vec::new();
    }
    let mut actions = Vec::new();
    for (name, job) in jobs {
        if run.cancel_requested {
            if matches!(job.state, State::Pending | State::Queued) {
                actions.push(Action::Cancel { job: name.clone() });
            }
            continue;
        }
        if job.state != State::Pending {
            continue;
        }
        if let Some(because) = untrusted_refusal(run, job) {
            actions.push(Action::Skip { job: name.clone(), because });
            continue;
        }
        let failed = job.needs.iter().find_map(|need| match jobs.get(need) {
            Some(n) if skipped_untrusted(n) => Some(format!("{UNTRUSTED}: it needs {need}")),
            Some(n) if n.state.is_final() && n.state != State::Success => {
                Some(format!("needs {need}, which ended {}", n.state.name()))
            }
            None => Some(format!("needs {need}, which this run does not have")),
            _ => None,
        });
        match failed {
            Some(because) => actions.push(Action::Skip { job: name.clone(), because }),
            None if job.needs.iter().all(|n| jobs.get(n).is_some_and(|n| n.state == State::Success)) => {
                actions.push(Action::Queue { job: name.clone() })
            }
            None => {}
        }
    }
    if !actions.is_empty() || jobs.values().any(|j| !j.state.is_final()) {
        return actions;
    }
    vec![finish(run, jobs)]
}

/// How a run whose jobs are all over ends.
fn finish(run: &RunRecord, jobs: &BTreeMap<String, JobRecord>) -> Action {
    let unsuccessful: Vec<String> = jobs
        .iter()
        .filter(|(_, j)| j.state != State::Success && !skipped_untrusted(j))
        .map(|(n, j)| format!("{n} {}", j.state.name()))
        .collect();
    let untrusted: Vec<&str> = jobs.iter().filter(|(_, j)| skipped_untrusted(j)).map(|(n, _)| n.as_str()).collect();
    if unsuccessful.is_empty() {
        if untrusted.is_empty() {
            return Action::Finish { state: State::Success, message: None };
        }
        let message = format!("{UNTRUSTED}: {} skipped", untrusted.join(", "));
        let state = if untrusted.len() == jobs.len() { State::Skipped } else { State::Success };
        return Action::Finish { state, message: Some(message) };
    }
    let state = if run.cancel_requested || jobs.values().any(|j| j.state == State::Cancelled) {
        State::Cancelled
    } else {
        State::Failure
    };
    Action::Finish { state, message: Some(unsuccessful.join(", ")) }
}

/// The status context of a run's commit: `ci`, or `ci/untrusted` for an untrusted patch's
/// run (whose jobs are not all run, so it must not pass for the trusted result).
pub fn status_context(run: &RunRecord) -> &'static str {
    if run.trusted { "ci" } else { "ci/untrusted" }
}

/// What the commit's status says about run `number`, without its time and writer.
pub fn commit_status(number: u64, run: &RunRecord, jobs: &BTreeMap<String, JobRecord>) -> CommitStatus {
    let done = jobs.values().filter(|j| j.state.is_final()).count();
    let state = match run.state {
        State::Pending | State::Queued => StatusState::Pending,
        State::Running => StatusState::Running,
        State::Success => StatusState::Success,
        State::Failure | State::TimedOut => StatusState::Failure,
        State::Cancelled => StatusState::Cancelled,
        State::Error => StatusState::Error,
        State::Skipped => StatusState::Skipped,
    };
    let description = match (run.state, &run.message) {
        (State::Pending, _) => format!("evaluating {}", crate::records::PIPELINE_PATH),
        (State::Running, _) if run.cancel_requested => format!("cancelling: {done} of {} jobs over", jobs.len()),
        (State::Running, _) => format!("{done} of {} jobs over", jobs.len()),
        (State::Success, None) => format!("all {} jobs passed", jobs.len()),
        (_, Some(message)) => message.clone(),
        (other, None) => other.name().to_string(),
    };
    CommitStatus {
        state,
        description,
        target: format!("aspen ci show {number}"),
        seq: number,
        by: String::new(),
        updated_ms: 0,
    }
}

/// The jobs a retry runs again: `only` and what depends on it that did not succeed, or,
/// without `only`, every job that did not succeed. The rest keep their success.
pub fn retry_set(jobs: &BTreeMap<String, JobRecord>, only: Option<&str>) -> BTreeSet<String> {
    let Some(only) = only else {
        return jobs.iter().filter(|(_, j)| j.state != State::Success).map(|(n, _)| n.clone()).collect();
    };
    let mut set = BTreeSet::from([only.to_string()]);
    loop {
        let more: Vec<String> = jobs
            .iter()
            .filter(|(n, j)| {
                !set.contains(*n) && j.state != State::Success && j.needs.iter().any(|need| set.contains(need))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if more.is_empty() {
            return set;
        }
        set.extend(more);
    }
}

#[cfg(test)]
mod tests {
    use aspen_ci_pipeline::ExecutorKind;

    use super::*;
    use crate::records::Trigger;

    fn run() -> RunRecord {
        RunRecord {
            repo: "r".into(),
            ref_name: "refs/heads/main".into(),
            commit: [1; 20],
            trigger: Trigger::Manual { by: "me".into() },
            state: State::Running,
            message: None,
            created_ms: 1,
            finished_ms: None,
            jobs: vec![],
            cancel_requested: false,
            forced: false,
            trusted: true,
        }
    }

    fn job(state: State, needs: &[&str]) -> JobRecord {
        let mut job = JobRecord::new("{}".into(), ExecutorKind::Shell, needs.iter().map(|s| s.to_string()).collect());
        job.state = state;
        job
    }

    fn jobs(list: &[(&str, JobRecord)]) -> BTreeMap<String, JobRecord> {
        list.iter().map(|(n, j)| (n.to_string(), j.clone())).collect()
    }

    #[test]
    fn a_job_is_queued_once_everything_it_needs_succeeded() {
        let js = jobs(&[("a", job(State::Pending, &[])), ("b", job(State::Pending, &["a"]))]);
        assert_eq!(advance(&run(), &js), vec![Action::Queue { job: "a".into() }]);
        let js = jobs(&[("a", job(State::Running, &[])), ("b", job(State::Pending, &["a"]))]);
        assert_eq!(advance(&run(), &js), vec![]);
        let js = jobs(&[("a", job(State::Success, &[])), ("b", job(State::Pending, &["a"]))]);
        assert_eq!(advance(&run(), &js), vec![Action::Queue { job: "b".into() }]);
    }

    #[test]
    fn a_failure_skips_what_needs_it_and_fails_the_run() {
        let js = jobs(&[("a", job(State::Failure, &[])), ("b", job(State::Pending, &["a"]))]);
        let actions = advance(&run(), &js);
        assert_eq!(actions, vec![Action::Skip { job: "b".into(), because: "needs a, which ended failure".into() }]);
        let js = jobs(&[("a", job(State::Failure, &[])), ("b", job(State::Skipped, &["a"]))]);
        assert_eq!(
            advance(&run(), &js),
            vec![Action::Finish { state: State::Failure, message: Some("a failure, b skipped".into()) }]
        );
    }

    #[test]
    fn the_run_succeeds_when_every_job_did() {
        let js = jobs(&[("a", job(State::Success, &[])), ("b", job(State::Success, &["a"]))]);
        assert_eq!(advance(&run(), &js), vec![Action::Finish { state: State::Success, message: None }]);
        let mut done = run();
        done.state = State::Success;
        assert_eq!(advance(&done, &js), vec![], "a finished run takes no more steps");
    }

    #[test]
    fn cancelling_stops_what_has_not_started_and_waits_for_what_runs() {
        let mut r = run();
        r.cancel_requested = true;
        let js = jobs(&[
            ("a", job(State::Running, &[])),
            ("b", job(State::Pending, &["a"])),
            ("c", job(State::Queued, &[])),
        ]);
        assert_eq!(advance(&r, &js), vec![Action::Cancel { job: "b".into() }, Action::Cancel { job: "c".into() }]);
        let js = jobs(&[("a", job(State::Cancelled, &[])), ("b", job(State::Cancelled, &["a"]))]);
        assert!(matches!(advance(&r, &js)[..], [Action::Finish { state: State::Cancelled, .. }]));
    }

    fn vm_job(state: State, needs: &[&str], secrets: &[&str]) -> JobRecord {
        let def = serde_json::json!({
            "executor": "vm", "run": "true", "build": null, "flake_checks": false, "needs": needs,
            "env": {}, "timeout_secs": 60, "retries": 0, "resources": {"cpus": 1, "memory_mib": 512},
            "artifacts": [], "cache_push": false, "secrets": secrets, "image": null,
        });
        let mut j = job(state, needs);
        j.executor = ExecutorKind::Vm;
        j.def_json = def.to_string();
        j.def().expect("the test's definition reads");
        j
    }

    #[test]
    fn an_untrusted_run_runs_only_vm_jobs_without_secrets() {
        let mut r = run();
        r.trusted = false;
        let js = jobs(&[
            ("shell", job(State::Pending, &[])),
            ("vm", vm_job(State::Pending, &[], &[])),
            ("secret", vm_job(State::Pending, &[], &["TOKEN"])),
        ]);
        let actions = advance(&r, &js);
        assert_eq!(actions.len(), 3);
        assert!(matches!(&actions[0], Action::Skip { job, because } if job == "secret" && because.contains("secrets")));
        assert!(
            matches!(&actions[1], Action::Skip { job, because } if job == "shell" && because.starts_with(UNTRUSTED))
        );
        assert_eq!(actions[2], Action::Queue { job: "vm".into() });
        assert_eq!(advance(&run(), &js).len(), 3, "a trusted run queues all three");
        assert!(advance(&run(), &js).iter().all(|a| matches!(a, Action::Queue { .. })));

        // What needs a job skipped for trust is skipped for trust too, and the run passes on
        // what it ran, saying what it did not run.
        let mut skipped = job(State::Skipped, &[]);
        skipped.message = Some(format!("{UNTRUSTED}: only vm jobs run code from outside"));
        let js = jobs(&[("build", skipped.clone()), ("test", vm_job(State::Pending, &["build"], &[]))]);
        assert!(matches!(&advance(&r, &js)[..], [Action::Skip { because, .. }] if because.starts_with(UNTRUSTED)));
        let mut test_skipped = skipped.clone();
        test_skipped.message = Some(format!("{UNTRUSTED}: it needs build"));
        let js = jobs(&[("build", skipped.clone()), ("test", test_skipped)]);
        assert!(matches!(&advance(&r, &js)[..], [Action::Finish { state: State::Skipped, .. }]));
        let js = jobs(&[("build", skipped), ("vm", vm_job(State::Success, &[], &[]))]);
        assert!(
            matches!(&advance(&r, &js)[..], [Action::Finish { state: State::Success, message: Some(m) }] if m.contains("build"))
        );
    }

    #[test]
    fn the_commit_status_follows_the_run() {
        let js = jobs(&[("a", job(State::Success, &[])), ("b", job(State::Running, &["a"]))]);
        let status = commit_status(7, &run(), &js);
        assert_eq!(
            (status.state, status.seq, status.description.as_str()),
            (StatusState::Running, 7, "1 of 2 jobs over")
        );
        assert_eq!(status.target, "aspen ci show 7");
        let mut failed = run();
        failed.state = State::Error;
        failed.message = Some("the pipeline does not evaluate".into());
        let status = commit_status(8, &failed, &BTreeMap::new());
        assert_eq!((status.state, status.description.as_str()), (StatusState::Error, "the pipeline does not evaluate"));
        let mut untrusted = run();
        untrusted.trusted = false;
        assert_eq!((status_context(&run()), status_context(&untrusted)), ("ci", "ci/untrusted"));
    }

    #[test]
    fn a_retry_takes_the_failed_jobs_or_one_job_and_what_failed_after_it() {
        let js = jobs(&[
            ("a", job(State::Success, &[])),
            ("b", job(State::Failure, &["a"])),
            ("c", job(State::Skipped, &["b"])),
            ("d", job(State::Success, &["a"])),
        ]);
        assert_eq!(retry_set(&js, None), BTreeSet::from(["b".into(), "c".into()]));
        assert_eq!(retry_set(&js, Some("a")), BTreeSet::from(["a".into(), "b".into(), "c".into()]));
    }
}
