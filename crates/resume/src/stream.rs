//! One end of a resumable stream: the [`Stream`] state machine.
//!
//! ```text
//!                 attach(nonce)      peer's opening, then its first frame under the
//!                                    connection key (fresh; the opening is applied then)
//!   Detached ------------------> Opening -------------------------------------> Open
//!      ^                            |                                            |
//!      +---- detach(), or a connection error from handle_input -----------------+
//!   any state -- an error that ends the session (ReplayGap, WindowExceeded...) --> Failed
//!   Open -- both ends closed, every byte acknowledged and read -------------------> Finished
//! ```
//!
//! The counters (bytes of each direction, from 0 at the session's start):
//!
//! ```text
//!  our stream:   [ acknowledged by the peer | unacked (replay buffer, ≤ replay_cap) ]
//!                0                         base                              written
//!                      sent on this connection up to next_send (base ≤ next_send ≤ written)
//!  peer stream:  [ read by our application | unread ]
//!                0                        delivered                        received
//! ```
//!
//! A stream's Close counts as one more position, `end` (as TCP's FIN does): an end that has
//! the peer's Close says `received + 1` in its opening, and acknowledges `delivered + 1` once
//! its application read up to it. So each end learns that its Close arrived, and a Close lost
//! in a cut is sent again after the replay.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::frame::{Frame, Opening};
use crate::wire::{self, MAX_FRAME, MAX_OPENING_FRAME};
use crate::{Config, Error, Role, SessionId, MAX_DATA, NONCE_LEN};

/// Where a [`Stream`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection: bytes written wait in the replay buffer.
    Detached,
    /// A connection is attached; the peer's opening has not arrived yet.
    Opening,
    /// Frames flow both ways.
    Open,
    /// Both ends closed their streams, every byte was acknowledged and read.
    Finished,
    /// An error ended the session.
    Failed,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Detached => "detached",
            State::Opening => "opening",
            State::Open => "open",
            State::Finished => "finished",
            State::Failed => "failed",
        })
    }
}

/// A stream's state without its connection: what a console carries to its destination when
/// it moves (in its snapshot), and what [`Stream::import`] restores.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamState {
    /// The session.
    pub session: SessionId,
    /// The end this state belongs to.
    pub role: Role,
    /// Whether an opening was ever accepted (the next connection sends Resume, not Hello).
    pub established: bool,
    /// Bytes of our stream the peer acknowledged.
    pub base: u64,
    /// Bytes of our stream written and not acknowledged, from byte `base`.
    pub unacked: Vec<u8>,
    /// Whether our application closed its stream.
    pub closed: bool,
    /// Whether the peer acknowledged our Close.
    pub close_acked: bool,
    /// Bytes of the peer's stream received.
    pub received: u64,
    /// Bytes received and not yet read by our application (the last of `received`).
    pub unread: Vec<u8>,
    /// Where the peer's stream ends, once it closed.
    pub peer_end: Option<u64>,
}

/// One connection's part of the state: gone when the connection is.
struct Connection {
    /// Our opening's kind byte and body (for the connection key).
    own_opening: Vec<u8>,
    /// Our opening frame, until it is transmitted.
    opening_frame: Option<Vec<u8>>,
    /// The connection key, once the peer's opening is in.
    key: Option<[u8; 32]>,
    /// The peer's opening, authentic but not yet proven fresh: applied when the peer's first
    /// frame under the connection key arrives (only the real peer, in this connection, can
    /// make one), so a replayed opening can never move our counters or end the session.
    unconfirmed: Option<Opening>,
    /// Whether the peer's opening was applied (the connection is Open).
    confirmed: bool,
    /// Whether we sent our first frame under the connection key (our proof of freshness).
    proof_sent: bool,
    send_counter: u64,
    recv_counter: u64,
    /// Next byte of our stream to send on this connection.
    next_send: u64,
    /// The peer's window and its latest acknowledgement on this connection.
    peer_window: u32,
    peer_acked: u64,
    /// The latest acknowledgement we told the peer on this connection.
    ack_told: u64,
    close_sent: bool,
    /// A Moved frame to send (console only): the session lives at this address now.
    moving: Option<SocketAddr>,
    /// Bytes read from the connection and not yet parsed (less than one frame between calls).
    inbuf: Vec<u8>,
}

