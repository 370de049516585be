//! How a tool finds its cluster and its token, the same way for every tool (the `aspen`
//! CLI, `git-remote-aspen`, a service): [`Discovery`].
//!
//! The ticket comes from, in order: an explicit ticket (`--ticket`), an explicit file
//! (`--ticket-file`), `ASPEN_TICKET`, `ASPEN_TICKET_FILE`, then
//! `./.aspen/cluster/cluster.ticket` as written by `aspen cluster up`. The token from: an
//! explicit token (`--token`), an explicit file (`--token-file`), `ASPEN_TOKEN`,
//! `ASPEN_TOKEN_FILE`, then the token the ticket carries.

use std::path::{Path, PathBuf};

use aspen_net::token::{Token, TokenError};
use aspen_net::{ClusterTicket, TicketError};

use crate::{Client, ClientConfig, ClientError};

/// Environment variable holding a ticket.
pub const TICKET_ENV: &str = "ASPEN_TICKET";
/// Environment variable naming a file holding a ticket.
pub const TICKET_FILE_ENV: &str = "ASPEN_TICKET_FILE";
/// Environment variable holding a capability token.
pub const TOKEN_ENV: &str = "ASPEN_TOKEN";
/// Environment variable naming a file holding a capability token.
pub const TOKEN_FILE_ENV: &str = "ASPEN_TOKEN_FILE";
/// The ticket `aspen cluster up` writes, relative to the working directory.
pub const DEFAULT_TICKET_FILE: &str = ".aspen/cluster/cluster.ticket";

/// One place a ticket may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketSource {
    Flag(String),
    FlagFile(PathBuf),
    Env(String),
    EnvFile(PathBuf),
    DefaultFile(PathBuf),
}

/// Why no ticket could be had.
#[derive(Debug, thiserror::Error)]
pub enum TicketSourceError {
    #[error(
        "no cluster ticket: pass --ticket TICKET or --ticket-file PATH, set {TICKET_ENV} or {TICKET_FILE_ENV}, \
         or run `aspen cluster up` in this directory (it writes {DEFAULT_TICKET_FILE})"
    )]
    Missing,
    #[error("cannot read the ticket file {path} (from {origin}): {source}")]
    Read { path: PathBuf, origin: &'static str, source: std::io::Error },
    #[error("the ticket from {origin} is unusable: {source}")]
    Bad { origin: &'static str, source: TicketError },
}

/// The values the ticket may come from, as found on the command line and in the environment.
#[derive(Debug, Clone, Default)]
pub struct TicketInputs {
    pub flag: Option<String>,
    pub flag_file: Option<PathBuf>,
    pub env: Option<String>,
    pub env_file: Option<PathBuf>,
    /// The default file, when it exists.
    pub default_file: Option<PathBuf>,
}

impl TicketInputs {
    /// The flags given, plus the environment and the default file of this process.
    pub fn gather(flag: Option<String>, flag_file: Option<PathBuf>) -> Self {
        let non_empty = |v: String| if v.trim().is_empty() { None } else { Some(v) };
        let default = PathBuf::from(DEFAULT_TICKET_FILE);
        TicketInputs {
            flag,
            flag_file,
            env: std::env::var(TICKET_ENV).ok().and_then(non_empty),
            env_file: std::env::var(TICKET_FILE_ENV).ok().and_then(non_empty).map(PathBuf::from),
            default_file: default.is_file().then_some(default),
        }
    }

    /// The first source present, in the documented order.
    pub fn choose(self) -> Result<TicketSource, TicketSourceError> {
        if let Some(t) = self.flag {
            return Ok(TicketSource::Flag(t));
        }
        if let Some(p) = self.flag_file {
            return Ok(TicketSource::FlagFile(p));
        }
        if let Some(t) = self.env {
            return Ok(TicketSource::Env(t));
        }
        if let Some(p) = self.env_file {
            return Ok(TicketSource::EnvFile(p));
        }
        self.default_file.map(TicketSource::DefaultFile).ok_or(TicketSourceError::Missing)
    }
}

impl TicketSource {
    fn origin(&self) -> &'static str {
        match self {
            TicketSource::Flag(_) => "--ticket",
            TicketSource::FlagFile(_) => "--ticket-file",
            TicketSource::Env(_) => TICKET_ENV,
            TicketSource::EnvFile(_) => TICKET_FILE_ENV,
            TicketSource::DefaultFile(_) => DEFAULT_TICKET_FILE,
        }
    }

    /// Reads and decodes the ticket.
    pub fn load(&self) -> Result<ClusterTicket, TicketSourceError> {
        let origin = self.origin();
        let text = match self {
            TicketSource::Flag(t) | TicketSource::Env(t) => t.clone(),
            TicketSource::FlagFile(p) | TicketSource::EnvFile(p) | TicketSource::DefaultFile(p) => {
                read_ticket_file(p).map_err(|source| TicketSourceError::Read { path: p.clone(), origin, source })?
            }
        };
        ClusterTicket::decode(&text).map_err(|source| TicketSourceError::Bad { origin, source })
    }
}

