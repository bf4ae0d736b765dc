//! The link task: attaching to QEMU, then one `select!` loop that owns both sockets and the
//! journal.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rfb::translate::Translator;
use rfb::{
    ClientConfig, ClientMessage, Encoding, Limits, PixelFormat, RectPayload, Rectangle,
    SecurityType, ServerMessage, Version,
};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::timeout;
use tracing::Instrument;
use vnc::client::{ClientReader, ClientWriter, Setup};

use super::convert::{names_input_handler, qmp_events, vnc_message, vnc_position, Mouse};
use super::guest_clock::GuestClock;
use super::qmp_port::{Item, Kind, QmpPort};
use super::vm_watch::{Decision, JournalCall, VmWatch};
use super::{
    LinkConfig, LinkError, LinkEvent, LinkEvents, LinkInput, LinkStats, PushError, QemuLink,
    Request, VncAttached,
};
use crate::journal::{
    Action, FenceId, InputEvent, Journal, JournalFull, JournalState, Outcome, Seq, ViewerId,
    VncEvent,
};
use crate::keymap::{Keyboard, Layout};

/// Requests queued from handles before senders wait.
const REQUEST_QUEUE: usize = 256;

/// The encodings the link announces, at connect and again with every fence. Raw only for
/// pixels: on a local unix socket it costs QEMU and the link the least CPU and latency.
/// QEMU answers the -258 entry of each SetEncodings with a pseudo-rectangle: the fence.
const ENCODINGS: [Encoding; 5] = [
    Encoding::Raw,
    Encoding::DesktopSize,
    Encoding::Cursor,
    Encoding::QemuExtendedKeyEvent,
    Encoding::QemuLedState,
];

/// How long a fence waits after the journal asks for it before it is written. Written in the
/// same turn as the keys it confirms, the SetEncodings (and the `query-status` that follows its
/// answer) keeps QEMU's main loop busy just while the guest takes the key, and the key reached
/// the guest ~100 µs later (`dmore bench console`, "Where the time goes"); a little later the
/// guest has taken it. Confirmation is only later: a fence still follows its events and is
/// answered in order, so what is delivered, held or uncertain is decided as before. The price:
/// a pause nobody announced finds the last fast-lane key unconfirmed ~1 ms longer, so it is
/// counted uncertain a little more often (`console_stop` prints how often).
const FENCE_DELAY: Duration = Duration::from_millis(1);

/// How often the guest's vCPU time is sampled while the journal waits for the guest to read
/// (`journal::guest`): tokio's timer grain.
const GUEST_CLOCK_SAMPLE: Duration = Duration::from_millis(1);

/// Where the link is between delivering and frozen (module docs of `back`).
enum Freeze {
    /// Delivering.
    Running,
    /// Delivery stopped; waiting for what is in flight to resolve, until `deadline`.
    Settling {
        deadline: Instant,
        replies: Vec<oneshot::Sender<JournalState>>,
    },
    /// The state was taken; no input is delivered or taken until a thaw.
    Frozen,
}

/// A `push` waiting for room in the journal.
struct Waiting {
    viewer: ViewerId,
    event: InputEvent,
    reply: oneshot::Sender<Result<Option<Seq>, PushError>>,
}

/// Connects to QEMU's VNC server and finishes the RFB handshake (pixel format and encodings
/// set, nothing requested yet: QEMU sends no pixels until the link asks).
pub(super) async fn attach_vnc(config: &LinkConfig) -> Result<VncAttached, LinkError> {
    let limit = config.connect_timeout;
    let stream = timeout(limit, UnixStream::connect(&config.vnc_socket))
        .await
        .map_err(|_| LinkError::Timeout { what: "VNC server" })?
        .map_err(|source| LinkError::VncConnect {
            path: config.vnc_socket.clone(),
            source,
        })?;
    let client = ClientConfig {
        version: Version::V3_8,
        security: vec![SecurityType::None, SecurityType::VncAuth],
        password: config.vnc_password.clone(),
        shared: true,
        limits: Limits::DEFAULT,
    };
    let setup = Setup {
        pixel_format: Some(PixelFormat::RGBX32_LE),
        encodings: ENCODINGS.to_vec(),
    };
    let (done, reader, writer) = timeout(limit, vnc::client::connect(stream, client, &setup))
        .await
        .map_err(|_| LinkError::Timeout { what: "VNC server" })?
        .map_err(LinkError::VncHandshake)?;
    Ok(VncAttached {
        width: done.server_init.width,
        height: done.server_init.height,
        reader,
        writer,
    })
}

