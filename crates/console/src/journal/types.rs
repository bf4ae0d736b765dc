//! The journal's vocabulary: identifiers, input events, actions for the shell, configuration,
//! counters and errors.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A viewer connection as numbered by the console; recorded per event for tracing only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ViewerId(pub u32);

/// Sequence number of a key or button event: these are delivered exactly once, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seq(pub u64);

/// Names one `input-send-event` command in flight on the QMP lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(pub u64);

/// Names one fence message written to QEMU's VNC socket after fast-lane events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FenceId(pub u64);

/// Names one `query-status` round trip that follows an answered fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeId(pub u64);

/// A pointer button. Each has a bit in the RFB PointerEvent button mask (RFC 6143 §7.5.5 and
/// QEMU's horizontal-wheel bits), so every button can travel on either lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Button {
    /// Button 1.
    Left,
    /// Button 2.
    Middle,
    /// Button 3.
    Right,
    /// Wheel up (button 4).
    WheelUp,
    /// Wheel down (button 5).
    WheelDown,
    /// Wheel left (button 6).
    WheelLeft,
    /// Wheel right (button 7).
    WheelRight,
}

impl Button {
    /// This button's bit in an RFB PointerEvent button mask.
    pub fn rfb_mask(self) -> u8 {
        match self {
            Button::Left => 0x01,
            Button::Middle => 0x02,
            Button::Right => 0x04,
            Button::WheelUp => 0x08,
            Button::WheelDown => 0x10,
            Button::WheelLeft => 0x20,
            Button::WheelRight => 0x40,
        }
    }

    /// Whether the guest's mouse keeps this button as state (left, middle, right), so that a
    /// press undone before QEMU reports it is lost (see [`Config::button_settle`]). A wheel
    /// "button" is a step of motion in QEMU's mice (`dz`), summed until reported: never lost.
    pub fn holds_state(self) -> bool {
        matches!(self, Button::Left | Button::Middle | Button::Right)
    }
}

/// One viewer input event, as the console's front decoded it — or a re-sync the journal makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputEvent {
    /// A key press or release. `scancode` is QEMU's XT "qnum" from the QEMU extended key
    /// event (0x1e = a; an 0xe0 prefix becomes the 0x80 bit, so 0x9c = keypad enter); viewers
    /// that send plain KeyEvents give only the keysym.
    Key {
        /// Press (true) or release.
        down: bool,
        /// X11 keysym.
        keysym: u32,
        /// QEMU key number, when the viewer sent one.
        scancode: Option<u16>,
    },
    /// A button press or release, at the latest pointer position.
    Button {
        /// Press (true) or release.
        down: bool,
        /// Which button.
        button: Button,
    },
    /// Pointer motion to an absolute framebuffer position: latest position wins.
    Motion {
        /// Column.
        x: u16,
        /// Row.
        y: u16,
    },
    /// Made by the journal only, never by a viewer ([`Journal::push`](super::Journal::push)
    /// ignores it): have QEMU report the pointer device's current state again — a motion of
    /// zero (`rel` 0 for a relative mouse, `abs` at the current position for an absolute one,
    /// nothing without a mouse), which ends in an input sync, with buttons as they are. It
    /// moves nothing and carries no [`Seq`]; see [`Config::button_settle`].
    Resync,
}

/// An event in the journal: keys and buttons carry a [`Seq`], motion does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number (`None` for motion).
    pub seq: Option<Seq>,
    /// The viewer that sent it (for tracing).
    pub viewer: ViewerId,
    /// The event itself.
    pub event: InputEvent,
}

/// One RFB message for QEMU's VNC socket (fast lane), ready to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncEvent {
    /// A KeyEvent, or a QEMU extended key event when `scancode` is known.
    Key {
        /// The journal's sequence number.
        seq: Seq,
        /// Press (true) or release.
        down: bool,
        /// X11 keysym.
        keysym: u32,
        /// QEMU key number.
        scancode: Option<u16>,
    },
    /// A PointerEvent. `mask` is the full button mask QEMU's VNC server must see (it diffs it
    /// against the previous one); `seq` names the button event this message carries, if any.
    Pointer {
        /// The button event carried, `None` for motion or a mask correction.
        seq: Option<Seq>,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
        /// RFB button mask.
        mask: u8,
    },
}

