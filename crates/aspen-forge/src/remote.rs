//! `git-remote-aspen`: the git remote helper (gitremote-helpers) behind `aspen://` URLs.
//!
//! It offers git the `connect` capability: for each service git asks for
//! (`git-upload-pack` to fetch, `git-receive-pack` to push) it opens one stream to the forge
//! ([`ForgeRequest::Connect`]) and then carries git's own pack protocol both ways, so
//! negotiation, shallow clones, thin packs and progress are git's. When the forge refuses
//! (no such repository, permission denied), git is told in its own words: an `ERR` packet,
//! which git prints as `fatal: remote error: ...`.
//!
//! URLs: `aspen://default/REPO` finds the cluster as the CLI does (`ASPEN_TICKET`,
//! `ASPEN_TICKET_FILE`, `./.aspen/cluster/cluster.ticket`); `aspen://NAME/REPO` reads the
//! cluster saved as NAME (`aspen cluster save NAME`); `aspen://TICKET/REPO` takes a whole
//! ticket. The token comes from `ASPEN_TOKEN`, `ASPEN_TOKEN_FILE`, or the ticket.

use std::path::PathBuf;

use aspen_client::{ClientConfig, Discovery};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::names::validate_repo_name;
use crate::protocol::{FORGE_ALPN, ForgeRequest, ForgeResponse, GitService};

/// Where an `aspen://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub cluster: ClusterRef,
    pub repo: String,
}

/// The cluster part of an `aspen://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRef {
    /// `default`: the CLI's own discovery.
    Default,
    /// A cluster saved under this name.
    Saved(String),
    /// A whole ticket.
    Ticket(String),
}

impl RemoteUrl {
    /// Parses `aspen://CLUSTER/REPO` (a trailing `/` or `.git` on REPO is dropped).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("aspen://").ok_or_else(|| format!("{url:?} is not an aspen:// URL"))?;
        let (cluster, repo) =
            rest.split_once('/').ok_or_else(|| format!("{url:?} has no repository: use aspen://CLUSTER/REPO"))?;
        let repo = repo.trim_end_matches('/');
        let repo = repo.strip_suffix(".git").unwrap_or(repo);
        validate_repo_name(repo).map_err(|e| e.to_string())?;
        let cluster = if cluster == "default" {
            ClusterRef::Default
        } else if cluster.len() > 64 {
            // Longer than any saved name: a whole ticket, checked when it is decoded.
            ClusterRef::Ticket(cluster.to_string())
        } else {
            aspen_client::discovery::validate_cluster_name(cluster)?;
            ClusterRef::Saved(cluster.to_string())
        };
        Ok(RemoteUrl { cluster, repo: repo.to_string() })
    }

    /// How to find the cluster and the token.
    pub fn discovery(&self) -> Result<Discovery, String> {
        let mut d = Discovery::default();
        match &self.cluster {
            ClusterRef::Default => {}
            ClusterRef::Saved(name) => d.ticket_file = Some(aspen_client::discovery::saved_cluster_file(name)?),
            ClusterRef::Ticket(t) => d.ticket = Some(t.clone()),
        }
        d.identity_file = std::env::var_os("ASPEN_IDENTITY_FILE").map(PathBuf::from);
        Ok(d)
    }
}

/// An `ERR` packet: how a git server tells the client why it refuses.
fn err_packet(text: &str) -> Vec<u8> {
    let mut text = format!("ERR {}\n", text.replace('\n', " "));
    text.truncate(crate::pktline::MAX_PAYLOAD_BYTES);
    crate::pktline::encode(text.as_bytes())
}

/// Runs the helper: `git-remote-aspen REMOTE [URL]` speaking to git on stdin and stdout.
/// Returns the process exit status.
pub async fn run(args: Vec<String>) -> i32 {
    let url = match args.as_slice() {
        [_, remote] => remote.clone(),
        [_, _, url, ..] => url.clone(),
        _ => {
            eprintln!("usage: git-remote-aspen REMOTE [URL] (git runs it for aspen:// remotes)");
            return 2;
        }
    };
    let url = match RemoteUrl::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("fatal: {e}");
            return 128;
        }
    };
    match serve_git(&url, tokio::io::stdin(), tokio::io::stdout()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fatal: {e}");
            128
        }
    }
}

