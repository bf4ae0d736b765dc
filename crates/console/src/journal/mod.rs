//! The console's input journal: a pure (sans-I/O) core that decides which viewer input goes to
//! QEMU on which lane, and when, so that every key and button event reaches the guest exactly
//! once and in order.
//!
//! Two lanes lead into QEMU (DESIGN.md, "Input journal"):
//! - the **fast lane**, RFB messages written into QEMU's own VNC socket (~0.15–0.4 ms), which
//!   QEMU drops silently while the VM is paused and never acknowledges. Its events are confirmed
//!   after the fact: a *fence* (an RFB message QEMU answers at once, in order) proves they were
//!   handled, and a following QMP `query-status` proves the VM was running when they were —
//!   unless a `STOP` came first, in which case they are **uncertain**: reported, never re-sent.
//! - the **QMP lane**, `input-send-event`, slow (~1.2 ms) but answered: delivered, or `VM not
//!   running` and then held and re-sent after `RESUME`.
//!
//! ```text
//!  fast lane (new events go here only while OPEN)
//!
//!   +------+  migration started | STOP | a release whose press     +--------+
//!   | OPEN |  did not go on this fast lane (epoch += 1)             | CLOSED |  events go to
//!   |      | ------------------------------------------------->    |        |  the QMP lane,
//!   |      | <-------------------------------------------------    |        |  held while the
//!   +------+  VM running, no migration, no QMP batch in flight,    +--------+  VM is stopped
//!             every fast event confirmed, next event no release
//!             pressed on another lane, and nothing held or the VM
//!             has run REPLAY_SETTLE (held events follow, paced, at
//!             most FAST_UNANSWERED of them unanswered)
//!
//!  confirming fast-lane events (one fence at a time, also while OPEN):
//!
//!   sent --Fence--> fence answered --Status--> running, no STOP seen --> delivered
//!                                          \-> otherwise --------------> uncertain
//!
//!  QMP lane (one batch in flight; only once every fast event is confirmed, to keep order):
//!
//!   held --Qmp--> Delivered ---------------------------------------> done
//!                 VmNotRunning --> held again, at the front, until handle_vm_resumed
//!                 Failed --> motion dropped; keys/buttons re-sent once, then dropped
//! ```
//!
//! # Call order
//! The shell owns the sockets and the clock. After anything happens — a viewer event
//! ([`Journal::push`]), a QMP event (`handle_vm_*`, `handle_migration_*`), a reply
//! (`handle_qmp_reply`, `handle_fence_answered`, `handle_status`) — it calls
//! [`Journal::poll_action`] until it returns `None`, executes each [`Action`] in order, drains
//! [`Journal::poll_uncertain`] into its logs, and sleeps until [`Journal::poll_timeout`] (or
//! the next input). QMP events and replies must be handed over in the order the QMP connection
//! delivered them: that order is what tells "a `STOP` came before this reply".
//!
//! Time is passed in as `now: Instant`; the journal never reads a clock.
//!
//! # Pacing
//! QEMU runs with `key-delay-ms=0`, and the journal passes live input on as it comes, at the
//! viewer's own pace. It paces only what would reach QEMU as a burst, and what it replays:
//! at most [`Config::max_paced_per_batch`] keys back to back, then one per
//! [`Config::key_drain`] (QEMU's 16-byte PS/2 queue drops what does not fit); held events
//! (pushed or sent back while the VM could not take them, or restored from a snapshot)
//! replay at half the viewer's original gaps (capped at `max_gap`), so a backlog drains
//! twice as fast as it was typed; live input behind them (or behind a click's settle) follows
//! as soon as the PS/2 queue allows. See [`Config`]. On the fast lane such paced events are
//! also clocked by QEMU's answers: only a few may wait unanswered (their fence not answered),
//! since QEMU hands everything waiting in its VNC socket to the PS/2 queue at once after its
//! main loop stalled.
//!
//! All of that assumes a guest that reads. When the shell can see the guest's vCPU time
//! ([`Journal::observe_guest_runtime`]), every key event — live input too — also waits while
//! [`GUEST_UNREAD`] key and button events are unread: sent, or taken by QEMU with no vCPU
//! time since (a starved or throttled vCPU reads nothing, and QEMU drops what does not fit).
//! Buttons are left to the mouse queue's model below. See the `guest` module.
//!
//! # Freezing delivery
//! [`Journal::freeze_delivery`] stops delivery (a console about to snapshot itself): the fast
//! lane closes and no new `Vnc` or `Qmp` action comes, but fences and status probes still do,
//! so what is in flight can resolve before [`Journal::freeze`]. While frozen, `push` accepts up
//! to what [`Journal::restore`] takes (input a viewer had sent and the console already read
//! must travel in the snapshot). [`Journal::thaw_delivery`] carries on (an aborted migration).
//!
//! # Key releases
//! QEMU's VNC server drops a release whose press it did not see (`ui/kbd-state.c`), so a
//! release goes on the fast lane only if its press went on the fast lane during the same open
//! period (epoch); otherwise it goes through QMP, closing the fast lane first if need be.