/// What the shell must do next, returned by [`Journal::poll_action`](super::Journal::poll_action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these messages to QEMU's VNC socket (fast lane).
    Vnc {
        /// The messages, in order.
        events: Vec<VncEvent>,
    },
    /// Write a fence to QEMU's VNC socket (a SetEncodings that QEMU answers at once) and call
    /// `handle_fence_answered(fence)` when its answer arrives.
    Fence {
        /// Names the fence.
        fence: FenceId,
    },
    /// Send `query-status` on QMP; call `handle_status(probe, ..)` with its reply.
    Status {
        /// Names the probe.
        probe: ProbeId,
    },
    /// Send one `input-send-event` with these events; call `handle_qmp_reply(batch, ..)`.
    Qmp {
        /// Names the batch.
        batch: BatchId,
        /// The events, in order.
        events: Vec<Entry>,
    },
}

/// The answer to a QMP batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `{"return":{}}`: the events reached QEMU's input layer.
    Delivered,
    /// The error `VM not running`: nothing was delivered.
    VmNotRunning,
    /// Any other error reply: nothing was delivered. Motion is dropped, keys and buttons are
    /// re-sent once (see `Journal::handle_qmp_reply`).
    Failed(String),
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// First in the range.
    pub first: Seq,
    /// Last in the range (inclusive).
    pub last: Seq,
}

impl SeqRange {
    /// How many sequence numbers the range holds.
    pub fn len(&self) -> u64 {
        self.last.0.saturating_sub(self.first.0).saturating_add(1)
    }

    /// Never true (a range holds at least `first`); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Whether `seq` lies in the range.
    pub fn contains(&self, seq: Seq) -> bool {
        self.first <= seq && seq <= self.last
    }

    /// Grows `range` (or starts it) to end at `seq`; callers add seqs in increasing order.
    pub(crate) fn extend(range: &mut Option<SeqRange>, seq: Seq) {
        match range {
            Some(r) => r.last = seq,
            None => {
                *range = Some(SeqRange {
                    first: seq,
                    last: seq,
                })
            }
        }
    }
}

