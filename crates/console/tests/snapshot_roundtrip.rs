//! The console snapshot: random states round-trip exactly, restored parts freeze back to the
//! same state, every malformed input is a typed error (never a panic), unknown or
//! wrong-version pieces are refused by name, and a restored ZRLE viewer keeps decoding.

use console::journal::{Button, Config, InputEvent, Journal, ViewerId};
use console::screen::{Screen, ScreenState};
use console::serial::SerialState;
use console::session::{Negotiated, Session, SessionState, SESSION_STATE_VERSION};
use console::snapshot::{
    ConsoleSnapshot, SnapshotError, SnapshotReader, SnapshotWriter, StreamPiece,
};
use proptest::prelude::*;
use rfb::framebuffer::{Framebuffer, UpdateDecoder};
use rfb::{ClientMessage, Encoding, PixelFormat, RectPayload, Rectangle, ServerMessage, Version};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn screen(w: u16, h: u16, seed: u32, cursor: bool, leds: Option<u8>) -> Screen {
    let mut s = Screen::new(w, h).expect("size");
    let mut dec = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    let n = usize::from(w) * usize::from(h);
    let data: Vec<u8> = (0..n)
        .flat_map(|i| {
            let v = u32::try_from(i).unwrap_or(0).wrapping_mul(seed | 1) >> 7;
            (v & 0x00ff_ffff).to_le_bytes()
        })
        .collect();
    let rects = [
        Some(Rectangle {
            x: 0,
            y: 0,
            width: w,
            height: h,
            payload: RectPayload::Raw(data),
        }),
        cursor.then(|| Rectangle {
            x: 1,
            y: 2,
            width: 9,
            height: 3,
            payload: RectPayload::Cursor {
                pixels: vec![0x7f; 9 * 3 * 4],
                mask: vec![0xff, 0x80, 0x00, 0x00, 0x55, 0x80],
            },
        }),
        leds.map(|l| Rectangle {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
            payload: RectPayload::QemuLedState(l),
        }),
    ];
    for r in rects.into_iter().flatten() {
        s.apply(&mut dec, &r).expect("applies");
    }
    s
}

fn session(id: u32, msgs: &[ClientMessage]) -> Session {
    let mut s = Session::new(
        ViewerId(id),
        Negotiated {
            version: Version::V3_8,
            shared: id.is_multiple_of(2),
            view_only: id.is_multiple_of(3),
            width: 100,
            height: 60,
        },
    );
    for m in msgs {
        // Illegal ones are refused and change nothing; fine for a random state.
        let _ = s.handle_message(m.clone());
    }
    s
}

fn client_msg() -> impl Strategy<Value = ClientMessage> {
    let enc = prop::sample::select(vec![0, 1, 16, -223, -239, -258, -261, -308, -312, -313, 7]);
    prop_oneof![
        prop::collection::vec(enc, 0..12)
            .prop_map(|l| ClientMessage::SetEncodings(l.into_iter().map(Encoding::from).collect())),
        (any::<bool>(), 0..100u16, 0..60u16).prop_map(|(incremental, x, y)| {
            ClientMessage::FramebufferUpdateRequest {
                incremental,
                x,
                y,
                width: 10,
                height: 10,
            }
        }),
        (any::<bool>(), 0..100u16).prop_map(|(enable, x)| ClientMessage::EnableContinuousUpdates {
            enable,
            x,
            y: 0,
            width: 50,
            height: 50
        }),
        (any::<u8>(), 0..100u16, 0..60u16)
            .prop_map(|(buttons, x, y)| ClientMessage::PointerEvent { buttons, x, y }),
        Just(ClientMessage::SetDesktopSize {
            width: 1,
            height: 1,
            screens: vec![]
        }),
    ]
}

fn journal(events: &[(bool, u16)]) -> Journal {
    let t0 = Instant::now();
    let mut j = Journal::new(Config::default(), false);
    for (i, &(down, k)) in events.iter().enumerate() {
        let now = t0 + Duration::from_millis(u64::try_from(i).unwrap_or(0) * 7);
        let event = if k % 5 == 0 {
            InputEvent::Button {
                down,
                button: Button::Middle,
            }
        } else {
            InputEvent::Key {
                down,
                keysym: 0x61 + u32::from(k),
                scancode: Some(0x10 + k),
            }
        };
        j.push(ViewerId(1), event, now).expect("room");
    }
    j
}

