//! The journal's reply handlers: QMP batch outcomes, fence answers and status probes.

use super::{
    BatchId, FenceId, Journal, JournalError, Outcome, Pending, ProbeId, SeqRange, Stage,
    MAX_UNCERTAIN_REPORTS,
};

impl Journal {
    /// The reply to a QMP batch.
    pub fn handle_qmp_reply(
        &mut self,
        batch: BatchId,
        outcome: Outcome,
    ) -> Result<(), JournalError> {
        let inflight = match self.qmp.take() {
            Some(f) if f.batch == batch => f,
            other => {
                self.qmp = other;
                return Err(JournalError::UnknownBatch(batch));
            }
        };
        match outcome {
            Outcome::Delivered => {
                self.buttons.mouse_answered = inflight.mouse_packets;
                let n = inflight
                    .pending
                    .iter()
                    .filter(|p| p.entry.seq.is_some())
                    .count();
                self.stats.delivered += n as u64;
                self.guest.took(n as u64);
            }
            Outcome::VmNotRunning => {
                tracing::debug!(?batch, "VM not running; input held until RESUME");
                self.stats.qmp_not_running += 1;
                self.vm_running = false;
                // None of its button events happened. A re-sync is not held: it is owed
                // again, and made afresh before the button's event.
                self.buttons = inflight.buttons_before;
                self.hold_again(inflight.pending);
            }
            Outcome::Failed(reason) if inflight.resync => {
                // Not owed again: QEMU would refuse it again and hold the button forever.
                self.stats.qmp_failed += 1;
                tracing::warn!(?batch, %reason, "QMP refused a pointer re-sync; going on without");
            }
            Outcome::Failed(reason) => {
                self.stats.qmp_failed += 1;
                self.buttons = inflight.buttons_before;
                self.handle_refused(batch, inflight.pending, &reason);
            }
        }
        self.maybe_reopen();
        Ok(())
    }

    /// A batch QEMU refused for a reason other than `VM not running`.
    ///
    /// QEMU checks every event of an `input-send-event` before it delivers any (`ui/input.c`,
    /// `qmp_input_send_event`: run state, then a handler for each event's type), so nothing of
    /// a refused batch reached the guest and re-sending it cannot deliver a key twice. What
    /// loses the least without holding input forever (the old rule held everything until a
    /// `RESUME`, so one refused batch stopped all later input, keys included):
    /// - its pointer motion is dropped: the usual cause is motion the guest's mouse cannot
    ///   take (`abs` without an absolute device), and motion is "latest position wins": the
    ///   next motion carries the position again;
    /// - its keys and buttons go back to the front and are re-sent: if the motion was the
    ///   cause, they now go through;
    /// - a key or button refused a second time is dropped, logged and counted in
    ///   [`Stats::dropped`](super::Stats::dropped): QEMU cannot take it at all (no handler for
    ///   its type), and holding it would hold every later event behind it for nothing.
    fn handle_refused(&mut self, batch: BatchId, pending: Vec<Pending>, reason: &str) {
        let mut motion = 0usize;
        let mut dropped = None;
        let mut dropped_count = 0u64;
        let mut again = Vec::with_capacity(pending.len());
        for mut p in pending {
            match p.entry.seq {
                None => motion += 1,
                Some(seq) if p.refused => {
                    SeqRange::extend(&mut dropped, seq);
                    dropped_count += 1;
                }
                Some(_) => {
                    p.refused = true;
                    again.push(p);
                }
            }
        }
        tracing::warn!(
            ?batch,
            %reason,
            motion,
            resent = again.len(),
            "QMP refused an input batch (nothing of it was delivered)"
        );
        if let Some(range) = dropped {
            tracing::error!(
                count = dropped_count,
                first = range.first.0,
                last = range.last.0,
                %reason,
                "input events refused twice by QEMU; dropped, never delivered"
            );
            self.stats.dropped += dropped_count;
        }
        self.hold_again(again);
    }

    /// Puts a batch that was not delivered back at the front, to be replayed.
    fn hold_again(&mut self, pending: Vec<Pending>) {
        for mut p in pending.into_iter().rev() {
            self.pending_seqd += usize::from(p.entry.seq.is_some());
            p.replay = true;
            p.spaced = false;
            self.pending.push_front(p);
        }
    }

    /// QEMU answered the fence: every fast-lane event before it was handled.
    pub fn handle_fence_answered(&mut self, fence: FenceId) -> Result<(), JournalError> {
        match &mut self.confirm {
            Some(c) if c.stage == Stage::Fence(fence) => {
                c.stage = Stage::NeedProbe;
                let taken = c.range.map_or(0, |r| r.len());
                self.guest.took(taken);
                Ok(())
            }
            _ => Err(JournalError::UnknownFence(fence)),
        }
    }

    /// The `query-status` reply after a fence: `running` is its run state, and
    /// `stop_seen_before` says the shell saw a `STOP` it has not passed on before this reply
    /// (the journal also counts every [`Journal::handle_vm_stopped`] since the events left).
    pub fn handle_status(
        &mut self,
        probe: ProbeId,
        running: bool,
        stop_seen_before: bool,
    ) -> Result<(), JournalError> {
        let c = match self.confirm.take() {
            Some(c) if c.stage == Stage::Probe(probe) => c,
            other => {
                self.confirm = other;
                return Err(JournalError::UnknownProbe(probe));
            }
        };
        if let Some(range) = c.range {
            if running && !stop_seen_before && !c.stop_seen {
                self.stats.delivered += range.len();
            } else {
                self.report_uncertain(range);
            }
        }
        self.maybe_reopen();
        Ok(())
    }

    fn report_uncertain(&mut self, range: SeqRange) {
        tracing::warn!(
            first = range.first.0,
            last = range.last.0,
            "input events uncertain"
        );
        self.stats.uncertain += range.len();
        if self.uncertain.len() >= MAX_UNCERTAIN_REPORTS {
            self.uncertain.pop_front();
        }
        self.uncertain.push_back(range);
    }
}
