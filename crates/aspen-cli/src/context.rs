//! What every command gets: the global flags, and how to reach the cluster they name.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use aspen_client::{Client, ClientConfig, ClusterTicket};

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
}

impl Ctx {
    pub fn new(json: bool, timeout: Duration, ticket: Option<String>, ticket_file: Option<PathBuf>) -> Self {
        Ctx { json, timeout, ticket, ticket_file }
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
        Client::connect_with_config(&ticket, self.client_config()).await.context("cannot connect to the cluster")
    }
}

/// An error whose message was already printed (for example a failed compare shown as
/// JSON): the process exits with status 1 and prints nothing more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);
