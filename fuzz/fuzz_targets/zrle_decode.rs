//! A server's message stream with every ZRLE rectangle run through one ZrleDecoder, as a
//! client does (one zlib stream per connection). Selector: bits 0-1 pixel format, bits 5-7
//! chunk size.
#![no_main]

use dmore_fuzz::{chunk_size, pixel_format, split, LIMITS};
use libfuzzer_sys::fuzz_target;
use rfb::encoding::zrle::ZrleDecoder;
use rfb::translate::{PixelsMut, Translator};
use rfb::{RectPayload, ServerMessage, ServerMessageDecoder};

/// Largest rectangle decoded, in pixels: keeps each run short.
const MAX_PIXELS: usize = 1 << 18;

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let pf = pixel_format(sel);
    let Ok(tr) = Translator::new(pf) else { return };
    let mut dec = ServerMessageDecoder::new(pf, LIMITS);
    let mut zrle = ZrleDecoder::new();
    let mut pixels = Vec::new();
    for chunk in stream.chunks(chunk_size(sel)) {
        dec.feed(chunk);
        while let Ok(Some(msg)) = dec.next_message() {
            let ServerMessage::FramebufferUpdate(rects) = msg else {
                continue;
            };
            for rect in rects {
                let RectPayload::Zrle(bytes) = &rect.payload else {
                    continue;
                };
                let (w, h) = (usize::from(rect.width), usize::from(rect.height));
                if w * h > MAX_PIXELS {
                    return;
                }
                pixels.clear();
                pixels.resize(w * h, 0u32);
                let Some(mut dst) = PixelsMut::packed(&mut pixels, w, h) else {
                    return;
                };
                if zrle.decode(&tr, bytes, &mut dst).is_err() {
                    return;
                }
            }
        }
    }
});
