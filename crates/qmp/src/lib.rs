//! A QEMU Machine Protocol (QMP) client: commands, replies and asynchronous events on one
//! connection, for QEMU 7.2 and later.
//!
//! ```text
//!  callers (any task)                 connection task (one per socket)          QEMU
//!  Client::execute ──mpsc──▶  select!{ shutdown, commands, socket read,   ◀──▶ -qmp unix:PATH
//!        ◀──oneshot── reply           socket write }  ── Session (sans-I/O)
//!  Events::recv   ◀──mpsc── event
//! ```
//!
//! - [`Session`]: the pure core — line framing with a length bound, greeting and
//!   `qmp_capabilities`, classification of replies and events, id matching, sequence numbers.
//! - [`Connection`] / [`Client`] / [`Events`]: the tokio shell around it.
//!
//! # Ordering
//! QEMU writes a connection's events and replies in the order they happen. Every inbound
//! message gets a [`Seq`], its position in that stream: events carry it
//! ([`Event::seq`]), [`Client::execute_at`] returns it with the reply, and QMP errors carry it
//! ([`Error::Qmp`]). So "was there a `STOP` before this reply?" is `stop.seq < reply.seq`.
//! In addition, the connection task hands every event to the [`Events`] channel *before* it
//! completes the reply of anything that arrived after it: when a reply's future resolves,
//! [`Events::try_recv`] already yields every earlier event.
//!
//! # Wire cost
//! QEMU 7.2's monitor reads commands one byte per main-loop iteration (~5 µs a byte), so
//! commands go out as compact JSON (`{"execute":"stop"}`), with no `id` by default
//! ([`IdMode::Omit`]: without the `oob` capability QEMU answers strictly in order, so replies
//! match by position), and several commands submitted together go out in one write
//! ([`Client::execute_batch`]). [`InputEvent`] builds `input-send-event`'s list.
//!
//! Measured here (QEMU 7.2.22, bare `-S` VM then `cont`, 200 round trips each, p50, three
//! runs): `query-status` (27 bytes) 173–191 µs without an id, 209–254 µs with `"id":N`; a
//! one-key `input-send-event` (126 bytes) 559–576 µs (586–618 µs with an id); a key down and up
//! in one command (196 bytes) 842–899 µs, against ~1.1 ms as two commands.
//!
//! # Why not the `qapi` crate
//! `qapi` 0.15 / `qapi-qmp` 0.15 (evaluated for QEMU 7.2) was not used:
//! - its types are generated from QEMU ~9.x's schema (items "Since: 9.0"), and every inbound
//!   line is deserialized into `QmpMessage = untagged { Event(generated enum), Response }`,
//!   so an event or reply shape that differs from that schema is a decode error that ends the
//!   stream;
//! - events and replies come out of one stream, but nothing tells a caller where an event sits
//!   relative to a reply, and its spawned driver (`spawn_tokio`) drops events;
//! - without `oob` it holds a write lock until each reply arrives, so concurrent commands are
//!   serialized and never batched into one write;
//! - its line codec buffers unbounded lines, it panics on a duplicate id and unwraps mutexes,
//!   and it logs with `log`, not `tracing`; error replies are not tied to the command name.
//!
//! It does send compact JSON and has tokio support. What dmore needs (a sequence position for
//! the console's fence, batching, a bounded reader, a handful of typed commands) is small, so
//! this crate implements it directly on `serde_json::Value`.
#![warn(missing_docs)]

mod client;
mod error;
mod framer;
mod input;
mod message;
mod session;
mod types;

pub use client::{Client, Command, Connection, Events, Reply};
pub use error::{CloseReason, Error, ProtocolError, QmpError};
pub use framer::DEFAULT_MAX_LINE;
pub use input::{InputAxis, InputButton, InputEvent, KeyValue};
pub use message::{Event, Greeting, Timestamp};
pub use session::{Config, IdMode, Output, Session, SessionState, Token};
pub use types::{MigrationInfo, MouseInfo, RamStats, StatusInfo};

/// Position of a message in a connection's inbound stream (greeting = 0, then +1 for each
/// reply or event). Comparing two `Seq`s of one connection tells which message QEMU sent
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
