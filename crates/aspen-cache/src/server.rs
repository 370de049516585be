//! Serving the cache's iroh protocol ([`crate::protocol`]) on a node, over the service.

use std::sync::Arc;

use aspen_app::{AppHandler, BoxFuture, Caller};
use aspen_core::AspenError;
use aspen_core::capability::Capability;
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};
use tracing::Instrument;

use crate::protocol::{CacheInfo, CacheRequest, CacheResponse};
use crate::service::CacheService;

/// The cache, started on one node.
pub struct CacheHandler {
    pub(crate) service: Arc<CacheService>,
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

impl AppHandler for CacheHandler {
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.stop.cancel();
        Box::pin(async {})
    }

    fn serve(self: Arc<Self>, caller: Caller, mut send: SendStream, mut recv: RecvStream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let request = match aspen_net::read_frame::<CacheRequest>(&mut recv).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    let error = AspenError::UnknownRequest { detail: format!("cache request: {e}") };
                    let _ = aspen_net::write_frame(&mut send, &CacheResponse::Error(error)).await;
                    let _ = send.finish();
                    return;
                }
            };
            let span = tracing::debug_span!("cache", op = request.name());
            async move {
                let caps = match caller.capabilities() {
                    Ok(caps) => caps,
                    Err(e) => {
                        let _ = aspen_net::write_frame(&mut send, &CacheResponse::Error(e)).await;
                        let _ = send.finish();
                        return;
                    }
                };
                if let CacheRequest::ReadNar { cache, hash_part, nar_hash, offset, len } = &request {
                    if let Err(e) = self.send_nar(&caps, cache, hash_part, *nar_hash, *offset, *len, &mut send).await {
                        let _ = aspen_net::write_frame(&mut send, &CacheResponse::Error(e)).await;
                    }
                    let _ = send.finish();
                    return;
                }
                let response = self.handle(&caps, request, recv).await.unwrap_or_else(CacheResponse::Error);
                let _ = aspen_net::write_frame(&mut send, &response).await;
                let _ = send.finish();
            }
            .instrument(span)
            .await
        })
    }
}

impl CacheHandler {
    /// Answers `Nar`, then streams the range. An error after the first frame cuts the
    /// stream short, which the reader sees as missing bytes.
    #[allow(clippy::too_many_arguments)]
    async fn send_nar(
        &self,
        caps: &[Capability],
        cache: &str,
        hash_part: &str,
        nar_hash: Option<[u8; 32]>,
        offset: u64,
        len: u64,
        send: &mut SendStream,
    ) -> Result<(), AspenError> {
        let path =
            self.service.nar_path(Some(caps), cache, hash_part, nar_hash).await?.ok_or_else(|| {
                AspenError::invalid(format!("cache {cache:?} has no path {hash_part} (with that NAR)"))
            })?;
        if offset > path.nar_size {
            return Err(AspenError::RangeTooLarge { max: path.nar_size });
        }
        let mut stream = self.service.open_nar(&path, offset, len).await?;
        aspen_net::write_frame(send, &CacheResponse::Nar { size: path.nar_size })
            .await
            .map_err(|e| AspenError::Unavailable { reason: format!("the reader went away: {e}") })?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            send.write_chunk(chunk)
                .await
                .map_err(|e| AspenError::Unavailable { reason: format!("the reader went away: {e}") })?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        caps: &[Capability],
        request: CacheRequest,
        recv: RecvStream,
    ) -> Result<CacheResponse, AspenError> {
        let service = &self.service;
        Ok(match request {
            CacheRequest::CreateCache { name, settings } => {
                CacheResponse::Cache(service.create_cache(caps, &name, &settings).await?)
            }
            CacheRequest::ListCaches { after, limit } => {
                let (caches, more) = service.list_caches(caps, after.as_deref(), limit).await?;
                CacheResponse::Caches { caches, more }
            }
            CacheRequest::ShowCache { name } => {
                let record = service
                    .readable(Some(caps), &name, aspen_core::api::ReadConsistency::Linearizable)
                    .await?
                    .ok_or_else(|| AspenError::invalid(format!("there is no cache named {name:?}")))?;
                CacheResponse::Cache(CacheInfo { name, record })
            }
            CacheRequest::QueryMissing { cache, store_paths } => {
                CacheResponse::Missing(service.query_missing(caps, &cache, &store_paths).await?)
            }
            CacheRequest::NarInfo { cache, hash_part } => {
                CacheResponse::NarInfo(service.narinfo(Some(caps), &cache, &hash_part).await?)
            }
            CacheRequest::AddPath { cache, path } => {
                CacheResponse::Added(service.add_path(caps, &cache, path, recv).await?)
            }
            CacheRequest::StageNar { cache, file_name } => {
                let staged = service.stage_nar(caps, &cache, &file_name, recv).await?;
                CacheResponse::Staged { nar_hash: staged.nar_hash, nar_size: staged.nar_size }
            }
            CacheRequest::AddNarInfo { cache, text } => {
                CacheResponse::Added(service.add_narinfo(caps, &cache, &text).await?)
            }
            CacheRequest::Pin { cache, name, store_path } => {
                service.pin(caps, &cache, &name, &store_path).await?;
                CacheResponse::Done
            }
            CacheRequest::Unpin { cache, name } => {
                service.unpin(caps, &cache, &name).await?;
                CacheResponse::Done
            }
            CacheRequest::ListPins { cache } => CacheResponse::Pins(service.list_pins(caps, &cache).await?),
            CacheRequest::CollectGarbage { cache, dry_run } => {
                CacheResponse::Collected(service.collect_garbage(Some(caps), &cache, dry_run).await?)
            }
            CacheRequest::ReadNar { .. } => {
                return Err(AspenError::UnknownRequest { detail: "cache_read_nar is answered as a stream".into() });
            }
        })
    }
}
