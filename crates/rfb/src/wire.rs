//! A bounds-checked cursor over received bytes, shared by every decoder in this crate.
//!
//! Reads never panic: a read past the end reports how many bytes the whole item needs, so the
//! stream decoders can wait for exactly that many before trying again.

use crate::error::MessageError;

/// Why a parse stopped.
#[derive(Debug)]
pub(crate) enum Stop<E> {
    /// More bytes are needed: at least this many in total, counted from the reader's start.
    Incomplete(usize),
    /// The bytes are wrong; the stream cannot be resynchronised.
    Invalid(E),
}

impl<E> From<E> for Stop<E> {
    fn from(e: E) -> Self {
        Stop::Invalid(e)
    }
}

/// Result of a parse step.
pub(crate) type Parse<T, E = MessageError> = Result<T, Stop<E>>;

/// Reads big-endian values from the front of a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Takes the next `n` bytes, or reports that `pos + n` bytes are needed.
    pub(crate) fn take<E>(&mut self, n: usize) -> Parse<&'a [u8], E> {
        let end = self.pos.saturating_add(n);
        match self.buf.get(self.pos..end) {
            Some(s) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(Stop::Incomplete(end)),
        }
    }

    /// Takes exactly `N` bytes as an array.
    pub(crate) fn array<const N: usize, E>(&mut self) -> Parse<[u8; N], E> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8<E>(&mut self) -> Parse<u8, E> {
        Ok(self.array::<1, E>()?[0])
    }

    pub(crate) fn u16<E>(&mut self) -> Parse<u16, E> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32<E>(&mut self) -> Parse<u32, E> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32<E>(&mut self) -> Parse<i32, E> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn skip<E>(&mut self, n: usize) -> Parse<(), E> {
        self.take(n).map(|_| ())
    }
}

/// Converts a wire length to `usize` (lossless on the 32- and 64-bit targets dmore runs on;
/// saturates elsewhere so that limit checks still reject it).
pub(crate) fn len_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Appends a length that the caller has kept within `u32`; saturates otherwise.
pub(crate) fn put_len_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}
