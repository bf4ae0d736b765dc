//! The journal against a simulated QEMU, in simulated time: random viewer input interleaved
//! with STOP/RESUME, migrations and freeze+restore into a new journal. Every key and button
//! event must reach the model guest exactly once and in order, except those the journal
//! reported uncertain (at most once); none are uncertain unless a pause came unannounced; the
//! PS/2 queue never overflows with the default pacing, for a guest that reads at least what
//! the journal takes it to (one key's 4 bytes per `Config::key_drain`, 2 bytes/ms; the
//! slowest model guest reads just that) and keeps
//! up with the viewer's own pace (as QEMU's own VNC needs it to), however the viewer's events
//! bunch up; the backlog stays within its bound.
//!
//! The model QEMU: run state; a VNC server that drops input while paused, keeps a key state
//! that drops releases it saw no press for (`ui/kbd-state.c`) and diffs button masks; a QMP
//! monitor that answers `VM not running` while paused and sends events and replies in order on
//! one connection; a 16-byte PS/2 queue drained by the guest at a fixed rate; latencies.

mod model;

use model::{Op, Sim, BUTTONS, KEYS};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..KEYS.len(), any::<bool>()).prop_map(|(k, d)| Op::Key(k, d)),
        6 => (0..BUTTONS.len(), any::<bool>()).prop_map(|(b, d)| Op::Click(b, d)),
        6 => (0..800u16, 0..600u16).prop_map(|(x, y)| Op::Move(x, y)),
        // Keys a wait apart are the viewer's own pace, which the guest keeps up with (2 ms
        // per 4-byte key at the slowest drain below); keys with no wait between arrived together.
        20 => prop_oneof![Just(0u64), 3_000..6_000u64, 3_000..40_000u64, 3_000..600_000u64]
            .prop_map(Op::Wait),
        3 => Just(Op::Stop),
        8 => Just(Op::Resume),
        3 => (0..3_000u64).prop_map(Op::Blip),
        3 => Just(Op::MigStart),
        8 => Just(Op::MigEnd),
        2 => Just(Op::Switchover),
    ]
}

fn simulate(ops: Vec<Op>, drain_per_ms: u64, max_held: usize, lat: (u64, u64, u64)) {
    let mut s = Sim::new(drain_per_ms, max_held, lat);
    for op in ops {
        s.apply(op);
    }
    check(s);
}

/// Lets everything out (the VM runs, no migration, every viewer event pushed and delivered),
/// then checks what the guest got: no PS/2 overflow, every event once and in order but the
/// uncertain ones, uncertain ones only after an unannounced pause.
fn check(mut s: Sim) {
    s.apply(Op::MigEnd);
    s.apply(Op::Resume);
    s.settle(|s| {
        s.outbox.is_empty() && s.j.held() == 0 && s.j.is_settled() && s.from_qmp.q.is_empty()
    });

    assert!(!s.overflow, "PS/2 queue overflowed");
    let mut seen = BTreeSet::new();
    for &g in &s.guest {
        assert!(seen.insert(g), "seq {g} delivered twice");
    }
    let certain: Vec<u64> = s
        .guest
        .iter()
        .copied()
        .filter(|g| !s.uncertain.contains(g))
        .collect();
    assert!(
        certain.windows(2).all(|w| w[0] < w[1]),
        "out of order: {certain:?}"
    );
    for p in &s.pushed {
        assert!(
            s.uncertain.contains(p) || seen.contains(p),
            "seq {p} never delivered"
        );
    }
    if !s.unannounced {
        assert!(
            s.uncertain.is_empty(),
            "uncertain {:?} without an unannounced pause",
            s.uncertain
        );
    }
    assert_eq!(s.j.stats().uncertain, s.uncertain.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_key_and_button_reaches_the_guest_once_in_order(
        ops in proptest::collection::vec(op(), 1..250),
        // Bytes per ms: the journal's assumption (Config::key_drain), and a fast guest.
        drain_per_ms in prop_oneof![Just(2u64), Just(50)],
        max_held in prop_oneof![Just(3usize), Just(4096)],
        vnc in prop_oneof![100..400u64, 5_000..20_000u64], // the latter: QEMU's main loop busy
        qmp in 200..1300u64,
        reply in 10..100u64,
    ) {
        simulate(ops, drain_per_ms, max_held, (vnc, qmp, reply));
    }
}

/// A backlog replayed while QEMU's main loop stalls (a migration's setup, a loaded host):
/// whatever the journal wrote meanwhile reaches the PS/2 queue at once when the loop runs
/// again. Held keys (typed at a typist's 10 ms while the VM was paused) replay after the
/// resume, the viewer idle, and QEMU stalls 100 ms into the replay: the queue must not
/// overflow (the QMP lane has one batch in flight, so a stall holds one key back; a replay
/// written into QEMU's VNC socket while it stalls would arrive as a burst of ~20 keys).
#[test]
fn a_replay_does_not_burst_into_the_ps2_queue_when_qemu_stalls() {
    let mut s = Sim::new(2, 4096, (200, 500, 50));
    s.apply(Op::Stop);
    s.apply(Op::Wait(5_000));
    for i in 0..40 {
        let k = i % 3;
        s.apply(Op::Key(k, true));
        s.apply(Op::Wait(5_000));
        s.apply(Op::Key(k, false));
        s.apply(Op::Wait(5_000));
    }
    assert_eq!(s.j.held(), 80, "held while paused");
    s.apply(Op::Resume);
    s.apply(Op::Wait(20_000));
    assert!(s.j.held() > 40, "the replay is under way: {}", s.j.held());
    s.stalled_until = s.t + 100_000;
    check(s);
}
