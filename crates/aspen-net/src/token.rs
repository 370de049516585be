//! Capability tokens: chains of signed links, rooted in the cluster's root key.
//!
//! Link 0 is signed by the cluster root key. Each later link is signed by the key the
//! link before it names as `holder`, and may only narrow: its capabilities must be
//! covered by its parent's, its parent must allow delegation, and its expiry may not
//! pass its parent's. A chain holds at most [`MAX_TOKEN_DEPTH`] links.
//!
//! Who may present a token is the last link's audience: anyone holding it (`Bearer`), or
//! only the endpoint whose iroh key is named (`Key`), which iroh's TLS handshake proves.
//! A bearer link's holder key is made fresh for it, and its secret travels with the
//! token text so the bearer can delegate further offline; it is never sent to a node.
//!
//! Revocation names a link by [`link_hash`]: revoking a link revokes every token whose
//! chain contains it. Verification ([`verify`]) is a pure function of the token, the
//! root key, the time, the presenter and the revocation set.

use aspen_core::capability::{Capability, narrows};
use iroh::{PublicKey, SecretKey, Signature};
use serde::{Deserialize, Serialize};

/// Text tokens start with this.
pub const TOKEN_PREFIX: &str = "aspentok";
/// Most links in a chain (the root link included).
pub const MAX_TOKEN_DEPTH: usize = 4;
/// Most capabilities in one link.
pub const MAX_TOKEN_CAPS: usize = 64;
/// Largest encoded token (checked before decoding).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest token text accepted (checked before decoding).
pub const MAX_TOKEN_CHARS: usize = TOKEN_PREFIX.len() + MAX_TOKEN_BYTES * 8 / 5 + 8;

const SIGNING_CONTEXT: &[u8] = b"aspen token link v1\0";

/// Who may present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// Whoever holds the token.
    Bearer,
    /// Only the endpoint with this iroh public key.
    Key([u8; 32]),
}

