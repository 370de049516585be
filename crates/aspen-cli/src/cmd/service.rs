//! `aspen service`: register an instance while a command runs (or until Ctrl-C), list the
//! live instances of a service, and watch them come and go.
//!
//! The registration is a key on a session lease this process keeps alive: if the process
//! dies or is cut off for longer than `--ttl`, the instance disappears. If the registration
//! is lost while this process lives (a long network cut), it registers again.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aspen_client::Client;
use aspen_coord::{Instance, Registration, Service, ServiceChange, ServiceInstance, Session};
use serde_json::{Value, json};

use crate::cmd::coord::{CommandFailed, parse_name};
use crate::context::Ctx;
use crate::duration::parse_duration;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Register an instance while a command runs (after `--`), or until Ctrl-C without one.
    Register {
        /// The service's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// This instance's id, unique within the service.
        #[arg(long, value_parser = parse_name)]
        id: String,
        /// Where clients reach the instance (host:port, a URL, ...).
        #[arg(long)]
        addr: String,
        /// A tag; repeatable.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Metadata as KEY=VALUE; repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// Session lease TTL: how soon the instance disappears if this process dies.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// The command to run while registered. A failing command's exit status is aspen's.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List the live instances of a service: `ID ADDR tags=.. meta=..` lines, in id order.
    List {
        #[arg(value_parser = parse_name)]
        name: String,
        /// Only instances with this tag; repeatable, all must match.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
    },
    /// Print a service's instances, then `UP ...` / `DOWN ID` lines as they change, until Ctrl-C.
    Watch {
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("metadata {text:?} is not KEY=VALUE")),
    }
}

pub async fn run(ctx: &Ctx, cmd: ServiceCommand) -> anyhow::Result<()> {
    ctx.with_client(async |client| match cmd {
        ServiceCommand::Register { name, id, addr, tags, meta, ttl, command } => {
            let instance = Instance { addr, tags, meta: meta.into_iter().collect::<BTreeMap<_, _>>() };
            register_while_running(client, &Service::new(client, &name)?, &id, &instance, ttl, &command).await
        }
        ServiceCommand::List { name, tags } => {
            let instances = Service::new(client, &name)?.discover(&tags).await?;
            if ctx.json {
                let list: Vec<Value> = instances.iter().map(instance_json).collect();
                output::print_json(&json!({"service": name, "instances": list}))?;
            } else {
                for i in &instances {
                    output::print_line(&instance_line(i))?;
                }
            }
            Ok(())
        }
        ServiceCommand::Watch { name } => watch(ctx, &Service::new(client, &name)?).await,
    })
    .await
}

/// `ID ADDR tags=a,b meta=k=v,k2=v2`.
fn instance_line(i: &ServiceInstance) -> String {
    let meta: Vec<String> = i.instance.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} {} tags={} meta={}", i.id, i.instance.addr, i.instance.tags.join(","), meta.join(","))
}

fn instance_json(i: &ServiceInstance) -> Value {
    json!({
        "id": i.id,
        "addr": i.instance.addr,
        "tags": i.instance.tags,
        "meta": i.instance.meta,
        "lease": i.lease.map(|l| l.0),
        "revision": i.revision,
    })
}

fn print_change(ctx: &Ctx, change: &ServiceChange) -> anyhow::Result<()> {
    match (ctx.json, change) {
        (true, ServiceChange::Up(i)) => {
            let mut v = instance_json(i);
            v["type"] = json!("up");
            output::print_json(&v)?;
        }
        (true, ServiceChange::Down { id }) => output::print_json(&json!({"type": "down", "id": id}))?,
        (false, ServiceChange::Up(i)) => output::print_line(&format!("UP {}", instance_line(i)))?,
        (false, ServiceChange::Down { id }) => output::print_line(&format!("DOWN {id}"))?,
    }
    Ok(())
}

async fn watch(ctx: &Ctx, service: &Service) -> anyhow::Result<()> {
    let mut watch = service.watch().await?;
    for i in watch.instances() {
        print_change(ctx, &ServiceChange::Up(i.clone()))?;
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            change = watch.next() => print_change(ctx, &change?)?,
        }
    }
}

/// A registration and the session it lives in.
struct Registered {
    session: Session,
    registration: Registration,
}

async fn register(
    client: &Client,
    service: &Service,
    id: &str,
    instance: &Instance,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let session = Session::new(client.clone(), ttl).await.context("cannot start a service session")?;
    match service.register(&session, id, instance).await {
        Ok(registration) => Ok(Registered { session, registration }),
        Err(e) => {
            let _ = session.close().await;
            Err(e).with_context(|| format!("cannot register {id} in service {}", service.name()))
        }
    }
}

async fn register_while_running(
    client: &Client,
    service: &Service,
    id: &str,
    instance: &Instance,
    ttl: Duration,
    command: &[String],
) -> anyhow::Result<()> {
    // Listening for SIGINT from here on keeps Ctrl-C from killing this process: without a
    // command it ends the registration; with one it reaches the command (same process
    // group), and we deregister once the command exits.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let mut watch = service.watch().await?;
    let mut current = register(client, service, id, instance, ttl).await?;
    let result = async {
        let mut child = match command.split_first() {
            Some((program, args)) => Some(
                tokio::process::Command::new(program)
                    .args(args)
                    .spawn()
                    .with_context(|| format!("cannot run {program}"))?,
            ),
            None => None,
        };
        loop {
            let exited = async {
                match child.as_mut() {
                    Some(child) => child.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = exited => {
                    let status = status.context("cannot wait for the command")?;
                    return if status.success() { Ok(()) } else { Err(CommandFailed(status).into()) };
                }
                _ = interrupts.recv() => {
                    if command.is_empty() {
                        return Ok(());
                    }
                }
                change = watch.next() => match change? {
                    ServiceChange::Down { id: gone } if gone == id => {
                        eprintln!(
                            "warning: instance {id} of service {} was lost (its session ended); registering again",
                            service.name()
                        );
                        let _ = current.session.close().await;
                        current = register(client, service, id, instance, ttl).await?;
                    }
                    ServiceChange::Up(i) if i.id == id && i.lease != Some(current.session.lease()) => {
                        bail!("instance {id} of service {} was registered again by another session", service.name());
                    }
                    _ => {}
                },
            }
        }
    }
    .await;
    let deregistered = current.registration.deregister().await;
    let _ = current.session.close().await;
    result?;
    deregistered.context("cannot deregister")
}
