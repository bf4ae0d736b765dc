//! FNV-1a, 64 bits: the hash of the bytes the Linux guest's init wrote to its shell's serial
//! port (`SERIAL`), which a test computes over what its client received. Std-only and shared
//! with the init (`#[path]`), which is built without this crate.

/// The hash of no bytes.
pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// `hash` continued over `bytes`.
pub fn update(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_continuation() {
        assert_eq!(update(OFFSET, b""), OFFSET);
        assert_eq!(update(OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            update(update(OFFSET, b"foo"), b"bar"),
            update(OFFSET, b"foobar")
        );
    }
}