/// The signed content of one link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The cluster this chain belongs to ([`cluster_id`] of the root key).
    pub cluster_id: [u8; 16],
    /// The key that signed this link.
    pub issuer: [u8; 32],
    /// The key that may sign the next link.
    pub holder: [u8; 32],
    pub audience: Audience,
    pub caps: Vec<Capability>,
    /// Unix milliseconds before which the link is not valid.
    pub not_before_ms: u64,
    /// Unix milliseconds from which the link is no longer valid; `None`: no expiry.
    pub expires_ms: Option<u64>,
    /// Makes every link unique, so revoking one never revokes a look-alike.
    pub nonce: [u8; 16],
    /// Whether a next link may be signed by `holder`.
    pub may_delegate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedLink {
    pub link: Link,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A token: its chain, and (for a bearer token that may delegate) the last holder's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub links: Vec<SignedLink>,
    pub holder_secret: Option<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
enum TokenWire {
    V1 { links: Vec<SignedLink>, holder_secret: Option<[u8; 32]> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token chain has {depth} links; at most {max} are allowed")]
    TooDeep { depth: usize, max: usize },
    #[error("token belongs to cluster {token_cluster}, not to this cluster ({cluster})")]
    WrongCluster { token_cluster: String, cluster: String },
    #[error("token is not signed by this cluster's root key")]
    NotFromRoot,
    #[error("token signature of link {link} does not verify (tampered or forged)")]
    BadSignature { link: usize },
    #[error("token link {link} is not signed by the holder of link {parent}")]
    BrokenChain { link: usize, parent: usize },
    #[error("token link {link} delegates from a link that does not allow delegation")]
    DelegationNotAllowed { link: usize },
    #[error("token link {link} grants more than its parent: {cap}")]
    Widens { link: usize, cap: String },
    #[error("token link {link} outlives its parent")]
    OutlivesParent { link: usize },
    #[error("token is not valid before {not_before_ms} (unix ms)")]
    NotYetValid { not_before_ms: u64 },
    #[error("token expired at {expired_ms} (unix ms)")]
    Expired { expired_ms: u64 },
    #[error("token is bound to another client's key ({audience}); this connection is {presenter}")]
    WrongAudience { audience: String, presenter: String },
    #[error("token has been revoked")]
    Revoked,
    #[error("this token cannot delegate: {0}")]
    CannotDelegate(String),
}

/// The cluster id derived from its root public key.
pub fn cluster_id(root: &PublicKey) -> [u8; 16] {
    let hash = blake3::derive_key("aspen cluster id v1", root.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    id
}

/// A cluster id as people read it: 32 hex digits.
pub fn cluster_id_text(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A link's identity, as named by revocations.
pub fn link_hash(link: &SignedLink) -> [u8; 32] {
    let bytes = postcard::to_allocvec(link).unwrap_or_default();
    *blake3::hash(&bytes).as_bytes()
}

fn signing_bytes(link: &Link) -> Vec<u8> {
    let mut msg = SIGNING_CONTEXT.to_vec();
    // Plain owned data always serializes.
    msg.extend(postcard::to_allocvec(link).unwrap_or_default());
    msg
}

fn sign(key: &SecretKey, link: Link) -> SignedLink {
    let signature = key.sign(&signing_bytes(&link)).to_bytes().to_vec();
    SignedLink { link, signature }
}

fn short(key: &[u8; 32]) -> String {
    key.iter().take(5).map(|b| format!("{b:02x}")).collect::<String>() + "…"
}

/// What a new link grants and to whom.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub caps: Vec<Capability>,
    pub audience: Audience,
    pub not_before_ms: u64,
    pub expires_ms: Option<u64>,
    pub may_delegate: bool,
}

impl Token {
    /// The root token of a new cluster: everything, for whoever holds it, no expiry
    /// (revocable like any other), able to delegate.
    pub fn root(root: &SecretKey, now_ms: u64) -> Token {
        let spec = LinkSpec {
            caps: vec![Capability::All],
            audience: Audience::Bearer,
            not_before_ms: now_ms.saturating_sub(60_000),
            expires_ms: None,
            may_delegate: true,
        };
        Token::issue(root, spec)
    }

    /// A one-link token signed by the cluster root key.
    pub fn issue(root: &SecretKey, spec: LinkSpec) -> Token {
        let root_pk = root.public();
        let (holder, holder_secret) = holder_for(&spec);
        let link = Link {
            cluster_id: cluster_id(&root_pk),
            issuer: *root_pk.as_bytes(),
            holder,
            audience: spec.audience,
            caps: spec.caps,
            not_before_ms: spec.not_before_ms,
            expires_ms: spec.expires_ms,
            nonce: rand::random(),
            may_delegate: spec.may_delegate,
        };
        Token { links: vec![sign(root, link)], holder_secret }
    }

    /// A narrower token derived from this one, signed by `signer` (the last link's holder:
    /// this token's own holder secret for a bearer token, the audience's key otherwise).
    pub fn delegate(&self, signer: &SecretKey, spec: LinkSpec) -> Result<Token, TokenError> {
        let last = self.links.last().ok_or_else(|| TokenError::Malformed("no links".into()))?;
        let depth = self.links.len() + 1;
        if depth > MAX_TOKEN_DEPTH {
            return Err(TokenError::TooDeep { depth, max: MAX_TOKEN_DEPTH });
        }
        if !last.link.may_delegate {
            return Err(TokenError::CannotDelegate("it was issued without the right to delegate".into()));
        }
        if signer.public().as_bytes() != &last.link.holder {
            return Err(TokenError::CannotDelegate("the signing key is not this token's holder".into()));
        }
        if let Some(cap) = spec.caps.iter().find(|c| !narrows(&last.link.caps, std::slice::from_ref(c))) {
            return Err(TokenError::Widens { link: self.links.len(), cap: format!("{cap:?}") });
        }
        if let Some(parent_exp) = last.link.expires_ms
            && spec.expires_ms.is_none_or(|e| e > parent_exp)
        {
            return Err(TokenError::OutlivesParent { link: self.links.len() });
        }
        let (holder, holder_secret) = holder_for(&spec);
        let link = Link {
            cluster_id: last.link.cluster_id,
            issuer: last.link.holder,
            holder,
            audience: spec.audience,
            caps: spec.caps,
            not_before_ms: spec.not_before_ms.max(last.link.not_before_ms),
            expires_ms: spec.expires_ms,
            nonce: rand::random(),
            may_delegate: spec.may_delegate,
        };
        let mut links = self.links.clone();
        links.push(sign(signer, link));
        Ok(Token { links, holder_secret })
    }

    /// The same chain without the holder secret: what a client sends to a node.
    pub fn without_secret(&self) -> Token {
        Token { links: self.links.clone(), holder_secret: None }
    }

    /// The last link's hash: what `aspen token revoke` names.
    pub fn id(&self) -> [u8; 32] {
        self.links.last().map(link_hash).unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = TokenWire::V1 { links: self.links.clone(), holder_secret: self.holder_secret };
        postcard::to_allocvec(&wire).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Token, TokenError> {
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!("{} bytes, over the limit of {MAX_TOKEN_BYTES}", bytes.len())));
        }
        let TokenWire::V1 { links, holder_secret } =
            postcard::from_bytes(bytes).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if links.is_empty() {
            return Err(TokenError::Malformed("no links".into()));
        }
        if links.len() > MAX_TOKEN_DEPTH {
            return Err(TokenError::TooDeep { depth: links.len(), max: MAX_TOKEN_DEPTH });
        }
        for (i, l) in links.iter().enumerate() {
            if l.link.caps.len() > MAX_TOKEN_CAPS {
                return Err(TokenError::Malformed(format!(
                    "link {i} has {} capabilities, over the limit of {MAX_TOKEN_CAPS}",
                    l.link.caps.len()
                )));
            }
            if l.signature.len() != Signature::LENGTH {
                return Err(TokenError::Malformed(format!("link {i} has a signature of {} bytes", l.signature.len())));
            }
        }
        Ok(Token { links, holder_secret })
    }

    /// `aspentok` + lowercase base32.
    pub fn encode(&self) -> String {
        format!("{TOKEN_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase())
    }

    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed(format!(
                "it is {} characters, over the limit of {MAX_TOKEN_CHARS}",
                text.len()
            )));
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| TokenError::Malformed(format!("it must start with \"{TOKEN_PREFIX}\"")))?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|e| TokenError::Malformed(format!("bad base32: {e}")))?;
        Token::from_bytes(&bytes)
    }
}

