//! Rule 8: the gate on the guest's clock. At most `GUEST_UNREAD` key/button events wait
//! unread (sent, or taken by QEMU with no vCPU time since); a guest that runs reads them, one
//! that does not holds input back, until `GUEST_STALL`.

use super::*;

/// The vCPU threads ran `n` × [`GUEST_RAN`] in all, switched in `n` times.
fn vcpu_ran(n: u64) -> VcpuTime {
    VcpuTime {
        on_cpu: GUEST_RAN * u32::try_from(n).unwrap(),
        switch_ins: n,
    }
}

/// A journal (the VM `running` or not) whose gate is on, sampled twice at 0 ms with the
/// vCPUs at `n` and then `n + 1` × [`GUEST_RAN`]: the taken-over queue counted full at the
/// first sample is read at the second.
fn clocked(running: bool, n: u64) -> Journal {
    let mut j = Journal::new(Config::default(), running);
    j.observe_guest_runtime(vcpu_ran(n), at(0));
    j.observe_guest_runtime(vcpu_ran(n + 1), at(0));
    j
}

/// Pushes a key every 2.25 ms (445 events/s) and runs the journal at each push, every reply
/// at once; after each run the guest's vCPU threads ran `ran(i)` × [`GUEST_RAN`] in all.
/// Returns what went.
fn type_keys(j: &mut Journal, n: u32, ran: impl Fn(u32) -> u64) -> Vec<(Lane, u64, Instant)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let now = at(0) + Duration::from_micros(2250) * i;
        j.push(V, key(i % 2 == 0, 1), now).unwrap();
        sent.extend(run(j, now));
        j.observe_guest_runtime(vcpu_ran(ran(i)), now);
        sent.extend(run(j, now));
    }
    sent
}

#[test]
fn a_guest_that_runs_takes_live_keys_as_they_come() {
    let mut j = clocked(true, 0);
    let sent = type_keys(&mut j, 400, |i| 1_000 * u64::from(i + 1));
    assert_eq!(sent.len(), 400);
    for (i, (lane, seq, t)) in sent.iter().enumerate() {
        let pushed = at(0) + Duration::from_micros(2250) * i as u32;
        assert_eq!(
            (*lane, *seq, *t),
            (Lane::Fast, i as u64 + 1, pushed),
            "key {i} waited"
        );
    }
}

#[test]
fn a_guest_that_does_not_run_gets_no_more_than_its_queue_holds() {
    let mut j = clocked(true, 499);
    let sent = type_keys(&mut j, 40, |_| 500);
    assert_eq!(sent.len() as u64, GUEST_UNREAD, "{sent:?}");
    assert_eq!(j.held(), 40 - GUEST_UNREAD as usize);
    // vCPU time sampled again without growth reads nothing...
    let later = at(200);
    j.observe_guest_runtime(vcpu_ran(500), later);
    assert!(run(&mut j, later).is_empty());
    assert!(j.wants_guest_runtime(), "the shell keeps sampling");
    // ...the vCPUs running read it all, and the next events follow.
    j.observe_guest_runtime(vcpu_ran(501), later);
    let next = run_until_idle(&mut j, later);
    assert!(!next.is_empty(), "the held keys go once the guest ran");
    assert!(next.len() as u64 <= GUEST_UNREAD, "{next:?}");
}

#[test]
fn vcpu_time_before_qemu_took_the_events_does_not_count_as_reading_them() {
    let mut j = clocked(true, 99);
    for i in 0..GUEST_UNREAD {
        j.push(V, key(i % 2 == 0, 1), at(0)).unwrap();
    }
    let first = run_until_idle(&mut j, at(0));
    assert_eq!(first.len() as u64, GUEST_UNREAD);
    j.push(V, key(true, 2), at(30)).unwrap();
    // The first sample after QEMU took them is their baseline, however much the vCPUs ran
    // before it.
    j.observe_guest_runtime(vcpu_ran(9_000), at(30));
    assert!(
        run(&mut j, at(30)).is_empty(),
        "no vCPU time since they were taken"
    );
    j.observe_guest_runtime(vcpu_ran(9_001), at(31));
    assert_eq!(
        lanes(&run(&mut j, at(31))),
        [(Lane::Fast, GUEST_UNREAD + 1)]
    );
}

