//! The serial lane's header line, as a viewer reads it from the console (`dmore serial
//! attach`): any bytes parse to a header, "not yet", or an error, never a panic; a header
//! that parses encodes back to the bytes it took when it is canonical.
#![no_main]

use console::serial::{Header, HEADER_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, used))) = Header::parse(data) {
        assert!(used <= HEADER_MAX);
        let again = header.encode();
        assert_eq!(Header::parse(&again), Ok(Some((header, again.len()))));
    }
});