//!
//! # Pointer buttons
//! QEMU's PS/2 mouse reports button *state* only at an input sync with room in its queue, so
//! a press undone (released) before such a sync never reaches the guest. The journal models
//! the queue (the packets of every sync it causes, read by the guest within
//! [`Config::button_settle`]); when a left, middle or right button's event went while the
//! queue may have been full, that button's next event waits `button_settle` after it and
//! follows a re-sync ([`InputEvent::Resync`], a zero motion on the lane that event takes; no
//! [`Seq`], neither delivered nor uncertain), itself `min_interval` ahead of it. A click with
//! room in the queue (no far motion just before) goes at the viewer's pace, except during a
//! migration, when every click waits so (the guest's pace of reading is not known then).

mod dispatch;
mod guest;
mod replies;
mod state;
#[cfg(test)]
mod tests;
mod types;

pub use guest::{VcpuTime, GUEST_RAN, GUEST_STALL, GUEST_UNREAD};
pub use state::{JournalState, RestoreError, STATE_VERSION};
pub use types::{
    Action, BatchId, Button, Config, Entry, FenceId, InputEvent, JournalError, JournalFull,
    Outcome, ProbeId, Seq, SeqRange, Stats, ViewerId, VncEvent,
};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// At most this many uncertain ranges wait for [`Journal::poll_uncertain`]; older ones are
/// dropped from the queue (they stay counted in [`Stats::uncertain`]).
const MAX_UNCERTAIN_REPORTS: usize = 256;
/// How long the VM must have run since its last `RESUME` before held input may replay on the
/// fast lane; until then it drains through QMP, one round trip each. A fast-lane event is
/// uncertain if an unannounced `STOP` follows it (QEMU drops it, and the console cannot tell),
/// and a manager's brief pauses come in bursts (`stop`/`cont` back to back: a snapshot, a
/// backup): held input replayed on the fast lane right after each `cont` was lost
/// (`console_freeze_carries_the_links_journal_with_refused_batches`). A VM that has run this
/// long is no likelier to stop than under live typing, which takes the fast lane anyway;
/// and the backlog a co-migration left drains at the PS/2 pace instead of QMP's (under load
/// the guest ended 11–16 s behind the viewer after 10 libvirt moves with QMP alone).
const REPLAY_SETTLE: Duration = Duration::from_millis(500);

/// A key or button, as tracked while it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Control {
    /// A key known by its QEMU key number.
    Code(u16),
    /// A key known only by its keysym.
    Sym(u32),
    /// A pointer button.
    Button(Button),
}

impl Control {
    /// The control an event presses or releases, with `down`; `None` for motion.
    fn of(event: &InputEvent) -> Option<(Control, bool)> {
        match *event {
            InputEvent::Key {
                down,
                keysym,
                scancode,
            } => Some((scancode.map_or(Control::Sym(keysym), Control::Code), down)),
            InputEvent::Button { down, button } => Some((Control::Button(button), down)),
            InputEvent::Motion { .. } | InputEvent::Resync => None,
        }
    }
}

/// The lane a control's latest press went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PressLane {
    /// The fast lane, during its open period number `epoch`.
    Fast { epoch: u64 },
    /// The QMP lane.
    Qmp,
}

/// An event not yet written to either lane.
#[derive(Debug, Clone, Copy)]
struct Pending {
    entry: Entry,
    /// Time since the previous key/button push (zero for motion).
    gap: Duration,
    /// Not to be sent before this (its push time, or the restore time).
    available: Instant,
    /// It is replayed: held (pushed or sent back while nothing could be delivered, or
    /// restored). It goes out at half its original gap after the previous one, so a backlog
    /// catches up at twice the viewer's pace. Live input goes out as it comes, or as soon as
    /// ordering and the PS/2 queue allow when it is behind others — keeping gaps there would
    /// turn one late send into a lag every later key inherits.
    replay: bool,
    /// QEMU refused it once already (see `Journal::handle_qmp_reply`); refused again, it is
    /// dropped.
    refused: bool,
    /// It arrived at the viewer's pace ([`Config::live_interval`], [`Config::live_burst`]),
    /// not in a burst faster than that nor after a refusal.
    paced: bool,
    /// Live, at the viewer's pace, with nothing waiting ahead: it goes as it comes (see
    /// `Journal::viewer_spaced`).
    spaced: bool,
}

