//! The HTTP gateway: Nix's binary-cache protocol over one or more named caches, for the
//! real `nix` client. A cache `NAME` is the substituter `http://HOST:PORT/NAME`.
//!
//! - `GET|HEAD /NAME/nix-cache-info`;
//! - `GET|HEAD /NAME/<hash>.narinfo`: the signed narinfo, or 404;
//! - `GET|HEAD /NAME/nar/<hash>-<nar hash>.nar[.xz|.zst]`: the NAR, compressed as the name
//!   says, streamed from the blob store; a single `Range` is honoured on `.nar`;
//! - `PUT /NAME/nar/<file>` then `PUT /NAME/<hash>.narinfo`: what `nix copy --to` sends.
//!
//! A token comes as `Authorization: Bearer TOKEN` or as the password of Basic auth (what
//! nix sends from a netrc file). Reads of a public cache need none.
//!
//! The gateway runs over a [`Backend`]: in a node, the cache's service itself
//! ([`LocalBackend`]); in `aspen cache serve`, the cache's iroh protocol
//! ([`crate::client::RemoteBackend`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use aspen_app::{Cluster, ConnAuth};
use aspen_core::AspenError;
use aspen_core::api::ReadConsistency;
use aspen_core::capability::Capability;
use aspen_kv::BoxFuture;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, TryStreamExt};

use crate::compress::{self, BoxRead};
use crate::records::{CacheRecord, Compression};
use crate::service::{CacheService, parse_nar_file};

/// A NAR's bytes as they stream out.
pub type NarStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The largest narinfo upload.
const MAX_NARINFO_UPLOAD: usize = crate::narinfo::MAX_NARINFO_BYTES;

/// Part of a NAR, as served.
pub struct NarBody {
    /// The whole NAR's size.
    pub size: u64,
    pub offset: u64,
    pub len: u64,
    pub stream: NarStream,
}

/// A `Range: bytes=…` request: `a-b`, `a-` or `-n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    From { start: u64, end: Option<u64> },
    Suffix(u64),
}

impl ByteRange {
    /// Parses a single-range header; `None` for anything else (served whole, as HTTP allows).
    pub fn parse(header: &str) -> Option<Self> {
        let spec = header.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (start, end) = spec.split_once('-')?;
        if start.is_empty() {
            return end.parse().ok().map(ByteRange::Suffix);
        }
        let start = start.parse().ok()?;
        let end = if end.is_empty() { None } else { Some(end.parse().ok()?) };
        if end.is_some_and(|e| e < start) {
            return None;
        }
        Some(ByteRange::From { start, end })
    }

    /// Offset and length within `size` bytes; `None` when nothing of it is there.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { start, .. } if start >= size => None,
            ByteRange::From { start, end } => {
                let last = end.unwrap_or(u64::MAX).min(size - 1);
                Some((start, last - start + 1))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => {
                let n = n.min(size);
                Some((size - n, n))
            }
        }
    }
}

/// What the gateway serves from.
pub trait Backend: Send + Sync + 'static {
    /// Cache `cache`, if the token may read it; `None` if there is none.
    fn cache<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
    ) -> BoxFuture<'a, Result<Option<CacheRecord>, AspenError>>;

    fn narinfo<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        hash_part: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, AspenError>>;

    /// The NAR of `hash_part` (uncompressed) if it hashes to `nar_hash`; `Err` with
    /// `RangeTooLarge` when `range` is past its end.
    fn nar<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        hash_part: &'a str,
        nar_hash: [u8; 32],
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, Result<Option<NarBody>, AspenError>>;

    fn stage_nar<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        file_name: &'a str,
        body: BoxRead,
    ) -> BoxFuture<'a, Result<(), AspenError>>;

    fn add_narinfo<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        text: String,
    ) -> BoxFuture<'a, Result<(), AspenError>>;
}

/// The gateway on a node: the cache's service, with tokens checked by the node.
pub struct LocalBackend {
    service: Arc<CacheService>,
    cluster: Arc<dyn Cluster>,
    /// Tokens seen, checked once each (expiry and revocation are re-checked per use).
    tokens: Mutex<HashMap<String, Arc<ConnAuth>>>,
}

/// Most distinct tokens a gateway remembers.
const MAX_TOKENS: usize = 4_096;

impl LocalBackend {
    pub fn new(service: Arc<CacheService>, cluster: Arc<dyn Cluster>) -> Self {
        LocalBackend { service, cluster, tokens: Mutex::new(HashMap::new()) }
    }

