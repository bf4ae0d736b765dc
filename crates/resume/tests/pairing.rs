//! A gateway and a console paired in memory through a lossy "network": random byte streams
//! both ways, random connection cuts (frames in flight lost, some cut mid-frame), reattaches
//! and moves of the console (its state exported and imported into a new stream), closes,
//! tampered bytes: every byte arrives exactly once, in order, both ways, and both ends finish.

use proptest::prelude::*;
use resume::{peek_session, Config, Error, Peeked, Role, State, Stream, StreamState};

const PSK: &[u8] = b"0123456789abcdef0123456789abcdef";
const SESSION: [u8; 16] = *b"session-00000001";

fn config(role: Role, cap: u32) -> Config {
    let mut c = Config::new(role, PSK);
    c.replay_cap = cap;
    c
}

/// One end and its application: the bytes it has to send and the bytes it has read.
struct End {
    stream: Stream,
    source: Vec<u8>,
    written: usize,
    got: Vec<u8>,
    /// Bytes this end transmitted that the network has not delivered yet.
    in_flight: Vec<u8>,
}

impl End {
    fn new(stream: Stream, source: Vec<u8>) -> End {
        End {
            stream,
            source,
            written: 0,
            got: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Writes up to `n` more of the source; answers whether the stream took any.
    fn write(&mut self, n: usize) -> bool {
        if self.written == self.source.len() {
            return false;
        }
        let end = self.written.saturating_add(n).min(self.source.len());
        let took = self.stream.write(&self.source[self.written..end]).unwrap();
        self.written += took;
        took > 0
    }

    fn transmit(&mut self) -> bool {
        let mut any = false;
        while let Some(f) = self.stream.poll_transmit() {
            self.in_flight.extend_from_slice(&f);
            any = true;
        }
        any
    }

    fn read(&mut self) -> bool {
        self.stream.read(&mut self.got) > 0
    }
}

/// What the network and the applications do next.
#[derive(Debug, Clone)]
enum Op {
    /// The gateway's (true) or the console's application writes up to n bytes.
    Write(bool, usize),
    /// Up to n bytes in flight from the gateway (true) or the console are delivered.
    Deliver(bool, usize),
    /// The gateway's (true) or the console's application reads.
    Read(bool),
    /// The connection breaks: both ends detach, bytes in flight are lost.
    Cut,
    /// Both ends attach a new connection (if detached).
    Reattach,
    /// The console moves: cut, its state carried into a new stream (a new process).
    Move,
    /// The gateway's (true) or the console's application closes, if it wrote everything.
    Close(bool),
    /// An opening recorded from an earlier connection of the gateway (true) or the console
    /// is replayed to the other end on a new connection, then that connection ends.
    Replay(bool, prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1usize..3000).prop_map(|(g, n)| Op::Write(g, n)),
        6 => (any::<bool>(), 1usize..5000).prop_map(|(g, n)| Op::Deliver(g, n)),
        3 => any::<bool>().prop_map(Op::Read),
        1 => Just(Op::Cut),
        2 => Just(Op::Reattach),
        1 => Just(Op::Move),
        1 => any::<bool>().prop_map(Op::Close),
        1 => (any::<bool>(), any::<prop::sample::Index>()).prop_map(|(g, i)| Op::Replay(g, i)),
    ]
}

struct Pair {
    g: End,
    c: End,
    cap_c: u32,
    nonce: u8,
    /// Whether the gateway attached before (its first opening must be a Hello).
    attached_before: bool,
    /// Every opening each end sent (gateway's, console's): what an attacker could replay.
    openings: (Vec<Vec<u8>>, Vec<Vec<u8>>),
}

impl Pair {
    fn new(g_src: Vec<u8>, c_src: Vec<u8>, cap_g: u32, cap_c: u32) -> Pair {
        let g = Stream::new(config(Role::Gateway, cap_g), SESSION).unwrap();
        let c = Stream::new(config(Role::Console, cap_c), SESSION).unwrap();
        let mut p = Pair {
            g: End::new(g, g_src),
            c: End::new(c, c_src),
            cap_c,
            nonce: 0,
            attached_before: false,
            openings: (Vec::new(), Vec::new()),
        };
        p.reattach();
        p
    }

    fn fresh_nonce(&mut self) -> [u8; 32] {
        self.nonce = self.nonce.wrapping_add(1);
        [self.nonce; 32]
    }

    fn cut(&mut self) {
        for end in [&mut self.g, &mut self.c] {
            end.stream.detach();
            end.in_flight.clear();
        }
    }

