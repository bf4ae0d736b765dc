//! Golden byte vectors, written by hand from the layouts in RFC 6143 §7.5–§7.6 and rfbproto,
//! and a VNC Authentication vector computed by an independent implementation (vncdotool's
//! `des_encrypt(_vnc_des(...))`, i.e. OpenSSL's DES through Python `cryptography`).

use rfb::{
    vnc_auth_response, ClientMessage, Colour, Encoding, Fence, Limits, PixelFormat, QemuAudio,
    RectPayload, Rectangle, Screen, ServerMessage,
};

/// Checks that `msg` encodes to `bytes` and `bytes` decodes to `msg`, consuming all of them,
/// and that every proper prefix is reported incomplete.
fn client(msg: ClientMessage, bytes: &[u8]) {
    assert_eq!(msg.to_bytes(), bytes, "{msg:?}");
    let limits = Limits::default();
    assert_eq!(
        ClientMessage::decode(bytes, &limits),
        Ok(Some((msg, bytes.len())))
    );
    for n in 0..bytes.len() {
        assert_eq!(
            ClientMessage::decode(&bytes[..n], &limits),
            Ok(None),
            "prefix {n}"
        );
    }
}

fn server(msg: ServerMessage, bytes: &[u8]) {
    server_pf(msg, bytes, &PixelFormat::RGBX32_LE)
}

fn server_pf(msg: ServerMessage, bytes: &[u8], pf: &PixelFormat) {
    assert_eq!(msg.to_bytes(), bytes, "{msg:?}");
    let limits = Limits::default();
    assert_eq!(
        ServerMessage::decode(bytes, pf, &limits),
        Ok(Some((msg, bytes.len())))
    );
    for n in 0..bytes.len() {
        assert_eq!(
            ServerMessage::decode(&bytes[..n], pf, &limits),
            Ok(None),
            "prefix {n}"
        );
    }
}

#[test]
fn set_pixel_format_7_5_1() {
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    client(ClientMessage::SetPixelFormat(PixelFormat::RGBX32_LE), &b);
}

#[test]
fn set_encodings_7_5_2() {
    let list = vec![
        Encoding::Zrle,
        Encoding::Raw,
        Encoding::Cursor,
        Encoding::Hextile,
        Encoding::VmwareLedState,
    ];
    let b = [
        2, 0, 0, 5, 0, 0, 0, 16, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x11, 0, 0, 0, 5, 0x57, 0x4d, 0x56,
        0x68,
    ];
    client(ClientMessage::SetEncodings(list), &b);
}

#[test]
fn framebuffer_update_request_7_5_3() {
    let m = ClientMessage::FramebufferUpdateRequest {
        incremental: true,
        x: 1,
        y: 2,
        width: 720,
        height: 400,
    };
    client(m, &[3, 1, 0, 1, 0, 2, 0x02, 0xd0, 0x01, 0x90]);
}

#[test]
fn key_event_7_5_4() {
    // 'a' pressed, then Return (0xff0d) released.
    client(
        ClientMessage::KeyEvent {
            down: true,
            keysym: 0x61,
        },
        &[4, 1, 0, 0, 0, 0, 0, 0x61],
    );
    client(
        ClientMessage::KeyEvent {
            down: false,
            keysym: 0xff0d,
        },
        &[4, 0, 0, 0, 0, 0, 0xff, 0x0d],
    );
}

#[test]
fn pointer_event_7_5_5() {
    client(
        ClientMessage::PointerEvent {
            buttons: 0b101,
            x: 300,
            y: 2,
        },
        &[5, 5, 0x01, 0x2c, 0, 2],
    );
}

