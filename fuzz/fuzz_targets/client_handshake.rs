//! The client handshake fed a server's bytes, then its leftover into ServerMessageDecoder in
//! the pixel format ServerInit announced. Selector: bits 0-1 version, bit 2 password given,
//! bit 3 preference (None or VncAuth first), bits 5-7 chunk size.
#![no_main]

use dmore_fuzz::{chunk_size, split, LIMITS};
use libfuzzer_sys::fuzz_target;
use rfb::{ClientConfig, ClientHandshake, Password, SecurityType, ServerMessageDecoder, Version};

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let version =
        [Version::V3_8, Version::V3_7, Version::V3_3, Version::V3_8][usize::from(sel & 3)];
    let mut security = vec![SecurityType::None, SecurityType::VncAuth];
    if sel & 8 != 0 {
        security.reverse();
    }
    let config = ClientConfig {
        version,
        security,
        password: (sel & 4 != 0).then(|| Password(b"fuzz".to_vec())),
        shared: true,
        limits: LIMITS,
    };
    let mut hs = ClientHandshake::new(config);
    let mut dec: Option<ServerMessageDecoder> = None;
    for chunk in stream.chunks(chunk_size(sel)) {
        match &mut dec {
            Some(d) => d.feed(chunk),
            None => {
                if hs.feed(chunk).is_err() {
                    return;
                }
                while hs.poll_output().is_some() {}
                if let Some(outcome) = hs.poll_done() {
                    let mut d = ServerMessageDecoder::new(outcome.server_init.pixel_format, LIMITS);
                    d.feed(&outcome.leftover);
                    dec = Some(d);
                }
            }
        }
        if let Some(d) = &mut dec {
            while let Ok(Some(_)) = d.next_message() {}
        }
    }
});
