//! The job graph: `a` needs `b` is an edge from `a` to `b`. An order to run the jobs in, and the
//! first cycle if there is one.

use std::collections::{BTreeMap, BTreeSet};

use crate::Pipeline;

/// The jobs in an order where every job comes after all it `needs` (ties broken by name).
///
/// Meant for a pipeline [`crate::evaluate`] returned, which has neither cycles nor unknown
/// `needs`. For any other: a `needs` entry naming no job is ignored, and jobs on a cycle (or
/// after one) are left out, so the result is shorter than the job list.
pub fn topological_order(pipeline: &Pipeline) -> Vec<String> {
    // For each job, the jobs waiting on it, and how many of its own needs are still unmet.
    let mut waiting_on: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut unmet: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, job) in pipeline.jobs.iter() {
        let known_needs: BTreeSet<&str> =
            job.needs.iter().map(String::as_str).filter(|needed| pipeline.jobs.contains_key(*needed)).collect();
        unmet.insert(name, known_needs.len());
        for needed in known_needs {
            waiting_on.entry(needed).or_default().push(name);
        }
    }

    let mut ready: BTreeSet<&str> = unmet.iter().filter(|(_, count)| **count == 0).map(|(name, _)| *name).collect();
    let mut order = Vec::with_capacity(pipeline.jobs.len());
    while let Some(name) = ready.pop_first() {
        order.push(name.to_owned());
        for waiter in waiting_on.get(name).into_iter().flatten() {
            if let Some(count) = unmet.get_mut(waiter) {
                *count -= 1;
                if *count == 0 {
                    ready.insert(waiter);
                }
            }
        }
    }
    order
}

/// Where a job stands in the depth-first search for a cycle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    /// On the current path from the search's root: reaching it again closes a cycle.
    OnPath,
    /// Fully explored: no cycle through it.
    Done,
}

/// The first cycle found, searching from jobs in name order: `[a, b]` when `a` needs `b` and
/// `b` needs `a`, `[a]` when `a` needs itself. `needs` naming no job are ignored.
pub(crate) fn find_cycle(pipeline: &Pipeline) -> Option<Vec<String>> {
    let mut visits: BTreeMap<&str, Visit> = BTreeMap::new();
    let mut path: Vec<&str> = Vec::new();
    pipeline.jobs.keys().find_map(|name| visit(pipeline, name, &mut visits, &mut path))
}

/// Depth-first from `name`. Recursion depth is at most the number of jobs, which
/// [`crate::MAX_JOBS`] bounds before this runs.
fn visit<'p>(
    pipeline: &'p Pipeline,
    name: &'p str,
    visits: &mut BTreeMap<&'p str, Visit>,
    path: &mut Vec<&'p str>,
) -> Option<Vec<String>> {
    match visits.get(name) {
        Some(Visit::Done) => return None,
        Some(Visit::OnPath) => {
            let start = path.iter().position(|on_path| *on_path == name)?;
            return Some(path[start..].iter().map(|job| (*job).to_owned()).collect());
        }
        None => {}
    }
    let (name, job) = pipeline.jobs.get_key_value(name)?;
    visits.insert(name, Visit::OnPath);
    path.push(name);
    for needed in job.needs.iter() {
        if let Some(cycle) = visit(pipeline, needed, visits, path) {
            return Some(cycle);
        }
    }
    path.pop();
    visits.insert(name, Visit::Done);
    None
}
