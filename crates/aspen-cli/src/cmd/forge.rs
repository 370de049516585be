//! `aspen forge`: git repositories hosted on the cluster (the forge app).

use anyhow::bail;
use aspen_client::Client;
use aspen_forge::status::{CommitStatus, StatusEntry, StatusState};
use aspen_forge::{EventEntry, ForgeClient, RepoInfo};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum ForgeCommand {
    /// Create, list, show, delete and protect repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Push events: every accepted ref update, in the order the cluster wrote them.
    Events {
        /// Only repositories whose names start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start at this KV revision (0: the oldest kept); print the revision to resume
        /// from with --json.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep the stream open and print events as pushes happen.
        #[arg(long)]
        follow: bool,
        /// Stop after this many events (0: no limit).
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Collect a repository's garbage now: repack its packs older than the grace period
    /// keeping only what its refs and its forks' refs reach (needs forge:admin).
    Gc {
        repo: String,
        /// Override the node's grace period (seconds); 0 collects every pack.
        #[arg(long)]
        grace_secs: Option<u64>,
    },
    /// Show a repository with the statuses (CI's and others') of its refs' commits, or one
    /// commit's statuses.
    Show {
        repo: String,
        /// A commit (40 hex digits), a branch, a tag or a full ref name.
        rev: Option<String>,
    },
    /// Report a status of a commit, as a CI system does (needs forge:push).
    Status {
        repo: String,
        /// A commit (40 hex digits), a branch, a tag or a full ref name.
        rev: String,
        /// pending, running, success, failure, error, cancelled or skipped.
        state: String,
        /// Who reports: reports of one context replace each other.
        #[arg(long, default_value = "external")]
        context: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Where to look for more (a URL or a command).
        #[arg(long, default_value = "")]
        target: String,
        /// Orders the context's reports: a lower one than stored is dropped [default: now, in ms].
        #[arg(long)]
        seq: Option<u64>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
    /// Create an empty repository (needs forge:admin over its name).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The branch HEAD names.
        #[arg(long, default_value = "main")]
        default_branch: String,
    },
    /// List repositories.
    List {
        /// Only repositories whose names start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show a repository and its refs.
    Show { name: String },
    /// Delete a repository, its refs and its packs (needs forge:admin); refused while it has
    /// forks.
    Delete { name: String },
    /// Fork SOURCE as NAME: the same refs, SOURCE's objects shared, not copied (needs
    /// forge:read over SOURCE and forge:admin over NAME).
    Fork { source: String, name: String },
    /// Refuse force pushes and deletes of BRANCH (or, with --off, allow them again).
    Protect {
        name: String,
        branch: String,
        #[arg(long)]
        off: bool,
    },
}

fn repo_json(info: &RepoInfo) -> Value {
    let refs: Vec<Value> =
        info.refs.iter().map(|r| json!({"name": r.name, "id": aspen_forge::records::hex(&r.id)})).collect();
    json!({
        "name": info.name,
        "description": info.description,
        "default_branch": info.default_branch,
        "protected": info.protected,
        "parent": info.parent,
        "created_ms": info.created_ms,
        "refs": refs,
    })
}

fn print_repo(ctx: &Ctx, info: &RepoInfo) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(&repo_json(info))?;
        return Ok(());
    }
    output::print_line(&format!("repository {}", info.name))?;
    if let Some(parent) = &info.parent {
        output::print_line(&format!("fork of {parent}"))?;
    }
    if !info.description.is_empty() {
        output::print_line(&format!("description {}", info.description))?;
    }
    output::print_line(&format!("HEAD -> refs/heads/{}", info.default_branch))?;
    if !info.protected.is_empty() {
        output::print_line(&format!("protected {}", info.protected.join(", ")))?;
    }
    for r in &info.refs {
        output::print_line(&format!("{} {}", aspen_forge::records::hex(&r.id), r.name))?;
    }
    Ok(())
}

