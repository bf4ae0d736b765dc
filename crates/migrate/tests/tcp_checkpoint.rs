//! The checkpoint's encoding: a round trip keeps every field, and damaged or hostile bytes are
//! refused with a typed error before any socket is made.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};

use migrate::tcp::{
    self, Checkpoint, RepairWindow, TcpRepairError, WindowScale, CHECKPOINT_VERSION,
};

/// A named way to damage a checkpoint.
type Damage = (&'static str, Box<dyn Fn(&mut Checkpoint)>);

fn sample() -> Checkpoint {
    Checkpoint {
        local: SocketAddr::from((Ipv4Addr::new(10, 213, 7, 50), 5901)),
        remote: SocketAddr::from((Ipv4Addr::new(10, 213, 7, 100), 40_000)),
        send_seq: 0xffff_fff0, // near the wrap: sequence numbers are u32, never signed
        recv_seq: 12_345,
        recv_queue: b"typed, unread".to_vec(),
        send_unacked: vec![1, 2, 3],
        send_unsent: vec![4; 1000],
        mss: 1448,
        window_scale: Some(WindowScale { snd: 7, rcv: 10 }),
        sack: true,
        timestamps: true,
        timestamp: 0x8000_0001,
        window: RepairWindow {
            snd_wl1: 12_000,
            snd_wnd: 65_535,
            max_window: 65_535,
            rcv_wnd: 64_000,
            rcv_wup: 12_345,
        },
    }
}

#[test]
fn round_trip_keeps_every_field() {
    let cp = sample();
    let bytes = cp.encode();
    assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
    assert_eq!(cp.send_una(), 0xffff_fff0u32.wrapping_sub(1003));

    let mut v6 = sample();
    v6.local = SocketAddr::V6(SocketAddrV6::new("fd00::50".parse().unwrap(), 5901, 0, 0));
    v6.remote = SocketAddr::V6(SocketAddrV6::new(
        "fd00::100".parse().unwrap(),
        40_000,
        0,
        0,
    ));
    v6.window_scale = None;
    assert_eq!(Checkpoint::decode(&v6.encode()).unwrap(), v6);
}

#[test]
fn damaged_bytes_are_refused() {
    let bytes = sample().encode();
    // Every truncation fails cleanly.
    for len in 0..bytes.len() {
        assert!(
            Checkpoint::decode(&bytes[..len]).is_err(),
            "truncated to {len}"
        );
    }
    // Trailing garbage.
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        Checkpoint::decode(&long),
        Err(TcpRepairError::Invalid(_))
    ));
    // Another version.
    let mut other = postcard::to_stdvec(&(CHECKPOINT_VERSION + 1)).unwrap();
    other.extend_from_slice(&bytes[1..]);
    assert!(matches!(
        Checkpoint::decode(&other),
        Err(TcpRepairError::Version { found, .. }) if found == CHECKPOINT_VERSION + 1
    ));
    // A queue length far beyond the input does not allocate it: postcard checks the length
    // against the bytes present.
    let mut huge = bytes.clone();
    let at = huge.len() - 1;
    huge.truncate(at);
    assert!(Checkpoint::decode(&huge).is_err());
    // Every single-byte flip either fails or decodes to a checkpoint that passes validation
    // (never a panic).
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0xff;
        if let Ok(cp) = Checkpoint::decode(&flipped) {
            cp.validate().unwrap();
        }
    }
}

#[test]
fn impossible_values_fail_before_any_socket_is_made() {
    let cases: Vec<Damage> = vec![
        (
            "window scale 15",
            Box::new(|c| c.window_scale = Some(WindowScale { snd: 15, rcv: 0 })),
        ),
        ("mss 0", Box::new(|c| c.mss = 0)),
        ("mss above 65535", Box::new(|c| c.mss = 70_000)),
        (
            "mixed families",
            Box::new(|c| c.remote = "[fd00::1]:5".parse().unwrap()),
        ),
        ("port 0", Box::new(|c| c.local.set_port(0))),
        (
            "queue too big",
            Box::new(|c| c.recv_queue = vec![0; tcp::MAX_QUEUE_BYTES + 1]),
        ),
    ];
    for (what, damage) in cases {
        let mut cp = sample();
        damage(&mut cp);
        assert!(
            matches!(
                Checkpoint::decode(&cp.encode()),
                Err(TcpRepairError::Invalid(_))
            ),
            "{what}: decode"
        );
        // restore validates first: no socket, no privilege needed to see the refusal.
        assert!(
            matches!(tcp::restore(&cp), Err(TcpRepairError::Invalid(_))),
            "{what}: restore"
        );
    }
}

#[test]
fn missing_cap_net_admin_is_named() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        println!("missing_cap_net_admin_is_named: skipped: running as root");
        return;
    }
    let err = tcp::restore(&sample()).unwrap_err();
    println!("unprivileged restore: {err}");
    assert!(matches!(err, TcpRepairError::NotPermitted { .. }), "{err}");
    assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
}
