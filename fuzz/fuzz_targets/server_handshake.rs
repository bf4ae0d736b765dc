//! The server handshake fed a client's bytes, then its leftover into ClientMessageDecoder.
//! Selector: bits 0-1 version, bits 2-3 security offered, bits 5-7 chunk size.
#![no_main]

use dmore_fuzz::{chunk_size, split, LIMITS};
use libfuzzer_sys::fuzz_target;
use rfb::{
    ClientMessageDecoder, Password, PixelFormat, SecurityType, ServerConfig, ServerHandshake,
    ServerInit, Version,
};

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let version =
        [Version::V3_8, Version::V3_7, Version::V3_3, Version::V3_8][usize::from(sel & 3)];
    let security = match (sel >> 2) & 3 {
        0 | 3 => vec![SecurityType::None],
        1 => vec![SecurityType::VncAuth],
        _ => vec![SecurityType::VncAuth, SecurityType::None],
    };
    let config = ServerConfig {
        version,
        security,
        password: Some(Password(b"fuzz".to_vec())),
        challenge: [0x5a; 16],
        init: ServerInit {
            width: 64,
            height: 48,
            pixel_format: PixelFormat::RGBX32_LE,
            name: "fuzz".into(),
        },
    };
    let Ok(mut hs) = ServerHandshake::new(config) else {
        return;
    };
    let mut dec = ClientMessageDecoder::new(LIMITS);
    let mut done = false;
    for chunk in stream.chunks(chunk_size(sel)) {
        if done {
            dec.feed(chunk);
        } else if hs.feed(chunk).is_err() {
            while hs.poll_output().is_some() {}
            return;
        }
        while hs.poll_output().is_some() {}
        if let Some(outcome) = hs.poll_done() {
            dec.feed(&outcome.leftover);
            done = true;
        }
        while let Ok(Some(_)) = dec.next_message() {}
    }
});
