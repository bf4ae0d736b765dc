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

use console::journal::{Config, Journal};
use model::{Op, Pipe, Sim, BUTTONS, KEYS};
use proptest::prelude::*;
use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

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
    let config = Config {
        max_held,
        ..Config::default()
    };
    let mut s = Sim {
        t0: Instant::now(),
        t: 0,
        j: Journal::new(config, true),
        running: true,
        migrating: false,
        kbd_down: BTreeSet::new(),
        vnc_mask: 0,
        ps2: 0,
        drain_per_ms,
        drain_acc: 0,
        overflow: false,
        guest: Vec::new(),
        to_vnc: Pipe::new(lat.0),
        from_vnc: Pipe::new(lat.0),
        to_qmp: Pipe::new(lat.1),
        from_qmp: Pipe::new(lat.2),
        outbox: VecDeque::new(),
        pushed: Vec::new(),
        uncertain: BTreeSet::new(),
        unannounced: false,
        max_held,
    };
    for op in ops {
        s.apply(op);
    }
    // Let everything out: the VM runs, no migration, every viewer event pushed and delivered.
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
