//! FNV-1a, 64-bit: the one hash behind the checkpoint checksum, the data fingerprint and the
//! GPU backend's batch fingerprint. Not cryptographic: it tells two byte streams apart by
//! accident, not by intent.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// A running FNV-1a hash. `word` folds in a whole `u64` at once (the variant over 8-byte
/// words), `bytes` one byte at a time (the classic one).
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    /// The standard offset basis.
    pub const fn new() -> Self {
        Self(OFFSET)
    }

    /// The offset basis XORed with `seed` (e.g. a length that should change every hash).
    pub const fn seeded(seed: u64) -> Self {
        Self(OFFSET ^ seed)
    }

    /// Continues a hash whose state was `state` (a [`Fnv1a::finish`] of before).
    pub const fn resume(state: u64) -> Self {
        Self(state)
    }

    /// Folds in one value.
    pub fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(PRIME);
    }

    /// Folds in each byte as a value.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.word(u64::from(b));
        }
    }

    /// Folds in `bytes` as little-endian 8-byte words, then the last bytes one by one:
    /// the fast form for large buffers.
    pub fn words_le(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        self.bytes(words.remainder());
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_the_reference_fnv1a_64() {
        // Published test vectors of FNV-1a 64.
        let hash = |s: &str| {
            let mut h = Fnv1a::new();
            h.bytes(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn words_le_folds_whole_words_then_the_last_bytes() {
        let bytes: Vec<u8> = (1..=11).collect();
        let mut want = 0xcbf2_9ce4_8422_2325u64;
        want = (want ^ u64::from_le_bytes(bytes[..8].try_into().unwrap()))
            .wrapping_mul(0x0100_0000_01b3);
        for &b in &bytes[8..] {
            want = (want ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut h = Fnv1a::new();
        h.words_le(&bytes);
        assert_eq!(h.finish(), want);
        // Resuming from a finished state continues the same hash.
        let mut a = Fnv1a::new();
        a.words_le(&bytes[..8]);
        let mut b = Fnv1a::resume(a.finish());
        b.bytes(&bytes[8..]);
        assert_eq!(b.finish(), want);
    }
}