/// The commit `rev` names in `info`: 40 hex digits, or a ref (full, branch or tag).
fn resolve_rev(info: &RepoInfo, rev: &str) -> anyhow::Result<[u8; 20]> {
    if rev.len() == 40
        && let Ok(id) = aspen_forge::records::parse_object_id(rev)
    {
        return Ok(id);
    }
    for name in [rev.to_string(), format!("refs/heads/{rev}"), format!("refs/tags/{rev}")] {
        if let Some(r) = info.refs.iter().find(|r| r.name == name) {
            return Ok(r.id);
        }
    }
    bail!("{} has no commit, branch or tag {rev:?}", info.name)
}

pub fn statuses_json(statuses: &[StatusEntry]) -> Value {
    statuses
        .iter()
        .map(|s| {
            json!({
                "context": s.context,
                "state": s.status.state.name(),
                "description": s.status.description,
                "target": s.status.target,
                "seq": s.status.seq,
                "by": s.status.by,
                "updated_ms": s.status.updated_ms,
            })
        })
        .collect()
}

/// One line per status, indented by `indent`; a description of several lines keeps its
/// first line here (the target has the rest).
pub fn print_statuses(indent: &str, statuses: &[StatusEntry]) -> anyhow::Result<()> {
    for s in statuses {
        let first = s.status.description.lines().next().unwrap_or_default();
        let more = if s.status.description.lines().nth(1).is_some() { " …" } else { "" };
        let target = if s.status.target.is_empty() { String::new() } else { format!(" ({})", s.status.target) };
        output::print_line(&format!("{indent}{}: {} {first}{more}{target}", s.context, s.status.state.name()))?;
    }
    Ok(())
}

/// Shows `info` with each ref's statuses (at most [`STATUS_REFS`] refs are looked up).
async fn show_with_statuses(ctx: &Ctx, forge: &ForgeClient, info: &RepoInfo) -> anyhow::Result<()> {
    let mut statuses = Vec::new();
    for r in info.refs.iter().take(STATUS_REFS) {
        statuses.push(forge.statuses(&info.name, r.id).await?);
    }
    if ctx.json {
        let mut value = repo_json(info);
        for (r, s) in value["refs"].as_array_mut().into_iter().flatten().zip(&statuses) {
            r["statuses"] = statuses_json(s);
        }
        return Ok(output::print_json(&value)?);
    }
    print_repo(ctx, info)?;
    for (r, s) in info.refs.iter().zip(&statuses) {
        if !s.is_empty() {
            output::print_line(&format!("{}:", r.name))?;
            print_statuses("  ", s)?;
        }
    }
    Ok(())
}

/// Most refs whose statuses `aspen forge show` looks up.
const STATUS_REFS: usize = 50;

