//! Rule 4: a pointer button's event that may have met a full PS/2 mouse queue makes that
//! button's next event wait `button_settle` and a re-sync ([`Config::button_settle`]); keys,
//! wheel steps and clicks with room do not. Checked against a model of QEMU's PS/2 mouse.

use super::*;
use proptest::prelude::*;

fn button(down: bool, button: Button) -> InputEvent {
    InputEvent::Button { down, button }
}

/// What reached QEMU, in order: a key or button event (its seq and event), or a re-sync.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Got {
    Event(u64, InputEvent, Instant),
    Resync(Instant),
}

/// QEMU 7.2's PS/2 mouse (`hw/input/ps2.c`) as a guest sees it, fed what QEMU's VNC server
/// and `input-send-event` hand it: button state and motion summed until an input sync, which
/// queues packets (state, and at most ±127 of motion each) while its 16-byte queue has room
/// for a whole 4-byte IntelliMouse packet; a guest reading a packet per `button_settle / 4`,
/// the slowest guest the journal is built for.
struct Ps2Mouse {
    per_packet: Duration,
    buttons: u8,
    /// The button mask QEMU's VNC server saw last.
    vnc_mask: u8,
    pointer: (u16, u16),
    dx: i32,
    dy: i32,
    /// Queued packets: the button state each carries.
    queue: VecDeque<u8>,
    /// When the guest reads the queue's next packet.
    next_read: Instant,
    /// The button state of every packet the guest read, in order.
    seen: Vec<u8>,
}

impl Ps2Mouse {
    const QUEUE_BYTES: usize = 16;
    const PACKET_BYTES: usize = 4;

    fn new(config: &Config) -> Self {
        Ps2Mouse {
            per_packet: config.button_settle / 4,
            buttons: 0,
            vnc_mask: 0,
            pointer: (0, 0),
            dx: 0,
            dy: 0,
            queue: VecDeque::new(),
            next_read: at(0),
            seen: Vec::new(),
        }
    }

    /// The guest reads what it has had time for by `now`.
    fn read(&mut self, now: Instant) {
        while self.next_read <= now {
            let Some(state) = self.queue.pop_front() else {
                self.next_read = now;
                return;
            };
            self.seen.push(state);
            self.next_read += self.per_packet;
        }
    }

    /// An RFB PointerEvent: QEMU's VNC server passes on the buttons whose bit changed from
    /// the mask it saw last, moves, and syncs.
    fn vnc_pointer(&mut self, now: Instant, to: (u16, u16), mask: u8) {
        let changed = (mask ^ self.vnc_mask) & 0x07;
        self.vnc_mask = mask;
        let buttons = (self.buttons & !changed) | (mask & changed);
        self.event_no_sync(Some(to), Some(buttons));
        self.sync(now);
    }

    /// A motion to `to` and (or) new button state, not yet synced.
    fn event_no_sync(&mut self, to: Option<(u16, u16)>, buttons: Option<u8>) {
        if let Some((x, y)) = to {
            self.dx += i32::from(x) - i32::from(self.pointer.0);
            self.dy += i32::from(y) - i32::from(self.pointer.1);
            self.pointer = (x, y);
        }
        if let Some(b) = buttons {
            self.buttons = b & 0x07;
        }
    }

    fn sync(&mut self, now: Instant) {
        self.read(now);
        while (Self::QUEUE_BYTES - self.queue.len() * Self::PACKET_BYTES) >= Self::PACKET_BYTES {
            self.dx -= self.dx.clamp(-127, 127);
            self.dy -= self.dy.clamp(-127, 127);
            self.queue.push_back(self.buttons);
            if self.dx == 0 && self.dy == 0 {
                break;
            }
        }
    }

    /// Each state-holding button's states as the guest saw them change, after it read
    /// everything and one more sync (the next motion) reported the state at the end.
    fn transitions(&mut self, end: Instant) -> Vec<Vec<bool>> {
        self.read(end + self.per_packet * 8);
        self.sync(end + self.per_packet * 8);
        self.read(end + self.per_packet * 16);
        per_button(self.seen.iter().copied())
    }
}

/// For each of left, middle and right: its states in `masks` as they change, from up.
fn per_button(masks: impl Iterator<Item = u8> + Clone) -> Vec<Vec<bool>> {
    [1u8, 2, 4]
        .iter()
        .map(|&bit| {
            let mut states = vec![false];
            for mask in masks.clone() {
                let down = mask & bit != 0;
                if states.last() != Some(&down) {
                    states.push(down);
                }
            }
            states
        })
        .collect()
}