/// A bearer link gets a fresh holder key whose secret travels with the token (only if it
/// may delegate); a key-bound link's holder is its audience.
fn holder_for(spec: &LinkSpec) -> ([u8; 32], Option<[u8; 32]>) {
    match spec.audience {
        Audience::Key(k) => (k, None),
        Audience::Bearer => {
            let key = SecretKey::generate();
            (*key.public().as_bytes(), spec.may_delegate.then(|| key.to_bytes()))
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The last link's capabilities (each link's are inside its parent's).
    pub caps: Vec<Capability>,
    /// Every link's hash, root first: a revocation of any of them ends the token.
    pub link_hashes: Vec<[u8; 32]>,
    /// The earliest expiry along the chain.
    pub expires_ms: Option<u64>,
}

impl Verified {
    /// Whether the token is still usable at `now_ms` given the revocation set.
    pub fn still_valid(&self, now_ms: u64, is_revoked: impl Fn(&[u8; 32]) -> bool) -> Result<(), TokenError> {
        if let Some(exp) = self.expires_ms
            && now_ms >= exp
        {
            return Err(TokenError::Expired { expired_ms: exp });
        }
        if self.link_hashes.iter().any(is_revoked) {
            return Err(TokenError::Revoked);
        }
        Ok(())
    }
}

/// Checks `token` for this cluster (`root`), at `now_ms`, presented over a connection
/// whose remote key is `presenter`.
pub fn verify(
    token: &Token,
    root: &PublicKey,
    now_ms: u64,
    presenter: &[u8; 32],
    is_revoked: impl Fn(&[u8; 32]) -> bool,
) -> Result<Verified, TokenError> {
    let depth = token.links.len();
    if depth == 0 {
        return Err(TokenError::Malformed("no links".into()));
    }
    if depth > MAX_TOKEN_DEPTH {
        return Err(TokenError::TooDeep { depth, max: MAX_TOKEN_DEPTH });
    }
    let ours = cluster_id(root);
    let first = &token.links[0].link;
    if first.cluster_id != ours {
        return Err(TokenError::WrongCluster {
            token_cluster: cluster_id_text(&first.cluster_id),
            cluster: cluster_id_text(&ours),
        });
    }
    if &first.issuer != root.as_bytes() {
        return Err(TokenError::NotFromRoot);
    }
    let mut expires_ms: Option<u64> = None;
    let mut hashes = Vec::with_capacity(depth);
    for (i, signed) in token.links.iter().enumerate() {
        let link = &signed.link;
        if i > 0 {
            let parent = &token.links[i - 1].link;
            if link.issuer != parent.holder {
                return Err(TokenError::BrokenChain { link: i, parent: i - 1 });
            }
            if !parent.may_delegate {
                return Err(TokenError::DelegationNotAllowed { link: i });
            }
            if let Some(cap) = link.caps.iter().find(|c| !narrows(&parent.caps, std::slice::from_ref(c))) {
                return Err(TokenError::Widens { link: i, cap: format!("{cap:?}") });
            }
            if link.cluster_id != parent.cluster_id {
                return Err(TokenError::BrokenChain { link: i, parent: i - 1 });
            }
        }
        let issuer = PublicKey::from_bytes(&link.issuer).map_err(|_| TokenError::BadSignature { link: i })?;
        let sig: [u8; Signature::LENGTH] =
            signed.signature.as_slice().try_into().map_err(|_| TokenError::BadSignature { link: i })?;
        issuer
            .verify(&signing_bytes(link), &Signature::from_bytes(&sig))
            .map_err(|_| TokenError::BadSignature { link: i })?;
        if now_ms < link.not_before_ms {
            return Err(TokenError::NotYetValid { not_before_ms: link.not_before_ms });
        }
        if let Some(exp) = link.expires_ms {
            if now_ms >= exp {
                return Err(TokenError::Expired { expired_ms: exp });
            }
            expires_ms = Some(expires_ms.map_or(exp, |e| e.min(exp)));
        }
        hashes.push(link_hash(signed));
    }
    if hashes.iter().any(&is_revoked) {
        return Err(TokenError::Revoked);
    }
    let last = &token.links[depth - 1].link;
    if let Audience::Key(k) = last.audience
        && &k != presenter
    {
        return Err(TokenError::WrongAudience { audience: short(&k), presenter: short(presenter) });
    }
    Ok(Verified { caps: last.caps.clone(), link_hashes: hashes, expires_ms })
}
