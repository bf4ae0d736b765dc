//! Rules 3 to 6: held events, pacing, bounds, freeze and restore.

use super::*;
#[test]
fn vm_not_running_holds_the_batch_and_later_events_in_order() {
    let mut j = Journal::new(Config::default(), true);
    j.handle_migration_started();
    for (i, t) in [(0, 0), (1, 10), (2, 20)] {
        j.push(V, key(true, i), at(t)).unwrap();
    }
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(0)) else {
        panic!("expected Qmp")
    };
    assert_eq!(events[0].seq, Some(Seq(1)));
    j.handle_vm_stopped();
    j.handle_qmp_reply(batch, Outcome::VmNotRunning).unwrap();
    assert_eq!(j.stats().held, 3);
    assert_eq!(j.poll_action(at(30)), None);
    assert_eq!(
        j.poll_timeout(),
        None,
        "nothing is waiting on time while stopped"
    );
    j.handle_vm_resumed();
    let sent = lanes(&run_until_idle(&mut j, at(40)));
    assert_eq!(sent, [(Lane::Qmp, 1), (Lane::Qmp, 2), (Lane::Qmp, 3)]);
    assert_eq!(j.stats().delivered, 3);
}

#[test]
fn a_refused_batch_drops_its_motion_and_resends_its_keys_without_blocking() {
    let mut j = Journal::new(Config::default(), true);
    j.handle_migration_started();
    j.push(V, InputEvent::Motion { x: 5, y: 6 }, at(0)).unwrap();
    j.push(V, btn(true), at(0)).unwrap();
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(0)) else {
        panic!("expected Qmp")
    };
    assert_eq!(events.len(), 2, "motion and button in one batch");
    j.handle_qmp_reply(
        batch,
        Outcome::Failed("Input handler not found for event type abs".into()),
    )
    .unwrap();
    assert_eq!(j.stats().qmp_failed, 1);
    assert_eq!(j.stats().held, 1, "the button is held again");
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(10)) else {
        panic!("the button is re-sent at once, not held until a RESUME")
    };
    assert_eq!(events.len(), 1, "without the motion: {events:?}");
    assert_eq!(events[0].seq, Some(Seq(1)));
    j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
    assert_eq!(j.stats().delivered, 1);
    assert_eq!(j.stats().dropped, 0);
}

#[test]
fn an_event_refused_twice_is_dropped_and_later_input_flows() {
    let mut j = Journal::new(Config::default(), true);
    j.handle_migration_started();
    j.push(V, key(true, 0), at(0)).unwrap();
    for t in [0, 10] {
        let Some(Action::Qmp { batch, events }) = j.poll_action(at(t)) else {
            panic!("expected Qmp")
        };
        assert_eq!(events[0].seq, Some(Seq(1)));
        j.handle_qmp_reply(batch, Outcome::Failed("QMP closed".into()))
            .unwrap();
    }
    assert_eq!(j.stats().qmp_failed, 2);
    assert_eq!(j.stats().dropped, 1);
    assert_eq!(j.stats().held, 0);
    j.push(V, key(false, 0), at(20)).unwrap();
    assert_eq!(lanes(&run(&mut j, at(20))), [(Lane::Qmp, 2)]);
    assert_eq!(j.stats().delivered, 1);
}

#[test]
fn held_events_replay_at_half_the_viewer_gaps() {
    let mut j = Journal::new(Config::default(), false);
    for (i, t) in [(0, 0), (1, 1), (2, 100), (3, 5000)] {
        j.push(V, key(true, i), at(t)).unwrap();
    }
    j.handle_vm_resumed();
    let sent = run_until_idle(&mut j, at(10_000));
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1].2 - w[0].2).collect();
    // 1 ms, 99 ms, and 4900 ms capped at max_gap (500 ms), each halved: twice the pace
    // (never less than half a live_interval, 0.4 ms, apart).
    assert_eq!(
        gaps,
        [
            Duration::from_micros(500),
            Duration::from_micros(49_500),
            Duration::from_millis(250)
        ]
    );
}

