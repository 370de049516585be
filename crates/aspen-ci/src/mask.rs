//! Masking secrets in a job's log: every occurrence of a secret's value is replaced by
//! [`MASK`] before the log reaches the KV, the archive or a follower, also when the value
//! arrives split across two reads of the job's output.
//!
//! Only the values as given are masked: a job that prints a secret transformed (base64,
//! reversed, one character per line) prints it. Values shorter than [`MIN_MASKED`] bytes are
//! not masked (masking `1` would mask every digit 1), and the worker says so in the log.

/// What a secret's value becomes in the log.
pub const MASK: &[u8] = b"***";
/// Shortest value masked.
pub const MIN_MASKED: usize = 4;

/// Masks a stream of bytes, holding back as little as can still begin a secret.
#[derive(Debug, Default)]
pub struct Masker {
    /// Longest first: a value that contains another is masked whole.
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Masker {
    /// A masker for `values`; those shorter than [`MIN_MASKED`] are left out.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Masker {
        let mut secrets: Vec<Vec<u8>> =
            values.into_iter().filter(|v| v.len() >= MIN_MASKED).map(<[u8]>::to_vec).collect();
        secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        secrets.dedup();
        Masker { secrets, held: Vec::new() }
    }

    /// The next bytes of the stream; returns what is safe to show so far.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return bytes.to_vec();
        }
        self.held.extend_from_slice(bytes);
        let masked = self.replace_all();
        // Keep back the longest tail that is a proper prefix of some secret: it may be the
        // start of one that the next bytes complete.
        let keep = self.partial_tail(&masked);
        let (out, held) = masked.split_at(masked.len() - keep);
        self.held = held.to_vec();
        out.to_vec()
    }

    /// The end of the stream: what was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let masked = self.replace_all();
        self.held.clear();
        masked
    }

    fn replace_all(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.held.len());
        let mut i = 0;
        'scan: while i < self.held.len() {
            for secret in &self.secrets {
                if self.held[i..].starts_with(secret) {
                    out.extend_from_slice(MASK);
                    i += secret.len();
                    continue 'scan;
                }
            }
            out.push(self.held[i]);
            i += 1;
        }
        out
    }

    fn partial_tail(&self, bytes: &[u8]) -> usize {
        let longest = self.secrets.first().map_or(0, Vec::len);
        (1..longest.min(bytes.len() + 1))
            .rev()
            .find(|&n| {
                let tail = &bytes[bytes.len() - n..];
                self.secrets.iter().any(|s| s.len() > n && s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_in_pieces(secrets: &[&str], pieces: &[&str]) -> String {
        let mut m = Masker::new(secrets.iter().map(|s| s.as_bytes()));
        let mut out = Vec::new();
        for p in pieces {
            out.extend(m.push(p.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_secret_is_masked_also_when_split_across_reads() {
        assert_eq!(mask_in_pieces(&["hunter22"], &["pw=hunter22\n"]), "pw=***\n");
        assert_eq!(mask_in_pieces(&["hunter22"], &["pw=hun", "ter", "22 ok"]), "pw=*** ok");
        assert_eq!(mask_in_pieces(&["hunter22"], &["hunter2", "hunter22"]), "hunter2***");
        assert_eq!(mask_in_pieces(&["hunter22"], &["h", "u", "n", "t", "e", "r", "2", "2"]), "***");
    }

    #[test]
    fn the_longest_value_wins_and_short_values_are_left_alone() {
        assert_eq!(mask_in_pieces(&["abcd", "abcdef"], &["xabcdefx abcdx"]), "x***x ***x");
        assert_eq!(mask_in_pieces(&["1"], &["121"]), "121");
    }

    #[test]
    fn without_secrets_bytes_pass_through_at_once() {
        let mut m = Masker::new(std::iter::empty());
        assert_eq!(m.push(b"abc"), b"abc");
        assert!(m.finish().is_empty());
    }

    #[test]
    fn only_a_possible_start_of_a_secret_is_held_back() {
        let mut m = Masker::new([b"secret".as_slice()]);
        assert_eq!(m.push(b"hello sec"), b"hello ");
        assert_eq!(m.push(b"ond"), b"second");
        assert_eq!(m.finish(), b"");
    }
}
