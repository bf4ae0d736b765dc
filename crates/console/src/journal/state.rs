//! The journal's snapshot: everything that must cross to the destination console.

use super::{
    Button, Config, Control, Entry, InputEvent, Journal, Pending, PressLane, Seq, SeqRange, Stats,
    ViewerId, ViewerPace,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Version of [`JournalState`]'s layout; [`Journal::restore`] refuses any other.
pub const STATE_VERSION: u32 = 1;

/// One held event in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct HeldEvent {
    seq: Option<Seq>,
    viewer: ViewerId,
    event: InputEvent,
    /// Time since the previous key/button push, to keep the viewer's pace on replay.
    gap: Duration,
}

/// Which lane a control that is down was pressed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum DownLane {
    Fast,
    Qmp,
}

/// The journal's whole state, serde-serialisable: held events with their sequence numbers and
/// original gaps, keys and buttons down and their lanes, the next sequence number, counters.
/// Made by [`Journal::freeze`], consumed by [`Journal::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    version: u32,
    config: Config,
    next_seq: u64,
    held: Vec<HeldEvent>,
    down: Vec<(Control, DownLane)>,
    pointer: (u16, u16),
    stats: Stats,
    /// Uncertain ranges not yet polled, and those the freeze itself made uncertain.
    uncertain: Vec<SeqRange>,
}

/// A snapshot the journal cannot take over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Made by another version of dmore.
    #[error("journal state version {found}, this dmore reads version {expected}")]
    Version {
        /// In the snapshot.
        found: u32,
        /// Understood here.
        expected: u32,
    },
    /// Contents that no journal could have frozen.
    #[error("invalid journal state: {0}")]
    Invalid(&'static str),
}

/// The most held events (of any kind) a snapshot may list: a full journal holds `max_held`
/// keys and buttons with at most one motion between each two, plus one at the tail.
pub(super) fn restore_bound(config: &Config) -> usize {
    config.max_held.saturating_mul(2).saturating_add(1)
}

impl JournalState {
    /// Key and button events the snapshot holds for re-delivery.
    pub fn held(&self) -> usize {
        self.held.iter().filter(|h| h.seq.is_some()).count()
    }

    /// Events the freeze could not vouch for (in flight when it was taken, or reported
    /// uncertain and not yet polled); the restored journal reports them again.
    pub fn uncertain(&self) -> &[SeqRange] {
        &self.uncertain
    }
}

impl Journal {
    /// Snapshots the journal. Anything still in flight (a QMP batch without reply, fast-lane
    /// events not yet confirmed) is recorded as uncertain, never as held: re-sending it could
    /// deliver it twice. Freeze once [`Journal::is_settled`] to have none. The journal itself
    /// is unchanged and can carry on (a source thawing after a cancelled migration).
    pub fn freeze(&self) -> JournalState {
        let mut stats = self.stats;
        let mut uncertain: Vec<SeqRange> = self.uncertain.iter().copied().collect();
        let mut lost = |range: Option<SeqRange>| {
            if let Some(r) = range {
                stats.uncertain += r.len();
                uncertain.push(r);
            }
        };
        lost(self.confirm.as_ref().and_then(|c| c.range));
        lost(self.unfenced.range);
        if let Some(f) = &self.qmp {
            let mut range = None;
            f.pending
                .iter()
                .filter_map(|p| p.entry.seq)
                .for_each(|s| SeqRange::extend(&mut range, s));
            lost(range);
        }
        let held = self
            .pending
            .iter()
            .filter(|p| p.entry.event != InputEvent::Resync)
            .map(|p| HeldEvent {
                seq: p.entry.seq,
                viewer: p.entry.viewer,
                event: p.entry.event,
                gap: p.gap,
            })
            .collect::<Vec<_>>();
        stats.held = held.iter().filter(|h| h.seq.is_some()).count();
        let down = self
            .down
            .iter()
            .map(|(c, lane)| {
                (
                    *c,
                    if matches!(lane, PressLane::Fast { .. }) {
                        DownLane::Fast
                    } else {
                        DownLane::Qmp
                    },
                )
            })
            .collect();
        JournalState {
            version: STATE_VERSION,
            // What a decoded snapshot would hold (button_settle, key_drain and the live pace
            // are not in the layout).
            config: Config {
                button_settle: Config::default().button_settle,
                key_drain: Config::default().key_drain,
                live_interval: Config::default().live_interval,
                live_burst: Config::default().live_burst,
                ..self.config
            },
            next_seq: self.next_seq,
            held,
            down,
            pointer: self.pointer,
            stats,
            uncertain,
        }
    }

    /// Takes over a snapshot (on the destination). The restored journal holds everything
    /// until [`Journal::handle_vm_resumed`], and releases every key or button that is down
    /// through QMP: the destination's VNC server never saw those presses. Every button counts
    /// as not yet reported (the source may have written its last event just before the VM
    /// stopped, into a full PS/2 queue that migrated): the next event of each comes after a
    /// re-sync ([`Config::button_settle`]). The snapshot does not carry the settle time: the
    /// restored journal uses the default.
    pub fn restore(state: JournalState, now: Instant) -> Result<Journal, RestoreError> {
        if state.version != STATE_VERSION {
            return Err(RestoreError::Version {
                found: state.version,
                expected: STATE_VERSION,
            });
        }
        if state.held.len() > restore_bound(&state.config) {
            return Err(RestoreError::Invalid(
                "more held events than the bound allows",
            ));
        }
        let mut last = 0;
        for seq in state.held.iter().filter_map(|h| h.seq) {
            if seq.0 <= last || seq.0 >= state.next_seq {
                return Err(RestoreError::Invalid("held sequence numbers out of order"));
            }
            last = seq.0;
        }
        let mut j = Journal::new(state.config, false);
        j.next_seq = state.next_seq;
        // Fast-lane presses belong to an earlier open period: their releases take QMP.
        j.epoch = 1;
        j.down = state
            .down
            .iter()
            .map(|(c, _)| (*c, PressLane::Qmp))
            .collect::<BTreeMap<_, _>>();
        j.pointer = state.pointer;
        j.buttons.unsynced = [Button::Left, Button::Middle, Button::Right]
            .iter()
            .fold(0, |mask, b| mask | b.rfb_mask());
        j.buttons.last_button = Some(now);
        // Whether each came at the viewer's pace is judged again from the gaps it came with.
        let mut pace = ViewerPace::default();
        let mut arrived = now;
        j.pending = state
            .held
            .iter()
            .map(|h| {
                arrived = arrived.checked_add(h.gap).unwrap_or(arrived);
                Pending {
                    entry: Entry {
                        seq: h.seq,
                        viewer: h.viewer,
                        event: h.event,
                    },
                    gap: h.gap,
                    available: now,
                    replay: true,
                    refused: false,
                    paced: h.seq.is_some() && pace.keeps(arrived, &j.config),
                    spaced: false,
                }
            })
            .collect::<VecDeque<_>>();
        j.pending_seqd = state.held();
        j.stats = state.stats;
        let skip = state
            .uncertain
            .len()
            .saturating_sub(super::MAX_UNCERTAIN_REPORTS);
        j.uncertain = state.uncertain.into_iter().skip(skip).collect();
        Ok(j)
    }
}
