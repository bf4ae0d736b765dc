//! Hextile payloads run through the decoder directly (the client role does not parse Hextile
//! out of messages): records of (width, height, length, bytes), see `dmore_fuzz::records`.
//! Selector: bits 0-1 pixel format.
#![no_main]

use dmore_fuzz::decode_records;
use libfuzzer_sys::fuzz_target;
use rfb::encoding::hextile;

fuzz_target!(|data: &[u8]| {
    decode_records(data, |tr, bytes, dst| {
        hextile::decode(tr, bytes, dst).map(Some)
    });
});