/// Answers git's helper commands on `input`/`output` until a `connect` takes the streams.
async fn serve_git(
    url: &RemoteUrl,
    input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
) -> Result<(), String> {
    let mut input = BufReader::new(input);
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).await.map_err(|e| format!("reading from git: {e}"))? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let reply: &[u8] = if command == "capabilities" {
            b"connect\n\n"
        } else if command.is_empty() {
            return Ok(());
        } else if command.starts_with("option ") {
            b"unsupported\n"
        } else if let Some(service) = command.strip_prefix("connect ") {
            let service =
                GitService::from_git_name(service).ok_or_else(|| format!("unknown git service {service:?}"))?;
            return connect(url, service, input, output).await;
        } else {
            return Err(format!("git asked for {command:?}, which git-remote-aspen does not offer"));
        };
        output.write_all(reply).await.map_err(|e| format!("writing to git: {e}"))?;
        output.flush().await.map_err(|e| format!("writing to git: {e}"))?;
    }
}

/// Opens the service and carries bytes both ways until the forge is done.
async fn connect(
    url: &RemoteUrl,
    service: GitService,
    mut input: BufReader<impl AsyncRead + Unpin>,
    mut output: impl AsyncWrite + Unpin,
) -> Result<(), String> {
    let write = |e: std::io::Error| format!("writing to git: {e}");
    // git waits for an empty line before it speaks the protocol over the helper's pipes.
    output.write_all(b"\n").await.map_err(write)?;
    let opened = open(url, service).await;
    let (client, mut stream) = match opened {
        Ok(opened) => opened,
        Err(why) => {
            output.write_all(&err_packet(&why)).await.map_err(write)?;
            output.flush().await.map_err(write)?;
            return Ok(());
        }
    };
    output.flush().await.map_err(write)?;
    let to_forge = async {
        let _ = tokio::io::copy_buf(&mut input, &mut stream.send).await;
        let _ = stream.send.finish();
        std::future::pending::<()>().await
    };
    let from_forge = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.recv.read(&mut buf).await {
                Ok(Some(n)) => {
                    output.write_all(&buf[..n]).await.map_err(write)?;
                    output.flush().await.map_err(write)?;
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("the forge connection broke: {e}")),
            }
        }
    };
    let result = tokio::select! {
        done = from_forge => done,
        () = to_forge => unreachable!(),
    };
    client.close().await;
    result
}

/// Connects to the cluster and asks for `service` on the repository.
async fn open(url: &RemoteUrl, service: GitService) -> Result<(aspen_client::Client, aspen_client::AppStream), String> {
    let discovery = url.discovery()?;
    let client =
        discovery.connect(ClientConfig::default()).await.map_err(|e| format!("cannot reach the cluster: {e}"))?;
    let channel = client.app(FORGE_ALPN);
    let mut stream = channel.open_stream().await.map_err(|e| format!("cannot reach the forge: {e}"))?;
    let request = ForgeRequest::Connect {
        repo: url.repo.clone(),
        service,
        protocol: std::env::var("GIT_PROTOCOL").unwrap_or_default(),
    };
    aspen_net::write_frame(&mut stream.send, &request).await.map_err(|e| format!("cannot reach the forge: {e}"))?;
    match aspen_net::read_frame::<ForgeResponse>(&mut stream.recv).await {
        Ok(Some(ForgeResponse::Connected)) => Ok((client, stream)),
        Ok(Some(ForgeResponse::Error(e))) => Err(e.to_string()),
        Ok(Some(other)) => Err(format!("the forge answered {other:?}")),
        Ok(None) => Err("the forge closed the stream".into()),
        Err(e) => Err(format!("the forge's answer is unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_cluster_and_a_repository() {
        let u = RemoteUrl::parse("aspen://default/team/app").unwrap();
        assert_eq!((u.cluster, u.repo.as_str()), (ClusterRef::Default, "team/app"));
        let u = RemoteUrl::parse("aspen://prod/app.git/").unwrap();
        assert_eq!((u.cluster, u.repo.as_str()), (ClusterRef::Saved("prod".into()), "app"));
        for bad in ["https://x/y", "aspen://default", "aspen://default/../x", "aspen://bad name/x"] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn git_is_offered_connect_and_unknown_commands_are_refused() {
        let url = RemoteUrl::parse("aspen://default/x").unwrap();
        let mut out = Vec::new();
        serve_git(&url, &b"capabilities\noption progress true\n\n"[..], &mut out).await.unwrap();
        assert_eq!(out, b"connect\n\nunsupported\n");
        let err = serve_git(&url, &b"fetch 123 refs/heads/main\n"[..], &mut Vec::new()).await.unwrap_err();
        assert!(err.contains("does not offer"), "{err}");
        let err = serve_git(&url, &b"connect git-frobnicate\n"[..], &mut Vec::new()).await.unwrap_err();
        assert!(err.contains("unknown git service"), "{err}");
    }
}
