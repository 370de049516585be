//! Capability tokens: every refusal the security issue names, at the library level, and
//! properties of the decoder (no panic on any input, tamper detection).

use aspen_core::api::{ClientRequest, ReadConsistency};
use aspen_core::capability::{Capability, first_unmet, required};
use aspen_net::token::{Audience, LinkSpec, MAX_TOKEN_DEPTH, Token, TokenError, link_hash, verify};
use iroh::SecretKey;
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;
const ANYONE: [u8; 32] = [7; 32];

fn never(_: &[u8; 32]) -> bool {
    false
}

fn spec(caps: Vec<Capability>) -> LinkSpec {
    LinkSpec {
        caps,
        audience: Audience::Bearer,
        not_before_ms: NOW - 1,
        expires_ms: Some(NOW + 3_600_000),
        may_delegate: true,
    }
}

fn holder(token: &Token) -> SecretKey {
    SecretKey::from_bytes(&token.holder_secret.expect("bearer token that may delegate carries its holder secret"))
}

#[test]
fn the_root_token_allows_everything_and_survives_text() {
    let root = SecretKey::generate();
    let token = Token::root(&root, NOW);
    let back = Token::decode(&token.encode()).unwrap();
    assert_eq!(back, token);
    let v = verify(&back.without_secret(), &root.public(), NOW, &ANYONE, never).unwrap();
    assert_eq!(v.caps, vec![Capability::All]);
    assert_eq!(v.expires_ms, None);
}

#[test]
fn a_delegated_token_allows_only_its_prefixes() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    let child = parent
        .delegate(
            &holder(&parent),
            spec(vec![Capability::Read(b"app/".to_vec()), Capability::Write(b"app/jobs/".to_vec())]),
        )
        .unwrap();
    let v = verify(&child, &root.public(), NOW, &ANYONE, never).unwrap();
    let put = |k: &str| ClientRequest::Put { key: k.as_bytes().to_vec(), value: vec![], lease: None };
    let get = |k: &str| ClientRequest::Get { key: k.as_bytes().to_vec(), consistency: ReadConsistency::Linearizable };
    assert!(first_unmet(&v.caps, &required(&put("app/jobs/1")).unwrap()).is_none());
    assert!(first_unmet(&v.caps, &required(&put("app/config")).unwrap()).is_some());
    assert!(first_unmet(&v.caps, &required(&get("app/config")).unwrap()).is_none());
    assert!(first_unmet(&v.caps, &required(&get("app2/config")).unwrap()).is_some(), "prefix escape");
    assert!(first_unmet(&v.caps, &required(&ClientRequest::TriggerSnapshot).unwrap()).is_some());
}

#[test]
fn an_expired_or_not_yet_valid_token_is_refused() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    let mut s = spec(vec![Capability::Read(Vec::new())]);
    s.expires_ms = Some(NOW + 1000);
    let child = parent.delegate(&holder(&parent), s).unwrap();
    assert!(verify(&child, &root.public(), NOW + 999, &ANYONE, never).is_ok());
    assert_eq!(
        verify(&child, &root.public(), NOW + 1000, &ANYONE, never),
        Err(TokenError::Expired { expired_ms: NOW + 1000 })
    );
    let mut later = spec(vec![Capability::Read(Vec::new())]);
    later.not_before_ms = NOW + 5000;
    let future = parent.delegate(&holder(&parent), later).unwrap();
    assert!(matches!(verify(&future, &root.public(), NOW, &ANYONE, never), Err(TokenError::NotYetValid { .. })));
}

#[test]
fn a_token_from_another_cluster_is_refused_by_name() {
    let ours = SecretKey::generate();
    let theirs = SecretKey::generate();
    let token = Token::root(&theirs, NOW);
    let err = verify(&token, &ours.public(), NOW, &ANYONE, never).unwrap_err();
    assert!(matches!(err, TokenError::WrongCluster { .. }), "{err}");
    assert!(err.to_string().contains("not to this cluster"), "{err}");
}

#[test]
fn a_token_signed_by_another_key_claiming_our_cluster_is_refused() {
    let ours = SecretKey::generate();
    let forger = SecretKey::generate();
    let mut token = Token::root(&forger, NOW);
    // Claim our cluster id and issuer, sign with the forger's key.
    let mut link = token.links[0].link.clone();
    link.cluster_id = aspen_net::token::cluster_id(&ours.public());
    token.links[0].link = link.clone();
    assert!(matches!(verify(&token, &ours.public(), NOW, &ANYONE, never), Err(TokenError::NotFromRoot)));
    token.links[0].link.issuer = *ours.public().as_bytes();
    assert!(matches!(verify(&token, &ours.public(), NOW, &ANYONE, never), Err(TokenError::BadSignature { link: 0 })));
}

#[test]
fn a_tampered_token_is_refused() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    let mut child = parent.delegate(&holder(&parent), spec(vec![Capability::Read(b"app/".to_vec())])).unwrap();
    child.links[1].link.caps = vec![Capability::Read(Vec::new())];
    assert!(matches!(verify(&child, &root.public(), NOW, &ANYONE, never), Err(TokenError::BadSignature { link: 1 })));
    let mut child = parent.delegate(&holder(&parent), spec(vec![Capability::Read(b"app/".to_vec())])).unwrap();
    child.links[1].signature[10] ^= 1;
    assert!(matches!(verify(&child, &root.public(), NOW, &ANYONE, never), Err(TokenError::BadSignature { link: 1 })));
}

