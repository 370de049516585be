//! Compare-and-swap as a transaction: how it is built and how its answer is read.

use aspen_core::KeyValue;
use aspen_core::command::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult};

/// The result of [`crate::KvExt::cas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// True when the key held the expected value and now holds the new one.
    pub succeeded: bool,
    /// The key as it is after the transaction: the new value on success, the value that
    /// failed the compare on failure (`None` when the key is absent).
    pub current: Option<KeyValue>,
    /// The store's revision after the transaction.
    pub revision: u64,
}

/// The transaction behind a compare-and-swap: if `key` holds `expected` (or, for `None`,
/// does not exist), put `new` and read it back; otherwise read the current value.
pub fn cas_txn(key: &[u8], expected: Option<Vec<u8>>, new: Vec<u8>) -> Txn {
    let target = match expected {
        Some(value) => CompareTarget::Value(value),
        None => CompareTarget::Version(0),
    };
    Txn {
        compare: vec![Compare { key: key.to_vec(), op: CompareOp::Equal, target }],
        success: vec![TxnOp::Put { key: key.to_vec(), value: new, lease: None }, TxnOp::Get { key: key.to_vec() }],
        failure: vec![TxnOp::Get { key: key.to_vec() }],
    }
}

/// Reads a [`cas_txn`]'s answer: the last `Get` result is the key's current state.
pub fn cas_outcome(succeeded: bool, revision: u64, results: &[TxnOpResult]) -> CasOutcome {
    let current = results.iter().rev().find_map(|r| match r {
        TxnOpResult::Get { kv } => Some(kv.clone()),
        _ => None,
    });
    CasOutcome { succeeded, current: current.flatten(), revision }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_with_an_expected_value_compares_the_value() {
        let txn = cas_txn(b"k", Some(b"old".to_vec()), b"new".to_vec());
        assert_eq!(
            txn.compare,
            vec![Compare { key: b"k".to_vec(), op: CompareOp::Equal, target: CompareTarget::Value(b"old".to_vec()) }]
        );
        assert_eq!(
            txn.success,
            vec![
                TxnOp::Put { key: b"k".to_vec(), value: b"new".to_vec(), lease: None },
                TxnOp::Get { key: b"k".to_vec() }
            ]
        );
        assert_eq!(txn.failure, vec![TxnOp::Get { key: b"k".to_vec() }]);
    }

    #[test]
    fn cas_expecting_absence_compares_version_zero() {
        let txn = cas_txn(b"k", None, b"v".to_vec());
        assert_eq!(txn.compare[0].target, CompareTarget::Version(0));
        assert_eq!(txn.compare[0].op, CompareOp::Equal);
    }

    #[test]
    fn cas_txn_passes_validation() {
        aspen_core::validate::txn(&cas_txn(b"k", Some(b"a".to_vec()), b"b".to_vec())).unwrap();
    }

    #[test]
    fn outcome_reports_the_value_read_back() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"cur".to_vec(),
            create_revision: 1,
            mod_revision: 3,
            version: 2,
            lease: None,
        };
        let failed = cas_outcome(false, 5, &[TxnOpResult::Get { kv: Some(kv.clone()) }]);
        assert_eq!(failed, CasOutcome { succeeded: false, current: Some(kv.clone()), revision: 5 });
        let ok = cas_outcome(true, 6, &[TxnOpResult::Put { prev: None }, TxnOpResult::Get { kv: Some(kv.clone()) }]);
        assert_eq!(ok.current, Some(kv));
        let absent = cas_outcome(false, 6, &[TxnOpResult::Get { kv: None }]);
        assert_eq!(absent.current, None);
    }
}