/// Attaches to QEMU (its VNC server through `vnc` when already attached) and spawns the link
/// task.
pub(super) async fn start(
    mut config: LinkConfig,
    vnc: Option<VncAttached>,
) -> Result<(QemuLink, LinkEvents), LinkError> {
    let layout = match config.layout.take() {
        Some(layout) => layout,
        None => Layout::load(None)?,
    };
    let limit = config.connect_timeout;
    let (conn, events) = timeout(limit, qmp::Connection::connect(&config.qmp_socket))
        .await
        .map_err(|_| LinkError::Timeout {
            what: "QMP monitor",
        })?
        .map_err(LinkError::QmpConnect)?;
    // All in flight at once: the mice and the vCPUs cost no extra round trip.
    let client = conn.client();
    let (reply, mice, cpus) = timeout(limit, async {
        tokio::join!(
            client.execute_at("query-status", Value::Null),
            client.execute("query-mice", Value::Null),
            client.execute("query-cpus-fast", Value::Null),
        )
    })
    .await
    .map_err(|_| LinkError::Timeout {
        what: "QMP monitor",
    })?;
    let reply = reply.map_err(LinkError::Qmp)?;
    let mouse = match mice {
        Ok(value) => Mouse::from_reply(value),
        Err(e @ qmp::Error::Qmp { .. }) => {
            tracing::warn!(error = %e, "query-mice failed");
            None
        }
        Err(e) => return Err(LinkError::Qmp(e)),
    }
    // Unknown: a PS/2 mouse, which every PC machine has; a refusal asks again.
    .unwrap_or(Mouse::Relative);
    let guest_clock = match cpus {
        Ok(reply) => GuestClock::of_vcpus(&reply, &config.qmp_socket),
        Err(e @ qmp::Error::Qmp { .. }) => {
            tracing::info!(error = %e, "query-cpus-fast failed: input goes without the guest's clock");
            None
        }
        Err(e) => return Err(LinkError::Qmp(e)),
    };
    let status_seq = reply.seq;
    let status: qmp::StatusInfo = serde_json::from_value(reply.value).map_err(|source| {
        LinkError::Qmp(qmp::Error::Decode {
            command: "query-status".to_owned(),
            source,
        })
    })?;

    let early = vnc.is_some();
    let VncAttached {
        width,
        height,
        reader,
        writer,
    } = match vnc {
        Some(attached) => attached,
        None => attach_vnc(&config).await?,
    };
    let translator = Translator::new(PixelFormat::RGBX32_LE)
        .map_err(|e| LinkError::Vnc(vnc::Error::Update(e.into())))?;
    tracing::debug!(
        width,
        height,
        running = status.running,
        ?mouse,
        early,
        "attached to QEMU"
    );

    let took_over = config.restore.is_some();
    let journal = match config.restore {
        Some(state) => {
            let mut j = Journal::restore(state, Instant::now())?;
            // The restored journal holds until the VM runs; if it already does, no RESUME
            // will come to say so.
            if status.running {
                j.handle_vm_resumed();
            }
            tracing::info!(
                held = j.held(),
                running = status.running,
                "journal restored"
            );
            j
        }
        None => Journal::new(config.journal, status.running),
    };
    let room = Arc::new(Notify::new());
    let pointer = journal.pointer();
    // A restored journal's keys down came with it (the source's keyboard state).
    let mut keyboard = Keyboard::new(layout);
    for number in journal.keys_down() {
        keyboard.apply(number, true);
    }
    let mut link = Link {
        reader,
        writer,
        qmp: QmpPort::new(conn.client().clone(), events),
        _conn: conn,
        max_held: journal.config().max_held,
        journal,
        vm: VmWatch::new(status.running, status_seq),
        freeze: Freeze::Running,
        freeze_timeout: config.freeze_timeout,
        room: room.clone(),
        room_wanted: false,
        translator,
        // The connect-time SetEncodings is answered like a fence.
        fences: VecDeque::from([None]),
        ext_keys: false,
        out: Vec::new(),
        outbox: VecDeque::new(),
        events_gone: false,
        want_update: Some(false),
        wake_display: took_over,
        leds: None,
        waiting: VecDeque::new(),
        stats: LinkStats::default(),
        keyboard,
        delayed_fences: Vec::new(),
        fence_due: None,
        mouse,
        pointer,
        vnc_pointer: None,
        mice_asked: false,
        fenced: Vec::new(),
        guest_clock,
        guest_sampled: None,
    };
    // The first sample turns the journal's gate on the guest's clock on.
    link.sample_guest_clock(true);
    // The watch's first decision: turn `events` on at attach.
    link.apply_vm();
    let (events_tx, events_rx) = mpsc::channel(config.event_queue.max(1));
    let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let span = tracing::info_span!(
        "qemu_link",
        vnc = %config.vnc_socket.display(),
        qmp = %config.qmp_socket.display()
    );
    let task = tokio::spawn(
        link.run(requests_rx, events_tx, shutdown_rx)
            .instrument(span),
    );
    Ok((
        QemuLink {
            input: LinkInput {
                requests: requests_tx,
                room,
            },
            shutdown: Some(shutdown_tx),
            task,
        },
        LinkEvents { rx: events_rx },
    ))
}

/// What woke the loop.
enum Wake<'a> {
    Shutdown,
    Qmp,
    Vnc(Result<ServerMessage, vnc::Error>),
    Request(Option<Request>),
    Timer,
    Permit(Result<mpsc::Permit<'a, LinkEvent>, mpsc::error::SendError<()>>),
}

