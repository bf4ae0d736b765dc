//! A viewer session fed the message sequences TigerVNC 1.12 and noVNC send (per rfbproto:
//! ContinuousUpdates, Fence, ExtendedDesktopSize, QEMU extended key events, LED state), the
//! rules for input, view-only and illegal transitions, and the US keysym table.

use console::journal::{Button, InputEvent, ViewerId};
use console::keymap::{Keyboard, Layout};
use console::screen::{Area, Screen};
use console::session::{
    LedKind, Negotiated, PlanItem, Session, SessionError, SessionOutput, FENCE_REQUEST,
};
use proptest::prelude::*;
use rfb::framebuffer::UpdateDecoder;
use rfb::{
    ClientMessage, Encoding, Fence, PixelFormat, RectPayload, Rectangle, ServerMessage, Version,
};

const W: u16 = 720;
const H: u16 = 400;

fn session(view_only: bool) -> Session {
    Session::new(
        ViewerId(3),
        Negotiated {
            version: Version::V3_8,
            shared: true,
            view_only,
            width: W,
            height: H,
        },
    )
}

fn ok(s: &mut Session, m: ClientMessage) -> Vec<SessionOutput> {
    s.handle_message(m).expect("legal message")
}

fn fbur(incremental: bool) -> ClientMessage {
    ClientMessage::FramebufferUpdateRequest {
        incremental,
        x: 0,
        y: 0,
        width: W,
        height: H,
    }
}

fn fence(flags: u32, payload: &[u8]) -> Fence {
    Fence {
        flags,
        payload: payload.to_vec(),
    }
}

/// TigerVNC 1.12's SetEncodings (ZRLE preferred here; Tight and Hextile kept as numbers).
fn tigervnc_encodings() -> Vec<Encoding> {
    [
        16,
        7,
        5,
        0,
        1,
        -239,
        -223,
        -308,
        -224,
        -312,
        -313,
        -307,
        -258,
        -261,
        0x574d_5668,
        -247,
        -26,
    ]
    .into_iter()
    .map(Encoding::from)
    .collect()
}

/// noVNC's SetEncodings (1.4): CopyRect first, then pixel encodings and pseudo-encodings.
fn novnc_encodings() -> Vec<Encoding> {
    [
        1,
        7,
        -260,
        16,
        21,
        5,
        2,
        0,
        -26,
        -256,
        -223,
        -224,
        -258,
        -308,
        -309,
        -312,
        -313,
        -307,
        -1063131698,
        -239,
        -261,
        0x574d_5668,
    ]
    .into_iter()
    .map(Encoding::from)
    .collect()
}

fn led_screen(leds: u8) -> Screen {
    let mut screen = Screen::new(W, H).expect("size");
    let mut dec = UpdateDecoder::new(PixelFormat::RGBX32_LE).expect("format");
    let rect = Rectangle {
        x: 0,
        y: 0,
        width: 1,
        height: 1,
        payload: RectPayload::QemuLedState(leds),
    };
    screen.apply(&mut dec, &rect).expect("leds");
    screen
}

