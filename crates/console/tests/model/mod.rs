//! The simulated QEMU (and its pipes to the journal) that `journal_exactly_once` drives.

use console::journal::{
    Action, BatchId, Button, Config, Entry, FenceId, InputEvent, Journal, JournalState, Outcome,
    ProbeId, ViewerId, VncEvent,
};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

pub const PS2_QUEUE: u32 = 16;
/// Key k: (keysym, scancode). Includes an extended key (0x9c, keypad enter) and keysym-only keys.
pub const KEYS: [(u32, Option<u16>); 6] = [
    (0x61, Some(0x1e)),
    (0x62, Some(0x30)),
    (0x63, None),
    (0xff8d, Some(0x9c)),
    (0x64, None),
    (0xffe1, Some(0x2a)),
];
pub const BUTTONS: [Button; 3] = [Button::Left, Button::Right, Button::WheelUp];

#[derive(Debug, Clone)]
pub enum Op {
    Key(usize, bool),
    Click(usize, bool),
    Move(u16, u16),
    Wait(u64),
    Stop,
    Resume,
    /// A short pause nobody announced (`stop` then `cont` from another monitor).
    Blip(u64),
    MigStart,
    MigEnd,
    Switchover,
}

/// Identity of a key in QEMU's key state: its key number, else its keysym.
pub fn ctl(keysym: u32, scancode: Option<u16>) -> u32 {
    scancode.map_or(keysym | 0x8000_0000, u32::from)
}

/// Bytes a key event puts in the PS/2 queue (set 2, conservatively): make 2–3, break 3–4.
pub fn ps2_bytes(down: bool, scancode: Option<u16>) -> u32 {
    let extended = scancode.is_some_and(|s| s & 0x80 != 0);
    2 + u32::from(!down) + u32::from(extended)
}

pub enum ToVnc {
    Ev(VncEvent),
    Fence(FenceId),
}
pub enum ToQmp {
    Input(BatchId, Vec<Entry>),
    Status(ProbeId),
}
pub enum FromQmp {
    Reply(BatchId, Outcome),
    Status(ProbeId, bool),
    Stop,
    Resume,
}

/// A FIFO pipe whose messages arrive no earlier than their send time plus a latency.
pub struct Pipe<T> {
    pub q: VecDeque<(u64, T)>,
    pub lat: u64,
}
impl<T> Pipe<T> {
    pub fn new(lat: u64) -> Self {
        Pipe {
            q: VecDeque::new(),
            lat,
        }
    }
    pub fn send(&mut self, now: u64, m: T) {
        let at = self.q.back().map_or(0, |b| b.0).max(now + self.lat);
        self.q.push_back((at, m));
    }
    pub fn head(&self) -> Option<u64> {
        self.q.front().map(|m| m.0)
    }
}

pub struct Sim {
    pub t0: Instant,
    pub t: u64,
    pub j: Journal,
    pub running: bool,
    pub migrating: bool,
    pub kbd_down: BTreeSet<u32>,
    pub vnc_mask: u8,
    pub ps2: u32,
    pub drain_per_ms: u64,
    pub drain_acc: u64,
    pub overflow: bool,
    pub guest: Vec<u64>,
    pub to_vnc: Pipe<ToVnc>,
    pub from_vnc: Pipe<FenceId>,
    pub to_qmp: Pipe<ToQmp>,
    pub from_qmp: Pipe<FromQmp>,
    pub outbox: VecDeque<InputEvent>,
    pub pushed: Vec<u64>,
    pub uncertain: BTreeSet<u64>,
    pub unannounced: bool,
    pub max_held: usize,
    /// QEMU's main loop is busy until then (µs): it reads neither its VNC socket nor its QMP
    /// monitor, and handles what queued there all at once afterwards. The guest runs on and
    /// keeps reading its PS/2 queue.
    pub stalled_until: u64,
}

impl Sim {
    /// A running VM, a journal with `max_held`, the guest reading `drain_per_ms` PS/2 bytes
    /// per ms, and latencies (µs) `lat`: VNC each way, QMP requests, QMP replies.
    pub fn new(drain_per_ms: u64, max_held: usize, lat: (u64, u64, u64)) -> Sim {
        let config = Config {
            max_held,
            ..Config::default()
        };
        Sim {
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
            stalled_until: 0,
        }
    }