/// Whether key/button events arrive at the viewer's pace: on average no more than one per
/// [`Config::live_interval`], up to [`Config::live_burst`] at once. A generic cell rate
/// algorithm on arrival times; only an event that keeps the pace moves its schedule on.
#[derive(Debug, Default, Clone, Copy)]
struct ViewerPace {
    /// When the next event would arrive on schedule (the theoretical arrival time).
    next_due: Option<Instant>,
}

impl ViewerPace {
    /// An event arriving at `now` keeps the pace (and counts in it).
    fn keeps(&mut self, now: Instant, config: &Config) -> bool {
        let tolerance = config
            .live_interval
            .saturating_mul(config.live_burst.saturating_sub(1));
        let due = self.next_due.map_or(now, |d| d.max(now));
        if due.saturating_duration_since(now) > tolerance {
            return false;
        }
        self.next_due = Some(due.checked_add(config.live_interval).unwrap_or(due));
        true
    }
}

/// Fast-lane events written since the last fence.
#[derive(Debug, Default)]
struct Unfenced {
    /// Their key/button sequence numbers.
    range: Option<SeqRange>,
    /// A STOP was seen after they were written.
    stop_seen: bool,
    /// Anything (motion included) was written since the last fence.
    dirty: bool,
}

/// The one outstanding confirmation of fast-lane events.
#[derive(Debug)]
struct Confirm {
    range: Option<SeqRange>,
    stop_seen: bool,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Fence(FenceId),
    NeedProbe,
    Probe(ProbeId),
}

/// The one QMP batch in flight.
#[derive(Debug)]
struct InFlight {
    batch: BatchId,
    pending: Vec<Pending>,
    /// A re-sync batch (its `pending` is empty).
    resync: bool,
    /// The button bookkeeping before this batch went: back to it if QEMU did not take the
    /// batch (nothing else goes out while it is in flight).
    buttons_before: ButtonSync,
    /// PS/2 mouse packets the batch's syncs queue (motion and button state).
    mouse_packets: u32,
}

/// Which buttons' latest events QEMU may not have reported yet, and since when.
#[derive(Debug, Clone, Copy, Default)]
struct ButtonSync {
    /// RFB mask bits of the state-holding buttons whose latest event went to a lane when
    /// QEMU's PS/2 mouse queue may have been full, and no re-sync since: the next event of
    /// such a button waits for a re-sync ([`Config::button_settle`]).
    unsynced: u8,
    /// Until when QEMU's PS/2 mouse queue is taken to hold packets: every input sync the
    /// journal causes queues packets, and the guest is taken to read the full queue within
    /// `button_settle` (see `Journal::note_mouse_sync`). `None`: empty.
    mouse_busy_until: Option<Instant>,
    /// Packets of motion QEMU could not queue at the latest sync (no room): it keeps the
    /// motion and queues them at the next sync.
    mouse_deferred: u32,
    /// When the latest event of a state-holding button went to a lane.
    last_button: Option<Instant>,
    /// When the latest re-sync went to a lane.
    last_resync: Option<Instant>,
    /// Mouse packets of a QMP batch QEMU has just answered, to count again from the next
    /// poll: the model counted them from the send, but QEMU may have run the batch only just
    /// before answering (7.5 ms later in a stalled pre-copy, where a click whose press came
    /// 0.4 ms after such a move was lost), so the queue may hold them until then.
    mouse_answered: u32,
}

