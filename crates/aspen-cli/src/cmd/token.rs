//! `aspen token`: make narrower tokens from the one you hold, read tokens, revoke them.
//!
//! `create` works offline: it signs a new link with the holder secret that travels inside
//! a bearer token which may delegate (the root token does). `revoke` asks the cluster.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_core::capability::Capability;
use aspen_net::token::{Audience, LinkSpec, Token, cluster_id_text, link_hash};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::context::Ctx;
use crate::duration::parse_duration;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a narrower token from the one in use (--token, ASPEN_TOKEN, the ticket's).
    ///
    /// Prefixes are byte prefixes: `app/` covers `app/x`, `app` also covers `app2`.
    Create(CreateArgs),
    /// Show what a token grants, to whom, and until when.
    Inspect {
        /// The token (default: the one in use).
        token: Option<String>,
    },
    /// Print this client's public key (from --identity-file), for `create --audience`.
    Identity,
    /// Revoke a token, and every token made from it, on every node.
    Revoke {
        /// A token, or a token id (64 hex digits, as `inspect` shows).
        token_or_id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Allow reading keys with this prefix (repeatable).
    #[arg(long = "read", value_name = "PREFIX")]
    pub read: Vec<String>,
    /// Allow writing keys with this prefix (repeatable).
    #[arg(long = "write", value_name = "PREFIX")]
    pub write: Vec<String>,
    /// Allow deleting keys with this prefix (repeatable).
    #[arg(long = "delete", value_name = "PREFIX")]
    pub delete: Vec<String>,
    /// Allow watching keys with this prefix (repeatable).
    #[arg(long = "watch", value_name = "PREFIX")]
    pub watch: Vec<String>,
    /// Allow membership changes, snapshots and revocations.
    #[arg(long)]
    pub admin: bool,
    /// Allow reading every blob (the same as --app blob:read:).
    #[arg(long)]
    pub blob_read: bool,
    /// Allow adding blobs and every pin (the same as --app blob:write:).
    #[arg(long)]
    pub blob_write: bool,
    /// An application right, APP:RIGHT:SCOPE (repeatable), e.g. forge:push:repos/aspen/ or
    /// blob:write:forge/. The cluster is asked which apps and rights it serves.
    #[arg(long = "app", value_name = "APP:RIGHT:SCOPE", value_parser = aspen_app::rights::parse)]
    pub app: Vec<Capability>,
    /// Do not ask the cluster whether it serves the apps of --app (a token for an app the
    /// cluster does not serve is refused when presented).
    #[arg(long)]
    pub no_check_apps: bool,
    /// How long the token is valid (e.g. 1h, 30m, 7d).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub ttl: Duration,
    /// Bind the token to this client key (an iroh public key): only that client may use it.
    #[arg(long, value_name = "KEY")]
    pub audience: Option<String>,
    /// Forbid making further tokens from this one.
    #[arg(long)]
    pub no_delegate: bool,
}

use aspen_net::now_ms;

fn capabilities(args: &CreateArgs) -> anyhow::Result<Vec<Capability>> {
    let mut caps = Vec::new();
    caps.extend(args.read.iter().map(|p| Capability::Read(p.as_bytes().to_vec())));
    caps.extend(args.write.iter().map(|p| Capability::Write(p.as_bytes().to_vec())));
    caps.extend(args.delete.iter().map(|p| Capability::Delete(p.as_bytes().to_vec())));
    caps.extend(args.watch.iter().map(|p| Capability::Watch(p.as_bytes().to_vec())));
    if args.admin {
        caps.push(Capability::ClusterAdmin);
    }
    let blob = |right: &str| Capability::App { app: "blob".into(), right: right.into(), scope: Vec::new() };
    if args.blob_read {
        caps.push(blob("read"));
    }
    if args.blob_write {
        caps.push(blob("write"));
    }
    caps.extend(args.app.iter().cloned());
    if caps.is_empty() {
        bail!(
            "a token needs at least one right: --read, --write, --delete, --watch, --admin, --blob-read, --blob-write or --app"
        );
    }
    Ok(caps)
}

/// Checks every app right in `caps` against the apps the cluster serves: an unknown app or
/// right is refused here, not later when the token is presented.
async fn check_apps(ctx: &Ctx, caps: &[Capability]) -> anyhow::Result<()> {
    let wanted: Vec<(&str, &str)> = caps
        .iter()
        .filter_map(|c| match c {
            Capability::App { app, right, .. } => Some((app.as_str(), right.as_str())),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let apps = ctx
        .with_client(async |client| match client.request(aspen_core::api::ClientRequest::Apps).await? {
            aspen_core::api::ClientResponse::Apps { apps } => Ok(apps),
            other => bail!("the cluster answered the apps request with {other:?}"),
        })
        .await
        .context("cannot ask the cluster which apps it serves (pass --no-check-apps to skip)")?;
    for (app, right) in wanted {
        let Some(info) = apps.iter().find(|a| a.name == app) else {
            let served: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            bail!("--app {app}:{right}:...: the cluster serves no app {app:?} (it serves: {})", served.join(", "));
        };
        if !info.rights.iter().any(|r| r == right) {
            bail!("--app {app}:{right}:...: app {app} has no right {right:?} (its rights: {})", info.rights.join(", "));
        }
    }
    Ok(())
}

/// The token in use: explicit sources first, then the ticket's.
fn token_in_use(ctx: &Ctx) -> anyhow::Result<Token> {
    if let Some(t) = ctx.token()? {
        return Ok(t);
    }
    let ticket = ctx.ticket().context("no token given, and no ticket to take one from")?;
    ctx.token_for(&ticket)?.context("no token: pass --token or --token-file, or use a ticket that carries one")
}

fn describe_cap(c: &Capability) -> String {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match c {
        Capability::All => "all".into(),
        Capability::Read(p) => format!("read {:?}", s(p)),
        Capability::Write(p) => format!("write {:?}", s(p)),
        Capability::Delete(p) => format!("delete {:?}", s(p)),
        Capability::Watch(p) => format!("watch {:?}", s(p)),
        Capability::ClusterAdmin => "cluster-admin".into(),
        Capability::BlobRead => "blob-read".into(),
        Capability::BlobWrite => "blob-write".into(),
        Capability::App { app, right, scope } => format!("app {app}:{right} {:?}", s(scope)),
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn parse_id(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.starts_with(aspen_net::token::TOKEN_PREFIX) {
        return Ok(Token::decode(text)?.id());
    }
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .with_context(|| format!("expected a token or a token id of 64 hex digits, got {text:?}"))
}

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => {
            let parent = token_in_use(ctx)?;
            let Some(secret) = parent.holder_secret else {
                bail!(
                    "the token in use cannot make new tokens: it carries no holder secret (it was made with --no-delegate, or is bound to a client key)"
                );
            };
            let audience = match &args.audience {
                Some(k) => Audience::Key(
                    *iroh::PublicKey::from_str(k).map_err(|e| anyhow::anyhow!("--audience {k:?}: {e}"))?.as_bytes(),
                ),
                None => Audience::Bearer,
            };
            let caps = capabilities(&args)?;
            if !args.no_check_apps {
                check_apps(ctx, &caps).await?;
            }
            let now = now_ms();
            let spec = LinkSpec {
                caps,
                audience,
                not_before_ms: now.saturating_sub(60_000),
                expires_ms: Some(now.saturating_add(args.ttl.as_millis() as u64)),
                may_delegate: !args.no_delegate,
            };
            let child = parent.delegate(&iroh::SecretKey::from_bytes(&secret), spec)?;
            if ctx.json {
                output::print_json(&json!({"token": child.encode(), "id": hex(&child.id())}))?;
            } else {
                println!("{}", child.encode());
            }
            Ok(())
        }
        TokenCommand::Inspect { token } => {
            let token = match token {
                Some(t) => Token::decode(&t)?,
                None => token_in_use(ctx)?,
            };
            let links: Vec<_> = token
                .links
                .iter()
                .map(|l| {
                    json!({
                        "id": hex(&link_hash(l)),
                        "cluster_id": cluster_id_text(&l.link.cluster_id),
                        "issuer": hex(&l.link.issuer),
                        "audience": match l.link.audience { Audience::Bearer => "bearer".to_string(), Audience::Key(k) => hex(&k) },
                        "caps": l.link.caps.iter().map(describe_cap).collect::<Vec<_>>(),
                        "not_before_ms": l.link.not_before_ms,
                        "expires_ms": l.link.expires_ms,
                        "may_delegate": l.link.may_delegate,
                    })
                })
                .collect();
            if ctx.json {
                output::print_json(&json!({"id": hex(&token.id()), "links": links}))?;
                return Ok(());
            }
            println!("token id {}", hex(&token.id()));
            for (i, l) in token.links.iter().enumerate() {
                let link = &l.link;
                let caps: Vec<String> = link.caps.iter().map(describe_cap).collect();
                let audience = match link.audience {
                    Audience::Bearer => "bearer (whoever holds it)".to_string(),
                    Audience::Key(k) => format!("key {}", hex(&k)),
                };
                let expiry = match link.expires_ms {
                    Some(e) => format!("expires at {e} (unix ms)"),
                    None => "no expiry".into(),
                };
                println!(
                    "link {i}: cluster {}; {}; for {audience}; {expiry}; {}",
                    cluster_id_text(&link.cluster_id),
                    caps.join(", "),
                    if link.may_delegate { "may delegate" } else { "may not delegate" }
                );
            }
            Ok(())
        }
        TokenCommand::Identity => {
            let Some(key) = ctx.identity()? else {
                bail!("pass --identity-file PATH (or set ASPEN_IDENTITY_FILE): the key is kept there");
            };
            println!("{}", key.public());
            Ok(())
        }
        TokenCommand::Revoke { token_or_id } => {
            let id = parse_id(&token_or_id)?;
            ctx.with_client(async |client| Ok(client.revoke_token(id).await?)).await?;
            if ctx.json {
                output::print_json(&json!({"revoked": hex(&id)}))?;
            } else {
                println!("revoked {}", hex(&id));
            }
            Ok(())
        }
    }
}