    fn caps(&self, token: Option<&str>) -> Result<Option<Vec<Capability>>, AspenError> {
        let Some(token) = token else { return Ok(None) };
        let known = self.tokens.lock().ok().and_then(|t| t.get(token).cloned());
        let auth = match known {
            Some(auth) => auth,
            None => {
                let parsed = aspen_net::token::Token::decode(token.trim()).map_err(|e| {
                    AspenError::Unauthenticated { reason: format!("the HTTP token is not an Aspen token: {e}") }
                })?;
                // No QUIC handshake proves a key here: a token bound to a key is refused.
                let auth = Arc::new(ConnAuth::new([0; 32]));
                auth.present(&*self.cluster, &parsed.to_bytes())?;
                if let Ok(mut tokens) = self.tokens.lock() {
                    if tokens.len() >= MAX_TOKENS {
                        tokens.clear();
                    }
                    tokens.insert(token.to_string(), auth.clone());
                }
                auth
            }
        };
        auth.capabilities(&*self.cluster).map(Some)
    }
}

impl Backend for LocalBackend {
    fn cache<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
    ) -> BoxFuture<'a, Result<Option<CacheRecord>, AspenError>> {
        Box::pin(async move {
            let caps = self.caps(token)?;
            self.service.readable(caps.as_deref(), cache, ReadConsistency::Stale).await
        })
    }

    fn narinfo<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        hash_part: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, AspenError>> {
        Box::pin(async move {
            let caps = self.caps(token)?;
            self.service.narinfo(caps.as_deref(), cache, hash_part).await
        })
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
            let caps = self.caps(token)?;
            let Some(path) = self.service.nar_path(caps.as_deref(), cache, hash_part, Some(nar_hash)).await? else {
                return Ok(None);
            };
            let size = path.nar_size;
            let (offset, len) = match range {
                None => (0, size),
                Some(r) => r.resolve(size).ok_or(AspenError::RangeTooLarge { max: size })?,
            };
            let stream = self.service.open_nar(&path, offset, len).await?;
            let stream = stream.map_err(|e| std::io::Error::other(e.to_string()));
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
            let caps = self.caps(token)?.ok_or_else(|| needs_token(cache))?;
            self.service.stage_nar(&caps, cache, file_name, body).await.map(drop)
        })
    }

    fn add_narinfo<'a>(
        &'a self,
        token: Option<&'a str>,
        cache: &'a str,
        text: String,
    ) -> BoxFuture<'a, Result<(), AspenError>> {
        Box::pin(async move {
            let caps = self.caps(token)?.ok_or_else(|| needs_token(cache))?;
            self.service.add_narinfo(&caps, cache, &text).await.map(drop)
        })
    }
}

pub(crate) fn needs_token(cache: &str) -> AspenError {
    AspenError::Unauthenticated { reason: format!("uploads to cache {cache:?} need a token with cache:write") }
}

/// The gateway's routes over `backend`.
pub fn router(backend: Arc<dyn Backend>) -> Router {
    Router::new()
        .route("/{cache}/nix-cache-info", axum::routing::get(cache_info))
        .route("/{cache}/{file}", axum::routing::get(get_file).put(put_file))
        .route("/{cache}/nar/{file}", axum::routing::get(get_nar).put(put_nar))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, "not a cache URL: /CACHE/nix-cache-info, /CACHE/<hash>.narinfo, /CACHE/nar/…\n")
        })
        .with_state(backend)
}

/// Serves the gateway on `listener` until `stop` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn Backend>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(backend)).with_graceful_shutdown(stop).await
}

/// Binds `addr` for the gateway.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AspenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AspenError::invalid(format!("the cache gateway cannot listen on {addr}: {e}")))
}

