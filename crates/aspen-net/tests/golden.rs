//! Golden bytes of what aspen-net puts on disk and on the wire: cluster tickets, capability
//! tokens (recorded once, with their random nonces, and still verified by today's code) and
//! the token's link records. See `aspen_core::golden`.

use std::path::PathBuf;

use aspen_core::api::NodeAddr;
use aspen_core::capability::Capability;
use aspen_core::golden::{check_file, recorded_text, sample};
use aspen_net::ClusterTicket;
use aspen_net::token::{Audience, Link, LinkSpec, SignedLink, Token, verify};
use iroh::SecretKey;

fn fixture(name: &str) -> PathBuf {
    aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// A fixed root key: the recorded tokens are signed by it.
fn root_key() -> SecretKey {
    SecretKey::from_bytes(&[7u8; 32])
}

/// A fixed client key, the audience of the key-bound token.
fn client_key() -> SecretKey {
    SecretKey::from_bytes(&[9u8; 32])
}

/// Unix ms the recorded tokens are checked at: inside every recorded validity window.
const CHECK_AT_MS: u64 = 1_800_000_000_000;

fn ticket() -> ClusterTicket {
    ClusterTicket {
        cluster_id: "0123456789abcdef0123456789abcdef".into(),
        nodes: vec![
            NodeAddr { endpoint_id: [0xab; 32], addrs: vec!["127.0.0.1:7701".parse().unwrap()] },
            NodeAddr { endpoint_id: [0xcd; 32], addrs: vec!["[::1]:7702".parse().unwrap()] },
        ],
        token: Some(vec![1, 2, 3]),
    }
}

#[test]
fn tickets_keep_their_text() {
    let path = fixture("ticket.txt");
    let recorded = recorded_text(&path, "ticket", || ticket().encode());
    assert_eq!(ClusterTicket::decode(&recorded).expect("recorded ticket decodes"), ticket());
    assert_eq!(ticket().encode(), recorded, "a ticket encodes differently than it did");
    let bare = ClusterTicket { token: None, ..ticket() };
    let recorded = recorded_text(&path, "ticket_without_token", || bare.encode());
    assert_eq!(ClusterTicket::decode(&recorded).expect("recorded ticket decodes"), bare);
}

#[test]
fn recorded_tokens_still_verify_with_the_same_rights() {
    let path = fixture("token.txt");
    let root = root_key();
    let root_text = recorded_text(&path, "root", || Token::root(&root, 1_700_000_000_000).encode());
    let narrow_caps = vec![
        Capability::Read(b"app/".to_vec()),
        Capability::Write(b"app/jobs/".to_vec()),
        Capability::BlobRead,
        Capability::App { app: "forge".into(), right: "push".into(), scope: b"repos/a/".to_vec() },
    ];
    let caps = narrow_caps.clone();
    let delegated_text = recorded_text(&path, "delegated_to_key", || {
        let token = Token::decode(&root_text).unwrap();
        let holder = SecretKey::from_bytes(&token.holder_secret.unwrap());
        let spec = LinkSpec {
            caps,
            audience: Audience::Key(*client_key().public().as_bytes()),
            not_before_ms: 1_700_000_000_000,
            expires_ms: Some(1_900_000_000_000),
            may_delegate: false,
        };
        token.delegate(&holder, spec).unwrap().encode()
    });

    let root_token = Token::decode(&root_text).expect("the recorded root token decodes");
    assert_eq!(root_token.encode(), root_text, "the root token re-encodes to the same text");
    let anyone = [0u8; 32];
    let verified = verify(&root_token, &root.public(), CHECK_AT_MS, &anyone, |_| false).expect("root verifies");
    assert_eq!(verified.caps, vec![Capability::All]);

    let delegated = Token::decode(&delegated_text).expect("the recorded delegated token decodes");
    assert_eq!(delegated.encode(), delegated_text);
    let client = *client_key().public().as_bytes();
    let verified = verify(&delegated, &root.public(), CHECK_AT_MS, &client, |_| false).expect("delegated verifies");
    assert_eq!(verified.caps, narrow_caps);
    assert_eq!(verified.expires_ms, Some(1_900_000_000_000));
    assert!(verify(&delegated, &root.public(), CHECK_AT_MS, &anyone, |_| false).is_err(), "bound to its audience");
}

#[test]
fn token_links_keep_their_bytes() {
    let link = Link {
        cluster_id: [1; 16],
        issuer: [2; 32],
        holder: [3; 32],
        audience: Audience::Key([4; 32]),
        caps: vec![Capability::Read(b"a/".to_vec()), Capability::ClusterAdmin],
        not_before_ms: 1_700_000_000_000,
        expires_ms: Some(1_800_000_000_000),
        nonce: [5; 16],
        may_delegate: true,
    };
    let bearer = Link { audience: Audience::Bearer, expires_ms: None, may_delegate: false, ..link.clone() };
    let signed = SignedLink { link: link.clone(), signature: vec![6; 64] };
    check_file(
        &fixture("token_link.txt"),
        &[
            sample("Link.key", &link),
            sample("Link.bearer", &bearer),
            sample("SignedLink", &signed),
            sample("Audience.Bearer", &Audience::Bearer),
            sample("Audience.Key", &Audience::Key([4; 32])),
        ],
    );
}
