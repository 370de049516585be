//! `aspen identity`, `aspen issue` and `aspen patch`: the user's signing key, and issues and
//! patches on the forge as signed change DAGs (`aspen_forge::cob`).
//!
//! Every change is made here and signed with the user's key (`<config dir>/signing.key`, or
//! `$ASPEN_SIGNING_KEY_FILE`), naming as parents the heads the user last saw; the node only
//! checks and stores it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use aspen_client::Client;
use aspen_forge::ForgeClient;
use aspen_forge::cob::{self, Action, Change, CobKind, CobState, CobStatus, SignedChange, Verdict};
use aspen_forge::cob_index::CobSummary;
use aspen_forge::records as forge_records;
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::output;

/// Environment variable naming the signing key file.
pub const SIGNING_KEY_ENV: &str = "ASPEN_SIGNING_KEY_FILE";

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Make the key that signs your issues, patches and reviews (kept, mode 0600, in the
    /// configuration directory).
    Create {
        /// Replace an existing key (what it signed stays signed by the old one).
        #[arg(long)]
        force: bool,
    },
    /// Print your public key.
    Show,
}

/// What both issues and patches take.
#[derive(Debug, clap::Subcommand)]
pub enum IssueCommand {
    /// Open an issue.
    Create {
        repo: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        body: String,
    },
    /// List a repository's issues.
    List(ListArgs),
    /// Show an issue with its comments.
    Show { repo: String, id: String },
    #[command(flatten)]
    Common(CommonCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum PatchCommand {
    /// Propose merging branch --from into branch --onto (both pushed to the repository).
    Create {
        repo: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        onto: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a repository's patches.
    List(ListArgs),
    /// Show a patch with its revisions, reviews and comments.
    Show { repo: String, id: String },
    /// Add a revision: the current head of --from, over the current tip of the target.
    Revise {
        repo: String,
        id: String,
        #[arg(long)]
        from: String,
        #[arg(short = 'm', long, default_value = "")]
        note: String,
    },
    /// Review a revision (the latest, unless --revision names another).
    Review {
        repo: String,
        id: String,
        #[arg(long, conflicts_with_all = ["reject"])]
        accept: bool,
        #[arg(long)]
        reject: bool,
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        #[arg(long)]
        revision: Option<String>,
    },
    /// Merge the latest revision: its target branch fast-forwards to the revision's head,
    /// by the same rules as a push (needs forge:push).
    Merge { repo: String, id: String },
    #[command(flatten)]
    Common(CommonCommand),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    repo: String,
    /// open, closed, merged or all.
    #[arg(long, default_value = "open")]
    state: String,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, clap::Subcommand)]
pub enum CommonCommand {
    /// Comment.
    Comment {
        repo: String,
        id: String,
        #[arg(short = 'm', long)]
        message: String,
        /// The change (comment) this answers.
        #[arg(long)]
        reply_to: Option<String>,
    },
    /// Close it.
    Close { repo: String, id: String },
    /// Open it again.
    Reopen { repo: String, id: String },
    /// Add and remove labels.
    Label {
        repo: String,
        id: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Change the title.
    Retitle { repo: String, id: String, title: String },
}

/// The signing key's file.
pub fn signing_key_file() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(SIGNING_KEY_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let dir = aspen_client::discovery::config_dir()
        .context("no configuration directory: set HOME, XDG_CONFIG_HOME or ASPEN_CONFIG_DIR")?;
    Ok(dir.join("signing.key"))
}

fn signing_key() -> anyhow::Result<iroh::SecretKey> {
    let path = signing_key_file()?;
    if !path.exists() {
        bail!("no signing identity at {}: make one with `aspen identity create`", path.display());
    }
    Ok(aspen_net::identity::read_secret_key(&path)?)
}

pub fn run_identity(ctx: &Ctx, cmd: IdentityCommand) -> anyhow::Result<()> {
    let path = signing_key_file()?;
    let key = match cmd {
        IdentityCommand::Create { force } => {
            if path.exists() && !force {
                bail!("{} already holds a signing key; --force replaces it", path.display());
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let key = iroh::SecretKey::generate();
            aspen_net::identity::write_secret_file(&path, &key.to_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            key
        }
        IdentityCommand::Show => signing_key()?,
    };
    let public = key.public();
    if ctx.json {
        output::print_json(&json!({"public_key": public.to_string(), "file": path.display().to_string()}))?;
    } else {
        output::print_line(&public.to_string())?;
    }
    Ok(())
}

fn author_hex(author: &[u8; 32]) -> String {
    data_encoding::HEXLOWER.encode(author)
}

fn status_name(status: &CobStatus) -> &'static str {
    match status {
        CobStatus::Open => "open",
        CobStatus::Closed => "closed",
        CobStatus::Merged { .. } => "merged",
    }
}

fn summary_json(s: &CobSummary) -> Value {
    json!({
        "id": cob::hex(&s.id),
        "kind": s.kind.name(),
        "title": s.title,
        "state": status_name(&s.status),
        "labels": s.labels,
        "author": author_hex(&s.author),
        "created_ms": s.created_ms,
        "updated_ms": s.updated_ms,
        "changes": s.changes,
        "target": s.target,
        "head": s.head.map(|h| forge_records::hex(&h)),
    })
}

fn state_json(state: &CobState) -> Value {
    let merged = match &state.state {
        CobStatus::Merged { revision, commit } => {
            json!({"revision": cob::hex(revision), "commit": forge_records::hex(commit)})
        }
        _ => Value::Null,
    };
    json!({
        "id": cob::hex(&state.id),
        "kind": state.kind.name(),
        "title": state.title,
        "body": state.body,
        "state": status_name(&state.state),
        "merged": merged,
        "author": author_hex(&state.author),
        "created_ms": state.created_ms,
        "updated_ms": state.updated_ms,
        "labels": state.labels,
        "target": state.target,
        "comments": state.comments.iter().map(|c| json!({
            "id": cob::hex(&c.id),
            "author": author_hex(&c.author),
            "time_ms": c.time_ms,
            "body": c.body,
            "reply_to": c.reply_to.as_ref().map(cob::hex),
        })).collect::<Vec<_>>(),
        "revisions": state.revisions.iter().map(|r| json!({
            "id": cob::hex(&r.id),
            "base": forge_records::hex(&r.base),
            "head": forge_records::hex(&r.head),
            "note": r.note,
            "author": author_hex(&r.author),
            "time_ms": r.time_ms,
        })).collect::<Vec<_>>(),
        "reviews": state.reviews.iter().map(|r| json!({
            "id": cob::hex(&r.id),
            "revision": cob::hex(&r.revision),
            "verdict": format!("{:?}", r.verdict).to_lowercase(),
            "body": r.body,
            "author": author_hex(&r.author),
            "time_ms": r.time_ms,
        })).collect::<Vec<_>>(),
        "heads": state.heads.iter().map(cob::hex).collect::<Vec<_>>(),
    })
}

fn print_state(ctx: &Ctx, state: &CobState) -> anyhow::Result<()> {
    if ctx.json {
        output::print_json(&state_json(state))?;
        return Ok(());
    }
    let short = |a: &[u8; 32]| author_hex(a)[..12].to_string();
    output::print_line(&format!(
        "{} {} [{}] {}",
        state.kind,
        cob::hex(&state.id),
        status_name(&state.state),
        state.title
    ))?;
    output::print_line(&format!("by {}", short(&state.author)))?;
    if let Some(target) = &state.target {
        output::print_line(&format!("onto {target}"))?;
    }
    if !state.labels.is_empty() {
        output::print_line(&format!("labels {}", state.labels.iter().cloned().collect::<Vec<_>>().join(", ")))?;
    }
    if !state.body.is_empty() {
        output::print_line(&format!("\n{}\n", state.body))?;
    }
    for r in &state.revisions {
        output::print_line(&format!(
            "revision {} {}..{} by {}{}",
            cob::short_id(&r.id),
            &forge_records::hex(&r.base)[..12],
            &forge_records::hex(&r.head)[..12],
            short(&r.author),
            if r.note.is_empty() { String::new() } else { format!(": {}", r.note) }
        ))?;
    }
    for r in &state.reviews {
        output::print_line(&format!(
            "review of {} by {}: {:?} {}",
            cob::short_id(&r.revision),
            short(&r.author),
            r.verdict,
            r.body
        ))?;
    }
    for c in &state.comments {
        output::print_line(&format!("comment {} by {}: {}", cob::short_id(&c.id), short(&c.author), c.body))?;
    }
    if let CobStatus::Merged { commit, .. } = &state.state {
        output::print_line(&format!("merged at {}", forge_records::hex(commit)))?;
    }
    Ok(())
}

async fn list(ctx: &Ctx, forge: &ForgeClient, kind: CobKind, args: ListArgs) -> anyhow::Result<()> {
    let wanted = match args.state.as_str() {
        "open" | "closed" | "merged" | "all" => args.state.as_str(),
        other => bail!("--state {other:?}: give open, closed, merged or all"),
    };
    let mut after: Option<String> = None;
    let mut shown = Vec::new();
    loop {
        let (page, more) = forge.list_cobs(&args.repo, kind, after.as_deref(), 1_000).await?;
        after = page.last().map(|s| cob::hex(&s.id));
        shown.extend(page.into_iter().filter(|s| wanted == "all" || status_name(&s.status) == wanted));
        if !more || shown.len() >= args.limit as usize {
            break;
        }
    }
    shown.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
    shown.truncate(args.limit as usize);
    if ctx.json {
        output::print_json(
            &json!({ kind.name().to_string() + "s": shown.iter().map(summary_json).collect::<Vec<_>>() }),
        )?;
        return Ok(());
    }
    for s in &shown {
        let labels = if s.labels.is_empty() { String::new() } else { format!(" ({})", s.labels.join(", ")) };
        output::print_line(&format!("{} {:<6} {}{labels}", cob::short_id(&s.id), status_name(&s.status), s.title))?;
    }
    Ok(())
}

/// Signs a change of `kind` on top of `state`'s heads and sends it.
async fn append(
    forge: &ForgeClient,
    repo: &str,
    state: &CobState,
    actions: Vec<Action>,
    merge: bool,
) -> anyhow::Result<CobState> {
    let key = signing_key()?;
    let change = Change::child(state.kind, state.id, state.heads.clone(), &key.public(), aspen_net::now_ms(), actions);
    change.validate()?;
    let signed: SignedChange = change.sign(&key)?;
    Ok(if merge { forge.merge_patch(repo, &signed).await? } else { forge.append_change(repo, &signed).await? })
}

async fn open(forge: &ForgeClient, repo: &str, kind: CobKind, action: Action) -> anyhow::Result<CobState> {
    let key = signing_key()?;
    let change = Change::root(kind, &key.public(), aspen_net::now_ms(), action);
    change.validate()?;
    Ok(forge.append_change(repo, &change.sign(&key)?).await?)
}

async fn common(ctx: &Ctx, forge: &ForgeClient, kind: CobKind, cmd: CommonCommand) -> anyhow::Result<()> {
    let (repo, id, actions) = match cmd {
        CommonCommand::Comment { repo, id, message, reply_to } => {
            let reply_to = reply_to.map(|r| cob::parse_id(&r)).transpose()?;
            (repo, id, vec![Action::Comment { body: message, reply_to }])
        }
        CommonCommand::Close { repo, id } => (repo, id, vec![Action::Close]),
        CommonCommand::Reopen { repo, id } => (repo, id, vec![Action::Reopen]),
        CommonCommand::Label { repo, id, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                bail!("give --add LABEL or --remove LABEL");
            }
            (repo, id, vec![Action::Label { add, remove }])
        }
        CommonCommand::Retitle { repo, id, title } => (repo, id, vec![Action::EditTitle { title }]),
    };
    let (state, _) = forge.show_cob(&repo, kind, &id).await?;
    print_state(ctx, &append(forge, &repo, &state, actions, false).await?)
}

/// The tip of `branch` in `repo`.
async fn branch_tip(forge: &ForgeClient, repo: &str, branch: &str) -> anyhow::Result<[u8; 20]> {
    let info = forge.show_repo(repo).await?;
    let name = format!("refs/heads/{branch}");
    info.refs
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.id)
        .with_context(|| format!("{repo} has no branch {branch}: push it first"))
}

pub async fn run_issue(ctx: &Ctx, client: &Client, cmd: IssueCommand) -> anyhow::Result<()> {
    let forge = ForgeClient::new(client);
    match cmd {
        IssueCommand::Create { repo, title, body } => {
            print_state(ctx, &open(&forge, &repo, CobKind::Issue, Action::OpenIssue { title, body }).await?)
        }
        IssueCommand::List(args) => list(ctx, &forge, CobKind::Issue, args).await,
        IssueCommand::Show { repo, id } => print_state(ctx, &forge.show_cob(&repo, CobKind::Issue, &id).await?.0),
        IssueCommand::Common(cmd) => common(ctx, &forge, CobKind::Issue, cmd).await,
    }
}

pub async fn run_patch(ctx: &Ctx, client: &Client, cmd: PatchCommand) -> anyhow::Result<()> {
    let forge = ForgeClient::new(client);
    match cmd {
        PatchCommand::Create { repo, from, onto, title, description } => {
            let head = branch_tip(&forge, &repo, &from).await?;
            let base = branch_tip(&forge, &repo, &onto).await?;
            let action = Action::OpenPatch { title, description, target: onto, base, head };
            print_state(ctx, &open(&forge, &repo, CobKind::Patch, action).await?)
        }
        PatchCommand::List(args) => list(ctx, &forge, CobKind::Patch, args).await,
        PatchCommand::Show { repo, id } => {
            let state = forge.show_cob(&repo, CobKind::Patch, &id).await?.0;
            // Each revision's head, with what CI (or anyone reporting) says of it.
            let mut statuses = Vec::with_capacity(state.revisions.len());
            for r in &state.revisions {
                statuses.push(forge.statuses(&repo, r.head).await?);
            }
            if ctx.json {
                let mut value = state_json(&state);
                for (r, s) in value["revisions"].as_array_mut().into_iter().flatten().zip(&statuses) {
                    r["statuses"] = super::forge::statuses_json(s);
                }
                return Ok(output::print_json(&value)?);
            }
            print_state(ctx, &state)?;
            for (r, s) in state.revisions.iter().zip(&statuses) {
                if !s.is_empty() {
                    output::print_line(&format!("statuses of revision {}:", cob::short_id(&r.id)))?;
                    super::forge::print_statuses("  ", s)?;
                }
            }
            Ok(())
        }
        PatchCommand::Revise { repo, id, from, note } => {
            let (state, _) = forge.show_cob(&repo, CobKind::Patch, &id).await?;
            let target = state.target.clone().context("not a patch")?;
            let head = branch_tip(&forge, &repo, &from).await?;
            let base = branch_tip(&forge, &repo, &target).await?;
            print_state(ctx, &append(&forge, &repo, &state, vec![Action::Revise { base, head, note }], false).await?)
        }
        PatchCommand::Review { repo, id, accept, reject, message, revision } => {
            let (state, _) = forge.show_cob(&repo, CobKind::Patch, &id).await?;
            let revision = match revision {
                Some(text) => state
                    .revisions
                    .iter()
                    .find(|r| cob::hex(&r.id).starts_with(&text.to_ascii_lowercase()))
                    .map(|r| r.id)
                    .with_context(|| format!("the patch has no revision {text}"))?,
                None => state.revisions.last().map(|r| r.id).context("the patch has no revision")?,
            };
            let verdict = match (accept, reject) {
                (true, _) => Verdict::Accept,
                (_, true) => Verdict::Reject,
                _ => Verdict::Comment,
            };
            if verdict == Verdict::Comment && message.is_empty() {
                bail!("give --accept, --reject or a review message (-m)");
            }
            let action = Action::Review { revision, verdict, body: message };
            print_state(ctx, &append(&forge, &repo, &state, vec![action], false).await?)
        }
        PatchCommand::Merge { repo, id } => {
            let (state, _) = forge.show_cob(&repo, CobKind::Patch, &id).await?;
            let latest = state.revisions.last().context("the patch has no revision")?;
            let action = Action::Merged { revision: latest.id, commit: latest.head };
            print_state(ctx, &append(&forge, &repo, &state, vec![action], true).await?)
        }
        PatchCommand::Common(cmd) => common(ctx, &forge, CobKind::Patch, cmd).await,
    }
}
