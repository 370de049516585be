//! Nix's base-32: the alphabet and bit order of store path hashes and of `sha256:` hashes in
//! narinfo files. It is not RFC 4648 base32: the alphabet leaves out `e o u t`, and the
//! string is the number written most significant digit first, with the bytes read as one
//! little-endian number.

use aspen_core::AspenError;

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Characters for `len` bytes.
pub fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// `bytes` in Nix's base-32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = u16::from(bytes[i]) >> j;
        let high = bytes.get(i + 1).map_or(0, |b| u16::from(*b) << (8 - j));
        out.push(ALPHABET[usize::from((low | high) & 0x1f)] as char);
    }
    out
}

/// Decodes `text` (Nix's base-32) into `len` bytes. Refuses a wrong length, a character
/// outside the alphabet, or bits beyond `len` bytes.
pub fn decode(text: &str, len: usize) -> Result<Vec<u8>, AspenError> {
    if text.len() != encoded_len(len) {
        return Err(AspenError::invalid(format!(
            "{text:?} is {} characters; {len} bytes in Nix's base-32 are {}",
            text.len(),
            encoded_len(len)
        )));
    }
    let mut out = vec![0u8; len];
    for (n, c) in text.bytes().rev().enumerate() {
        let digit = ALPHABET.iter().position(|a| *a == c).ok_or_else(|| {
            AspenError::invalid(format!("{text:?} has {:?}, which is not a digit of Nix's base-32", c as char))
        })? as u16;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= (digit << j) as u8;
        let carry = (digit << j) >> 8;
        if carry != 0 {
            match out.get_mut(i + 1) {
                Some(next) => *next |= carry as u8,
                None => return Err(AspenError::invalid(format!("{text:?} holds more than {len} bytes"))),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_values() {
        // The SHA-256 of the empty string, as `nix hash to-base32` prints it.
        let empty = data_encoding::HEXLOWER
            .decode(b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap();
        assert_eq!(encode(&empty), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0xff]), "7z");
    }

    #[test]
    fn bad_text_is_refused_with_a_reason() {
        assert!(decode("0e", 1).unwrap_err().to_string().contains("not a digit"));
        assert!(decode("000", 1).unwrap_err().to_string().contains("characters"));
        assert!(decode("zz", 1).unwrap_err().to_string().contains("more than 1 bytes"));
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&bytes), bytes.len()).unwrap(), bytes);
        }
    }
}