#[test]
fn delegation_that_tries_to_widen_is_refused_when_made_and_when_checked() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    let narrow = parent.delegate(&holder(&parent), spec(vec![Capability::Write(b"app/".to_vec())])).unwrap();
    let err = narrow.delegate(&holder(&narrow), spec(vec![Capability::Write(b"ap".to_vec())])).unwrap_err();
    assert!(matches!(err, TokenError::Widens { .. }), "{err}");
    let err = narrow.delegate(&holder(&narrow), spec(vec![Capability::ClusterAdmin])).unwrap_err();
    assert!(matches!(err, TokenError::Widens { .. }), "{err}");
    // Forge the widening by hand, signing with the holder key: the verifier refuses it.
    let mut forged = narrow.delegate(&holder(&narrow), spec(vec![Capability::Write(b"app/x".to_vec())])).unwrap();
    let signer = holder(&narrow);
    forged.links[2].link.caps = vec![Capability::All];
    let mut msg = b"aspen token link v1\0".to_vec();
    msg.extend(postcard::to_allocvec(&forged.links[2].link).unwrap());
    forged.links[2].signature = signer.sign(&msg).to_bytes().to_vec();
    let err = verify(&forged, &root.public(), NOW, &ANYONE, never).unwrap_err();
    assert!(matches!(err, TokenError::Widens { link: 2, .. }), "{err}");
    // Outliving the parent is widening too.
    let mut long = spec(vec![Capability::Write(b"app/".to_vec())]);
    long.expires_ms = Some(NOW + 10 * 3_600_000);
    assert!(matches!(narrow.delegate(&holder(&narrow), long), Err(TokenError::OutlivesParent { .. })));
}

#[test]
fn delegation_needs_the_right_key_the_right_flag_and_stays_shallow() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    assert!(parent.delegate(&SecretKey::generate(), spec(vec![])).is_err(), "not the holder");
    let mut no_more = spec(vec![Capability::Read(Vec::new())]);
    no_more.may_delegate = false;
    let leaf = parent.delegate(&holder(&parent), no_more).unwrap();
    assert!(leaf.holder_secret.is_none());
    let mut t = parent;
    for _ in 1..MAX_TOKEN_DEPTH {
        t = t.delegate(&holder(&t), spec(vec![Capability::Read(Vec::new())])).unwrap();
    }
    assert_eq!(t.links.len(), MAX_TOKEN_DEPTH);
    assert!(verify(&t, &root.public(), NOW, &ANYONE, never).is_ok());
    assert!(matches!(t.delegate(&holder(&t), spec(vec![])), Err(TokenError::TooDeep { .. })));
}

#[test]
fn revoking_a_link_revokes_it_and_everything_delegated_from_it() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    let mid = parent.delegate(&holder(&parent), spec(vec![Capability::Read(Vec::new())])).unwrap();
    let leaf = mid.delegate(&holder(&mid), spec(vec![Capability::Read(b"a/".to_vec())])).unwrap();
    let revoked = mid.id();
    assert_eq!(revoked, link_hash(&leaf.links[1]));
    let is_revoked = |h: &[u8; 32]| *h == revoked;
    assert_eq!(verify(&mid, &root.public(), NOW, &ANYONE, is_revoked), Err(TokenError::Revoked));
    assert_eq!(verify(&leaf, &root.public(), NOW, &ANYONE, is_revoked), Err(TokenError::Revoked));
    assert!(verify(&parent, &root.public(), NOW, &ANYONE, is_revoked).is_ok());
    let v = verify(&leaf, &root.public(), NOW, &ANYONE, never).unwrap();
    assert_eq!(v.still_valid(NOW, is_revoked), Err(TokenError::Revoked));
}

#[test]
fn an_audience_bound_token_works_only_for_its_audience() {
    let root = SecretKey::generate();
    let parent = Token::root(&root, NOW);
    let alice = SecretKey::generate();
    let mut s = spec(vec![Capability::Read(Vec::new())]);
    s.audience = Audience::Key(*alice.public().as_bytes());
    let bound = parent.delegate(&holder(&parent), s).unwrap();
    assert!(bound.holder_secret.is_none(), "the audience holds its own key");
    assert!(verify(&bound, &root.public(), NOW, alice.public().as_bytes(), never).is_ok());
    let mallory = SecretKey::generate();
    let err = verify(&bound, &root.public(), NOW, mallory.public().as_bytes(), never).unwrap_err();
    assert!(matches!(err, TokenError::WrongAudience { .. }), "{err}");
    // Alice may delegate with her own key.
    let onward = bound.delegate(&alice, spec(vec![Capability::Read(b"x/".to_vec())])).unwrap();
    assert!(verify(&onward, &root.public(), NOW, &ANYONE, never).is_ok());
}

#[test]
fn malformed_token_text_is_named() {
    for (text, needle) in [
        ("", "must start with"),
        ("hello", "must start with"),
        ("aspentok!!!", "bad base32"),
        ("aspentokaaaa", "malformed"),
    ] {
        let err = Token::decode(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let long = format!("aspentok{}", "a".repeat(100_000));
    assert!(Token::decode(&long).unwrap_err().to_string().contains("over the limit"));
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Token::from_bytes(&bytes);
    }

    #[test]
    fn decoding_any_text_never_panics(text in "aspentok[a-z2-7]{0,400}") {
        let _ = Token::decode(&text);
    }

    #[test]
    fn any_single_byte_change_is_caught(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let root = SecretKey::from_bytes(&[3; 32]);
        let parent = Token::root(&root, NOW);
        let child = parent
            .delegate(&holder(&parent), spec(vec![Capability::Read(b"app/".to_vec())]))
            .unwrap()
            .without_secret();
        let mut bytes = child.to_bytes();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(t) = Token::from_bytes(&bytes) {
            let verdict = verify(&t, &root.public(), NOW, &ANYONE, never);
            prop_assert!(verdict.is_err() || t == child, "a changed token verified: byte {}", i);
        }
    }
}
