//! Tight payloads (encoding 7) through one TightDecoder, as a client keeps four zlib streams
//! per connection: records of (width, height, length, bytes), see `dmore_fuzz::records`.
//! Selector: bits 0-1 pixel format.
#![no_main]

use dmore_fuzz::decode_records;
use libfuzzer_sys::fuzz_target;
use rfb::encoding::tight::TightDecoder;

fuzz_target!(|data: &[u8]| {
    let mut tight = TightDecoder::new();
    decode_records(data, |tr, bytes, dst| {
        tight.decode(tr, bytes, dst).map(Some)
    });
});
