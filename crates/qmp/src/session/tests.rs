use super::*;
use proptest::prelude::*;
use serde_json::json;

const GREETING: &[u8] = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian\"}, \"capabilities\": [\"oob\"]}}\r\n";
const OK: &[u8] = b"{\"return\": {}}\r\n";

fn ready(ids: IdMode) -> Session {
    let mut s = Session::new(Config {
        ids,
        ..Config::default()
    });
    s.handle_input(GREETING).unwrap();
    let caps = s.pending_transmit().to_vec();
    s.transmitted(caps.len());
    match ids {
        IdMode::Omit => s.handle_input(OK).unwrap(),
        IdMode::Numbered => s.handle_input(b"{\"return\": {}, \"id\": 0}\r\n").unwrap(),
    }
    assert!(matches!(s.poll_output(), Some(Output::Ready(_))));
    s
}

fn take_transmit(s: &mut Session) -> Vec<u8> {
    let bytes = s.pending_transmit().to_vec();
    s.transmitted(bytes.len());
    bytes
}

#[test]
fn handshake_sends_compact_capabilities_then_reports_ready() {
    let mut s = Session::new(Config::default());
    assert_eq!(s.state(), SessionState::AwaitingGreeting);
    assert!(s.pending_transmit().is_empty());
    assert!(matches!(
        s.submit("stop", &Value::Null),
        Err(ProtocolError::NotReady)
    ));
    s.handle_input(GREETING).unwrap();
    assert_eq!(s.state(), SessionState::Negotiating);
    assert_eq!(
        take_transmit(&mut s),
        b"{\"execute\":\"qmp_capabilities\"}\n"
    );
    assert_eq!(s.poll_output(), None);
    s.handle_input(OK).unwrap();
    assert_eq!(s.state(), SessionState::Ready);
    let Some(Output::Ready(g)) = s.poll_output() else {
        panic!("no Ready")
    };
    assert_eq!(g.version, (7, 2, 22));
}

#[test]
fn first_line_not_a_greeting_is_malformed_greeting() {
    for first in [&b"hello\n"[..], b"{\"QMP\": 1}\n"] {
        let mut s = Session::new(Config::default());
        let r = s.handle_input(first);
        assert!(
            matches!(r, Err(ProtocolError::MalformedGreeting { .. })),
            "{r:?}"
        );
        assert_eq!(s.state(), SessionState::Failed);
    }
}

#[test]
fn a_previous_clients_messages_before_the_greeting_are_skipped() {
    let mut s = Session::new(Config::default());
    let stale = b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESUME\"}\r\n{\"return\": {}}\r\n";
    s.handle_input(stale).unwrap();
    assert_eq!(s.state(), SessionState::AwaitingGreeting);
    assert_eq!(
        s.poll_output(),
        None,
        "nothing of a previous client is reported"
    );
    s.handle_input(GREETING).unwrap();
    assert_eq!(s.state(), SessionState::Negotiating);
    // Without a greeting, a bound.
    let mut s = Session::new(Config::default());
    for _ in 0..MAX_STALE_BEFORE_GREETING {
        s.handle_input(OK).unwrap();
    }
    assert!(matches!(
        s.handle_input(OK),
        Err(ProtocolError::MalformedGreeting { .. })
    ));
}

#[test]
fn refused_capabilities_is_an_error() {
    let mut s = Session::new(Config::default());
    s.handle_input(GREETING).unwrap();
    let r = s.handle_input(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"x\"}}\n");
    assert!(
        matches!(r, Err(ProtocolError::CapabilitiesRefused(_))),
        "{r:?}"
    );
}

#[test]
fn commands_are_compact_and_batch_into_one_transmit() {
    let mut s = ready(IdMode::Omit);
    s.submit("input-send-event", &json!({"events": [{"type": "key", "data": {"down": true, "key": {"type": "qcode", "data": "a"}}}]}))
        .unwrap();
    s.submit("query-status", &json!({})).unwrap();
    assert_eq!(
        String::from_utf8(take_transmit(&mut s)).unwrap(),
        "{\"execute\":\"input-send-event\",\"arguments\":{\"events\":[{\"data\":{\"down\":true,\"key\":{\"data\":\"a\",\"type\":\"qcode\"}},\"type\":\"key\"}]}}\n\
         {\"execute\":\"query-status\"}\n"
    );
}

