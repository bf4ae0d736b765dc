//! The hub task: owns the screen cache, every viewer's session and the link (whose journal is
//! the console's one input journal),
//! and decides everything; viewer tasks only move bytes (see the module docs of `front`).

mod comigrate;
mod freeze;
mod gateway_front;
mod gone;
mod viewers;

use super::conn::{Conn, ConnWrite};
use super::control_server::Request;
use super::handover::{recv_handover, send_handover, HandedViewer, Handover, HandoverError};
use super::migration::{self, CoMigration, MovedSession};
use super::report::error_chain;
use super::serial::{SerialLane, SerialPort};
use super::viewer::{self, FromViewer, ReaderParts, ViewerError, Written, FROM_VIEWER_QUEUE};
use super::{ConsoleConfig, ConsoleError, Exit};
use crate::back::{LinkError, LinkEvent, LinkEvents, LinkInput, PushError, QemuLink, VncAttached};
use crate::journal::{InputEvent, ViewerId};
use crate::screen::{Change, Screen, ScreenState};
use crate::session::{Negotiated, Session, SessionOutput, SessionState};
use crate::snapshot::ConsoleSnapshot;
pub(super) use freeze::take_over;
use gateway::pipe as gateway_pipe;
use rfb::framebuffer::{UpdateDecoder, UpdateEncoder};
use rfb::{ClientMessage, PixelFormat, RectPayload, Rectangle, ServerInit, ServerMessage};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::Path;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
pub(super) use viewers::bind_viewers;
use viewers::{next_message, Admission, Slot, MAX_REPLIES};

pub(super) struct Hub {
    config: ConsoleConfig,
    screen: Screen,
    decoder: UpdateDecoder,
    viewers: BTreeMap<ViewerId, Slot>,
    next_id: u32,
    rotate: usize,
    link: QemuLink,
    events: LinkEvents,
    listener: TcpListener,
    requests: mpsc::Receiver<Request>,
    /// Co-migration with the VM, when configured.
    mig: Option<CoMigration>,
    /// QEMU has gone: the session waits for it (or, frozen, for the destination).
    gone: Option<gone::Gone>,
    /// Input events discarded because QEMU had gone.
    input_discarded: u64,
    /// Times the console re-attached to a QEMU that answered again.
    reattached: u64,
    /// Bounds on viewers and handshakes, and the back-off after failed passwords.
    gate: super::gate::Gate,
    /// Viewers cut at a freeze because their writer was still busy at its deadline.
    viewers_cut: u64,
    /// A SIGTERM or SIGINT that came while the session was in flight (a checkpoint kept for
    /// the destination): the console stops once it is handed over or thawed.
    stop_deferred: Option<&'static str>,
    admit_tx: mpsc::Sender<Admission>,
    admit_rx: mpsc::Receiver<Admission>,
    written_tx: mpsc::UnboundedSender<Written>,
    written_rx: mpsc::UnboundedReceiver<Written>,
    /// The serial lane, when the console has one.
    serial: Option<SerialLane>,
    /// Gateway mode: the gateway's listener and its sessions' router.
    gateway: Option<gateway_front::GatewayFront>,
    /// New gateway sessions, routed, waiting for their handshake.
    gateway_new: gateway_front::NewSessions,
    /// Gateway sessions handed off to the destination: their Moved frames leave before the
    /// console exits.
    handed_off: Vec<tokio::task::JoinHandle<()>>,
}

/// A session the console starts from instead of a fresh one.
pub(super) enum Taken {
    /// A local console's hand-over (`--restore-from`): its sockets are live.
    Local(Handover),
    /// A session that moved here with its VM: its sockets are checkpoints, restored only once
    /// nothing else can fail (a restored socket dropped would end the viewer's connection).
    Moved(MovedSession),
}

impl Taken {
    fn snapshot(&self) -> &[u8] {
        match self {
            Taken::Local(h) => &h.snapshot,
            Taken::Moved(m) => &m.console,
        }
    }
}

