//! `aspen forge`: git repositories hosted on the cluster (the forge app).

use anyhow::bail;
use aspen_client::Client;
use aspen_forge::{ForgeClient, RepoInfo};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum ForgeCommand {
    /// Create, list, show, delete and protect repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
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
    /// Delete a repository and its refs (needs forge:admin).
    Delete { name: String },
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

pub async fn run(ctx: &Ctx, client: &Client, cmd: ForgeCommand) -> anyhow::Result<()> {
    let forge = ForgeClient::new(client);
    let ForgeCommand::Repo(cmd) = cmd;
    match cmd {
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
        RepoCommand::Show { name } => print_repo(ctx, &forge.show_repo(&name).await?),
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