#[test]
fn a_batch_never_holds_more_keys_than_the_ps2_queue_takes() {
    let mut j = Journal::new(Config::default(), false);
    j.handle_migration_started();
    for i in 0..10 {
        j.push(V, key(i % 2 == 0, 0), at(0)).unwrap();
    }
    j.handle_vm_resumed();
    let mut sizes = Vec::new();
    for now in (0..10).map(|i| at(2 * i)) {
        // (Nothing is due in between: the bucket lets one key through per key_drain.)
        while let Some(a) = j.poll_action(now) {
            let Action::Qmp { batch, events } = a else {
                panic!("expected Qmp")
            };
            sizes.push(events.len());
            j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
        }
    }
    // One key per key_drain (2 ms), one per write.
    assert_eq!(sizes, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
}

#[test]
fn backlog_is_bounded_and_motion_coalesces_in_order_with_clicks() {
    let config = Config {
        max_held: 3,
        ..Config::default()
    };
    let mut j = Journal::new(config, false);
    let motion = |x| InputEvent::Motion { x, y: x };
    j.push(V, motion(10), at(0)).unwrap();
    j.push(V, btn(true), at(1)).unwrap();
    for x in 11..1000 {
        assert_eq!(j.push(V, motion(x), at(2)), Ok(None));
    }
    j.push(V, btn(false), at(3)).unwrap();
    j.push(V, key(true, 0), at(4)).unwrap();
    assert_eq!(
        j.push(V, key(false, 0), at(5)),
        Err(JournalFull { held: 3, max: 3 })
    );
    assert_eq!(j.stats().refused, 1);
    assert_eq!(
        j.pending.len(),
        5,
        "motion coalesced into one entry between the clicks"
    );
    // (QMP only: the fast lane's messages are no InputEvents to compare.)
    j.handle_migration_started();
    j.handle_vm_resumed();
    let mut events = Vec::new();
    let mut now = at(10);
    loop {
        while let Some(a) = j.poll_action(now) {
            let Action::Qmp { batch, events: e } = a else {
                panic!("expected Qmp")
            };
            events.extend(e.into_iter().map(|e| e.event));
            j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
        }
        match j.poll_timeout() {
            Some(t) => now = t,
            None => break,
        }
    }
    // During a migration every click's release waits for a re-sync where the pointer went
    // (Config::button_settle).
    assert_eq!(
        events,
        [
            motion(10),
            btn(true),
            motion(999),
            InputEvent::Resync,
            btn(false),
            key(true, 0)
        ]
    );
}

#[test]
fn freeze_and_restore_hold_until_resume_and_release_fast_keys_through_qmp() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    assert_eq!(lanes(&run(&mut j, at(0))), [(Lane::Fast, 1)]);
    j.handle_migration_started();
    j.handle_vm_stopped();
    j.push(V, key(true, 1), at(10)).unwrap();
    j.push(V, key(false, 0), at(20)).unwrap();
    run(&mut j, at(20));
    assert!(j.is_settled());
    let json = serde_json::to_string(&j.freeze()).unwrap();
    let state: JournalState = serde_json::from_str(&json).unwrap();
    assert_eq!(state.held(), 2);
    assert!(state.uncertain().is_empty());
    let mut d = Journal::restore(state, at(30)).unwrap();
    assert_eq!(
        d.poll_action(at(30)),
        None,
        "a restored journal holds until RESUME"
    );
    d.handle_vm_resumed();
    let sent = lanes(&run_until_idle(&mut d, at(40)));
    assert_eq!(sent, [(Lane::Qmp, 2), (Lane::Qmp, 3)]);
    // Key 1 was pressed through QMP here: its release must not take the fast lane.
    assert!(d.fast_lane_open());
    assert_eq!(d.push(V, key(false, 1), at(100)), Ok(Some(Seq(4))));
    assert_eq!(lanes(&run_until_idle(&mut d, at(100))), [(Lane::Qmp, 4)]);
    assert_eq!(d.stats().pushed, 4);
}

#[test]
fn freeze_while_in_flight_records_uncertain_never_held() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    j.poll_action(at(0));
    j.handle_migration_started();
    j.push(V, key(true, 1), at(10)).unwrap();
    let Some(Action::Fence { fence }) = j.poll_action(at(10)) else {
        panic!("expected Fence")
    };
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(10)) else {
        panic!("expected Status")
    };
    j.handle_status(probe, true, false).unwrap();
    assert!(matches!(j.poll_action(at(10)), Some(Action::Qmp { .. })));
    let state = j.freeze();
    assert_eq!(state.held(), 0);
    assert_eq!(
        state.uncertain(),
        [SeqRange {
            first: Seq(2),
            last: Seq(2)
        }]
    );
    let mut d = Journal::restore(state, at(20)).unwrap();
    assert_eq!(
        d.poll_uncertain(),
        Some(SeqRange {
            first: Seq(2),
            last: Seq(2)
        })
    );
    assert_eq!(d.stats().uncertain, 1);
}