/// What a tool was told about where its cluster is and who it is; everything else comes
/// from the environment and the working directory.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// A ticket given explicitly (`--ticket`).
    pub ticket: Option<String>,
    /// A ticket file given explicitly (`--ticket-file`).
    pub ticket_file: Option<PathBuf>,
    /// A token given explicitly (`--token`).
    pub token: Option<String>,
    /// A token file given explicitly (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// The client's key file (created, mode 0600, if missing): what a key-bound token names.
    pub identity_file: Option<PathBuf>,
}

/// Why a tool could not find its cluster or its credentials.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Ticket(#[from] TicketSourceError),
    #[error("cannot read the token file {path} (from {origin}): {source}")]
    TokenFile { path: PathBuf, origin: String, source: std::io::Error },
    #[error("bad token in {origin}: {source}")]
    Token { origin: String, source: TokenError },
    #[error(transparent)]
    Identity(#[from] aspen_net::identity::IdentityError),
}

impl Discovery {
    /// The cluster ticket, from the first source that has one.
    pub fn ticket(&self) -> Result<ClusterTicket, DiscoveryError> {
        let source = TicketInputs::gather(self.ticket.clone(), self.ticket_file.clone()).choose()?;
        Ok(source.load()?)
    }

    /// The explicitly chosen token: the explicit one, the explicit file, `ASPEN_TOKEN`,
    /// `ASPEN_TOKEN_FILE`, in that order; `None` when none is given.
    pub fn explicit_token(&self) -> Result<Option<Token>, DiscoveryError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let read = |path: &Path, origin: String| {
            std::fs::read_to_string(path).map_err(|source| DiscoveryError::TokenFile {
                path: path.to_path_buf(),
                origin,
                source,
            })
        };
        let (text, origin) = if let Some(t) = &self.token {
            (t.clone(), "--token".to_string())
        } else if let Some(path) = &self.token_file {
            (read(path, "--token-file".into())?, format!("--token-file {}", path.display()))
        } else if let Some(t) = env(TOKEN_ENV) {
            (t, format!("${TOKEN_ENV}"))
        } else if let Some(path) = env(TOKEN_FILE_ENV) {
            (read(Path::new(&path), format!("${TOKEN_FILE_ENV}"))?, format!("${TOKEN_FILE_ENV} {path}"))
        } else {
            return Ok(None);
        };
        Token::decode(&text).map(Some).map_err(|source| DiscoveryError::Token { origin, source })
    }

    /// The token to present to the cluster of `ticket`: the explicit one, else the ticket's.
    pub fn token_for(&self, ticket: &ClusterTicket) -> Result<Option<Token>, DiscoveryError> {
        match self.explicit_token()? {
            Some(t) => Ok(Some(t)),
            None => ticket
                .token
                .as_deref()
                .map(Token::from_bytes)
                .transpose()
                .map_err(|source| DiscoveryError::Token { origin: "the ticket".into(), source }),
        }
    }

    /// The client key from the identity file, created on first use.
    pub fn identity(&self) -> Result<Option<iroh::SecretKey>, DiscoveryError> {
        match &self.identity_file {
            Some(path) => Ok(Some(aspen_net::identity::load_or_create_secret_key(path)?)),
            None => Ok(None),
        }
    }

    /// A client for the discovered cluster, presenting the discovered token.
    pub async fn connect(&self, config: ClientConfig) -> Result<Client, ClientError> {
        let failed = |e: DiscoveryError| ClientError::Config(e.to_string());
        let ticket = self.ticket().map_err(failed)?;
        let token = self.token_for(&ticket).map_err(failed)?;
        Client::over_nodes_as(ticket.nodes.clone(), config, token, self.identity().map_err(failed)?).await
    }
}

