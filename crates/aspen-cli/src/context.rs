//! What every command gets: the global flags, and how to reach the cluster they name.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aspen_client::{Client, ClientConfig, ClusterTicket, Discovery};
use aspen_net::token::Token;

/// The global flags, resolved.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Print JSON instead of text.
    pub json: bool,
    /// Longest one request may take, retries included.
    pub timeout: Duration,
    /// Where the cluster and the token come from (the client library's rules).
    discovery: Discovery,
}

impl Ctx {
    pub fn new(json: bool, timeout: Duration, ticket: Option<String>, ticket_file: Option<PathBuf>) -> Self {
        Ctx { json, timeout, discovery: Discovery { ticket, ticket_file, ..Discovery::default() } }
    }

    /// Sets the client key file (`--identity-file`).
    pub fn with_identity(mut self, identity_file: Option<PathBuf>) -> Self {
        self.discovery.identity_file = identity_file;
        self
    }

    /// The client key from `--identity-file`, created on first use.
    pub fn identity(&self) -> anyhow::Result<Option<iroh::SecretKey>> {
        Ok(self.discovery.identity()?)
    }

    /// The token to present with `ticket`: an explicit one (see [`Ctx::token`]), else the
    /// ticket's own.
    pub fn token_for(&self, ticket: &ClusterTicket) -> anyhow::Result<Option<Token>> {
        Ok(self.discovery.token_for(ticket)?)
    }

    /// Sets the explicit token sources (`--token`, `--token-file`).
    pub fn with_token(mut self, token: Option<String>, token_file: Option<PathBuf>) -> Self {
        self.discovery.token = token;
        self.discovery.token_file = token_file;
        self
    }

    /// The token to present: --token, --token-file, $ASPEN_TOKEN, $ASPEN_TOKEN_FILE, in
    /// that order; `None` leaves the ticket's own token (if any) in use.
    pub fn token(&self) -> anyhow::Result<Option<Token>> {
        Ok(self.discovery.explicit_token()?)
    }

    /// Client time bounds from `--timeout`.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::with_request_timeout(self.timeout);
        config.read_attempt_timeout = config.read_attempt_timeout.min(self.timeout);
        config
    }

    /// The cluster ticket, from the first source that has one.
    pub fn ticket(&self) -> anyhow::Result<ClusterTicket> {
        Ok(self.discovery.ticket()?)
    }

    /// A client for the cluster named by the ticket.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let ticket = self.ticket()?;
        let token = self.token_for(&ticket)?;
        Client::over_nodes_as(ticket.nodes.clone(), self.client_config(), token, self.identity()?)
            .await
            .context("cannot connect to the cluster")
    }

    /// Connects, runs `command` with the client, and closes the client whatever happened.
    pub async fn with_client<T>(&self, command: impl AsyncFnOnce(&Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let client = self.client().await?;
        let result = command(&client).await;
        client.close().await;
        result
    }
}

/// An error whose message was already printed (for example a failed compare shown as
/// JSON): the process exits with status 1 and prints nothing more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);

/// The command reported its outcome itself and the process exits with this status (a job's
/// exit code passed on, as `aspen vm run` does).
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitWith(pub u8);