/// A shell that answers every fence, probe and batch at once: batches `Delivered` while the
/// VM runs, `VmNotRunning` otherwise. Records what QEMU took, and feeds its PS/2 mouse.
struct Shell {
    j: Journal,
    running: bool,
    now: Instant,
    events: BTreeMap<u64, InputEvent>,
    got: Vec<Got>,
    mouse: Ps2Mouse,
}

impl Shell {
    fn new(config: Config) -> Self {
        Shell {
            j: Journal::new(config, true),
            running: true,
            now: at(0),
            events: BTreeMap::new(),
            got: Vec::new(),
            mouse: Ps2Mouse::new(&config),
        }
    }

    fn push(&mut self, event: InputEvent) {
        if let Some(seq) = self.j.push(V, event, self.now).unwrap() {
            self.events.insert(seq.0, event);
        }
    }

    /// Executes every action due now.
    fn pump(&mut self) {
        let now = self.now;
        loop {
            let resyncs_before = self.j.buttons.last_resync;
            let head = self.j.pending.front().map(|p| p.entry.event);
            let Some(a) = self.j.poll_action(now) else {
                break;
            };
            let resync = self.j.buttons.last_resync != resyncs_before;
            if resync {
                // Only ever right before an event of a state-holding button.
                assert!(
                    matches!(head, Some(InputEvent::Button { button, .. }) if button.holds_state()),
                    "re-sync before {head:?}"
                );
            }
            match a {
                Action::Vnc { events } => {
                    assert!(self.running, "fast lane written while stopped");
                    if resync {
                        assert!(matches!(events[..], [VncEvent::Pointer { seq: None, .. }]));
                        self.got.push(Got::Resync(now));
                    }
                    for e in events {
                        if let VncEvent::Pointer { x, y, mask, .. } = e {
                            self.mouse.vnc_pointer(now, (x, y), mask);
                        }
                        if let VncEvent::Key { seq, .. }
                        | VncEvent::Pointer { seq: Some(seq), .. } = e
                        {
                            self.got.push(Got::Event(seq.0, self.events[&seq.0], now));
                        }
                    }
                }
                Action::Fence { fence } => self.j.handle_fence_answered(fence).unwrap(),
                Action::Status { probe } => self.j.handle_status(probe, true, false).unwrap(),
                Action::Qmp { batch, events } => {
                    assert_eq!(resync, events.iter().any(|e| e.event == InputEvent::Resync));
                    if self.running {
                        // One input-send-event: every event, then one sync (of the mouse if
                        // it got an event).
                        let mut mouse_event = false;
                        for e in &events {
                            mouse_event |= !matches!(e.event, InputEvent::Key { .. });
                            match e.event {
                                InputEvent::Motion { x, y } => {
                                    self.mouse.event_no_sync(Some((x, y)), None)
                                }
                                InputEvent::Button { down, button } if button.holds_state() => {
                                    let bit = button.rfb_mask();
                                    let b = self.mouse.buttons;
                                    let b = if down { b | bit } else { b & !bit };
                                    self.mouse.event_no_sync(None, Some(b));
                                }
                                _ => {}
                            }
                        }
                        if mouse_event {
                            self.mouse.sync(now);
                        }
                        for e in &events {
                            match e.seq {
                                Some(s) => self.got.push(Got::Event(s.0, e.event, now)),
                                None if e.event == InputEvent::Resync => {
                                    self.got.push(Got::Resync(now))
                                }
                                None => {}
                            }
                        }
                        self.j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
                    } else {
                        self.j
                            .handle_qmp_reply(batch, Outcome::VmNotRunning)
                            .unwrap();
                    }
                }
            }
        }
    }

    /// Runs until `until`, waking at each `poll_timeout`.
    fn run_to(&mut self, until: Instant) {
        self.pump();
        while let Some(t) = self.j.poll_timeout() {
            assert!(t > self.now, "poll_timeout must lie ahead");
            if t > until {
                break;
            }
            self.now = t;
            self.pump();
        }
        self.now = self.now.max(until);
        self.pump();
    }

    fn run_until_idle(&mut self) {
        self.pump();
        while let Some(t) = self.j.poll_timeout() {
            assert!(t > self.now, "poll_timeout must lie ahead");
            self.now = t;
            self.pump();
        }
    }
}

