//! [`ForgeClient`]: the forge's protocol from a client, over an `aspen_client::Client`.

use aspen_client::{AppChannel, Client, ClientError};

use crate::protocol::{FORGE_ALPN, ForgeRequest, ForgeResponse, RepoInfo, RepoSummary};

/// The forge, as a client sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    channel: AppChannel,
}

fn unexpected(request: &'static str, response: &ForgeResponse) -> ClientError {
    let mut text = format!("{response:?}");
    text.truncate(200);
    ClientError::UnexpectedResponse { request, response: text }
}

impl ForgeClient {
    /// The forge on `client`'s cluster, presenting its token.
    pub fn new(client: &Client) -> Self {
        ForgeClient { channel: client.app(FORGE_ALPN) }
    }

    async fn call(&self, request: ForgeRequest) -> Result<ForgeResponse, ClientError> {
        self.channel.call(request.name(), &request, request.is_repeatable()).await
    }

    async fn repo(&self, request: ForgeRequest) -> Result<RepoInfo, ClientError> {
        let name = request.name();
        match self.call(request).await? {
            ForgeResponse::Repo(info) => Ok(info),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Creates an empty repository whose `HEAD` names `default_branch`.
    pub async fn create_repo(
        &self,
        name: &str,
        description: &str,
        default_branch: &str,
    ) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::CreateRepo {
            name: name.into(),
            description: description.into(),
            default_branch: default_branch.into(),
        })
        .await
    }

    /// A repository and its refs.
    pub async fn show_repo(&self, name: &str) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::ShowRepo { name: name.into() }).await
    }

    /// Up to `limit` repositories whose names start with `prefix`, after `after`, and
    /// whether more follow.
    pub async fn list_repos(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<RepoSummary>, bool), ClientError> {
        let request = ForgeRequest::ListRepos { prefix: prefix.into(), after: after.map(str::to_string), limit };
        match self.call(request).await? {
            ForgeResponse::Repos { repos, more } => Ok((repos, more)),
            other => Err(unexpected("repo_list", &other)),
        }
    }

    /// Deletes a repository and its refs.
    pub async fn delete_repo(&self, name: &str) -> Result<(), ClientError> {
        match self.call(ForgeRequest::DeleteRepo { name: name.into() }).await? {
            ForgeResponse::Done => Ok(()),
            other => Err(unexpected("repo_delete", &other)),
        }
    }

    /// Protects `branch` (or lifts its protection).
    pub async fn protect(&self, repo: &str, branch: &str, protected: bool) -> Result<RepoInfo, ClientError> {
        self.repo(ForgeRequest::Protect { repo: repo.into(), branch: branch.into(), protected }).await
    }
}