#[test]
fn restore_refuses_other_versions_and_disordered_state() {
    let j = Journal::new(Config::default(), false);
    let json = serde_json::to_string(&j.freeze()).unwrap();
    let other: JournalState =
        serde_json::from_str(&json.replace("\"version\":1", "\"version\":9")).unwrap();
    assert_eq!(
        Journal::restore(other, at(0)).unwrap_err(),
        RestoreError::Version {
            found: 9,
            expected: 1
        }
    );
    let mut j = Journal::new(Config::default(), false);
    j.push(V, key(true, 0), at(0)).unwrap();
    let json = serde_json::to_string(&j.freeze()).unwrap();
    let bad: JournalState =
        serde_json::from_str(&json.replace("\"next_seq\":2", "\"next_seq\":1")).unwrap();
    assert!(matches!(
        Journal::restore(bad, at(0)),
        Err(RestoreError::Invalid(_))
    ));
}

#[test]
fn replies_for_unknown_ids_are_errors() {
    let mut j = Journal::new(Config::default(), true);
    assert_eq!(
        j.handle_qmp_reply(BatchId(9), Outcome::Delivered),
        Err(JournalError::UnknownBatch(BatchId(9)))
    );
    assert_eq!(
        j.handle_fence_answered(FenceId(9)),
        Err(JournalError::UnknownFence(FenceId(9)))
    );
    assert_eq!(
        j.handle_status(ProbeId(9), true, false),
        Err(JournalError::UnknownProbe(ProbeId(9)))
    );
}

#[test]
fn frozen_delivery_confirms_in_flight_events_but_sends_nothing_new() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    // The fast lane is open: the key leaves on it, unconfirmed.
    assert!(matches!(j.poll_action(at(0)), Some(Action::Vnc { .. })));
    j.push(V, key(true, 1), at(1)).unwrap();
    j.freeze_delivery();
    assert!(!j.fast_lane_open());
    assert!(!j.is_settled());
    let Some(Action::Fence { fence }) = j.poll_action(at(10)) else {
        panic!("the unconfirmed key still gets its fence")
    };
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(10)) else {
        panic!("and its probe")
    };
    j.handle_status(probe, true, false).unwrap();
    assert_eq!(j.poll_action(at(20)), None, "nothing new is delivered");
    assert_eq!(j.poll_timeout(), None);
    assert!(j.is_settled());
    let state = j.freeze();
    assert_eq!(state.held(), 1);
    assert!(state.uncertain().is_empty());
    assert_eq!(j.stats().delivered, 1);
    // An aborted migration: the same journal carries on.
    j.thaw_delivery();
    // Held events leave on QMP (the fast lane reopens once nothing is held).
    assert_eq!(lanes(&run_until_idle(&mut j, at(30))), [(Lane::Qmp, 2)]);
}

#[test]
fn frozen_delivery_holds_a_batch_refused_in_flight() {
    let mut j = Journal::new(Config::default(), true);
    j.handle_migration_started();
    j.push(V, key(true, 0), at(0)).unwrap();
    let Some(Action::Qmp { batch, .. }) = j.poll_action(at(0)) else {
        panic!("expected Qmp")
    };
    j.push(V, key(true, 1), at(5)).unwrap();
    j.freeze_delivery();
    assert!(!j.is_settled(), "a batch is in flight");
    j.handle_vm_stopped();
    j.handle_qmp_reply(batch, Outcome::VmNotRunning).unwrap();
    assert!(j.is_settled());
    let state = j.freeze();
    assert_eq!(state.held(), 2, "the refused batch is held again, in front");
    assert!(state.uncertain().is_empty());
    let mut k = Journal::restore(state, at(10)).unwrap();
    k.handle_vm_resumed();
    assert_eq!(
        lanes(&run_until_idle(&mut k, at(10))),
        [(Lane::Qmp, 1), (Lane::Qmp, 2)]
    );
}

#[test]
fn frozen_push_takes_input_beyond_max_held_up_to_what_restore_accepts() {
    let config = Config {
        max_held: 3,
        ..Config::default()
    };
    let mut j = Journal::new(config, false);
    for i in 0..3 {
        j.push(V, key(true, i), at(0)).unwrap();
    }
    assert!(
        j.push(V, key(true, 3), at(0)).is_err(),
        "full while delivering"
    );
    j.freeze_delivery();
    // 2 * 3 + 1 = 7 entries of any kind.
    for i in 3..7 {
        j.push(V, key(true, i), at(0)).unwrap();
    }
    assert_eq!(j.held(), 7);
    assert!(j.push(V, key(true, 7), at(0)).is_err());
    assert!(
        j.push(V, InputEvent::Motion { x: 1, y: 1 }, at(0)).is_err(),
        "motion that would not coalesce is refused too"
    );
    let state = j.freeze();
    assert_eq!(state.held(), 7);
    let mut k = Journal::restore(state, at(1)).expect("restore accepts what a frozen push took");
    k.handle_vm_resumed();
    let seqs: Vec<u64> = run_until_idle(&mut k, at(1)).iter().map(|s| s.1).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}

