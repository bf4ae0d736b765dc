//! Co-migration, the console's side: the phase machines of [`migrate::phase`] driven by the
//! VM's run state (from the link) and by the other console (over the peer connection,
//! `front::peer`).
//!
//! ```text
//!  source console (host A)                          destination console (host B, --incoming)
//!  prepare B ─── TCP, Hellos (PSK, HMAC) ─────────▶ accept
//!  VM stops for the switchover (STOP + query-status):
//!    freeze hub, relay on, service address off A,
//!    checkpoint viewer sockets (TCP_REPAIR, kept)
//!  Snapshot{MovedSession} ────────────────────────▶ kept until B's VM runs
//!                                                   RESUME: restore sockets (IP_TRANSPARENT),
//!                                                   address on B, gratuitous ARP, hub starts
//!                  ◀──────────────────────────────── TakenOver{B's MAC}
//!  relay caught segments to B, close the repaired
//!  sockets silently, exit 0
//! ```
//!
//! The source keeps its checkpoint (sockets in repair mode, the snapshot) until `TakenOver`; if
//! its own VM runs again instead, it leaves repair mode, takes the address back and serves
//! again (thaw). A destination console restarted after its VM switched asks for the snapshot
//! again (`ResendSnapshot`); the source, which reconnects until it is answered, resends it.
//!
//! **Guarantees.** Nothing in the co-migration waits on the VM: the VM's downtime is QEMU's.
//! The session is served in exactly one place (QEMU never runs both VMs). Input typed while
//! the console moves waits in the viewers' TCP (or in the relay) and is delivered once, on the
//! host whose VM runs. Survivable: the destination QEMU or console dying before the
//! switchover (the source serves on), the destination console dying after it (a restarted
//! one takes over from the source's checkpoint). Not survivable: the source console dying
//! while frozen (nobody holds the checkpoint), the destination console dying after the
//! source received its `TakenOver`, the source QEMU dying before the switchover completed
//! (the destination VM never runs: the checkpoint is given up after
//! [`ConsoleConfig::qemu_wait`](super::ConsoleConfig::qemu_wait), see `hub::gone`).

use std::net::{SocketAddr, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

use migrate::phase::{
    destination_step, source_step, DestinationAction, DestinationEvent, DestinationState,
    SourceAction, SourceEvent, SourceState,
};
use migrate::protocol::Message;
use migrate::tcp::{self, Checkpoint, Relay};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::handover::{HandedViewer, Handover};
use super::peer::{Peer, PeerEvent, PeerKey};
use super::report::error_chain;
use super::service::ServiceAddress;
use crate::journal::ViewerId;

/// Most connections to the incoming port exchanging Hellos at once.
const MAX_CANDIDATES: usize = 4;

/// Version of [`MovedSession`]'s encoding.
const MOVED_VERSION: u32 = 1;

/// A session as it crosses hosts: the console snapshot, and each viewer's TCP checkpoint and
/// the bytes the source had read from it but not handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSession {
    /// When the source froze (µs since the Unix epoch, the source host's clock).
    pub frozen_at_us: u64,
    /// The [`crate::snapshot::ConsoleSnapshot`] bytes.
    #[serde(with = "serde_bytes")]
    pub console: Vec<u8>,
    /// The viewers' connections.
    pub viewers: Vec<MovedViewer>,
}

/// One viewer's connection in a [`MovedSession`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedViewer {
    /// Its id (its session is the snapshot's `session/<id>`).
    pub id: u32,
    /// Bytes read from the socket and not handled: the viewer's next messages.
    #[serde(with = "serde_bytes")]
    pub unread: Vec<u8>,
    /// The socket's [`Checkpoint`], encoded.
    #[serde(with = "serde_bytes")]
    pub checkpoint: Vec<u8>,
}

/// Why a moved session could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MovedError {
    /// Not a moved session of this version.
    #[error("moved session: {0}")]
    Malformed(String),
}