impl Hub {
    /// Attaches to QEMU and starts serving: fresh, or from a taken session; over `vnc` when
    /// the VNC connection was attached ahead (an arriving console's).
    ///
    /// Everything that can fail (decoding the snapshot, attaching to QEMU, restoring the screen
    /// and the sessions, binding facts) runs before a moved session's sockets are restored: a
    /// failure before then leaves the viewers' connections to the source's checkpoint, which a
    /// restarted destination console takes over (the source keeps it until `TakenOver`).
    pub(super) async fn start(
        mut config: ConsoleConfig,
        taken: Option<Taken>,
        vnc: Option<VncAttached>,
        listener: TcpListener,
        requests: mpsc::Receiver<Request>,
        mig: Option<CoMigration>,
        serial_port: Option<SerialPort>,
    ) -> Result<Hub, ConsoleError> {
        // A taken session's journal starts the link: one journal, carried whole.
        let restored = match &taken {
            Some(t) => {
                let ConsoleSnapshot {
                    journal,
                    screen,
                    sessions,
                    serial,
                    streams,
                } = ConsoleSnapshot::decode(t.snapshot())?;
                tracing::info!(
                    held = journal.held(),
                    "taking over the frozen input journal"
                );
                config.link.restore = Some(journal);
                Some((screen, sessions, streams, serial))
            }
            None => None,
        };
        let (restored, serial_state) = match restored {
            Some((screen, sessions, streams, serial)) => {
                (Some((screen, sessions, streams)), serial)
            }
            None => (None, None),
        };
        let local = listener
            .local_addr()
            .map_err(|source| ConsoleError::Listen {
                addr: config.listen,
                source,
            })?;
        let connected = match vnc {
            Some(vnc) => QemuLink::connect_attached(config.link.clone(), vnc).await,
            None => QemuLink::connect(config.link.clone()).await,
        };
        let (link, events) = connected.map_err(|source| match source {
            LinkError::Restore(e) => ConsoleError::RestoreJournal(e),
            source => ConsoleError::Attach {
                vnc: config.link.vnc_socket.display().to_string(),
                qmp: config.link.qmp_socket.display().to_string(),
                source: Box::new(source),
            },
        })?;
        let serial = match (serial_port, &config.serial) {
            (Some(port), Some(cfg)) => Some(SerialLane::start(port, cfg, serial_state)?),
            _ => None,
        };
        if let (Some(lane), Ok(stats)) = (&serial, link.stats().await) {
            lane.running(stats.vm_running);
        }
        let (gateway, gateway_new) = match &config.gateway {
            Some(g) => {
                let (front, new) = gateway_front::GatewayFront::bind(g).await?;
                (Some(front), new)
            }
            None => (None, mpsc::channel(1).1),
        };
        let (admit_tx, admit_rx) = mpsc::channel(16);
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        let mut hub = Hub {
            screen: Screen::new(720, 400)?,
            decoder: UpdateDecoder::new(PixelFormat::RGBX32_LE)
                .map_err(|e| ConsoleError::Screen(e.into()))?,
            config,
            viewers: BTreeMap::new(),
            next_id: 1,
            rotate: 0,
            link,
            events,
            listener,
            requests,
            mig,
            gone: None,
            input_discarded: 0,
            reattached: 0,
            gate: super::gate::Gate::default(),
            viewers_cut: 0,
            stop_deferred: None,
            admit_tx,
            admit_rx,
            written_tx,
            written_rx,
            serial,
            gateway,
            gateway_new,
            handed_off: Vec::new(),
        };
        match (taken, restored) {
            (Some(taken), Some((screen, sessions, streams))) => {
                let sessions = hub.restore_sessions(screen, sessions)?;
                let handed = match taken {
                    Taken::Local(h) => h.viewers,
                    Taken::Moved(moved) => hub.restore_moved_sockets(moved)?,
                };
                let pipes = hub.import_streams(streams);
                hub.attach_viewers(sessions, handed, pipes);
            }
            _ => hub.fill_screen().await?,
        }
        // The one line a supervisor or test reads to learn the bound port.
        println!("dmore console: listening on {local}");
        tracing::info!(%local, "console listening for viewers");
        hub.arrived();
        Ok(hub)
    }

    /// The first screen: the link's framebuffer as one Raw rectangle.
    async fn fill_screen(&mut self) -> Result<(), ConsoleError> {
        let Ok(fb) = self.link.framebuffer().await else {
            return Ok(()); // The link ended: the loop reports why.
        };
        self.screen = Screen::new(fb.width(), fb.height())?;
        let mut enc = UpdateEncoder::new();
        if let Ok(rect) = enc.encode(&fb, 0, 0, fb.width(), fb.height()) {
            self.apply(&rect);
        }
        Ok(())
    }