#[test]
fn a_late_send_does_not_make_later_live_keys_wait_out_their_gaps() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    assert_eq!(run(&mut j, at(0)).len(), 1);
    // The next key is sent late (the console was busy): 290 ms after its push.
    j.push(V, key(true, 1), at(10)).unwrap();
    assert_eq!(run(&mut j, at(300)).len(), 1);
    // A key pushed 300 ms after that one goes out at once: its gap is no reason to wait
    // (waiting it out from the late send would add the 290 ms lag to every key after).
    let seq = j.push(V, key(true, 2), at(310)).unwrap().unwrap();
    let sent = run(&mut j, at(310));
    assert_eq!(sent.len(), 1, "the live key waited: {:?}", j.poll_timeout());
    assert_eq!(sent[0].1, seq.0);
}

#[test]
fn held_input_replays_through_qmp_until_the_vm_has_run_a_while_then_on_the_fast_lane() {
    // A manager's `stop`/`cont` blips: held input right after a `cont` goes through QMP, which
    // stays exact if the next `stop` comes at once; once the VM has run `REPLAY_SETTLE`, the
    // rest replays on the fast lane, clocked by QEMU's answers to the fences (QEMU handles
    // what waits in its VNC socket all at once after its main loop stalled).
    let mut j = Journal::new(Config::default(), false);
    let n = 3000u16;
    for i in 0..n {
        j.push(V, key(i % 2 == 0, i / 2 % 50), at(u64::from(i)))
            .unwrap();
    }
    j.handle_vm_resumed();
    let settle = u64::try_from(REPLAY_SETTLE.as_millis()).unwrap();
    let mut early = Vec::new();
    for ms in 4000..4000 + settle {
        early.extend(run(&mut j, at(ms)));
    }
    assert!(!early.is_empty(), "the backlog drains meanwhile");
    assert!(
        early.iter().all(|(lane, _, _)| *lane == Lane::Qmp),
        "through QMP while the VM has run less than REPLAY_SETTLE: {early:?}"
    );
    let (mut written, mut fences, mut qmp) = (0, Vec::new(), 0);
    for ms in 4000 + settle..6000 {
        while let Some(a) = j.poll_action(at(ms)) {
            match a {
                Action::Vnc { events } => written += events.len(),
                Action::Fence { fence } => fences.push(fence),
                Action::Qmp { batch, events } => {
                    qmp += events.iter().filter(|e| e.seq.is_some()).count();
                    j.handle_qmp_reply(batch, Outcome::Delivered).unwrap()
                }
                Action::Status { probe } => j.handle_status(probe, true, false).unwrap(),
            }
        }
    }
    assert!(written > 0, "then the fast lane");
    assert!(
        written <= 4,
        "a window's worth while QEMU does not answer: {written}"
    );
    assert_eq!(fences.len(), 1);
    j.handle_fence_answered(fences[0]).unwrap();
    let rest = run_until_idle(&mut j, at(6000));
    assert!(
        rest.iter().all(|(lane, _, _)| *lane == Lane::Fast),
        "{rest:?}"
    );
    assert!(qmp <= 1, "at most the release of a press QMP sent");
    assert_eq!(
        early.len() + qmp + written + rest.len(),
        usize::from(n),
        "each once"
    );
}

#[test]
fn a_restored_journal_knows_the_keys_down_whether_their_press_went_or_waits() {
    let mut j = Journal::new(Config::default(), true);
    j.push(V, key(true, 0), at(0)).unwrap();
    j.push(V, key(true, 1), at(0)).unwrap();
    run(&mut j, at(0));
    j.handle_migration_started();
    j.handle_vm_stopped();
    // Held: key 1 released, key 2 pressed, key 3 pressed and released.
    for (down, k) in [(false, 1), (true, 2), (true, 3), (false, 3)] {
        j.push(V, key(down, k), at(10)).unwrap();
    }
    run(&mut j, at(10));
    let d = Journal::restore(j.freeze(), at(20)).unwrap();
    assert_eq!(d.keys_down(), [0x10, 0x12], "keys 0 (sent) and 2 (held)");
}
