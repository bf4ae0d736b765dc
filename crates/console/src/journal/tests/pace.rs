//! Rule 7: input at the viewer's pace. Live input goes as it comes; a burst waits only for
//! the PS/2 queue; a backlog replays at twice the pace it was typed at and the fast lane
//! takes it as soon as nothing is in flight.

use super::*;
use proptest::prelude::*;

/// Keys as typing makes them: Shift down, a letter down and up, Shift up, a plain letter
/// down and up; key 5 is Shift.
fn typed(i: usize) -> InputEvent {
    const PATTERN: [(bool, u16); 6] = [
        (true, 5),
        (true, 0),
        (false, 0),
        (false, 5),
        (true, 1),
        (false, 1),
    ];
    let (down, k) = PATTERN[i % PATTERN.len()];
    key(down, k)
}

/// What went to QEMU, by seq: lane and send time.
type Sent = BTreeMap<u64, (Lane, Instant)>;

/// Runs the journal (every reply at once) until `until`, waking at each `poll_timeout`.
fn run_to(j: &mut Journal, now: &mut Instant, until: Instant, sent: &mut Sent) {
    loop {
        for (lane, seq, t) in run(j, *now) {
            assert!(
                sent.insert(seq, (lane, t)).is_none(),
                "seq {seq} sent twice"
            );
        }
        match j.poll_timeout() {
            Some(t) if t <= until => *now = t,
            _ => break,
        }
    }
    *now = until.max(*now);
}

#[test]
fn live_keys_at_445_a_second_go_as_they_come() {
    let mut j = Journal::new(Config::default(), true);
    for i in 0..3000u32 {
        let pushed = at(0) + Duration::from_micros(2247) * i;
        let seq = j.push(V, typed(i as usize), pushed).unwrap().unwrap();
        let sent = run(&mut j, pushed);
        assert_eq!(sent, [(Lane::Fast, seq.0, pushed)], "key {i} waited");
    }
    assert_eq!(j.stats().delivered, 3000);
}

#[test]
fn keys_that_arrive_together_beyond_the_viewers_burst_go_one_per_key_drain() {
    let mut j = Journal::new(Config::default(), true);
    for i in 0..10 {
        j.push(V, typed(i), at(0)).unwrap();
    }
    let sent = run_until_idle(&mut j, at(0));
    let times: Vec<u128> = sent.iter().map(|s| (s.2 - at(0)).as_micros()).collect();
    // The viewer's burst (live_burst, 2) half a live_interval apart, then the PS/2 bucket: it
    // owes one key_drain after the second.
    assert_eq!(
        times,
        [0, 400, 2400, 4400, 6400, 8400, 10400, 12400, 14400, 16400]
    );
    assert!(sent.iter().all(|s| s.0 == Lane::Fast));
}

#[test]
fn a_stop_s_backlog_replays_at_twice_the_typing_pace_then_the_fast_lane_reopens() {
    // A viewer typing 150 events/s (twice that is within the PS/2 bucket's 500 keys/s); the
    // VM stops for a second.
    let gap = Duration::from_micros(6667);
    let (stop, resume) = (at(1000), at(2000));
    let mut j = Journal::new(Config::default(), true);
    let mut now = at(0);
    let mut sent = Sent::new();
    let mut pushed = Vec::new();
    let mut stopped = false;
    for i in 0..1000 {
        let t = at(0) + gap * i;
        if !stopped && t >= stop {
            run_to(&mut j, &mut now, stop, &mut sent);
            j.handle_vm_stopped();
            stopped = true;
        }
        if stopped && t >= resume && now < resume {
            run_to(&mut j, &mut now, resume, &mut sent);
            j.handle_vm_resumed();
        }
        run_to(&mut j, &mut now, t, &mut sent);
        let seq = j.push(V, typed(i as usize), t).unwrap().unwrap();
        pushed.push((seq.0, t));
    }
    run_to(&mut j, &mut now, at(10_000), &mut sent);
    assert_eq!(sent.len(), pushed.len(), "every key sent once");
    let in_window = |from: Instant, to: Instant, t: Instant| from <= t && t < to;
    let arrived = pushed
        .iter()
        .filter(|p| in_window(resume, resume + Duration::from_millis(500), p.1))
        .count();
    let drained = sent
        .values()
        .filter(|s| in_window(resume, resume + Duration::from_millis(500), s.1))
        .count();
    assert!(
        drained >= 2 * arrived,
        "{drained} sent while {arrived} arrived, in the half second after RESUME"
    );
    for &(seq, t) in &pushed {
        let (_, s) = sent[&seq];
        if t < stop || t >= resume + (resume - stop) {
            assert_eq!(s, t, "seq {seq} is live: no lag");
        }
    }
    fast_after(&pushed, &sent, resume + (resume - stop)).unwrap();
}