/// The input journal. See the module docs for the state machine and the call order.
#[derive(Debug)]
pub struct Journal {
    config: Config,
    next_seq: u64,
    next_id: u64,
    vm_running: bool,
    /// When the journal first polled with the VM running since its last `RESUME` (or start).
    running_since: Option<Instant>,
    /// The VM has run [`REPLAY_SETTLE`] since: held input may take the fast lane.
    replay_settled: bool,
    migrating: bool,
    /// [`Journal::freeze_delivery`] was called and not yet thawed.
    delivery_frozen: bool,
    /// A migration ended: the run state is asked again before the fast lane reopens.
    recheck_run_state: bool,
    pending: VecDeque<Pending>,
    /// Key/button entries in `pending`.
    pending_seqd: usize,
    last_push: Option<Instant>,
    /// `push` refused something since the last accepted push.
    refused_since_push: bool,
    /// Whether live key/button events arrive at the viewer's pace.
    viewer_pace: ViewerPace,
    /// When the latest key/button event was due (not when it went: a late wake-up of the
    /// shell must not push a replay's whole schedule back).
    last_paced: Option<Instant>,
    /// When the PS/2 keyboard queue, as the pacing bucket models it, is empty again: every
    /// key written adds [`Config::key_drain`] (see [`Journal::keys_room_at`]).
    keys_busy_until: Option<Instant>,
    fast_open: bool,
    /// Counts the fast lane's open periods.
    epoch: u64,
    unfenced: Unfenced,
    confirm: Option<Confirm>,
    qmp: Option<InFlight>,
    down: BTreeMap<Control, PressLane>,
    /// The button mask QEMU's VNC server holds for our connection.
    vnc_mask: u8,
    /// The latest pointer position written to either lane.
    pointer: (u16, u16),
    buttons: ButtonSync,
    uncertain: VecDeque<SeqRange>,
    /// What QEMU took and the guest may not have read (the gate on its vCPU time).
    guest: guest::GuestReads,
    stats: Stats,
}

impl Journal {
    /// A fresh journal for a QEMU whose VM is (or is not) running right now.
    pub fn new(config: Config, vm_running: bool) -> Self {
        Journal {
            config,
            next_seq: 1,
            next_id: 1,
            vm_running,
            running_since: None,
            replay_settled: false,
            migrating: false,
            delivery_frozen: false,
            recheck_run_state: false,
            pending: VecDeque::new(),
            pending_seqd: 0,
            last_push: None,
            refused_since_push: false,
            viewer_pace: ViewerPace::default(),
            last_paced: None,
            keys_busy_until: None,
            fast_open: false,
            epoch: 0,
            unfenced: Unfenced::default(),
            confirm: None,
            qmp: None,
            down: BTreeMap::new(),
            vnc_mask: 0,
            pointer: (0, 0),
            buttons: ButtonSync::default(),
            uncertain: VecDeque::new(),
            guest: guest::GuestReads::default(),
            stats: Stats::default(),
        }
    }

    /// Takes one viewer event. Keys and buttons get a [`Seq`]; motion (`Ok(None)`) replaces a
    /// motion still waiting at the tail. [`InputEvent::Resync`] is the journal's own: ignored. Refuses key/button events while `max_held` are held:
    /// the shell then stops reading from that viewer (TCP backpressure) and retries later.
    /// While delivery is frozen the bound is what [`Journal::restore`] accepts instead:
    /// `2 * max_held + 1` events of any kind, queued or in flight.
    pub fn push(
        &mut self,
        viewer: ViewerId,
        event: InputEvent,
        now: Instant,
    ) -> Result<Option<Seq>, JournalFull> {
        if event == InputEvent::Resync {
            return Ok(None);
        }
        self.maybe_reopen();
        let entry = |seq| Entry { seq, viewer, event };
        if self.delivery_frozen && self.entries() >= self.restore_bound() {
            let coalesces = matches!(event, InputEvent::Motion { .. })
                && self.pending.back().is_some_and(|t| t.entry.seq.is_none());
            if !coalesces {
                self.stats.refused += 1;
                self.refused_since_push = true;
                return Err(JournalFull {
                    held: self.held(),
                    max: self.restore_bound(),
                });
            }
        }
        if let InputEvent::Motion { .. } = event {
            match self.pending.back_mut() {
                Some(tail) if tail.entry.seq.is_none() => tail.entry = entry(None),
                _ => self.pending.push_back(Pending {
                    entry: entry(None),
                    gap: Duration::ZERO,
                    available: now,
                    replay: false,
                    refused: false,
                    paced: false,
                    spaced: false,
                }),
            }
            return Ok(None);
        }
        let held = self.held();
        if held >= self.config.max_held && !self.delivery_frozen {
            self.stats.refused += 1;
            self.refused_since_push = true;
            return Err(JournalFull {
                held,
                max: self.config.max_held,
            });
        }
        let seq = Seq(self.next_seq);
        self.next_seq += 1;
        // After a refusal the viewer's events waited in its socket: their own gaps are lost,
        // and the time spent waiting for room is no gap to replay (that would feed back).
        let gap = match self.last_push {
            Some(t) if !self.refused_since_push => now.saturating_duration_since(t),
            _ => Duration::ZERO,
        };
        let paced = !self.refused_since_push && self.viewer_pace.keeps(now, &self.config);
        let spaced = self.vm_running && !self.delivery_frozen && self.pending_seqd == 0 && paced;
        self.refused_since_push = false;
        self.last_push = Some(now);
        // Held: replayed at half its gap. Live input behind events still waiting (a click's
        // settle, a QMP round trip) follows them as soon as the PS/2 queue allows.
        let replay = !self.vm_running || self.delivery_frozen;
        self.pending.push_back(Pending {
            entry: entry(Some(seq)),
            gap,
            available: now,
            replay,
            refused: false,
            paced,
            spaced,
        });
        self.pending_seqd += 1;
        self.stats.pushed += 1;
        tracing::trace!(?viewer, ?seq, ?event, "input pushed");
        Ok(Some(seq))
    }

