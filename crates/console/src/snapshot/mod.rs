//! The console's whole state as one versioned snapshot of tagged pieces.
//!
//! ```text
//!  "DMORESNP"  format u32  count u32  | piece | piece | ... |  crc32 u32 of all before
//!  piece:  kind_len u8  kind (ASCII)  version u32  len u32  bytes (postcard)
//!  kinds:  "journal" (JournalState)  "screen" (ScreenState)  "session/<id>" (SessionState)
//!          "serial" (SerialState, only from a console with a serial lane)
//!          "resume-stream/<id>" (StreamPiece: a gateway viewer's resumable stream, gateway mode)
//! ```
//!
//! Integers are big-endian. Each piece's bytes are [postcard]: a compact binary serde format
//! with a documented, stable wire format (1.0) and no unsafe code, where bincode's future is
//! unsettled; a framebuffer is MiBs, so JSON is out. The importer ([`SnapshotReader`])
//! consumes every piece or fails naming the piece left over, the kind it does not know, or
//! the version it cannot read (propolis' rule). Anything malformed is a typed error, never a
//! panic, and nothing is allocated from a length before it is checked against the input.

use crate::journal::{JournalState, ViewerId, STATE_VERSION as JOURNAL_VERSION};
use crate::screen::{ScreenState, SCREEN_STATE_VERSION};
use crate::serial::{SerialState, SERIAL_STATE_VERSION};
use crate::session::{SessionState, SESSION_STATE_VERSION};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;

mod error;
pub use error::SnapshotError;

/// The first bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"DMORESNP";
/// Version of the container layout.
pub const FORMAT_VERSION: u32 = 1;
/// Largest snapshot read or written (a 128 MiB framebuffer deflates to far less).
pub const MAX_SNAPSHOT: usize = 256 << 20;
/// Most pieces in a snapshot.
pub const MAX_PIECES: usize = 4096;
/// Longest piece kind.
pub const MAX_KIND: usize = 64;

/// Kind of the input journal's piece.
pub const KIND_JOURNAL: &str = "journal";
/// Kind of the screen cache's piece.
pub const KIND_SCREEN: &str = "screen";
/// Kind of the serial lane's piece.
pub const KIND_SERIAL: &str = "serial";
/// Prefix of a viewer session's piece kind; the viewer's id follows.
pub const KIND_SESSION_PREFIX: &str = "session/";

/// Prefix of a gateway viewer's stream piece kind; the viewer's id follows.
pub const KIND_STREAM_PREFIX: &str = "resume-stream/";
/// Version of [`StreamPiece`]'s encoding.
pub const STREAM_PIECE_VERSION: u32 = 1;

/// A gateway viewer's connection as it travels: its resumable stream's state (`Stream::export`)
/// and the bytes the console had taken out of the stream but not handled (they come before
/// the stream's own unread bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamPiece {
    /// The stream's state.
    pub stream: resume::StreamState,
    /// The viewer's next bytes, already out of the stream.
    #[serde(with = "serde_bytes")]
    pub unread: Vec<u8>,
}

/// Builds a snapshot piece by piece.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    body: Vec<u8>,
    count: u32,
}

impl SnapshotWriter {
    /// An empty snapshot.
    pub fn new() -> Self {
        SnapshotWriter::default()
    }

    /// Appends a piece of raw bytes. `kind` must be printable ASCII of at most [`MAX_KIND`].
    pub fn piece(&mut self, kind: &str, version: u32, bytes: &[u8]) -> Result<(), SnapshotError> {
        let kind_len = u8::try_from(kind.len()).map_err(|_| SnapshotError::BadKind)?;
        if !valid_kind(kind.as_bytes()) {
            return Err(SnapshotError::BadKind);
        }
        let len = u32::try_from(bytes.len()).map_err(|_| SnapshotError::TooLarge {
            len: bytes.len(),
            limit: MAX_SNAPSHOT,
        })?;
        self.body.push(kind_len);
        self.body.extend_from_slice(kind.as_bytes());
        self.body.extend_from_slice(&version.to_be_bytes());
        self.body.extend_from_slice(&len.to_be_bytes());
        self.body.extend_from_slice(bytes);
        self.count = self.count.saturating_add(1);
        Ok(())
    }

    /// Appends a serde value as a postcard piece.
    pub fn value<T: Serialize>(
        &mut self,
        kind: &str,
        version: u32,
        value: &T,
    ) -> Result<(), SnapshotError> {
        let bytes = postcard::to_allocvec(value).map_err(|source| SnapshotError::Encode {
            kind: kind.to_owned(),
            source,
        })?;
        self.piece(kind, version, &bytes)
    }

