//! The hub task: owns the screen cache, every viewer's session and the link (whose journal is
//! the console's one input journal),
//! and decides everything; viewer tasks only move bytes (see the module docs of `front`).

mod comigrate;

use super::control_server::Request;
use super::handover::{recv_handover, send_handover, HandedViewer, Handover, HandoverError};
use super::migration::CoMigration;
use super::viewer::{self, FromViewer, ReaderParts, ViewerError, Written, FROM_VIEWER_QUEUE};
use super::{ConsoleConfig, ConsoleError, Exit};
use crate::back::{LinkError, LinkEvent, LinkEvents, LinkInput, PushError, QemuLink};
use crate::journal::{InputEvent, ViewerId};
use crate::screen::{Change, Screen, ScreenState};
use crate::session::{Negotiated, Session, SessionOutput, SessionState};
use crate::snapshot::ConsoleSnapshot;
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

/// Replies (fence answers, ...) queued for a viewer before the hub stops reading it.
const MAX_REPLIES: usize = 16;
/// Longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a freeze waits for the viewers' writers.
const FREEZE_WAIT: Duration = Duration::from_secs(10);

/// One viewer as the hub sees it.
struct Slot {
    session: Session,
    peer: String,
    from: mpsc::Receiver<FromViewer>,
    to: mpsc::Sender<Vec<ServerMessage>>,
    writer_idle: bool,
    /// FramebufferUpdates handed to the writer (for status and tests).
    updates_sent: u64,
    replies: Vec<ServerMessage>,
    /// Input the journal refused (full), in order; the viewer is not read meanwhile.
    blocked: VecDeque<InputEvent>,
    stop_reader: Option<oneshot::Sender<()>>,
    reader: JoinHandle<ReaderParts>,
    writer: JoinHandle<tokio::net::tcp::OwnedWriteHalf>,
}

impl Slot {
    fn readable(&self) -> bool {
        self.blocked.is_empty() && self.replies.len() < MAX_REPLIES
    }

    fn close(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A finished handshake, from its task.
struct Admission {
    stream: TcpStream,
    peer: String,
    result: Result<viewer::Admitted, ViewerError>,
}

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
    /// The QEMU link ended while frozen: the checkpoint waits for the destination.
    link_gone: bool,
    admit_tx: mpsc::Sender<Admission>,
    admit_rx: mpsc::Receiver<Admission>,
    written_tx: mpsc::UnboundedSender<Written>,
    written_rx: mpsc::UnboundedReceiver<Written>,
}

/// Asks the console at `path` to freeze and receives its hand-over.
pub(super) async fn take_over(path: &Path) -> Result<Handover, HandoverError> {
    let mut sock = UnixStream::connect(path).await?;
    sock.write_all(b"freeze\n").await?;
    let mut sock = sock.into_std()?;
    sock.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || recv_handover(&mut sock))
        .await
        .map_err(|e| HandoverError::Io(std::io::Error::other(e)))?
}

