//! Property tests: every message round-trips through encode/decode, also when fed to the
//! stream decoders in chunks of random sizes; the two handshakes complete against each other
//! for every version and security type, and fail together on a wrong password.

use proptest::prelude::*;
use rfb::{
    ClientConfig, ClientHandshake, ClientMessage, ClientMessageDecoder, Colour, Encoding, Fence,
    HandshakeError, Limits, Password, PixelFormat, QemuAudio, RectPayload, Rectangle, Screen,
    SecurityType, ServerConfig, ServerHandshake, ServerInit, ServerMessage, ServerMessageDecoder,
    Version,
};

fn pixel_format() -> impl Strategy<Value = PixelFormat> {
    (prop::sample::select(vec![8u8, 16, 32]), any::<[u8; 16]>()).prop_map(|(bpp, b)| {
        // from_bytes reads any non-zero flag as true; normalise so encode/decode is exact.
        let mut b = b;
        b[0] = bpp;
        b[2] &= 1;
        b[3] &= 1;
        PixelFormat::from_bytes(&b)
    })
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        prop::sample::select(vec![
            0, 1, 16, -223, -224, -239, -257, -258, -261, -308, -312, -313, 0x574d5668
        ]),
        any::<i32>()
    ]
    .prop_map(Encoding::from)
}

fn screen() -> impl Strategy<Value = Screen> {
    (
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        0..=16384u16,
        0..=16384u16,
        any::<u32>(),
    )
        .prop_map(|(id, x, y, width, height, flags)| Screen {
            id,
            x,
            y,
            width,
            height,
            flags,
        })
}

fn fence() -> impl Strategy<Value = Fence> {
    (any::<u32>(), prop::collection::vec(any::<u8>(), 0..=64))
        .prop_map(|(flags, payload)| Fence { flags, payload })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let area = (
        any::<bool>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
    );
    prop_oneof![
        pixel_format().prop_map(ClientMessage::SetPixelFormat),
        prop::collection::vec(encoding(), 0..40).prop_map(ClientMessage::SetEncodings),
        area.prop_map(|(incremental, x, y, width, height)| {
            ClientMessage::FramebufferUpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            }
        }),
        (any::<bool>(), any::<u32>())
            .prop_map(|(down, keysym)| ClientMessage::KeyEvent { down, keysym }),
        (any::<u8>(), any::<u16>(), any::<u16>())
            .prop_map(|(buttons, x, y)| ClientMessage::PointerEvent { buttons, x, y }),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(ClientMessage::ClientCutText),
        area.prop_map(
            |(enable, x, y, width, height)| ClientMessage::EnableContinuousUpdates {
                enable,
                x,
                y,
                width,
                height
            }
        ),
        fence().prop_map(ClientMessage::Fence),
        (
            0..=16384u16,
            0..=16384u16,
            prop::collection::vec(screen(), 0..5)
        )
            .prop_map(|(width, height, screens)| ClientMessage::SetDesktopSize {
                width,
                height,
                screens
            }),
        (any::<bool>(), any::<u32>(), any::<u32>()).prop_map(|(down, keysym, keycode)| {
            ClientMessage::QemuExtendedKeyEvent {
                down,
                keysym,
                keycode,
            }
        }),
        prop_oneof![
            Just(QemuAudio::Enable),
            Just(QemuAudio::Disable),
            (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(format, channels, frequency)| {
                QemuAudio::SetFormat {
                    format,
                    channels,
                    frequency,
                }
            }),
        ]
        .prop_map(ClientMessage::QemuAudio),
    ]
}

