//! Names and addresses of one test network, all derived from its subnet index `k`.
//!
//! Subnet `k` (0..512) is `198.18.0.0/15` split into /24s: `198.(18 + k / 256).(k % 256).0/24`,
//! from the RFC 2544 benchmarking range, so it never clashes with real networks. The bridge is
//! `asb<k>` with `.254`, node `i` lives in namespace `asn<k>-<i>` with `.<i + 1>` on `eth0`, and
//! its veth's root-namespace end is `asv<k>-<i>`. Names stay within the 15-byte limit.

use std::net::Ipv4Addr;

/// Number of /24 subnets in 198.18.0.0/15.
pub(crate) const SUBNETS: u16 = 512;
/// Most nodes one network holds (`.1` ..= `.250`).
pub(crate) const MAX_NODES: usize = 250;

pub(crate) const BRIDGE_PREFIX: &str = "asb";
pub(crate) const NETNS_PREFIX: &str = "asn";
pub(crate) const VETH_PREFIX: &str = "asv";
const PEER_PREFIX: &str = "asp";

pub(crate) fn bridge(k: u16) -> String {
    format!("{BRIDGE_PREFIX}{k}")
}

pub(crate) fn netns(k: u16, i: usize) -> String {
    format!("{NETNS_PREFIX}{k}-{i}")
}

pub(crate) fn veth(k: u16, i: usize) -> String {
    format!("{VETH_PREFIX}{k}-{i}")
}

/// Temporary name of the namespace end of the veth pair before it is renamed to `eth0`.
pub(crate) fn veth_peer(k: u16, i: usize) -> String {
    format!("{PEER_PREFIX}{k}-{i}")
}

fn octets(k: u16) -> (u8, u8) {
    // k < 512, so both fit.
    (18 + (k / 256) as u8, (k % 256) as u8)
}

/// Address of node `i` (`.i+1`).
pub(crate) fn node_ip(k: u16, i: usize) -> Ipv4Addr {
    let (b, c) = octets(k);
    Ipv4Addr::new(198, b, c, u8::try_from(i + 1).unwrap_or(u8::MAX))
}

/// Address of the bridge, i.e. of the test process in the root namespace.
pub(crate) fn client_ip(k: u16) -> Ipv4Addr {
    let (b, c) = octets(k);
    Ipv4Addr::new(198, b, c, 254)
}

/// Whether `addr` lies in subnet `k`.
pub(crate) fn in_subnet(k: u16, addr: Ipv4Addr) -> bool {
    let (b, c) = octets(k);
    let o = addr.octets();
    o[0] == 198 && o[1] == b && o[2] == c
}

/// Parses the subnet index out of a resource name such as `asb12`, `asn12-3` or `asv12-3`.
pub(crate) fn parse_index(name: &str, prefix: &str) -> Option<u16> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|k| *k < SUBNETS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_parse() {
        let (k, i) = (SUBNETS - 1, MAX_NODES - 1);
        for name in [bridge(k), netns(k, i), veth(k, i), veth_peer(k, i)] {
            assert!(name.len() <= 15, "{name} too long");
        }
        assert_eq!(parse_index(&netns(300, 4), NETNS_PREFIX), Some(300));
        assert_eq!(parse_index(&bridge(7), BRIDGE_PREFIX), Some(7));
        assert_eq!(parse_index("asbestos", BRIDGE_PREFIX), None);
        assert_eq!(parse_index("asb999", BRIDGE_PREFIX), None);
        assert_eq!(node_ip(257, 0), Ipv4Addr::new(198, 19, 1, 1));
        assert!(in_subnet(257, client_ip(257)) && !in_subnet(1, client_ip(257)));
    }
}
