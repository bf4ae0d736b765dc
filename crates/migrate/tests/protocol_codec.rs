//! The transfer protocol's codec: handshake, authentication, ordering, bounds, and the
//! property tests (round trip, bit flips, random bytes, chunking).

use hmac::{Hmac, Mac};
use migrate::protocol::{
    AbortReason, Codec, Config, Message, ProtocolError, Role, VERSION_1, VERSION_2,
};
use proptest::prelude::*;
use sha2::Sha256;

const PSK: &[u8] = b"0123456789abcdef0123456789abcdef";
const VM: &str = "vm-42";

fn codec(role: Role, nonce: u8) -> Codec {
    Codec::new(Config::new(role, PSK, VM), [nonce; 32]).unwrap()
}

/// Two codecs that have exchanged Hellos, and the raw Hello bytes each sent.
fn pair(ns: u8, nd: u8) -> (Codec, Codec, Vec<u8>, Vec<u8>) {
    let mut s = codec(Role::Source, ns);
    let mut d = codec(Role::Destination, nd);
    let hs = s.start().unwrap();
    let hd = d.start().unwrap();
    d.feed(&hs);
    s.feed(&hd);
    assert!(matches!(d.poll_message().unwrap(), Some(Message::Hello(h)) if h.nonce == [ns; 32]));
    assert!(matches!(s.poll_message().unwrap(), Some(Message::Hello(h)) if h.vm_id == VM));
    (s, d, hs, hd)
}

/// Drains every message the codec can give.
fn drain(c: &mut Codec) -> Result<Vec<Message>, ProtocolError> {
    let mut out = Vec::new();
    while let Some(m) = c.poll_message()? {
        out.push(m);
    }
    Ok(out)
}

/// A Hello frame as a foreign build would write it (the layout every version keeps).
fn foreign_hello(versions: &[u16], vm_id: &str) -> Vec<u8> {
    let mut payload = b"DMCM".to_vec();
    payload.push(versions.len() as u8);
    for v in versions {
        payload.extend_from_slice(&v.to_be_bytes());
    }
    payload.extend_from_slice(&[9; 32]);
    payload.extend_from_slice(&(vm_id.len() as u16).to_be_bytes());
    payload.extend_from_slice(vm_id.as_bytes());
    let len = (9 + payload.len() + 32) as u32;
    let mut m = Hmac::<Sha256>::new_from_slice(PSK).unwrap();
    m.update(b"dmore-comigrate frame");
    m.update(&[0]); // sent by a source
    m.update(&len.to_be_bytes());
    m.update(&0u64.to_be_bytes());
    m.update(&[0]);
    m.update(&payload);
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&0u64.to_be_bytes());
    frame.push(0);
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(&m.finalize().into_bytes());
    frame
}

#[test]
fn handshake_negotiates_version_2_and_messages_flow_both_ways() {
    let (mut s, mut d, _, _) = pair(1, 2);
    assert_eq!(s.version(), Some(VERSION_2));
    assert_eq!(d.version(), Some(VERSION_2));
    let snap = Message::Snapshot {
        bytes: vec![7; 1000],
    };
    d.feed(&s.encode(&snap).unwrap());
    assert_eq!(drain(&mut d).unwrap(), vec![snap]);
    s.feed(&d.encode(&Message::TakenOver { relay_to: None }).unwrap());
    assert_eq!(
        drain(&mut s).unwrap(),
        vec![Message::TakenOver { relay_to: None }]
    );
    assert_eq!(s.end_of_stream(), Ok(()));
}

#[test]
fn an_announcement_needs_version_2_both_ways() {
    // A console of the previous release speaks version 1 only.
    let old = |role, nonce| {
        Codec::new(
            Config {
                versions: vec![VERSION_1],
                ..Config::new(role, PSK, VM)
            },
            [nonce; 32],
        )
        .unwrap()
    };
    let mut s = codec(Role::Source, 1);
    let mut d = old(Role::Destination, 2);
    d.feed(&s.start().unwrap());
    s.feed(&d.start().unwrap());
    drain(&mut s).unwrap();
    drain(&mut d).unwrap();
    assert_eq!(s.version(), Some(VERSION_1));
    assert_eq!(
        s.encode(&Message::Announce),
        Err(ProtocolError::NotInVersion {
            message: "Announce",
            version: VERSION_1
        })
    );
    // Both sides agree on the version, so the receiver never sees it (its own check refuses
    // one all the same: `Codec::poll_message`).
    let (mut s2, mut d2, _, _) = pair(3, 4);
    d2.feed(&s2.encode(&Message::Announce).unwrap());
    s2.feed(&d2.encode(&Message::Announced).unwrap());
    assert_eq!(drain(&mut d2).unwrap(), vec![Message::Announce]);
    assert_eq!(drain(&mut s2).unwrap(), vec![Message::Announced]);
}