/// The link task's state.
struct Link {
    reader: ClientReader<UnixStream>,
    writer: ClientWriter<UnixStream>,
    qmp: QmpPort,
    /// Keeps the QMP connection task alive.
    _conn: qmp::Connection,
    journal: Journal,
    max_held: usize,
    /// The VM's run state and migration, inferred from QMP (pure; its decisions carried out
    /// by [`Link::apply_vm`]).
    vm: VmWatch,
    freeze: Freeze,
    freeze_timeout: Duration,
    /// Signalled when the journal takes input again after a refusal.
    room: Arc<Notify>,
    /// A push was refused since the last signal.
    room_wanted: bool,
    translator: Translator,
    /// SetEncodings written and not yet answered, oldest first (`None`: the connect one).
    fences: VecDeque<Option<FenceId>>,
    /// QEMU acknowledged QEMU extended key events.
    ext_keys: bool,
    /// RFB messages to write at the end of this turn, in order.
    out: Vec<ClientMessage>,
    /// Events for the console not yet in its channel.
    outbox: VecDeque<LinkEvent>,
    /// The console dropped its events receiver.
    events_gone: bool,
    /// An update request to send (`true`: incremental) once the console took the last one.
    want_update: Option<bool>,
    /// A takeover's link attaches to a VM that already runs, so no RESUME brings the journal's
    /// display wake: it writes its own (see [`Link::wake_display`]).
    wake_display: bool,
    leds: Option<u8>,
    waiting: VecDeque<Waiting>,
    stats: LinkStats,
    /// QEMU's VNC keyboard state as the journaled keys leave it: picks each key's number.
    keyboard: Keyboard,
    /// Fences the journal asked for, not yet written (see [`FENCE_DELAY`]).
    delayed_fences: Vec<FenceId>,
    /// When `delayed_fences` are written.
    fence_due: Option<Instant>,
    /// How the guest's mouse takes QMP-lane motion (`query-mice`).
    mouse: Mouse,
    /// The last pointer position written to QEMU on either lane (a QMP batch's once it was
    /// delivered), in the viewers' coordinates: where relative QMP motion starts from.
    pointer: (u16, u16),
    /// The position of the last PointerEvent written to QEMU's VNC socket, as written (see
    /// [`vnc_position`]); `None` before the first.
    vnc_pointer: Option<(u16, u16)>,
    /// A `query-mice` is in flight.
    mice_asked: bool,
    /// Announced migrations waiting for the fast lane to be confirmed
    /// ([`Request::MigrationFenced`]).
    fenced: Vec<oneshot::Sender<()>>,
    /// The guest's vCPU time, for the journal's gate (`None`: not visible from here).
    guest_clock: Option<GuestClock>,
    /// When `guest_clock` was last sampled.
    guest_sampled: Option<Instant>,
}

impl Link {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        events: mpsc::Sender<LinkEvent>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<LinkStats, LinkError> {
        let mut requests_open = true;
        let result = loop {
            if let Err(e) = self.turn(&events).await {
                break Err(e);
            }
            let timer = match &self.freeze {
                Freeze::Settling { deadline, .. } => Some(*deadline),
                _ => self.journal.poll_timeout(),
            };
            let sample_due = self
                .journal
                .wants_guest_runtime()
                .then(|| Instant::now() + GUEST_CLOCK_SAMPLE);
            let timer = [timer, self.fence_due, sample_due]
                .into_iter()
                .flatten()
                .min();
            let deadline = timer.map_or_else(tokio::time::Instant::now, |t| {
                tokio::time::Instant::from_std(t)
            });
            let wake = tokio::select! {
                biased;
                _ = &mut shutdown => Wake::Shutdown,
                () = self.qmp.wait() => Wake::Qmp,
                msg = self.reader.read_message() => Wake::Vnc(msg),
                req = requests.recv(), if requests_open => Wake::Request(req),
                () = tokio::time::sleep_until(deadline), if timer.is_some() => Wake::Timer,
                permit = events.reserve(), if !self.outbox.is_empty() && !self.events_gone => {
                    Wake::Permit(permit.map_err(|_| mpsc::error::SendError(())))
                }
            };
            let outcome = match wake {
                Wake::Shutdown => break Ok(()),
                Wake::Qmp | Wake::Timer => Ok(()),
                Wake::Vnc(Ok(msg)) => self.on_vnc(msg),
                Wake::Vnc(Err(e)) => Err(LinkError::Vnc(e)),
                Wake::Request(Some(req)) => {
                    self.on_request(req, Instant::now());
                    Ok(())
                }
                Wake::Request(None) => {
                    requests_open = false;
                    Ok(())
                }
                Wake::Permit(Ok(permit)) => {
                    if let Some(event) = self.outbox.pop_front() {
                        permit.send(event);
                    }
                    Ok(())
                }
                Wake::Permit(Err(_)) => {
                    self.console_gone();
                    Ok(())
                }
            };
            if let Err(e) = outcome {
                break Err(e);
            }
        };
        match &result {
            Ok(()) => tracing::debug!("QEMU link shut down"),
            Err(e) => {
                tracing::error!(error = %e, "QEMU link failed");
                // What QEMU said before it went (a STOP, the migration's end) still reaches
                // the console, if there is room; then the channel closes.
                while let Some(event) = self.outbox.pop_front() {
                    if events.try_send(event).is_err() {
                        break;
                    }
                }
                drop(events);
                self.serve_freezes_after_loss(requests, shutdown).await;
            }
        }
        result.map(|()| self.stats())
    }