    /// The gateway connects; the console finds the session in its first bytes and attaches.
    fn reattach(&mut self) {
        if self.g.stream.state() != State::Detached && self.c.stream.state() != State::Detached {
            return;
        }
        self.cut();
        let n = self.fresh_nonce();
        self.g.stream.attach(n).unwrap();
        self.g.transmit();
        let peeked = peek_session(&config(Role::Console, 64), &self.g.in_flight)
            .unwrap()
            .expect("a whole opening");
        assert_eq!(peeked.session, SESSION);
        assert!(
            self.attached_before || !peeked.resume,
            "a new session says Hello"
        );
        self.attached_before = true;
        self.openings.0.push(self.g.in_flight.clone());
        let n = self.fresh_nonce();
        self.c.stream.attach(n).unwrap();
        self.c.transmit();
        self.openings.1.push(self.c.in_flight.clone());
    }

    /// Replays a recorded opening to one end on a new connection: it must be taken as an
    /// opening and never applied (no fresh proof follows), so it neither fails nor moves the
    /// session. Then that connection ends.
    fn replay_opening(&mut self, to_console: bool, which: prop::sample::Index) {
        let recorded = if to_console {
            &self.openings.0
        } else {
            &self.openings.1
        };
        let opening = recorded[which.index(recorded.len())].clone();
        self.cut();
        let n = self.fresh_nonce();
        let to = self.end(!to_console);
        let before = to.stream.export();
        to.stream.attach(n).unwrap();
        to.stream.handle_input(&opening).unwrap();
        to.transmit(); // its answer goes to the attacker
        assert_eq!(to.stream.state(), State::Opening);
        assert_eq!(
            to.stream.export(),
            before,
            "a replayed opening moved the session"
        );
        self.cut();
    }

    /// The console moves. Its state is exported at its freeze; if its connection is open,
    /// it then tells the gateway where it went (a Moved frame, after the frames it still
    /// sends: bytes of the exported state) and closes.
    fn move_console(&mut self) {
        let state: StreamState = self.c.stream.export();
        if self.c.stream.state() == State::Open {
            let to = std::net::SocketAddr::from(([10, 0, 0, self.nonce], 4800));
            self.c.stream.send_moved(to).unwrap();
            while self.deliver(false, usize::MAX) {}
            assert_eq!(
                self.g.stream.take_moved(),
                Some(to),
                "the gateway learns where"
            );
        }
        self.cut();
        self.c.stream = Stream::import(config(Role::Console, self.cap_c), state).unwrap();
    }

    /// Delivers up to `n` bytes; answers whether any moved.
    fn deliver(&mut self, from_gateway: bool, n: usize) -> bool {
        let (from, to) = if from_gateway {
            (&mut self.g, &mut self.c)
        } else {
            (&mut self.c, &mut self.g)
        };
        from.transmit();
        let n = n.min(from.in_flight.len());
        if n == 0 {
            return false;
        }
        let bytes: Vec<u8> = from.in_flight.drain(..n).collect();
        to.stream
            .handle_input(&bytes)
            .expect("an honest peer's frames are accepted");
        true
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(g, n) => {
                self.end(g).write(n);
            }
            Op::Deliver(g, n) => {
                self.deliver(g, n);
            }
            Op::Read(g) => {
                self.end(g).read();
            }
            Op::Cut => self.cut(),
            Op::Reattach => self.reattach(),
            Op::Move => self.move_console(),
            Op::Replay(to_console, i) => self.replay_opening(to_console, i),
            Op::Close(g) => {
                let end = self.end(g);
                if end.written == end.source.len() {
                    end.stream.close();
                }
            }
        }
    }

    fn end(&mut self, gateway: bool) -> &mut End {
        if gateway {
            &mut self.g
        } else {
            &mut self.c
        }
    }

    /// Reattaches and runs everything to the end: both write all, close, read all.
    fn finish(&mut self) {
        self.reattach();
        for _ in 0..100_000 {
            let mut progress = false;
            for g in [true, false] {
                let end = self.end(g);
                progress |= end.write(usize::MAX);
                if end.written == end.source.len() {
                    end.stream.close();
                }
                progress |= self.deliver(g, usize::MAX);
                progress |= self.end(g).read();
            }
            if !progress {
                break;
            }
        }
        assert_eq!(self.g.stream.state(), State::Finished);
        assert_eq!(self.c.stream.state(), State::Finished);
    }