fn console_snapshot() -> impl Strategy<Value = ConsoleSnapshot> {
    let sizes = prop::sample::select(vec![(1u16, 1u16), (72, 40), (100, 60), (130, 65)]);
    (
        prop::collection::vec((any::<bool>(), 0..40u16), 0..30),
        sizes,
        any::<u32>(),
        any::<bool>(),
        prop::option::of(0u8..8),
        prop::collection::vec(
            (0..1000u32, prop::collection::vec(client_msg(), 0..10)),
            0..4,
        ),
    )
        .prop_map(|(events, (w, h), seed, cursor, leds, viewers)| {
            let sessions: BTreeMap<ViewerId, SessionState> = viewers
                .iter()
                .map(|(id, msgs)| (ViewerId(*id), session(*id, msgs).freeze()))
                .collect();
            ConsoleSnapshot {
                journal: journal(&events).freeze(),
                screen: screen(w, h, seed, cursor, leds).freeze(),
                sessions,
                serial: (seed % 2 == 1).then(|| serial(seed)),
                streams: BTreeMap::new(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_states_round_trip_and_restore(snap in console_snapshot()) {
        let bytes = snap.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = ConsoleSnapshot::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &snap);
        // Each part restores and freezes back to the same state.
        let screen = Screen::restore(back.screen.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(screen.freeze(), snap.screen.clone());
        for (id, state) in back.sessions {
            let mut s = Session::restore(state.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(s.id(), id);
            prop_assert_eq!(s.freeze(), state);
        }
        let j = Journal::restore(back.journal, Instant::now()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(j.held(), snap.journal.held());
    }

    /// Random bytes, and random corruptions of a real snapshot, are typed errors.
    #[test]
    fn hostile_bytes_never_panic(
        noise in prop::collection::vec(any::<u8>(), 0..256),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        prop_assert!(ConsoleSnapshot::decode(&noise).is_err());
        let mut with_magic = b"DMORESNP\0\0\0\x01".to_vec();
        with_magic.extend_from_slice(&noise);
        prop_assert!(ConsoleSnapshot::decode(&with_magic).is_err());
        let good = small_snapshot().encode().expect("encodes");
        let mut bad = good.clone();
        for (i, x) in flips {
            let i = i.index(bad.len());
            bad[i] ^= x;
        }
        prop_assert!(ConsoleSnapshot::decode(&bad).is_err());
    }
}

fn small_snapshot() -> ConsoleSnapshot {
    let mut sessions = BTreeMap::new();
    sessions.insert(ViewerId(4), session(4, &[]).freeze());
    ConsoleSnapshot {
        journal: journal(&[(true, 1), (false, 1)]).freeze(),
        screen: screen(72, 40, 9, true, Some(2)).freeze(),
        sessions,
        serial: Some(serial(9)),
        streams: BTreeMap::from([(ViewerId(4), stream_piece())]),
    }
}

/// A serial lane with output beyond its scrollback and typed bytes pending.
fn serial(seed: u32) -> SerialState {
    let mut s = SerialState::new(16);
    s.output
        .push(format!("line {seed}\r\nline {}\r\n", seed + 1).as_bytes());
    s.input.accept(b"uname -a\n");
    s
}

/// A gateway viewer's stream with bytes in both directions.
fn stream_piece() -> StreamPiece {
    let config = resume::Config::new(resume::Role::Console, vec![7; 32]);
    let mut s = resume::Stream::new(config, [3; 16]).expect("stream");
    s.write(b"unacknowledged update bytes").expect("write");
    StreamPiece {
        stream: s.export(),
        unread: b"half a key ev".to_vec(),
    }
}

#[test]
fn a_gateway_viewers_stream_round_trips_and_needs_its_session() {
    let snap = small_snapshot();
    let bytes = snap.encode().expect("encodes");
    assert_eq!(ConsoleSnapshot::decode(&bytes).expect("decodes"), snap);
    let mut orphan = snap.clone();
    orphan.streams.insert(ViewerId(9), stream_piece());
    let err = ConsoleSnapshot::decode(&orphan.encode().expect("encodes")).unwrap_err();
    assert!(err.to_string().contains("resume-stream/9"), "{err}");
}

/// Re-frames the pieces of `snap` with `edit` applied to the list of (kind, version, bytes).
fn reframe(snap: &[u8], edit: impl FnOnce(&mut Vec<(String, u32, Vec<u8>)>)) -> Vec<u8> {
    let mut r = SnapshotReader::parse(snap).expect("parses");
    let kinds: Vec<String> = r.kinds().map(str::to_owned).collect();
    let mut pieces = Vec::new();
    for k in kinds {
        let version = if k.starts_with("session/") {
            SESSION_STATE_VERSION
        } else {
            1 // journal, screen and resume-stream are at 1
        };
        let bytes = r
            .take_bytes(&k, version)
            .expect("the version written")
            .expect("present");
        pieces.push((k, version, bytes.to_vec()));
    }
    edit(&mut pieces);
    let mut w = SnapshotWriter::new();
    for (k, v, b) in &pieces {
        w.piece(k, *v, b).expect("piece");
    }
    w.finish().expect("finish")
}

#[test]
fn every_truncation_is_a_typed_error() {
    let good = small_snapshot().encode().expect("encodes");
    for n in 0..good.len() {
        match ConsoleSnapshot::decode(&good[..n]) {
            Err(
                SnapshotError::Truncated(_)
                | SnapshotError::Checksum { .. }
                | SnapshotError::BadMagic,
            ) => {}
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[test]
fn a_flipped_bit_fails_the_checksum() {
    let mut bad = small_snapshot().encode().expect("encodes");
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    assert!(matches!(
        ConsoleSnapshot::decode(&bad),
        Err(SnapshotError::Checksum { .. })
    ));
}

#[test]
fn unknown_pieces_and_versions_are_refused_by_name() {
    let good = small_snapshot().encode().expect("encodes");
    let with_tcp = reframe(&good, |p| p.push(("tcp/4".into(), 1, vec![1, 2, 3])));
    match ConsoleSnapshot::decode(&with_tcp) {
        Err(SnapshotError::Unconsumed(kind)) => assert_eq!(kind, "tcp/4"),
        other => panic!("{other:?}"),
    }
    let newer = reframe(&good, |p| {
        if let Some(s) = p.iter_mut().find(|(k, _, _)| k == "screen") {
            s.1 = 2;
        }
    });
    match ConsoleSnapshot::decode(&newer) {
        Err(SnapshotError::PieceVersion {
            kind,
            found: 2,
            expected: 1,
        }) => assert_eq!(kind, "screen"),
        other => panic!("{other:?}"),
    }
    let no_journal = reframe(&good, |p| p.retain(|(k, _, _)| k != "journal"));
    assert!(
        matches!(ConsoleSnapshot::decode(&no_journal), Err(SnapshotError::Missing(k)) if k == "journal")
    );
    let twice = reframe(&good, |p| {
        let first = p[0].clone();
        p.push(first);
    });
    assert!(matches!(
        ConsoleSnapshot::decode(&twice),
        Err(SnapshotError::Duplicate(_))
    ));
    let garbled = reframe(&good, |p| {
        if let Some(s) = p.iter_mut().find(|(k, _, _)| k == "session/4") {
            s.2.truncate(5);
        }
    });
    assert!(matches!(
        ConsoleSnapshot::decode(&garbled),
        Err(SnapshotError::Decode { .. })
    ));
}

/// A viewer of each zlib-stream encoding decodes what the source and then the restored
/// destination sent with its one inflater per stream.
#[test]
fn restored_viewer_keeps_decoding_one_stream() {
    for encoding in [
        Encoding::Zrle,
        Encoding::Zlib,
        Encoding::Tight,
        Encoding::Hextile,
    ] {
        restored_viewer_keeps_decoding(encoding);
    }
}

fn restored_viewer_keeps_decoding(encoding: Encoding) {
    let screen = screen(130, 65, 77, false, None);
    let mut s = session(
        1,
        &[ClientMessage::SetEncodings(vec![
            encoding,
            Encoding::DesktopSize,
        ])],
    );
    let mut fb = Framebuffer::new(130, 65);
    let mut viewer = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    let mut show = |msg: ServerMessage, fb: &mut Framebuffer| {
        let ServerMessage::FramebufferUpdate(rects) = msg else {
            panic!("update")
        };
        for r in &rects {
            let e = r.payload.encoding();
            assert!(e == encoding || e == Encoding::DesktopSize, "{e:?}");
            viewer
                .apply(fb, r)
                .expect("the viewer's one inflater decodes it");
        }
    };
    s.handle_message(ClientMessage::FramebufferUpdateRequest {
        incremental: false,
        x: 0,
        y: 0,
        width: 130,
        height: 65,
    })
    .expect("request");
    let plan = s.poll_update(&screen).expect("update");
    show(s.encode_update(&screen, &plan).expect("encodes"), &mut fb);
    // Freeze: the source may not emit more; the snapshot crosses; the destination resumes.
    let state = s.freeze();
    assert!(
        s.encode_update(&screen, &plan).is_err(),
        "frozen stream stays ended"
    );
    let mut snap = small_snapshot();
    snap.sessions = BTreeMap::from([(ViewerId(1), state)]);
    snap.streams.clear();
    let back = ConsoleSnapshot::decode(&snap.encode().expect("encodes")).expect("decodes");
    let mut restored = Session::restore(back.sessions[&ViewerId(1)].clone()).expect("restores");
    let other = screen_with_change();
    restored
        .handle_message(ClientMessage::FramebufferUpdateRequest {
            incremental: false,
            x: 0,
            y: 0,
            width: 130,
            height: 65,
        })
        .expect("request");
    let plan = restored.poll_update(&other).expect("update");
    show(
        restored.encode_update(&other, &plan).expect("encodes"),
        &mut fb,
    );
    assert!(fb == *other.framebuffer(), "{encoding:?}");
}

fn screen_with_change() -> Screen {
    screen(130, 65, 1234, false, None)
}

#[test]
fn restore_rejects_inconsistent_states() {
    let st: ScreenState = screen(72, 40, 3, false, None).freeze();
    let mut bytes = postcard::to_allocvec(&st).expect("ser");
    // Bump the width (second field, a varint right after the version): pixels no longer fit.
    bytes[1] = bytes[1].wrapping_add(1);
    let bad: ScreenState = postcard::from_bytes(&bytes).expect("still well-formed");
    assert!(matches!(
        Screen::restore(bad),
        Err(console::screen::ScreenRestoreError::Invalid(_))
    ));
}
