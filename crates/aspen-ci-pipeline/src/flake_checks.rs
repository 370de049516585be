//! `flake_checks = true`: one nix job per attribute of the flake's `checks.<system>`, as
//! buildbot-nix builds them. The worker that evaluates the pipeline lists the attributes
//! (`nix eval`); [`Pipeline::expand_flake_checks`] turns the job into one job per check.

use crate::{MAX_JOBS, Pipeline};

impl Pipeline {
    /// Replaces job `name` (a nix job with `flake_checks`) with one job per check in `checks`
    /// (the attribute names of the flake's `checks.<system>`), named `<name>.<check>`, each
    /// building `.#checks.<system>.<check>` with the job's other settings. Jobs that needed
    /// `name` need every one of them. Refuses a check name that cannot be a job name, and a
    /// pipeline that grows past [`MAX_JOBS`].
    pub fn expand_flake_checks(&mut self, name: &str, system: &str, checks: &[String]) -> Result<(), String> {
        let Some(job) = self.jobs.get(name).filter(|j| j.flake_checks).cloned() else {
            return Err(format!("job `{name}` does not set `flake_checks`"));
        };
        if checks.is_empty() {
            return Err(format!("job `{name}`: the flake has no checks for {system} (`checks.{system}` is empty)"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        let mut expanded = Vec::with_capacity(checks.len());
        for check in checks {
            if check.is_empty() || !check.chars().all(allowed) {
                return Err(format!(
                    "job `{name}`: flake check `{check}` cannot name a job (letters, digits, '_' and '-' only)"
                ));
            }
            let job_name = format!("{name}.{check}");
            if job_name.len() > 64 {
                return Err(format!("job `{name}`: `{job_name}` is over 64 characters"));
            }
            if self.jobs.contains_key(&job_name) {
                return Err(format!(
                    "job `{name}`: flake check `{check}` would be `{job_name}`, which the pipeline has"
                ));
            }
            expanded.push(job_name);
        }
        if self.jobs.len() - 1 + expanded.len() > MAX_JOBS {
            return Err(format!(
                "job `{name}`: {} flake checks take the pipeline over the limit of {MAX_JOBS} jobs",
                expanded.len()
            ));
        }
        self.jobs.remove(name);
        for (check, job_name) in checks.iter().zip(&expanded) {
            let mut one = job.clone();
            one.flake_checks = false;
            one.build = Some(format!(".#checks.{system}.{check}"));
            self.jobs.insert(job_name.clone(), one);
        }
        for other in self.jobs.values_mut() {
            if let Some(at) = other.needs.iter().position(|n| n == name) {
                other.needs.splice(at..=at, expanded.iter().cloned());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::evaluate;

    const PIPELINE: &str = r#"{
  jobs = {
    checks = { executor = 'nix, flake_checks = true, cache_push = true },
    deploy = { executor = 'shell, run = "echo deploy", needs = ["checks"] },
  },
}"#;

    #[test]
    fn each_check_becomes_a_job_and_dependants_need_them_all() {
        let mut p = evaluate("ci.ncl", PIPELINE).unwrap();
        p.expand_flake_checks("checks", "x86_64-linux", &["fmt".into(), "unit".into()]).unwrap();
        let names: Vec<&str> = p.jobs.keys().map(String::as_str).collect();
        assert_eq!(names, ["checks.fmt", "checks.unit", "deploy"]);
        let fmt = &p.jobs["checks.fmt"];
        assert_eq!(fmt.build.as_deref(), Some(".#checks.x86_64-linux.fmt"));
        assert!(!fmt.flake_checks && fmt.cache_push);
        assert_eq!(p.jobs["deploy"].needs, ["checks.fmt", "checks.unit"]);
        assert_eq!(crate::topological_order(&p).last().map(String::as_str), Some("deploy"));
    }

    #[test]
    fn odd_names_and_empty_checks_are_refused() {
        let p = evaluate("ci.ncl", PIPELINE).unwrap();
        let err = p.clone().expand_flake_checks("checks", "x86_64-linux", &[]).unwrap_err();
        assert!(err.contains("no checks for x86_64-linux"), "{err}");
        let err = p.clone().expand_flake_checks("checks", "x86_64-linux", &["a.b".into()]).unwrap_err();
        assert!(err.contains("`a.b` cannot name a job"), "{err}");
        let err = p.clone().expand_flake_checks("deploy", "x86_64-linux", &["a".into()]).unwrap_err();
        assert!(err.contains("does not set `flake_checks`"), "{err}");
    }
}
