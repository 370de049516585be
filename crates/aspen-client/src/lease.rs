//! Typed lease calls: grant, keep alive, revoke, list.

use std::time::Duration;

use aspen_core::LeaseId;
use aspen_core::api::{ClientRequest, ClientResponse, LeaseInfo};
use aspen_core::command::WriteResult;

use aspen_kv::{LeaseGrant, LeaseRevoked};

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Grants a lease that lives `ttl` unless kept alive.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, ClientError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.lease_request(ClientRequest::LeaseGrant { ttl_ms }, "lease_grant").await
    }

    /// Restarts a lease's countdown.
    pub async fn lease_keepalive(&self, id: LeaseId) -> Result<LeaseGrant, ClientError> {
        self.lease_request(ClientRequest::LeaseKeepAlive { id }, "lease_keepalive").await
    }

    async fn lease_request(&self, req: ClientRequest, name: &'static str) -> Result<LeaseGrant, ClientError> {
        match self.request(req).await? {
            ClientResponse::Write(WriteResult::Lease { id, ttl_ms, expires_at_ms }) => {
                Ok(LeaseGrant { id, ttl: Duration::from_millis(ttl_ms), expires_at_ms })
            }
            other => Err(ClientError::unexpected(name, &other)),
        }
    }

    /// Ends a lease now, deleting its keys.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<LeaseRevoked, ClientError> {
        match self.request(ClientRequest::LeaseRevoke { id }).await? {
            ClientResponse::Write(WriteResult::LeaseRevoked { revision, deleted_keys }) => {
                Ok(LeaseRevoked { revision, deleted_keys })
            }
            other => Err(ClientError::unexpected("lease_revoke", &other)),
        }
    }

    /// Every live lease.
    pub async fn lease_list(&self) -> Result<Vec<LeaseInfo>, ClientError> {
        match self.request(ClientRequest::LeaseList).await? {
            ClientResponse::Leases { leases } => Ok(leases),
            other => Err(ClientError::unexpected("lease_list", &other)),
        }
    }
}
