//! Key-range arithmetic: where a prefix's keys end, and the key right after another.

/// The smallest key greater than every key starting with `prefix`: the prefix with its
/// last byte below 0xff incremented and everything after it dropped. Returns the empty
/// key, which means "no upper bound", when `prefix` is empty or all 0xff bytes.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The smallest key greater than `key`: `key` followed by a zero byte.
pub fn key_successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"app/"), b"app0".to_vec());
        assert_eq!(prefix_end(b"a"), b"b".to_vec());
    }

    #[test]
    fn prefix_end_drops_trailing_0xff_bytes() {
        assert_eq!(prefix_end(&[b'a', 0xff, 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0x01, 0xfe, 0xff]), vec![0x01, 0xff]);
    }

    #[test]
    fn prefix_end_of_all_0xff_or_empty_is_unbounded() {
        assert_eq!(prefix_end(&[0xff, 0xff]), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
    }

    #[test]
    fn every_key_with_the_prefix_sorts_below_the_end() {
        let prefix = [b'k', 0x7f, 0xff];
        let end = prefix_end(&prefix);
        for suffix in [vec![], vec![0u8], vec![0xff; 10]] {
            let key = [&prefix[..], &suffix[..]].concat();
            assert!(key < end, "{key:?} !< {end:?}");
        }
        assert!(prefix_end(b"k") > b"k\xff\xff".to_vec());
    }

    #[test]
    fn key_successor_is_the_next_key() {
        assert_eq!(key_successor(b"a"), b"a\0".to_vec());
        assert!(key_successor(b"a") < b"a\x01".to_vec());
    }
}
