//! Capabilities: what a token allows, and what each client request needs.
//!
//! Pure and total: [`required`] lists the needs of a request (one per key it touches),
//! and [`allows`] decides whether a set of capabilities satisfies all of them. Keys are
//! bytes and prefixes are byte prefixes: `app` covers `app2/x`, `app/` does not. There is
//! no path normalisation of any kind.

use serde::{Deserialize, Serialize};

use crate::api::ClientRequest;
use crate::command::TxnOp;
use crate::keys::prefix_end;

/// One right a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Capability {
    /// Everything, including rights that later versions add: the root token's grant.
    All,
    /// Read keys starting with the prefix (get, scan, txn compares and gets).
    Read(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Put keys starting with the prefix.
    Write(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Delete keys starting with the prefix (delete, delete-range inside the prefix).
    Delete(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Watch keys starting with the prefix.
    Watch(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Membership changes, snapshots, token revocation.
    ClusterAdmin,
    BlobRead,
    BlobWrite,
    /// A right defined by an application built on Aspen, e.g. app `forge`, right `push`,
    /// scope `repos/aspen/`. The scope is a byte prefix, narrowed like key prefixes.
    App {
        app: String,
        right: String,
        #[serde(with = "serde_bytes")]
        scope: Vec<u8>,
    },
}

impl Capability {
    /// Whether holding `self` implies holding `other`: the rule delegation must obey.
    pub fn covers(&self, other: &Capability) -> bool {
        use Capability::*;
        match (self, other) {
            (All, _) => true,
            (Read(p), Read(q)) | (Write(p), Write(q)) | (Delete(p), Delete(q)) | (Watch(p), Watch(q)) => {
                q.starts_with(p)
            }
            (ClusterAdmin, ClusterAdmin) | (BlobRead, BlobRead) | (BlobWrite, BlobWrite) => true,
            (App { app, right, scope }, App { app: a2, right: r2, scope: s2 }) => {
                app == a2 && right == r2 && s2.starts_with(scope)
            }
            _ => false,
        }
    }

    /// Size on the wire, for the token size limit.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            Capability::Read(p) | Capability::Write(p) | Capability::Delete(p) | Capability::Watch(p) => p.len() + 2,
            Capability::App { app, right, scope } => app.len() + right.len() + scope.len() + 4,
            _ => 1,
        }
    }
}

/// Whether every capability in `child` is covered by one in `parent`.
pub fn narrows(parent: &[Capability], child: &[Capability]) -> bool {
    child.iter().all(|c| parent.iter().any(|p| p.covers(c)))
}

/// One thing a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need<'a> {
    Read(&'a [u8]),
    /// Every key in `[start, end)`; an empty `end` has no upper bound.
    ReadRange(&'a [u8], &'a [u8]),
    Write(&'a [u8]),
    Delete(&'a [u8]),
    /// Every key in `[start, end)`; an empty `end` has no upper bound.
    DeleteRange(&'a [u8], &'a [u8]),
    Watch(&'a [u8]),
    /// Put and delete any key under the prefix: what a queue or rate-limiter command does
    /// to its own keys. A write right on the prefix grants it.
    WriteUnder(Vec<u8>),
    Admin,
    BlobRead,
    BlobWrite,
    /// Some write right, anywhere: lease grant, keepalive and list (leases carry no key).
    AnyWrite,
    /// Only a valid token: status, ticket, node info.
    Authenticated,
}

/// Whether the range `[start, end)` (empty `end`: unbounded) lies inside `prefix`.
fn range_in_prefix(prefix: &[u8], start: &[u8], end: &[u8]) -> bool {
    if !start.starts_with(prefix) {
        return false;
    }
    let limit = prefix_end(prefix);
    limit.is_empty() || (!end.is_empty() && end <= limit.as_slice())
}

impl Need<'_> {
    /// Whether one capability satisfies this need.
    pub fn satisfied_by(&self, cap: &Capability) -> bool {
        use Capability as C;
        if matches!(cap, C::All) {
            return true;
        }
        match (self, cap) {
            (Need::Read(k), C::Read(p)) | (Need::Write(k), C::Write(p)) | (Need::Delete(k), C::Delete(p)) => {
                k.starts_with(p)
            }
            (Need::Watch(q), C::Watch(p)) => q.starts_with(p),
            (Need::WriteUnder(q), C::Write(p)) => q.starts_with(p),
            (Need::ReadRange(s, e), C::Read(p)) | (Need::DeleteRange(s, e), C::Delete(p)) => range_in_prefix(p, s, e),
            (Need::Admin, C::ClusterAdmin) => true,
            (Need::BlobRead, C::BlobRead) | (Need::BlobWrite, C::BlobWrite) => true,
            (Need::AnyWrite, C::Write(_)) => true,
            (Need::Authenticated, _) => true,
            _ => false,
        }
    }

    /// For error messages: what was needed, keys shown lossily.
    pub fn describe(&self) -> String {
        let k = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            Need::Read(key) => format!("read {:?}", k(key)),
            Need::ReadRange(s, e) => format!("read [{:?}, {:?})", k(s), k(e)),
            Need::Write(key) => format!("write {:?}", k(key)),
            Need::Delete(key) => format!("delete {:?}", k(key)),
            Need::DeleteRange(s, e) => format!("delete [{:?}, {:?})", k(s), k(e)),
            Need::Watch(p) => format!("watch {:?}", k(p)),
            Need::WriteUnder(p) => format!("write under {:?}", k(p)),
            Need::Admin => "cluster admin".into(),
            Need::BlobRead => "blob read".into(),
            Need::BlobWrite => "blob write".into(),
            Need::AnyWrite => "a write right".into(),
            Need::Authenticated => "a valid token".into(),
        }
    }
}

/// What `request` needs: one entry per key it touches. `None` for requests that are not
/// checked against capabilities: `Forwarded` (only member nodes may send it), `Init`
/// (only an uninitialized node accepts it) and `Authenticate` (it presents the token).
pub fn required(request: &ClientRequest) -> Option<Vec<Need<'_>>> {
    use ClientRequest as R;
    Some(match request {
        R::Get { key, .. } => vec![Need::Read(key)],
        R::Scan { start, end, .. } => vec![Need::ReadRange(start, end)],
        R::ScanWith(scan) => vec![Need::ReadRange(&scan.start, &scan.end)],
        R::Put { key, .. } => vec![Need::Write(key)],
        R::Delete { key } => vec![Need::Delete(key)],
        R::DeleteRange { start, end } => vec![Need::DeleteRange(start, end)],
        R::Txn(txn) => {
            let mut needs: Vec<Need<'_>> = txn.compare.iter().map(|c| Need::Read(&c.key)).collect();
            for op in txn.success.iter().chain(&txn.failure) {
                needs.push(match op {
                    TxnOp::Put { key, .. } => Need::Write(key),
                    TxnOp::Delete { key } => Need::Delete(key),
                    TxnOp::Get { key } => Need::Read(key),
                });
            }
            needs
        }
        R::LeaseGrant { .. } | R::LeaseKeepAlive { .. } | R::LeaseList => vec![Need::AnyWrite],
        // Revoking a lease deletes every key attached to it, whoever attached them.
        R::LeaseRevoke { .. } => vec![Need::DeleteRange(b"", b"")],
        R::Watch { prefix, .. } => vec![Need::Watch(prefix)],
        R::AddLearner { .. }
        | R::Promote { .. }
        | R::Remove { .. }
        | R::TransferLeader { .. }
        | R::TriggerSnapshot
        | R::RevokeToken { .. } => vec![Need::Admin],
        R::Status | R::Ticket | R::NodeInfo | R::Apps | R::NodeBuild => vec![Need::Authenticated],
        R::Queue(command) => command.queues().iter().map(|q| Need::WriteUnder(crate::queue::queue_prefix(q))).collect(),
        R::BlobAdd | R::BlobReplicate { .. } | R::BlobPin { .. } | R::BlobUnpin { .. } => vec![Need::BlobWrite],
        R::BlobGet { .. } | R::BlobHas { .. } | R::BlobList { .. } | R::BlobStatus { .. } | R::BlobPins { .. } => {
            vec![Need::BlobRead]
        }
        R::RateLimit(take) => vec![Need::WriteUnder(crate::ratelimit::bucket_key(&take.name))],
        R::Init { .. } | R::Forwarded(_) | R::Authenticate { .. } | R::SetClusterRoot { .. } => return None,
    })
}

/// The first need of `request` that `caps` do not satisfy, or `None` when all are.
/// A request with any unmet need is refused whole.
pub fn first_unmet<'r>(caps: &[Capability], needs: &[Need<'r>]) -> Option<Need<'r>> {
    needs.iter().find(|n| !caps.iter().any(|c| n.satisfied_by(c))).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_bytes_not_paths() {
        let caps = [Capability::Write(b"app/".to_vec())];
        assert!(first_unmet(&caps, &[Need::Write(b"app/x")]).is_none());
        assert!(first_unmet(&caps, &[Need::Write(b"app2/x")]).is_some());
        assert!(first_unmet(&caps, &[Need::Write(b"app")]).is_some());
        assert!(first_unmet(&caps, &[Need::Write(b"app/../etc")]).is_none(), "no normalisation: it is under app/");
        let loose = [Capability::Write(b"app".to_vec())];
        assert!(first_unmet(&loose, &[Need::Write(b"app2/x")]).is_none(), "`app` is a byte prefix of `app2`");
    }

    #[test]
    fn ranges_must_lie_inside_the_prefix() {
        let caps = [Capability::Read(b"app/".to_vec())];
        assert!(Need::ReadRange(b"app/", b"app0").satisfied_by(&caps[0]));
        assert!(Need::ReadRange(b"app/a", b"app/b").satisfied_by(&caps[0]));
        assert!(!Need::ReadRange(b"app/", b"").satisfied_by(&caps[0]), "unbounded end escapes");
        assert!(!Need::ReadRange(b"app/", b"app1").satisfied_by(&caps[0]));
        assert!(!Need::ReadRange(b"ap", b"app0").satisfied_by(&caps[0]));
        assert!(Need::ReadRange(b"", b"").satisfied_by(&Capability::Read(Vec::new())));
        assert!(Need::ReadRange(b"\xff\xff", b"").satisfied_by(&Capability::Read(vec![0xff])));
    }

    #[test]
    fn a_txn_touching_one_key_outside_the_grant_is_refused_whole() {
        use crate::command::{Compare, CompareOp, CompareTarget, Txn};
        let caps = [Capability::Read(b"app/".to_vec()), Capability::Write(b"app/".to_vec())];
        let txn = Txn {
            compare: vec![Compare { key: b"app/a".to_vec(), op: CompareOp::Equal, target: CompareTarget::Version(1) }],
            success: vec![TxnOp::Put { key: b"app/b".to_vec(), value: vec![], lease: None }],
            failure: vec![TxnOp::Put { key: b"other/c".to_vec(), value: vec![], lease: None }],
        };
        let request = ClientRequest::Txn(txn);
        let needs = required(&request).unwrap();
        assert_eq!(first_unmet(&caps, &needs), Some(Need::Write(b"other/c")));
    }

    #[test]
    fn delegation_may_only_narrow() {
        let parent = [Capability::Read(b"app/".to_vec()), Capability::ClusterAdmin];
        assert!(narrows(&parent, &[Capability::Read(b"app/jobs/".to_vec())]));
        assert!(narrows(&parent, &[Capability::ClusterAdmin]));
        assert!(!narrows(&parent, &[Capability::Read(b"ap".to_vec())]));
        assert!(!narrows(&parent, &[Capability::Write(b"app/".to_vec())]));
        assert!(!narrows(&parent, &[Capability::All]));
        assert!(narrows(&[Capability::All], &[Capability::All, Capability::BlobWrite]));
        let forge = Capability::App { app: "forge".into(), right: "push".into(), scope: b"repos/".to_vec() };
        let narrower = Capability::App { app: "forge".into(), right: "push".into(), scope: b"repos/a/".to_vec() };
        let other = Capability::App { app: "forge".into(), right: "admin".into(), scope: b"repos/a/".to_vec() };
        assert!(narrows(std::slice::from_ref(&forge), std::slice::from_ref(&narrower)));
        assert!(!narrows(&[narrower], std::slice::from_ref(&forge)));
        assert!(!narrows(&[forge], &[other]));
    }

    #[test]
    fn every_request_kind_has_its_needs() {
        assert_eq!(required(&ClientRequest::Status), Some(vec![Need::Authenticated]));
        assert_eq!(required(&ClientRequest::TriggerSnapshot), Some(vec![Need::Admin]));
        assert!(required(&ClientRequest::Init { members: vec![] }).is_none());
        let fwd = ClientRequest::Forwarded(Box::new(ClientRequest::Status));
        assert!(required(&fwd).is_none());
        let revoke = ClientRequest::LeaseRevoke { id: crate::types::LeaseId(1) };
        assert!(first_unmet(&[Capability::Delete(b"app/".to_vec())], &required(&revoke).unwrap()).is_some());
        assert!(first_unmet(&[Capability::Delete(Vec::new())], &required(&revoke).unwrap()).is_none());
    }
}