#[test]
fn a_foreign_hello_is_accepted_by_its_documented_layout() {
    let mut d = codec(Role::Destination, 2);
    d.start().unwrap();
    d.feed(&foreign_hello(&[1, 7], VM));
    let Some(Message::Hello(h)) = d.poll_message().unwrap() else {
        panic!("no Hello")
    };
    assert_eq!(h.versions, vec![1, 7]);
    assert_eq!(d.version(), Some(1), "highest common version");
}

#[test]
fn no_common_version_names_both_lists() {
    let mut d = codec(Role::Destination, 2);
    d.start().unwrap();
    d.feed(&foreign_hello(&[3, 4], VM));
    assert_eq!(
        d.poll_message(),
        Err(ProtocolError::VersionMismatch {
            ours: vec![1, 2],
            theirs: vec![3, 4]
        })
    );
    assert_eq!(d.poll_message(), Err(ProtocolError::Closed));
}

#[test]
fn another_vm_is_refused() {
    let mut d = codec(Role::Destination, 2);
    d.start().unwrap();
    d.feed(&foreign_hello(&[1], "vm-7"));
    assert!(
        matches!(d.poll_message(), Err(ProtocolError::VmMismatch { theirs, .. }) if theirs == "vm-7")
    );
}

#[test]
fn wrong_key_fails_authentication() {
    let mut s = Codec::new(
        Config::new(Role::Source, b"other key".to_vec(), VM),
        [1; 32],
    )
    .unwrap();
    let mut d = codec(Role::Destination, 2);
    d.start().unwrap();
    d.feed(&s.start().unwrap());
    assert_eq!(d.poll_message(), Err(ProtocolError::BadMac { seq: 0 }));
}

#[test]
fn frames_replayed_from_another_connection_fail() {
    let (mut s1, _d1, _, _) = pair(1, 2);
    let old = s1
        .encode(&Message::Snapshot {
            bytes: b"old".to_vec(),
        })
        .unwrap();
    // Same key, same VM, new nonces: the old Hello would even pass, the old Snapshot not.
    let (_s2, mut d2, _, _) = pair(3, 4);
    d2.feed(&old);
    assert_eq!(d2.poll_message(), Err(ProtocolError::BadMac { seq: 1 }));
}

#[test]
fn reorder_drop_and_replay_within_a_connection_fail() {
    let msgs = |s: &mut Codec| -> Vec<Vec<u8>> {
        (0..3u8)
            .map(|i| s.encode(&Message::Snapshot { bytes: vec![i] }).unwrap())
            .collect()
    };
    // Dropped (frame 1 skipped).
    let (mut s, mut d, _, _) = pair(1, 2);
    let f = msgs(&mut s);
    d.feed(&f[0]);
    d.feed(&f[2]);
    assert_eq!(
        drain(&mut d),
        Err(ProtocolError::BadSequence {
            expected: 2,
            got: 3
        })
    );
    // Replayed.
    let (mut s, mut d, _, _) = pair(1, 2);
    let f = msgs(&mut s);
    d.feed(&f[0]);
    d.feed(&f[0]);
    assert_eq!(
        drain(&mut d),
        Err(ProtocolError::BadSequence {
            expected: 2,
            got: 1
        })
    );
    // Reflected back to its sender.
    let (mut s, _d, _, _) = pair(1, 2);
    let f = msgs(&mut s);
    s.feed(&f[0]);
    assert_eq!(drain(&mut s), Err(ProtocolError::BadMac { seq: 1 }));
}

#[test]
fn before_the_hello_only_a_hello_sized_frame_is_buffered() {
    // The largest Hello a peer may send fits.
    let longest = "v".repeat(migrate::protocol::MAX_VM_ID);
    let versions: Vec<u16> = (1..=migrate::protocol::MAX_VERSIONS as u16).collect();
    let hello = foreign_hello(&versions, &longest);
    assert!(hello.len() - 4 <= migrate::protocol::MAX_HELLO_FRAME as usize);
    let mut d = Codec::new(Config::new(Role::Destination, PSK, &longest), [2; 32]).unwrap();
    d.start().unwrap();
    d.feed(&hello);
    assert!(
        matches!(d.poll_message(), Ok(Some(Message::Hello(_)))),
        "the largest Hello is accepted"
    );
    // A bigger frame before the Hello is refused from its length alone.
    let mut d = codec(Role::Destination, 2);
    d.start().unwrap();
    d.feed(&(migrate::protocol::MAX_HELLO_FRAME + 1).to_be_bytes());
    assert_eq!(
        d.poll_message(),
        Err(ProtocolError::FrameTooLarge {
            len: migrate::protocol::MAX_HELLO_FRAME + 1,
            max: migrate::protocol::MAX_HELLO_FRAME
        })
    );
}