    /// When QEMU handles what `pipe` brings it next (not before its main loop is free).
    fn qemu_head<T>(&self, pipe: &Pipe<T>) -> Option<u64> {
        pipe.head().map(|h| h.max(self.stalled_until))
    }

    pub fn now(&self) -> Instant {
        self.t0 + Duration::from_micros(self.t)
    }

    /// Executes every action the journal has now.
    pub fn pump(&mut self) {
        while let Some(a) = self.j.poll_action(self.now()) {
            let t = self.t;
            match a {
                Action::Vnc { events } => events
                    .into_iter()
                    .for_each(|e| self.to_vnc.send(t, ToVnc::Ev(e))),
                Action::Fence { fence } => self.to_vnc.send(t, ToVnc::Fence(fence)),
                Action::Status { probe } => self.to_qmp.send(t, ToQmp::Status(probe)),
                Action::Qmp { batch, events } => self.to_qmp.send(t, ToQmp::Input(batch, events)),
            }
        }
        while let Some(r) = self.j.poll_uncertain() {
            self.uncertain.extend(r.first.0..=r.last.0);
        }
    }

    pub fn advance(&mut self, to: u64) {
        let dt = to.saturating_sub(self.t);
        self.t = to;
        self.drain_acc += dt * self.drain_per_ms;
        self.ps2 = self
            .ps2
            .saturating_sub(u32::try_from(self.drain_acc / 1000).unwrap_or(u32::MAX));
        self.drain_acc %= 1000;
        if self.ps2 == 0 {
            self.drain_acc = 0;
        }
    }

    pub fn guest_key(&mut self, seq: u64, down: bool, scancode: Option<u16>) {
        let n = ps2_bytes(down, scancode);
        if self.ps2 + n > PS2_QUEUE {
            self.overflow = true;
        } else {
            self.ps2 += n;
            self.guest.push(seq);
        }
    }

    /// Runs the model until `until` (µs), or until `done` holds.
    pub fn run(&mut self, until: u64, done: impl Fn(&Sim) -> bool) -> bool {
        loop {
            self.flush_outbox();
            self.pump();
            if done(self) {
                return true;
            }
            let timeout = self.j.poll_timeout().map(|i| {
                // Rounded up: a replay's halved gaps fall between microseconds.
                let d = i - self.t0;
                let us = u64::try_from(d.as_micros()).unwrap()
                    + u64::from(!d.subsec_nanos().is_multiple_of(1000));
                assert!(
                    us > self.t,
                    "poll_timeout in the past after poll_action said None"
                );
                us
            });
            let heads = [
                self.qemu_head(&self.to_vnc),
                self.from_vnc.head(),
                self.qemu_head(&self.to_qmp),
                self.from_qmp.head(),
            ];
            let next = heads.iter().flatten().chain(timeout.iter()).copied().min();
            match next {
                Some(n) if n <= until => self.advance(n),
                _ => {
                    self.advance(until.max(self.t));
                    return done(self);
                }
            }
            self.deliver();
        }
    }