/// The token a request carries: `Bearer TOKEN`, or the password of `Basic`.
fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let basic = value.strip_prefix("Basic ")?;
    let decoded = data_encoding::BASE64.decode(basic.trim().as_bytes()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// An error as an HTTP answer.
fn error_response(e: AspenError) -> Response {
    let status = match &e {
        AspenError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        AspenError::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        AspenError::InvalidRequest { .. } | AspenError::UnknownRequest { .. } => StatusCode::BAD_REQUEST,
        AspenError::RangeTooLarge { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        AspenError::Unavailable { .. }
        | AspenError::NotLeader { .. }
        | AspenError::Timeout { .. }
        | AspenError::NotInitialized => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = (status, format!("{e}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"aspen cache\""));
    }
    if let AspenError::RangeTooLarge { max } = e
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{max}"))
    {
        response.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    response
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

fn text(content_type: &'static str, body: String) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn cache_info(
    State(backend): State<Arc<dyn Backend>>,
    Path(cache): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = token(&headers);
    match backend.cache(token.as_deref(), &cache).await {
        Ok(Some(record)) => text(
            "text/x-nix-cache-info",
            format!("StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n", crate::narinfo::STORE_DIR, record.priority),
        ),
        Ok(None) => not_found(format!("there is no cache named {cache:?}")),
        Err(e) => error_response(e),
    }
}

async fn get_file(
    State(backend): State<Arc<dyn Backend>>,
    Path((cache, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(hash_part) = file.strip_suffix(".narinfo") else {
        return not_found(format!("{file:?} is not served here"));
    };
    let token = token(&headers);
    match backend.narinfo(token.as_deref(), &cache, hash_part).await {
        Ok(Some(narinfo)) => text("text/x-nix-narinfo", narinfo),
        Ok(None) => not_found(format!("cache {cache:?} has no path {hash_part}")),
        Err(e) => error_response(e),
    }
}

async fn get_nar(
    State(backend): State<Arc<dyn Backend>>,
    Path((cache, file)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (hash_part, nar_hash, compression) = match parse_nar_file(&file) {
        Ok(parsed) => parsed,
        Err(e) => return not_found(e.to_string()),
    };
    let token = token(&headers);
    // A range of a compressed NAR is not asked of a cache; it is served whole.
    let range = match compression {
        Compression::None => headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(ByteRange::parse),
        _ => None,
    };
    let body = match backend.nar(token.as_deref(), &cache, &hash_part, nar_hash, range).await {
        Ok(Some(body)) => body,
        Ok(None) => return not_found(format!("cache {cache:?} has no NAR {file}")),
        Err(e) => return error_response(e),
    };
    let mut response = Response::builder().header(header::CONTENT_TYPE, "application/x-nix-nar");
    if compression == Compression::None {
        response = response.header(header::CONTENT_LENGTH, body.len).header(header::ACCEPT_RANGES, "bytes");
        if range.is_some() {
            let last = body.offset + body.len - 1;
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {}-{last}/{}", body.offset, body.size));
        }
    }
    let stream = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(compress::encode_stream(compression, body.stream))
    };
    response.body(stream).unwrap_or_else(|e| error_response(AspenError::internal(e.to_string())))
}

async fn put_nar(
    State(backend): State<Arc<dyn Backend>>,
    Path((cache, file)): Path<(String, String)>,
    request: Request,
) -> Response {
    let token = token(request.headers());
    let body = request.into_body().into_data_stream().map_err(std::io::Error::other);
    let reader: BoxRead = Box::pin(tokio_util::io::StreamReader::new(body));
    match backend.stage_nar(token.as_deref(), &cache, &file, reader).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error_response(e),
    }
}

async fn put_file(
    State(backend): State<Arc<dyn Backend>>,
    Path((cache, file)): Path<(String, String)>,
    request: Request,
) -> Response {
    let token = token(request.headers());
    if file == "nix-cache-info" {
        // nix writes it when the cache has none: only a cache that does not exist.
        return match backend.cache(token.as_deref(), &cache).await {
            Ok(Some(_)) => StatusCode::OK.into_response(),
            Ok(None) => {
                not_found(format!("there is no cache named {cache:?}; make it with `aspen cache create {cache}`"))
            }
            Err(e) => error_response(e),
        };
    }
    if !file.ends_with(".narinfo") {
        return (StatusCode::FORBIDDEN, format!("the cache keeps NARs and narinfo only, not {file:?}\n"))
            .into_response();
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_NARINFO_UPLOAD).await {
        Ok(body) => body,
        Err(e) => return error_response(AspenError::invalid(format!("the narinfo upload failed: {e}"))),
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error_response(AspenError::invalid("the narinfo is not UTF-8"));
    };
    match backend.add_narinfo(token.as_deref(), &cache, text).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error_response(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_as_http_says() {
        assert_eq!(ByteRange::parse("bytes=0-99"), Some(ByteRange::From { start: 0, end: Some(99) }));
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From { start: 5, end: None }));
        assert_eq!(ByteRange::parse("bytes=-10"), Some(ByteRange::Suffix(10)));
        assert_eq!(ByteRange::parse("bytes=9-5"), None);
        assert_eq!(ByteRange::parse("bytes=0-1,4-5"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        let size = 100;
        assert_eq!(ByteRange::parse("bytes=0-99").unwrap().resolve(size), Some((0, 100)));
        assert_eq!(ByteRange::parse("bytes=90-200").unwrap().resolve(size), Some((90, 10)));
        assert_eq!(ByteRange::parse("bytes=-10").unwrap().resolve(size), Some((90, 10)));
        assert_eq!(ByteRange::parse("bytes=-1000").unwrap().resolve(size), Some((0, 100)));
        assert_eq!(ByteRange::parse("bytes=100-").unwrap().resolve(size), None);
    }

    #[test]
    fn tokens_come_as_bearer_or_basic_password() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(token(&headers).as_deref(), Some("abc"));
        let basic = format!("Basic {}", data_encoding::BASE64.encode(b"nix:tok:en"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&basic).unwrap());
        assert_eq!(token(&headers).as_deref(), Some("tok:en"));
    }
}