impl Hub {
    pub(super) async fn start(
        mut config: ConsoleConfig,
        taken: Option<Handover>,
        listener: TcpListener,
        requests: mpsc::Receiver<Request>,
        mig: Option<CoMigration>,
    ) -> Result<Hub, ConsoleError> {
        // A hand-over's journal starts the link: one journal, carried whole.
        let taken = match taken {
            Some(h) => {
                let ConsoleSnapshot {
                    journal,
                    screen,
                    sessions,
                } = ConsoleSnapshot::decode(&h.snapshot)?;
                tracing::info!(
                    held = journal.held(),
                    "taking over the frozen input journal"
                );
                config.link.restore = Some(journal);
                Some((screen, sessions, h.viewers))
            }
            None => None,
        };
        let (link, events) = QemuLink::connect(config.link.clone())
            .await
            .map_err(|source| match source {
                LinkError::Restore(e) => ConsoleError::RestoreJournal(e),
                source => ConsoleError::Attach {
                    vnc: config.link.vnc_socket.display().to_string(),
                    qmp: config.link.qmp_socket.display().to_string(),
                    source: Box::new(source),
                },
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ConsoleError::Listen {
                addr: config.listen,
                source,
            })?;
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
            link_gone: false,
            admit_tx,
            admit_rx,
            written_tx,
            written_rx,
        };
        match taken {
            Some((screen, sessions, viewers)) => hub.restore(screen, sessions, viewers)?,
            None => hub.fill_screen().await?,
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

    fn restore(
        &mut self,
        screen: ScreenState,
        states: BTreeMap<ViewerId, SessionState>,
        handed: Vec<HandedViewer>,
    ) -> Result<(), ConsoleError> {
        self.screen = Screen::restore(screen)?;
        let mut sessions = BTreeMap::new();
        for (id, state) in states {
            sessions.insert(id, Session::restore(state)?);
        }
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
            self.add_viewer(id, session, stream, unread);
        }
        for id in sessions.keys() {
            tracing::warn!(viewer = id.0, "session without a connection: dropped");
        }
        tracing::info!(
            viewers = self.viewers.len(),
            "console restored from a hand-over; the link holds its input until the VM runs"
        );
        Ok(())
    }

    fn add_viewer(&mut self, id: ViewerId, session: Session, stream: TcpStream, leftover: Vec<u8>) {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (from_tx, from) = mpsc::channel(FROM_VIEWER_QUEUE);
        let (to, to_rx) = mpsc::channel(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let reader = tokio::spawn(viewer::reader(read, leftover, from_tx, stop_rx));
        let writer = tokio::spawn(viewer::writer(id, write, to_rx, self.written_tx.clone()));
        self.viewers.insert(
            id,
            Slot {
                session,
                peer,
                from,
                to,
                writer_idle: true,
                updates_sent: 0,
                replies: Vec::new(),
                blocked: VecDeque::new(),
                stop_reader: Some(stop_tx),
                reader,
                writer,
            },
        );
    }

    fn close_viewer(&mut self, id: ViewerId, reason: &dyn std::fmt::Display) {
        if let Some(slot) = self.viewers.remove(&id) {
            tracing::info!(viewer = id.0, peer = %slot.peer, %reason, "viewer closed");
            if !slot.blocked.is_empty() {
                tracing::warn!(
                    viewer = id.0,
                    events = slot.blocked.len(),
                    "closed viewer's refused input dropped"
                );
            }
            slot.close();
        }
    }

    pub(super) async fn run(mut self) -> Result<Exit, ConsoleError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ConsoleError::Control {
                path: "SIGTERM".into(),
                source,
            })?;
        // Refused input is retried when the link says its journal has room again.
        let input: LinkInput = self.link.input();
        loop {
            self.flush_writers();
            let waiting = self.viewers.values().any(|s| !s.blocked.is_empty());
            tokio::select! {
                _ = term.recv() => return self.stop("SIGTERM").await,
                _ = tokio::signal::ctrl_c() => return self.stop("SIGINT").await,
                event = self.events.recv(), if !self.link_gone => match event {
                    Some(LinkEvent::Vm(v)) => {
                        tracing::info!(?v, "VM state");
                        if let Some(exit) = self.vm_event(v).await? {
                            return self.exit(exit).await;
                        }
                    }
                    Some(e) => self.link_event(e),
                    None if self.holds_checkpoint() => {
                        tracing::info!("QEMU went away while the session is in flight: the checkpoint waits for the destination console");
                        self.link_gone = true;
                    }
                    None => return self.link_lost().await,
                },
                Some(req) = self.requests.recv() => match req {
                    Request::Status(reply) => { let _ = reply.send(self.status().await); }
                    Request::Prepare(addr, reply) => self.prepare(addr, reply),
                    Request::Migration(started, reply) => self.announce_migration(started, reply).await,
                    Request::Freeze(mut sock) => {
                        let h = self.freeze().await?;
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
                    Ok((stream, peer)) => self.handshake(stream, peer.to_string()),
                    Err(e) => tracing::warn!(error = %e, "accepting a viewer failed"),
                },
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

    fn handshake(&self, mut stream: TcpStream, peer: String) {
        let access = self.config.access.clone();
        let init = ServerInit {
            width: self.screen.width(),
            height: self.screen.height(),
            pixel_format: PixelFormat::RGBX32_LE,
            name: self.config.name.clone(),
        };
        let admit = self.admit_tx.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                viewer::handshake(&mut stream, &access, init),
            )
            .await
            .unwrap_or(Err(ViewerError::HandshakeTimeout));
            let _ = admit
                .send(Admission {
                    stream,
                    peer,
                    result,
                })
                .await;
        });
    }

    fn admitted(&mut self, a: Admission) {
        let admitted = match a.result {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(peer = %a.peer, reason = %error_chain(&e), "viewer refused");
                return;
            }
        };
        if !self.serves() {
            tracing::info!(peer = %a.peer, "viewer refused: the console is moving with its VM");
            return;
        }
        let id = ViewerId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        if !admitted.done.shared {
            let others: Vec<ViewerId> = self.viewers.keys().copied().collect();
            for other in others {
                self.close_viewer(other, &"a non-shared viewer connected");
            }
        }
        let session = Session::new(
            id,
            Negotiated {
                version: admitted.done.version,
                shared: admitted.done.shared,
                view_only: admitted.view_only,
                width: self.screen.width(),
                height: self.screen.height(),
            },
        );
        tracing::info!(viewer = id.0, peer = %a.peer, view_only = admitted.view_only, "viewer connected");
        self.add_viewer(id, session, a.stream, admitted.done.leftover);
    }

