//! The console's back end: its link to one QEMU, through QEMU's own VNC server (the screen,
//! and the fast input lane) and a QMP monitor of its own (the exactly-once input lane and the
//! VM's run state).
//!
//! ```text
//!   console                         link task (one per QEMU)                        QEMU
//!  QemuLink::push ──mpsc──▶  select!{ shutdown, QMP (events+replies in order), ◀─▶ -vnc unix:V,key-delay-ms=0
//!  LinkEvents::recv ◀─mpsc─  VNC inbound, requests, journal timer, outbox }    ◀─▶ -qmp unix:Q,server=on,wait=off
//!                                  │
//!                                  └─ Journal (sans-I/O): poll_action → Vnc | Fence | Status | Qmp
//! ```
//!
//! QEMU options: `-vnc unix:PATH,key-delay-ms=0` (the journal paces keys itself, and QEMU's
//! per-key delay would let a fence overtake keys; DESIGN.md) and a second
//! `-qmp unix:PATH,server=on,wait=off` for the console alone. `lock-key-sync=off` is advised:
//! with it on, QEMU's VNC server injects Caps Lock presses to match a keysym's case, which the
//! QMP lane never does, so the lanes would differ.
//!
//! # Screen
//! The link owns the framebuffer (the RFB client's, in [`rfb::PixelFormat::RGBX32_LE`]). It
//! keeps exactly one incremental FramebufferUpdateRequest outstanding: after each update it
//! asks again, unless the previous [`LinkEvent::ScreenChanged`] still waits in the event
//! queue — then QEMU coalesces the damage until the console catches up (bounded memory). Each
//! update is handed over decoded: every changed area as a **Raw** rectangle in RGBX32_LE, read
//! from the link's framebuffer after the whole update was applied (so ZRLE's stream stays in
//! the link and CopyRect order cannot matter); apply them in order with a fresh
//! `rfb::framebuffer::UpdateDecoder::new(RGBX32_LE)`, e.g. through `console::screen::Screen`.
//! A size change is [`LinkEvent::Resized`] (followed by a full update), the cursor
//! [`LinkEvent::Cursor`], keyboard LEDs [`LinkEvent::Leds`] (QEMU's LED pseudo-encoding -261).
//!
//! # Input
//! [`QemuLink::push`] hands an event to the journal (see [`crate::journal`] for the lanes and
//! the fence). The link executes its actions: fast-lane events as RFB KeyEvent, QEMU extended
//! key event (when the viewer gave a scancode and QEMU acknowledged -258) or PointerEvent; a
//! fence as a SetEncodings repeating the link's whole encoding list, written 1 ms after the
//! journal asks for it so it does not compete with the guest taking the key (QEMU answers
//! each with a QEMU-extended-key-event pseudo-rectangle; answers match fences in order, the
//! first one answering the link's own SetEncodings at connect); a status probe as `query-status`; a QMP
//! batch as one compact `input-send-event` (keys as QEMU key numbers: the viewer's scancode,
//! else the keysym's key on a US layout). QMP events reach the journal in QEMU's order relative
//! to the replies, through a pure step (`vm_watch`, its own state diagram and tests) that infers
//! the run state and the migration phase: `STOP` → `handle_vm_stopped`, `RESUME` →
//! `handle_vm_resumed`, `MIGRATION` `setup`/`active`/... → `handle_migration_started`,
//! `failed`/`cancelled` → `handle_migration_ended`. The link turns the `events` capability on
//! itself whenever no migration runs (at attach, when a migration ended, when the VM resumes;
//! why this one capability is safe to set under a manager: `vm_watch::Decision::EventsOn`).
//! When a manager turned it off anyway, a `STOP` is classified by `query-status`:
//! `finish-migrate`/`postmigrate` mean a migration's switchover, and the next `RESUME` ends
//! that migration here.
//!
//! # Freeze, thaw, restore
//! [`QemuLink::freeze`] stops delivery (the journal's `freeze_delivery`: no new input reaches
//! QEMU), lets the QMP batch and the fence or status probe in flight resolve — for at most
//! [`LinkConfig::freeze_timeout`]; what is still unresolved then is recorded as uncertain by
//! [`Journal::freeze`](crate::journal::Journal::freeze) — and returns the journal's state. The
//! link stays frozen, taking no input, until [`QemuLink::thaw`] (an aborted migration: the
//! same journal carries on) or shutdown. A link started with [`LinkConfig::restore`] begins
//! from such a state: it holds its input until the VM runs, and releases keys that were down
//! through QMP (the journal's restore rules).
//!
//! ```text
//!   running ──freeze──▶ settling ──(settled | freeze_timeout)──▶ frozen ──thaw──▶ running
//!                       (no delivery; replies, fences, probes still handled)
//! ```
//!
//! # Room and run state
//! When [`QemuLink::try_push`] was refused (journal full, or frozen), [`LinkInput::room`]
//! completes once the journal takes input again, so a caller never polls. The VM's run state
//! is asked (`query-status`) at connect and followed through `STOP`/`RESUME`: a link attached
//! to a paused VM holds input from the first event and never uses the fast lane;
//! [`LinkStats::vm_running`] says what the link believes.
//!
//! # Faults
//! QEMU's VNC or QMP socket closing ends the task with a [`LinkError`] naming the cause;
//! [`LinkEvents::recv`] then returns `None` and [`QemuLink::shutdown`] returns the error.