#[test]
fn client_cut_text_7_5_6() {
    client(
        ClientMessage::ClientCutText(b"hi\xe9".to_vec()),
        &[6, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', 0xe9],
    );
}

#[test]
fn qemu_extended_key_event() {
    // QEMU ui/vnc.c: type 255, submessage 0, u16 down, u32 keysym, u32 keycode.
    let m = ClientMessage::QemuExtendedKeyEvent {
        down: true,
        keysym: 0x61,
        keycode: 0x1e,
    };
    client(m, &[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e]);
}

#[test]
fn qemu_audio() {
    client(ClientMessage::QemuAudio(QemuAudio::Enable), &[255, 1, 0, 0]);
    client(
        ClientMessage::QemuAudio(QemuAudio::Disable),
        &[255, 1, 0, 1],
    );
    let m = ClientMessage::QemuAudio(QemuAudio::SetFormat {
        format: 3,
        channels: 2,
        frequency: 44100,
    });
    client(m, &[255, 1, 0, 2, 3, 2, 0, 0, 0xac, 0x44]);
}

#[test]
fn enable_continuous_updates() {
    let m = ClientMessage::EnableContinuousUpdates {
        enable: true,
        x: 0,
        y: 0,
        width: 640,
        height: 480,
    };
    client(m, &[150, 1, 0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0]);
}

#[test]
fn fence_both_directions() {
    let f = Fence {
        flags: 0x8000_0003,
        payload: vec![7, 8],
    };
    let b = [248, 0, 0, 0, 0x80, 0, 0, 3, 2, 7, 8];
    client(ClientMessage::Fence(f.clone()), &b);
    server(ServerMessage::Fence(f), &b);
}

#[test]
fn set_desktop_size() {
    let s = Screen {
        id: 1,
        x: 0,
        y: 0,
        width: 1024,
        height: 768,
        flags: 0,
    };
    let m = ClientMessage::SetDesktopSize {
        width: 1024,
        height: 768,
        screens: vec![s],
    };
    let b = [
        251, 0, 0x04, 0, 0x03, 0, 1, 0, // header
        0, 0, 0, 1, 0, 0, 0, 0, 0x04, 0, 0x03, 0, 0, 0, 0, 0, // screen
    ];
    client(m, &b);
}

#[test]
fn framebuffer_update_7_6_1() {
    let rects = vec![
        Rectangle {
            x: 0,
            y: 0,
            width: 2,
            height: 1,
            payload: RectPayload::Raw(vec![1, 2, 3, 0, 4, 5, 6, 0]),
        },
        Rectangle {
            x: 5,
            y: 6,
            width: 7,
            height: 8,
            payload: RectPayload::CopyRect { src_x: 1, src_y: 2 },
        },
        Rectangle {
            x: 0,
            y: 0,
            width: 64,
            height: 64,
            payload: RectPayload::Zrle(vec![0x78, 0x9c]),
        },
    ];
    let b = [
        0, 0, 0, 3, // header, 3 rectangles
        0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, // Raw, 2 pixels
        0, 5, 0, 6, 0, 7, 0, 8, 0, 0, 0, 1, 0, 1, 0, 2, // CopyRect
        0, 0, 0, 0, 0, 64, 0, 64, 0, 0, 0, 16, 0, 0, 0, 2, 0x78, 0x9c, // ZRLE
    ];
    server(ServerMessage::FramebufferUpdate(rects), &b);
}

#[test]
fn raw_length_follows_the_pixel_format() {
    let pf = PixelFormat::RGB565_LE;
    let rects = vec![Rectangle {
        x: 0,
        y: 0,
        width: 3,
        height: 1,
        payload: RectPayload::Raw(vec![1, 2, 3, 4, 5, 6]),
    }];
    let b = [
        0, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6,
    ];
    server_pf(ServerMessage::FramebufferUpdate(rects), &b, &pf);
}

#[test]
fn pseudo_rectangles() {
    let rects = vec![
        // Cursor 9x2: 72 pixel bytes, mask of 2 bytes per row.
        Rectangle {
            x: 1,
            y: 1,
            width: 9,
            height: 2,
            payload: RectPayload::Cursor {
                pixels: vec![0xaa; 72],
                mask: vec![0xff, 0x80, 0x7f, 0x00],
            },
        },
        Rectangle {
            x: 0,
            y: 0,
            width: 800,
            height: 600,
            payload: RectPayload::DesktopSize,
        },
        Rectangle {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
            payload: RectPayload::QemuLedState(0b110),
        },
        Rectangle {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
            payload: RectPayload::VmwareLedState(2),
        },
        Rectangle {
            x: 1,
            y: 0,
            width: 720,
            height: 400,
            payload: RectPayload::QemuPointerMotionChange,
        },
        Rectangle {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
            payload: RectPayload::QemuExtendedKeyEvent,
        },
        Rectangle {
            x: 0,
            y: 0,
            width: 640,
            height: 480,
            payload: RectPayload::ExtendedDesktopSize(vec![Screen {
                id: 0,
                x: 0,
                y: 0,
                width: 640,
                height: 480,
                flags: 0,
            }]),
        },
    ];
    let mut b = vec![0, 0, 0, 7];
    b.extend_from_slice(&[0, 1, 0, 1, 0, 9, 0, 2, 0xff, 0xff, 0xff, 0x11]);
    b.extend_from_slice(&[0xaa; 72]);
    b.extend_from_slice(&[0xff, 0x80, 0x7f, 0x00]);
    b.extend_from_slice(&[0, 0, 0, 0, 0x03, 0x20, 0x02, 0x58, 0xff, 0xff, 0xff, 0x21]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xfe, 0xfb, 6]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x57, 0x4d, 0x56, 0x68, 0, 0, 0, 2]);
    b.extend_from_slice(&[0, 1, 0, 0, 0x02, 0xd0, 0x01, 0x90, 0xff, 0xff, 0xfe, 0xff]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xfe, 0xfe]);
    b.extend_from_slice(&[
        0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0, 0xff, 0xff, 0xfe, 0xcc, 1, 0, 0, 0,
    ]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0, 0, 0, 0, 0]);
    server(ServerMessage::FramebufferUpdate(rects), &b);
}