fn print_events(ctx: &Ctx, events: &[EventEntry]) -> anyhow::Result<()> {
    let hex = |id: &Option<[u8; 20]>| id.map(|i| aspen_forge::records::hex(&i));
    for e in events {
        let ev = &e.event;
        if ctx.json {
            output::print_json(&json!({
                "revision": e.revision,
                "repo": ev.repo,
                "ref": ev.ref_name,
                "old": hex(&ev.old),
                "new": hex(&ev.new),
                "pusher": ev.pusher,
                "time_ms": ev.time_ms,
            }))?;
        } else {
            let zero = "0".repeat(40);
            output::print_line(&format!(
                "{} {} {} {} {} {}",
                e.revision,
                ev.repo,
                ev.ref_name,
                hex(&ev.old).unwrap_or_else(|| zero.clone()),
                hex(&ev.new).unwrap_or(zero),
                &ev.pusher[..ev.pusher.len().min(16)]
            ))?;
        }
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, client: &Client, cmd: ForgeCommand) -> anyhow::Result<()> {
    let forge = ForgeClient::new(client);
    let cmd = match cmd {
        ForgeCommand::Repo(cmd) => cmd,
        ForgeCommand::Show { repo, rev } => {
            let info = forge.show_repo(&repo).await?;
            let Some(rev) = rev else { return show_with_statuses(ctx, &forge, &info).await };
            let commit = resolve_rev(&info, &rev)?;
            let statuses = forge.statuses(&repo, commit).await?;
            if ctx.json {
                return Ok(output::print_json(
                    &json!({"commit": aspen_forge::records::hex(&commit), "statuses": statuses_json(&statuses)}),
                )?);
            }
            output::print_line(&format!("commit {}", aspen_forge::records::hex(&commit)))?;
            if statuses.is_empty() {
                output::print_line("no statuses")?;
            }
            return print_statuses("  ", &statuses);
        }
        ForgeCommand::Status { repo, rev, state, context, description, target, seq } => {
            let info = forge.show_repo(&repo).await?;
            let commit = resolve_rev(&info, &rev)?;
            let status = CommitStatus {
                state: StatusState::parse(&state)?,
                description,
                target,
                seq: seq.unwrap_or_else(aspen_net::now_ms),
                by: String::new(),
                updated_ms: 0,
            };
            let statuses = forge.set_status(&repo, commit, &context, &status).await?;
            if ctx.json {
                return Ok(output::print_json(
                    &json!({"commit": aspen_forge::records::hex(&commit), "statuses": statuses_json(&statuses)}),
                )?);
            }
            return print_statuses("", &statuses);
        }
        ForgeCommand::Events { prefix, from, follow, count } => {
            let limit = if count == 0 { usize::MAX } else { count };
            let mut printed = 0usize;
            if !follow {
                let mut from = from;
                loop {
                    let (mut events, next) = forge.events(&prefix, from, 0).await?;
                    if events.is_empty() {
                        return Ok(());
                    }
                    events.truncate(limit - printed);
                    printed += events.len();
                    print_events(ctx, &events)?;
                    if printed >= limit {
                        return Ok(());
                    }
                    from = next;
                }
            }
            let mut failure = None;
            forge
                .follow_events(&prefix, from, |mut events, _next| {
                    events.truncate(limit - printed);
                    printed += events.len();
                    if let Err(e) = print_events(ctx, &events) {
                        failure = Some(e);
                        return false;
                    }
                    printed < limit
                })
                .await?;
            return failure.map_or(Ok(()), Err);
        }
        ForgeCommand::Gc { repo, grace_secs } => {
            let report = forge.collect_garbage(&repo, grace_secs.map(|s| s.saturating_mul(1000))).await?;
            if ctx.json {
                output::print_json(&serde_json::to_value(&report)?)?;
            } else {
                output::print_line(&format!(
                    "{repo}: {} of {} packs collected ({} objects, {} bytes), {} objects kept in {} bytes; {} packs now",
                    report.packs_collected,
                    report.packs_before,
                    report.objects_collected,
                    report.bytes_collected,
                    report.objects_kept,
                    report.bytes_written,
                    report.packs_after
                ))?;
            }
            return Ok(());
        }
    };
    match cmd {
        RepoCommand::Fork { source, name } => print_repo(ctx, &forge.fork_repo(&source, &name).await?),
        RepoCommand::Create { name, description, default_branch } => {
            let info = forge.create_repo(&name, &description, &default_branch).await?;
            print_repo(ctx, &info)
        }
        RepoCommand::List { prefix, limit } => {
            let (repos, more) = forge.list_repos(&prefix, None, limit).await?;
            if ctx.json {
                let list: Vec<Value> =
                    repos.iter().map(|r| json!({"name": r.name, "description": r.description})).collect();
                output::print_json(&json!({"repos": list, "more": more}))?;
                return Ok(());
            }
            for r in &repos {
                output::print_line(&if r.description.is_empty() {
                    r.name.clone()
                } else {
                    format!("{}  {}", r.name, r.description)
                })?;
            }
            if more {
                eprintln!("(more repositories than --limit {limit})");
            }
            Ok(())
        }
        RepoCommand::Show { name } => show_with_statuses(ctx, &forge, &forge.show_repo(&name).await?).await,
        RepoCommand::Delete { name } => {
            forge.delete_repo(&name).await?;
            if ctx.json {
                output::print_json(&json!({"deleted": name}))?;
            }
            Ok(())
        }
        RepoCommand::Protect { name, branch, off } => {
            if branch.starts_with("refs/") {
                bail!("name the branch, not its ref: `main`, not `refs/heads/main`");
            }
            print_repo(ctx, &forge.protect(&name, &branch, !off).await?)
        }
    }
}