#[test]
fn numbered_ids_are_short_counters() {
    let mut s = ready(IdMode::Numbered);
    s.submit("stop", &Value::Null).unwrap();
    s.submit("cont", &Value::Null).unwrap();
    assert_eq!(
        take_transmit(&mut s),
        b"{\"execute\":\"stop\",\"id\":1}\n{\"execute\":\"cont\",\"id\":2}\n"
    );
}

#[test]
fn partial_writes_keep_the_rest() {
    let mut s = ready(IdMode::Omit);
    s.submit("stop", &Value::Null).unwrap();
    s.transmitted(3);
    assert_eq!(s.pending_transmit(), b"xecute\":\"stop\"}\n");
    s.transmitted(1000);
    assert!(s.pending_transmit().is_empty());
}

#[test]
fn events_and_replies_share_one_ordered_sequence() {
    let mut s = ready(IdMode::Omit);
    let stop = s.submit("stop", &Value::Null).unwrap();
    s.handle_input(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n{\"return\": {}}\r\n")
        .unwrap();
    let Some(Output::Event(event)) = s.poll_output() else {
        panic!("no event")
    };
    let Some(Output::Reply { token, seq, result }) = s.poll_output() else {
        panic!("no reply")
    };
    assert_eq!(event.name, "STOP");
    assert_eq!(token, stop);
    assert_eq!(result, Ok(json!({})));
    // Greeting #0, capabilities reply #1, STOP #2, stop's reply #3.
    assert_eq!((event.seq, seq), (Seq(2), Seq(3)));
}

#[test]
fn replies_without_id_match_in_order() {
    let mut s = ready(IdMode::Omit);
    let a = s.submit("query-status", &Value::Null).unwrap();
    let b = s
        .submit("input-send-event", &json!({"events": []}))
        .unwrap();
    s.handle_input(b"{\"return\": {\"running\": true, \"status\": \"running\"}}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"VM not running\"}}\n")
        .unwrap();
    let Some(Output::Reply {
        token,
        result: Ok(_),
        ..
    }) = s.poll_output()
    else {
        panic!()
    };
    assert_eq!(token, a);
    let Some(Output::Reply {
        token,
        result: Err(e),
        ..
    }) = s.poll_output()
    else {
        panic!()
    };
    assert_eq!((token, e.desc.as_str()), (b, "VM not running"));
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn replies_with_id_match_by_id_in_any_order() {
    let mut s = ready(IdMode::Numbered);
    let a = s.submit("a", &Value::Null).unwrap();
    let b = s.submit("b", &Value::Null).unwrap();
    s.handle_input(b"{\"return\": 2, \"id\": 2}\n{\"return\": 1, \"id\": 1}\n")
        .unwrap();
    let got: Vec<_> = std::iter::from_fn(|| s.poll_output())
        .map(|o| match o {
            Output::Reply { token, result, .. } => (token, result.unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(b, json!(2)), (a, json!(1))]);
}

#[test]
fn unmatched_reply_kills_the_session_for_good() {
    let mut s = ready(IdMode::Omit);
    let r = s.handle_input(OK);
    assert!(
        matches!(r, Err(ProtocolError::UnmatchedReply { id: None })),
        "{r:?}"
    );
    assert_eq!(s.state(), SessionState::Failed);
    assert!(matches!(s.handle_input(OK), Err(ProtocolError::Failed(_))));
    assert!(matches!(
        s.submit("stop", &Value::Null),
        Err(ProtocolError::Failed(_))
    ));
    let mut s = ready(IdMode::Numbered);
    s.submit("stop", &Value::Null).unwrap();
    let r = s.handle_input(b"{\"return\": {}, \"id\": 9}\n");
    assert!(
        matches!(r, Err(ProtocolError::UnmatchedReply { id: Some(9) })),
        "{r:?}"
    );
}

#[test]
fn overlong_line_is_fatal_before_it_is_buffered() {
    let mut s = Session::new(Config {
        max_line: 64,
        ..Config::default()
    });
    let r = s.handle_input(&[b'x'; 65]);
    assert!(
        matches!(r, Err(ProtocolError::LineTooLong { max: 64 })),
        "{r:?}"
    );
}

/// A transcript: greeting, capabilities reply, then events and replies for `n` commands.
fn transcript(replies: usize) -> Vec<u8> {
    let mut t = GREETING.to_vec();
    t.extend_from_slice(OK);
    for i in 0..replies {
        t.extend_from_slice(
            format!("{{\"event\": \"E{i}\", \"data\": {{\"n\": {i}}}}}\r\n").as_bytes(),
        );
        t.extend_from_slice(format!("{{\"return\": {i}}}\r\n").as_bytes());
    }
    t
}

fn run(chunks: &[&[u8]], commands: usize) -> (Vec<Output>, Result<(), ProtocolError>) {
    let mut s = Session::new(Config::default());
    let mut outputs = Vec::new();
    let mut submitted = false;
    for chunk in chunks {
        if let Err(e) = s.handle_input(chunk) {
            return (outputs, Err(e));
        }
        while let Some(o) = s.poll_output() {
            outputs.push(o);
        }
        if s.state() == SessionState::Ready && !submitted {
            for i in 0..commands {
                s.submit(&format!("c{i}"), &Value::Null).unwrap();
            }
            submitted = true;
        }
    }
    (outputs, Ok(()))
}

fn split_at_points(data: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= data.len() + 1);
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points {
        chunks.push(&data[start..p]);
        start = p;
    }
    chunks.push(&data[start..]);
    chunks
}

proptest! {
    /// Any chunking of the same bytes gives the same outputs, in the same order, with the
    /// same sequence numbers.
    #[test]
    fn chunking_does_not_change_outputs(n in 0usize..6, points in proptest::collection::vec(any::<usize>(), 0..40)) {
        let t = transcript(n);
        // The handshake must finish before commands are submitted, so feed it whole first.
        let handshake = GREETING.len() + OK.len();
        let (head, tail) = t.split_at(handshake);
        let mut chunks = vec![head];
        chunks.extend(split_at_points(tail, points));
        let (chunked, r1) = run(&chunks, n);
        let (whole, r2) = run(&[head, tail], n);
        prop_assert!(r1.is_ok() && r2.is_ok());
        prop_assert_eq!(&chunked, &whole);
        prop_assert_eq!(chunked.len(), 1 + 2 * n);
        let seqs: Vec<u64> = chunked.iter().filter_map(|o| match o {
            Output::Event(e) => Some(e.seq.0),
            Output::Reply { seq, .. } => Some(seq.0),
            Output::Ready(_) => None,
        }).collect();
        prop_assert_eq!(seqs, (2..2 + 2 * n as u64).collect::<Vec<_>>());
    }

    /// Garbage never panics; once the session fails it stays failed; an unfinished line
    /// never holds more than the limit.
    #[test]
    fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20), after_handshake in any::<bool>()) {
        let mut s = Session::new(Config { max_line: 128, ..Config::default() });
        if after_handshake {
            s.handle_input(GREETING).unwrap();
            s.handle_input(OK).unwrap();
        }
        let mut failed = false;
        for chunk in &chunks {
            let r = s.handle_input(chunk);
            if failed {
                prop_assert!(r.is_err());
            }
            failed |= r.is_err();
            prop_assert!(s.framer.partial_len() <= 128);
            while s.poll_output().is_some() {}
        }
        prop_assert_eq!(failed, s.state() == SessionState::Failed);
    }

    /// A garbage line while a command waits: either a protocol error that kills the session
    /// for good, or (if it happens to be a valid event or blank) the session still matches
    /// the real reply to the command. Never a panic.
    #[test]
    fn garbage_lines_between_valid_lines(garbage in "[ -~]{0,60}") {
        let mut s = ready(IdMode::Omit);
        let token = s.submit("x", &Value::Null).unwrap();
        let mut input = garbage.into_bytes();
        input.push(b'\n');
        match s.handle_input(&input) {
            Err(_) => {
                prop_assert_eq!(s.state(), SessionState::Failed);
                prop_assert!(s.handle_input(OK).is_err());
            }
            Ok(()) => {
                // Only a line that is itself a reply may answer the command.
                let mut answered = false;
                while let Some(o) = s.poll_output() {
                    answered |= matches!(o, Output::Reply { token: t, .. } if t == token);
                }
                if answered {
                    return Ok(());
                }
                s.handle_input(OK).unwrap();
                let replied = match s.poll_output() {
                    Some(Output::Reply { token: t, .. }) => Some(t),
                    _ => None,
                };
                prop_assert_eq!(replied, Some(token));
            }
        }
    }
}