    /// QMP `STOP`: the VM paused. Fast-lane events not yet confirmed become uncertain; new
    /// events are held on the QMP lane until [`Journal::handle_vm_resumed`].
    pub fn handle_vm_stopped(&mut self) {
        self.vm_running = false;
        self.running_since = None;
        self.replay_settled = false;
        if self.unfenced.range.is_some() {
            self.unfenced.stop_seen = true;
        }
        if let Some(c) = &mut self.confirm {
            c.stop_seen = true;
        }
        self.close_fast("VM stopped");
    }

    /// QMP `RESUME`: the VM runs again; held events go out (paced).
    pub fn handle_vm_resumed(&mut self) {
        self.vm_running = true;
        self.maybe_reopen();
    }

    /// What the kernel counts for the guest's vCPU threads, sampled at `now` after every
    /// reply the shell has handed over. The first call turns on the gate on the guest's clock
    /// ([`GUEST_UNREAD`]); a shell that cannot sample never calls it, and input is paced as
    /// before.
    pub fn observe_guest_runtime(&mut self, time: VcpuTime, now: Instant) {
        self.guest.observe(time, now);
    }

    /// Input waits for the guest to read what QEMU took: sample its vCPU time now and then
    /// ([`Journal::observe_guest_runtime`]), about every millisecond.
    pub fn wants_guest_runtime(&self) -> bool {
        self.guest.wants_samples()
    }

    /// A migration started (dmore's own `migrate`, or `MIGRATION` `setup`/`active`): the fast
    /// lane is fenced and new events take the QMP lane.
    pub fn handle_migration_started(&mut self) {
        self.migrating = true;
        self.close_fast("migration started");
    }

    /// The migration ended here (failed or cancelled: the source carries on). The fast lane
    /// reopens only after a `query-status` asked from now on says the VM runs: a `STOP` may
    /// still be on its way (the migration failed after the switchover's stop, or dmore's own
    /// orchestrator said so before QEMU's events arrived), and a key written to QEMU's VNC
    /// while the VM is stopped is dropped there. QEMU answers the probe after any such `STOP`.
    pub fn handle_migration_ended(&mut self) {
        self.migrating = false;
        self.recheck_run_state = true;
        self.maybe_reopen();
    }

    /// Stops delivery until [`Journal::thaw_delivery`]: the fast lane closes (its unconfirmed
    /// events still get their fence and probe) and `poll_action` gives no `Vnc` or `Qmp`
    /// action; a QMP batch already in flight still takes its reply. Call it, wait until
    /// [`Journal::is_settled`] (or give up), then [`Journal::freeze`].
    pub fn freeze_delivery(&mut self) {
        self.delivery_frozen = true;
        self.close_fast("delivery frozen");
    }

    /// Delivery carries on after [`Journal::freeze_delivery`] (the migration was aborted and
    /// the snapshot will not be used).
    pub fn thaw_delivery(&mut self) {
        self.delivery_frozen = false;
        self.maybe_reopen();
    }

    /// The tunables this journal runs with (a restored one: the snapshot's).
    pub fn config(&self) -> Config {
        self.config
    }

