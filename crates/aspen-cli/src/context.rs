//! What every command gets: the global flags, and how to reach the cluster they name.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aspen_client::{Client, ClientConfig, ClusterTicket};
use aspen_net::token::Token;

use crate::ticket_source::TicketInputs;

/// The global flags, resolved.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Print JSON instead of text.
    pub json: bool,
    /// Longest one request may take, retries included.
    pub timeout: Duration,
    ticket: Option<String>,
    ticket_file: Option<PathBuf>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    identity_file: Option<PathBuf>,
}

impl Ctx {
    pub fn new(json: bool, timeout: Duration, ticket: Option<String>, ticket_file: Option<PathBuf>) -> Self {
        Ctx { json, timeout, ticket, ticket_file, token: None, token_file: None, identity_file: None }
    }

    /// Sets the client key file (`--identity-file`).
    pub fn with_identity(mut self, identity_file: Option<PathBuf>) -> Self {
        self.identity_file = identity_file;
        self
    }

    /// The client key from `--identity-file`, created on first use.
    pub fn identity(&self) -> anyhow::Result<Option<iroh::SecretKey>> {
        match &self.identity_file {
            Some(path) => Ok(Some(aspen_net::identity::load_or_create_secret_key(path)?)),
            None => Ok(None),
        }
    }

    /// The token to present with `ticket`: an explicit one (see [`Ctx::token`]), else the
    /// ticket's own.
    pub fn token_for(&self, ticket: &ClusterTicket) -> anyhow::Result<Option<Token>> {
        match self.token()? {
            Some(t) => Ok(Some(t)),
            None => ticket.token.as_deref().map(Token::from_bytes).transpose().context("bad token in the ticket"),
        }
    }

    /// Sets the explicit token sources (`--token`, `--token-file`).
    pub fn with_token(mut self, token: Option<String>, token_file: Option<PathBuf>) -> Self {
        self.token = token;
        self.token_file = token_file;
        self
    }

    /// The token to present: --token, --token-file, $ASPEN_TOKEN, $ASPEN_TOKEN_FILE, in
    /// that order; `None` leaves the ticket's own token (if any) in use.
    pub fn token(&self) -> anyhow::Result<Option<Token>> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (text, source) = if let Some(t) = &self.token {
            (t.clone(), "--token".to_string())
        } else if let Some(path) = &self.token_file {
            (read_token_file(path)?, format!("--token-file {}", path.display()))
        } else if let Some(t) = env("ASPEN_TOKEN") {
            (t, "$ASPEN_TOKEN".to_string())
        } else if let Some(path) = env("ASPEN_TOKEN_FILE") {
            (read_token_file(std::path::Path::new(&path))?, format!("$ASPEN_TOKEN_FILE {path}"))
        } else {
            return Ok(None);
        };
        Token::decode(&text).map(Some).with_context(|| format!("bad token in {source}"))
    }

    /// Client time bounds from `--timeout`.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::with_request_timeout(self.timeout);
        config.read_attempt_timeout = config.read_attempt_timeout.min(self.timeout);
        config
    }

    /// The cluster ticket, from the first source that has one.
    pub fn ticket(&self) -> anyhow::Result<ClusterTicket> {
        let source = TicketInputs::gather(self.ticket.clone(), self.ticket_file.clone()).choose()?;
        Ok(source.load()?)
    }

    /// A client for the cluster named by the ticket.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let ticket = self.ticket()?;
        let token = self.token_for(&ticket)?;
        Client::over_nodes_as(ticket.nodes.clone(), self.client_config(), token, self.identity()?)
            .await
            .context("cannot connect to the cluster")
    }
}

fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))
}

/// An error whose message was already printed (for example a failed compare shown as
/// JSON): the process exits with status 1 and prints nothing more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);