/// A rectangle whose payload fits `pf`; never LastRect (that one ends an update).
fn rectangle(pf: PixelFormat) -> impl Strategy<Value = Rectangle> {
    let bpp = usize::from(pf.bits_per_pixel / 8);
    (
        any::<u16>(),
        any::<u16>(),
        0..9u16,
        0..9u16,
        0..11u8,
        any::<[u8; 4]>(),
    )
        .prop_flat_map(move |(x, y, w, h, kind, n)| {
            let pixels = usize::from(w) * usize::from(h) * bpp;
            let mask = usize::from(w).div_ceil(8) * usize::from(h);
            let bytes = |len| prop::collection::vec(any::<u8>(), len);
            let payload: BoxedStrategy<RectPayload> = match kind {
                0 => bytes(pixels).prop_map(RectPayload::Raw).boxed(),
                1 => Just(RectPayload::CopyRect {
                    src_x: u16::from_be_bytes([n[0], n[1]]),
                    src_y: u16::from_be_bytes([n[2], n[3]]),
                })
                .boxed(),
                2 => bytes(usize::from(n[0])).prop_map(RectPayload::Zrle).boxed(),
                3 => (bytes(pixels), bytes(mask))
                    .prop_map(|(pixels, mask)| RectPayload::Cursor { pixels, mask })
                    .boxed(),
                4 => Just(RectPayload::DesktopSize).boxed(),
                5 => Just(RectPayload::QemuPointerMotionChange).boxed(),
                6 => Just(RectPayload::QemuExtendedKeyEvent).boxed(),
                7 => Just(RectPayload::QemuLedState(n[0])).boxed(),
                8 => prop::collection::vec(screen(), 0..4)
                    .prop_map(RectPayload::ExtendedDesktopSize)
                    .boxed(),
                9 => bytes(usize::from(n[0]))
                    .prop_map(RectPayload::DesktopName)
                    .boxed(),
                _ => Just(RectPayload::VmwareLedState(u32::from_be_bytes(n))).boxed(),
            };
            payload.prop_map(move |payload| Rectangle {
                x,
                y,
                width: w,
                height: h,
                payload,
            })
        })
}

fn server_message(pf: PixelFormat) -> impl Strategy<Value = ServerMessage> {
    let last = Rectangle {
        x: 0,
        y: 0,
        width: 0,
        height: 0,
        payload: RectPayload::LastRect,
    };
    prop_oneof![
        (prop::collection::vec(rectangle(pf), 0..6), any::<bool>()).prop_map(
            move |(mut rects, end)| {
                if end {
                    rects.push(last.clone());
                }
                ServerMessage::FramebufferUpdate(rects)
            }
        ),
        (
            any::<u16>(),
            prop::collection::vec(any::<(u16, u16, u16)>(), 0..20)
        )
            .prop_map(|(first_colour, c)| {
                let colours = c
                    .into_iter()
                    .map(|(red, green, blue)| Colour { red, green, blue })
                    .collect();
                ServerMessage::SetColourMapEntries {
                    first_colour,
                    colours,
                }
            }),
        Just(ServerMessage::Bell),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(ServerMessage::ServerCutText),
        Just(ServerMessage::EndOfContinuousUpdates),
        fence().prop_map(ServerMessage::Fence),
    ]
}

/// A pixel format and server messages whose pixel payloads fit it.
fn pf_and_messages() -> impl Strategy<Value = (PixelFormat, Vec<ServerMessage>)> {
    pixel_format().prop_flat_map(|pf| (Just(pf), prop::collection::vec(server_message(pf), 1..6)))
}