#[test]
fn tigervnc_112_session() {
    let screen = led_screen(0b010);
    let mut s = session(false);
    let out = ok(&mut s, ClientMessage::SetEncodings(tigervnc_encodings()));
    assert_eq!(
        out,
        vec![
            SessionOutput::Reply(ServerMessage::EndOfContinuousUpdates),
            SessionOutput::Reply(ServerMessage::Fence(fence(FENCE_REQUEST, &[]))),
        ]
    );
    assert!(s.poll_update(&screen).is_none(), "nothing before a request");
    ok(&mut s, fbur(false));
    let plan = s.poll_update(&screen).expect("first update");
    assert_eq!(
        plan.items,
        vec![
            PlanItem::ExtendedDesktopSize {
                reason: 0,
                status: 0,
                width: W,
                height: H
            },
            PlanItem::Pixels(Area::new(0, 0, W, H)),
            PlanItem::Leds(LedKind::Qemu, 0b010),
            PlanItem::ExtKeyAck,
        ]
    );
    let msg = s.encode_update(&screen, &plan).expect("encodes");
    let bytes = msg.to_bytes();
    let back = ServerMessage::decode(&bytes, &PixelFormat::RGBX32_LE, &Default::default());
    assert!(matches!(back, Ok(Some((ServerMessage::FramebufferUpdate(r), _))) if r.len() == 4));

    // The viewer answers our fence (no request flag): nothing to do.
    assert!(ok(&mut s, ClientMessage::Fence(fence(0, &[]))).is_empty());
    // It saw EndOfContinuousUpdates and fence support: it turns continuous updates on.
    let cu = ClientMessage::EnableContinuousUpdates {
        enable: true,
        x: 0,
        y: 0,
        width: W,
        height: H,
    };
    assert!(ok(&mut s, cu).is_empty());
    assert!(s.poll_update(&screen).is_none(), "no damage, no update");
    // Incremental requests are ignored while continuous updates are on.
    ok(&mut s, fbur(true));
    assert!(s.poll_update(&screen).is_none());
    s.handle_screen_change(&console::screen::Change::Pixels(Area::new(5, 5, 1, 1)));
    let plan = s
        .poll_update(&screen)
        .expect("continuous update without request");
    assert_eq!(plan.items, vec![PlanItem::Pixels(Area::new(0, 0, 64, 64))]);

    // A pixel-format switch is bracketed by a fence: echoed with the supported flags.
    let out = ok(
        &mut s,
        ClientMessage::Fence(fence(FENCE_REQUEST | 0b001 | (1 << 8), b"pf")),
    );
    assert_eq!(
        out,
        vec![SessionOutput::Reply(ServerMessage::Fence(fence(
            0b001, b"pf"
        )))]
    );
    // Remote resize: refused, as an ExtendedDesktopSize with status 1.
    let resize = ClientMessage::SetDesktopSize {
        width: 1280,
        height: 1024,
        screens: vec![],
    };
    assert!(ok(&mut s, resize).is_empty());
    let plan = s.poll_update(&screen).expect("resize answer");
    assert_eq!(
        plan.items,
        vec![PlanItem::ExtendedDesktopSize {
            reason: 1,
            status: 1,
            width: W,
            height: H
        }]
    );
    // Disabling is acknowledged every time, even when already off.
    let off = ClientMessage::EnableContinuousUpdates {
        enable: false,
        x: 0,
        y: 0,
        width: 0,
        height: 0,
    };
    for _ in 0..2 {
        assert_eq!(
            ok(&mut s, off.clone()),
            vec![SessionOutput::Reply(ServerMessage::EndOfContinuousUpdates)]
        );
    }
    s.handle_screen_change(&console::screen::Change::Pixels(Area::new(5, 5, 1, 1)));
    assert!(s.poll_update(&screen).is_none(), "back to request-driven");
    ok(&mut s, fbur(true));
    assert!(s.poll_update(&screen).is_some());
}

#[test]
fn novnc_session_with_qemu_extended_keys() {
    let screen = Screen::new(W, H).expect("size");
    let mut s = session(false);
    let out = ok(&mut s, ClientMessage::SetEncodings(novnc_encodings()));
    assert_eq!(
        out.len(),
        2,
        "EndOfContinuousUpdates and the fence announcement"
    );
    ok(&mut s, fbur(false));
    let plan = s.poll_update(&screen).expect("first update");
    assert!(plan.items.contains(&PlanItem::ExtKeyAck));
    // noVNC folds an 0xe0 prefix into bit 7 (keypad Enter = e0 1c -> 0x9c).
    for (keysym, keycode, scancode) in [(0x61, 0x1e, Some(0x1e)), (0xff8d, 0x9c, Some(0x9c))] {
        let out = ok(
            &mut s,
            ClientMessage::QemuExtendedKeyEvent {
                down: true,
                keysym,
                keycode,
            },
        );
        assert_eq!(
            out,
            vec![SessionOutput::Input(InputEvent::Key {
                down: true,
                keysym,
                scancode
            })]
        );
    }
    // A keycode of 0 carries no scancode.
    let out = ok(
        &mut s,
        ClientMessage::QemuExtendedKeyEvent {
            down: false,
            keysym: 0x61,
            keycode: 0,
        },
    );
    assert_eq!(
        out,
        vec![SessionOutput::Input(InputEvent::Key {
            down: false,
            keysym: 0x61,
            scancode: None
        })]
    );
}

