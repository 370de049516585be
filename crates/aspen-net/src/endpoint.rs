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

/// Aspen's record of this endpoint, advertising `advertise`, else the bound sockets; a
/// socket bound to every address (`0.0.0.0`, `::`) stands for the addresses of every
/// interface that is up, loopback last (a machine on DHCP knows them only at run time).
pub fn node_addr(endpoint: &Endpoint, advertise: Option<SocketAddr>) -> NodeAddr {
    let addrs = match advertise {
        Some(a) => vec![a],
        None => {
            let mut addrs = Vec::new();
            for bound in endpoint.bound_sockets() {
                if bound.ip().is_unspecified() {
                    addrs.extend(interface_addrs(bound.port(), bound.is_ipv6()));
                } else {
                    addrs.push(bound);
                }
            }
            addrs.dedup();
            addrs
        }
    };
    NodeAddr { endpoint_id: *endpoint.id().as_bytes(), addrs }
}

/// `port` on each address of each interface that is up: IPv4, and global IPv6 when `v6`
/// (link-local addresses need a scope a ticket cannot carry). Loopback comes last, and at
/// most [`crate::ticket::MAX_TICKET_ADDRS`] addresses are returned.
fn interface_addrs(port: u16, v6: bool) -> Vec<SocketAddr> {
    let mut found: Vec<(bool, SocketAddr)> = Vec::new();
    for interface in netdev::get_interfaces() {
        if !interface.is_up() {
            continue;
        }
        for ip in interface.ip_addrs() {
            let usable = match ip {
                std::net::IpAddr::V4(_) => true,
                std::net::IpAddr::V6(v6addr) => v6 && (v6addr.segments()[0] & 0xffc0) != 0xfe80,
            };
            if usable {
                found.push((ip.is_loopback(), SocketAddr::new(ip, port)));
            }
        }
    }
    found.sort_by_key(|(loopback, _)| *loopback);
    found.into_iter().map(|(_, a)| a).take(crate::ticket::MAX_TICKET_ADDRS).collect()
}