    /// The keys (QEMU key numbers) down once everything the journal took is delivered: pressed
    /// and not released, whether the press went or still waits. A restored journal's link
    /// rebuilds its keyboard state from it, so that a release is the key its press was (a
    /// keysym with several keys on the layout is released as the one down).
    pub fn keys_down(&self) -> Vec<u16> {
        let mut down: BTreeSet<u16> = self
            .down
            .keys()
            .filter_map(|control| match control {
                Control::Code(number) => Some(*number),
                Control::Sym(_) | Control::Button(_) => None,
            })
            .collect();
        for pending in &self.pending {
            if let InputEvent::Key {
                down: pressed,
                scancode: Some(number),
                ..
            } = pending.entry.event
            {
                if pressed {
                    down.insert(number);
                } else {
                    down.remove(&number);
                }
            }
        }
        down.into_iter().collect()
    }

    /// The latest pointer position written to either lane (a restored journal: the source's),
    /// where the guest's pointer is believed to be.
    pub fn pointer(&self) -> (u16, u16) {
        self.pointer
    }

    /// Whether delivery is frozen.
    pub fn delivery_frozen(&self) -> bool {
        self.delivery_frozen
    }

    /// The next range of fast-lane events that may or may not have reached the guest (a pause
    /// nobody announced caught them in flight). They are never re-sent; log and count them.
    pub fn poll_uncertain(&mut self) -> Option<SeqRange> {
        self.uncertain.pop_front()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        Stats {
            held: self.held(),
            ..self.stats
        }
    }

    /// Key and button events held: waiting for a lane or in flight on QMP.
    pub fn held(&self) -> usize {
        self.pending_seqd + self.qmp.as_ref().map_or(0, |f| f.seq_count())
    }

    /// No reply outstanding: no QMP batch in flight, no fence or probe, nothing on the fast
    /// lane unconfirmed. Freeze once settled so nothing in flight turns uncertain.
    pub fn is_settled(&self) -> bool {
        self.qmp.is_none() && self.fast_lane_confirmed()
    }

    /// No fast-lane event awaits its fence or probe. A migration's `STOP` that comes after
    /// this leaves nothing uncertain (the announced case).
    /// (Motion written to an open fast lane needs no confirmation.)
    pub fn fast_lane_confirmed(&self) -> bool {
        self.confirm.is_none()
            && self.unfenced.range.is_none()
            && (self.fast_open || !self.unfenced.dirty)
    }

    /// Whether new events would take the fast lane right now (for tracing and tests).
    pub fn fast_lane_open(&self) -> bool {
        self.fast_open
    }

    /// Events of any kind queued or in flight on QMP (what a snapshot's `held` may list).
    fn entries(&self) -> usize {
        self.pending.len() + self.qmp.as_ref().map_or(0, |f| f.pending.len())
    }

    /// The most entries [`Journal::restore`] accepts.
    fn restore_bound(&self) -> usize {
        state::restore_bound(&self.config)
    }

    fn fast_resolved(&self) -> bool {
        self.confirm.is_none() && !self.unfenced.dirty
    }

    fn close_fast(&mut self, why: &'static str) {
        if self.fast_open {
            self.fast_open = false;
            self.epoch += 1;
            tracing::debug!(why, "fast input lane closed");
        }
    }

    /// Opens the fast lane when that cannot reorder anything: nothing in flight on QMP (QEMU
    /// answers a batch once its events are in its input layer, so what the fast lane writes
    /// next comes after them), every fast-lane event confirmed, and the next event not a
    /// release whose press went through QMP (QEMU's VNC server would drop it). With events
    /// still held, only once the VM has run [`REPLAY_SETTLE`]; they follow on the fast lane,
    /// paced as a replay: a backlog drained through QMP alone goes one batch per round trip,
    /// slower than a fast typist on a loaded host (under load ~5 the lane stayed closed for
    /// good with 792 events held after a libvirt move).
    fn maybe_reopen(&mut self) {
        if !self.fast_open
            && !self.delivery_frozen
            && !self.recheck_run_state
            && self.vm_running
            && !self.migrating
            && self.qmp.is_none()
            && self.fast_resolved()
            && (self.pending.is_empty() || self.replay_settled)
            && !self
                .pending
                .front()
                .is_some_and(|p| self.needs_qmp(&p.entry))
        {
            self.fast_open = true;
            tracing::debug!("fast input lane open");
        }
    }

    /// Notes how long the VM has run since its last `RESUME` ([`REPLAY_SETTLE`]).
    fn note_running(&mut self, now: Instant) {
        if !self.vm_running {
            return;
        }
        let since = *self.running_since.get_or_insert(now);
        self.replay_settled = now.saturating_duration_since(since) >= REPLAY_SETTLE;
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

impl InFlight {
    fn seq_count(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| p.entry.seq.is_some())
            .count()
    }
}
