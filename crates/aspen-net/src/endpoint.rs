//! Binding the one iroh endpoint a node (or client) uses for everything.
//!
//! Relays, address lookup and port mapping are off unless asked for: nodes reach
//! each other by the direct addresses in tickets and in the Raft membership.

use std::net::SocketAddr;

use aspen_core::api::NodeAddr;
use iroh::endpoint::{IdleTimeout, QuicTransportConfig, VarInt};
use iroh::{Endpoint, EndpointAddr, PublicKey, RelayMode, SecretKey};

use aspen_core::limits::{CONNECTION_IDLE_TIMEOUT_MS, CONNECTION_KEEPALIVE_MS, MAX_STREAMS_PER_CONNECTION};

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub secret_key: SecretKey,
    /// Socket to bind; port 0 picks one.
    pub bind: SocketAddr,
    pub alpns: Vec<Vec<u8>>,
    /// Use iroh's public relays (needs internet); off by default.
    pub relays: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid bind address {addr}: {reason}")]
    BadBind { addr: SocketAddr, reason: String },
    #[error("cannot bind endpoint on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

pub async fn bind_endpoint(config: EndpointConfig) -> Result<Endpoint, EndpointError> {
    let transport = QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .keep_alive_interval(std::time::Duration::from_millis(CONNECTION_KEEPALIVE_MS))
        // A dead peer is noticed within this bound, so clients and watches fail over.
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(CONNECTION_IDLE_TIMEOUT_MS))))
        .build();
    let mut builder = Endpoint::builder(iroh::endpoint::presets::Minimal)
        .secret_key(config.secret_key)
        .alpns(config.alpns)
        .transport_config(transport)
        .bind_addr(config.bind)
        .map_err(|e| EndpointError::BadBind { addr: config.bind, reason: e.to_string() })?;
    builder =
        if config.relays { builder.relay_mode(RelayMode::Default) } else { builder.relay_mode(RelayMode::Disabled) };
    builder.bind().await.map_err(|e| EndpointError::Bind { addr: config.bind, reason: e.to_string() })
}

/// The iroh address of a node from Aspen's own record of it.
pub fn endpoint_addr(addr: &NodeAddr) -> Result<EndpointAddr, iroh::KeyParsingError> {
    let id = PublicKey::from_bytes(&addr.endpoint_id)?;
    Ok(addr.addrs.iter().fold(EndpointAddr::new(id), |a, s| a.with_ip_addr(*s)))
}

/// Aspen's record of this endpoint, advertising `advertise` (or the bound sockets).
pub fn node_addr(endpoint: &Endpoint, advertise: Option<SocketAddr>) -> NodeAddr {
    let addrs = match advertise {
        Some(a) => vec![a],
        None => endpoint.bound_sockets().into_iter().filter(|s| !s.ip().is_unspecified()).collect(),
    };
    NodeAddr { endpoint_id: *endpoint.id().as_bytes(), addrs }
}
