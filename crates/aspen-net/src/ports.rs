//! Free ports on loopback for local clusters: node `i` of `aspen cluster up --base-port B`
//! binds `B + i - 1` over UDP (its endpoint) and TCP (its cache gateway).

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

/// A port on 127.0.0.1 from which `count` consecutive ports were each free over UDP and
/// TCP a moment ago. Another process may still take one before the caller binds it, so a
/// caller that fails to bind asks again.
pub fn free_base_port(count: u16) -> std::io::Result<u16> {
    // Callers of one process ask in turn, each from further along; processes start apart.
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let start = 20_000 + (std::process::id() % 2_000) as u16 * 10 + call.wrapping_mul(97);
    (0..2_000u16)
        .map(|i| start.wrapping_add(i * 7) % 40_000 + 20_000)
        .find(|base| {
            (0..count).all(|i| {
                let port = base + i;
                UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
                    && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            })
        })
        .ok_or_else(|| std::io::Error::other(format!("no {count} free consecutive ports on 127.0.0.1")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_spread_out_over_the_unprivileged_range() {
        let a = free_base_port(3).unwrap();
        let b = free_base_port(3).unwrap();
        assert_ne!(a, b, "a second call starts further along");
        // Whether they are still free is not checked: another process may take them now.
        for base in [a, b] {
            assert!((20_000..60_000).contains(&base), "{base}");
        }
    }
}
