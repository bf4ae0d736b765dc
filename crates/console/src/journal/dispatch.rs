//! The output side of the journal: which action comes next, lane choice, pacing, batching.

use super::Confirm;
use super::{
    Action, BatchId, Control, Entry, FenceId, InFlight, InputEvent, Journal, Pending, PressLane,
    ProbeId, SeqRange, Stage, ViewerId, VncEvent,
};
use std::time::{Duration, Instant};

use crate::keymap::MODIFIER_KEYS;

/// Packets QEMU's PS/2 mouse queue takes: it queues a 3-byte packet only while fewer than 12
/// of its 16 bytes are held (`ps2_mouse_sync`, `hw/input/ps2.c`).
const MOUSE_QUEUE_PACKETS: u32 = 4;

/// Most motion one PS/2 mouse packet carries per axis; a longer motion is cut into several.
const MOUSE_PACKET_MOTION: u32 = 127;

/// Key and button events of the journal's own pacing (a replay, input behind others) that may
/// be on the fast lane unanswered: written, their fence not answered yet. QEMU handles what
/// sits in its VNC socket all at once when its main loop was busy (a migration's setup, a
/// loaded host): in a co-migration test a replay paced into the socket reached the PS/2 queue
/// as 15 keys within 0.2 ms, and QEMU dropped 41 bytes. A window clocks the replay on QEMU's
/// answers, as the QMP lane's one batch in flight does. Live input at the viewer's pace is not
/// held to it: it reaches QEMU as it would through QEMU's own VNC server.
const FAST_UNANSWERED: u64 = 4;

/// How late a shell may wake for an event that was due and still count as on time: timer
/// grain (tokio's is 1 ms) and scheduling, not a hold.
const LATE_WAKE_SLACK: Duration = Duration::from_millis(5);

/// The time a key/button event sent at `now` counts as sent at, for the next one's pacing:
/// when it was due, if the shell was merely late to wake (a replay keeps its schedule, so
/// late wake-ups do not pile up into lag); `now` if it was held longer (a replay after a
/// stop starts from the moment it can).
fn paced_at(due: Instant, now: Instant) -> Instant {
    if now.saturating_duration_since(due) <= LATE_WAKE_SLACK {
        due.min(now)
    } else {
        now
    }
}