/// Every key pushed from `from` on (the backlog has drained by then) goes on the fast lane,
/// but for releases of presses that went before it (QEMU's VNC server must see a press to
/// take its release) or through QMP, and what shares such a release's QMP batch.
fn fast_after(pushed: &[(u64, Instant)], sent: &Sent, from: Instant) -> Result<(), String> {
    let mut pressed: BTreeMap<u16, (Lane, Instant)> = BTreeMap::new();
    let mut previous: Option<(Lane, Instant)> = None;
    for (i, &(seq, t)) in pushed.iter().enumerate() {
        let (lane, s) = sent[&seq];
        let InputEvent::Key {
            down,
            scancode: Some(code),
            ..
        } = typed(i)
        else {
            unreachable!("typed() makes keys")
        };
        let exempt = (!down
            && pressed
                .get(&code)
                .is_some_and(|&(l, ps)| l == Lane::Qmp || ps < from))
            || previous == Some((Lane::Qmp, s));
        previous = Some((lane, s));
        if t >= from && !exempt && lane != Lane::Fast {
            return Err(format!(
                "seq {seq}, pushed after the catch-up, not on the fast lane"
            ));
        }
        if down {
            pressed.insert(code, (lane, s));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Stream {
    /// Microseconds between two pushes (at least 2 x key_drain, so that twice the pace is
    /// within the PS/2 bucket's).
    gaps: Vec<u64>,
    /// The VM stops just before this push.
    stop_before: usize,
    /// For this long, µs.
    stop_for: u64,
    /// A migration is announced before the stop and ends after the VM runs again.
    migration: bool,
    /// The journal is frozen and restored (a co-migration) while the VM is stopped.
    moved: bool,
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        proptest::collection::vec(prop_oneof![6_000u64..9_000, 6_000u64..30_000], 20..400),
        0usize..20,
        1u64..1_500_000,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(gaps, stop_before, stop_for, migration, moved)| Stream {
            gaps,
            stop_before,
            stop_for,
            migration,
            moved,
        })
}

/// Plays `s`; returns what was pushed (seq, time) and sent, and when the VM ran again.
fn play(s: &Stream) -> (Vec<(u64, Instant)>, Sent, Instant, Instant) {
    let mut j = Journal::new(Config::default(), true);
    let mut now = at(0);
    let mut sent = Sent::new();
    let mut pushed = Vec::new();
    let mut t = at(0);
    let mut stop = None;
    let mut resume = None;
    for (i, &gap) in s.gaps.iter().enumerate() {
        t += Duration::from_micros(gap);
        if i == s.stop_before {
            run_to(&mut j, &mut now, t, &mut sent);
            if s.migration {
                j.handle_migration_started();
                run_to(&mut j, &mut now, t, &mut sent);
            }
            j.handle_vm_stopped();
            stop = Some(t);
            if s.moved {
                run_to(&mut j, &mut now, t, &mut sent);
                assert!(j.is_settled());
                j = Journal::restore(j.freeze(), t).unwrap();
            }
        }
        if let (Some(stopped), None) = (stop, resume) {
            let r = stopped + Duration::from_micros(s.stop_for);
            if t >= r {
                run_to(&mut j, &mut now, r, &mut sent);
                j.handle_vm_resumed();
                if s.migration || s.moved {
                    j.handle_migration_ended();
                }
                resume = Some(r);
            }
        }
        run_to(&mut j, &mut now, t, &mut sent);
        let seq = j.push(V, typed(i), t).unwrap().unwrap();
        pushed.push((seq.0, t));
    }
    let stop = stop.unwrap_or(t);
    let resume = match resume {
        Some(r) => r,
        None => {
            let r = stop + Duration::from_micros(s.stop_for);
            run_to(&mut j, &mut now, r, &mut sent);
            j.handle_vm_resumed();
            if s.migration || s.moved {
                j.handle_migration_ended();
            }
            r
        }
    };
    run_to(&mut j, &mut now, t + Duration::from_secs(10), &mut sent);
    assert!(j.fast_lane_open(), "the fast lane reopened");
    (pushed, sent, stop, resume)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn live_input_is_never_delayed_and_a_backlog_drains_at_twice_its_pace(s in stream()) {
        let (pushed, sent, stop, resume) = play(&s);
        // Exactly once, in order.
        let seqs: Vec<u64> = sent.keys().copied().collect();
        let expected: Vec<u64> = pushed.iter().map(|p| p.0).collect();
        prop_assert_eq!(&seqs, &expected);
        let mut order: Vec<(Instant, u64)> = sent.iter().map(|(q, s)| (s.1, *q)).collect();
        order.sort();
        prop_assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "sent out of order");
        let held_for = resume - stop;
        let mut previous: Option<(Instant, Instant)> = None;
        // Back on the fast lane once the backlog drained.
        prop_assert_eq!(fast_after(&pushed, &sent, resume + held_for), Ok(()));
        for &(seq, t) in &pushed {
            let (_, s) = sent[&seq];
            // The viewer's own pace passes untouched.
            if t < stop || t >= resume + held_for {
                prop_assert_eq!(s, t, "seq {} pushed at {:?} lagged", seq, t - at(0));
            }
            // While behind, each event follows the one before at most half its gap later:
            // the backlog drains at least twice as fast as it was typed.
            if let Some((pt, ps)) = previous {
                if s > t && ps >= resume {
                    prop_assert!(s - ps <= (t - pt) / 2, "seq {} replayed slower than 2x", seq);
                }
            }
            previous = Some((t, s));
        }

    }
}

#[test]
fn typing_and_clicking_at_150_a_second_keeps_a_bounded_lag_with_a_coarse_timer() {
    // The shell's timer (tokio's) wakes on a 1 ms grain, late by up to a millisecond each
    // time; a click's release waits button_settle and a re-sync, and the keys behind it
    // catch up at twice their pace without the late wake-ups piling up.
    let gap = Duration::from_micros(6667);
    let grain = Duration::from_millis(1);
    let mut j = Journal::new(Config::default(), true);
    let mut now = at(0);
    let mut sent = Sent::new();
    let mut pushed = Vec::new();
    for i in 0..2000u32 {
        let t = at(0) + gap * i;
        loop {
            for (lane, seq, s) in run(&mut j, now) {
                assert!(sent.insert(seq, (lane, s)).is_none());
            }
            // Woken at the next whole millisecond after the timeout.
            match j.poll_timeout() {
                Some(w) => {
                    let late = w + grain;
                    let ms = (late - at(0)).as_millis();
                    let wake = at(u64::try_from(ms).unwrap());
                    if wake > t {
                        break;
                    }
                    now = wake.max(now);
                }
                None => break,
            }
        }
        now = t.max(now);
        let ev = match i % 32 {
            30 => btn(true),
            31 => btn(false),
            k => typed(k as usize),
        };
        let seq = j.push(V, ev, t).unwrap().unwrap();
        pushed.push((seq.0, t));
    }
    run_to(&mut j, &mut now, at(20_000), &mut sent);
    let lags: Vec<Duration> = pushed.iter().map(|&(s, t)| sent[&s].1 - t).collect();
    // A press waits min_interval after its re-sync; its release button_settle after it, then a
    // re-sync and min_interval again; each wake-up up to 1 ms late.
    let bound = Config::default().button_settle + Config::default().min_interval * 2 + grain * 3;
    let worst = lags.iter().max().copied().unwrap_or_default();
    assert!(worst <= bound, "lag reached {worst:?}");
    // Caught up before the next click: the event before each press goes as it comes.
    for (i, lag) in lags.iter().enumerate().filter(|(i, _)| i % 32 == 29) {
        assert!(lag.is_zero(), "event {i} still {lag:?} behind");
    }
}

#[test]
fn a_fast_viewer_whose_events_sometimes_arrive_together_stays_on_its_pace() {
    // 700 events/s (1.43 ms apart), every tenth read bringing two events at once: the second
    // of a pair waits for the PS/2 bucket, the ones behind it catch up at half the viewer's
    // gaps instead of following the bucket (500 keys/s) for good.
    let mut j = Journal::new(Config::default(), true);
    let gap = Duration::from_micros(1430);
    let mut pushed = Vec::new();
    let mut sent = Vec::new();
    for i in 0..3000u32 {
        let t = if i % 10 == 1 {
            at(0) + gap * (i - 1)
        } else {
            at(0) + gap * i
        };
        sent.extend(run(&mut j, t));
        let seq = j.push(V, typed(i as usize), t).unwrap().unwrap();
        pushed.push((seq.0, t));
        sent.extend(run(&mut j, t));
    }
    sent.extend(run_until_idle(&mut j, at(0) + gap * 3000));
    let worst = worst_lag(&pushed, &sent);
    assert!(
        worst <= Duration::from_millis(5),
        "an event waited {worst:?}"
    );
    assert_eq!(j.stats().delivered, 3000);
}

/// The worst lag of `pushed` events in `sent`.
fn worst_lag(pushed: &[(u64, Instant)], sent: &[(Lane, u64, Instant)]) -> Duration {
    pushed
        .iter()
        .map(|&(seq, t)| {
            let (.., out) = sent.iter().find(|s| s.1 == seq).expect("sent");
            out.saturating_duration_since(t)
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn a_1000_a_second_viewer_with_jitter_and_pairs_stays_on_its_pace() {
    // 1000 events/s, each up to 0.3 ms early or late, every seventh read bringing two
    // events at once: with a fixed least gap of 1 ms half of these waited for the PS/2
    // bucket and dmore fell seconds behind (`dmore bench input`).
    let mut j = Journal::new(Config::default(), true);
    let mut pushed = Vec::new();
    let mut sent = Vec::new();
    let mut previous = at(0);
    for i in 0..5000u64 {
        let jitter = (i * 7919) % 600;
        let mut t = at(0) + Duration::from_micros(1000 * i + jitter) - Duration::from_micros(300);
        if i % 7 == 1 {
            t = previous;
        }
        previous = t;
        sent.extend(run(&mut j, t));
        let seq = j.push(V, typed(i as usize), t).unwrap().unwrap();
        pushed.push((seq.0, t));
        sent.extend(run(&mut j, t));
    }
    sent.extend(run_until_idle(&mut j, previous));
    let worst = worst_lag(&pushed, &sent);
    assert!(
        worst <= Duration::from_millis(5),
        "an event waited {worst:?}"
    );
    assert_eq!(j.stats().delivered, 5000);
}

#[test]
fn a_loop_faster_than_the_viewers_pace_is_paced() {
    // A test pushing keys 300 µs apart (3333/s): beyond the viewer's burst they wait for
    // the PS/2 bucket, so the guest never gets them faster than the viewer's pace.
    let mut j = Journal::new(Config::default(), true);
    let mut sent = Vec::new();
    let gap = Duration::from_micros(300);
    for i in 0..1000u32 {
        let t = at(0) + gap * i;
        sent.extend(run(&mut j, t));
        j.push(V, typed(i as usize), t).unwrap();
        sent.extend(run(&mut j, t));
    }
    sent.extend(run_until_idle(&mut j, at(0) + gap * 1000));
    assert_eq!(sent.len(), 1000);
    let took = sent[999].2 - sent[0].2;
    let live = Config::default().live_interval;
    assert!(
        took >= live * 999,
        "1000 keys went in {took:?}, faster than one per {live:?}"
    );
}
