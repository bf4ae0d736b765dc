//! Zlib payloads (encoding 6) through one ZlibDecoder, as a client keeps one zlib stream per
//! connection: records of (width, height, length, bytes), see `dmore_fuzz::records`.
//! Selector: bits 0-1 pixel format.
#![no_main]

use dmore_fuzz::decode_records;
use libfuzzer_sys::fuzz_target;
use rfb::encoding::zlib::ZlibDecoder;

fuzz_target!(|data: &[u8]| {
    let mut zlib = ZlibDecoder::new();
    decode_records(data, |tr, bytes, dst| {
        zlib.decode(tr, bytes, dst).map(|()| None)
    });
});