impl MovedSession {
    /// Version, then the fields (postcard).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_stdvec(&MOVED_VERSION).unwrap_or_default();
        // Integers and byte strings into a Vec: cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Reads [`MovedSession::encode`]'s bytes; refuses other versions and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MovedError> {
        let bad = |e: postcard::Error| MovedError::Malformed(e.to_string());
        let (version, rest): (u32, _) = postcard::take_from_bytes(bytes).map_err(bad)?;
        if version != MOVED_VERSION {
            return Err(MovedError::Malformed(format!(
                "version {version}, this dmore reads {MOVED_VERSION}"
            )));
        }
        let (moved, rest): (MovedSession, _) = postcard::take_from_bytes(rest).map_err(bad)?;
        if !rest.is_empty() {
            return Err(MovedError::Malformed("bytes left over".into()));
        }
        Ok(moved)
    }
}

/// Microseconds since the Unix epoch, now.
pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the last co-migration measured, for `status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(super) struct Record {
    pub snapshot_bytes: Option<u64>,
    pub viewers_moved: Option<u64>,
    pub frozen_at_us: Option<u64>,
    pub taken_over_at_us: Option<u64>,
}

/// The source's checkpoint, kept from the freeze until `TakenOver` or a thaw.
pub(super) struct Kept {
    /// The encoded [`MovedSession`]: what `SendSnapshot` sends.
    pub moved: Vec<u8>,
    /// The console snapshot (for a thaw).
    pub console: Vec<u8>,
    /// The viewers' sockets, in repair mode, with their unread bytes.
    pub sockets: Vec<(ViewerId, TcpStream, Vec<u8>)>,
    /// Segments caught for the service address during the move.
    pub relay: Option<Relay>,
    /// The gateway viewers' live sessions (their state is in the snapshot): handed off to the
    /// destination at `TakenOver`, served again by a thaw.
    pub pipes: Vec<(ViewerId, gateway::pipe::Pipe)>,
}

/// Checkpoints a frozen console's viewer sockets (they stay open, in repair mode) and builds
/// the moved session. A socket that cannot be checkpointed is closed (its viewer must
/// reconnect) and its session left out.
pub(super) fn checkpoint(handover: Handover, frozen_at_us: u64, relay: Option<Relay>) -> Kept {
    let mut viewers = Vec::new();
    let mut sockets = Vec::new();
    for HandedViewer { id, stream, unread } in handover.viewers {
        match tcp::checkpoint(&stream) {
            Ok(cp) => {
                viewers.push(MovedViewer {
                    id: id.0,
                    unread: unread.clone(),
                    checkpoint: cp.encode(),
                });
                sockets.push((id, stream, unread));
            }
            Err(e) => {
                tracing::error!(viewer = id.0, error = %error_chain(&e),
                    "viewer socket cannot be checkpointed: it is closed and must reconnect");
            }
        }
    }
    let moved = MovedSession {
        frozen_at_us,
        console: handover.snapshot.clone(),
        viewers,
    }
    .encode();
    Kept {
        moved,
        console: handover.snapshot,
        sockets,
        relay,
        pipes: handover.pipes,
    }
}

/// Restores a moved session's viewer sockets on this host (before the service address is
/// here). A socket that cannot be restored is left out (logged): the others still move.
///
/// Call it only once nothing else can fail before the takeover: a restored socket is back in
/// normal mode, and dropping it would end the viewer's connection.
pub(super) fn restore_sockets(viewers: Vec<MovedViewer>) -> Vec<HandedViewer> {
    let mut handed = Vec::new();
    for v in viewers {
        let restored = Checkpoint::decode(&v.checkpoint).and_then(|cp| tcp::restore(&cp));
        match restored {
            Ok(stream) => handed.push(HandedViewer {
                id: ViewerId(v.id),
                stream,
                unread: v.unread,
            }),
            Err(e) => tracing::error!(viewer = v.id, error = %error_chain(&e),
                "viewer connection cannot be restored here"),
        }
    }
    handed
}

/// Closes restored sockets without a word to their viewers (repair mode): a takeover that
/// failed after [`restore_sockets`] leaves the connections to the source's checkpoint, which a
/// restarted destination console takes over.
pub(super) fn abandon_sockets(viewers: Vec<HandedViewer>) {
    for v in viewers {
        if let Err(e) = tcp::abandon(v.stream) {
            tracing::warn!(viewer = v.id.0, error = %error_chain(&e),
                "a restored socket could not be closed silently");
        }
    }
}

/// What the co-migration machinery tells the console's loop.
pub(super) enum MigrationInput {
    /// An event for the source machine.
    Source(SourceEvent),
    /// An event for the destination machine.
    Destination(DestinationEvent),
    /// The destination host announced a migration of this VM on a connection to the peer
    /// port (libvirt's hook there, before QEMU migrates): answer [`Message::Announced`] here
    /// once the fast lane is confirmed.
    Announce(mpsc::UnboundedSender<Message>),
    /// An announced migration never started within [`ANNOUNCE_HOLD`]: the fast lane may
    /// reopen.
    AnnouncementExpired,
    /// Nothing to do (a replaced connection's report, a new connection accepted).
    Nothing,
}

/// How long an announced migration may take to start (QEMU's `MIGRATION` `setup`) before
/// the console stops waiting for it. libvirt announces from the destination's `started`
/// hook, and only finishing its preparation there and setting the source's migration
/// parameters come between; a migration aborted in that gap (`virsh domjobabort` soon
/// enough) never starts, and the console hears nothing else of it. Until then input takes
/// the exactly-once lane, slower but never lost; after, the fast lane reopens.
pub(super) const ANNOUNCE_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// The console's co-migration state: both phase machines, the peer connections, the kept
/// checkpoint.
pub(super) struct CoMigration {
    pub key: PeerKey,
    pub service: Option<ServiceAddress>,
    pub source: SourceState,
    /// The destination machine: while arriving, and afterwards to answer a late source.
    pub destination: Option<DestinationState>,
    /// The destination console to move to (`prepare`).
    pub to_destination: Option<SocketAddr>,
    /// Where the destination console may be when no `prepare` named it (`--peer`).
    peers: Vec<SocketAddr>,
    out: Option<Peer>,
    inbound: Option<Peer>,
    /// Connections accepted on `incoming` whose Hellos are not done: one replaces `inbound`
    /// only once it has authenticated, so a stranger cannot cut the source's connection.
    candidates: Vec<Peer>,
    /// The peer port: an arriving console's source connects here; once serving (or from the
    /// start, with `--announce-listen`), the destination host's announcements come here.
    incoming: Option<TcpListener>,
    /// When an announced migration that has not started stops holding input on the
    /// exactly-once lane ([`ANNOUNCE_HOLD`]).
    pub announce_expiry: Option<tokio::time::Instant>,
    generation: u64,
    events_tx: mpsc::UnboundedSender<(u64, PeerEvent)>,
    events_rx: mpsc::UnboundedReceiver<(u64, PeerEvent)>,
    pub kept: Option<Kept>,
    /// Where the destination wants the relayed segments (from its `TakenOver`).
    pub relay_to: Option<[u8; 6]>,
    /// A `prepare` waiting for its connection.
    pub prepare_reply: Option<oneshot::Sender<String>>,
    pub record: Record,
    phase: watch::Sender<&'static str>,
}

impl CoMigration {
    /// A console that can migrate out (to `prepare`'s destination, else to one of `peers`),
    /// listening on its peer port `incoming` if given; `arriving`: it waits there for the
    /// source console's session.
    pub fn new(
        key: PeerKey,
        service: Option<ServiceAddress>,
        incoming: Option<TcpListener>,
        arriving: bool,
        peers: Vec<SocketAddr>,
        phase: watch::Sender<&'static str>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let destination = (arriving && incoming.is_some()).then_some(DestinationState::Waiting);
        let mut m = CoMigration {
            key,
            service,
            source: SourceState::Serving {
                peer: migrate::phase::Link::Disconnected,
            },
            destination,
            to_destination: None,
            peers,
            out: None,
            inbound: None,
            candidates: Vec::new(),
            incoming,
            announce_expiry: None,
            generation: 0,
            events_tx,
            events_rx,
            kept: None,
            relay_to: None,
            prepare_reply: None,
            record: Record::default(),
            phase,
        };
        m.publish();
        m
    }

    /// The phase `status` and `wait` see: the destination machine's while it has not served
    /// yet, else the source machine's.
    pub fn phase(&self) -> &'static str {
        match &self.destination {
            Some(d) if !matches!(d, DestinationState::Serving { .. }) => d.name(),
            _ => self.source.name(),
        }
    }

    /// Whether this console is (still) arriving: not yet serving a session.
    pub fn arriving(&self) -> bool {
        self.destination.as_ref().is_some_and(|d| !d.serves())
    }

    /// `status`'s role: `destination` while arriving, else `source`.
    pub fn role(&self) -> &'static str {
        if self.arriving() {
            "destination"
        } else {
            "source"
        }
    }

    fn publish(&mut self) {
        let phase = self.phase();
        self.phase.send_if_modified(|p| {
            let changed = *p != phase;
            *p = phase;
            changed
        });
    }

    /// The next thing that happened on a peer connection or the incoming listener.
    pub async fn next(&mut self) -> MigrationInput {
        let accept = async {
            match &self.incoming {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        let expiry = async {
            match self.announce_expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expiry => {
                self.announce_expiry = None;
                MigrationInput::AnnouncementExpired
            }
            Some((generation, event)) = self.events_rx.recv() => self.peer_event(generation, event),
            accepted = accept => {
                match accepted {
                    Ok((_, from)) if self.candidates.len() >= MAX_CANDIDATES => {
                        tracing::warn!(%from, "a connection to the incoming port refused: {MAX_CANDIDATES} are still exchanging Hellos");
                    }
                    Ok((stream, from)) => {
                        tracing::info!(%from, "a connection to the incoming port: exchanging Hellos");
                        self.generation += 1;
                        self.candidates.push(Peer::accepted(
                            stream,
                            self.key.clone(),
                            self.generation,
                            self.events_tx.clone(),
                        ));
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting a source console failed"),
                }
                MigrationInput::Nothing
            }
        }
    }

    fn peer_event(&mut self, generation: u64, event: PeerEvent) -> MigrationInput {
        if let Some(i) = self
            .candidates
            .iter()
            .position(|c| c.generation() == generation)
        {
            let candidate = self.candidates.swap_remove(i);
            match &event {
                PeerEvent::Connected => {
                    tracing::info!("a source console authenticated: it is the peer now");
                    self.inbound = Some(candidate);
                }
                other => {
                    tracing::warn!(event = ?other, "a connection to the incoming port failed its Hellos: ignored");
                    return MigrationInput::Nothing;
                }
            }
        }
        let outgoing = self.out.as_ref().map(Peer::generation) == Some(generation);
        let incoming = self.inbound.as_ref().map(Peer::generation) == Some(generation);
        if !outgoing && !incoming {
            return MigrationInput::Nothing;
        }
        if let (true, PeerEvent::Received(Message::Announce), Some(inbound)) =
            (incoming, &event, &self.inbound)
        {
            return MigrationInput::Announce(inbound.sender());
        }
        if let PeerEvent::Refused(why) = &event {
            // Still trying (the phase machine's Connect lasts until the peer answers); a
            // `prepare` waiting learns why now rather than after its timeout.
            let why = error_chain(why);
            tracing::warn!(%why, "the destination console refused the connection; retrying");
            self.answer_prepare(Err(why));
            return MigrationInput::Nothing;
        }
        if let PeerEvent::Lost(why) = &event {
            tracing::warn!(why = %error_chain(why), outgoing, "connection to the other console lost");
            if outgoing {
                self.out = None;
            } else {
                self.inbound = None;
            }
        }
        if outgoing {
            match &event {
                PeerEvent::Connected => self.answer_prepare(Ok(())),
                PeerEvent::Lost(why) => self.answer_prepare(Err(error_chain(why))),
                PeerEvent::Received(_) | PeerEvent::Refused(_) => {}
            }
        }
        let routed = |e: PeerEvent| match e {
            PeerEvent::Connected => (SourceEvent::PeerConnected, DestinationEvent::PeerConnected),
            PeerEvent::Lost(_) | PeerEvent::Refused(_) => {
                (SourceEvent::PeerLost, DestinationEvent::PeerLost)
            }
            PeerEvent::Received(m) => (
                SourceEvent::Received(m.clone()),
                DestinationEvent::Received(m),
            ),
        };
        let (s, d) = routed(event);
        if outgoing {
            MigrationInput::Source(s)
        } else {
            MigrationInput::Destination(d)
        }
    }

    fn answer_prepare(&mut self, result: Result<(), String>) {
        if let Some(reply) = self.prepare_reply.take() {
            let line = match result {
                Ok(()) => crate::control::ok(serde_json::json!({})),
                Err(why) => crate::control::failed(
                    &format!("the destination console refused the connection: {why}"),
                    serde_json::json!({}),
                ),
            };
            let _ = reply.send(line);
        }
    }

    /// Steps the source machine; an illegal event leaves it as it was (logged by `step`).
    pub fn step_source(&mut self, event: SourceEvent) -> Vec<SourceAction> {
        let state = std::mem::replace(&mut self.source, SourceState::Done);
        let actions = match source_step(state, event) {
            Ok((next, actions)) => {
                self.source = next;
                actions
            }
            Err(rejected) => {
                self.source = rejected.state;
                Vec::new()
            }
        };
        self.publish();
        actions
    }

    /// Steps the destination machine (absent: the event is ignored).
    pub fn step_destination(&mut self, event: DestinationEvent) -> Vec<DestinationAction> {
        let Some(state) = self.destination.take() else {
            return Vec::new();
        };
        let actions = match destination_step(state, event) {
            Ok((next, actions)) => {
                self.destination = Some(next);
                actions
            }
            Err(rejected) => {
                self.destination = Some(rejected.state);
                Vec::new()
            }
        };
        self.publish();
        actions
    }

    /// Connects to the destination console (`SourceAction::Connect`): the one `prepare`
    /// named, else whichever of the configured peers answers for this VM.
    pub fn connect(&mut self) {
        let addrs = match self.to_destination {
            Some(addr) => vec![addr],
            None => self.peers.clone(),
        };
        if addrs.is_empty() {
            tracing::warn!("no destination console known yet: the snapshot waits for `prepare`");
            return;
        }
        self.generation += 1;
        self.out = Some(Peer::connect(
            addrs,
            self.key.clone(),
            self.generation,
            self.events_tx.clone(),
        ));
    }

    /// Closes the connection to the destination console.
    pub fn disconnect(&mut self) {
        self.out = None;
    }

    /// Sends to the destination console (source role).
    pub fn send_out(&self, msg: Message) {
        match &self.out {
            Some(p) => p.send(msg),
            None => tracing::warn!(message = msg.name(), "no destination console: not sent"),
        }
    }

    /// Sends to the source console (destination role).
    pub fn send_in(&self, msg: Message) {
        match &self.inbound {
            Some(p) => p.send(msg),
            None => tracing::warn!(message = msg.name(), "no source console: not sent"),
        }
    }

    /// The `TakenOver` this console sends: with its hardware address when it moved the
    /// service address (the source relays what it caught there).
    pub fn taken_over(&self) -> Message {
        let relay_to = self
            .service
            .as_ref()
            .and_then(|s| match s.hardware_address() {
                Ok(mac) => Some(mac.0),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "no hardware address: no relay");
                    None
                }
            });
        Message::TakenOver { relay_to }
    }

    /// `status`'s `comigration` object.
    pub fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.record).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_stranger_on_the_incoming_port_does_not_replace_the_source() {
        let key = PeerKey {
            psk: vec![7; 32],
            vm_id: "vm".into(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (phase, _) = watch::channel("Waiting");
        let mut dest = CoMigration::new(key.clone(), None, Some(listener), true, vec![], phase);
        let (source_tx, mut source_rx) = mpsc::unbounded_channel();
        let _source = Peer::connect(vec![addr], key, 1, source_tx);
        while !matches!(
            dest.next().await,
            MigrationInput::Destination(DestinationEvent::PeerConnected)
        ) {}
        assert!(matches!(
            source_rx.recv().await,
            Some((1, PeerEvent::Connected))
        ));

        // A stranger connects and sends a frame far over the Hello bound.
        let mut stranger = tokio::net::TcpStream::connect(addr).await.unwrap();
        stranger.write_all(&[0xff; 64]).await.unwrap();
        for _ in 0..2 {
            // Its connection accepted, then its failed Hellos: neither reaches the machine.
            assert!(matches!(dest.next().await, MigrationInput::Nothing));
        }
        dest.send_in(Message::ResendSnapshot);
        assert!(
            matches!(
                source_rx.recv().await,
                Some((1, PeerEvent::Received(Message::ResendSnapshot)))
            ),
            "the source's connection is still the peer"
        );
    }

    /// The destination host's hook announces a migration on a serving console's peer port
    /// (`--announce-listen`): the hub hears it with the connection to answer on.
    #[tokio::test]
    async fn an_announcement_on_the_peer_port_reaches_a_serving_console() {
        let key = PeerKey {
            psk: vec![7; 32],
            vm_id: "vm".into(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (phase, _) = watch::channel("Serving");
        let mut serving = CoMigration::new(key.clone(), None, Some(listener), false, vec![], phase);
        assert!(!serving.arriving(), "it serves");
        let (hook_tx, mut hook_rx) = mpsc::unbounded_channel();
        let hook = Peer::connect(vec![addr], key, 1, hook_tx);
        let answer = loop {
            tokio::select! {
                input = serving.next() => if let MigrationInput::Announce(answer) = input {
                    break answer;
                },
                Some((_, event)) = hook_rx.recv() => if matches!(event, PeerEvent::Connected) {
                    hook.send(Message::Announce);
                },
            }
        };
        answer.send(Message::Announced).unwrap();
        loop {
            tokio::select! {
                _ = serving.next() => {}
                Some((_, event)) = hook_rx.recv() => {
                    assert!(matches!(event, PeerEvent::Received(Message::Announced)), "{event:?}");
                    break;
                }
            }
        }
    }

    /// A migration nobody prepared: the source tries its peers in turn and connects to the
    /// one console waiting for this VM, past a closed port and another VM's console.
    #[tokio::test]
    async fn a_source_finds_its_destination_among_its_peers() {
        let key = |vm: &str| PeerKey {
            psk: vec![7; 32],
            vm_id: vm.into(),
        };
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let bind = || async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            (l, a)
        };
        let (other_l, other_addr) = bind().await;
        let (dest_l, dest_addr) = bind().await;
        let (phase, _) = watch::channel("Waiting");
        let mut other = CoMigration::new(key("other"), None, Some(other_l), true, vec![], phase);
        let (phase, _) = watch::channel("Waiting");
        let mut dest = CoMigration::new(key("vm"), None, Some(dest_l), true, vec![], phase);
        let (phase, _) = watch::channel("Serving");
        let mut source = CoMigration::new(
            key("vm"),
            None,
            None,
            false,
            vec![closed_addr, other_addr, dest_addr],
            phase,
        );
        let actions = source.step_source(SourceEvent::MigrationStarted);
        assert_eq!(actions, vec![migrate::phase::SourceAction::Connect]);
        source.connect();
        let other_saw_a_source = tokio::spawn(async move {
            loop {
                if let MigrationInput::Destination(DestinationEvent::PeerConnected) =
                    other.next().await
                {
                    return true;
                }
            }
        });
        let dest_connected = async {
            while !matches!(
                dest.next().await,
                MigrationInput::Destination(DestinationEvent::PeerConnected)
            ) {}
        };
        let source_connected = async {
            while !matches!(
                source.next().await,
                MigrationInput::Source(SourceEvent::PeerConnected)
            ) {}
        };
        tokio::join!(dest_connected, source_connected);
        dest.send_in(Message::ResendSnapshot);
        assert!(matches!(
            source.next().await,
            MigrationInput::Source(SourceEvent::Received(Message::ResendSnapshot))
        ));
        other_saw_a_source.abort();
        assert!(
            other_saw_a_source.await.is_err(),
            "another VM's console never took the source"
        );
    }

    #[test]
    fn a_moved_session_round_trips_and_refuses_other_versions() {
        let moved = MovedSession {
            frozen_at_us: 1_700_000_000_000_000,
            console: vec![1, 2, 3],
            viewers: vec![MovedViewer {
                id: 7,
                unread: b"typed".to_vec(),
                checkpoint: vec![9; 40],
            }],
        };
        let bytes = moved.encode();
        assert_eq!(MovedSession::decode(&bytes).unwrap(), moved);
        let mut other = postcard::to_stdvec(&2u32).unwrap();
        other.extend_from_slice(&bytes[1..]);
        assert!(MovedSession::decode(&other)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(MovedSession::decode(&longer).is_err());
        for cut in 0..bytes.len() {
            assert!(MovedSession::decode(&bytes[..cut]).is_err());
        }
    }
}
