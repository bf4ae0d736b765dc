//! Unit tests, one or more per rule of the journal, in simulated time.

mod buttons;
mod guest;
mod held;
mod lanes;
mod pace;

use super::*;
use std::sync::OnceLock;

pub(super) const V: ViewerId = ViewerId(7);

pub(super) fn at(ms: u64) -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now) + Duration::from_millis(ms)
}

pub(super) fn key(down: bool, k: u16) -> InputEvent {
    InputEvent::Key {
        down,
        keysym: 0x61 + u32::from(k),
        scancode: Some(0x10 + k),
    }
}

pub(super) fn btn(down: bool) -> InputEvent {
    InputEvent::Button {
        down,
        button: Button::Left,
    }
}

/// Where an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Fast,
    Qmp,
}

/// Polls until `None`, answering every fence, probe (running, no STOP) and QMP batch
/// (Delivered) at once. Returns the key/button seqs sent, with their lane and send time.
pub(super) fn run(j: &mut Journal, now: Instant) -> Vec<(Lane, u64, Instant)> {
    let mut sent = Vec::new();
    while let Some(a) = j.poll_action(now) {
        match a {
            Action::Vnc { events } => {
                for e in events {
                    match e {
                        VncEvent::Key { seq, .. } | VncEvent::Pointer { seq: Some(seq), .. } => {
                            sent.push((Lane::Fast, seq.0, now))
                        }
                        VncEvent::Pointer { seq: None, .. } => {}
                    }
                }
            }
            Action::Fence { fence } => j.handle_fence_answered(fence).unwrap(),
            Action::Status { probe } => j.handle_status(probe, true, false).unwrap(),
            Action::Qmp { batch, events } => {
                sent.extend(
                    events
                        .iter()
                        .filter_map(|e| e.seq)
                        .map(|s| (Lane::Qmp, s.0, now)),
                );
                j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
            }
        }
    }
    sent
}

/// Runs with time advancing to each `poll_timeout`.
pub(super) fn run_until_idle(j: &mut Journal, mut now: Instant) -> Vec<(Lane, u64, Instant)> {
    let mut sent = run(j, now);
    while let Some(t) = j.poll_timeout() {
        assert!(
            t > now,
            "poll_timeout must lie ahead after poll_action returned None"
        );
        now = t;
        sent.extend(run(j, now));
    }
    sent
}

pub(super) fn lanes(sent: &[(Lane, u64, Instant)]) -> Vec<(Lane, u64)> {
    sent.iter().map(|&(l, s, _)| (l, s)).collect()
}
