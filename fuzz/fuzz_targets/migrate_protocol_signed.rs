//! An authenticated peer console that sends malformed messages: after a real Hello exchange,
//! the input is a sequence of (kind, length, payload) records that the peer's codec signs
//! (`encode_raw`), so every frame passes the HMAC and the sequence check and reaches the
//! message decoders. The console's codec must reject, never panic.
#![no_main]

use dmore_fuzz::split;
use libfuzzer_sys::fuzz_target;
use migrate::protocol::{Codec, Config, Role};

fn drained(codec: &mut Codec) -> bool {
    loop {
        match codec.poll_message() {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, mut rest)) = split(data) else {
        return;
    };
    let (role, peer_role) = if sel & 1 == 0 {
        (Role::Source, Role::Destination)
    } else {
        (Role::Destination, Role::Source)
    };
    let config = |r| Config::new(r, b"fuzz-key-fuzz-key-0123".to_vec(), "vm");
    let (Ok(mut me), Ok(mut peer)) = (
        Codec::new(config(role), [7; 32]),
        Codec::new(config(peer_role), [9; 32]),
    ) else {
        return;
    };
    let (Ok(mine), Ok(theirs)) = (me.start(), peer.start()) else {
        return;
    };
    me.feed(&theirs);
    peer.feed(&mine);
    if !drained(&mut me) || !drained(&mut peer) {
        return;
    }
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (payload, next) = tail.split_at(len);
        let Ok(frame) = peer.encode_raw(*kind, payload) else {
            return;
        };
        me.feed(&frame);
        if !drained(&mut me) {
            return;
        }
        rest = next;
    }
});