#[test]
fn extensions_used_without_listing_them_close_the_viewer() {
    let mut s = session(false);
    ok(&mut s, ClientMessage::SetEncodings(vec![Encoding::Raw]));
    let cu = ClientMessage::EnableContinuousUpdates {
        enable: true,
        x: 0,
        y: 0,
        width: W,
        height: H,
    };
    let resize = ClientMessage::SetDesktopSize {
        width: 1,
        height: 1,
        screens: vec![],
    };
    let key = ClientMessage::QemuExtendedKeyEvent {
        down: true,
        keysym: 0x61,
        keycode: 0x1e,
    };
    for (m, e) in [
        (cu, Encoding::ContinuousUpdates),
        (resize, Encoding::ExtendedDesktopSize),
        (key, Encoding::QemuExtendedKeyEvent),
    ] {
        match s.handle_message(m) {
            Err(SessionError::NotNegotiated { encoding, .. }) => assert_eq!(encoding, e),
            other => panic!("expected NotNegotiated({e:?}), got {other:?}"),
        }
    }
    let bad = PixelFormat {
        bits_per_pixel: 24,
        ..PixelFormat::RGBX32_LE
    };
    assert!(matches!(
        s.handle_message(ClientMessage::SetPixelFormat(bad)),
        Err(SessionError::PixelFormat(_))
    ));
}

#[test]
fn view_only_viewers_send_no_input_but_keep_the_protocol() {
    let mut s = session(true);
    for m in [
        ClientMessage::KeyEvent {
            down: true,
            keysym: 0x61,
        },
        ClientMessage::PointerEvent {
            buttons: 1,
            x: 3,
            y: 4,
        },
        ClientMessage::ClientCutText(b"x".to_vec()),
    ] {
        assert!(ok(&mut s, m).is_empty());
    }
    let out = ok(&mut s, ClientMessage::Fence(fence(FENCE_REQUEST, b"1")));
    assert_eq!(out.len(), 1);
}

#[test]
fn pointer_events_become_motion_then_button_changes() {
    let mut s = session(false);
    let p = |buttons, x, y| ClientMessage::PointerEvent { buttons, x, y };
    assert_eq!(
        ok(&mut s, p(0b101, 10, 20)),
        vec![
            SessionOutput::Input(InputEvent::Motion { x: 10, y: 20 }),
            SessionOutput::Input(InputEvent::Button {
                down: true,
                button: Button::Left
            }),
            SessionOutput::Input(InputEvent::Button {
                down: true,
                button: Button::Right
            }),
        ]
    );
    assert_eq!(
        ok(&mut s, p(0b100, 10, 20)),
        vec![SessionOutput::Input(InputEvent::Button {
            down: false,
            button: Button::Left
        })]
    );
    assert!(ok(&mut s, p(0b100, 10, 20)).is_empty(), "nothing changed");
}