mod convert;
mod guest_clock;
mod qmp_port;
mod run;
mod vm_watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rfb::encoding::cursor::Cursor;
use rfb::framebuffer::Framebuffer;
use rfb::Rectangle;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::journal::{self, InputEvent, JournalFull, JournalState, Seq, SeqRange, ViewerId};
use crate::keymap::{Layout, LoadError};

/// How to reach one QEMU.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// QEMU's VNC server socket (`-vnc unix:PATH,key-delay-ms=0`).
    pub vnc_socket: PathBuf,
    /// The console's own QMP monitor socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp_socket: PathBuf,
    /// VNC password, when QEMU's VNC server asks for VNC Authentication.
    pub vnc_password: Option<rfb::Password>,
    /// The input journal's tunables.
    pub journal: journal::Config,
    /// Events queued for the console before the link holds back (screen updates wait).
    pub event_queue: usize,
    /// Longest wait for each socket to connect and finish its handshake.
    pub connect_timeout: Duration,
    /// Longest a freeze waits for the QMP batch, fence and probe in flight to resolve; what
    /// has not resolved by then is recorded as uncertain in the frozen state.
    pub freeze_timeout: Duration,
    /// Begin from this frozen journal (a console taking over) instead of a fresh one; its
    /// own tunables replace `journal`.
    pub restore: Option<JournalState>,
    /// QEMU's keyboard layout (its `-k`); `None`: QEMU's default (no `-k`), loaded when the
    /// link starts.
    pub layout: Option<Layout>,
}

impl LinkConfig {
    /// Defaults for these two sockets: no password, the journal's defaults.
    pub fn new(vnc_socket: impl Into<PathBuf>, qmp_socket: impl Into<PathBuf>) -> Self {
        LinkConfig {
            vnc_socket: vnc_socket.into(),
            qmp_socket: qmp_socket.into(),
            vnc_password: None,
            journal: journal::Config::default(),
            event_queue: 64,
            connect_timeout: Duration::from_secs(10),
            freeze_timeout: Duration::from_secs(2),
            restore: None,
            layout: None,
        }
    }
}

/// What the link tells the console, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// Pixels changed: Raw rectangles in RGBX32_LE, to apply in order (module docs).
    ScreenChanged {
        /// The changed areas with their pixels.
        rects: Vec<Rectangle>,
    },
    /// The screen has a new size; it is black until the following full update.
    Resized {
        /// New width.
        width: u16,
        /// New height.
        height: u16,
    },
    /// The cursor shape changed.
    Cursor {
        /// Hotspot column.
        hotspot_x: u16,
        /// Hotspot row.
        hotspot_y: u16,
        /// Image and mask.
        cursor: Cursor,
    },
    /// Keyboard LEDs changed: bit 0 scroll lock, 1 num lock, 2 caps lock.
    Leds(u8),
    /// The guest rang the bell.
    Bell,
    /// The VM's run state or a migration moved.
    Vm(VmEvent),
    /// Fast-lane input that may or may not have reached the guest (a pause nobody announced
    /// caught it in flight); never re-sent.
    Uncertain(SeqRange),
}

/// Run-state changes, as the console must act on them (freeze, thaw, hand over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// `STOP`: the VM paused (any reason). Input is held from here on.
    Stopped,
    /// The pause is a migration's switchover (`query-status`: `finish-migrate`/`postmigrate`).
    StoppedForMigration,
    /// `RESUME`: the VM runs again here.
    Resumed,
    /// A migration started (`MIGRATION` `setup` or later).
    MigrationStarted,
    /// The migration completed: the VM now runs elsewhere.
    MigrationCompleted,
    /// The migration failed or was cancelled: the VM stays here.
    MigrationEnded,
}

