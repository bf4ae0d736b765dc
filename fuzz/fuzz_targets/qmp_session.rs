//! QEMU's side of a QMP connection: any bytes after (or instead of) a greeting, fed in chunks
//! into the client session, with commands submitted so replies have something to match.
#![no_main]

use dmore_fuzz::{chunk_size, split};
use libfuzzer_sys::fuzz_target;
use qmp::{Config, Session};

fuzz_target!(|data: &[u8]| {
    let Some((sel, stream)) = split(data) else {
        return;
    };
    let mut session = Session::new(Config::default());
    for (i, chunk) in stream.chunks(chunk_size(sel)).enumerate() {
        if i % 3 == 0 {
            let _ = session.submit("query-status", &serde_json::Value::Null);
        }
        if session.handle_input(chunk).is_err() {
            return;
        }
        while session.poll_output().is_some() {}
    }
});
