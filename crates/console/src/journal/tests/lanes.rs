//! Rules 1 and 2: lane choice, fencing, uncertain events, releases on their press lane.

use super::*;
#[test]
fn fast_lane_events_are_confirmed_by_fence_then_probe() {
    let mut j = Journal::new(Config::default(), true);
    assert_eq!(j.push(V, key(true, 0), at(0)), Ok(Some(Seq(1))));
    let Some(Action::Vnc { events }) = j.poll_action(at(0)) else {
        panic!("expected Vnc")
    };
    assert!(matches!(
        events[..],
        [VncEvent::Key {
            seq: Seq(1),
            down: true,
            ..
        }]
    ));
    let Some(Action::Fence { fence }) = j.poll_action(at(0)) else {
        panic!("expected Fence")
    };
    assert_eq!(j.stats().delivered, 0);
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(0)) else {
        panic!("expected Status")
    };
    j.handle_status(probe, true, false).unwrap();
    assert_eq!(j.stats().delivered, 1);
    assert_eq!(j.poll_uncertain(), None);
    assert!(j.is_settled());
}

#[test]
fn migration_fences_fast_lane_and_qmp_waits_for_the_fence() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    assert!(matches!(j.poll_action(at(0)), Some(Action::Vnc { .. })));
    j.handle_migration_started();
    j.push(V, key(false, 0), at(10)).unwrap();
    let Some(Action::Fence { fence }) = j.poll_action(at(10)) else {
        panic!("expected Fence")
    };
    assert_eq!(j.poll_action(at(10)), None, "QMP must wait for the fence");
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(10)) else {
        panic!("expected Status")
    };
    assert_eq!(j.poll_action(at(10)), None, "QMP must wait for the probe");
    j.handle_status(probe, true, false).unwrap();
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(10)) else {
        panic!("expected Qmp")
    };
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [Some(Seq(2))]
    );
    assert_eq!(events[0].viewer, V, "the viewer is recorded per event");
    j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
    assert_eq!(j.stats().delivered, 2);
    assert!(!j.fast_lane_open(), "no fast lane during a migration");
    end_migration(&mut j, at(20));
    assert!(j.fast_lane_open());
}

#[test]
fn unannounced_stop_reports_fast_events_uncertain_and_holds_new_ones() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    j.push(V, key(false, 0), at(10)).unwrap();
    assert!(matches!(j.poll_action(at(0)), Some(Action::Vnc { .. })));
    let Some(Action::Fence { fence }) = j.poll_action(at(0)) else {
        panic!("expected Fence")
    };
    assert!(matches!(j.poll_action(at(10)), Some(Action::Vnc { .. })));
    j.handle_vm_stopped();
    j.push(V, key(true, 1), at(20)).unwrap();
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(20)) else {
        panic!("expected Status")
    };
    j.handle_status(probe, false, false).unwrap();
    let Some(Action::Fence { fence }) = j.poll_action(at(20)) else {
        panic!("second Fence")
    };
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(20)) else {
        panic!("second Status")
    };
    j.handle_status(probe, false, false).unwrap();
    assert_eq!(
        j.poll_uncertain(),
        Some(SeqRange {
            first: Seq(1),
            last: Seq(1)
        })
    );
    assert_eq!(
        j.poll_uncertain(),
        Some(SeqRange {
            first: Seq(2),
            last: Seq(2)
        })
    );
    assert_eq!(j.stats().uncertain, 2);
    assert_eq!(j.poll_action(at(30)), None, "held while stopped");
    j.handle_vm_resumed();
    // seq 3 (a press) goes through QMP; 1 and 2 are never re-sent.
    assert_eq!(lanes(&run_until_idle(&mut j, at(40))), [(Lane::Qmp, 3)]);
    assert!(j.fast_lane_open(), "fast again once the backlog is empty");
}

#[test]
fn stop_between_fence_answer_and_probe_reply_makes_events_uncertain() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    j.poll_action(at(0));
    let Some(Action::Fence { fence }) = j.poll_action(at(0)) else {
        panic!("expected Fence")
    };
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(0)) else {
        panic!("expected Status")
    };
    j.handle_vm_stopped();
    j.handle_vm_resumed();
    j.handle_status(probe, true, false).unwrap();
    assert_eq!(j.stats().uncertain, 1);
    assert_eq!(j.stats().delivered, 0);
    // The shell's own flag counts as well.
    j.push(V, key(false, 0), at(10)).unwrap();
    assert_eq!(
        lanes(&run(&mut j, at(10))),
        [(Lane::Qmp, 2)],
        "release of a fenced press"
    );
    j.push(V, key(true, 1), at(20)).unwrap();
    j.poll_action(at(20));
    let Some(Action::Fence { fence }) = j.poll_action(at(20)) else {
        panic!("expected Fence")
    };
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(20)) else {
        panic!("expected Status")
    };
    j.handle_status(probe, true, true).unwrap();
    assert_eq!(j.stats().uncertain, 2);
}