    /// The finished snapshot.
    pub fn finish(self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::with_capacity(self.body.len() + 20);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.body);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        if out.len() > MAX_SNAPSHOT {
            return Err(SnapshotError::TooLarge {
                len: out.len(),
                limit: MAX_SNAPSHOT,
            });
        }
        Ok(out)
    }
}

/// One piece as read, borrowing the snapshot's bytes.
#[derive(Debug)]
struct RawPiece<'a> {
    kind: &'a str,
    version: u32,
    bytes: &'a [u8],
    taken: bool,
}

/// Reads a snapshot: every piece must be taken before [`SnapshotReader::finish`].
#[derive(Debug)]
pub struct SnapshotReader<'a> {
    pieces: Vec<RawPiece<'a>>,
}

impl<'a> SnapshotReader<'a> {
    /// Checks the header, checksum and piece framing.
    pub fn parse(data: &'a [u8]) -> Result<Self, SnapshotError> {
        if data.len() > MAX_SNAPSHOT {
            return Err(SnapshotError::TooLarge {
                len: data.len(),
                limit: MAX_SNAPSHOT,
            });
        }
        let mut r = Cursor(data);
        if r.take(MAGIC.len(), "header")? != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let format = r.u32("header")?;
        if format != FORMAT_VERSION {
            return Err(SnapshotError::FormatVersion {
                found: format,
                expected: FORMAT_VERSION,
            });
        }
        let body_end = data
            .len()
            .checked_sub(4)
            .ok_or(SnapshotError::Truncated("checksum"))?;
        let (signed, stored) = data.split_at(body_end);
        let stored = u32::from_be_bytes(stored.try_into().map_err(|_| SnapshotError::BadMagic)?);
        let computed = crc32(signed);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let count = r.u32("header")?;
        if usize::try_from(count).map_or(true, |c| c > MAX_PIECES) {
            return Err(SnapshotError::TooManyPieces {
                count,
                limit: MAX_PIECES,
            });
        }
        // The body ends before the checksum.
        let mut r = Cursor(r.0.get(..r.0.len().saturating_sub(4)).unwrap_or(&[]));
        let mut pieces: Vec<RawPiece<'a>> = Vec::new();
        for _ in 0..count {
            let kind_len = r.take(1, "piece kind")?.first().copied().unwrap_or(0);
            let kind = r.take(usize::from(kind_len), "piece kind")?;
            if !valid_kind(kind) {
                return Err(SnapshotError::BadKind);
            }
            let kind = std::str::from_utf8(kind).map_err(|_| SnapshotError::BadKind)?;
            let version = r.u32("piece header")?;
            let len = r.u32("piece header")?;
            let len = usize::try_from(len).map_err(|_| SnapshotError::Truncated("piece"))?;
            let bytes = r.take(len, "piece")?;
            if pieces.iter().any(|p| p.kind == kind) {
                return Err(SnapshotError::Duplicate(kind.to_owned()));
            }
            pieces.push(RawPiece {
                kind,
                version,
                bytes,
                taken: false,
            });
        }
        if !r.0.is_empty() {
            return Err(SnapshotError::TrailingBytes(r.0.len()));
        }
        Ok(SnapshotReader { pieces })
    }

    /// The kinds in the snapshot, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.pieces.iter().map(|p| p.kind)
    }

    /// Takes the raw bytes of the piece `kind`, which must have version `expected`.
    pub fn take_bytes(
        &mut self,
        kind: &str,
        expected: u32,
    ) -> Result<Option<&'a [u8]>, SnapshotError> {
        let Some(p) = self.pieces.iter_mut().find(|p| p.kind == kind) else {
            return Ok(None);
        };
        if p.version != expected {
            return Err(SnapshotError::PieceVersion {
                kind: kind.to_owned(),
                found: p.version,
                expected,
            });
        }
        p.taken = true;
        Ok(Some(p.bytes))
    }

    /// Takes and decodes the piece `kind`, which must have version `expected`.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        expected: u32,
    ) -> Result<Option<T>, SnapshotError> {
        let Some(bytes) = self.take_bytes(kind, expected)? else {
            return Ok(None);
        };
        let (value, rest) =
            postcard::take_from_bytes(bytes).map_err(|source| SnapshotError::Decode {
                kind: kind.to_owned(),
                source,
            })?;
        if !rest.is_empty() {
            return Err(SnapshotError::PieceTrailing {
                kind: kind.to_owned(),
                extra: rest.len(),
            });
        }
        Ok(Some(value))
    }

    /// Like [`SnapshotReader::take`], but a missing piece is an error.
    pub fn require<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        expected: u32,
    ) -> Result<T, SnapshotError> {
        self.take(kind, expected)?
            .ok_or_else(|| SnapshotError::Missing(kind.to_owned()))
    }

    /// Succeeds only if every piece was taken.
    pub fn finish(self) -> Result<(), SnapshotError> {
        match self.pieces.iter().find(|p| !p.taken) {
            Some(p) => Err(SnapshotError::Unconsumed(p.kind.to_owned())),
            None => Ok(()),
        }
    }
}