    fn check_prefixes(&self) {
        assert!(
            self.g.source.starts_with(&self.c.got),
            "console got a non-prefix"
        );
        assert!(
            self.c.source.starts_with(&self.g.got),
            "gateway got a non-prefix"
        );
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #[test]
    fn every_byte_arrives_exactly_once_through_cuts_reattaches_and_moves(
        g_src in bytes(40_000),
        c_src in bytes(40_000),
        cap_g in 1u32..20_000,
        cap_c in 1u32..20_000,
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let mut p = Pair::new(g_src, c_src, cap_g, cap_c);
        for op in &ops {
            p.apply(op);
            p.check_prefixes();
            prop_assert!(p.g.stream.send_capacity() <= cap_g as usize);
        }
        p.finish();
        prop_assert_eq!(&p.c.got, &p.g.source);
        prop_assert_eq!(&p.g.got, &p.c.source);
        prop_assert!(p.g.stream.read_closed() && p.c.stream.read_closed());
    }

    #[test]
    fn a_tampered_frame_is_refused_and_the_stream_recovers(
        g_src in bytes(20_000),
        c_src in bytes(20_000),
        before in prop::collection::vec(op(), 0..30),
        from_gateway in any::<bool>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut p = Pair::new(g_src, c_src, 4096, 4096);
        for op in &before {
            p.apply(op);
        }
        p.reattach();
        for g in [true, false] {
            p.end(g).write(usize::MAX);
            p.end(g).transmit();
        }
        let (from, to) = if from_gateway { (&mut p.g, &mut p.c) } else { (&mut p.c, &mut p.g) };
        if !from.in_flight.is_empty() {
            let i = at.index(from.in_flight.len());
            from.in_flight[i] ^= flip;
            let bytes = std::mem::take(&mut from.in_flight);
            match to.stream.handle_input(&bytes) {
                // A flipped length can leave a frame waiting for bytes that never come.
                Ok(()) => {}
                Err(e) => {
                    prop_assert!(!e.ends_session(), "{e}");
                    prop_assert_eq!(to.stream.state(), State::Detached);
                }
            }
            p.check_prefixes();
        }
        p.cut();
        p.finish();
        prop_assert_eq!(&p.c.got, &p.g.source);
        prop_assert_eq!(&p.g.got, &p.c.source);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_stream(
        open_first in any::<bool>(),
        role_gateway in any::<bool>(),
        junk in prop::collection::vec(bytes(300), 0..8),
    ) {
        let (me, peer) = if role_gateway {
            (Role::Gateway, Role::Console)
        } else {
            (Role::Console, Role::Gateway)
        };
        let mut me = Stream::new(config(me, 4096), SESSION).unwrap();
        let mut peer = Stream::new(config(peer, 4096), SESSION).unwrap();
        me.attach([1; 32]).unwrap();
        peer.attach([2; 32]).unwrap();
        if open_first {
            while let Some(f) = peer.poll_transmit() {
                me.handle_input(&f).unwrap();
            }
        }
        for chunk in &junk {
            if me.state() == State::Detached {
                me.attach([3; 32]).unwrap();
            }
            let _ = me.handle_input(chunk);
            let _ = peek_session(&config(Role::Console, 64), chunk);
            while me.poll_transmit().is_some() {}
        }
    }

    #[test]
    fn frame_bodies_decode_without_panicking(kind in any::<u8>(), body in bytes(64)) {
        if let Ok(frame) = resume::frame::Frame::decode(kind, &body) {
            let mut again = Vec::new();
            frame.encode_body(&mut again);
            prop_assert_eq!(again, body);
        }
    }
}

#[test]
fn a_wrongly_keyed_peer_is_refused() {
    let mut g = Stream::new(
        Config::new(Role::Gateway, b"another key, 16+ bytes".to_vec()),
        SESSION,
    )
    .unwrap();
    let mut c = Stream::new(config(Role::Console, 4096), SESSION).unwrap();
    g.attach([1; 32]).unwrap();
    c.attach([2; 32]).unwrap();
    let opening = g.poll_transmit().unwrap();
    let peek = peek_session(&config(Role::Console, 64), &opening);
    assert_eq!(peek, Err(Error::BadMac { counter: 0 }));
    assert_eq!(c.handle_input(&opening), Err(Error::BadMac { counter: 0 }));
    assert_eq!(c.state(), State::Detached);
}

#[test]
fn an_opening_reflected_back_to_its_sender_is_refused() {
    let mut g = Stream::new(config(Role::Gateway, 4096), SESSION).unwrap();
    g.attach([1; 32]).unwrap();
    let opening = g.poll_transmit().unwrap();
    assert_eq!(g.handle_input(&opening), Err(Error::BadMac { counter: 0 }));
}

#[test]
fn another_sessions_peer_is_refused() {
    let mut g = Stream::new(config(Role::Gateway, 4096), [1; 16]).unwrap();
    let mut c = Stream::new(config(Role::Console, 4096), [2; 16]).unwrap();
    g.attach([1; 32]).unwrap();
    c.attach([2; 32]).unwrap();
    assert_eq!(
        c.handle_input(&g.poll_transmit().unwrap()),
        Err(Error::WrongSession)
    );
}

/// A console restored from a state older than what it acknowledged: the gateway no longer
/// holds the bytes in between, so the session ends with `ReplayGap` instead of losing them.
#[test]
fn a_resume_from_bytes_already_dropped_ends_the_session() {
    let mut p = Pair::new(vec![7; 100], Vec::new(), 4096, 4096);
    let stale = p.c.stream.export();
    p.g.write(100);
    for _ in 0..4 {
        p.deliver(true, usize::MAX);
        p.c.read();
        p.deliver(false, usize::MAX);
    }
    assert_eq!(p.g.stream.acknowledged(), 100);
    p.cut();
    p.c.stream = Stream::import(config(Role::Console, 4096), stale).unwrap();
    p.reattach();
    p.deliver(true, usize::MAX); // the gateway's opening: the console answers with its own
    p.c.transmit(); // and its first frame under the connection key, which proves it fresh
    let from_console = std::mem::take(&mut p.c.in_flight);
    let want = Error::ReplayGap {
        resume_from: 0,
        oldest: 100,
    };
    assert_eq!(p.g.stream.handle_input(&from_console), Err(want.clone()));
    assert_eq!(p.g.stream.state(), State::Failed);
    assert_eq!(
        p.g.stream.attach([9; 32]),
        Err(Error::Failed(Box::new(want)))
    );
}

/// The replay buffer is a hard bound: a writer gets back-pressure, never an unbounded buffer.
#[test]
fn writes_stop_at_the_replay_bound_until_the_peer_acknowledges() {
    let mut p = Pair::new(vec![1; 1000], Vec::new(), 300, 4096);
    assert!(p.g.write(1000));
    assert_eq!(p.g.written, 300);
    assert!(!p.g.write(1000), "full: nothing more taken");
    p.cut(); // detached: the bytes wait, and the bound still holds
    assert!(!p.g.write(1000));
    p.reattach();
    for _ in 0..4 {
        p.deliver(true, usize::MAX);
        p.deliver(false, usize::MAX);
        p.c.read();
    }
    assert!(p.g.write(1000));
    assert_eq!(p.g.written, 600);
}

/// A Close lost in a cut is sent again after the reattach, and both ends finish only once
/// each knows its Close arrived.
#[test]
fn a_close_lost_in_a_cut_is_sent_again() {
    let mut p = Pair::new(b"bye".to_vec(), Vec::new(), 4096, 4096);
    p.deliver(false, usize::MAX); // the console's opening
    p.g.write(3);
    p.g.stream.close();
    p.c.stream.close();
    p.g.transmit();
    assert!(!p.g.in_flight.is_empty());
    p.cut(); // data and Close lost
    assert_ne!(p.g.stream.state(), State::Finished);
    p.finish();
    assert_eq!(p.c.got, b"bye");
    assert!(p.c.stream.read_closed() && p.g.stream.read_closed());
}

/// The opening says whether it starts a session or resumes one, so a console can refuse a
/// Resume for a session it does not hold instead of starting an empty one.
#[test]
fn peek_tells_a_new_session_from_a_resumed_one() {
    let mut p = Pair::new(vec![1; 10], Vec::new(), 4096, 4096);
    p.deliver(true, usize::MAX);
    p.deliver(false, usize::MAX); // the gateway accepts the console's (proven) opening
    p.cut();
    let mut g = Stream::import(config(Role::Gateway, 4096), p.g.stream.export()).unwrap();
    g.attach([9; 32]).unwrap();
    let opening = g.poll_transmit().unwrap();
    assert_eq!(
        peek_session(&config(Role::Console, 64), &opening),
        Ok(Some(Peeked {
            session: SESSION,
            resume: true
        }))
    );
    assert_eq!(
        peek_session(&config(Role::Console, 64), &opening[..opening.len() - 1]),
        Ok(None),
        "incomplete"
    );
}
