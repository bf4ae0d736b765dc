//! The output side of the journal: which action comes next, lane choice, pacing, batching.

use super::Confirm;
use super::{
    Action, BatchId, Control, Entry, FenceId, InFlight, InputEvent, Journal, Pending, PressLane,
    ProbeId, SeqRange, Stage, ViewerId, VncEvent,
};
use std::time::{Duration, Instant};

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
        if self.due(head) > now {
            return None;
        }
        if self.fast_open {
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
        let lane_ready = if self.fast_open {
            !self.needs_qmp(&head.entry)
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

    /// The QMP lane may send: fast lane closed and fully confirmed (so nothing written there
    /// can be handled after what QMP delivers), VM running, nothing else in flight.
    fn qmp_ready(&self) -> bool {
        !self.fast_open && self.vm_running && self.qmp.is_none() && self.fast_resolved()
    }

    /// A release whose press did not go on the fast lane in its current open period.
    fn needs_qmp(&self, entry: &Entry) -> bool {
        match Control::of(&entry.event) {
            Some((control, false)) => {
                self.down.get(&control) != Some(&PressLane::Fast { epoch: self.epoch })
            }
            _ => false,
        }
    }

    /// When `p` may be sent: motion at once; live keys and buttons at once; replayed ones at
    /// half their original gap (capped at `max_gap`) after the previous key or button; keys
    /// when the PS/2 bucket has room ([`Journal::keys_room_at`]); a button `min_interval`
    /// after the latest re-sync.
    fn due(&self, p: &Pending) -> Instant {
        if p.entry.seq.is_none() {
            return p.available;
        }
        let mut due = p.available;
        if p.replay {
            if let Some(last) = self.last_paced {
                let wait = p.gap.min(self.config.max_gap) / 2;
                due = due.max(last.checked_add(wait).unwrap_or(last));
            }
        }
        match p.entry.event {
            InputEvent::Key { .. } if !self.viewer_spaced(p) => {
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

    /// `p` was spaced by the viewer ([`Config::burst_gap`] or more after the previous push,
    /// nothing waiting ahead, no refusal since) and the key or button before it went at
    /// least `burst_gap` before `p` arrived: it keeps the viewer's own spacing, as QEMU's own
    /// VNC server would hand it over, and does not wait for the PS/2 bucket. Keys that
    /// arrived together (one TCP read), waited behind others or in the viewer's socket
    /// (backpressure), or are replayed do.
    ///
    /// [`Config::burst_gap`]: super::Config::burst_gap
    fn viewer_spaced(&self, p: &Pending) -> bool {
        p.spaced
            && self.last_paced.is_none_or(|last| {
                last.checked_add(self.config.burst_gap)
                    .is_some_and(|t| t <= p.available)
            })
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

    /// A key goes to a lane now: the bucket fills by one key.
    fn note_key(&mut self, now: Instant) {
        let from = self.keys_busy_until.map_or(now, |b| b.max(now));
        self.keys_busy_until = Some(from.checked_add(self.config.key_drain).unwrap_or(from));
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

    /// Remembers a state-holding button's event written to a lane (QEMU may not report it
    /// before the next sync with room in its queue).
    fn note_button(&mut self, entry: &Entry, now: Instant) {
        let bit = Self::state_bit(entry);
        if bit != 0 {
            self.buttons.unsynced |= bit;
            self.buttons.last_button = Some(now);
        }
    }

    /// A re-sync goes to a lane now: every button's state is reported again.
    fn note_resync(&mut self, now: Instant) {
        self.buttons.unsynced = 0;
        self.buttons.last_resync = Some(now);
        tracing::trace!("pointer re-sync");
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
                    || (fast && self.needs_qmp(&p.entry)))
            {
                break;
            }
            changed |= bit;
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if seqd {
                paced += 1;
                self.pending_seqd = self.pending_seqd.saturating_sub(1);
                self.last_paced = Some(paced_at(due, now));
            }
            if matches!(p.entry.event, InputEvent::Key { .. }) {
                self.note_key(now);
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
            self.note_button(&entry, now);
            self.push_vnc(entry, &mut events);
        }
        Action::Vnc { events }
    }

    fn send_qmp(&mut self, now: Instant) -> Action {
        let buttons_before = self.buttons;
        let taken = self.take_due(now, false);
        let batch = BatchId(self.next_id());
        let events: Vec<Entry> = taken.iter().map(|p| p.entry).collect();
        for entry in &events {
            self.note_button(entry, now);
            if let InputEvent::Motion { x, y } = entry.event {
                self.pointer = (x, y);
            }
        }
        self.stats.qmp_batches += 1;
        self.qmp = Some(InFlight {
            batch,
            pending: taken,
            resync: false,
            buttons_before,
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
    fn push_vnc(&mut self, entry: Entry, out: &mut Vec<VncEvent>) {
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
                self.pointer = (x, y);
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
