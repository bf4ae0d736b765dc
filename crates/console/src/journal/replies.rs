//! The journal's reply handlers: QMP batch outcomes, fence answers and status probes.

use super::{
    BatchId, FenceId, Journal, JournalError, Outcome, ProbeId, SeqRange, Stage,
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
                let n = inflight
                    .pending
                    .iter()
                    .filter(|p| p.entry.seq.is_some())
                    .count();
                self.stats.delivered += n as u64;
            }
            Outcome::VmNotRunning | Outcome::Failed(_) => {
                if let Outcome::Failed(reason) = outcome {
                    tracing::warn!(?batch, %reason, "QMP batch failed; input held");
                    self.stats.qmp_failed += 1;
                    self.blocked = Some(reason);
                } else {
                    tracing::debug!(?batch, "VM not running; input held until RESUME");
                    self.stats.qmp_not_running += 1;
                    self.vm_running = false;
                }
                for mut p in inflight.pending.into_iter().rev() {
                    self.pending_seqd += usize::from(p.entry.seq.is_some());
                    p.replay = true;
                    self.pending.push_front(p);
                }
            }
        }
        self.maybe_reopen();
        Ok(())
    }

    /// QEMU answered the fence: every fast-lane event before it was handled.
    pub fn handle_fence_answered(&mut self, fence: FenceId) -> Result<(), JournalError> {
        match &mut self.confirm {
            Some(c) if c.stage == Stage::Fence(fence) => {
                c.stage = Stage::NeedProbe;
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