    /// The screen cache and the viewers' sessions from a snapshot (nothing attached yet).
    fn restore_sessions(
        &mut self,
        screen: ScreenState,
        states: BTreeMap<ViewerId, SessionState>,
    ) -> Result<BTreeMap<ViewerId, Session>, ConsoleError> {
        let screen = Screen::restore(screen)?;
        let mut sessions = BTreeMap::new();
        for (id, state) in states {
            let mut session = Session::restore(state)?;
            session.set_lossy(self.config.lossy);
            sessions.insert(id, session);
        }
        self.screen = screen;
        Ok(sessions)
    }

    /// Restores a moved session's sockets here and takes the service address: the last step
    /// of a takeover that can fail. If the address cannot be taken, the restored sockets are
    /// closed silently and the error returned: the connections stay with the source's
    /// checkpoint for a restarted console.
    fn restore_moved_sockets(
        &mut self,
        moved: MovedSession,
    ) -> Result<Vec<HandedViewer>, ConsoleError> {
        let handed = migration::restore_sockets(moved.viewers);
        if let Some(service) = self.mig.as_ref().and_then(|m| m.service.as_ref()) {
            if let Err(e) = service.add() {
                migration::abandon_sockets(handed);
                return Err(e.into());
            }
            tracing::debug!("service address added");
            // Best effort: without the announcement the viewers find the address here once
            // their neighbour entry for it goes stale.
            match service.announce() {
                Ok(_) => tracing::debug!("service address announced"),
                Err(e) => tracing::warn!(error = %error_chain(&e),
                    "the service address could not be announced: viewers find it here late"),
            }
        }
        tracing::info!(
            viewers = handed.len(),
            "viewer connections restored here; taking over"
        );
        Ok(handed)
    }

