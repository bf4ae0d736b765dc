//! Hextile payloads run through the decoder directly (the client role does not parse Hextile
//! out of messages): records of (width, height, length, bytes), see `dmore_fuzz::records`.
//! Selector: bits 0-1 pixel format.
#![no_main]

use dmore_fuzz::{pixel_format, records, split};
use libfuzzer_sys::fuzz_target;
use rfb::encoding::hextile;
use rfb::translate::{PixelsMut, Translator};

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let Ok(tr) = Translator::new(pixel_format(sel)) else {
        return;
    };
    let mut pixels = Vec::new();
    for (w, h, bytes) in records(stream) {
        pixels.clear();
        pixels.resize(w * h, 0u32);
        let Some(mut dst) = PixelsMut::packed(&mut pixels, w, h) else {
            return;
        };
        if let Ok(used) = hextile::decode(&tr, bytes, &mut dst) {
            assert!(used <= bytes.len());
        }
    }
});
