//! [`CacheClient`]: the cache's protocol from a client, over an `aspen_client::Client`; and
//! [`RemoteBackend`], the HTTP gateway's backend when it runs beside the cluster
//! (`aspen cache serve`) rather than in a node.

use std::collections::HashMap;

use aspen_client::{AppChannel, Client, ClientConfig, ClientError, NodeAddr};
use aspen_core::AspenError;
use aspen_kv::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::compress::BoxRead;
use crate::gateway::{Backend, ByteRange, NarBody};
use crate::protocol::{
    CACHE_ALPN, CacheInfo, CacheRequest, CacheResponse, CacheSettings, GcReport, PathAdded, PathUpload,
};
use crate::records::{CacheRecord, PinRecord};

impl aspen_client::Answer for CacheResponse {
    fn error(&self) -> Option<&AspenError> {
        match self {
            CacheResponse::Error(e) => Some(e),
            _ => None,
        }
    }

    fn into_error(self) -> Result<Self, AspenError> {
        match self {
            CacheResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// The cache, as a client sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CacheClient {
    channel: AppChannel,
}

fn unexpected(request: &'static str, response: &CacheResponse) -> ClientError {
    let mut text = format!("{response:?}");
    text.truncate(200);
    ClientError::UnexpectedResponse { request, response: text }
}

impl CacheClient {
    pub fn new(client: &Client) -> Self {
        CacheClient { channel: client.app(CACHE_ALPN) }
    }

    async fn call(&self, request: CacheRequest) -> Result<CacheResponse, ClientError> {
        self.channel.call(request.name(), &request, request.is_repeatable()).await
    }

    pub async fn create_cache(&self, name: &str, settings: CacheSettings) -> Result<CacheInfo, ClientError> {
        match self.call(CacheRequest::CreateCache { name: name.into(), settings }).await? {
            CacheResponse::Cache(info) => Ok(info),
            other => Err(unexpected("cache_create", &other)),
        }
    }

    pub async fn show_cache(&self, name: &str) -> Result<CacheInfo, ClientError> {
        match self.call(CacheRequest::ShowCache { name: name.into() }).await? {
            CacheResponse::Cache(info) => Ok(info),
            other => Err(unexpected("cache_show", &other)),
        }
    }

    pub async fn list_caches(&self, after: Option<&str>, limit: u32) -> Result<(Vec<CacheInfo>, bool), ClientError> {
        match self.call(CacheRequest::ListCaches { after: after.map(str::to_string), limit }).await? {
            CacheResponse::Caches { caches, more } => Ok((caches, more)),
            other => Err(unexpected("cache_list", &other)),
        }
    }

    /// Which of `store_paths` (base names) the cache lacks.
    pub async fn query_missing(&self, cache: &str, store_paths: Vec<String>) -> Result<Vec<String>, ClientError> {
        match self.call(CacheRequest::QueryMissing { cache: cache.into(), store_paths }).await? {
            CacheResponse::Missing(missing) => Ok(missing),
            other => Err(unexpected("cache_query_missing", &other)),
        }
    }

    pub async fn narinfo(&self, cache: &str, hash_part: &str) -> Result<Option<String>, ClientError> {
        match self.call(CacheRequest::NarInfo { cache: cache.into(), hash_part: hash_part.into() }).await? {
            CacheResponse::NarInfo(text) => Ok(text),
            other => Err(unexpected("cache_narinfo", &other)),
        }
    }

    /// Sends `request`, then everything `body` yields, and reads the answer.
    async fn upload(
        &self,
        request: CacheRequest,
        mut body: impl AsyncRead + Unpin,
    ) -> Result<CacheResponse, ClientError> {
        let name = request.name();
        let mut stream = self.channel.open_stream().await?;
        let node = stream.node.clone();
        let lost = |reason: String| ClientError::Connection { node: node.clone(), reason };
        aspen_net::write_frame(&mut stream.send, &request).await.map_err(|e| lost(e.to_string()))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body.read(&mut buf).await.map_err(|e| ClientError::Config(format!("reading the upload: {e}")))?;
            if n == 0 {
                break;
            }
            if let Err(e) = stream.send.write_all(&buf[..n]).await {
                // The node stopped reading: its answer says why.
                tracing::debug!("upload cut short: {e}");
                break;
            }
        }
        let _ = stream.send.finish();
        match aspen_net::read_frame::<CacheResponse>(&mut stream.recv).await.map_err(|e| lost(e.to_string()))? {
            Some(CacheResponse::Error(e)) => Err(ClientError::Aspen(e)),
            Some(answer) => Ok(answer),
            None => Err(lost(format!("the node ended {name} without an answer"))),
        }
    }

    /// Adds a path whose NAR `nar` yields.
    pub async fn add_path(
        &self,
        cache: &str,
        path: PathUpload,
        nar: impl AsyncRead + Unpin,
    ) -> Result<PathAdded, ClientError> {
        match self.upload(CacheRequest::AddPath { cache: cache.into(), path }, nar).await? {
            CacheResponse::Added(added) => Ok(added),
            other => Err(unexpected("cache_add_path", &other)),
        }
    }

    pub async fn stage_nar(
        &self,
        cache: &str,
        file_name: &str,
        file: impl AsyncRead + Unpin,
    ) -> Result<([u8; 32], u64), ClientError> {
        match self.upload(CacheRequest::StageNar { cache: cache.into(), file_name: file_name.into() }, file).await? {
            CacheResponse::Staged { nar_hash, nar_size } => Ok((nar_hash, nar_size)),
            other => Err(unexpected("cache_stage_nar", &other)),
        }
    }

    pub async fn add_narinfo(&self, cache: &str, text: &str) -> Result<PathAdded, ClientError> {
        match self.call(CacheRequest::AddNarInfo { cache: cache.into(), text: text.into() }).await? {
            CacheResponse::Added(added) => Ok(added),
            other => Err(unexpected("cache_add_narinfo", &other)),
        }
    }

    /// A byte range of a path's NAR: the NAR's whole size, and a reader of the range.
    pub async fn read_nar(
        &self,
        cache: &str,
        hash_part: &str,
        nar_hash: Option<[u8; 32]>,
        offset: u64,
        len: u64,
    ) -> Result<(u64, iroh::endpoint::RecvStream), ClientError> {
        let request = CacheRequest::ReadNar { cache: cache.into(), hash_part: hash_part.into(), nar_hash, offset, len };
        let mut stream = self.channel.open_stream().await?;
        let node = stream.node.clone();
        let lost = |reason: String| ClientError::Connection { node: node.clone(), reason };
        aspen_net::write_frame(&mut stream.send, &request).await.map_err(|e| lost(e.to_string()))?;
        let _ = stream.send.finish();
        match aspen_net::read_frame::<CacheResponse>(&mut stream.recv).await.map_err(|e| lost(e.to_string()))? {
            Some(CacheResponse::Nar { size }) => Ok((size, stream.recv)),
            Some(CacheResponse::Error(e)) => Err(ClientError::Aspen(e)),
            Some(other) => Err(unexpected("cache_read_nar", &other)),
            None => Err(lost("the node ended cache_read_nar without an answer".into())),
        }
    }

    pub async fn pin(&self, cache: &str, name: &str, store_path: &str) -> Result<(), ClientError> {
        let request = CacheRequest::Pin { cache: cache.into(), name: name.into(), store_path: store_path.into() };
        match self.call(request).await? {
            CacheResponse::Done => Ok(()),
            other => Err(unexpected("cache_pin", &other)),
        }
    }

    pub async fn unpin(&self, cache: &str, name: &str) -> Result<(), ClientError> {
        match self.call(CacheRequest::Unpin { cache: cache.into(), name: name.into() }).await? {
            CacheResponse::Done => Ok(()),
            other => Err(unexpected("cache_unpin", &other)),
        }
    }

    pub async fn list_pins(&self, cache: &str) -> Result<Vec<(String, PinRecord)>, ClientError> {
        match self.call(CacheRequest::ListPins { cache: cache.into() }).await? {
            CacheResponse::Pins(pins) => Ok(pins),
            other => Err(unexpected("cache_pins", &other)),
        }
    }

    pub async fn collect_garbage(&self, cache: &str, dry_run: bool) -> Result<GcReport, ClientError> {
        match self.call(CacheRequest::CollectGarbage { cache: cache.into(), dry_run }).await? {
            CacheResponse::Collected(report) => Ok(report),
            other => Err(unexpected("cache_gc", &other)),
        }
    }
}

/// A client error as the gateway reports it.
fn aspen_error(e: ClientError) -> AspenError {
    match e {
        ClientError::Aspen(e) => e,
        other => AspenError::Unavailable { reason: other.to_string() },
    }
}

/// The gateway's backend beside the cluster: every request goes to the cluster over the
/// cache protocol, with the token the HTTP request carries (one client per distinct
/// token), or with the gateway's own token for anonymous reads of public caches.
pub struct RemoteBackend {
    nodes: Vec<NodeAddr>,
    config: ClientConfig,
    anonymous: CacheClient,
    by_token: tokio::sync::Mutex<HashMap<String, CacheClient>>,
    /// Caches found public, and when.
    public: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Whether anonymous requests act with the gateway's own token (a private gateway on
    /// loopback for one command), rather than reading public caches only.
    anonymous_is_own: bool,
}

/// How long a cache found public is served anonymously before that is checked again.
const PUBLIC_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

fn check_public(cache: &str, record: &CacheRecord) -> Result<(), AspenError> {
    if record.public_reads {
        Ok(())
    } else {
        Err(AspenError::Unauthenticated { reason: format!("cache {cache:?} is readable only with a token") })
    }
}

/// Most distinct tokens the gateway keeps a client for.
const MAX_CLIENTS: usize = 64;

impl RemoteBackend {
    /// A backend over `nodes`; `anonymous` is the gateway's own client, whose token should
    /// grant no cache rights (then it reads exactly the public caches).
    pub fn new(nodes: Vec<NodeAddr>, config: ClientConfig, anonymous: &Client) -> Self {
        RemoteBackend {
            nodes,
            config,
            anonymous: CacheClient::new(anonymous),
            by_token: tokio::sync::Mutex::new(HashMap::new()),
            public: std::sync::Mutex::new(HashMap::new()),
            anonymous_is_own: false,
        }
    }