impl Journal {
    /// The next thing the shell must do, or `None` until something happens or
    /// [`Journal::poll_timeout`] passes. Call it until it returns `None`.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        self.note_mouse_answered(now);
        self.note_running(now);
        self.maybe_reopen();
        if self.fast_open {
            if let Some(p) = self.pending.front() {
                if self.needs_qmp(&p.entry) {
                    self.close_fast("release of a key pressed on another lane");
                }
            }
        }
        if let Some(action) = self.poll_confirm() {
            return Some(action);
        }
        if self.delivery_frozen {
            return None;
        }
        let head = self.pending.front()?;
        if self.needs_resync(&head.entry) {
            if self.resync_due(head) > now {
                return None;
            }
            let viewer = head.entry.viewer;
            return if self.fast_open {
                Some(self.send_resync_fast(now))
            } else if self.qmp_ready() {
                Some(self.send_resync_qmp(viewer, now))
            } else {
                None
            };
        }
        if self.due(head) > now || self.guest_full(head) {
            return None;
        }
        if self.fast_open {
            if self.fast_window_full(head) {
                return None;
            }
            Some(self.send_fast(now))
        } else if self.qmp_ready() {
            Some(self.send_qmp(now))
        } else {
            None
        }
    }

    /// When the next held event becomes due, if a lane could take it then. `None`: nothing
    /// is waiting on time (only on input or replies).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.delivery_frozen {
            return None;
        }
        let head = self.pending.front()?;
        // Waiting for the guest to read is no timeout: the shell's samples of its clock
        // wake the journal.
        let lane_ready = !self.guest_full(head)
            && if self.fast_open {
                !self.needs_qmp(&head.entry) && !self.fast_window_full(head)
            } else {
                self.qmp_ready()
            };
        let due = if self.needs_resync(&head.entry) {
            self.resync_due(head)
        } else {
            self.due(head)
        };
        lane_ready.then_some(due)
    }

    /// Fence and probe actions of the fast lane's confirmation.
    fn poll_confirm(&mut self) -> Option<Action> {
        match &self.confirm {
            Some(c) if c.stage == Stage::NeedProbe => {
                let probe = ProbeId(self.next_id());
                if let Some(c) = &mut self.confirm {
                    c.stage = Stage::Probe(probe);
                }
                Some(Action::Status { probe })
            }
            Some(_) => None,
            None if self.recheck_run_state => {
                self.recheck_run_state = false;
                let probe = ProbeId(self.next_id());
                self.confirm = Some(Confirm {
                    range: None,
                    stop_seen: false,
                    stage: Stage::Probe(probe),
                });
                Some(Action::Status { probe })
            }
            // While open, only key/button events need confirming; closing needs everything
            // (motion included) proven handled before the QMP lane may follow.
            None if self.unfenced.dirty && (!self.fast_open || self.unfenced.range.is_some()) => {
                let fence = FenceId(self.next_id());
                let u = std::mem::take(&mut self.unfenced);
                self.confirm = Some(Confirm {
                    range: u.range,
                    stop_seen: u.stop_seen,
                    stage: Stage::Fence(fence),
                });
                self.stats.fences += 1;
                Some(Action::Fence { fence })
            }
            None => None,
        }
    }

    /// Key and button events written on the fast lane whose fence QEMU has not answered: for
    /// all the journal knows, still waiting in QEMU's VNC socket.
    fn fast_unanswered(&self) -> u64 {
        let fencing = self
            .confirm
            .as_ref()
            .filter(|c| matches!(c.stage, Stage::Fence(_)))
            .and_then(|c| c.range)
            .map_or(0, |r| r.len());
        fencing + self.unfenced.range.map_or(0, |r| r.len())
    }

    /// `p` is of the journal's own pacing and [`FAST_UNANSWERED`] such events already wait
    /// for QEMU's answer: it waits for the fence's.
    fn fast_window_full(&self, p: &Pending) -> bool {
        self.fast_window_full_with(p, 0)
    }

    /// [`Journal::fast_window_full`] with `more` events about to join the unanswered ones.
    fn fast_window_full_with(&self, p: &Pending, more: u64) -> bool {
        p.entry.seq.is_some()
            && !p.spaced
            && self.fast_unanswered().saturating_add(more) >= FAST_UNANSWERED
    }

    /// `p` is a key event and the guest has not read enough of what QEMU holds for one more
    /// ([`GUEST_UNREAD`](super::GUEST_UNREAD), buttons counted too): it waits for the guest's
    /// vCPUs to run. Live input too: a guest that does not run reads nothing, whoever sends.
    /// Buttons are not held: the mouse queue's model ([`Journal::note_mouse_sync`]) takes the
    /// time since a sync as the guest reading it, and a button the gate held for a guest that
    /// read nothing then went out as if the queue had room (CI lost a click in 47 and in 23
    /// with buttons gated).
    fn guest_full(&self, p: &Pending) -> bool {
        let in_flight =
            self.fast_unanswered() + self.qmp.as_ref().map_or(0, |f| f.seq_count() as u64);
        matches!(p.entry.event, InputEvent::Key { .. }) && self.guest.full_with(in_flight, 1)
    }

    /// The QMP lane may send: fast lane closed and fully confirmed (so nothing written there
    /// can be handled after what QMP delivers), VM running, nothing else in flight.
    fn qmp_ready(&self) -> bool {
        !self.fast_open && self.vm_running && self.qmp.is_none() && self.fast_resolved()
    }

    /// A release whose press did not go on the fast lane in its current open period; or any
    /// key while a modifier is down that did not: QEMU run with a keymap (`-k`) turns a
    /// fast-lane key's keysym into a key by the modifiers *its VNC server* saw pressed, and
    /// it never saw those (a German `°` is Shift+`^`; without the Shift it became `0`'s key,
    /// once in ~10 runs of the German text test, the Shift pressed on QMP after a takeover).
    pub(super) fn needs_qmp(&self, entry: &Entry) -> bool {
        match Control::of(&entry.event) {
            Some((control, false)) if !self.down_on_fast_lane(control) => true,
            Some((Control::Code(_) | Control::Sym(_), _)) => MODIFIER_KEYS
                .iter()
                .map(|&number| Control::Code(number))
                .any(|m| self.down.contains_key(&m) && !self.down_on_fast_lane(m)),
            _ => false,
        }
    }

    /// Whether `control`'s press went on the fast lane in its current open period.
    fn down_on_fast_lane(&self, control: Control) -> bool {
        self.down.get(&control) == Some(&PressLane::Fast { epoch: self.epoch })
    }

    /// When `p` may be sent: motion at once; live keys and buttons at the viewer's pace at
    /// once; an event at the viewer's pace that had to wait (replayed, or behind others) at
    /// half its original gap (capped at `max_gap`, at least half a `live_interval`) after the
    /// previous key or button, so the lag a wait caused shrinks instead of every later event
    /// inheriting it; keys faster than the viewer's pace (a paste, a loop) when the PS/2
    /// bucket has room ([`Journal::keys_room_at`]); a button `min_interval` after the latest
    /// re-sync.
    ///
    /// Why half gaps for a delayed spaced event and not the bucket: at 700 and 1000 events/s
    /// the console reads a few of a viewer's events in one read now and then; they wait for
    /// the bucket, every later one then has something ahead of it, and with the bucket alone
    /// (500 keys/s) dmore fell 3.1 and 8.8 s behind in 10 s (`dmore bench input`, both guests)
    /// where QEMU's own VNC kept up.
    fn due(&self, p: &Pending) -> Instant {
        if p.entry.seq.is_none() {
            return p.available;
        }
        let mut due = p.available;
        let waited = !self.viewer_spaced(p);
        if waited && (p.replay || p.paced) {
            if let Some(last) = self.last_paced {
                let wait = (p.gap.min(self.config.max_gap) / 2).max(self.config.live_interval / 2);
                due = due.max(last.checked_add(wait).unwrap_or(last));
            }
        }
        match p.entry.event {
            InputEvent::Key { .. } if waited && !p.paced => {
                if let Some(room) = self.keys_room_at() {
                    due = due.max(room);
                }
            }
            InputEvent::Button { .. } => {
                if let Some(resync) = self.buttons.last_resync {
                    let after = resync.checked_add(self.config.min_interval);
                    due = due.max(after.unwrap_or(resync));
                }
            }
            InputEvent::Key { .. } | InputEvent::Motion { .. } | InputEvent::Resync => {}
        }
        due
    }

    /// `p` was spaced by the viewer (at the viewer's pace, [`Config::live_interval`], nothing
    /// waiting ahead, no refusal since): it keeps the viewer's own spacing, as QEMU's
    /// own VNC server would hand it over, and does not wait for the PS/2 bucket (it still
    /// fills it). Keys that arrived together (one TCP read), waited behind others or in the
    /// viewer's socket (backpressure), or are replayed do. Whether the key before it went late
    /// does not matter: a viewer typing at 445 events/s (2.25 ms apart) whose one key went
    /// 1 ms late would otherwise have every later key judged late too, and fall behind at the
    /// bucket's pace for good (`dmore bench input`: 4 s behind after 10 s).
    ///
    /// [`Config::live_interval`]: super::Config::live_interval
    fn viewer_spaced(&self, p: &Pending) -> bool {
        p.spaced
    }

    /// When the PS/2 bucket takes one more key: it holds `max_paced_per_batch` keys, and the
    /// guest is taken to read one per `key_drain` (see [`Config`](super::Config)'s "Pacing").
    /// `None`: at once.
    fn keys_room_at(&self) -> Option<Instant> {
        let busy = self.keys_busy_until?;
        let depth =
            u32::try_from(self.config.max_paced_per_batch.saturating_sub(1)).unwrap_or(u32::MAX);
        let slack = self.config.key_drain.saturating_mul(depth);
        busy.checked_sub(slack)
    }

    /// A key goes to a lane at `now`, due at `sent` (its pacing time, see [`paced_at`]): the
    /// bucket fills by one key. It counts from `sent` but at most one `key_drain` back, so a
    /// shell waking a timer tick late (tokio's grain is 1 ms) does not slow the bucket down,
    /// and a long-late one does not get a burst out of it. The bucket never holds more than
    /// its capacity: keys the viewer spaced itself count in it but go at the viewer's pace,
    /// which may be faster than `key_drain` (a guest keeping up with a 700 events/s viewer
    /// reads faster than the bucket assumes); uncapped, their debt made the next pair of keys
    /// that arrived together wait 8.6 ms at 700 events/s, and every later key behind them.
    fn note_key(&mut self, sent: Instant, now: Instant) {
        let drain = self.config.key_drain;
        let earliest = now.checked_sub(drain).unwrap_or(now);
        let from = self
            .keys_busy_until
            .map_or(sent, |b| b.max(sent))
            .max(earliest);
        let capacity = u32::try_from(self.config.max_paced_per_batch.max(1)).unwrap_or(u32::MAX);
        let full = now
            .checked_add(drain.saturating_mul(capacity))
            .unwrap_or(now);
        self.keys_busy_until = Some(from.checked_add(drain).unwrap_or(from).min(full));
    }

    /// The RFB mask bit of the state-holding button `entry` presses or releases, else 0.
    fn state_bit(entry: &Entry) -> u8 {
        match entry.event {
            InputEvent::Button { button, .. } if button.holds_state() => button.rfb_mask(),
            _ => 0,
        }
    }

    /// `entry` is an event of a button whose previous event QEMU may not have reported yet: a
    /// re-sync goes first ([`Config::button_settle`](super::Config::button_settle)).
    fn needs_resync(&self, entry: &Entry) -> bool {
        Self::state_bit(entry) & self.buttons.unsynced != 0
    }

    /// When the re-sync before `head` may go: `button_settle` after the latest button event.
    fn resync_due(&self, head: &Pending) -> Instant {
        let settled = self
            .buttons
            .last_button
            .and_then(|t| t.checked_add(self.config.button_settle));
        settled.unwrap_or(head.available).max(head.available)
    }

    /// A button event written to a lane: one input sync. A state-holding button's event that
    /// found the mouse queue possibly full is remembered (QEMU may not report it before the
    /// next sync with room in its queue). So is every one during a migration: the model's
    /// read rate does not hold for a guest whose vCPU QEMU throttles for pre-copy (the fault
    /// matrix's cut-link cell, a dirtying guest in a stalled pre-copy, lost a click in 3 of 7
    /// runs with the model alone, 0 of 6 with this).
    fn note_button(&mut self, entry: &Entry, now: Instant) {
        if !matches!(entry.event, InputEvent::Button { .. }) {
            return;
        }
        let may_be_full = self.note_mouse_sync(0, now) || self.migrating;
        let bit = Self::state_bit(entry);
        if bit != 0 {
            if may_be_full {
                tracing::debug!(seq = ?entry.seq, "a button event may have met a full mouse queue");
                self.buttons.unsynced |= bit;
            }
            self.buttons.last_button = Some(now);
        }
    }

    /// Pointer motion to `to` written to a lane: one input sync, with a packet per 127 pixels
    /// of the longer axis (the distance a relative PS/2 mouse is told; an absolute device has
    /// no such queue, and counting it anyway only errs on the safe side).
    /// Returns the packets of motion it makes.
    fn note_motion(&mut self, to: (u16, u16), now: Instant) -> u32 {
        let (x, y) = self.pointer;
        let far = u32::from(x.abs_diff(to.0)).max(u32::from(y.abs_diff(to.1)));
        let packets = far.div_ceil(MOUSE_PACKET_MOTION);
        self.note_mouse_sync(packets, now);
        self.pointer = to;
        packets
    }

    /// A QMP batch QEMU answered: its packets may have been queued only just before the
    /// answer, so the mouse queue is taken to hold them until the guest had time to read
    /// them from `now` on (see [`ButtonSync`](super::ButtonSync)'s `mouse_answered`).
    fn note_mouse_answered(&mut self, now: Instant) {
        let packets = std::mem::take(&mut self.buttons.mouse_answered);
        if packets == 0 {
            return;
        }
        let per_packet = self.config.button_settle / MOUSE_QUEUE_PACKETS;
        let held = per_packet * packets.min(MOUSE_QUEUE_PACKETS);
        let until = now.checked_add(held).unwrap_or(now);
        let busy = self
            .buttons
            .mouse_busy_until
            .map_or(until, |b| b.max(until));
        self.buttons.mouse_busy_until = Some(busy);
    }

    /// An input sync reaches QEMU at `now` with `motion` packets of new motion (0 for a button
    /// or a re-sync). Like QEMU's PS/2 mouse, the model queues the motion it still owes and
    /// this one while there is room (at least one packet, which carries the button state),
    /// and owes the rest to the next sync. Returns whether the queue was full, so that QEMU
    /// reported nothing of this sync, not even a button's new state. The guest is taken to
    /// read a packet per `button_settle / 4`: the full queue within `button_settle`, the time
    /// the traced guest needed twice over (see
    /// [`Config::button_settle`](super::Config::button_settle)).
    fn note_mouse_sync(&mut self, motion: u32, now: Instant) -> bool {
        let per_packet = self.config.button_settle / MOUSE_QUEUE_PACKETS;
        let busy = self.buttons.mouse_busy_until.map_or(now, |b| b.max(now));
        let held = busy.saturating_duration_since(now).as_nanos();
        // The guest reads whole packets: between `floor` and `ceil` of the packets' worth of
        // time still held are queued. Err on the safe side each way: the room a button's
        // state needs is the least there may be, the packets this sync queues (and so the
        // time the queue stays busy) the most.
        let (least, most) = match per_packet.as_nanos() {
            0 => (0, 0),
            per => (held / per, held.div_ceil(per)),
        };
        let room = |queued: u128| {
            MOUSE_QUEUE_PACKETS.saturating_sub(u32::try_from(queued).unwrap_or(u32::MAX))
        };
        let (least_room, most_room) = (room(most), room(least));
        let owed = self.buttons.mouse_deferred.saturating_add(motion);
        self.buttons.mouse_deferred = owed - least_room.min(owed);
        self.buttons.mouse_busy_until = Some(busy + per_packet * most_room.min(owed.max(1)));
        least_room == 0
    }

    /// A re-sync goes to a lane now: every button's state is reported again.
    fn note_resync(&mut self, now: Instant) {
        self.note_mouse_sync(0, now);
        self.buttons.unsynced = 0;
        self.buttons.last_resync = Some(now);
        tracing::trace!("pointer re-sync");
    }

    /// A PointerEvent for QEMU's VNC socket that changes nothing (where the pointer is,
    /// buttons as QEMU's VNC server has them: a zero motion and a sync) and that the shell may
    /// write whenever the socket is connected, on either lane's turn: it is for the display,
    /// not the guest. QEMU's VNC server backs its refresh timer off, up to seconds, while the
    /// screen does not change (a paused VM, a migration's destination) and resets it only
    /// when a client sends it input (`protocol_client_msg`, a message type above 3); written
    /// when the VM runs again, the screen's next change reaches the viewers within QEMU's
    /// base refresh interval (30 ms) instead of the backed-off one. Counted in the mouse
    /// queue's model like any sync.
    pub fn display_wake(&mut self, now: Instant) -> VncEvent {
        self.note_mouse_sync(0, now);
        let (x, y) = self.pointer;
        VncEvent::Pointer {
            seq: None,
            x,
            y,
            mask: self.vnc_mask,
        }
    }

    /// A re-sync on the fast lane: a PointerEvent where the pointer is, buttons unchanged
    /// (QEMU's VNC server queues a zero motion and syncs).
    fn send_resync_fast(&mut self, now: Instant) -> Action {
        let (x, y) = self.pointer;
        self.unfenced.dirty = true;
        self.note_resync(now);
        Action::Vnc {
            events: vec![VncEvent::Pointer {
                seq: None,
                x,
                y,
                mask: self.vnc_mask,
            }],
        }
    }

    /// A re-sync on the QMP lane: a batch of its own, so the next event keeps its pacing.
    fn send_resync_qmp(&mut self, viewer: ViewerId, now: Instant) -> Action {
        let batch = BatchId(self.next_id());
        let buttons_before = self.buttons;
        self.note_resync(now);
        self.stats.qmp_batches += 1;
        self.qmp = Some(InFlight {
            batch,
            pending: Vec::new(),
            resync: true,
            buttons_before,
            mouse_packets: 1,
        });
        Action::Qmp {
            batch,
            events: vec![Entry {
                seq: None,
                viewer,
                event: InputEvent::Resync,
            }],
        }
    }

    /// Takes the due events at the head for one lane write, keeping the batch limits, and
    /// records the lane of each press (so a release later in the same write is judged by its
    /// press in it). Always takes at least the head (the caller checked it is due).
    fn take_due(&mut self, now: Instant, fast: bool) -> Vec<Pending> {
        let lane = if fast {
            PressLane::Fast { epoch: self.epoch }
        } else {
            PressLane::Qmp
        };
        let mut taken: Vec<Pending> = Vec::new();
        let mut paced = 0;
        // Buttons this write changes: a second event of one needs a re-sync between.
        let mut changed = self.buttons.unsynced;
        while let Some(p) = self.pending.front() {
            let seqd = p.entry.seq.is_some();
            let bit = Self::state_bit(&p.entry);
            let due = self.due(p);
            if !taken.is_empty()
                && (taken.len() >= self.config.max_batch
                    || (seqd && paced >= self.config.max_paced_per_batch)
                    || due > now
                    || bit & changed != 0
                    || (fast && self.needs_qmp(&p.entry))
                    || (fast
                        && self.fast_window_full_with(p, u64::try_from(paced).unwrap_or(u64::MAX))))
            {
                break;
            }
            changed |= bit;
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let sent = paced_at(due, now);
            if seqd {
                paced += 1;
                self.pending_seqd = self.pending_seqd.saturating_sub(1);
                self.last_paced = Some(sent);
            }
            if matches!(p.entry.event, InputEvent::Key { .. }) {
                self.note_key(sent, now);
            }
            self.record_press(&p.entry, lane);
            taken.push(p);
        }
        taken
    }

    fn send_fast(&mut self, now: Instant) -> Action {
        let taken = self.take_due(now, true);
        tracing::trace!(
            first = ?taken.first().and_then(|p| p.entry.seq),
            n = taken.len(),
            "fast-lane write"
        );
        let mut events = Vec::with_capacity(taken.len() + 1);
        for p in &taken {
            let entry = p.entry;
            self.unfenced.dirty = true;
            if let Some(seq) = entry.seq {
                SeqRange::extend(&mut self.unfenced.range, seq);
                self.stats.fast_sent += 1;
            }
            // (The messages first: a mask correction before a press is a sync of its own.)
            self.push_vnc(entry, now, &mut events);
            self.note_button(&entry, now);
        }
        Action::Vnc { events }
    }

    fn send_qmp(&mut self, now: Instant) -> Action {
        let buttons_before = self.buttons;
        let taken = self.take_due(now, false);
        let batch = BatchId(self.next_id());
        let events: Vec<Entry> = taken.iter().map(|p| p.entry).collect();
        let mut mouse_packets = 0u32;
        for entry in &events {
            self.note_button(entry, now);
            match entry.event {
                InputEvent::Motion { x, y } => {
                    mouse_packets = mouse_packets.saturating_add(self.note_motion((x, y), now));
                }
                InputEvent::Button { .. } => mouse_packets = mouse_packets.saturating_add(1),
                InputEvent::Key { .. } | InputEvent::Resync => {}
            }
        }
        self.stats.qmp_batches += 1;
        self.qmp = Some(InFlight {
            batch,
            pending: taken,
            resync: false,
            buttons_before,
            mouse_packets,
        });
        Action::Qmp { batch, events }
    }

    /// Remembers which lane a press went on; a release forgets the control.
    fn record_press(&mut self, entry: &Entry, lane: PressLane) {
        match Control::of(&entry.event) {
            Some((control, true)) => {
                self.down.insert(control, lane);
            }
            Some((control, false)) => {
                self.down.remove(&control);
            }
            None => {}
        }
    }

    /// Turns an entry into the RFB messages QEMU's VNC server must read.
    fn push_vnc(&mut self, entry: Entry, now: Instant, out: &mut Vec<VncEvent>) {
        let (x, y) = self.pointer;
        match (entry.event, entry.seq) {
            (
                InputEvent::Key {
                    down,
                    keysym,
                    scancode,
                },
                Some(seq),
            ) => out.push(VncEvent::Key {
                seq,
                down,
                keysym,
                scancode,
            }),
            (InputEvent::Button { down, button }, seq) => {
                let bit = button.rfb_mask();
                if down && self.vnc_mask & bit != 0 {
                    // Pressed here before, released through QMP: QEMU's VNC server still
                    // thinks it is down and would see no change. Clear it first.
                    self.vnc_mask &= !bit;
                    self.note_mouse_sync(0, now);
                    out.push(VncEvent::Pointer {
                        seq: None,
                        x,
                        y,
                        mask: self.vnc_mask,
                    });
                }
                if down {
                    self.vnc_mask |= bit;
                } else {
                    self.vnc_mask &= !bit;
                }
                out.push(VncEvent::Pointer {
                    seq,
                    x,
                    y,
                    mask: self.vnc_mask,
                });
            }
            // (Never queued: `send_resync_fast` writes it.)
            (InputEvent::Resync, _) => out.push(VncEvent::Pointer {
                seq: None,
                x,
                y,
                mask: self.vnc_mask,
            }),
            (InputEvent::Motion { x, y }, _) => {
                self.note_motion((x, y), now);
                out.push(VncEvent::Pointer {
                    seq: None,
                    x,
                    y,
                    mask: self.vnc_mask,
                });
            }
            // A key always has a seq (push gives it one).
            (InputEvent::Key { .. }, None) => {}
        }
    }
}
