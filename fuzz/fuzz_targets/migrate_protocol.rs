//! What a peer console (or anyone on the network) sends to a console during co-migration:
//! any bytes into the transfer protocol's codec, in chunks; it must reject, never panic.
#![no_main]

use dmore_fuzz::{chunk_size, split};
use libfuzzer_sys::fuzz_target;
use migrate::protocol::{Codec, Config, Role};

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let role = if sel & 1 == 0 {
        Role::Source
    } else {
        Role::Destination
    };
    let Ok(mut codec) = Codec::new(Config::new(role, b"fuzz-key".to_vec(), "vm"), [7; 32]) else {
        return;
    };
    let _ = codec.start();
    for chunk in stream.chunks(chunk_size(sel)) {
        codec.feed(chunk);
        loop {
            match codec.poll_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
