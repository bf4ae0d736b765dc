//! A viewer socket's TCP checkpoint as received from another host: any bytes into the decoder
//! (restoring is not fuzzed: it needs CAP_NET_ADMIN and a network namespace).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(checkpoint) = migrate::tcp::Checkpoint::decode(data) {
        let _ = checkpoint.validate();
    }
});
