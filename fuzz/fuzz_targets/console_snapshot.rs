//! A console snapshot as received from another host: any bytes into the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = console::snapshot::ConsoleSnapshot::decode(data);
});