#[test]
fn release_goes_on_its_press_lane_or_through_qmp_after_a_fence() {
    let mut j = Journal::new(Config::default(), true);
    // Press and release on the same open fast lane: both fast.
    j.push(V, key(true, 0), at(0)).unwrap();
    j.push(V, key(false, 0), at(10)).unwrap();
    assert_eq!(
        lanes(&run_until_idle(&mut j, at(0))),
        [(Lane::Fast, 1), (Lane::Fast, 2)]
    );
    // Press fast, the lane gets fenced (a migration that is then cancelled), release via QMP.
    j.push(V, key(true, 1), at(100)).unwrap();
    assert_eq!(lanes(&run(&mut j, at(100))), [(Lane::Fast, 3)]);
    j.handle_migration_started();
    end_migration(&mut j, at(100));
    assert!(j.fast_lane_open(), "reopened: nothing held");
    j.push(V, key(false, 1), at(110)).unwrap();
    j.push(V, key(true, 2), at(120)).unwrap();
    let sent = lanes(&run_until_idle(&mut j, at(110)));
    assert_eq!(
        sent,
        [(Lane::Qmp, 4), (Lane::Qmp, 5)],
        "behind a QMP event stays on QMP"
    );
    j.push(V, key(false, 2), at(130)).unwrap();
    assert_eq!(lanes(&run_until_idle(&mut j, at(130))), [(Lane::Qmp, 6)]);
    j.push(V, key(true, 4), at(140)).unwrap();
    assert_eq!(
        lanes(&run_until_idle(&mut j, at(140))),
        [(Lane::Fast, 7)],
        "fast again"
    );
    // A press that went through QMP is released through QMP even with the fast lane open.
    j.handle_migration_started();
    j.push(V, key(true, 3), at(200)).unwrap();
    assert_eq!(lanes(&run_until_idle(&mut j, at(200))), [(Lane::Qmp, 8)]);
    end_migration(&mut j, at(250));
    assert!(j.fast_lane_open());
    j.push(V, key(false, 3), at(300)).unwrap();
    assert_eq!(lanes(&run_until_idle(&mut j, at(300))), [(Lane::Qmp, 9)]);
}

#[test]
fn button_released_through_qmp_is_cleared_before_its_next_fast_press() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, btn(true), at(0)).unwrap();
    run(&mut j, at(0));
    j.handle_migration_started();
    j.push(V, btn(false), at(10)).unwrap();
    assert_eq!(lanes(&run_until_idle(&mut j, at(10))), [(Lane::Qmp, 2)]);
    end_migration(&mut j, at(100));
    j.push(V, btn(true), at(100)).unwrap();
    // The release went through QMP during a migration (every click's next event waits for a
    // re-sync then); the press waits for one (fast lane now, buttons as QEMU's VNC server
    // knows them: no change for it).
    let Some(Action::Vnc { events }) = j.poll_action(at(100)) else {
        panic!("expected Vnc")
    };
    assert_eq!(
        events,
        [VncEvent::Pointer {
            seq: None,
            x: 0,
            y: 0,
            mask: 1
        }]
    );
    assert_eq!(
        j.poll_action(at(100)),
        None,
        "min_interval after the re-sync"
    );
    let Some(Action::Vnc { events }) = j.poll_action(at(104)) else {
        panic!("expected Vnc")
    };
    assert_eq!(
        events,
        [
            VncEvent::Pointer {
                seq: None,
                x: 0,
                y: 0,
                mask: 0
            },
            VncEvent::Pointer {
                seq: Some(Seq(3)),
                x: 0,
                y: 0,
                mask: 1
            },
        ]
    );
}