/// Checks what QEMU took: every event exactly once, in order; a re-sync at least
/// `button_settle` after the button event before it and `min_interval` before the one after.
fn check(got: &[Got], pushed: usize, config: &Config) {
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|g| match g {
            Got::Event(s, ..) => Some(*s),
            Got::Resync(_) => None,
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=pushed as u64).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    for (i, g) in got.iter().enumerate() {
        let Got::Resync(r) = *g else { continue };
        let button_at = |g: &Got| match *g {
            Got::Event(_, InputEvent::Button { button, .. }, t) if button.holds_state() => Some(t),
            _ => None,
        };
        if let Some(t0) = got[..i].iter().rev().find_map(button_at) {
            assert!(
                r >= t0 + config.button_settle,
                "re-sync {i} unsettled: {got:?}"
            );
        }
        if let Some(t) = got[i + 1..].iter().find_map(button_at) {
            assert!(
                t >= r + config.min_interval,
                "event right after re-sync {i}: {got:?}"
            );
        }
    }
}

/// The states of each state-holding button QEMU was given, as they change: what the guest
/// must see.
fn given_transitions(got: &[Got]) -> Vec<Vec<bool>> {
    let mut mask = 0u8;
    let masks: Vec<u8> = got
        .iter()
        .filter_map(|g| match *g {
            Got::Event(_, InputEvent::Button { down, button }, _) if button.holds_state() => {
                let bit = button.rfb_mask();
                mask = if down { mask | bit } else { mask & !bit };
                Some(mask)
            }
            _ => None,
        })
        .collect();
    per_button(masks.into_iter())
}

#[derive(Debug, Clone)]
enum Op {
    Key(u16, bool),
    Btn(usize, bool),
    Move(u16, u16),
    Wait(u64),
    MigStart,
    MigEnd,
    Stop,
    Resume,
}

const BUTTONS: [Button; 3] = [Button::Left, Button::Right, Button::WheelUp];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u16..3, any::<bool>()).prop_map(|(k, d)| Op::Key(k, d)),
        6 => (0usize..3, any::<bool>()).prop_map(|(b, d)| Op::Btn(b, d)),
        4 => (0u16..800, 0u16..600).prop_map(|(x, y)| Op::Move(x, y)),
        6 => (0u64..30).prop_map(Op::Wait),
        1 => Just(Op::MigStart),
        1 => Just(Op::MigEnd),
        1 => Just(Op::Stop),
        1 => Just(Op::Resume),
    ]
}

fn simulate(ops: &[Op], config: Config) -> Vec<Got> {
    let mut s = Shell::new(config);
    // A viewer's buttons come from its mask's changes: a press of a pressed button (two
    // viewers) is not what this test is about.
    let mut down = [false; BUTTONS.len()];
    for op in ops {
        match *op {
            Op::Key(k, d) => s.push(key(d, k)),
            Op::Btn(b, d) if down[b] != d => {
                down[b] = d;
                s.push(button(d, BUTTONS[b]));
            }
            Op::Btn(..) => {}
            Op::Move(x, y) => s.push(InputEvent::Motion { x, y }),
            Op::Wait(ms) => s.run_to(s.now + Duration::from_millis(ms)),
            Op::MigStart => s.j.handle_migration_started(),
            Op::MigEnd => s.j.handle_migration_ended(),
            Op::Stop => {
                s.running = false;
                s.j.handle_vm_stopped();
            }
            Op::Resume => {
                s.running = true;
                s.j.handle_vm_resumed();
            }
        }
        s.pump();
    }
    s.running = true;
    s.j.handle_vm_resumed();
    s.j.handle_migration_ended();
    s.run_until_idle();
    assert_eq!(s.j.stats().uncertain, 0);
    check(&s.got, s.events.len(), &config);
    let end = s.now;
    assert_eq!(
        s.mouse.transitions(end),
        given_transitions(&s.got),
        "the guest saw every press and release: {:?}",
        s.got
    );
    s.got
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn the_guest_sees_every_click_even_after_far_moves(
        ops in proptest::collection::vec(op(), 0..60),
        settle in 0u64..40,
    ) {
        let config = Config {
            button_settle: Duration::from_millis(settle),
            ..Config::default()
        };
        let got = simulate(&ops, config);
        let state_buttons = ops
            .iter()
            .any(|o| matches!(o, Op::Btn(b, _) if BUTTONS[*b].holds_state()));
        if !state_buttons {
            // Keys, motion and wheel steps alone: never a re-sync, nothing waits for one.
            prop_assert!(!got.iter().any(|g| matches!(g, Got::Resync(_))));
        }
    }
}

