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
}