#[test]
fn oversized_frames_are_refused_before_buffering_them() {
    let mut cfg = Config::new(Role::Destination, PSK, VM);
    cfg.max_frame = 100;
    let mut d = Codec::new(cfg, [2; 32]).unwrap();
    d.start().unwrap();
    d.feed(&u32::MAX.to_be_bytes());
    assert_eq!(
        d.poll_message(),
        Err(ProtocolError::FrameTooLarge {
            len: u32::MAX,
            max: 100
        })
    );
    // On the sending side a message over the bound is refused and the codec stays usable.
    let mut small = Config::new(Role::Source, PSK, VM);
    small.max_frame = 100;
    let mut s = Codec::new(small, [1; 32]).unwrap();
    let mut d = codec(Role::Destination, 2);
    d.feed(&s.start().unwrap());
    s.feed(&d.start().unwrap());
    drain(&mut s).unwrap();
    assert!(matches!(
        s.encode(&Message::Snapshot {
            bytes: vec![0; 100]
        }),
        Err(ProtocolError::FrameTooLarge { max: 100, .. })
    ));
    d.feed(&s.encode(&Message::TakenOver { relay_to: None }).unwrap());
    assert_eq!(
        drain(&mut d).unwrap().len(),
        2,
        "Hello, then TakenOver numbered 1"
    );
}

#[test]
fn order_of_calls_is_enforced() {
    let mut s = codec(Role::Source, 1);
    assert!(matches!(
        s.encode(&Message::TakenOver { relay_to: None }),
        Err(ProtocolError::Unexpected(_))
    ));
    s.start().unwrap();
    assert!(matches!(s.start(), Err(ProtocolError::Unexpected(_))));
    let cut = foreign_hello(&[1], VM);
    let mut d2 = codec(Role::Destination, 2);
    d2.start().unwrap();
    d2.feed(&cut[..cut.len() - 1]);
    assert_eq!(d2.poll_message(), Ok(None));
    assert_eq!(
        d2.end_of_stream(),
        Err(ProtocolError::Truncated(cut.len() - 1))
    );
    assert!(Codec::new(
        Config {
            versions: vec![3],
            ..Config::new(Role::Source, PSK, VM)
        },
        [0; 32]
    )
    .is_err());
}

fn arb_message() -> impl Strategy<Value = Message> {
    let reason = prop_oneof![
        Just(AbortReason::SourceResumed),
        Just(AbortReason::MigrationFailed),
        "[a-z ]{0,40}".prop_map(AbortReason::DestinationFailed),
        (4u8..).prop_map(AbortReason::Unknown),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2000)
            .prop_map(|bytes| Message::Snapshot { bytes }),
        proptest::option::of(any::<[u8; 6]>()).prop_map(|relay_to| Message::TakenOver { relay_to }),
        Just(Message::ResendSnapshot),
        Just(Message::Announce),
        Just(Message::Announced),
        reason.prop_map(|reason| Message::Abort { reason }),
    ]
}

/// The source's whole byte stream (Hello first) for `msgs`, and a destination ready for it.
fn stream(msgs: &[Message]) -> (Vec<u8>, Codec) {
    let mut s = codec(Role::Source, 1);
    let mut d = codec(Role::Destination, 2);
    let mut bytes = s.start().unwrap();
    s.feed(&d.start().unwrap());
    drain(&mut s).unwrap();
    for m in msgs {
        bytes.extend(s.encode(m).unwrap());
    }
    (bytes, d)
}

proptest! {
    #[test]
    fn round_trip_in_any_chunking(
        msgs in proptest::collection::vec(arb_message(), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let (bytes, mut d) = stream(&msgs);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut got = Vec::new();
        let mut prev = 0;
        for cut in at.into_iter().chain([bytes.len()]) {
            d.feed(&bytes[prev..cut]);
            prev = cut;
            got.extend(drain(&mut d).unwrap());
        }
        prop_assert!(matches!(got.first(), Some(Message::Hello(_))));
        prop_assert_eq!(&got[1..], &msgs[..]);
        prop_assert_eq!(d.end_of_stream(), Ok(()));
    }

    #[test]
    fn any_single_bit_flip_is_rejected(
        msgs in proptest::collection::vec(arb_message(), 1..5),
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut bytes, mut d) = stream(&msgs);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        d.feed(&bytes);
        let mut got = Vec::new();
        let outcome = loop {
            match d.poll_message() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break d.end_of_stream(),
                Err(e) => break Err(e),
            }
        };
        // Never a changed message: whatever came through is a prefix of what was sent...
        if let Some((_, rest)) = got.split_first() {
            prop_assert_eq!(rest, &msgs[..rest.len()]);
        }
        // ...and the stream as a whole is refused.
        prop_assert!(outcome.is_err(), "a flipped stream was accepted whole: {:?}", got);
    }

    #[test]
    fn random_bytes_never_panic(
        garbage in proptest::collection::vec(any::<u8>(), 0..4000),
        handshake_first in any::<bool>(),
    ) {
        let mut d = if handshake_first { pair(1, 2).1 } else {
            let mut d = codec(Role::Destination, 2);
            d.start().unwrap();
            d
        };
        d.feed(&garbage);
        let _ = drain(&mut d);
        let _ = d.end_of_stream();
    }
}