/// Tunables of the journal.
///
/// # Pacing
/// Live input goes to QEMU as it comes, at the viewer's own pace, as QEMU's own VNC server
/// (`key-delay-ms=0`) takes it. Two hazards of QEMU's PS/2 devices (`hw/input/ps2.c`) bound
/// that, and a third rule makes held input catch up:
/// - **The keyboard queue holds 16 bytes; bytes that do not fit are dropped** (and QEMU has
///   already answered success). A key event is at most 4 bytes (scancode set 2, an extended
///   key's release `e0 f0 xx`; 1–2 with the i8042's translation, as guests run it). What
///   overruns it is a *burst*: events that reach QEMU together, with no time for the guest
///   to read the queue between them — several events in one TCP read from the viewer, a
///   backlog replayed, a QMP batch. The journal models the queue as a bucket: at most
///   `max_paced_per_batch` keys back to back, then one more per `key_drain`. A live key that
///   keeps the viewer's pace (`live_interval`, `live_burst`), with nothing waiting ahead,
///   goes as it comes and does not wait for the bucket (QEMU's own VNC server hands it over
///   the same way), even if the key before it went late; it still counts in it.
/// - **A mouse button pressed and released before QEMU reports it is lost** when QEMU's
///   mouse queue was full at the press: the journal models that queue and, only then, makes
///   the button's next event wait for a re-sync (`button_settle`, below).
/// - **A replay catches up.** Held events (input that came while the VM was stopped or
///   delivery frozen, or restored from a snapshot) go out with *half* the viewer's gaps
///   (capped at `max_gap`), so the backlog drains at twice the pace it was typed at; live
///   input that arrives behind them (or behind a click waiting for its settle) follows as
///   soon as the PS/2 bucket allows, so the lag a click or a stop causes shrinks at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Time between a pointer re-sync ([`InputEvent::Resync`]) and the button event it
    /// precedes, so the guest reads the re-sync's packet first (see `button_settle`).
    pub min_interval: Duration,
    /// Longest viewer gap kept when replaying held events (then halved); longer idle gaps
    /// shrink to this so the lag a pause causes drains away instead of persisting.
    pub max_gap: Duration,
    /// Most key events written back to back: the capacity of the pacing bucket (see
    /// [`Config`]'s "Pacing"); also the most key/button events in one lane write. QEMU's
    /// 16-byte queue would take 4 (at most 4 bytes each), but with 2 the Linux guest under
    /// TCG with a framebuffer console (OVMF, bochs) lost 11 and 16 keys of ~600 through 3
    /// co-migrations on this loaded machine (load ~6; `cargo test -p dmore --test
    /// linux_comigration graphics`); with 1 (and a 3 ms drain) it lost 2 in one run, with 1
    /// and the 1 ms drain none in two (one ended with the guest 83 keys behind at the count,
    /// its slowness). The default is 1.
    pub max_paced_per_batch: usize,
    /// Most events per lane write (bounds the size of one `input-send-event`).
    pub max_batch: usize,
    /// Most key/button events held (queued or in flight on QMP); `push` refuses beyond it.
    pub max_held: usize,
    /// How long the guest is taken to need to read QEMU's full PS/2 mouse queue. When a
    /// pointer button's press (or release) went while the journal's model of that queue says
    /// it may have been full, the journal waits this long before the next event of the same
    /// button, to send an [`InputEvent::Resync`] first (and that event at least
    /// `min_interval` after it). Left, middle and right only ([`Button::holds_state`]).
    ///
    /// Why: QEMU's PS/2 mouse (`hw/input/ps2.c`) keeps only the current button state and
    /// reports it in packets (3 bytes here) at each input sync, while its 16-byte queue has
    /// room; a large motion is cut into packets of at most ±127, so a move of ~600 px fills
    /// the queue with 5 packets. A press that comes then changes the state but sends no
    /// packet, and QEMU does not report again when room frees up: only at the next sync. If
    /// that is the release, the guest never sees the press. Traced (QEMU 7.2, s): .7858 five
    /// motion packets fill the queue; .7909 left down, no packet; the guest reads the queue
    /// .7911–.7936; .7959 left up, packet "released": a click lost, about once in 400–1300
    /// clicks that follow a far move. The journal counts the packets each sync it causes
    /// queues (a motion's per 127 px, owed to the next sync when there is no room, as QEMU
    /// does), read at 4 per `button_settle`; a click with room goes at the viewer's pace
    /// instead of waiting `button_settle` after every press. The re-sync after the settle
    /// time lets QEMU report the
    /// press once the guest has read the queue; if the press was reported already, the guest
    /// gets the same state again (packets carry state, not edges): no extra click. The same
    /// holds for a release undone by the next press. QMP `input-send-event` and QEMU's VNC
    /// PointerEvent both end in one sync, so both lanes need it.
    ///
    /// Not carried in a [`JournalState`](super::JournalState) (its layout stays that of
    /// version 1): a restored journal uses the default.
    #[serde(skip, default = "default_button_settle")]
    pub button_settle: Duration,
    /// How long a guest is taken to need to read one key event (at most 4 bytes) out of the
    /// PS/2 queue: the pacing bucket lets one more key through per `key_drain` once
    /// `max_paced_per_batch` went back to back. It bounds how fast a burst or a backlog goes
    /// (one key per `key_drain`, 500 keys/s at the default: a replay catches up at twice the
    /// pace of a viewer typing up to 250 events/s, and still catches up above), never the
    /// pace of live input the viewer spaced itself.
    ///
    /// Not carried in a [`JournalState`](super::JournalState) (its layout stays that of
    /// version 1): a restored journal uses the default.
    #[serde(skip, default = "default_key_drain")]
    pub key_drain: Duration,
    /// The viewer's pace, as the journal keeps it: live key/button events arriving at no more
    /// than one per `live_interval` on average, with up to `live_burst` at once, go as they
    /// come (see "Pacing" above); faster input (a paste, a test pushing in a loop, events that
    /// waited in the viewer's socket) waits for the PS/2 bucket. A generic cell rate
    /// algorithm on arrival times: jitter and events read together in one TCP read pass,
    /// a sustained rate above `1 / live_interval` does not.
    ///
    /// Not carried in a [`JournalState`](super::JournalState) (its layout stays that of
    /// version 1): a restored journal uses the default.
    #[serde(skip, default = "default_live_interval")]
    pub live_interval: Duration,
    /// How many events may arrive together and still keep the viewer's pace (see
    /// `live_interval`).
    #[serde(skip, default = "default_live_burst")]
    pub live_burst: u32,
}