    /// Anonymous requests act with the gateway's own token: for a gateway only its own
    /// process talks to (`aspen cache pull`).
    pub fn anonymous_as_own(mut self) -> Self {
        self.anonymous_is_own = true;
        self
    }

    /// The client to ask about `cache` with: the request's token's, or for an anonymous
    /// request the gateway's own, once the cache is found public (whatever the gateway's
    /// token could read, an anonymous request reads only public caches).
    async fn client(&self, token: Option<&str>, cache: &str) -> Result<CacheClient, AspenError> {
        let Some(token) = token else {
            if self.anonymous_is_own {
                return Ok(self.anonymous.clone());
            }
            let seen = self.public.lock().ok().and_then(|p| p.get(cache).copied());
            if seen.is_none_or(|at| at.elapsed() > PUBLIC_RECHECK) {
                let info = self.anonymous.show_cache(cache).await.map_err(aspen_error)?;
                check_public(cache, &info.record)?;
                if let Ok(mut public) = self.public.lock() {
                    public.insert(cache.to_string(), std::time::Instant::now());
                }
            }
            return Ok(self.anonymous.clone());
        };
        let mut clients = self.by_token.lock().await;
        if let Some(client) = clients.get(token) {
            return Ok(client.clone());
        }
        let parsed = aspen_net::token::Token::decode(token.trim()).map_err(|e| AspenError::Unauthenticated {
            reason: format!("the HTTP token is not an Aspen token: {e}"),
        })?;
        let client =
            Client::over_nodes_with_token(self.nodes.clone(), self.config, Some(parsed)).await.map_err(aspen_error)?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let client = CacheClient::new(&client);
        clients.insert(token.to_string(), client.clone());
        Ok(client)
    }
}

/// Whether an error means "no such cache or path" rather than a failure.
fn is_absent(e: &ClientError) -> bool {
    matches!(e, ClientError::Aspen(AspenError::InvalidRequest { reason }) if reason.contains("there is no cache named") || reason.contains("has no path"))
}

impl Backend for RemoteBackend {
    fn cache<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
    ) -> BoxFuture<'a, Result<Option<CacheRecord>, AspenError>> {
        Box::pin(async move {
            let client = match token {
                None => self.anonymous.clone(),
                Some(_) => self.client(token, cache).await?,
            };
            match client.show_cache(cache).await {
                Ok(info) if token.is_none() && !self.anonymous_is_own => {
                    check_public(cache, &info.record).map(|()| Some(info.record))
                }
                Ok(info) => Ok(Some(info.record)),
                Err(e) if is_absent(&e) => Ok(None),
                Err(e) => Err(aspen_error(e)),
            }
        })
    }

    fn narinfo<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        hash_part: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, AspenError>> {
        Box::pin(async move { self.client(token, cache).await?.narinfo(cache, hash_part).await.map_err(aspen_error) })
    }

    fn nar<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        hash_part: &'a str,
        nar_hash: [u8; 32],
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<NarBody>, AspenError>> {
        Box::pin(async move {
            let client = self.client(token, cache).await?;
            let (offset, len) = match range {
                None => (0, u64::MAX),
                Some(range) => {
                    // The size first: a range may count from the end.
                    let size = match client.read_nar(cache, hash_part, Some(nar_hash), 0, 0).await {
                        Ok((size, _)) => size,
                        Err(e) if is_absent(&e) => return Ok(None),
                        Err(e) => return Err(aspen_error(e)),
                    };
                    range.resolve(size).ok_or(AspenError::RangeTooLarge { max: size })?
                }
            };
            let (size, recv) = match client.read_nar(cache, hash_part, Some(nar_hash), offset, len).await {
                Ok(found) => found,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(aspen_error(e)),
            };
            let len = len.min(size.saturating_sub(offset));
            let reader = recv.take(len);
            let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
            Ok(Some(NarBody { size, offset, len, stream: Box::pin(stream) }))
        })
    }

    fn stage_nar<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        file_name: &'a str,
        body: BoxRead,
    ) -> BoxFuture<'a, Result<(), AspenError>> {
        Box::pin(async move {
            let token = token.ok_or_else(|| crate::gateway::needs_token(cache))?;
            self.client(Some(token), cache)
                .await?
                .stage_nar(cache, file_name, body)
                .await
                .map(drop)
                .map_err(aspen_error)
        })
    }

    fn add_narinfo<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        text: String,
    ) -> BoxFuture<'a, Result<(), AspenError>> {
        Box::pin(async move {
            let token = token.ok_or_else(|| crate::gateway::needs_token(cache))?;
            self.client(Some(token), cache).await?.add_narinfo(cache, &text).await.map(drop).map_err(aspen_error)
        })
    }
}
