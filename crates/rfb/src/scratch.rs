//! Buffers kept between messages for their capacity, given back after a large one.
//!
//! A decoder's pending bytes, an encoder's pixel scratch (Tight's, Zlib's, ZRLE's) and a
//! writer's output grow to the largest message they met, a full 720x400 update (1.1 MiB in
//! Raw), and a `Vec` never shrinks by itself: one such update left them at that size for the
//! connection's life. Typing and a cursor's damage stay far below [`KEEP_BYTES`], so the
//! common case still reuses the buffer.

/// The capacity a buffer may keep between messages, in bytes.
pub const KEEP_BYTES: usize = 64 * 1024;

/// Frees `v`'s allocation if it holds more than [`KEEP_BYTES`]; call it when `v` is empty or
/// its content no longer needed.
pub fn release_large<T>(v: &mut Vec<T>) {
    if v.capacity().saturating_mul(std::mem::size_of::<T>()) > KEEP_BYTES {
        *v = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_freed_and_a_small_one_kept() {
        let mut large: Vec<u32> = Vec::with_capacity(KEEP_BYTES / 4 + 1);
        release_large(&mut large);
        assert_eq!(large.capacity(), 0);
        let mut small: Vec<u32> = Vec::with_capacity(KEEP_BYTES / 4);
        release_large(&mut small);
        assert_eq!(small.capacity(), KEEP_BYTES / 4);
    }
}
