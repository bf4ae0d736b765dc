//! Property tests: typed bytes reach the guest exactly once through any interleaving of
//! typing, QEMU's reads and co-migrations; the scrollback is the output's tail.

use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
enum Op {
    Type(Vec<u8>),
    /// The console's write loop: as many bytes as the gate and window allow.
    Write,
    /// QEMU's UART takes up to this many bytes from its socket.
    QemuReads(usize),
    Measure,
    Stop,
    Resume,
    MigrationStarts,
    MigrationFails,
    /// The switchover: the VM stopped (the gate held writes since the migration started), the
    /// console measures and moves; the old socket, and what is unread in it, is gone.
    Switchover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Type),
        4 => Just(Op::Write),
        4 => (0usize..20).prop_map(Op::QemuReads),
        3 => Just(Op::Measure),
        1 => Just(Op::Stop),
        1 => Just(Op::Resume),
        1 => Just(Op::MigrationStarts),
        1 => Just(Op::MigrationFails),
        1 => Just(Op::Switchover),
    ]
}

enum Kind {
    Measured,
    Other,
}

/// The console's ledger with a model QEMU: its socket and what its guest received.
struct Bed {
    ledger: InputLedger,
    gate: Gate,
    socket: VecDeque<u8>,
    guest: Vec<u8>,
    typed: Vec<u8>,
    window: usize,
}

impl Bed {
    fn write(&mut self) {
        while let Some(b) = self.ledger.next_write(self.gate, self.window) {
            self.socket.push_back(b);
            self.ledger.wrote();
        }
    }

    fn measure(&mut self) {
        self.ledger.measured(self.socket.len()).expect("consistent");
    }

    fn step(&mut self, op: Op) {
        let op_kind = if matches!(op, Op::Measure | Op::Switchover) {
            Kind::Measured
        } else {
            Kind::Other
        };
        match op {
            Op::Type(b) => {
                let n = self.ledger.accept(&b);
                self.typed.extend_from_slice(&b[..n]);
            }
            Op::Write => self.write(),
            Op::QemuReads(n) => {
                let n = n.min(self.socket.len());
                self.guest.extend(self.socket.drain(..n));
            }
            Op::Measure => self.measure(),
            Op::Stop => self.gate.running = false,
            Op::Resume => self.gate.running = true,
            Op::MigrationStarts => self.gate.migrating = true,
            Op::MigrationFails => self.gate.migrating = false,
            Op::Switchover => {
                // Held since the migration started: nothing was written after it, so QEMU's
                // reads are over (the model's reads are instantaneous) before the stop.
                self.gate.migrating = true;
                self.gate.running = false;
                self.measure();
                let unread = self.ledger.detach();
                assert_eq!(unread, self.socket.len());
                self.socket.clear();
                // The destination: a fresh socket, the VM runs, no migration.
                self.gate = Gate {
                    running: true,
                    ..Gate::default()
                };
            }
        }
        if matches!(op_kind, Kind::Measured) {
            assert_eq!(
                self.ledger.consumed(),
                self.guest.len() as u64,
                "after a measurement, consumed is exactly what the guest received"
            );
        }
    }
}

proptest! {
    #[test]
    fn typed_bytes_reach_the_guest_exactly_once(
        ops in proptest::collection::vec(op(), 0..200),
        window in 1usize..17,
    ) {
        let mut bed = Bed {
            ledger: InputLedger::new(256),
            gate: Gate { running: true, ..Gate::default() },
            socket: VecDeque::new(),
            guest: Vec::new(),
            typed: Vec::new(),
            window,
        };
        for op in ops {
            // A measurement may only see reads of bytes in the socket.
            let before = bed.guest.len();
            bed.step(op);
            prop_assert!(bed.guest.len() >= before);
            prop_assert!(bed.typed.starts_with(&bed.guest));
        }
        // The VM runs on, and the console writes what is left.
        bed.gate = Gate { running: true, ..Gate::default() };
        for _ in 0..1000 {
            bed.write();
            bed.step(Op::QemuReads(16));
            bed.measure();
            if bed.ledger.pending() == 0 {
                break;
            }
        }
        prop_assert_eq!(&bed.guest, &bed.typed);
        prop_assert_eq!(bed.ledger.consumed(), bed.typed.len() as u64);
        prop_assert_eq!(bed.ledger.accepted(), bed.typed.len() as u64);
    }

    #[test]
    fn a_snapshot_carries_the_ledger_without_its_socket(
        typed in proptest::collection::vec(any::<u8>(), 0..100),
        written in 0usize..16,
        read in 0usize..16,
    ) {
        let mut l = InputLedger::new(1024);
        l.accept(&typed);
        let gate = Gate { running: true, ..Gate::default() };
        for _ in 0..written {
            if l.next_write(gate, 16).is_some() { l.wrote(); }
        }
        let unread = l.in_socket().saturating_sub(read);
        l.measured(unread).unwrap();
        l.detach();
        let bytes = postcard::to_allocvec(&l).unwrap();
        let back: InputLedger = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back.in_socket(), 0);
        prop_assert_eq!(back, l);
    }

    #[test]
    fn the_scrollback_is_the_outputs_tail(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..30),
        capacity in 0usize..200,
        ask in 0u64..2000,
    ) {
        let mut s = Scrollback::new(capacity);
        let mut all = Vec::new();
        for c in &chunks {
            s.push(c);
            all.extend_from_slice(c);
        }
        prop_assert_eq!(s.end(), all.len() as u64);
        prop_assert!(s.end() - s.start() <= capacity as u64);
        let (from, bytes) = s.since(ask);
        prop_assert!(from >= s.start() && from <= s.end());
        prop_assert_eq!(from, ask.clamp(s.start(), s.end()));
        prop_assert_eq!(&bytes[..], &all[from as usize..]);
        let state = SerialState { input: InputLedger::new(8), output: s.clone() };
        let back: SerialState = postcard::from_bytes(&postcard::to_allocvec(&state).unwrap()).unwrap();
        prop_assert_eq!(back.output, s);
    }

    #[test]
    fn headers_round_trip_and_garbage_never_panics(
        output: u64, input: u64, junk in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let h = Header { output, input };
        let mut line = h.encode();
        let len = line.len();
        line.extend_from_slice(&junk);
        prop_assert_eq!(Header::parse(&line), Ok(Some((h, len))));
        let _ = Header::parse(&junk);
    }
}