#[test]
fn last_rect_ends_an_update_of_0xffff() {
    // A server announces 0xFFFF rectangles and ends with LastRect (rfbproto).
    let b = [
        0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, // CopyRect
        0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x20, // LastRect
        2,    // a Bell after it
    ];
    let m = ServerMessage::decode(&b, &PixelFormat::RGBX32_LE, &Limits::default()).unwrap();
    let (msg, n) = m.unwrap();
    assert_eq!(n, b.len() - 1);
    let ServerMessage::FramebufferUpdate(rects) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(rects.len(), 2);
    assert_eq!(rects[1].payload, RectPayload::LastRect);
    // Re-encoded with the exact count, it decodes to the same message.
    let again = msg.to_bytes();
    assert_eq!(&again[2..4], &[0, 2]);
    assert_eq!(
        ServerMessage::decode(&again, &PixelFormat::RGBX32_LE, &Limits::default()),
        Ok(Some((msg, again.len())))
    );
}

#[test]
fn set_colour_map_entries_7_6_2() {
    let m = ServerMessage::SetColourMapEntries {
        first_colour: 3,
        colours: vec![Colour {
            red: 0xffff,
            green: 0,
            blue: 0x8000,
        }],
    };
    server(m, &[1, 0, 0, 3, 0, 1, 0xff, 0xff, 0, 0, 0x80, 0]);
}

#[test]
fn bell_cut_text_end_of_continuous_updates() {
    server(ServerMessage::Bell, &[2]);
    server(
        ServerMessage::ServerCutText(b"ok".to_vec()),
        &[3, 0, 0, 0, 0, 0, 0, 2, b'o', b'k'],
    );
    server(ServerMessage::EndOfContinuousUpdates, &[150]);
}

#[test]
fn vnc_auth_matches_an_independent_des() {
    let challenge: [u8; 16] = std::array::from_fn(|i| i as u8);
    let hex = |r: [u8; 16]| r.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(vnc_auth_response(b"password", &challenge)),
        "b866924125c8eebb9debc1db61c538e2"
    );
    assert_eq!(
        hex(vnc_auth_response(b"secret", &challenge)),
        "ee22539f33a5983ec12f9c2edbc995dd"
    );
    // Only the first 8 bytes of a password count.
    assert_eq!(
        hex(vnc_auth_response(b"averylongpassword", &challenge)),
        "e72feeac38914b2a4abba36357ee669b"
    );
    assert_eq!(
        hex(vnc_auth_response(b"", &challenge)),
        "491e890de9ace932838a49792f2213f3"
    );
    let ch2 = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32,
        0x10,
    ];
    assert_eq!(
        hex(vnc_auth_response(b"dmore", &ch2)),
        "c0785cf043662a2b436a94b846a95826"
    );
}