    fn written(&mut self, w: Written) {
        match w.result {
            Ok(()) => {
                if let Some(slot) = self.viewers.get_mut(&w.viewer) {
                    slot.writer_idle = true;
                }
            }
            Err(e) => self.close_viewer(w.viewer, &format!("writing failed: {e}")),
        }
    }

    /// Gives every idle writer its replies and, if due, the viewer's next update.
    fn flush_writers(&mut self) {
        let mut failed = Vec::new();
        for (id, slot) in &mut self.viewers {
            if !slot.writer_idle {
                continue;
            }
            let mut batch = std::mem::take(&mut slot.replies);
            if let Some(plan) = slot.session.poll_update(&self.screen) {
                match slot.session.encode_update(&self.screen, &plan) {
                    Ok(m) => {
                        batch.push(m);
                        slot.updates_sent += 1;
                    }
                    Err(e) => {
                        failed.push((*id, error_chain(&e)));
                        continue;
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            if slot.to.try_send(batch).is_ok() {
                slot.writer_idle = false;
            }
        }
        for (id, why) in failed {
            self.close_viewer(id, &why);
        }
    }

    async fn message(&mut self, id: ViewerId, m: ClientMessage) {
        let Some(slot) = self.viewers.get_mut(&id) else {
            return;
        };
        let outputs = match slot.session.handle_message(m) {
            Ok(o) => o,
            Err(e) => return self.close_viewer(id, &error_chain(&e)),
        };
        for out in outputs {
            match out {
                SessionOutput::Input(ev) => self.input(id, ev).await,
                SessionOutput::Reply(r) => {
                    if let Some(slot) = self.viewers.get_mut(&id) {
                        slot.replies.push(r);
                    }
                }
                SessionOutput::CutText(text) => {
                    tracing::trace!(viewer = id.0, len = text.len(), "clipboard ignored");
                }
            }
        }
    }

    /// One input event, in this viewer's order: behind its refused events, else into the
    /// link (whose journal holds it while the VM is stopped).
    async fn input(&mut self, id: ViewerId, ev: InputEvent) {
        let blocked = self.viewers.get(&id).is_some_and(|s| !s.blocked.is_empty());
        if blocked || !self.offer(id, ev).await {
            if let Some(slot) = self.viewers.get_mut(&id) {
                slot.blocked.push_back(ev);
            }
        }
    }

    /// Tries to journal an event; false if the journal is full.
    async fn offer(&mut self, id: ViewerId, ev: InputEvent) -> bool {
        match self.link.try_push(id, ev).await {
            Ok(_) => true,
            Err(PushError::Full(_)) => false,
            // The link has ended; the event loop sees it next and exits.
            Err(PushError::Closed) => true,
        }
    }

    async fn retry_blocked(&mut self) {
        let ids: Vec<ViewerId> = self.viewers.keys().copied().collect();
        for id in ids {
            while let Some(ev) = self
                .viewers
                .get(&id)
                .and_then(|s| s.blocked.front().copied())
            {
                if !self.offer(id, ev).await {
                    break;
                }
                if let Some(slot) = self.viewers.get_mut(&id) {
                    slot.blocked.pop_front();
                }
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
            "updates": link.map(|l| l.updates),
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

    async fn link_lost(self) -> Result<Exit, ConsoleError> {
        let Hub { link, viewers, .. } = self;
        let err = match link.shutdown().await {
            Err(e) => e,
            Ok(_) => crate::back::LinkError::QmpClosed,
        };
        let reason = format!("lost QEMU: {}", error_chain(&err));
        for (id, slot) in viewers {
            tracing::info!(viewer = id.0, peer = %slot.peer, %reason, "viewer closed");
            slot.close();
        }
        tracing::error!(%reason, "console exiting");
        Err(ConsoleError::Link(Box::new(err)))
    }

    /// Freezes the console into a hand-over (see `front`'s module docs for the steps).
    async fn freeze(&mut self) -> Result<Handover, ConsoleError> {
        tracing::info!(viewers = self.viewers.len(), "freezing");
        // 1. Stop reading every viewer; keep what was read but not handled, in order.
        let mut unread: BTreeMap<ViewerId, Vec<u8>> = BTreeMap::new();
        let mut reads = BTreeMap::new();
        for (id, slot) in &mut self.viewers {
            if let Some(stop) = slot.stop_reader.take() {
                let _ = stop.send(());
            }
            let parts = (&mut slot.reader).await;
            let mut bytes = Vec::new();
            while let Ok(FromViewer::Message(m)) = slot.from.try_recv() {
                m.encode(&mut bytes);
            }
            if let Ok(parts) = parts {
                if let Some(m) = &parts.unsent {
                    m.encode(&mut bytes);
                }
                bytes.extend_from_slice(&parts.buffered);
                reads.insert(*id, parts.read);
            }
            unread.insert(*id, bytes);
        }
        // 2. Freeze the link with the refused input: its journal is the snapshot's.
        let mut extra = Vec::new();
        for (id, slot) in &mut self.viewers {
            extra.extend(slot.blocked.drain(..).map(|ev| (*id, ev)));
        }
        let journal = self
            .link
            .freeze_with(extra)
            .await
            .map_err(|e| ConsoleError::Link(Box::new(e)))?;
        // 3. Wait for the writers to finish.
        let deadline = Instant::now() + FREEZE_WAIT;
        loop {
            let busy = self
                .viewers
                .values()
                .any(|s| !s.writer_idle || !s.replies.is_empty());
            if !busy {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!("freeze: writers not settled; carried on");
                break;
            }
            for slot in self.viewers.values_mut() {
                if slot.writer_idle && !slot.replies.is_empty() {
                    let batch = std::mem::take(&mut slot.replies);
                    if slot.to.try_send(batch).is_ok() {
                        slot.writer_idle = false;
                    }
                }
            }
            tokio::select! {
                Some(w) = self.written_rx.recv() => self.written(w),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
        // 4. Snapshot, then reunite each socket.
        let mut sessions = BTreeMap::new();
        let mut viewers = Vec::new();
        let slots = std::mem::take(&mut self.viewers);
        for (id, mut slot) in slots {
            sessions.insert(id, slot.session.freeze());
            let Slot { to, writer, .. } = slot;
            drop(to);
            let write = match tokio::time::timeout(FREEZE_WAIT, writer).await {
                Ok(Ok(w)) => w,
                _ => {
                    tracing::warn!(
                        viewer = id.0,
                        "writer did not finish: viewer not handed over"
                    );
                    sessions.remove(&id);
                    continue;
                }
            };
            let Some(read) = reads.remove(&id) else {
                sessions.remove(&id);
                continue;
            };
            match read.reunite(write).map(|s| s.into_std()) {
                Ok(Ok(stream)) => viewers.push(HandedViewer {
                    id,
                    stream,
                    unread: unread.remove(&id).unwrap_or_default(),
                }),
                _ => {
                    sessions.remove(&id);
                }
            }
        }
        let held = journal.held();
        let snapshot = ConsoleSnapshot {
            journal,
            screen: self.screen.freeze(),
            sessions,
        }
        .encode()?;
        tracing::info!(
            bytes = snapshot.len(),
            viewers = viewers.len(),
            held,
            "frozen"
        );
        Ok(Handover { snapshot, viewers })
    }
}

/// Binds the viewers' listener. `IP_FREEBIND`: a destination console listens on the service
/// address before its host owns it; `SO_REUSEADDR`: the restored viewer sockets share the port.
pub(super) fn bind_viewers(addr: SocketAddr) -> Result<TcpListener, ConsoleError> {
    let listen_err = |source| ConsoleError::Listen { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(listen_err)?;
    socket.set_reuse_address(true).map_err(listen_err)?;
    if addr.is_ipv4() {
        socket.set_freebind(true).map_err(listen_err)?;
    }
    socket.set_nonblocking(true).map_err(listen_err)?;
    socket.bind(&addr.into()).map_err(listen_err)?;
    socket.listen(128).map_err(listen_err)?;
    TcpListener::from_std(socket.into()).map_err(listen_err)
}

/// The next co-migration input, or never without co-migration.
async fn next_migration_input(mig: Option<&mut CoMigration>) -> super::migration::MigrationInput {
    match mig {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// The next message from any viewer the hub is willing to read, fairly.
async fn next_message(
    viewers: &mut BTreeMap<ViewerId, Slot>,
    rotate: &mut usize,
) -> (ViewerId, FromViewer) {
    poll_fn(|cx| {
        let n = viewers.len();
        if n == 0 {
            return Poll::Pending;
        }
        let start = *rotate % n;
        for k in 0..n {
            let Some((id, slot)) = viewers.iter_mut().nth((start + k) % n) else {
                continue;
            };
            if !slot.readable() {
                continue;
            }
            if let Poll::Ready(m) = slot.from.poll_recv(cx) {
                *rotate = rotate.wrapping_add(1);
                let m = m.unwrap_or(FromViewer::Ended(ViewerError::Closed));
                return Poll::Ready((*id, m));
            }
        }
        Poll::Pending
    })
    .await
}

/// An error and its sources on one line, for logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