    /// Delivers every message due now, earliest first.
    pub fn deliver(&mut self) {
        let t = self.t;
        if self.qemu_head(&self.to_vnc).is_some_and(|h| h <= t) {
            let Some((_, m)) = self.to_vnc.q.pop_front() else {
                return;
            };
            match m {
                ToVnc::Fence(f) => self.from_vnc.send(t, f),
                ToVnc::Ev(VncEvent::Key {
                    seq,
                    down,
                    keysym,
                    scancode,
                }) => {
                    let c = ctl(keysym, scancode);
                    // A press always passes (a repeat is autorepeat); a release only if
                    // its press was seen. The state changes even while paused.
                    let passes = if down {
                        self.kbd_down.insert(c);
                        true
                    } else {
                        self.kbd_down.remove(&c)
                    };
                    if passes && self.running {
                        self.guest_key(seq.0, down, scancode);
                    }
                }
                ToVnc::Ev(VncEvent::Pointer { seq, mask, .. }) => {
                    let changed = mask != self.vnc_mask;
                    self.vnc_mask = mask;
                    if let (Some(seq), true, true) = (seq, changed, self.running) {
                        self.guest.push(seq.0);
                    }
                }
            }
        } else if self.from_vnc.head().is_some_and(|h| h <= t) {
            let Some((_, f)) = self.from_vnc.q.pop_front() else {
                return;
            };
            self.j.handle_fence_answered(f).unwrap();
        } else if self.qemu_head(&self.to_qmp).is_some_and(|h| h <= t) {
            let Some((_, m)) = self.to_qmp.q.pop_front() else {
                return;
            };
            let reply = match m {
                ToQmp::Status(p) => FromQmp::Status(p, self.running),
                ToQmp::Input(b, _) if !self.running => FromQmp::Reply(b, Outcome::VmNotRunning),
                ToQmp::Input(b, events) => {
                    for e in events {
                        match (e.seq, e.event) {
                            (Some(s), InputEvent::Key { down, scancode, .. }) => {
                                self.guest_key(s.0, down, scancode)
                            }
                            (Some(s), InputEvent::Button { .. }) => self.guest.push(s.0),
                            _ => {}
                        }
                    }
                    FromQmp::Reply(b, Outcome::Delivered)
                }
            };
            self.from_qmp.send(t, reply);
        } else if self.from_qmp.head().is_some_and(|h| h <= t) {
            let Some((_, m)) = self.from_qmp.q.pop_front() else {
                return;
            };
            match m {
                FromQmp::Reply(b, o) => self.j.handle_qmp_reply(b, o).unwrap(),
                FromQmp::Status(p, running) => self.j.handle_status(p, running, false).unwrap(),
                FromQmp::Stop => self.j.handle_vm_stopped(),
                FromQmp::Resume => self.j.handle_vm_resumed(),
            }
        }
    }

    /// Pushes what viewers have sent, as far as the journal takes it (backpressure).
    pub fn flush_outbox(&mut self) {
        while let Some(&e) = self.outbox.front() {
            let viewer = ViewerId(u32::try_from(self.pushed.len() % 3).unwrap());
            match self.j.push(viewer, e, self.now()) {
                Ok(seq) => {
                    self.outbox.pop_front();
                    self.pushed.extend(seq.map(|s| s.0));
                }
                Err(_) => break,
            }
            assert!(self.j.held() <= self.max_held, "backlog over its bound");
        }
    }

    pub fn settle(&mut self, done: impl Fn(&Sim) -> bool) {
        let deadline = self.t + 1_000_000_000;
        assert!(
            self.run(deadline, done),
            "journal did not settle: {:#?} running {} outbox {}",
            self.j,
            self.running,
            self.outbox.len()
        );
    }

    pub fn apply(&mut self, op: Op) {
        let now_t = self.t;
        match op {
            Op::Key(k, down) => {
                let (keysym, scancode) = KEYS[k];
                self.outbox.push_back(InputEvent::Key {
                    down,
                    keysym,
                    scancode,
                });
            }
            Op::Click(b, down) => self.outbox.push_back(InputEvent::Button {
                down,
                button: BUTTONS[b],
            }),
            Op::Move(x, y) => self.outbox.push_back(InputEvent::Motion { x, y }),
            Op::Wait(us) => {
                self.run(now_t + us, |_| false);
            }
            Op::Stop if self.running => {
                if self.migrating {
                    // A migration's pre-copy outlasts a fence and a query-status round trip.
                    self.settle(|s| s.j.fast_lane_confirmed());
                } else {
                    self.unannounced = true;
                }
                self.running = false;
                self.from_qmp.send(self.t, FromQmp::Stop);
            }
            Op::Resume if !self.running => {
                self.running = true;
                self.from_qmp.send(now_t, FromQmp::Resume);
            }
            Op::Blip(us) if self.running => {
                self.apply(Op::Stop);
                self.apply(Op::Wait(us));
                self.apply(Op::Resume);
            }
            Op::MigStart if !self.migrating => {
                self.migrating = true;
                self.j.handle_migration_started();
            }
            Op::MigEnd if self.migrating => {
                self.migrating = false;
                self.j.handle_migration_ended();
            }
            Op::Switchover if !self.running => {
                self.settle(|s| s.j.is_settled() && s.from_qmp.q.is_empty());
                let json = serde_json::to_vec(&self.j.freeze()).unwrap();
                let state: JournalState = serde_json::from_slice(&json).unwrap();
                self.j = Journal::restore(state, self.now()).unwrap();
                // The destination QEMU: same guest, a fresh VNC server and QMP monitor.
                self.kbd_down.clear();
                self.vnc_mask = 0;
                self.migrating = false;
            }
            _ => {}
        }
        self.flush_outbox();
        self.pump();
    }
}