/// The console's state as one value: what [`ConsoleSnapshot::encode`] writes and
/// [`ConsoleSnapshot::decode`] reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSnapshot {
    /// The input journal.
    pub journal: JournalState,
    /// The screen cache.
    pub screen: ScreenState,
    /// Every viewer's session, by id.
    pub sessions: BTreeMap<ViewerId, SessionState>,
    /// The serial lane (scrollback, typed bytes not yet consumed), if the console has one.
    pub serial: Option<SerialState>,
    /// The gateway viewers' streams, by id (each has a session too).
    pub streams: BTreeMap<ViewerId, StreamPiece>,
}

impl ConsoleSnapshot {
    /// The kind of viewer `id`'s session piece.
    pub fn session_kind(id: ViewerId) -> String {
        format!("{KIND_SESSION_PREFIX}{}", id.0)
    }

    /// The kind of gateway viewer `id`'s stream piece.
    pub fn stream_kind(id: ViewerId) -> String {
        format!("{KIND_STREAM_PREFIX}{}", id.0)
    }

    /// Writes the snapshot.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut w = SnapshotWriter::new();
        w.value(KIND_JOURNAL, JOURNAL_VERSION, &self.journal)?;
        w.value(KIND_SCREEN, SCREEN_STATE_VERSION, &self.screen)?;
        for (id, s) in &self.sessions {
            w.value(&Self::session_kind(*id), SESSION_STATE_VERSION, s)?;
        }
        if let Some(serial) = &self.serial {
            w.value(KIND_SERIAL, SERIAL_STATE_VERSION, serial)?;
        }
        for (id, s) in &self.streams {
            w.value(&Self::stream_kind(*id), STREAM_PIECE_VERSION, s)?;
        }
        w.finish()
    }

    /// Reads a snapshot, consuming every piece; a kind this dmore does not know is an error.
    pub fn decode(data: &[u8]) -> Result<ConsoleSnapshot, SnapshotError> {
        let mut r = SnapshotReader::parse(data)?;
        let journal = r.require(KIND_JOURNAL, JOURNAL_VERSION)?;
        let screen = r.require(KIND_SCREEN, SCREEN_STATE_VERSION)?;
        let serial = r.take(KIND_SERIAL, SERIAL_STATE_VERSION)?;
        let ids: Vec<(String, ViewerId)> = r
            .kinds()
            .filter_map(|k| {
                let id = k.strip_prefix(KIND_SESSION_PREFIX)?.parse().ok()?;
                // Only the canonical spelling: "session/07" stays unknown.
                (Self::session_kind(ViewerId(id)) == k).then(|| (k.to_owned(), ViewerId(id)))
            })
            .collect();
        let mut sessions = BTreeMap::new();
        for (kind, id) in ids {
            let s: SessionState = r.require(&kind, SESSION_STATE_VERSION)?;
            if s.id() != id {
                return Err(SnapshotError::SessionId {
                    kind,
                    found: s.id(),
                });
            }
            sessions.insert(id, s);
        }
        let mut streams = BTreeMap::new();
        for id in sessions.keys() {
            if let Some(s) = r.take(&Self::stream_kind(*id), STREAM_PIECE_VERSION)? {
                streams.insert(*id, s);
            }
        }
        // A stream piece without a session is left over: `finish` names it.
        r.finish()?;
        Ok(ConsoleSnapshot {
            journal,
            screen,
            sessions,
            serial,
            streams,
        })
    }
}

fn valid_kind(kind: &[u8]) -> bool {
    !kind.is_empty() && kind.len() <= MAX_KIND && kind.iter().all(|b| b.is_ascii_graphic())
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        if n > self.0.len() {
            return Err(SnapshotError::Truncated(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SnapshotError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(
            b.try_into().map_err(|_| SnapshotError::Truncated(what))?,
        ))
    }
}
