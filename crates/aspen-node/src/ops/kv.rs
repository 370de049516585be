//! Keys and leases: reads (linearizable through the read gate, or stale by request)
//! and writes (through the batcher into Raft).

use aspen_core::api::{ClientRequest, ClientResponse, LeaseInfo, ReadConsistency};
use aspen_core::command::WriteCommand;
use aspen_core::error::AspenError;
use aspen_core::limits::MAX_SCAN_PAGE_BYTES;
use aspen_core::validate;
use aspen_raft::ScanOptions;

use super::Placement;
use crate::state::NodeState;
use aspen_net::now_ms;

pub fn placement(request: &ClientRequest) -> Option<Placement> {
    Some(match request {
        ClientRequest::Get { consistency, .. } | ClientRequest::Scan { consistency, .. } => {
            read_placement(*consistency)
        }
        ClientRequest::ScanWith(scan) => read_placement(scan.consistency),
        ClientRequest::LeaseList => Placement::Leader { is_write: false },
        ClientRequest::Put { .. }
        | ClientRequest::Delete { .. }
        | ClientRequest::DeleteRange { .. }
        | ClientRequest::Txn(_)
        | ClientRequest::LeaseGrant { .. }
        | ClientRequest::LeaseKeepAlive { .. }
        | ClientRequest::LeaseRevoke { .. }
        | ClientRequest::RevokeToken { .. }
        | ClientRequest::SetClusterRoot { .. }
        | ClientRequest::Queue(_)
        | ClientRequest::RateLimit(_) => Placement::Leader { is_write: true },
        _ => return None,
    })
}

fn read_placement(consistency: ReadConsistency) -> Placement {
    match consistency {
        ReadConsistency::Linearizable => Placement::Leader { is_write: false },
        ReadConsistency::Stale => Placement::Local,
    }
}

fn write_command(request: &ClientRequest) -> Option<WriteCommand> {
    Some(match request.clone() {
        ClientRequest::Put { key, value, lease } => WriteCommand::Put { key, value, lease },
        ClientRequest::Delete { key } => WriteCommand::Delete { key },
        ClientRequest::DeleteRange { start, end } => WriteCommand::DeleteRange { start, end },
        ClientRequest::Txn(t) => WriteCommand::Txn(t),
        ClientRequest::LeaseGrant { ttl_ms } => WriteCommand::LeaseGrant { ttl_ms },
        ClientRequest::LeaseKeepAlive { id } => WriteCommand::LeaseKeepAlive { id },
        ClientRequest::LeaseRevoke { id } => WriteCommand::LeaseRevoke { id },
        ClientRequest::RevokeToken { id } => WriteCommand::RevokeToken { id },
        ClientRequest::SetClusterRoot { public_key } => WriteCommand::SetClusterRoot { public_key },
        ClientRequest::Queue(command) => WriteCommand::Queue(command),
        ClientRequest::RateLimit(take) => WriteCommand::RateLimit(take),
        _ => return None,
    })
}

async fn linearize(state: &NodeState, consistency: ReadConsistency) -> Result<(), AspenError> {
    if !state.is_initialized() {
        return Err(AspenError::NotInitialized);
    }
    match consistency {
        ReadConsistency::Linearizable => state.reads.wait().await,
        ReadConsistency::Stale => Ok(()),
    }
}

/// Serves a KV or lease request on this node; `None` if it is not one.
pub async fn serve(state: &NodeState, request: &ClientRequest) -> Option<Result<ClientResponse, AspenError>> {
    if let Some(command) = write_command(request) {
        return Some(state.batcher.write(command).await.map(ClientResponse::Write));
    }
    Some(match request {
        ClientRequest::Get { key, consistency } => {
            async {
                validate::key(key)?;
                linearize(state, *consistency).await?;
                let (kv, revision) = state.reader.get(key)?;
                Ok(ClientResponse::Get { kv, revision })
            }
            .await
        }
        ClientRequest::Scan { start, end, limit, consistency } => {
            async {
                validate::range_bound(start)?;
                validate::range_bound(end)?;
                let limit = validate::scan_limit(*limit)?;
                linearize(state, *consistency).await?;
                let (kvs, more, revision) = state.reader.scan(start, end, limit)?;
                Ok(ClientResponse::Scan { kvs, more, revision })
            }
            .await
        }
        ClientRequest::ScanWith(scan) => {
            async {
                validate::range_bound(&scan.start)?;
                validate::range_bound(&scan.end)?;
                let limit = validate::scan_limit(scan.limit)?;
                // A page of a kept snapshot needs no new ReadIndex round: the snapshot was
                // linearized when its first page was read.
                let continues = scan.at_revision.is_some_and(|r| r != 0);
                linearize(state, if continues { ReadConsistency::Stale } else { scan.consistency }).await?;
                let options = ScanOptions {
                    limit,
                    max_bytes: MAX_SCAN_PAGE_BYTES,
                    keys_only: scan.keys_only,
                    at_revision: scan.at_revision,
                };
                let (kvs, more, revision) = state.reader.scan_page(&scan.start, &scan.end, options)?;
                Ok(ClientResponse::Scan { kvs, more, revision })
            }
            .await
        }
        ClientRequest::LeaseList => {
            async {
                linearize(state, ReadConsistency::Linearizable).await?;
                let now = now_ms() as i64;
                let leases = state
                    .reader
                    .leases()?
                    .into_iter()
                    .map(|l| LeaseInfo { id: l.id, ttl_ms: l.ttl_ms, remaining_ms: l.expires_at_ms as i64 - now })
                    .collect();
                Ok(ClientResponse::Leases { leases })
            }
            .await
        }
        _ => return None,
    })
}
