//! The crate's behaviour as seen through its public API: evaluation with its defaults and
//! refusals, the job order, and the trigger patterns.

use std::collections::BTreeMap;

use super::*;

const FILE: &str = ".aspen/ci.ncl";

const EXAMPLE: &str = r#"{
  triggers = { branches = ["main", "release/*"], patches = true },
  jobs = {
    build = { executor = 'shell, run = "make" },
    test = { executor = 'shell, run = "make test", needs = ["build"], timeout_secs = 600, env = { RUST_LOG = "info" } },
    hello = { executor = 'nix, build = ".#hello", cache_push = true },
    untrusted = { executor = 'vm, run = "./check.sh", resources = { cpus = 2, memory_mib = 512 } },
  },
}
"#;

/// A job as the contract's defaults leave it.
fn default_job(executor: ExecutorKind) -> JobDef {
    JobDef {
        executor,
        run: None,
        build: None,
        flake_checks: false,
        needs: Vec::new(),
        env: BTreeMap::new(),
        timeout_secs: 3600,
        retries: 0,
        resources: Resources { cpus: 1, memory_mib: 1024 },
        artifacts: Vec::new(),
        cache_push: false,
        secrets: Vec::new(),
        image: None,
    }
}

fn shell_job(run: &str) -> JobDef {
    JobDef { run: Some(run.to_owned()), ..default_job(ExecutorKind::Shell) }
}

/// A pipeline file with one job whose body is `fields` (inside the job's braces).
fn one_job(fields: &str) -> String {
    format!("{{\n  jobs = {{\n    a = {{ {fields} }},\n  }},\n}}\n")
}

fn nickel_refusal(source: &str) -> String {
    match evaluate(FILE, source) {
        Err(PipelineError::Nickel(message)) => message,
        other => panic!("expected Nickel to refuse, got {other:?}"),
    }
}

fn aspen_refusal(source: &str) -> String {
    match evaluate(FILE, source) {
        Err(PipelineError::Invalid(message)) => message,
        other => panic!("expected Aspen's checks to refuse, got {other:?}"),
    }
}

fn pipeline_of(jobs: &[(&str, JobDef)]) -> Pipeline {
    Pipeline {
        triggers: Triggers { branches: Vec::new(), tags: Vec::new(), patches: true, manual: true },
        jobs: jobs.iter().map(|(name, job)| ((*name).to_owned(), job.clone())).collect(),
    }
}

fn needing(needs: &[&str]) -> JobDef {
    JobDef { needs: needs.iter().map(|need| (*need).to_owned()).collect(), ..shell_job("true") }
}

// --- evaluation: what a valid file gives ---

#[test]
fn the_example_evaluates_with_every_default_filled_in() {
    let pipeline = evaluate(FILE, EXAMPLE).expect("the example is valid");

    let expected = Pipeline {
        triggers: Triggers {
            branches: vec!["main".to_owned(), "release/*".to_owned()],
            tags: Vec::new(),
            patches: true,
            manual: true,
        },
        jobs: BTreeMap::from([
            ("build".to_owned(), shell_job("make")),
            (
                "test".to_owned(),
                JobDef {
                    needs: vec!["build".to_owned()],
                    timeout_secs: 600,
                    env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
                    ..shell_job("make test")
                },
            ),
            (
                "hello".to_owned(),
                JobDef { build: Some(".#hello".to_owned()), cache_push: true, ..default_job(ExecutorKind::Nix) },
            ),
            (
                "untrusted".to_owned(),
                JobDef {
                    executor: ExecutorKind::Vm,
                    resources: Resources { cpus: 2, memory_mib: 512 },
                    ..shell_job("./check.sh")
                },
            ),
        ]),
    };
    assert_eq!(pipeline, expected);
}

#[test]
fn a_file_without_triggers_gets_the_default_triggers() {
    let pipeline = evaluate(FILE, &one_job(r#"executor = 'shell, run = "true""#)).unwrap();

    assert_eq!(pipeline.triggers, pipeline_of(&[]).triggers);
    assert_eq!(pipeline.jobs["a"], shell_job("true"));
}

#[test]
fn an_executor_may_be_given_as_a_string() {
    let pipeline = evaluate(FILE, &one_job(r#"executor = "vm", run = "true""#)).unwrap();

    assert_eq!(pipeline.jobs["a"].executor, ExecutorKind::Vm);
}

#[test]
fn nickel_computes_values_before_aspen_reads_them() {
    let source = r#"
let make_job = fun target => { executor = 'shell, run = "make %{target}" } in
{
  jobs = {
    lint = make_job "lint",
    check = make_job "check" & { needs = ["lint"], retries = 1 + 1 },
  },
}
"#;
    let pipeline = evaluate(FILE, source).unwrap();

    assert_eq!(pipeline.jobs["lint"].run.as_deref(), Some("make lint"));
    assert_eq!(pipeline.jobs["check"].run.as_deref(), Some("make check"));
    assert_eq!(pipeline.jobs["check"].retries, 2);
    assert_eq!(pipeline.jobs["check"].needs, vec!["lint".to_owned()]);
}

#[test]
fn a_nix_job_may_build_every_flake_check_instead_of_one_attribute() {
    let pipeline = evaluate(FILE, &one_job("executor = 'nix, flake_checks = true")).unwrap();

    assert!(pipeline.jobs["a"].flake_checks);
    assert_eq!(pipeline.jobs["a"].build, None);
}

#[test]
fn the_shipped_contract_is_the_one_applied() {
    // `aspen ci contract` shows CONTRACT: it must be what refusals point into.
    let message = nickel_refusal(&one_job(r#"executor = 'shell, run = "x", retries = 11"#));

    assert!(CONTRACT.contains("WholeNumberFrom 0 10"));
    assert!(message.contains("WholeNumberFrom 0 10"), "{message}");
}

// --- evaluation: what Nickel refuses, with its position ---

#[test]
fn a_contract_violation_names_the_field_the_file_and_the_line() {
    let message = nickel_refusal(&one_job(r#"executor = 'shell, run = "x", timeout_secs = "ten""#));

    assert!(message.contains("timeout_secs"), "{message}");
    assert!(message.contains("expected a whole number from 1 to 86400"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn a_number_out_of_its_range_is_a_contract_violation() {
    for (field, value) in [("timeout_secs", "0"), ("timeout_secs", "86401"), ("timeout_secs", "1.5"), ("retries", "11")]
    {
        let message = nickel_refusal(&one_job(&format!(r#"executor = 'shell, run = "x", {field} = {value}"#)));

        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
    }
}

#[test]
fn a_misspelled_job_field_is_refused_by_name() {
    let message = nickel_refusal(&one_job(r#"executor = 'shell, run = "x", timeout = 10"#));

    assert!(message.contains("extra field `timeout`"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn a_misspelled_top_level_field_is_refused_by_name() {
    let source = "{\n  trigger = { branches = [\"main\"] },\n  jobs = { a = { executor = 'shell, run = \"x\" } },\n}\n";
    let message = nickel_refusal(source);

    assert!(message.contains("extra field `trigger`"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:1:"), "{message}");
}

#[test]
fn an_unknown_executor_is_refused_with_the_known_ones() {
    let message = nickel_refusal(&one_job(r#"executor = 'docker, run = "x""#));

    assert!(message.contains("expected an executor: 'shell, 'nix or 'vm"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn a_job_without_an_executor_is_refused() {
    let message = nickel_refusal(&one_job(r#"run = "x""#));

    assert!(message.contains("missing definition for `executor`"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn a_secret_name_that_is_no_variable_name_is_refused() {
    let message = nickel_refusal(&one_job(r#"executor = 'shell, run = "x", secrets = ["API KEY"]"#));

    assert!(message.contains("expected an environment variable name"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn a_syntax_error_names_the_file_and_the_line() {
    let source = "{\n  jobs = {\n    a = { executor = 'shell run = \"x\" },\n  },\n}\n";
    let message = nickel_refusal(source);

    assert!(message.contains("unexpected token"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn an_evaluation_error_names_the_file_and_the_line() {
    let message = nickel_refusal(&one_job(r#"executor = 'shell, run = "x", retries = 1 + "a""#));

    assert!(message.contains("dynamic type error"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:3:"), "{message}");
}

#[test]
fn messages_use_the_file_name_given_and_carry_no_colours() {
    let message = match evaluate("ci/other.ncl", "{ jobs = ") {
        Err(PipelineError::Nickel(message)) => message,
        other => panic!("expected a syntax error, got {other:?}"),
    };

    assert!(message.contains("ci/other.ncl:1:"), "{message}");
    assert!(!message.contains('\u{1b}'), "{message}");
}

// --- before evaluation: imports and size ---

#[test]
fn an_import_is_refused_where_it_stands() {
    let source = "let shared = import \"shared.ncl\" in\n{ jobs = shared }\n";
    let message = aspen_refusal(source);

    assert!(message.contains("imports are not allowed"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:1:14"), "{message}");
}

#[test]
fn an_import_inside_a_contract_annotation_or_a_string_is_refused_too() {
    let in_string = aspen_refusal(&one_job(r#"executor = 'shell, run = "%{import "run.txt"}""#));
    assert!(in_string.contains(".aspen/ci.ncl:3:"), "{in_string}");

    let source = "{\n  jobs | (import \"contracts.ncl\") = {},\n}\n";
    let message = aspen_refusal(source);

    assert!(message.contains("imports are not allowed"), "{message}");
    assert!(message.contains(".aspen/ci.ncl:2:"), "{message}");
}

#[test]
fn a_file_over_the_size_limit_is_refused_unread() {
    let source = format!("# {}\n{}", "x".repeat(MAX_SOURCE_BYTES), one_job("executor = 'nix"));
    let message = aspen_refusal(&source);

    assert!(message.contains("over the limit"), "{message}");
}

#[test]
fn deep_nesting_is_refused_before_it_can_exhaust_the_stack() {
    // Each of these, ten thousand levels deep, overflows Nickel's stack and aborts the process
    // unless refused first.
    let depth = 10_000;
    for source in [
        format!("{{ jobs = {}{} }}", "[".repeat(depth), "]".repeat(depth)),
        format!("{{ jobs = {}1 }}", "1 + ".repeat(depth)),
        format!("{{ jobs.{}b = 1 }}", "a.".repeat(depth)),
        format!("let f = match {{ {}x{} => 1 }} in {{ jobs = {{}} }}", "[".repeat(depth), "]".repeat(depth)),
    ] {
        let message = aspen_refusal(&source);

        assert!(message.contains(&format!("more than {MAX_NESTING} levels deep")), "{message}");
        assert!(message.contains(".aspen/ci.ncl:1:"), "{message}");
    }
}

#[test]
fn nesting_just_under_the_limit_is_evaluated() {
    // The records around the job take a few levels; the `let` chain takes the rest.
    let lets = MAX_NESTING - 10;
    let source = format!(
        "{{ jobs = {{ a = {{ executor = 'shell, run = let v = \"x\" in {}v }} }} }}",
        "let v = v in ".repeat(lets - 1)
    );

    assert_eq!(evaluate(FILE, &source).unwrap().jobs["a"].run.as_deref(), Some("x"));
}

// --- after evaluation: Aspen's rules ---

#[test]
fn a_cycle_is_refused_naming_the_jobs_on_it() {
    let source = r#"{
  jobs = {
    a = { executor = 'shell, run = "x", needs = ["b"] },
    b = { executor = 'shell, run = "x", needs = ["c"] },
    c = { executor = 'shell, run = "x", needs = ["a"] },
    d = { executor = 'shell, run = "x", needs = ["a"] },
  },
}"#;
    let message = aspen_refusal(source);

    assert!(message.contains("jobs a -> b -> c -> a form a cycle"), "{message}");
    assert!(message.starts_with(".aspen/ci.ncl: "), "{message}");
}

#[test]
fn a_cycle_found_past_its_entry_names_only_the_jobs_on_it() {
    let pipeline = pipeline_of(&[("entry", needing(&["x"])), ("x", needing(&["y"])), ("y", needing(&["x"]))]);

    assert_eq!(graph::find_cycle(&pipeline), Some(vec!["x".to_owned(), "y".to_owned()]));
}

#[test]
fn a_job_needing_itself_is_refused() {
    let message = aspen_refusal(&one_job(r#"executor = 'shell, run = "x", needs = ["a"]"#));

    assert!(message.contains("job `a` needs itself"), "{message}");
}

#[test]
fn needing_an_unknown_job_is_refused() {
    let message = aspen_refusal(&one_job(r#"executor = 'shell, run = "x", needs = ["biuld"]"#));

    assert!(message.contains("job `a` needs `biuld`, which is not a job"), "{message}");
}

#[test]
fn a_job_name_outside_the_allowed_syntax_is_refused() {
    let long_name = "n".repeat(65);
    for name in ["-leading-dash", "has space", "émoji", long_name.as_str()] {
        let source = format!("{{ jobs = {{ \"{name}\" = {{ executor = 'shell, run = \"x\" }} }} }}");
        let message = aspen_refusal(&source);

        assert!(message.contains(&format!("job name `{name}` is not allowed")), "{message}");
    }
}

#[test]
fn job_names_may_use_dots_dashes_and_underscores() {
    let source = "{ jobs = { \"fmt.check-all_2\" = { executor = 'shell, run = \"x\" } } }";

    assert!(evaluate(FILE, source).is_ok());
}

#[test]
fn shell_and_vm_jobs_need_a_script() {
    for executor in ["shell", "vm"] {
        let message = aspen_refusal(&one_job(&format!("executor = '{executor}")));

        assert!(message.contains("job `a`"), "{message}");
        assert!(message.contains(&format!("a {executor} job needs `run`")), "{message}");
    }
}

#[test]
fn a_nix_job_needs_something_to_build() {
    let message = aspen_refusal(&one_job("executor = 'nix"));

    assert!(message.contains("a nix job needs `build`"), "{message}");
}

#[test]
fn a_nix_job_builds_one_attribute_or_every_check_not_both() {
    let message = aspen_refusal(&one_job(r#"executor = 'nix, build = ".#a", flake_checks = true"#));

    assert!(message.contains("either `build` or `flake_checks = true`"), "{message}");
}

#[test]
fn a_field_another_executor_reads_is_refused_not_ignored() {
    for (fields, field) in [
        (r#"executor = 'nix, build = ".#a", run = "make""#, "run"),
        (r#"executor = 'shell, run = "x", build = ".#a""#, "build"),
        (r#"executor = 'vm, run = "x", cache_push = true"#, "cache_push"),
        (r#"executor = 'shell, run = "x", image = "debian""#, "image"),
    ] {
        let message = aspen_refusal(&one_job(fields));

        assert!(message.contains(&format!("`{field}` only applies to")), "{message}");
    }
}

#[test]
fn a_vm_job_may_name_its_image() {
    let pipeline = evaluate(FILE, &one_job(r#"executor = 'vm, run = "x", image = "debian""#)).unwrap();

    assert_eq!(pipeline.jobs["a"].image.as_deref(), Some("debian"));
}

#[test]
fn artifact_paths_must_stay_inside_the_workspace() {
    for (path, problem) in [
        ("/etc/passwd", "is absolute"),
        ("../secrets", "contains `..`"),
        ("out/../../x", "contains `..`"),
        ("", "is empty"),
    ] {
        let message = aspen_refusal(&one_job(&format!(r#"executor = 'shell, run = "x", artifacts = ["{path}"]"#)));

        assert!(message.contains(problem), "{path}: {message}");
    }
    let kept = evaluate(FILE, &one_job(r#"executor = 'shell, run = "x", artifacts = ["target/out..txt"]"#));
    assert!(kept.is_ok(), "{kept:?}");
}

#[test]
fn env_keys_must_be_variable_names_and_not_secrets() {
    let bad_key = aspen_refusal(&one_job(r#"executor = 'shell, run = "x", env = { "A-B" = "1" }"#));
    let clash = aspen_refusal(&one_job(r#"executor = 'shell, run = "x", env = { TOKEN = "1" }, secrets = ["TOKEN"]"#));

    assert!(bad_key.contains("`env` key `A-B`"), "{bad_key}");
    assert!(clash.contains("`TOKEN` is both in `env` and in `secrets`"), "{clash}");
}

#[test]
fn a_pipeline_without_jobs_is_refused() {
    let message = aspen_refusal("{ jobs = {} }");

    assert!(message.contains("no jobs"), "{message}");
}

#[test]
fn a_pipeline_over_the_job_limit_is_refused() {
    let source = format!(
        "{{ jobs = std.array.fold_left (fun acc i => acc & {{ \"j%{{std.to_string i}}\" = \
         {{ executor = 'shell, run = \"x\" }} }}) {{}} (std.array.range 0 {}) }}",
        MAX_JOBS + 1
    );
    let message = aspen_refusal(&source);

    assert!(message.contains(&format!("{} jobs, over the limit of {MAX_JOBS}", MAX_JOBS + 1)), "{message}");
}

#[test]
fn an_empty_trigger_pattern_is_refused() {
    let message = aspen_refusal("{ triggers = { tags = [\"\"] }, jobs = { a = { executor = 'shell, run = \"x\" } } }");

    assert!(message.contains("`triggers.tags` holds an empty pattern"), "{message}");
}

// --- the job order ---

#[test]
fn every_job_comes_after_what_it_needs_ties_by_name() {
    let pipeline = pipeline_of(&[
        ("deploy", needing(&["test", "lint"])),
        ("test", needing(&["build"])),
        ("lint", needing(&[])),
        ("build", needing(&[])),
        ("docs", needing(&["build"])),
    ]);

    assert_eq!(topological_order(&pipeline), vec!["build", "docs", "lint", "test", "deploy"]);
}

#[test]
fn the_order_of_the_example_puts_build_before_test() {
    let pipeline = evaluate(FILE, EXAMPLE).unwrap();

    assert_eq!(topological_order(&pipeline), vec!["build", "hello", "test", "untrusted"]);
}

#[test]
fn jobs_on_a_cycle_are_left_out_of_the_order() {
    let pipeline = pipeline_of(&[
        ("free", needing(&["gone"])),
        ("a", needing(&["b"])),
        ("b", needing(&["a"])),
        ("after", needing(&["a"])),
    ]);

    assert_eq!(topological_order(&pipeline), vec!["free"]);
}

// --- trigger patterns ---

#[test]
fn an_exact_pattern_matches_only_that_name() {
    assert!(pattern_matches("main", "main"));
    assert!(!pattern_matches("main", "mainline"));
    assert!(!pattern_matches("main", "feature/main"));
    assert!(!pattern_matches("main", ""));
}

#[test]
fn a_star_matches_within_one_segment() {
    assert!(pattern_matches("release/*", "release/1.0"));
    assert!(!pattern_matches("release/*", "release/a/b"));
    assert!(!pattern_matches("release/*", "releases/1.0"));
    assert!(pattern_matches("*-stable", "6.1-stable"));
    assert!(pattern_matches("v*.*", "v1.2"));
    assert!(!pattern_matches("*", "a/b"));
}

#[test]
fn a_double_star_matches_across_segments() {
    assert!(pattern_matches("release/**", "release/a/b"));
    assert!(pattern_matches("release/**", "release/1.0"));
    assert!(pattern_matches("**", "any/thing/at/all"));
    assert!(pattern_matches("**/fix", "user/alice/fix"));
    assert!(!pattern_matches("**/fix", "user/alice/fixes"));
}

#[test]
fn many_stars_do_not_make_matching_slow() {
    // Backtracking would take exponential time on this one.
    let pattern = format!("{}b", "*a".repeat(30));
    let name = "a".repeat(200);

    assert!(!pattern_matches(&pattern, &name));
}

// --- which pushes start a run ---

fn triggers(branches: &[&str], tags: &[&str]) -> Triggers {
    Triggers {
        branches: branches.iter().map(|b| (*b).to_owned()).collect(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        patches: true,
        manual: true,
    }
}

#[test]
fn without_branch_patterns_only_the_default_branch_starts_a_run() {
    let defaults = triggers(&[], &[]);

    assert!(defaults.matches_push("refs/heads/main", "main"));
    assert!(defaults.matches_push("refs/heads/main", "refs/heads/main"));
    assert!(!defaults.matches_push("refs/heads/dev", "main"));
    assert!(!defaults.matches_push("refs/tags/v1", "main"));
}

#[test]
fn with_branch_patterns_only_matching_branches_start_a_run() {
    let release = triggers(&["main", "release/*"], &[]);

    assert!(release.matches_push("refs/heads/main", "main"));
    assert!(release.matches_push("refs/heads/release/1.0", "main"));
    assert!(!release.matches_push("refs/heads/release/a/b", "main"));
    assert!(!release.matches_push("refs/heads/dev", "dev"));
}

#[test]
fn tags_start_a_run_only_when_a_tag_pattern_matches() {
    let tagged = triggers(&["*"], &["v*"]);

    assert!(tagged.matches_push("refs/tags/v1.2.3", "main"));
    assert!(!tagged.matches_push("refs/tags/nightly", "main"));
    assert!(!triggers(&["**"], &[]).matches_push("refs/tags/v1", "main"));
}

#[test]
fn refs_other_than_branches_and_tags_never_start_a_run() {
    let everything = triggers(&["**"], &["**"]);

    assert!(!everything.matches_push("refs/notes/commits", "main"));
    assert!(!everything.matches_push("main", "main"));
}

/// The project's own pipeline (what `.ci/run` checks, as CI jobs) stays valid.
#[test]
fn aspen_s_own_pipeline_evaluates() {
    // Cargo's variable when it runs the test, else the one compiled in: a test binary
    // reused from a build in another checkout (a shared target dir) reads this checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let path = std::path::Path::new(&dir).join("../../.aspen/ci.ncl");
    let source = std::fs::read_to_string(&path).expect("the repository's .aspen/ci.ncl");
    let pipeline = evaluate(".aspen/ci.ncl", &source).unwrap_or_else(|e| panic!("{e}"));
    let order = topological_order(&pipeline);
    assert_eq!(order.first().map(String::as_str), Some("fmt"));
    assert!(pipeline.triggers.patches && pipeline.triggers.matches_push("refs/heads/main", "main"));
    // The checks of `.ci/run` as shell jobs; a slice of the cluster tests in a microVM, fed
    // by the bundle its shell job keeps; the release binary kept, and put in the cache.
    for name in ["fmt", "clippy", "unit", "nixos", "cluster", "cluster-build", "release"] {
        let job = &pipeline.jobs[name];
        assert!(job.executor == ExecutorKind::Shell && job.run.is_some(), "{name}");
    }
    let vm = &pipeline.jobs["vm-cluster"];
    assert_eq!((vm.executor, vm.needs.clone()), (ExecutorKind::Vm, vec!["cluster-build".to_string()]));
    assert_eq!(pipeline.jobs["cluster-build"].artifacts, ["vm-bundle.tar.gz"]);
    assert_eq!(pipeline.jobs["release"].artifacts, ["out/aspen"]);
    let cache = &pipeline.jobs["release-cache"];
    assert_eq!((cache.executor, cache.cache_push), (ExecutorKind::Nix, true));
    assert_eq!(cache.build.as_deref(), Some("dogfood/release.nix"));
    assert_eq!(cache.needs, ["release"]);
    let position = |name: &str| order.iter().position(|j| j == name).unwrap();
    assert!(position("release") > position("unit") && position("release") > position("clippy"));
}