#[test]
fn keys_and_wheel_steps_pushed_together_wait_only_for_the_ps2_keyboard_queue() {
    // Faster than the viewer's pace from the second event on: a burst.
    let mut s = Shell::new(Config {
        live_burst: 1,
        ..timing()
    });
    for k in 0..3 {
        s.push(key(true, k));
        s.push(button(true, Button::WheelUp));
        s.push(button(false, Button::WheelUp));
        s.push(key(false, k));
    }
    s.run_until_idle();
    let times: Vec<u128> = s
        .got
        .iter()
        .map(|g| match *g {
            Got::Event(_, _, t) => (t - at(0)).as_micros(),
            Got::Resync(_) => panic!("no re-sync for keys and wheels: {:?}", s.got),
        })
        .collect();
    // One burst: a key per key_drain (400 µs here), each wheel step right behind the key
    // before it.
    assert_eq!(
        times,
        [0, 0, 0, 400, 800, 800, 800, 1200, 1600, 1600, 1600, 2000]
    );
}

#[test]
fn a_fast_click_after_a_far_move_releases_after_a_resync_where_the_pointer_is() {
    let mut j = Journal::new(timing(), true);
    // 600 px: five packets, one more than QEMU's queue takes; the press finds it full.
    j.push(V, InputEvent::Motion { x: 610, y: 10 }, at(0))
        .unwrap();
    j.push(V, btn(true), at(1)).unwrap();
    j.push(V, btn(false), at(1)).unwrap();
    let Some(Action::Vnc { events }) = j.poll_action(at(1)) else {
        panic!("expected Vnc")
    };
    assert_eq!(events.len(), 2, "motion, press: {events:?}");
    assert!(matches!(
        events[1],
        VncEvent::Pointer {
            seq: Some(Seq(1)),
            mask: 1,
            ..
        }
    ));
    let Some(Action::Fence { fence }) = j.poll_action(at(1)) else {
        panic!("expected Fence")
    };
    assert_eq!(j.poll_action(at(14)), None, "the release waits");
    assert_eq!(
        j.poll_timeout(),
        Some(at(16)),
        "the press went at 1 ms; settle 15 ms"
    );
    j.handle_fence_answered(fence).unwrap();
    let Some(Action::Status { probe }) = j.poll_action(at(16)) else {
        panic!("expected Status")
    };
    j.handle_status(probe, true, false).unwrap();
    assert_eq!(
        j.poll_action(at(16)),
        Some(Action::Vnc {
            events: vec![VncEvent::Pointer {
                seq: None,
                x: 610,
                y: 10,
                mask: 1
            }]
        }),
        "the re-sync: where the pointer is, the button still down"
    );
    assert_eq!(j.poll_action(at(19)), None);
    assert_eq!(
        j.poll_action(at(20)),
        Some(Action::Vnc {
            events: vec![VncEvent::Pointer {
                seq: Some(Seq(2)),
                x: 610,
                y: 10,
                mask: 0
            }]
        })
    );
}

#[test]
fn a_resync_on_qmp_is_owed_again_after_vm_not_running_and_skipped_when_refused() {
    let mut j = Journal::new(timing(), true);
    j.handle_migration_started();
    j.push(V, InputEvent::Motion { x: 600, y: 0 }, at(0))
        .unwrap();
    j.push(V, btn(true), at(0)).unwrap();
    j.push(V, btn(false), at(0)).unwrap();
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(0)) else {
        panic!("expected Qmp")
    };
    assert_eq!(events.len(), 2, "the release is not in the press's batch");
    j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(15)) else {
        panic!("expected the re-sync")
    };
    assert_eq!(events[0].event, InputEvent::Resync);
    assert_eq!(events[0].seq, None);
    j.handle_qmp_reply(batch, Outcome::VmNotRunning).unwrap();
    assert_eq!(j.held(), 1, "a re-sync is not held");
    j.handle_vm_resumed();
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(30)) else {
        panic!("expected the re-sync again")
    };
    assert_eq!(events[0].event, InputEvent::Resync);
    j.handle_qmp_reply(batch, Outcome::Failed("no handler".into()))
        .unwrap();
    assert_eq!(
        j.poll_action(at(33)),
        None,
        "min_interval after the re-sync"
    );
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(34)) else {
        panic!("the release goes without")
    };
    assert_eq!(events[0].seq, Some(Seq(2)));
    j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
    assert_eq!(j.stats().delivered, 2);
    assert_eq!(j.stats().dropped, 0);
    assert!(j.is_settled());
}

/// [`Config`] as `STATE_VERSION` 1 laid it out, before `button_settle`.
#[derive(Serialize)]
struct ConfigV1 {
    min_interval: Duration,
    max_gap: Duration,
    max_paced_per_batch: usize,
    max_batch: usize,
    max_held: usize,
}