#[test]
fn leds_follow_the_guest_and_prefer_qemus_encoding() {
    let mut s = session(false);
    ok(
        &mut s,
        ClientMessage::SetEncodings(vec![Encoding::VmwareLedState]),
    );
    let screen = led_screen(0b100);
    ok(&mut s, fbur(true));
    let plan = s.poll_update(&screen).expect("initial LEDs");
    assert!(plan.items.contains(&PlanItem::Leds(LedKind::Vmware, 0b100)));
    ok(
        &mut s,
        ClientMessage::SetEncodings(vec![Encoding::QemuLedState, Encoding::VmwareLedState]),
    );
    s.handle_screen_change(&console::screen::Change::Leds(0b100));
    ok(&mut s, fbur(true));
    let plan = s.poll_update(&screen).expect("LED change");
    assert_eq!(plan.items, vec![PlanItem::Leds(LedKind::Qemu, 0b100)]);
}

#[test]
/// QEMU's en-us keymap (its default for plain KeyEvents) gives the US keys; a shifted
/// character is its key (the viewer sends Shift itself).
fn en_us_keymap_gives_the_us_keys() {
    let Ok(layout) = Layout::load(None) else {
        panic!("QEMU's en-us keymap is missing (install qemu-system-data)");
    };
    let kb = Keyboard::new(layout);
    let table: &[(u32, Option<u16>)] = &[
        (u32::from(b'a'), Some(0x1e)),
        (u32::from(b'A'), Some(0x1e)),
        (u32::from(b'z'), Some(0x2c)),
        (u32::from(b'1'), Some(0x02)),
        (u32::from(b'!'), Some(0x02)),
        (u32::from(b'0'), Some(0x0b)),
        (u32::from(b')'), Some(0x0b)),
        (u32::from(b'-'), Some(0x0c)),
        (u32::from(b'_'), Some(0x0c)),
        (u32::from(b'/'), Some(0x35)),
        (u32::from(b'?'), Some(0x35)),
        (u32::from(b'"'), Some(0x28)),
        (u32::from(b'~'), Some(0x29)),
        (u32::from(b' '), Some(0x39)),
        (0xff0d, Some(0x1c)), // Return
        (0xff08, Some(0x0e)), // BackSpace
        (0xff09, Some(0x0f)), // Tab
        (0xff1b, Some(0x01)), // Escape
        (0xff52, Some(0xc8)), // Up
        (0xff54, Some(0xd0)), // Down
        (0xff51, Some(0xcb)), // Left
        (0xff53, Some(0xcd)), // Right
        (0xffbe, Some(0x3b)), // F1
        (0xffc7, Some(0x44)), // F10
        (0xffc8, Some(0x57)), // F11
        (0xffc9, Some(0x58)), // F12
        (0xffe1, Some(0x2a)), // Shift_L
        (0xffe3, Some(0x1d)), // Control_L
        (0xffe9, Some(0x38)), // Alt_L
        (0xffe5, Some(0x3a)), // Caps_Lock
        (0x00e9, None),       // eacute: no key on a US layout
        (0x20ac, None),       // EuroSign
    ];
    for &(keysym, want) in table {
        assert_eq!(kb.translate(true, keysym, None), want, "keysym {keysym:#x}");
    }
    // Every printable ASCII character has a key.
    assert!((0x20u32..0x7f).all(|c| kb.translate(true, c, None).is_some()));
}