#[test]
fn short_unannounced_pause_makes_every_unconfirmed_fast_event_uncertain() {
    // STOP and RESUME both arrive before the probes: only the journal's own record of the
    // STOP can tell that the fast-lane events may have been dropped.
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    j.push(V, key(false, 0), at(10)).unwrap();
    assert!(matches!(j.poll_action(at(0)), Some(Action::Vnc { .. })));
    let Some(Action::Fence { fence }) = j.poll_action(at(0)) else {
        panic!("expected Fence")
    };
    assert!(matches!(j.poll_action(at(10)), Some(Action::Vnc { .. })));
    j.handle_vm_stopped();
    j.handle_vm_resumed();
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(20)) else {
        panic!("expected Status")
    };
    j.handle_status(probe, true, false).unwrap();
    let Some(Action::Fence { fence }) = j.poll_action(at(20)) else {
        panic!("second Fence")
    };
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(20)) else {
        panic!("second Status")
    };
    j.handle_status(probe, true, false).unwrap();
    assert_eq!(j.stats().uncertain, 2);
    assert_eq!(j.stats().delivered, 0);
}

/// The migration ends; the fast lane stays closed until a `query-status` asked from then on
/// says the VM runs (a `STOP` may still be on its way).
fn end_migration(j: &mut Journal, now: Instant) {
    j.handle_migration_ended();
    assert!(
        !j.fast_lane_open(),
        "not before the run state is asked again"
    );
    let Some(Action::Status { probe }) = j.poll_action(now) else {
        panic!("expected the run-state probe")
    };
    j.handle_status(probe, true, false).unwrap();
}

#[test]
fn a_stop_still_on_its_way_when_the_migration_ends_keeps_the_fast_lane_closed() {
    let mut j = Journal::new(Config::default(), true);
    j.handle_migration_started();
    j.handle_migration_ended();
    let Some(Action::Status { probe }) = j.poll_action(at(0)) else {
        panic!("expected the run-state probe")
    };
    // QEMU sends the STOP before its reply to a later query-status.
    j.handle_vm_stopped();
    j.handle_status(probe, false, true).unwrap();
    assert!(!j.fast_lane_open(), "the VM is stopped");
    j.push(V, key(true, 0), at(1)).unwrap();
    assert!(
        !matches!(j.poll_action(at(1)), Some(Action::Vnc { .. })),
        "nothing into QEMU's VNC, which drops input while the VM is stopped"
    );
    assert_eq!(j.held(), 1, "held until the VM runs");
}

#[test]
fn a_release_in_the_same_write_as_its_press_is_judged_by_that_press() {
    // Press, release, and a second release of a key no longer down, pushed together: the
    // first two share a fast-lane write; QEMU's VNC server would drop the third (no press
    // seen), so it goes through QMP. (A viewer's pace of one event at a time: the three
    // are a burst.)
    let config = Config {
        max_paced_per_batch: 4,
        live_burst: 1,
        ..Config::default()
    };
    let mut j = Journal::new(config, true);
    for down in [true, false, false] {
        j.push(V, key(down, 0), at(0)).unwrap();
    }
    let Some(Action::Vnc { events }) = j.poll_action(at(0)) else {
        panic!("expected Vnc")
    };
    assert_eq!(
        events.len(),
        2,
        "press and release in one write: {events:?}"
    );
    assert_eq!(
        lanes(&run_until_idle(&mut j, at(0))),
        [(Lane::Qmp, 3)],
        "the stray release"
    );
}

/// QEMU with a keymap (`-k`) picks a fast-lane key by the modifiers its VNC server saw: a key
/// typed while Shift is down through QMP goes on QMP too, until the Shift is released.
#[test]
fn keys_follow_a_modifier_pressed_on_qmp_onto_qmp_until_it_is_released() {
    let shift = |down| InputEvent::Key {
        down,
        keysym: 0xffe1,
        scancode: Some(0x2a),
    };
    let mut j = Journal::new(Config::default(), true);
    j.handle_migration_started();
    j.handle_vm_stopped();
    j.push(V, shift(true), at(0)).unwrap();
    let mut d = Journal::restore(j.freeze(), at(10)).unwrap();
    d.handle_vm_resumed();
    let mut sent = run_until_idle(&mut d, at(10));
    let mut t = 1000;
    for event in [
        key(true, 1),
        key(false, 1),
        shift(false),
        key(true, 2),
        key(false, 2),
    ] {
        d.push(V, event, at(t)).unwrap();
        sent.extend(run_until_idle(&mut d, at(t)));
        t += 100;
    }
    let on = |seq| sent.iter().find(|s| s.1 == seq).map(|s| s.0);
    for seq in 1..=4 {
        assert_eq!(on(seq), Some(Lane::Qmp), "seq {seq}: {:?}", lanes(&sent));
    }
    assert_eq!(on(5), Some(Lane::Fast), "{:?}", lanes(&sent));
}
