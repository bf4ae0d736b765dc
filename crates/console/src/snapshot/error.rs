//! The snapshot layer's errors.

use crate::journal::ViewerId;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Larger than [`MAX_SNAPSHOT`](super::MAX_SNAPSHOT).
    #[error("snapshot of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes end inside the named part.
    #[error("snapshot truncated in {0}")]
    Truncated(&'static str),
    /// Not a dmore snapshot.
    #[error("not a dmore snapshot (bad magic)")]
    BadMagic,
    /// A container layout this dmore cannot read.
    #[error("snapshot format {found}, this dmore reads format {expected}")]
    FormatVersion {
        /// In the snapshot.
        found: u32,
        /// Understood here.
        expected: u32,
    },
    /// The checksum does not match: corrupted in transit or storage.
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// In the snapshot.
        stored: u32,
        /// Over the bytes received.
        computed: u32,
    },
    /// More pieces than [`MAX_PIECES`](super::MAX_PIECES).
    #[error("{count} pieces exceed the limit of {limit}")]
    TooManyPieces {
        /// Announced.
        count: u32,
        /// The limit.
        limit: usize,
    },
    /// A kind that is not short printable ASCII.
    #[error("malformed piece kind")]
    BadKind,
    /// The same kind twice.
    #[error("piece {0:?} appears twice")]
    Duplicate(String),
    /// Bytes after the last piece and before the checksum.
    #[error("{0} bytes after the last piece")]
    TrailingBytes(usize),
    /// A piece this dmore needs is absent.
    #[error("snapshot has no {0:?} piece")]
    Missing(String),
    /// A piece of a version this dmore cannot read.
    #[error("piece {kind:?} has version {found}, this dmore reads version {expected}")]
    PieceVersion {
        /// The piece.
        kind: String,
        /// In the snapshot.
        found: u32,
        /// Understood here.
        expected: u32,
    },
    /// A piece nobody took: a kind this dmore does not know (state it would silently drop).
    #[error("piece {0:?} was not consumed (unknown to this dmore)")]
    Unconsumed(String),
    /// A piece's bytes do not decode.
    #[error("piece {kind:?} does not decode")]
    Decode {
        /// The piece.
        kind: String,
        /// What postcard said.
        #[source]
        source: postcard::Error,
    },
    /// A piece's bytes decode but leave bytes over.
    #[error("piece {kind:?} has {extra} bytes after its value")]
    PieceTrailing {
        /// The piece.
        kind: String,
        /// Bytes left.
        extra: usize,
    },
    /// A session piece holds another viewer's state.
    #[error("piece {kind:?} holds the session of viewer {found:?}")]
    SessionId {
        /// The piece.
        kind: String,
        /// The id inside it.
        found: ViewerId,
    },
    /// A piece could not be encoded.
    #[error("piece {kind:?} does not encode")]
    Encode {
        /// The piece.
        kind: String,
        /// What postcard said.
        #[source]
        source: postcard::Error,
    },
}