/// One end of a resumable stream.
///
/// Call order: [`Stream::attach`] for each new connection (with a fresh nonce); then, for every
/// read from it, [`Stream::handle_input`]; after every call, [`Stream::poll_transmit`] until it
/// answers `None`, writing each frame to the connection, and [`Stream::read`] for the peer's
/// bytes. The application's bytes go in with [`Stream::write`] at any time (also while
/// detached: they wait in the replay buffer). When the connection ends or fails,
/// [`Stream::detach`] and attach the next one.
pub struct Stream {
    config: Config,
    session: SessionId,
    established: bool,
    base: u64,
    unacked: VecDeque<u8>,
    closed: bool,
    close_acked: bool,
    received: u64,
    unread: VecDeque<u8>,
    peer_end: Option<u64>,
    conn: Option<Connection>,
    failed: Option<Error>,
    /// Where the peer said the session moved (gateway only), until taken.
    moved_to: Option<SocketAddr>,
}

/// `n` as a stream offset (lossless on every target Rust supports).
fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Stream {
    /// A new session's end, detached. The gateway draws `session` (random); a console takes
    /// it from [`crate::peek_session`].
    pub fn new(config: Config, session: SessionId) -> Result<Stream, Error> {
        config.validate()?;
        Ok(Stream {
            config,
            session,
            established: false,
            base: 0,
            unacked: VecDeque::new(),
            closed: false,
            close_acked: false,
            received: 0,
            unread: VecDeque::new(),
            peer_end: None,
            conn: None,
            failed: None,
            moved_to: None,
        })
    }

    /// A stream restored from [`Stream::export`] (e.g. on the console a VM moved to),
    /// detached.
    pub fn import(config: Config, state: StreamState) -> Result<Stream, Error> {
        config.validate()?;
        if state.role != config.role {
            return Err(Error::BadConfig("a state exported by the other role"));
        }
        if len64(state.unacked.len()) > u64::from(config.replay_cap) {
            return Err(Error::BadConfig("a replay buffer above the replay bound"));
        }
        let consistent = state.base.checked_add(len64(state.unacked.len())).is_some()
            && len64(state.unread.len()) <= state.received
            && !matches!(state.peer_end, Some(e) if e != state.received)
            // A Close acknowledged was sent, after every byte, all acknowledged.
            && (!state.close_acked || (state.closed && state.unacked.is_empty()));
        if !consistent {
            return Err(Error::BadConfig("inconsistent stream counters"));
        }
        Ok(Stream {
            config,
            session: state.session,
            established: state.established,
            base: state.base,
            unacked: state.unacked.into(),
            closed: state.closed,
            close_acked: state.close_acked,
            received: state.received,
            unread: state.unread.into(),
            peer_end: state.peer_end,
            conn: None,
            failed: None,
            moved_to: None,
        })
    }

    /// The state to carry to another process ([`Stream::import`]); the connection is not part
    /// of it.
    pub fn export(&self) -> StreamState {
        StreamState {
            session: self.session,
            role: self.config.role,
            established: self.established,
            base: self.base,
            unacked: self.unacked.iter().copied().collect(),
            closed: self.closed,
            close_acked: self.close_acked,
            received: self.received,
            unread: self.unread.iter().copied().collect(),
            peer_end: self.peer_end,
        }
    }

    /// The session id.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Where the stream stands.
    pub fn state(&self) -> State {
        if self.failed.is_some() {
            State::Failed
        } else if self.is_finished() {
            State::Finished
        } else {
            match &self.conn {
                None => State::Detached,
                Some(c) if !c.confirmed => State::Opening,
                Some(_) => State::Open,
            }
        }
    }

    /// The error that ended the session, if one did.
    pub fn failure(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    /// Starts a new connection, replacing any current one. `nonce` must be fresh for every
    /// connection (from the OS's random generator).
    pub fn attach(&mut self, nonce: [u8; NONCE_LEN]) -> Result<(), Error> {
        self.check_failed()?;
        let opening = Opening {
            session: self.session,
            nonce,
            window: self.config.replay_cap,
            received: self.received_mark(),
            acked: self.acked_mark(),
        };
        let frame = if self.established {
            Frame::Resume(opening)
        } else {
            Frame::Hello(opening)
        };
        let mut own_opening = vec![frame.kind()];
        frame.encode_body(&mut own_opening);
        let opening_frame = wire::seal(&self.config.psk, self.config.role, 0, &frame);
        self.conn = Some(Connection {
            own_opening,
            opening_frame: Some(opening_frame),
            key: None,
            unconfirmed: None,
            confirmed: false,
            proof_sent: false,
            send_counter: 1,
            recv_counter: 0,
            next_send: self.base,
            peer_window: 0,
            peer_acked: self.base,
            ack_told: self.acked_mark(),
            close_sent: false,
            moving: None,
            inbuf: Vec::new(),
        });
        Ok(())
    }

    /// The connection ended: forget it (frames in flight are replayed on the next one).
    pub fn detach(&mut self) {
        self.conn = None;
    }

    /// Takes application bytes for the peer; answers how many fit in the replay buffer (0
    /// when it is full: try again after the peer acknowledges).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        self.check_failed()?;
        if self.closed {
            return Err(Error::WriteAfterClose);
        }
        let n = data.len().min(self.send_capacity());
        self.unacked.extend(&data[..n]);
        Ok(n)
    }

    /// Bytes [`Stream::write`] would take now.
    pub fn send_capacity(&self) -> usize {
        usize::try_from(self.config.replay_cap)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.unacked.len())
    }

    /// Ends our stream after the bytes written so far.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Moves the peer's bytes received so far to `out`; answers how many.
    pub fn read(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.unread.len();
        out.extend(self.unread.drain(..));
        n
    }

    /// Moves as many of the peer's bytes as fit into `out`; answers how many (0 when none
    /// are unread).
    pub fn read_some(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.unread.len());
        for (o, b) in out.iter_mut().zip(self.unread.drain(..n)) {
            *o = b;
        }
        n
    }

    /// Console only: tells the gateway, on the current connection, that the session lives on
    /// the console at `to` from now on (the VM moved there). Sent after the frames already
    /// due; close the connection once it is out, and write nothing more here.
    pub fn send_moved(&mut self, to: SocketAddr) -> Result<(), Error> {
        self.check_failed()?;
        if self.config.role != Role::Console {
            return Err(Error::Unexpected("a Moved frame from the gateway"));
        }
        let conn = self.conn.as_mut().ok_or(Error::Detached)?;
        conn.moving = Some(to);
        Ok(())
    }

    /// Gateway only: where the console said the session moved, once (then `None` until the
    /// next Moved). The connection it came on is done: attach the next one there.
    pub fn take_moved(&mut self) -> Option<SocketAddr> {
        self.moved_to.take()
    }

    /// Whether a Moved frame arrived and was not taken yet.
    pub fn has_moved(&self) -> bool {
        self.moved_to.is_some()
    }

    /// Whether the peer closed its stream and every byte of it was read.
    pub fn read_closed(&self) -> bool {
        self.peer_end == Some(self.delivered()) && self.unread.is_empty()
    }

    /// Bytes of the peer's stream received (the next one expected has this index).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes of our stream the peer acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.base
    }

    fn delivered(&self) -> u64 {
        self.received - len64(self.unread.len())
    }

    /// What we tell the peer we hold of its stream: its Close counts as one position.
    fn received_mark(&self) -> u64 {
        self.received + u64::from(self.peer_end.is_some())
    }

    /// What we acknowledge: a Close read counts as one position.
    fn acked_mark(&self) -> u64 {
        self.delivered() + u64::from(self.read_closed())
    }

    /// The highest position the peer may claim of our stream: our Close's, once we closed.
    fn written_mark(&self) -> u64 {
        self.written() + u64::from(self.closed)
    }

    fn written(&self) -> u64 {
        self.base + len64(self.unacked.len())
    }

    fn is_finished(&self) -> bool {
        self.close_acked && self.read_closed()
    }

    fn check_failed(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(Error::Failed(Box::new(e.clone()))),
            None => Ok(()),
        }
    }

    /// Bytes read from the current connection. An error ends the connection (detach, close
    /// the socket); if [`Error::ends_session`], the whole session.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.check_failed()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::Detached);
        };
        conn.inbuf.extend_from_slice(bytes);
        let res = self.parse_frames();
        if let Err(e) = &res {
            self.conn = None;
            if e.ends_session() {
                self.failed = Some(e.clone());
            }
        }
        res
    }

    fn parse_frames(&mut self) -> Result<(), Error> {
        loop {
            let role = self.config.role;
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            let (key, max) = match &conn.key {
                None => (self.config.psk.clone(), MAX_OPENING_FRAME),
                Some(k) => (k.to_vec(), MAX_FRAME),
            };
            let Some(u) = wire::unseal(&conn.inbuf, &key, role.peer(), conn.recv_counter, max)?
            else {
                return Ok(());
            };
            let frame = Frame::decode(u.kind, u.body)?;
            let mut raw_opening = vec![u.kind];
            if conn.key.is_none() {
                raw_opening.extend_from_slice(u.body);
            }
            let consumed = u.consumed;
            conn.inbuf.drain(..consumed);
            conn.recv_counter += 1;
            self.on_frame(frame, &raw_opening)?;
        }
    }

    fn on_frame(&mut self, frame: Frame, raw_opening: &[u8]) -> Result<(), Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if conn.key.is_none() {
            let o = match frame {
                Frame::Hello(o) | Frame::Resume(o) => o,
                _ => return Err(Error::Unexpected("a frame before the opening")),
            };
            return self.on_opening(o, raw_opening);
        }
        if let Some(o) = conn.unconfirmed.take() {
            // The peer's first frame under the connection key: its opening is fresh.
            self.apply_opening(o)?;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match frame {
            Frame::Hello(_) | Frame::Resume(_) => Err(Error::Unexpected("a second opening")),
            Frame::Data { offset, bytes } => {
                if let Some(pe) = self.peer_end {
                    return Err(Error::PastEnd { end: pe });
                }
                if offset != self.received {
                    return Err(Error::OutOfOrder {
                        expected: self.received,
                        got: offset,
                    });
                }
                let end = offset + len64(bytes.len()); // decode checked the sum
                let window = self.config.replay_cap;
                let limit = conn.ack_told.saturating_add(u64::from(window));
                if end > limit {
                    return Err(Error::WindowExceeded { end, limit, window });
                }
                self.received = end;
                self.unread.extend(bytes);
                Ok(())
            }
            Frame::Ack { acked } => {
                let sent = conn.next_send + u64::from(conn.close_sent);
                if acked > sent {
                    return Err(Error::AheadOfSender {
                        claimed: acked,
                        sent,
                    });
                }
                conn.peer_acked = conn.peer_acked.max(acked.min(conn.next_send));
                self.drop_acked(acked);
                Ok(())
            }
            Frame::Close { end } => {
                // Sent after all its data, so it ends exactly where the data did.
                if end < self.received {
                    return Err(Error::PastEnd { end });
                }
                if end > self.received {
                    return Err(Error::OutOfOrder {
                        expected: self.received,
                        got: end,
                    });
                }
                self.peer_end = Some(end);
                Ok(())
            }
            Frame::Moved { to } => {
                if self.config.role != Role::Gateway {
                    return Err(Error::Unexpected("a Moved frame from the gateway"));
                }
                self.moved_to = Some(to);
                Ok(())
            }
        }
    }

    /// The peer's opening: derive the connection key; keep the opening until the peer proves
    /// it fresh.
    fn on_opening(&mut self, o: Opening, raw: &[u8]) -> Result<(), Error> {
        if o.session != self.session {
            return Err(Error::WrongSession);
        }
        let role = self.config.role;
        let psk = &self.config.psk;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.key = Some(match role {
            Role::Gateway => wire::connection_key(psk, &conn.own_opening, raw),
            Role::Console => wire::connection_key(psk, raw, &conn.own_opening),
        });
        conn.unconfirmed = Some(o);
        Ok(())
    }

    /// The peer's opening, proven fresh: check it against our state and set up the replay.
    fn apply_opening(&mut self, o: Opening) -> Result<(), Error> {
        if o.received < self.base {
            return Err(Error::ReplayGap {
                resume_from: o.received,
                oldest: self.base,
            });
        }
        let written = self.written();
        if o.received > self.written_mark() {
            return Err(Error::AheadOfSender {
                claimed: o.received,
                sent: self.written_mark(),
            });
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.confirmed = true;
        conn.next_send = o.received.min(written);
        conn.peer_window = o.window;
        conn.peer_acked = o.acked.min(written);
        // A Close the peer does not hold is sent (again) after the replay.
        conn.close_sent = o.received > written;
        self.established = true;
        self.drop_acked(o.acked);
        Ok(())
    }

    /// The peer acknowledged up to `acked` (≤ our written mark, checked by the caller).
    fn drop_acked(&mut self, acked: u64) {
        let written = self.written();
        if acked > written {
            self.close_acked = true;
        }
        let acked = acked.min(written);
        if acked > self.base {
            // acked ≤ next_send ≤ written, so the difference fits the buffer.
            let n = usize::try_from(acked - self.base).unwrap_or(usize::MAX);
            self.unacked.drain(..n.min(self.unacked.len()));
            self.base = acked;
        }
    }

    /// The next frame to write to the connection, or `None` until something changes (a
    /// write, a read, an acknowledgement, a new connection).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.failed.is_some() {
            return None;
        }
        let acked_mark = self.acked_mark();
        let written = self.written();
        let role = self.config.role;
        let conn = self.conn.as_mut()?;
        if let Some(f) = conn.opening_frame.take() {
            return Some(f);
        }
        let key = conn.key?;
        let frame = if !conn.proof_sent {
            // Our first frame under the key, always sent: it proves our opening fresh.
            conn.proof_sent = true;
            conn.ack_told = acked_mark;
            Frame::Ack { acked: acked_mark }
        } else if !conn.confirmed {
            return None;
        } else if acked_mark > conn.ack_told {
            conn.ack_told = acked_mark;
            Frame::Ack { acked: acked_mark }
        } else if let Some(to) = conn.moving.take() {
            Frame::Moved { to }
        } else {
            let limit = conn
                .peer_acked
                .saturating_add(u64::from(conn.peer_window))
                .min(written);
            if conn.next_send < limit {
                let n = usize::try_from(limit - conn.next_send)
                    .unwrap_or(usize::MAX)
                    .min(MAX_DATA);
                let start = usize::try_from(conn.next_send - self.base).unwrap_or(usize::MAX);
                let bytes = self.unacked.range(start..start + n).copied().collect();
                let offset = conn.next_send;
                conn.next_send += len64(n);
                Frame::Data { offset, bytes }
            } else if self.closed && !conn.close_sent && conn.next_send == written {
                conn.close_sent = true;
                Frame::Close { end: written }
            } else {
                return None;
            }
        };
        let counter = conn.send_counter;
        conn.send_counter += 1;
        Some(wire::seal(&key, role, counter, &frame))
    }

    /// Seals any kind and body as the next frame of this connection, as
    /// [`Stream::poll_transmit`] seals: how a fuzzer plays an authenticated peer that sends
    /// malformed frames. Only with the `fuzzing` feature, after the peer's opening.
    #[cfg(feature = "fuzzing")]
    pub fn encode_raw(&mut self, kind: u8, body: &[u8]) -> Option<Vec<u8>> {
        let role = self.config.role;
        let conn = self.conn.as_mut()?;
        let key = conn.key?;
        let counter = conn.send_counter;
        conn.send_counter += 1;
        Some(wire::seal_raw(&key, role, counter, kind, body))
    }
}

#[cfg(test)]
mod tests;