    /// QEMU is gone, but the journal is not: the console may be freezing for a switchover
    /// that QEMU's exit cut short (a manager quits the source QEMU as soon as the migration
    /// completed, and the console's freeze can start, or still settle, after that). Until the
    /// console shuts the link down or drops its handles, every freeze gets the journal's state
    /// (anything in flight is counted uncertain: QEMU cannot answer any more), so the session
    /// moves instead of dying with its QEMU. Everything else is refused or ignored. The events
    /// channel is closed first: the console learns that QEMU is gone.
    async fn serve_freezes_after_loss(
        &mut self,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: oneshot::Receiver<()>,
    ) {
        let pending = match std::mem::replace(&mut self.freeze, Freeze::Frozen) {
            Freeze::Settling { replies, .. } => replies,
            _ => Vec::new(),
        };
        let mut state = None;
        if !pending.is_empty() {
            let frozen = self.journal.freeze();
            for reply in pending {
                let _ = reply.send(frozen.clone());
            }
            state = Some(frozen);
        }
        loop {
            let request = tokio::select! {
                _ = &mut shutdown => return,
                request = requests.recv() => request,
            };
            match request {
                None => return,
                Some(Request::Freeze { extra, reply }) => {
                    let frozen = state.get_or_insert_with(|| {
                        self.journal.freeze_delivery();
                        let now = Instant::now();
                        for (viewer, event) in extra {
                            let _ = self.journal_push(viewer, event, now);
                        }
                        let frozen = self.journal.freeze();
                        tracing::info!(
                            held = frozen.held(),
                            uncertain = frozen.uncertain().len(),
                            "input frozen after QEMU went away"
                        );
                        frozen
                    });
                    let _ = reply.send(frozen.clone());
                }
                Some(Request::Push { reply, .. }) => {
                    let _ = reply.send(Err(PushError::Closed));
                }
                Some(Request::Framebuffer(reply)) => {
                    let _ = reply.send(self.reader.framebuffer().clone());
                }
                Some(Request::Stats(reply)) => {
                    let _ = reply.send(self.stats());
                }
                Some(
                    Request::Migration(_)
                    | Request::MigrationFenced(_)
                    | Request::AnnouncementExpired
                    | Request::Thaw,
                ) => {}
            }
        }
    }