/// The user's Aspen configuration directory: `$ASPEN_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/aspen`, else `~/.config/aspen`. Holds saved clusters and the identity
/// that signs the user's forge changes.
pub fn config_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("ASPEN_CONFIG_DIR")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("aspen")))
        .or_else(|| var("HOME").map(|d| d.join(".config/aspen")))
}

/// Saved cluster names are 1..=64 ASCII letters, digits, `-` and `_`.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(format!("cluster name {name:?} must be 1..=64 ASCII letters, digits, '-' or '_'")) }
}

/// Where the ticket of the cluster saved as `name` is kept (`aspen cluster save NAME`):
/// `<config dir>/clusters/<name>.ticket`.
pub fn saved_cluster_file(name: &str) -> Result<PathBuf, String> {
    validate_cluster_name(name)?;
    let dir = config_dir().ok_or("no configuration directory: set HOME, XDG_CONFIG_HOME or ASPEN_CONFIG_DIR")?;
    Ok(dir.join("clusters").join(format!("{name}.ticket")))
}

/// Reads a ticket file, refusing files far larger than any ticket.
pub fn read_ticket_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let limit = aspen_net::ticket::MAX_TICKET_CHARS as u64 + 2;
    let mut text = String::new();
    std::fs::File::open(path)?.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> TicketInputs {
        TicketInputs {
            flag: Some("flag".into()),
            flag_file: Some("flag-file".into()),
            env: Some("env".into()),
            env_file: Some("env-file".into()),
            default_file: Some("default".into()),
        }
    }

    #[test]
    fn sources_are_chosen_in_the_documented_order() {
        let mut inputs = all();
        assert_eq!(inputs.clone().choose().unwrap(), TicketSource::Flag("flag".into()));
        inputs.flag = None;
        assert_eq!(inputs.clone().choose().unwrap(), TicketSource::FlagFile("flag-file".into()));
        inputs.flag_file = None;
        assert_eq!(inputs.clone().choose().unwrap(), TicketSource::Env("env".into()));
        inputs.env = None;
        assert_eq!(inputs.clone().choose().unwrap(), TicketSource::EnvFile("env-file".into()));
        inputs.env_file = None;
        assert_eq!(inputs.clone().choose().unwrap(), TicketSource::DefaultFile("default".into()));
        inputs.default_file = None;
        let err = inputs.choose().unwrap_err().to_string();
        assert!(err.contains("--ticket") && err.contains("ASPEN_TICKET") && err.contains("cluster up"), "{err}");
    }

    #[test]
    fn a_bad_ticket_names_where_it_came_from() {
        let err = TicketSource::Env("nonsense".into()).load().unwrap_err().to_string();
        assert!(err.contains("ASPEN_TICKET") && err.contains("malformed ticket"), "{err}");
    }

    #[test]
    fn a_missing_ticket_file_names_the_path() {
        let err = TicketSource::FlagFile("/nonexistent/t".into()).load().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/t") && err.contains("--ticket-file"), "{err}");
    }
}
