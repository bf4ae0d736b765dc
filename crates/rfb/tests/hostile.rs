//! Hostile input: random bytes never panic any decoder or handshake, and announced lengths
//! beyond the limits are refused from the header alone, before the payload arrives.

use proptest::prelude::*;
use rfb::{
    ClientConfig, ClientHandshake, ClientMessage, ClientMessageDecoder, Encoding, HandshakeError,
    Limits, MessageError, Password, PixelFormat, SecurityType, ServerConfig, ServerHandshake,
    ServerInit, ServerMessage, ServerMessageDecoder, Version,
};

fn drain_server(dec: &mut ServerMessageDecoder) {
    for _ in 0..10_000 {
        match dec.next_message() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

fn drain_client(dec: &mut ClientMessageDecoder) {
    for _ in 0..10_000 {
        match dec.next_message() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_decoders(data in prop::collection::vec(any::<u8>(), 0..2000),
                                             bpp in prop::sample::select(vec![0u8, 7, 8, 16, 24, 32, 255])) {
        let pf = PixelFormat { bits_per_pixel: bpp, ..PixelFormat::RGBX32_LE };
        let mut s = ServerMessageDecoder::new(pf, Limits::default());
        let mut c = ClientMessageDecoder::new(Limits::default());
        for chunk in data.chunks(97) {
            s.feed(chunk);
            c.feed(chunk);
            drain_server(&mut s);
            drain_client(&mut c);
        }
        let _ = ServerMessage::decode(&data, &pf, &Limits::default());
        let _ = ClientMessage::decode(&data, &Limits::default());
    }

    #[test]
    fn typed_first_bytes_never_panic(kind in prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 6, 150, 248, 251, 255]),
                                     data in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut bytes = vec![kind];
        bytes.extend(data);
        let _ = ServerMessage::decode(&bytes, &PixelFormat::RGBX32_LE, &Limits::default());
        let _ = ClientMessage::decode(&bytes, &Limits::default());
    }

    #[test]
    fn random_bytes_never_panic_the_handshakes(data in prop::collection::vec(any::<u8>(), 0..200),
                                               prefix in prop::sample::select(vec![&b"RFB 003.008\n"[..], b"RFB 003.007\n", b"RFB 003.003\n", b""])) {
        let mut bytes = prefix.to_vec();
        bytes.extend(data);
        let mut s = ServerHandshake::new(ServerConfig {
            version: Version::V3_8,
            security: vec![SecurityType::VncAuth, SecurityType::None],
            password: Some(Password(b"pw".to_vec())),
            challenge: [7; 16],
            init: ServerInit { width: 1, height: 1, pixel_format: PixelFormat::RGBX32_LE, name: String::new() },
        }).unwrap();
        let mut c = ClientHandshake::new(ClientConfig {
            version: Version::V3_8,
            security: vec![SecurityType::VncAuth, SecurityType::None],
            password: Some(Password(b"pw".to_vec())),
            shared: false,
            limits: Limits::default(),
        });
        for chunk in bytes.chunks(5) {
            let _ = s.feed(chunk);
            let _ = c.feed(chunk);
            while s.poll_output().is_some() {}
            while c.poll_output().is_some() {}
        }
        let _ = (s.poll_done(), c.poll_done());
    }
}

fn server_err(bytes: &[u8]) -> MessageError {
    ServerMessage::decode(bytes, &PixelFormat::RGBX32_LE, &Limits::default()).unwrap_err()
}

fn client_err(bytes: &[u8]) -> MessageError {
    ClientMessage::decode(bytes, &Limits::default()).unwrap_err()
}

#[test]
fn huge_cut_text_is_refused_from_its_header() {
    let limit = Limits::default().max_cut_text;
    assert_eq!(
        client_err(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        MessageError::CutTextTooLong {
            len: u32::MAX,
            limit
        }
    );
    assert_eq!(
        server_err(&[3, 0, 0, 0, 0x00, 0x10, 0x00, 0x01]),
        MessageError::CutTextTooLong {
            len: 0x100001,
            limit
        }
    );
}

#[test]
fn huge_rectangles_are_refused_from_their_header() {
    // Raw 16384x16384 at 4 bytes: 1 GiB, over the 64 MiB default.
    let raw = [0, 0, 0, 1, 0, 0, 0, 0, 0x40, 0, 0x40, 0, 0, 0, 0, 0];
    assert_eq!(
        server_err(&raw),
        MessageError::RectPayloadTooLarge {
            len: 1 << 30,
            limit: 64 << 20
        }
    );
    // Wider than max_dimension.
    let wide = [0, 0, 0, 1, 0, 0, 0, 0, 0x40, 1, 0, 1, 0, 0, 0, 0];
    assert_eq!(
        server_err(&wide),
        MessageError::DimensionTooLarge {
            width: 16385,
            height: 1,
            limit: 16384
        }
    );
    // ZRLE announcing 4 GiB.
    let zrle = [
        0, 0, 0, 1, 0, 0, 0, 0, 0, 64, 0, 64, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0xff,
    ];
    assert_eq!(
        server_err(&zrle),
        MessageError::RectPayloadTooLarge {
            len: u64::from(u32::MAX),
            limit: 64 << 20
        }
    );
}

#[test]
fn many_rectangles_are_bounded_by_max_message() {
    let limits = Limits {
        max_message: 1000,
        ..Limits::default()
    };
    // 10 Raw rectangles of 10x10 at 4 bytes: 400 bytes each.
    let mut bytes = vec![0, 0, 0, 10];
    for _ in 0..3 {
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 10, 0, 10, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 400]);
    }
    let err = ServerMessage::decode(&bytes, &PixelFormat::RGBX32_LE, &limits).unwrap_err();
    assert!(
        matches!(err, MessageError::MessageTooLarge { limit: 1000, .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_things_are_typed_errors() {
    assert_eq!(client_err(&[7]), MessageError::UnknownClientMessage(7));
    assert_eq!(server_err(&[4]), MessageError::UnknownServerMessage(4));
    assert_eq!(
        client_err(&[255, 9]),
        MessageError::UnknownQemuSubmessage(9)
    );
    assert_eq!(
        client_err(&[255, 1, 0, 3]),
        MessageError::UnknownQemuAudioOperation(3)
    );
    assert_eq!(
        client_err(&[248, 0, 0, 0, 0, 0, 0, 0, 65]),
        MessageError::FencePayloadTooLong(65)
    );
    // RRE (2) has no length this crate can work out.
    let rre = [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 2];
    assert_eq!(
        server_err(&rre),
        MessageError::UnsupportedEncoding(Encoding::Other(2))
    );
    // A Tight rectangle with an undefined compression type (0xa0) has no end to find.
    let tight = [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 7, 0xa0];
    assert!(matches!(
        server_err(&tight),
        MessageError::MalformedPayload {
            encoding: Encoding::Tight,
            ..
        }
    ));
}

#[test]
fn errors_stay_put_and_partial_messages_are_not_consumed() {
    let mut dec = ClientMessageDecoder::new(Limits::default());
    dec.feed(&[4, 1, 0, 0, 0]);
    assert_eq!(dec.next_message(), Ok(None));
    assert_eq!(dec.buffered(), &[4, 1, 0, 0, 0]);
    dec.feed(&[0, 0, 0x61, 99]);
    assert_eq!(
        dec.next_message(),
        Ok(Some(ClientMessage::KeyEvent {
            down: true,
            keysym: 0x61
        }))
    );
    assert_eq!(
        dec.next_message(),
        Err(MessageError::UnknownClientMessage(99))
    );
    assert_eq!(
        dec.next_message(),
        Err(MessageError::UnknownClientMessage(99))
    );
    assert_eq!(dec.take_buffered(), vec![99]);
}

#[test]
fn pixel_format_change_applies_to_later_messages() {
    // A 2x1 Raw rectangle: 8 bytes at 32 bpp, 2 at 8 bpp.
    let header = [0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
    let mut dec = ServerMessageDecoder::new(PixelFormat::RGBX32_LE, Limits::default());
    dec.feed(&header);
    dec.feed(&[1, 2]);
    assert_eq!(dec.next_message(), Ok(None));
    dec.set_pixel_format(PixelFormat {
        bits_per_pixel: 8,
        ..PixelFormat::RGBX32_LE
    });
    let msg = dec.next_message().unwrap().unwrap();
    let ServerMessage::FramebufferUpdate(rects) = msg else {
        panic!()
    };
    assert_eq!(rects[0].payload, rfb::RectPayload::Raw(vec![1, 2]));
}

#[test]
fn handshake_strings_and_sizes_are_limited() {
    let config = ClientConfig::no_auth();
    let mut c = ClientHandshake::new(config.clone());
    c.feed(b"RFB 003.008\n").unwrap();
    assert_eq!(
        c.feed(&[0, 0xff, 0xff, 0xff, 0xff]),
        Err(HandshakeError::StringTooLong {
            len: u32::MAX,
            limit: 4096
        })
    );

    let mut c = ClientHandshake::new(config);
    c.feed(b"RFB 003.008\n\x01\x01\x00\x00\x00\x00").unwrap();
    assert_eq!(
        c.feed(&[0x40, 0x01, 0, 1]),
        Err(HandshakeError::FramebufferTooLarge {
            width: 16385,
            height: 1,
            limit: 16384
        })
    );
}
