//! ClientMessageDecoder on arbitrary bytes fed in chunks: no panic, and every decoded message
//! re-encodes to bytes that decode to the same message.
#![no_main]

use dmore_fuzz::{chunk_size, split, LIMITS};
use libfuzzer_sys::fuzz_target;
use rfb::{ClientMessage, ClientMessageDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let mut dec = ClientMessageDecoder::new(LIMITS);
    for chunk in stream.chunks(chunk_size(sel)) {
        dec.feed(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    let bytes = msg.to_bytes();
                    let again = ClientMessage::decode(&bytes, &LIMITS);
                    assert_eq!(again, Ok(Some((msg, bytes.len()))));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
