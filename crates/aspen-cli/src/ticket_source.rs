//! Where the cluster ticket comes from, in order: `--ticket`, `--ticket-file`,
//! `ASPEN_TICKET`, `ASPEN_TICKET_FILE`, then `./.aspen/cluster/cluster.ticket` as written
//! by `aspen cluster up`.

use std::path::{Path, PathBuf};

use aspen_net::{ClusterTicket, TicketError};

/// Environment variable holding a ticket.
pub const TICKET_ENV: &str = "ASPEN_TICKET";
/// Environment variable naming a file holding a ticket.
pub const TICKET_FILE_ENV: &str = "ASPEN_TICKET_FILE";
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
