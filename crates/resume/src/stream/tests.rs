//! A peer that holds the connection key and breaks the protocol: the errors that end the
//! session. (The honest pairings are in `tests/`.)

use super::*;

const PSK: &[u8] = b"0123456789abcdef0123456789abcdef";
const SESSION: SessionId = [5; 16];

fn stream(role: Role, cap: u32) -> Stream {
    let mut config = Config::new(role, PSK);
    config.replay_cap = cap;
    Stream::new(config, SESSION).unwrap()
}

/// Moves every frame `from` has to `to`.
fn flush(from: &mut Stream, to: &mut Stream) -> Result<(), Error> {
    while let Some(f) = from.poll_transmit() {
        to.handle_input(&f)?;
    }
    Ok(())
}

/// A gateway and a console (window `cap`) with their openings exchanged.
fn open_pair(cap: u32) -> (Stream, Stream) {
    let mut g = stream(Role::Gateway, DEFAULT_CAP);
    let mut c = stream(Role::Console, cap);
    g.attach([1; 32]).unwrap();
    c.attach([2; 32]).unwrap();
    flush(&mut g, &mut c).unwrap(); // g's opening and proof (sent once it has c's key)
    flush(&mut c, &mut g).unwrap(); // c's opening and proof: g is open
    flush(&mut g, &mut c).unwrap(); // g's proof: c is open
    assert_eq!((g.state(), c.state()), (State::Open, State::Open));
    (g, c)
}

const DEFAULT_CAP: u32 = crate::DEFAULT_REPLAY_CAP;

/// `frame` sealed as the next frame `s` sends (what a dishonest peer with the key can do).
fn forge(s: &mut Stream, frame: &Frame) -> Vec<u8> {
    let role = s.config.role;
    let conn = s.conn.as_mut().unwrap();
    let counter = conn.send_counter;
    conn.send_counter += 1;
    wire::seal(&conn.key.unwrap(), role, counter, frame)
}

/// Feeds `bytes` to `s`, expects `want`, and checks the session is over for good.
fn ends_session(s: &mut Stream, bytes: &[u8], want: Error) {
    assert_eq!(s.handle_input(bytes), Err(want.clone()));
    assert!(want.ends_session());
    assert_eq!(s.state(), State::Failed);
    assert_eq!(s.failure(), Some(&want));
    assert_eq!(
        s.attach([3; 32]),
        Err(Error::Failed(Box::new(want.clone())))
    );
    assert_eq!(s.write(b"x"), Err(Error::Failed(Box::new(want))));
    assert_eq!(s.poll_transmit(), None);
}

#[test]
fn data_beyond_the_announced_window_ends_the_session() {
    let (mut g, mut c) = open_pair(8);
    let ok = forge(
        &mut g,
        &Frame::Data {
            offset: 0,
            bytes: vec![1; 8],
        },
    );
    c.handle_input(&ok).unwrap();
    let over = forge(
        &mut g,
        &Frame::Data {
            offset: 8,
            bytes: vec![2],
        },
    );
    ends_session(
        &mut c,
        &over,
        Error::WindowExceeded {
            end: 9,
            limit: 8,
            window: 8,
        },
    );
    // The bytes that were within the window are still the application's, exactly once.
    let mut got = Vec::new();
    assert_eq!(c.read(&mut got), 8);
    assert_eq!(got, vec![1; 8]);
}

#[test]
fn the_honest_sender_respects_a_small_window() {
    let (mut g, mut c) = open_pair(8);
    assert_eq!(g.write(&[7; 20]).unwrap(), 20);
    flush(&mut g, &mut c).unwrap();
    assert_eq!(c.received(), 8, "only the window's worth before an ack");
    let mut got = Vec::new();
    for _ in 0..3 {
        c.read(&mut got);
        flush(&mut c, &mut g).unwrap();
        flush(&mut g, &mut c).unwrap();
    }
    c.read(&mut got);
    assert_eq!(got, vec![7; 20]);
}

#[test]
fn data_that_skips_or_repeats_bytes_ends_the_session() {
    let (mut g, mut c) = open_pair(DEFAULT_CAP);
    let gap = forge(
        &mut g,
        &Frame::Data {
            offset: 1,
            bytes: vec![1],
        },
    );
    ends_session(
        &mut c,
        &gap,
        Error::OutOfOrder {
            expected: 0,
            got: 1,
        },
    );
}

#[test]
fn an_ack_of_bytes_never_sent_ends_the_session() {
    let (mut g, mut c) = open_pair(DEFAULT_CAP);
    let ack = forge(&mut c, &Frame::Ack { acked: 1 });
    ends_session(
        &mut g,
        &ack,
        Error::AheadOfSender {
            claimed: 1,
            sent: 0,
        },
    );
}

#[test]
fn data_past_the_peers_close_ends_the_session() {
    let (mut g, mut c) = open_pair(DEFAULT_CAP);
    let close = forge(&mut g, &Frame::Close { end: 0 });
    c.handle_input(&close).unwrap();
    assert!(c.read_closed());
    let more = forge(
        &mut g,
        &Frame::Data {
            offset: 0,
            bytes: vec![1],
        },
    );
    ends_session(&mut c, &more, Error::PastEnd { end: 0 });
}

#[test]
fn a_second_opening_ends_only_the_connection() {
    let (mut g, mut c) = open_pair(DEFAULT_CAP);
    let again = forge(
        &mut g,
        &Frame::Hello(Opening {
            session: SESSION,
            nonce: [9; 32],
            window: 8,
            received: 0,
            acked: 0,
        }),
    );
    let err = c.handle_input(&again).unwrap_err();
    assert_eq!(err, Error::Unexpected("a second opening"));
    assert!(!err.ends_session());
    assert_eq!(c.state(), State::Detached);
    c.attach([4; 32]).unwrap();
    assert_eq!(c.state(), State::Opening);
}

#[test]
fn moved_reaches_the_gateway_after_the_data_and_only_from_the_console() {
    let (mut g, mut c) = open_pair(DEFAULT_CAP);
    let to: SocketAddr = "[2001:db8::7]:4800".parse().unwrap();
    assert_eq!(c.write(b"last"), Ok(4));
    c.send_moved(to).unwrap();
    flush(&mut c, &mut g).unwrap();
    let mut got = Vec::new();
    g.read(&mut got);
    assert_eq!(got, b"last");
    assert_eq!(g.take_moved(), Some(to));
    assert_eq!(g.take_moved(), None);
    assert!(g.send_moved(to).is_err(), "the gateway never sends Moved");
    let forged = forge(&mut g, &Frame::Moved { to });
    assert_eq!(
        c.handle_input(&forged),
        Err(Error::Unexpected("a Moved frame from the gateway"))
    );
    assert_eq!(
        c.state(),
        State::Detached,
        "the connection ends, not the session"
    );
}

#[test]
fn moved_frames_round_trip_and_refuse_an_unknown_family() {
    for to in ["10.1.2.3:4800", "[::1]:1"] {
        let to: SocketAddr = to.parse().unwrap();
        let mut body = Vec::new();
        Frame::Moved { to }.encode_body(&mut body);
        assert_eq!(
            Frame::decode(crate::frame::KIND_MOVED, &body),
            Ok(Frame::Moved { to })
        );
        for cut in 0..body.len() {
            assert!(Frame::decode(crate::frame::KIND_MOVED, &body[..cut]).is_err());
        }
    }
    assert!(Frame::decode(crate::frame::KIND_MOVED, &[5, 1, 2, 3, 4, 0, 1]).is_err());
}
