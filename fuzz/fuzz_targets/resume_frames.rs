//! The resumable stream's decoders, from both ends.
//!
//! Selector bit 0 picks our end (gateway or console). Bit 1 clear: the rest is bytes from
//! an unauthenticated peer, fed in chunks (selector's high bits) to a stream waiting for the
//! peer's opening, and to `peek_session`. Bit 1 set: after a real opening exchange, the rest is
//! a sequence of (kind, length u16 BE, body) records that the peer's stream seals with the
//! connection key (`encode_raw`), so every frame passes the MAC and reaches the frame decoder
//! and the stream's checks (offsets, windows, acknowledgements, ends, Moved). The stream must
//! refuse, never panic, never buffer more than its window, and a console never takes a Moved.
#![no_main]

use dmore_fuzz::{chunk_size, split};
use libfuzzer_sys::fuzz_target;
use resume::{peek_session, Config, Role, State, Stream};

const PSK: &[u8] = b"fuzz-key-fuzz-key-0123";
const WINDOW: u32 = 4096;

fn stream(role: Role) -> Option<Stream> {
    let mut config = Config::new(role, PSK);
    config.replay_cap = WINDOW;
    Stream::new(config, [3; 16]).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = split(data) else {
        return;
    };
    let (role, peer_role) = if sel & 1 == 0 {
        (Role::Gateway, Role::Console)
    } else {
        (Role::Console, Role::Gateway)
    };
    let (Some(mut me), Some(mut peer)) = (stream(role), stream(peer_role)) else {
        return;
    };
    if me.attach([7; 32]).is_err() || peer.attach([9; 32]).is_err() {
        return;
    }
    let mut got = Vec::new();
    if sel & 2 == 0 {
        let _ = peek_session(&Config::new(role, PSK), rest);
        for chunk in rest.chunks(chunk_size(sel)) {
            if me.handle_input(chunk).is_err() {
                return;
            }
        }
        return;
    }
    // A real exchange: our opening to the peer, the peer's to us, some bytes of ours in flight.
    let _ = me.write(&[0x5a; 3000]);
    while let Some(f) = me.poll_transmit() {
        let _ = peer.handle_input(&f);
    }
    while let Some(f) = peer.poll_transmit() {
        if me.handle_input(&f).is_err() {
            return;
        }
    }
    let mut rest = rest;
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (body, next) = tail.split_at(len);
        let Some(frame) = peer.encode_raw(*kind, body) else {
            return;
        };
        let ok = me.handle_input(&frame).is_ok();
        if me.take_moved().is_some() {
            assert_eq!(role, Role::Gateway, "a console took a Moved frame");
        }
        let unread = me.read(&mut got);
        assert!(unread <= WINDOW as usize, "buffered more than the window");
        while me.poll_transmit().is_some() {}
        if !ok {
            assert_ne!(me.state(), State::Open);
            return;
        }
        rest = next;
    }
});