/// Counters of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// The journal's counters (pushed, delivered, uncertain, fast_sent, QMP batches, ...).
    pub journal: journal::Stats,
    /// Key and button events QEMU acknowledged through QMP (`{"return":{}}`).
    pub qmp_delivered: u64,
    /// Fence answers received (the connect-time acknowledgement not counted).
    pub fences_answered: u64,
    /// Keys dropped before the journal because QEMU's VNC server would give the guest nothing
    /// for them (a keysym with no key on QEMU's layout; see [`crate::keymap`]): neither lane
    /// delivers them, and the journal never counts them. Also keys a restored journal holds
    /// without a number (sent by neither lane).
    pub unmapped_keys: u64,
    /// FramebufferUpdates received from QEMU.
    pub updates: u64,
    /// The VM runs, as the link knows it (`query-status` at connect, then `STOP`/`RESUME`).
    pub vm_running: bool,
    /// The link is frozen or freezing: it delivers no input.
    pub frozen: bool,
}

/// Why the link failed. QEMU going away is one of the socket variants; the console then
/// keeps its viewers and waits for QEMU (`ConsoleConfig::qemu_wait`), and exits non-zero with
/// this as the cause if it does not come back.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// QEMU's default keymap (for a console started without a layout) could not be loaded.
    #[error(transparent)]
    Keymap(#[from] LoadError),
    /// The VNC socket could not be connected.
    #[error("cannot connect to QEMU's VNC socket {path}")]
    VncConnect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The RFB handshake with QEMU's VNC server failed.
    #[error("RFB handshake with QEMU's VNC server failed")]
    VncHandshake(#[source] vnc::Error),
    /// The VNC connection failed or QEMU closed it.
    #[error("QEMU's VNC connection failed")]
    Vnc(#[source] vnc::Error),
    /// Attaching to the QMP monitor failed.
    #[error("cannot attach to QEMU's QMP monitor")]
    QmpConnect(#[source] qmp::Error),
    /// A QMP command failed for want of a connection (QEMU closed it or it broke).
    #[error("QEMU's QMP connection failed")]
    Qmp(#[source] qmp::Error),
    /// QEMU closed the QMP connection (its event stream ended).
    #[error("QEMU closed the QMP connection")]
    QmpClosed,
    /// A socket did not connect or finish its handshake in time.
    #[error("timed out attaching to QEMU's {what}")]
    Timeout {
        /// Which socket.
        what: &'static str,
    },
    /// The journal refused a reply: a bug in the link.
    #[error("the input journal refused a reply")]
    Journal(#[from] journal::JournalError),
    /// [`LinkConfig::restore`] holds a state this link cannot take over.
    #[error("cannot restore the input journal")]
    Restore(#[from] journal::RestoreError),
    /// The link had already ended when asked to freeze ([`QemuLink::shutdown`] says why).
    #[error("the QEMU link has ended")]
    Ended,
    /// The link task panicked or was cancelled.
    #[error("the link task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// Why an input event was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The journal holds its maximum: stop reading this viewer and try again later
    /// ([`QemuLink::try_push`] only; [`QemuLink::push`] waits for room instead).
    #[error(transparent)]
    Full(#[from] JournalFull),
    /// The link has ended.
    #[error("the QEMU link has ended")]
    Closed,
}

/// Requests from handles to the link task.
enum Request {
    Push {
        viewer: ViewerId,
        event: InputEvent,
        wait: bool,
        reply: oneshot::Sender<Result<Option<Seq>, PushError>>,
    },
    Framebuffer(oneshot::Sender<Framebuffer>),
    Stats(oneshot::Sender<LinkStats>),
    /// The console itself started (true) or ended (false) a migration.
    Migration(bool),
    /// A migration is being prepared (its destination host announced it): as
    /// `Migration(true)`, answered once nothing sent on the fast lane awaits confirmation.
    MigrationFenced(oneshot::Sender<()>),
    /// The announced migration did not start in time: it ends unless QEMU started it.
    AnnouncementExpired,
    /// Freeze, journaling these events first (beyond the usual bound), and answer the state.
    Freeze {
        extra: Vec<(ViewerId, InputEvent)>,
        reply: oneshot::Sender<JournalState>,
    },
    /// Carry on after a freeze.
    Thaw,
}

/// A cloneable handle for pushing input (one per viewer task, say).
#[derive(Debug, Clone)]
pub struct LinkInput {
    requests: mpsc::Sender<Request>,
    room: Arc<Notify>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Input is not logged above trace (STYLE.md): no keysyms here.
        f.write_str(match self {
            Request::Push { .. } => "Push",
            Request::Framebuffer(_) => "Framebuffer",
            Request::Stats(_) => "Stats",
            Request::Migration(_) => "Migration",
            Request::MigrationFenced(_) => "MigrationFenced",
            Request::AnnouncementExpired => "AnnouncementExpired",
            Request::Freeze { .. } => "Freeze",
            Request::Thaw => "Thaw",
        })
    }
}

impl LinkInput {
    /// Journals one viewer event; waits while the journal is full (the caller, not reading
    /// its viewer meanwhile, gives TCP backpressure). Keys and buttons get their [`Seq`].
    pub async fn push(
        &self,
        viewer: ViewerId,
        event: InputEvent,
    ) -> Result<Option<Seq>, PushError> {
        self.request(viewer, event, true).await
    }

    /// Journals one viewer event, or refuses at once with [`PushError::Full`].
    pub async fn try_push(
        &self,
        viewer: ViewerId,
        event: InputEvent,
    ) -> Result<Option<Seq>, PushError> {
        self.request(viewer, event, false).await
    }

    /// Completes once the journal takes input again after a [`try_push`](Self::try_push) was
    /// refused (full, or the link frozen). One wake-up is kept if nobody waits yet, so
    /// refuse-then-wait never misses it; a wake-up may be spurious (try again, wait again).
    /// Cancel-safe.
    pub async fn room(&self) {
        self.room.notified().await;
    }

    async fn request(
        &self,
        viewer: ViewerId,
        event: InputEvent,
        wait: bool,
    ) -> Result<Option<Seq>, PushError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Push {
                viewer,
                event,
                wait,
                reply,
            })
            .await
            .map_err(|_| PushError::Closed)?;
        rx.await.map_err(|_| PushError::Closed)?
    }
}

/// The console's events from the link. Ends (`None`) when the link task ends.
#[derive(Debug)]
pub struct LinkEvents {
    rx: mpsc::Receiver<LinkEvent>,
}

impl LinkEvents {
    /// The next event, or `None` once the link has ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<LinkEvent> {
        self.rx.try_recv().ok()
    }
}

/// The link to one QEMU: owns its task. Dropping it stops the task (its shutdown signal
/// goes with it).
#[derive(Debug)]
pub struct QemuLink {
    input: LinkInput,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<LinkStats, LinkError>>,
}

/// A connection to QEMU's VNC server, its RFB handshake done and nothing requested yet: QEMU
/// sends no pixels over it until a link started with it ([`QemuLink::connect_attached`]) asks.
/// A destination console attaches while its VM is still incoming, so that attaching is not
/// part of the takeover and QEMU's refresh timer is not reset by a new connection just then.
pub struct VncAttached {
    width: u16,
    height: u16,
    reader: vnc::client::ClientReader<tokio::net::UnixStream>,
    writer: vnc::client::ClientWriter<tokio::net::UnixStream>,
}

impl VncAttached {
    /// Resets QEMU's VNC refresh timer to its base interval (30 ms) without reaching the
    /// guest: any client message above type 3 resets it (`protocol_client_msg`), and this one
    /// is a KeyEvent releasing Shift_L, which nobody pressed on this display (no link has used
    /// it yet), so QEMU's per-display key state drops it (`ui/kbd-state.c` drops a key-up
    /// whose key-down it did not see); while the VM is incoming QEMU's input layer drops it
    /// anyway. An arriving console writes it every few tens of milliseconds while a migration
    /// comes, so the refresh is at its base when the VM runs here.
    pub async fn wake(&mut self) -> Result<(), LinkError> {
        const SHIFT_L: u32 = 0xffe1;
        self.writer
            .send(&rfb::ClientMessage::KeyEvent {
                down: false,
                keysym: SHIFT_L,
            })
            .await
            .map_err(LinkError::Vnc)
    }
}

impl std::fmt::Debug for VncAttached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VncAttached")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl QemuLink {
    /// Attaches to QEMU's QMP monitor and VNC server and starts the link task.
    pub async fn connect(config: LinkConfig) -> Result<(QemuLink, LinkEvents), LinkError> {
        run::start(config, None).await
    }

    /// Connects to QEMU's VNC server (`config.vnc_socket`) and finishes the handshake, for
    /// [`QemuLink::connect_attached`] later.
    pub async fn attach_vnc(config: &LinkConfig) -> Result<VncAttached, LinkError> {
        run::attach_vnc(config).await
    }

    /// [`QemuLink::connect`] over a VNC connection made earlier by [`QemuLink::attach_vnc`]
    /// with the same configuration.
    pub async fn connect_attached(
        config: LinkConfig,
        vnc: VncAttached,
    ) -> Result<(QemuLink, LinkEvents), LinkError> {
        run::start(config, Some(vnc)).await
    }

    /// A cloneable input handle.
    pub fn input(&self) -> LinkInput {
        self.input.clone()
    }

    /// [`LinkInput::push`]: journals an event, waiting while the journal is full.
    pub async fn push(
        &self,
        viewer: ViewerId,
        event: InputEvent,
    ) -> Result<Option<Seq>, PushError> {
        self.input.push(viewer, event).await
    }

    /// [`LinkInput::try_push`]: journals an event or reports the journal full.
    pub async fn try_push(
        &self,
        viewer: ViewerId,
        event: InputEvent,
    ) -> Result<Option<Seq>, PushError> {
        self.input.try_push(viewer, event).await
    }

    /// A copy of the link's framebuffer as of now (for a console's first fill, and tests).
    pub async fn framebuffer(&self) -> Result<Framebuffer, PushError> {
        let (tx, rx) = oneshot::channel();
        self.input
            .requests
            .send(Request::Framebuffer(tx))
            .await
            .map_err(|_| PushError::Closed)?;
        rx.await.map_err(|_| PushError::Closed)
    }

    /// The link's counters as of now.
    pub async fn stats(&self) -> Result<LinkStats, PushError> {
        let (tx, rx) = oneshot::channel();
        self.input
            .requests
            .send(Request::Stats(tx))
            .await
            .map_err(|_| PushError::Closed)?;
        rx.await.map_err(|_| PushError::Closed)
    }

    /// [`LinkInput::room`]: waits until a refused push could succeed.
    pub async fn room(&self) {
        self.input.room().await;
    }

    /// Freezes the link and returns its journal's state (module docs, "Freeze, thaw,
    /// restore"). The link delivers and takes no input until [`thaw`](Self::thaw).
    pub async fn freeze(&self) -> Result<JournalState, LinkError> {
        self.freeze_with(Vec::new()).await
    }

    /// [`freeze`](Self::freeze), journaling `extra` first: input the caller read from viewers
    /// but could not push (the journal was full). While frozen the journal accepts up to what
    /// a restore takes (twice its bound); anything beyond is logged as lost.
    pub async fn freeze_with(
        &self,
        extra: Vec<(ViewerId, InputEvent)>,
    ) -> Result<JournalState, LinkError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Freeze { extra, reply })
            .await
            .map_err(|_| LinkError::Ended)?;
        rx.await.map_err(|_| LinkError::Ended)
    }

    /// Ends a freeze: the journal delivers again (held input once the VM runs). A no-op when
    /// not frozen. A freeze still settling is called off: its caller gets [`LinkError::Ended`].
    pub async fn thaw(&self) -> Result<(), PushError> {
        self.send(Request::Thaw).await
    }

    /// dmore's own `migrate` is about to start: fence the fast lane and move input to QMP now,
    /// before QEMU's `MIGRATION` events (which need the `events` capability) could say so.
    pub async fn migration_started(&self) -> Result<(), PushError> {
        self.send(Request::Migration(true)).await
    }

    /// A migration of this VM is being prepared on another host, which announced it before
    /// QEMU migrates: as [`Self::migration_started`], and the answer comes once nothing the
    /// link sent on the fast lane awaits confirmation, so that the switchover's `STOP` leaves
    /// no input uncertain however soon it follows. Dropped unanswered if the link ends.
    pub async fn migration_fenced(&self) -> Result<oneshot::Receiver<()>, PushError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::MigrationFenced(reply)).await?;
        Ok(answer)
    }

    /// The migration announced by [`Self::migration_fenced`] has not started in time: it
    /// ends (the fast lane may reopen), unless QEMU's own events showed it under way.
    pub async fn announcement_expired(&self) -> Result<(), PushError> {
        self.send(Request::AnnouncementExpired).await
    }

    /// dmore's own migration ended without moving the VM (failed or cancelled).
    pub async fn migration_ended(&self) -> Result<(), PushError> {
        self.send(Request::Migration(false)).await
    }

    async fn send(&self, request: Request) -> Result<(), PushError> {
        self.input
            .requests
            .send(request)
            .await
            .map_err(|_| PushError::Closed)
    }

    /// Whether the task has ended (a fault, or shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the task and waits for it. Returns the final counters, or the fault that had
    /// already ended it.
    pub async fn shutdown(mut self) -> Result<LinkStats, LinkError> {
        if let Some(tx) = self.shutdown.take() {
            // The task may have ended already; its result says why.
            let _ = tx.send(());
        }
        (&mut self.task).await.map_err(LinkError::Task)?
    }
}