proptest! {
    #[test]
    fn a_resuming_viewer_sees_and_sends_each_byte_once(
        output in proptest::collection::vec(any::<u8>(), 0..300),
        typed in proptest::collection::vec(any::<u8>(), 0..100),
        cuts in proptest::collection::vec((0usize..300, 0usize..100, 0usize..100), 0..6),
        capacity in 1usize..400,
    ) {
        // The console: scrollback and ledger. The viewer: reconnects at each cut, having
        // received `o` output bytes and got `i` typed bytes accepted in between.
        let mut console = SerialState::new(capacity);
        let mut viewer = Resume::new();
        let (mut seen, mut sent_at) = (Vec::new(), 0usize);
        let (mut out_at, mut in_at) = (0usize, 0usize);
        let mut first_start: Option<u64> = None;
        let mut cuts = cuts;
        cuts.push((output.len(), typed.len(), typed.len()));
        for (o, t, i) in cuts {
            // Output while disconnected: the viewer finds it in the scrollback, or lost.
            let o = o.max(out_at).min(output.len());
            console.output.push(&output[out_at..o]);
            out_at = o;
            let h = Header { output: console.output.since(0).0, input: console.input.accepted() };
            let r = viewer.connected(h).unwrap();
            // A new viewer is owed the scrollback, not what came before it.
            first_start.get_or_insert(h.output);
            let (from, backlog) = console.output.since(0);
            prop_assert_eq!(from, h.output);
            seen.extend_from_slice(viewer.output(&backlog));
            // The resent bytes, then new ones; the console accepts only a prefix of them.
            let mut wire = r.resend.clone();
            let t = t.max(sent_at).min(typed.len());
            wire.extend_from_slice(&typed[sent_at..t]);
            viewer.typed(&typed[sent_at..t]);
            sent_at = t;
            let take = i.min(wire.len());
            console.input.accept(&wire[..take]);
            in_at += take;
            // Output while connected: seen live.
            let live = (out_at + 7).min(output.len());
            console.output.push(&output[out_at..live]);
            seen.extend_from_slice(viewer.output(&output[out_at..live]));
            out_at = live;
        }
        let h = Header { output: console.output.since(0).0, input: console.input.accepted() };
        let r = viewer.connected(h).unwrap();
        console.input.accept(&r.resend);
        in_at += r.resend.len();
        prop_assert_eq!(in_at, sent_at);
        prop_assert_eq!(console.input.accepted() as usize, sent_at);
        let (_, backlog) = console.output.since(0);
        seen.extend_from_slice(viewer.output(&backlog));
        console.output.push(&output[out_at..]);
        seen.extend_from_slice(viewer.output(&output[out_at..]));
        let first = first_start.unwrap_or(0) as usize;
        prop_assert_eq!(seen.len() as u64 + viewer.lost(), (output.len() - first) as u64);
        if viewer.lost() == 0 {
            prop_assert_eq!(&seen[..], &output[first..]);
        }
    }
}

#[test]
fn measurements_that_contradict_the_writes_are_errors() {
    let mut l = InputLedger::new(8);
    l.accept(b"ab");
    let gate = Gate {
        running: true,
        ..Gate::default()
    };
    assert_eq!(l.next_write(gate, 1), Some(b'a'));
    l.wrote();
    assert_eq!(l.next_write(gate, 1), None, "the window is one byte");
    assert!(l.measured(2).is_err());
    assert_eq!(l.measured(0), Ok(1));
    assert_eq!(l.next_write(gate, 1), Some(b'b'));
    assert_eq!(
        l.next_write(
            Gate {
                migrating: true,
                ..gate
            },
            1
        ),
        None,
        "held while a migration is under way"
    );
}

#[test]
fn input_beyond_the_limit_is_refused() {
    let mut l = InputLedger::new(4);
    assert_eq!(l.accept(b"abcdef"), 4);
    assert_eq!(l.accept(b"x"), 0);
    assert_eq!(l.accepted(), 4);
}