#[test]
fn snapshots_keep_their_layout_and_a_restored_journal_resyncs_first() {
    let config = Config {
        max_held: 77,
        button_settle: Duration::from_millis(30),
        ..Config::default()
    };
    let v1 = ConfigV1 {
        min_interval: config.min_interval,
        max_gap: config.max_gap,
        max_paced_per_batch: config.max_paced_per_batch,
        max_batch: config.max_batch,
        max_held: config.max_held,
    };
    assert_eq!(
        postcard::to_allocvec(&config).unwrap(),
        postcard::to_allocvec(&v1).unwrap(),
        "Config's snapshot layout is version 1's"
    );

    let mut j = Journal::new(config, true);
    j.push(V, btn(true), at(0)).unwrap();
    run(&mut j, at(0));
    j.handle_migration_started();
    j.handle_vm_stopped();
    j.push(V, btn(false), at(1)).unwrap();
    run(&mut j, at(1));
    let bytes = postcard::to_allocvec(&j.freeze()).unwrap();
    let state: JournalState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(state, j.freeze(), "round trip");
    let mut d = Journal::restore(state, at(100)).unwrap();
    assert_eq!(d.config().max_held, 77);
    assert_eq!(d.config().button_settle, Config::default().button_settle);
    d.handle_vm_resumed();
    let settled = 100 + Config::default().button_settle.as_millis() as u64;
    assert_eq!(d.poll_action(at(settled - 1)), None);
    let Some(Action::Qmp { batch, events }) = d.poll_action(at(settled)) else {
        panic!("expected the re-sync, settle after the restore")
    };
    assert_eq!(events[0].event, InputEvent::Resync);
    d.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
    let sent = run_until_idle(&mut d, at(settled));
    assert_eq!(lanes(&sent), [(Lane::Qmp, 2)]);
    assert!(sent[0].2 >= at(settled) + d.config().min_interval);
}

/// The timings these tests' figures were written for: 4 ms after a re-sync, a 15 ms settle,
/// 400 µs per key.
fn timing() -> Config {
    Config {
        min_interval: Duration::from_millis(4),
        button_settle: Duration::from_millis(15),
        key_drain: Duration::from_micros(400),
        ..Config::default()
    }
}

#[test]
fn a_display_wake_is_a_pointer_event_that_changes_nothing() {
    let mut j = Journal::new(timing(), true);
    j.push(V, InputEvent::Motion { x: 300, y: 200 }, at(0))
        .unwrap();
    j.push(V, btn(true), at(0)).unwrap();
    run(&mut j, at(0));
    // Where the pointer is, the button QEMU's VNC server has down still down.
    assert_eq!(
        j.display_wake(at(100)),
        VncEvent::Pointer {
            seq: None,
            x: 300,
            y: 200,
            mask: 1
        }
    );
    assert_eq!(j.stats().fast_sent, 1, "not an input event of its own");
}

#[test]
fn a_press_right_after_qemu_answered_a_far_move_on_qmp_waits_for_a_resync() {
    // QEMU runs a QMP batch at some time before it answers: in a stalled pre-copy 7.5 ms
    // after it went. A far move held while the VM was stopped goes on QMP at 0 and is
    // answered at 7.5 ms; a press at 8 ms may find the queue its five packets filled.
    let mut j = Journal::new(timing(), false);
    j.push(V, InputEvent::Motion { x: 610, y: 10 }, at(0))
        .unwrap();
    j.handle_vm_resumed();
    let Some(Action::Qmp { batch, events }) = j.poll_action(at(0)) else {
        panic!("expected the held move on QMP")
    };
    assert!(matches!(
        events[..],
        [Entry {
            event: InputEvent::Motion { .. },
            ..
        }]
    ));
    j.handle_qmp_reply(batch, Outcome::Delivered).unwrap();
    let answered = at(7) + Duration::from_micros(500);
    assert_eq!(j.poll_action(answered), None);
    j.push(V, btn(true), at(8)).unwrap();
    let sent = run(&mut j, at(8));
    assert_eq!(sent.len(), 1, "the press goes: {sent:?}");
    j.push(V, btn(false), at(10)).unwrap();
    let sent = run(&mut j, at(10));
    assert!(sent.is_empty(), "the release waits for a re-sync: {sent:?}");
    let sent = run_until_idle(&mut j, at(10));
    assert_eq!(sent.len(), 1, "then it goes");
    assert!(sent[0].2 >= at(23), "a settle after the press: {sent:?}");
}