    /// Serves the handed connections (sockets, and gateway sessions with their unread bytes)
    /// with their restored sessions. Cannot fail: a connection without a session, or whose
    /// socket tokio cannot take, is closed and logged.
    fn attach_viewers(
        &mut self,
        mut sessions: BTreeMap<ViewerId, Session>,
        handed: Vec<HandedViewer>,
        pipes: Vec<(ViewerId, gateway_pipe::Pipe, Vec<u8>)>,
    ) {
        for HandedViewer { id, stream, unread } in handed {
            let Some(session) = sessions.remove(&id) else {
                tracing::warn!(
                    viewer = id.0,
                    "handed a connection without a session: closed"
                );
                continue;
            };
            let stream = match stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(viewer = id.0, error = %e, "handed socket unusable: closed");
                    continue;
                }
            };
            self.next_id = self.next_id.max(id.0.saturating_add(1));
            self.add_viewer(id, session, Conn::Tcp(stream), unread);
        }
        for (id, pipe, unread) in pipes {
            let Some(session) = sessions.remove(&id) else {
                tracing::warn!(
                    viewer = id.0,
                    "a gateway session without a viewer session: closed"
                );
                continue;
            };
            self.next_id = self.next_id.max(id.0.saturating_add(1));
            self.add_viewer(id, session, Conn::Gateway(pipe), unread);
        }
        for id in sessions.keys() {
            tracing::warn!(viewer = id.0, "session without a connection: dropped");
        }
        tracing::info!(
            viewers = self.viewers.len(),
            "console restored from a hand-over; the link holds its input until the VM runs"
        );
    }

    pub(super) async fn run(mut self) -> Result<Exit, ConsoleError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ConsoleError::Control {
                path: "SIGTERM".into(),
                source,
            })?;
        loop {
            if let (Some(why), false) = (self.stop_deferred, self.holds_checkpoint()) {
                return self.stop(why).await;
            }
            // Refused input is retried when the link says its journal has room again (the
            // link of now: a re-attach replaces it).
            let input: LinkInput = self.link.input();
            self.flush_writers();
            let waiting = self.viewers.values().any(|s| !s.blocked.is_empty());
            let gone = self.gone.is_some();
            let wake = self.gone_wake();
            tokio::select! {
                _ = term.recv() => self.stop_signal("SIGTERM"),
                _ = tokio::signal::ctrl_c() => self.stop_signal("SIGINT"),
                event = self.events.recv(), if !gone => match event {
                    Some(LinkEvent::Vm(v)) => {
                        tracing::info!(?v, "VM state");
                        if let Some(lane) = &self.serial {
                            lane.vm(v);
                        }
                        if let Some(exit) = self.vm_event(v).await? {
                            return self.exit(exit).await;
                        }
                    }
                    Some(e) => self.link_event(e),
                    None => self.qemu_gone(),
                },
                () = tokio::time::sleep_until(wake), if gone => {
                    if let Some(waited) = self.gone_step().await {
                        return self.give_up(waited).await;
                    }
                }
                Some(req) = self.requests.recv() => match req {
                    Request::Status(reply) => { let _ = reply.send(self.status().await); }
                    Request::Prepare(addr, reply) => self.prepare(addr, reply),
                    Request::Migration(started, reply) => self.announce_migration(started, reply).await,
                    Request::Freeze(mut sock) => {
                        let mut h = self.freeze().await?;
                        // A local successor imports the gateway sessions from the snapshot:
                        // let go of them here (the gateway reattaches there).
                        for (_, pipe) in std::mem::take(&mut h.pipes) {
                            let _ = pipe.hand_off(None);
                        }
                        let sent = tokio::task::spawn_blocking(move || send_handover(&mut sock, &h))
                            .await
                            .unwrap_or_else(|e| Err(HandoverError::Io(std::io::Error::other(e))));
                        if let Err(e) = self.link.shutdown().await {
                            tracing::warn!(error = %error_chain(&e), "the QEMU link had failed");
                        }
                        return match sent {
                            Ok(()) => {
                                tracing::info!("handed over");
                                Ok(Exit::HandedOver)
                            }
                            Err(source) => Err(ConsoleError::HandOver(source)),
                        };
                    }
                },
                input = next_migration_input(self.mig.as_mut()) => {
                    if let Some(exit) = self.migration_input(input).await? {
                        return self.exit(exit).await;
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.handshake(Conn::Tcp(stream), peer),
                    Err(e) => tracing::warn!(error = %e, "accepting a viewer failed"),
                },
                accepted = gateway_front::accept(self.gateway.as_ref()) => self.gateway_accepted(accepted),
                Some((pipe, peer)) = self.gateway_new.recv() => self.handshake(Conn::Gateway(pipe), peer),
                Some(a) = self.admit_rx.recv() => self.admitted(a),
                Some(w) = self.written_rx.recv() => self.written(w),
                (id, msg) = next_message(&mut self.viewers, &mut self.rotate) => {
                    match msg {
                        FromViewer::Message(m) => self.message(id, m).await,
                        FromViewer::Ended(e) => self.close_viewer(id, &error_chain(&e)),
                    }
                }
                () = input.room(), if waiting => self.retry_blocked().await,
            }
        }
    }

    fn link_event(&mut self, e: LinkEvent) {
        match e {
            LinkEvent::ScreenChanged { rects } => {
                for r in &rects {
                    self.apply(r);
                }
            }
            LinkEvent::Resized { width, height } => self.apply(&Rectangle {
                x: 0,
                y: 0,
                width,
                height,
                payload: RectPayload::DesktopSize,
            }),
            LinkEvent::Cursor {
                hotspot_x,
                hotspot_y,
                cursor,
            } => {
                let encoded = rfb::translate::Translator::new(PixelFormat::RGBX32_LE)
                    .ok()
                    .and_then(|tr| {
                        let image = cursor.image()?;
                        rfb::encoding::cursor::encode(&tr, image, &cursor.mask).ok()
                    });
                let (pixels, mask) = encoded.unwrap_or_default();
                let (Ok(width), Ok(height)) =
                    (u16::try_from(cursor.width), u16::try_from(cursor.height))
                else {
                    return;
                };
                self.apply(&Rectangle {
                    x: hotspot_x,
                    y: hotspot_y,
                    width,
                    height,
                    payload: RectPayload::Cursor { pixels, mask },
                });
            }
            LinkEvent::Leds(l) => self.apply(&Rectangle {
                x: 0,
                y: 0,
                width: 0,
                height: 0,
                payload: RectPayload::QemuLedState(l),
            }),
            LinkEvent::Bell => {
                for slot in self.viewers.values_mut() {
                    if slot.replies.len() < MAX_REPLIES {
                        slot.replies.push(ServerMessage::Bell);
                    }
                }
            }
            // Run-state changes go to `vm_event` before this.
            LinkEvent::Vm(_) => {}
            LinkEvent::Uncertain(range) => {
                tracing::warn!(
                    first = range.first.0,
                    last = range.last.0,
                    "input may or may not have reached the guest"
                );
            }
        }
    }

    fn apply(&mut self, rect: &Rectangle) {
        match self.screen.apply(&mut self.decoder, rect) {
            Ok(Some(change)) => self.changed(&change),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %error_chain(&e), "QEMU's rectangle not cached"),
        }
    }

    fn changed(&mut self, change: &Change) {
        for slot in self.viewers.values_mut() {
            slot.session.handle_screen_change(change);
        }
    }

    async fn status(&self) -> String {
        let link = self.link.stats().await.ok();
        let (role, phase, comigration) = match &self.mig {
            Some(m) => (m.role(), m.phase(), m.status()),
            None => ("console", "Serving", serde_json::Value::Null),
        };
        crate::control::ok(serde_json::json!({
            "role": role,
            "phase": phase,
            "comigration": comigration,
            "viewers": self.viewers.len(),
            "handshakes": self.gate.handshakes(),
            "viewers_cut": self.viewers_cut,
            "qemu": if self.gone.is_some() { "gone" } else { "attached" },
            "input_discarded": self.input_discarded,
            "reattached": self.reattached,
            "vm_running": link.map(|l| l.vm_running),
            "frozen": link.map(|l| l.frozen),
            "held": link.map(|l| l.journal.held),
            "blocked": self.viewers.values().map(|s| s.blocked.len()).sum::<usize>(),
            "link_held": link.map(|l| l.journal.held),
            "link_pushed": link.map(|l| l.journal.pushed),
            "link_delivered": link.map(|l| l.journal.delivered),
            "link_fast_sent": link.map(|l| l.journal.fast_sent),
            "link_qmp_not_running": link.map(|l| l.journal.qmp_not_running),
            "link_uncertain": link.map(|l| l.journal.uncertain),
            "link_dropped": link.map(|l| l.journal.dropped),
            "link_qmp_delivered": link.map(|l| l.qmp_delivered),
            "link_unmapped_keys": link.map(|l| l.unmapped_keys),
            "updates": link.map(|l| l.updates),
            "serial": match &self.serial {
                Some(lane) => lane.status().await,
                None => serde_json::Value::Null,
            },
            "viewer_list": self.viewers.iter().map(|(id, s)| serde_json::json!({
                "id": id.0,
                "writer_idle": s.writer_idle,
                "updates_sent": s.updates_sent,
                "dirty_tiles": s.session.damage().dirty_tiles(),
                "damage_bytes": s.session.damage().heap_bytes(),
                "replies": s.replies.len(),
                "blocked": s.blocked.len(),
            })).collect::<Vec<_>>(),
        }))
    }

    /// A stop signal: the loop stops at once, or once the checkpoint is no longer kept.
    fn stop_signal(&mut self, why: &'static str) {
        if self.holds_checkpoint() {
            tracing::info!(
                why,
                "stop deferred: the session is in flight to the destination"
            );
        }
        self.stop_deferred = Some(why);
    }

    /// Stops on a signal. Not while a checkpoint is kept (the loop defers it): the session
    /// would die with it. libvirt's `release` hook stops the source console once its QEMU is
    /// gone, which can come before the destination console has taken over.
    async fn stop(self, why: &str) -> Result<Exit, ConsoleError> {
        tracing::info!(why, viewers = self.viewers.len(), "console stopping");
        for (_, slot) in self.viewers {
            slot.close();
        }
        if let Err(e) = self.link.shutdown().await {
            tracing::warn!(error = %error_chain(&e), "the QEMU link had failed");
        }
        Ok(Exit::Stopped)
    }
}

/// The next co-migration input, or never without co-migration.
async fn next_migration_input(mig: Option<&mut CoMigration>) -> super::migration::MigrationInput {
    match mig {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}