/// Messages a well-behaved TigerVNC or noVNC may send, in any order the extension rules
/// allow (the generator only enables CU / resize after listing them).
#[derive(Debug, Clone)]
enum Msg {
    List(bool, bool, bool),
    Fence(bool, u8, Vec<u8>),
    Cu(bool),
    Resize,
    Request(bool),
    Damage(u16, u16),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        2 => (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c)| Msg::List(a, b, c)),
        4 => (any::<bool>(), 0u8..8, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(r, f, p)| Msg::Fence(r, f, p)),
        3 => any::<bool>().prop_map(Msg::Cu),
        2 => Just(Msg::Resize),
        3 => any::<bool>().prop_map(Msg::Request),
        3 => (0..W, 0..H).prop_map(|(x, y)| Msg::Damage(x, y)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every fence request is echoed once, in order, with its payload and the supported
    /// flags; EndOfContinuousUpdates comes once at the first -313 listing and once per
    /// disable; every SetDesktopSize gets exactly one "prohibited" answer; nothing errs.
    #[test]
    fn extension_sequences_keep_their_promises(msgs in prop::collection::vec(msg(), 0..80)) {
        let screen = Screen::new(W, H).expect("size");
        let mut s = session(false);
        let (mut listed_cu, mut listed_eds) = (false, false);
        let (mut want_fences, mut got_fences) = (Vec::new(), Vec::new());
        let (mut want_eocu, mut got_eocu) = (0, 0);
        let (mut resizes, mut refusals) = (0, 0);
        // A refusal is owed and the viewer still lists ExtendedDesktopSize.
        let mut owed = false;
        let mut announcements = 0;
        for m in msgs {
            let message = match m {
                Msg::List(cu, f, eds) => {
                    let mut list = vec![Encoding::Zrle, Encoding::Raw];
                    if cu { list.push(Encoding::ContinuousUpdates); if !listed_cu { want_eocu += 1; } listed_cu = true; }
                    if f { list.push(Encoding::Fence); }
                    if eds { list.push(Encoding::ExtendedDesktopSize); }
                    listed_eds = eds;
                    // A viewer that no longer lists -308 cannot be answered with it.
                    owed &= eds;
                    ClientMessage::SetEncodings(list)
                }
                Msg::Fence(req, flags, payload) => {
                    let flags = u32::from(flags) | if req { FENCE_REQUEST } else { 0 };
                    if req { want_fences.push(fence(flags & 0b111, &payload)); }
                    ClientMessage::Fence(fence(flags, &payload))
                }
                Msg::Cu(enable) if listed_cu => {
                    if !enable { want_eocu += 1; }
                    ClientMessage::EnableContinuousUpdates { enable, x: 0, y: 0, width: W, height: H }
                }
                Msg::Resize if listed_eds => {
                    resizes += 1;
                    owed = true;
                    ClientMessage::SetDesktopSize { width: 800, height: 600, screens: vec![] }
                }
                Msg::Damage(x, y) => {
                    s.handle_screen_change(&console::screen::Change::Pixels(Area::new(x, y, 1, 1)));
                    continue;
                }
                Msg::Request(inc) => fbur(inc),
                Msg::Cu(_) | Msg::Resize => continue,
            };
            for out in s.handle_message(message).map_err(|e| TestCaseError::fail(e.to_string()))? {
                match out {
                    SessionOutput::Reply(ServerMessage::Fence(f)) if f.flags == FENCE_REQUEST => announcements += 1,
                    SessionOutput::Reply(ServerMessage::Fence(f)) => got_fences.push(f),
                    SessionOutput::Reply(ServerMessage::EndOfContinuousUpdates) => got_eocu += 1,
                    other => prop_assert!(false, "unexpected output {:?}", other),
                }
            }
            if let Some(plan) = s.poll_update(&screen) {
                let n = plan.items.iter().filter(|i| matches!(i, PlanItem::ExtendedDesktopSize { reason: 1, status: 1, .. })).count();
                prop_assert!(n <= 1);
                owed &= n == 0;
                refusals += n;
                s.encode_update(&screen, &plan).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        s.handle_message(fbur(false)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Some(plan) = s.poll_update(&screen) {
            let n = plan.items.iter().filter(|i| matches!(i, PlanItem::ExtendedDesktopSize { reason: 1, status: 1, .. })).count();
            owed &= n == 0;
            refusals += n;
        }
        prop_assert_eq!(got_fences, want_fences);
        prop_assert_eq!(got_eocu, want_eocu);
        prop_assert!(announcements <= 1);
        // Several requests before one update collapse into one answer.
        prop_assert!(refusals <= resizes);
        prop_assert!(!owed, "a SetDesktopSize was never answered");
    }
}