/// [`Config::live_interval`]'s default: 0.8 ms, so a viewer's own pace up to 1250 events/s
/// goes as QEMU's own VNC server takes it. Before, a live key counted as the viewer's pace
/// only if it came 1 ms or more after the previous one: at 1000 events/s half the gaps are a
/// little under that, those keys waited for the 2 ms bucket and dmore fell ~6 s behind in
/// 10 s on both guests where QEMU kept up (`dmore bench input`). A loop pushing keys 300 µs
/// apart overran the tiny guest's PS/2 queue when such keys went unpaced (`cargo test -p
/// console --test back_keys`, loaded machine): the rate bound keeps that out.
fn default_live_interval() -> Duration {
    Duration::from_micros(800)
}

/// [`Config::live_burst`]'s default: 2 events, so a fast viewer's events read two at a time
/// keep its pace, while what piles up in the console's socket when the console (or the
/// machine) stalls does not: it goes at the PS/2 bucket's pace, as before.
fn default_live_burst() -> u32 {
    2
}

/// [`Config::key_drain`]'s default: 2 ms per key event. At 3 ms (the old default) a viewer
/// typing 445 events/s fell 8.8 s behind in 10 s (`dmore bench input`), though most of that
/// was every late key making the next one wait, now gone ([`Config`]'s "Pacing"). At 1 ms,
/// which would drain a backlog at twice the pace of a fast typist (445 events/s), a replay
/// of 4,200 held keys overran the tiny guest's PS/2 queue on this loaded machine (load ~3–6,
/// nested KVM: 23 keys QMP delivered never reached it; `cargo test -p console --test
/// console_backpressure`, 4 of 6 runs); at 2 ms it passed 4 of 4. A guest that stalls longer
/// than the queue lasts loses keys at any pace; a slower drain makes that rarer.
fn default_key_drain() -> Duration {
    Duration::from_millis(2)
}

/// [`Config::button_settle`]'s default: in the trace the guest had read the full queue
/// 5–8 ms after the motion that filled it; twice that. (10 ms still lost a click in one run of
/// 50 co-migrations: 433 of 434.)
fn default_button_settle() -> Duration {
    Duration::from_millis(15)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_interval: Duration::from_millis(3),
            max_gap: Duration::from_millis(500),
            max_paced_per_batch: 1,
            max_batch: 32,
            max_held: 4096,
            button_settle: default_button_settle(),
            key_drain: default_key_drain(),
            live_interval: default_live_interval(),
            live_burst: default_live_burst(),
        }
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Key and button events accepted by `push`.
    pub pushed: u64,
    /// `push` calls refused because the backlog was full.
    pub refused: u64,
    /// Key and button events known delivered (QMP success, or fast lane fenced clean).
    pub delivered: u64,
    /// Key and button events that may or may not have reached the guest (never re-sent).
    pub uncertain: u64,
    /// Key and button events written to the fast lane.
    pub fast_sent: u64,
    /// QMP batches sent.
    pub qmp_batches: u64,
    /// QMP batches answered `VM not running`.
    pub qmp_not_running: u64,
    /// QMP batches that failed otherwise.
    pub qmp_failed: u64,
    /// Key and button events QEMU refused twice (never delivered; dropped, logged).
    #[serde(default)]
    pub dropped: u64,
    /// Fences written.
    pub fences: u64,
    /// Key and button events held right now (queued or in flight on QMP).
    pub held: usize,
}

/// `push` refused: the held backlog is at its bound. Stop reading from that viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("input journal full: {held} events held (bound {max})")]
pub struct JournalFull {
    /// Events held.
    pub held: usize,
    /// The bound.
    pub max: usize,
}

/// A reply named something the journal is not waiting for: a bug in the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// No such QMP batch in flight.
    #[error("no QMP batch {0:?} in flight")]
    UnknownBatch(BatchId),
    /// No such fence outstanding.
    #[error("no fence {0:?} outstanding")]
    UnknownFence(FenceId),
    /// No such status probe outstanding.
    #[error("no status probe {0:?} outstanding")]
    UnknownProbe(ProbeId),
}