    /// Everything that follows a wake-up: QMP items in QEMU's order, waiting pushes, the
    /// journal's actions, uncertain reports, the next update request; then one VNC write.
    async fn turn(&mut self, events: &mpsc::Sender<LinkEvent>) -> Result<(), LinkError> {
        while let Some(item) = self.qmp.next_ready() {
            self.on_qmp(item)?;
        }
        if self.qmp.ended() {
            return Err(LinkError::QmpClosed);
        }
        self.sample_guest_clock(false);
        let now = Instant::now();
        self.retry_waiting(now);
        if self.fence_due.is_some_and(|due| due <= now) {
            self.write_fences();
        }
        while let Some(action) = self.journal.poll_action(now) {
            self.execute(action)?;
        }
        self.settle(now);
        self.answer_fenced();
        while let Some(range) = self.journal.poll_uncertain() {
            self.emit(LinkEvent::Uncertain(range));
        }
        self.signal_room();
        // Hand queued events over first: a ScreenChanged the console has taken must not hold
        // back the next update request, or nothing would wake the link to send it.
        self.flush_outbox(events);
        let screen_queued = self
            .outbox
            .iter()
            .any(|e| matches!(e, LinkEvent::ScreenChanged { .. }));
        if !screen_queued {
            if let Some(incremental) = self.want_update.take() {
                let fb = self.reader.framebuffer();
                self.out.push(ClientMessage::FramebufferUpdateRequest {
                    incremental,
                    x: 0,
                    y: 0,
                    width: fb.width(),
                    height: fb.height(),
                });
            }
        }
        self.wake_display(now);
        if !self.out.is_empty() {
            self.writer
                .send_all(&self.out)
                .await
                .map_err(LinkError::Vnc)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Hands the journal the guest's vCPU time when it waits for it (or `always`), after every
    /// reply this turn handled; at most once per [`GUEST_CLOCK_SAMPLE`] (a busy link turns
    /// many times a millisecond, and each sample reads `/proc` for every vCPU).
    fn sample_guest_clock(&mut self, always: bool) {
        let now = Instant::now();
        let recent = self
            .guest_sampled
            .is_some_and(|at| now.saturating_duration_since(at) < GUEST_CLOCK_SAMPLE);
        if !always && (recent || !self.journal.wants_guest_runtime()) {
            return;
        }
        if let Some(runtime) = self.guest_clock.as_ref().and_then(GuestClock::sample) {
            self.guest_sampled = Some(now);
            self.journal.observe_guest_runtime(runtime, now);
        }
    }

    /// A takeover's display wake, once, at the end of the link's first turn (behind its first
    /// update request). QEMU's VNC server refreshes every 30 ms while the screen changes or a
    /// client sends input, and backs off (+50 ms per refresh that sent nothing, up to 3 s)
    /// otherwise; a client message resets it. The arriving console kept it at its base until
    /// the takeover (`front::incoming`); this wake keeps it there for the first answer.
    /// Writing it every 25 ms for 100 ms gained ~11 ms of viewer gap (p50, helper gap's A/B),
    /// but each wake is a PS/2 mouse packet the just-resumed guest must read: CI's demo test
    /// then lost a click (23 sent, 22 received), so there is one.
    fn wake_display(&mut self, now: Instant) {
        if std::mem::take(&mut self.wake_display) {
            let wake = self.journal.display_wake(now);
            self.write_vnc(wake);
        }
    }

    /// Queues `event` for QEMU's VNC socket; a PointerEvent's position as QEMU's VNC server
    /// must read it ([`vnc_position`]).
    fn write_vnc(&mut self, mut event: VncEvent) {
        if let VncEvent::Pointer { x, y, .. } = &mut event {
            let to = (*x, *y);
            let sent = vnc_position(self.mouse, self.vnc_pointer, self.pointer, to);
            (*x, *y) = sent;
            self.vnc_pointer = Some(sent);
            self.pointer = to;
        }
        tracing::trace!(?event, "fast lane");
        self.out.push(vnc_message(&event, self.ext_keys));
    }

    fn execute(&mut self, action: Action) -> Result<(), LinkError> {
        match action {
            Action::Vnc { events } => {
                for event in events {
                    self.write_vnc(event);
                }
            }
            Action::Fence { fence } => {
                self.delayed_fences.push(fence);
                if self.fence_due.is_none() {
                    self.fence_due = Some(Instant::now() + FENCE_DELAY);
                }
            }
            Action::Status { probe } => {
                self.qmp
                    .send(Kind::Probe(probe), "query-status", Value::Null);
            }
            Action::Qmp { batch, events } => {
                let fb = self.reader.framebuffer();
                let size = (fb.width(), fb.height());
                let converted = qmp_events(&events, size, self.mouse, self.pointer);
                let list = converted.events;
                let unmapped = u64::try_from(converted.unmapped).unwrap_or(u64::MAX);
                self.stats.unmapped_keys += unmapped;
                tracing::trace!(?batch, ?events, "QMP lane");
                let keys = events.iter().filter(|e| e.seq.is_some()).count();
                let keys = u64::try_from(keys).unwrap_or(u64::MAX);
                if list.is_empty() {
                    // Nothing QEMU could take: done with it (logged in qmp_events).
                    self.pointer = converted.pointer;
                    self.journal.handle_qmp_reply(batch, Outcome::Delivered)?;
                } else {
                    self.qmp.send(
                        Kind::Batch {
                            batch,
                            keys: keys.saturating_sub(unmapped),
                            pointer: converted.pointer,
                        },
                        "input-send-event",
                        qmp::InputEvent::arguments(&list),
                    );
                }
            }
        }
        Ok(())
    }

    /// Queues the delayed fences' SetEncodings, in the order the journal asked for them.
    fn write_fences(&mut self) {
        self.fence_due = None;
        for fence in self.delayed_fences.drain(..) {
            self.out
                .push(ClientMessage::SetEncodings(ENCODINGS.to_vec()));
            self.fences.push_back(Some(fence));
        }
    }

    fn on_qmp(&mut self, item: Item) -> Result<(), LinkError> {
        match item {
            Item::Event(event) => {
                self.vm.handle_event(&event);
                self.apply_vm();
            }
            Item::Reply(
                Kind::Batch {
                    batch,
                    keys,
                    pointer,
                },
                result,
            ) => {
                tracing::trace!(?batch, ok = result.is_ok(), "QMP lane answered");
                let outcome = match result {
                    Ok(_) => {
                        self.stats.qmp_delivered += keys;
                        self.pointer = pointer;
                        Outcome::Delivered
                    }
                    Err(e) if e.is_vm_not_running() => Outcome::VmNotRunning,
                    Err(qmp::Error::Qmp { source, .. }) => {
                        if names_input_handler(&source.desc) && !self.mice_asked {
                            // The journal re-sends the keys and buttons without the motion;
                            // later motion takes the mode QEMU tells now.
                            self.mice_asked = true;
                            self.qmp.send(Kind::Mice, "query-mice", Value::Null);
                        }
                        Outcome::Failed(source.desc)
                    }
                    Err(e) => return Err(LinkError::Qmp(e)),
                };
                self.journal.handle_qmp_reply(batch, outcome)?;
            }
            Item::Reply(Kind::Probe(probe), result) => {
                let running = status(result)?.is_some_and(|s| s.running);
                // Every event QEMU sent before this reply reached the journal first
                // (QmpPort's order), so no STOP is left unpassed.
                self.journal.handle_status(probe, running, false)?;
            }
            Item::Reply(Kind::Mice, result) => {
                self.mice_asked = false;
                let mouse = match result {
                    Ok(reply) => Mouse::from_reply(reply.value),
                    Err(qmp::Error::Qmp { source, .. }) => {
                        tracing::warn!(error = %source, "query-mice failed");
                        None
                    }
                    Err(e) => return Err(LinkError::Qmp(e)),
                };
                if let Some(mouse) = mouse {
                    if mouse != self.mouse {
                        tracing::info!(from = ?self.mouse, to = ?mouse, "guest mouse changed");
                    }
                    self.mouse = mouse;
                }
            }
            Item::Reply(Kind::EventsOn, result) => match result {
                Ok(_) => tracing::debug!("migration events on"),
                Err(qmp::Error::Qmp { source, .. }) => {
                    tracing::debug!(error = %source, "migration events not set (a migration runs?)");
                }
                Err(e) => return Err(LinkError::Qmp(e)),
            },
            Item::Reply(Kind::Classify, result) => {
                let status = status(result)?;
                self.vm.handle_stop_status(status.as_ref());
                self.apply_vm();
            }
        }
        Ok(())
    }

    /// Carries out the watch's decisions, in its order.
    fn apply_vm(&mut self) {
        while let Some(decision) = self.vm.poll_decision() {
            match decision {
                Decision::Journal(JournalCall::VmStopped) => self.journal.handle_vm_stopped(),
                Decision::Journal(JournalCall::VmResumed) => {
                    self.journal.handle_vm_resumed();
                    let wake = self.journal.display_wake(Instant::now());
                    self.write_vnc(wake);
                }
                Decision::Journal(JournalCall::MigrationStarted) => {
                    self.journal.handle_migration_started()
                }
                Decision::Journal(JournalCall::MigrationEnded) => {
                    self.journal.handle_migration_ended()
                }
                Decision::Tell(event) => self.emit(LinkEvent::Vm(event)),
                Decision::ClassifyStop => {
                    self.qmp.send(Kind::Classify, "query-status", Value::Null)
                }
                Decision::EventsOn => self.events_on(),
            }
        }
    }

    /// Turns QEMU's `events` migration capability on (why the console may:
    /// [`Decision::EventsOn`]).
    fn events_on(&mut self) {
        let caps = serde_json::json!({
            "capabilities": [{ "capability": "events", "state": true }]
        });
        self.qmp
            .send(Kind::EventsOn, "migrate-set-capabilities", caps);
    }

    fn on_vnc(&mut self, msg: ServerMessage) -> Result<(), LinkError> {
        match msg {
            ServerMessage::FramebufferUpdate(rects) => self.on_update(&rects),
            ServerMessage::Bell => {
                self.emit(LinkEvent::Bell);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One FramebufferUpdate, already applied to the reader's framebuffer.
    fn on_update(&mut self, rects: &[Rectangle]) -> Result<(), LinkError> {
        self.stats.updates += 1;
        let mut areas: Vec<(u16, u16, u16, u16)> = Vec::new();
        let mut content = false;
        for rect in rects {
            match &rect.payload {
                RectPayload::Raw(_)
                | RectPayload::Zrle(_)
                | RectPayload::Hextile(_)
                | RectPayload::Zlib(_)
                | RectPayload::Tight(_)
                | RectPayload::CopyRect { .. } => {
                    areas.push((rect.x, rect.y, rect.width, rect.height));
                    content = true;
                }
                RectPayload::DesktopSize | RectPayload::ExtendedDesktopSize(_) => {
                    // Earlier areas were drawn on the old screen: gone.
                    areas.clear();
                    content = true;
                    self.emit(LinkEvent::Resized {
                        width: rect.width,
                        height: rect.height,
                    });
                    self.want_update = Some(false);
                }
                RectPayload::Cursor { .. } => {
                    if let Some(cursor) = self.reader.cursor() {
                        let event = LinkEvent::Cursor {
                            hotspot_x: rect.x,
                            hotspot_y: rect.y,
                            cursor: cursor.clone(),
                        };
                        self.emit(event);
                    }
                }
                RectPayload::QemuExtendedKeyEvent => self.on_fence_answer()?,
                RectPayload::QemuLedState(leds) => self.set_leds(*leds),
                RectPayload::VmwareLedState(leds) => {
                    self.set_leds(u8::try_from(leds & 0x7).unwrap_or(0))
                }
                RectPayload::LastRect
                | RectPayload::QemuPointerMotionChange
                | RectPayload::DesktopName(_) => {}
            }
        }
        if !areas.is_empty() {
            let rects = self.read_areas(&areas);
            self.emit(LinkEvent::ScreenChanged { rects });
        }
        if content && self.want_update.is_none() {
            self.want_update = Some(true);
        }
        Ok(())
    }

    /// The areas' current pixels as Raw rectangles in RGBX32_LE.
    fn read_areas(&self, areas: &[(u16, u16, u16, u16)]) -> Vec<Rectangle> {
        let fb = self.reader.framebuffer();
        areas
            .iter()
            .filter_map(|&(x, y, width, height)| {
                let pixels = fb.view(x, y, width, height)?;
                let mut data = Vec::with_capacity(usize::from(width) * usize::from(height) * 4);
                self.translator.encode_rect(pixels, &mut data);
                Some(Rectangle {
                    x,
                    y,
                    width,
                    height,
                    payload: RectPayload::Raw(data),
                })
            })
            .collect()
    }

    fn on_fence_answer(&mut self) -> Result<(), LinkError> {
        match self.fences.pop_front() {
            Some(Some(fence)) => {
                self.stats.fences_answered += 1;
                self.journal.handle_fence_answered(fence)?;
            }
            Some(None) => {
                self.ext_keys = true;
                tracing::debug!("QEMU accepts extended key events");
            }
            None => tracing::warn!("QEMU sent an extended-key acknowledgement nobody asked for"),
        }
        Ok(())
    }

    fn set_leds(&mut self, leds: u8) {
        let leds = leds & 0x7;
        if self.leds != Some(leds) {
            self.leds = Some(leds);
            self.emit(LinkEvent::Leds(leds));
        }
    }

    fn on_request(&mut self, request: Request, now: Instant) {
        match request {
            Request::Push {
                viewer,
                event,
                wait,
                reply,
            } => {
                if matches!(self.freeze, Freeze::Frozen) {
                    // Not in the state already taken: nothing enters until a thaw.
                    self.room_wanted = true;
                    if wait {
                        self.waiting.push_back(Waiting {
                            viewer,
                            event,
                            reply,
                        });
                    } else {
                        let full = JournalFull {
                            held: self.journal.held(),
                            max: self.max_held,
                        };
                        let _ = reply.send(Err(PushError::Full(full)));
                    }
                    return;
                }
                if wait && !self.waiting.is_empty() {
                    // Keep arrival order behind those already waiting.
                    self.waiting.push_back(Waiting {
                        viewer,
                        event,
                        reply,
                    });
                    return;
                }
                match self.journal_push(viewer, event, now) {
                    Ok(seq) => {
                        let _ = reply.send(Ok(seq));
                    }
                    Err(_) if wait => self.waiting.push_back(Waiting {
                        viewer,
                        event,
                        reply,
                    }),
                    Err(full) => {
                        self.room_wanted = true;
                        let _ = reply.send(Err(PushError::Full(full)));
                    }
                }
            }
            Request::Framebuffer(reply) => {
                let _ = reply.send(self.reader.framebuffer().clone());
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Request::Migration(migrating) => {
                self.vm.handle_announced(migrating);
                self.apply_vm();
            }
            Request::AnnouncementExpired => {
                self.vm.handle_announcement_expired();
                self.apply_vm();
            }
            Request::MigrationFenced(reply) => {
                self.vm.handle_announced(true);
                self.apply_vm();
                self.fenced.push(reply);
            }
            Request::Freeze { extra, reply } => self.start_freeze(extra, reply, now),
            Request::Thaw => self.thaw(),
        }
    }

    /// Stops delivery and takes in everything already handed to the link: waiting pushes,
    /// then the caller's extra events (the journal accepts up to its restore bound now).
    fn start_freeze(
        &mut self,
        extra: Vec<(ViewerId, InputEvent)>,
        reply: oneshot::Sender<JournalState>,
        now: Instant,
    ) {
        match &mut self.freeze {
            Freeze::Frozen => {
                let _ = reply.send(self.journal.freeze());
                return;
            }
            Freeze::Settling { replies, .. } => {
                replies.push(reply);
                return;
            }
            Freeze::Running => {}
        }
        tracing::info!(held = self.journal.held(), "freezing input");
        self.journal.freeze_delivery();
        self.freeze = Freeze::Settling {
            deadline: now + self.freeze_timeout,
            replies: vec![reply],
        };
        self.retry_waiting(now);
        let mut lost = 0usize;
        for (viewer, event) in extra {
            if self.journal_push(viewer, event, now).is_err() {
                lost += 1;
            }
        }
        if lost > 0 || !self.waiting.is_empty() {
            tracing::error!(
                lost,
                waiting = self.waiting.len(),
                "freeze: the journal cannot carry this input (beyond its restore bound)"
            );
        }
    }

    /// Answers the announcements waiting for the fast lane to be closed and confirmed.
    fn answer_fenced(&mut self) {
        if !self.fenced.is_empty()
            && !self.journal.fast_lane_open()
            && self.journal.fast_lane_confirmed()
        {
            tracing::debug!("announced migration: the fast lane is closed and confirmed");
            for reply in self.fenced.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Takes the journal's state once nothing is in flight, or at the deadline (the rest
    /// recorded uncertain by the journal).
    fn settle(&mut self, now: Instant) {
        let Freeze::Settling { deadline, .. } = &self.freeze else {
            return;
        };
        let settled = self.journal.is_settled();
        if !settled && now < *deadline {
            return;
        }
        let Freeze::Settling { replies, .. } = std::mem::replace(&mut self.freeze, Freeze::Frozen)
        else {
            return;
        };
        if !settled {
            tracing::warn!("freeze: replies still outstanding at the deadline; recorded uncertain");
        }
        let state = self.journal.freeze();
        tracing::info!(
            held = state.held(),
            uncertain = state.uncertain().len(),
            "input frozen"
        );
        for reply in replies {
            let _ = reply.send(state.clone());
        }
    }

    fn thaw(&mut self) {
        if let Freeze::Settling { .. } = self.freeze {
            // Those waiting for the state get none: the freeze was called off.
            tracing::info!("freeze called off before it settled");
        }
        if !matches!(self.freeze, Freeze::Running) {
            tracing::info!("input thawed");
        }
        self.freeze = Freeze::Running;
        self.journal.thaw_delivery();
    }

    /// Wakes a refused pusher once the journal takes input again.
    fn signal_room(&mut self) {
        if self.room_wanted
            && matches!(self.freeze, Freeze::Running)
            && self.waiting.is_empty()
            && self.journal.held() < self.max_held
        {
            self.room_wanted = false;
            self.room.notify_one();
        }
    }

    /// Takes waiting pushes while the journal has room.
    fn retry_waiting(&mut self, now: Instant) {
        if matches!(self.freeze, Freeze::Frozen) {
            return;
        }
        while let Some(w) = self.waiting.front() {
            let sequenced = !matches!(w.event, InputEvent::Motion { .. });
            // (While delivery is frozen the journal decides: its bound is the restore's.)
            if sequenced && !self.journal.delivery_frozen() && self.journal.held() >= self.max_held
            {
                break;
            }
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            match self.journal_push(w.viewer, w.event, now) {
                Ok(seq) => {
                    let _ = w.reply.send(Ok(seq));
                }
                Err(_) => {
                    self.waiting.push_front(w);
                    break;
                }
            }
        }
    }

    /// Journals a viewer event, a key with the number QEMU's VNC server would give it now (so
    /// both lanes give the guest the same key); a key it would give the guest nothing for is
    /// dropped here, counted in [`LinkStats::unmapped_keys`] and never delivered.
    fn journal_push(
        &mut self,
        viewer: ViewerId,
        event: InputEvent,
        now: Instant,
    ) -> Result<Option<Seq>, JournalFull> {
        let InputEvent::Key {
            down,
            keysym,
            scancode,
        } = event
        else {
            return self.journal.push(viewer, event, now);
        };
        let Some(number) = self.keyboard.translate(down, keysym, scancode) else {
            tracing::debug!(keysym, ?scancode, down, "no key on QEMU's layout: dropped");
            self.stats.unmapped_keys += 1;
            return Ok(None);
        };
        let event = InputEvent::Key {
            down,
            keysym,
            scancode: Some(number),
        };
        let seq = self.journal.push(viewer, event, now)?;
        self.keyboard.apply(number, down);
        Ok(seq)
    }

    fn emit(&mut self, event: LinkEvent) {
        if !self.events_gone {
            self.outbox.push_back(event);
        }
    }

    fn flush_outbox(&mut self, events: &mpsc::Sender<LinkEvent>) {
        while let Some(event) = self.outbox.pop_front() {
            match events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.console_gone();
                    break;
                }
            }
        }
    }

    /// Nobody reads the events any more: stop queueing them (the screen keeps updating).
    fn console_gone(&mut self) {
        if !self.events_gone {
            tracing::debug!("link events receiver dropped");
        }
        self.events_gone = true;
        self.outbox.clear();
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            journal: self.journal.stats(),
            vm_running: self.vm.running(),
            frozen: !matches!(self.freeze, Freeze::Running),
            ..self.stats
        }
    }
}

/// The `query-status` reply's run state; `Ok(None)` when QEMU answered an error or an
/// unexpected shape (treated as not running: safe, events become uncertain, never re-sent
/// twice). A broken connection is the link's end.
fn status(result: Result<qmp::Reply, qmp::Error>) -> Result<Option<qmp::StatusInfo>, LinkError> {
    match result {
        Ok(reply) => Ok(serde_json::from_value(reply.value)
            .inspect_err(|e| tracing::warn!(error = %e, "unexpected query-status reply"))
            .ok()),
        Err(qmp::Error::Qmp { source, .. }) => {
            tracing::warn!(error = %source, "query-status failed");
            Ok(None)
        }
        Err(e) => Err(LinkError::Qmp(e)),
    }
}
