//! The one source of randomness: the operating system's. Keys, stream ids and
//! passwords are not safe without it, so its absence is fatal, not a quiet
//! fallback.

/// Fills `buf` with random bytes from the operating system.
pub fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
}

/// `bytes` random bytes as lower-case hex (ids, nonces).
pub fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf);
    hex_of(&buf)
}

/// Lower-case hex of `bytes` (random ids here, dialback keys).
pub fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A random fraction in [0, 1), for jitter.
pub fn unit() -> f64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_and_fractions_below_one() {
        let id = super::hex(8);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(super::hex(8), id);
        assert!((0.0..1.0).contains(&super::unit()));
    }
}