/// Splits `bytes` into chunks whose sizes cycle through `sizes`.
fn chunks<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at((*size).clamp(1, rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

proptest! {
    #[test]
    fn client_messages_round_trip(msgs in prop::collection::vec(client_message(), 1..8),
                                  sizes in prop::collection::vec(1..64usize, 1..8)) {
        let mut wire = Vec::new();
        for m in &msgs {
            let one = m.to_bytes();
            let decoded = ClientMessage::decode(&one, &Limits::default());
            prop_assert_eq!(decoded, Ok(Some((m.clone(), one.len()))));
            m.encode(&mut wire);
        }
        let mut dec = ClientMessageDecoder::new(Limits::default());
        let mut got = Vec::new();
        for chunk in chunks(&wire, &sizes) {
            dec.feed(chunk);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert!(dec.buffered().is_empty());
    }

    #[test]
    fn server_messages_round_trip((pf, msgs) in pf_and_messages(),
                                  sizes in prop::collection::vec(1..200usize, 1..8)) {
        let mut wire = Vec::new();
        for m in &msgs {
            let one = m.to_bytes();
            let decoded = ServerMessage::decode(&one, &pf, &Limits::default());
            prop_assert_eq!(decoded, Ok(Some((m.clone(), one.len()))));
            m.encode(&mut wire);
        }
        let mut dec = ServerMessageDecoder::new(pf, Limits::default());
        let mut got = Vec::new();
        for chunk in chunks(&wire, &sizes) {
            dec.feed(chunk);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn handshakes_survive_any_chunking(sizes in prop::collection::vec(1..20usize, 1..6),
                                       pipelined in client_message(),
                                       challenge in any::<[u8; 16]>()) {
        let mut server = server_config(Version::V3_8, vec![SecurityType::VncAuth], Some(b"pw"));
        server.challenge = challenge;
        let client = client_config(Version::V3_8, vec![SecurityType::VncAuth], Some(b"pw"));
        let (s, c) = run(server, client, &sizes, &pipelined.to_bytes());
        let (s, c) = (s.unwrap(), c.unwrap());
        prop_assert_eq!(s.security, SecurityType::VncAuth);
        prop_assert_eq!(c.server_init, server_init());
        let mut dec = ClientMessageDecoder::new(Limits::default());
        dec.feed(&s.leftover);
        prop_assert_eq!(dec.next_message(), Ok(Some(pipelined)));
    }
}

fn server_init() -> ServerInit {
    ServerInit {
        width: 720,
        height: 400,
        pixel_format: PixelFormat::RGBX32_LE,
        name: "QEMU ✓".into(),
    }
}

fn server_config(
    version: Version,
    security: Vec<SecurityType>,
    password: Option<&[u8]>,
) -> ServerConfig {
    ServerConfig {
        version,
        security,
        password: password.map(|p| Password(p.to_vec())),
        challenge: *b"0123456789abcdef",
        init: server_init(),
    }
}

fn client_config(
    version: Version,
    security: Vec<SecurityType>,
    password: Option<&[u8]>,
) -> ClientConfig {
    ClientConfig {
        version,
        security,
        password: password.map(|p| Password(p.to_vec())),
        shared: true,
        limits: Limits::default(),
    }
}

type Outcome<T> = Result<T, HandshakeError>;

/// Runs both handshakes against each other in memory, moving bytes in chunks cycling through
/// `sizes`. `client_extra` is sent right behind the client's last handshake bytes, and a Bell
/// behind the server's, as pipelining peers do.
fn run(
    server: ServerConfig,
    client: ClientConfig,
    sizes: &[usize],
    client_extra: &[u8],
) -> (Outcome<rfb::ServerDone>, Outcome<rfb::ClientDone>) {
    let mut s = ServerHandshake::new(server).unwrap();
    let mut c = ClientHandshake::new(client);
    let (mut s_res, mut c_res) = (None, None);
    let mut extras_sent = (false, false);
    for _round in 0..50 {
        let mut to_client = Vec::new();
        while let Some(b) = s.poll_output() {
            to_client.extend(b);
        }
        if let Some(d) = s.poll_done() {
            s_res = Some(Ok(d));
        }
        if s_res.is_some() && !extras_sent.0 {
            to_client.push(2); // Bell
            extras_sent.0 = true;
        }
        for chunk in chunks(&to_client, sizes) {
            if let Err(e) = c.feed(chunk) {
                c_res.get_or_insert(Err(e));
            }
        }
        let mut to_server = Vec::new();
        while let Some(b) = c.poll_output() {
            to_server.extend(b);
        }
        if let Some(d) = c.poll_done() {
            c_res = Some(Ok(d));
        }
        for chunk in chunks(&to_server, sizes) {
            if let Err(e) = s.feed(chunk) {
                s_res.get_or_insert(Err(e));
            }
        }
        // Sent right behind ClientInit, before the client has seen ServerInit.
        if s.is_done() && !extras_sent.1 {
            for chunk in chunks(client_extra, sizes) {
                s.feed(chunk).unwrap();
            }
            extras_sent.1 = true;
        }
        if let (Some(a), Some(b)) = (&s_res, &c_res) {
            if a.is_ok() == b.is_ok() || a.is_err() && b.is_err() {
                break;
            }
        }
        if s_res.as_ref().is_some_and(|r| r.is_err()) && c_res.as_ref().is_some_and(|r| r.is_err())
        {
            break;
        }
    }
    // A side that is still waiting when the other failed saw the connection close.
    (
        s_res.unwrap_or(Err(HandshakeError::Over)),
        c_res.unwrap_or(Err(HandshakeError::Over)),
    )
}

const VERSIONS: [Version; 3] = [Version::V3_3, Version::V3_7, Version::V3_8];

#[test]
fn every_version_and_security_type_completes() {
    let securities = [
        (vec![SecurityType::None], vec![SecurityType::None]),
        (vec![SecurityType::VncAuth], vec![SecurityType::VncAuth]),
        (
            vec![SecurityType::VncAuth, SecurityType::None],
            vec![SecurityType::VncAuth, SecurityType::None],
        ),
        (
            vec![SecurityType::None, SecurityType::VncAuth],
            vec![SecurityType::VncAuth, SecurityType::None],
        ),
    ];
    for sv in VERSIONS {
        for cv in VERSIONS {
            for (offer, accept) in &securities {
                let server = server_config(sv, offer.clone(), Some(b"s3cret"));
                let client = client_config(cv, accept.clone(), Some(b"s3cret"));
                let extra = ClientMessage::KeyEvent {
                    down: true,
                    keysym: 0x61,
                }
                .to_bytes();
                let (s, c) = run(server, client, &[1000], &extra);
                let (s, c) = (s.unwrap(), c.unwrap());
                let version = sv.min(cv);
                // 3.3: the server decides (its first type); 3.7+: the client's first acceptable.
                let expected = if version == Version::V3_3 {
                    offer[0]
                } else {
                    accept[0]
                };
                assert_eq!((s.version, c.version), (version, version), "{sv:?} {cv:?}");
                assert_eq!(
                    (s.security, c.security),
                    (expected, expected),
                    "{sv:?} {cv:?} {offer:?}"
                );
                assert!(s.shared);
                assert_eq!(c.server_init, server_init());
                assert_eq!(s.leftover, extra, "pipelined client bytes are kept");
                assert_eq!(c.leftover, vec![2], "pipelined server bytes are kept");
            }
        }
    }
}

#[test]
fn wrong_password_fails_on_both_sides() {
    for sv in VERSIONS {
        let server = server_config(sv, vec![SecurityType::VncAuth], Some(b"right"));
        let client = client_config(Version::V3_8, vec![SecurityType::VncAuth], Some(b"wrong"));
        let (s, c) = run(server, client, &[3], &[]);
        assert_eq!(s, Err(HandshakeError::WrongPassword), "{sv:?}");
        let reason = (sv == Version::V3_8).then(|| "authentication failed".to_string());
        assert_eq!(
            c,
            Err(HandshakeError::AuthenticationFailed { reason }),
            "{sv:?}"
        );
    }
}

#[test]
fn client_without_password_or_common_type_fails() {
    let server = server_config(Version::V3_8, vec![SecurityType::VncAuth], Some(b"pw"));
    let client = client_config(
        Version::V3_8,
        vec![SecurityType::VncAuth, SecurityType::None],
        None,
    );
    let (_, c) = run(server, client, &[7], &[]);
    assert_eq!(c, Err(HandshakeError::PasswordRequired));

    let server = server_config(Version::V3_3, vec![SecurityType::None], None);
    let client = client_config(Version::V3_8, vec![SecurityType::VncAuth], Some(b"pw"));
    let (_, c) = run(server, client, &[7], &[]);
    assert_eq!(
        c,
        Err(HandshakeError::NoCommonSecurity {
            offered: vec![SecurityType::None]
        })
    );
}

#[test]
fn server_rejects_a_type_it_did_not_offer() {
    let mut s =
        ServerHandshake::new(server_config(Version::V3_8, vec![SecurityType::None], None)).unwrap();
    assert_eq!(s.poll_output().as_deref(), Some(&b"RFB 003.008\n"[..]));
    s.feed(b"RFB 003.008\n").unwrap();
    assert_eq!(s.poll_output(), Some(vec![1, 1]));
    assert_eq!(
        s.feed(&[2]),
        Err(HandshakeError::SecurityTypeNotOffered(
            SecurityType::VncAuth
        ))
    );
    let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 25];
    expected.extend_from_slice(b"security type not offered");
    assert_eq!(s.poll_output(), Some(expected));
    assert_eq!(s.feed(&[0]), Err(HandshakeError::Over));
}

#[test]
fn client_reports_a_server_refusal() {
    let mut c = ClientHandshake::new(client_config(Version::V3_8, vec![SecurityType::None], None));
    c.feed(b"RFB 003.008\n").unwrap();
    assert_eq!(c.poll_output().as_deref(), Some(&b"RFB 003.008\n"[..]));
    assert_eq!(
        c.feed(&[0, 0, 0, 0, 4, b'b', b'u', b's', b'y']),
        Err(HandshakeError::Refused {
            reason: "busy".into()
        })
    );
}

#[test]
fn qemu_transcript_as_client() {
    // What QEMU 7.2 sends on a unix socket (see DESIGN.md): 3.8, None, 720x400, "QEMU".
    let mut c = ClientHandshake::new(client_config(Version::V3_8, vec![SecurityType::None], None));
    c.feed(b"RFB 003.008\n\x01\x01").unwrap();
    let mut out = Vec::new();
    while let Some(b) = c.poll_output() {
        out.extend(b);
    }
    assert_eq!(out, b"RFB 003.008\n\x01");
    let mut rest = vec![0, 0, 0, 0, 0x02, 0xd0, 0x01, 0x90];
    rest.extend_from_slice(&PixelFormat::RGBX32_LE.to_bytes());
    rest.extend_from_slice(&[0, 0, 0, 4]);
    rest.extend_from_slice(b"QEMU");
    c.feed(&rest).unwrap();
    assert_eq!(c.poll_output(), Some(vec![1]));
    let done = c.poll_done().unwrap();
    assert_eq!(
        (
            done.server_init.width,
            done.server_init.height,
            done.server_init.name.as_str()
        ),
        (720, 400, "QEMU")
    );
    assert!(c.poll_done().is_none());
}

#[test]
fn server_keeps_messages_pipelined_with_client_init() {
    let mut s =
        ServerHandshake::new(server_config(Version::V3_8, vec![SecurityType::None], None)).unwrap();
    let set_encodings = ClientMessage::SetEncodings(vec![Encoding::Zrle, Encoding::Raw]).to_bytes();
    let mut client_bytes = b"RFB 003.008\n\x01\x00".to_vec();
    client_bytes.extend_from_slice(&set_encodings);
    s.feed(&client_bytes).unwrap();
    let done = s.poll_done().unwrap();
    assert!(!done.shared);
    assert_eq!(done.leftover, set_encodings);
    let mut out = Vec::new();
    while let Some(b) = s.poll_output() {
        out.extend(b);
    }
    let mut expected = b"RFB 003.008\n\x01\x01\x00\x00\x00\x00".to_vec();
    server_init().encode(&mut expected);
    assert_eq!(out, expected);
}
