//! The scheduling decisions, as pure functions of a run and its jobs: which jobs may be
//! queued, which are skipped because something they need failed, which are cancelled, and
//! when the run is over. The scheduler ([`crate::scheduler`]) carries them out, each as a
//! transaction that compares the records it read, so several schedulers deciding at once
//! (one per node) carry out each decision once.

use std::collections::{BTreeMap, BTreeSet};

use crate::records::{JobRecord, RunRecord, State};

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
        let failed = job.needs.iter().find_map(|need| match jobs.get(need) {
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
        .filter(|(_, j)| j.state != State::Success)
        .map(|(n, j)| format!("{n} {}", j.state.name()))
        .collect();
    if unsuccessful.is_empty() {
        return Action::Finish { state: State::Success, message: None };
    }
    let state = if run.cancel_requested || jobs.values().any(|j| j.state == State::Cancelled) {
        State::Cancelled
    } else {
        State::Failure
    };
    Action::Finish { state, message: Some(unsuccessful.join(", ")) }
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
        JobRecord {
            def_json: "{}".into(),
            executor: ExecutorKind::Shell,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            state,
            attempt: 1,
            worker: None,
            queued_ms: None,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            message: None,
            log_blob: None,
            log_bytes: 0,
            artifacts: vec![],
            input_hash: None,
            reused_from: None,
        }
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