#[test]
fn a_guest_stalled_for_good_no_longer_holds_input_back() {
    let mut j = clocked(true, 0);
    let sent = type_keys(&mut j, 20, |_| 1);
    assert_eq!(sent.len() as u64, GUEST_UNREAD);
    let stalled = at(0) + GUEST_STALL + Duration::from_millis(50);
    j.observe_guest_runtime(vcpu_ran(0), stalled);
    let next = run_until_idle(&mut j, stalled);
    assert!(!next.is_empty(), "input goes on after GUEST_STALL");
}

#[test]
fn without_the_guests_clock_input_goes_as_before() {
    let mut j = Journal::new(Config::default(), true);
    let mut sent = Vec::new();
    for i in 0..40u32 {
        let now = at(0) + Duration::from_micros(2250) * i;
        j.push(V, key(i % 2 == 0, 1), now).unwrap();
        sent.extend(run(&mut j, now));
    }
    assert_eq!(sent.len(), 40);
    assert!(!j.wants_guest_runtime());
}

#[test]
fn a_backlog_through_qmp_waits_for_the_guest_too() {
    let mut j = clocked(false, 0);
    for i in 0..30u32 {
        j.push(V, key(i % 2 == 0, 1), at(0)).unwrap();
    }
    j.handle_vm_resumed();
    // The VM just resumed: held input replays through QMP until REPLAY_SETTLE.
    let sent = run_until_idle(&mut j, at(10));
    assert!(sent.iter().all(|(l, _, _)| *l == Lane::Qmp), "{sent:?}");
    assert_eq!(sent.len() as u64, GUEST_UNREAD, "{sent:?}");
}

/// A console that takes over at a migration finds the guest's queue as the source left it
/// (QEMU migrates it, with up to `GUEST_UNREAD` events the source sent unread): until the
/// guest's vCPUs run here, nothing goes.
#[test]
fn a_taken_over_guest_s_queue_counts_as_full_until_its_vcpus_run() {
    let state = {
        let mut source = Journal::new(Config::default(), true);
        source.freeze_delivery();
        for i in 0..20u32 {
            source.push(V, key(i % 2 == 0, 1), at(0)).unwrap();
        }
        source.freeze()
    };
    let mut j = Journal::restore(state, at(10)).unwrap();
    j.handle_vm_resumed();
    j.observe_guest_runtime(vcpu_ran(7_000), at(10));
    assert!(
        run_until_idle(&mut j, at(10)).is_empty(),
        "the vCPUs have not run here yet"
    );
    j.observe_guest_runtime(vcpu_ran(7_001), at(11));
    let sent = run_until_idle(&mut j, at(11));
    assert!(
        !sent.is_empty() && sent.len() as u64 <= GUEST_UNREAD,
        "{sent:?}"
    );
}

/// A vCPU thread that wakes for QEMU's lock and loses it again runs no guest code: switched
/// in but microseconds on a CPU, it reads nothing.
#[test]
fn a_vcpu_thread_switched_in_for_microseconds_reads_nothing() {
    let mut j = Journal::new(Config::default(), true);
    let vcpu = |us: u64, switch_ins: u64| VcpuTime {
        on_cpu: Duration::from_micros(us),
        switch_ins,
    };
    j.observe_guest_runtime(vcpu(0, 0), at(0));
    j.observe_guest_runtime(vcpu(600, 1), at(0));
    for i in 0..GUEST_UNREAD {
        j.push(V, key(i % 2 == 0, 1), at(0)).unwrap();
    }
    assert_eq!(run_until_idle(&mut j, at(0)).len() as u64, GUEST_UNREAD);
    j.push(V, key(true, 2), at(1)).unwrap();
    j.observe_guest_runtime(vcpu(600, 1), at(1));
    j.observe_guest_runtime(vcpu(620, 40), at(50));
    assert!(
        run(&mut j, at(50)).is_empty(),
        "40 wakes of 0.5 µs are no guest code run"
    );
    j.observe_guest_runtime(vcpu(1_100, 41), at(51));
    assert_eq!(run(&mut j, at(51)).len(), 1);
}
