//! A viewer's TCP connection moved between namespace hosts with TCP_REPAIR: it keeps working
//! both ways, nothing queued on either side is lost, an aborted move continues on the source,
//! and the client's capture shows one connection with no FIN and no RST.

mod tcp_support;

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use anyhow::{ensure, Result};
use migrate::tcp::{self, Relay, Step};
use tcp_support::*;
use testbed::capture::Capture;
use testbed::service::{ServiceAddr, DEFAULT_OCTET};

/// A byte pattern that shows any loss, duplication or reordering.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i / 251)) as u8
}

/// Upper bound of the bulk data A queues while the client does not read.
const BULK_MAX: usize = 32 << 20;

#[test]
fn connection_moves_to_b_with_its_queues_and_keeps_working() -> Result<()> {
    let Some(bed) = namespaces("connection_moves_to_b")? else {
        return Ok(());
    };
    let addr = ServiceAddr::new(&bed, DEFAULT_OCTET)?;
    addr.add(bed.a())?;
    let capture = Capture::start(bed.client(), "client", addr.addr())?;
    let (mut client, mut server, _listener) = connect(&bed, addr.addr())?;
    let client_port = client.local_addr()?;

    exchange(&mut client, &mut server, b"hello A")?;
    exchange(&mut server, &mut client, b"hello client")?;

    // Bytes the client sent that A never reads: they must be read on B.
    let unread = b"typed before the move, unread by A";
    client.write_all(unread)?;
    wait_queued(&server, unread.len())?;

    // Bulk data A queues while the client reads nothing: the client's window closes and part
    // of A's send queue is never sent. All of it must reach the client, in order, from B.
    server.set_nonblocking(true)?;
    let mut bulk = 0usize;
    let mut chunk = vec![0u8; 64 << 10];
    while bulk < BULK_MAX {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = pattern(bulk + j);
        }
        match server.write(&chunk) {
            Ok(n) => bulk += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    server.set_nonblocking(false)?;
    ensure!(bulk < BULK_MAX, "A's send queue never filled");

    let (mut restored, cp, _) = move_connection(&addr, bed.a(), bed.b(), server, None, || Ok(()))?;
    println!(
        "checkpoint: recv queue {} B, send unacked {} B, unsent {} B, mss {}, wscale {:?}, \
         sack {}, timestamps {}, window {:?}; {} bytes encoded; client queued {} B of bulk",
        cp.recv_queue.len(),
        cp.send_unacked.len(),
        cp.send_unsent.len(),
        cp.mss,
        cp.window_scale,
        cp.sack,
        cp.timestamps,
        cp.window,
        cp.encode().len(),
        bulk
    );
    assert_eq!(
        cp.recv_queue, unread,
        "A's unread bytes are in the checkpoint"
    );
    assert!(
        !cp.send_unsent.is_empty(),
        "A's never-sent bytes are in the checkpoint"
    );
    assert_eq!(
        restored.peer_addr()?,
        client_port,
        "same connection, same client port"
    );

    let mut got = vec![0u8; unread.len()];
    restored.read_exact(&mut got)?;
    assert_eq!(&got, unread, "B reads what the client sent to A");

    let mut received = vec![0u8; bulk];
    client.read_exact(&mut received)?;
    let first_bad = received
        .iter()
        .enumerate()
        .position(|(i, b)| *b != pattern(i));
    assert_eq!(
        first_bad, None,
        "the bulk stream arrives whole and in order"
    );

    exchange(&mut client, &mut restored, b"after the move, to B")?;
    exchange(&mut restored, &mut client, b"from B")?;
    assert_eq!(client.local_addr()?, client_port);

    assert_one_clean_connection(&capture.finish()?);
    Ok(())
}

#[test]
fn corrupted_checkpoint_fails_to_restore_and_the_good_one_still_does() -> Result<()> {
    let Some(bed) = namespaces("corrupted_checkpoint_fails")? else {
        return Ok(());
    };
    let addr = ServiceAddr::new(&bed, DEFAULT_OCTET)?;
    addr.add(bed.a())?;
    let (mut client, mut server, _listener) = connect(&bed, addr.addr())?;
    exchange(&mut client, &mut server, b"hi")?;
    addr.del(bed.a())?;
    let cp = tcp::checkpoint(&server)?;
    tcp::abandon(server)?;

    // A window update "from the future": the kernel refuses it at TCP_REPAIR_WINDOW.
    let mut bad = cp.clone();
    bad.window.rcv_wup = bad.recv_seq.wrapping_add(100_000);
    let err = bed
        .b()
        .run(move || tcp::restore(&bad).map(drop))?
        .expect_err("a window beyond rcv_nxt is refused");
    println!("corrupted checkpoint: {err}");
    assert_eq!(err.step(), Some(Step::SetWindow));

    let good = cp.clone();
    let mut restored = bed.b().run(move || tcp::restore(&good))??;
    restored.set_read_timeout(Some(IO_TIMEOUT))?;
    addr.add(bed.b())?;
    let a = addr.addr();
    bed.b().run(move || tcp::announce("eth0", a))??;
    exchange(&mut client, &mut restored, b"still here")?;
    exchange(&mut restored, &mut client, b"yes")?;
    Ok(())
}

#[test]
fn aborted_move_continues_on_the_source() -> Result<()> {
    let Some(bed) = namespaces("aborted_move")? else {
        return Ok(());
    };
    let addr = ServiceAddr::new(&bed, DEFAULT_OCTET)?;
    addr.add(bed.a())?;
    let capture = Capture::start(bed.client(), "client", addr.addr())?;
    let (mut client, mut server, _listener) = connect(&bed, addr.addr())?;
    let client_port = client.local_addr()?;
    exchange(&mut client, &mut server, b"hello A")?;

    let unread = b"unread by A";
    client.write_all(unread)?;
    wait_queued(&server, unread.len())?;

    // The move starts: A stops answering, and A's last write is lost in flight.
    addr.del(bed.a())?;
    let lost = b"sent by A, lost in flight";
    inject_lost_send(&server, lost)?;
    let cp = tcp::checkpoint(&server)?;
    assert_eq!(
        cp.send_unacked, lost,
        "unacknowledged bytes are in the checkpoint"
    );
    assert_eq!(cp.recv_queue, unread);
    tcp::abandon(server)?;

    // The migration fails: A restores its own checkpoint, then takes the address back.
    let started = Instant::now();
    let mut restored = bed.a().run(move || tcp::restore(&cp))??;
    restored.set_read_timeout(Some(IO_TIMEOUT))?;
    addr.add(bed.a())?;
    let a = addr.addr();
    bed.a().run(move || tcp::announce("eth0", a))??;

    let mut got = vec![0u8; lost.len()];
    client.read_exact(&mut got)?;
    println!(
        "the restored socket retransmitted A's lost bytes {:.0} ms after the restore",
        ms(started, Instant::now())
    );
    assert_eq!(&got, lost, "the client receives what A had sent but lost");
    let mut got = vec![0u8; unread.len()];
    restored.read_exact(&mut got)?;
    assert_eq!(&got, unread);
    exchange(&mut client, &mut restored, b"after the abort")?;
    exchange(&mut restored, &mut client, b"from A again")?;
    assert_eq!(restored.peer_addr()?, client_port);

    // Aborted again, but A kept its socket this time: leaving repair mode is enough.
    let pending = b"pending on A";
    client.write_all(pending)?;
    wait_queued(&restored, pending.len())?;
    let cp = tcp::checkpoint(&restored)?;
    assert_eq!(cp.recv_queue, pending);
    tcp::resume(&restored)?;
    let mut got = vec![0u8; pending.len()];
    restored.read_exact(&mut got)?;
    assert_eq!(&got, pending);
    exchange(&mut client, &mut restored, b"after resume")?;
    exchange(&mut restored, &mut client, b"resumed")?;

    // Aborted a third time, with A's lost bytes queued as never sent: they go out at once.
    addr.del(bed.a())?;
    let lost = b"lost again, resent at once";
    inject_lost_send(&restored, lost)?;
    let cp = tcp::checkpoint(&restored)?;
    // What the client received but has not acknowledged yet (delayed ACK) may precede it.
    assert!(
        cp.send_unacked.ends_with(lost),
        "lost bytes are unacknowledged"
    );
    tcp::abandon(restored)?;
    let started = Instant::now();
    let opts = tcp::RestoreOptions {
        resend_unacked: true,
    };
    let mut restored = bed.a().run(move || tcp::restore_with(&cp, &opts))??;
    restored.set_read_timeout(Some(IO_TIMEOUT))?;
    addr.add(bed.a())?;
    let mut got = vec![0u8; lost.len()];
    client.read_exact(&mut got)?;
    println!(
        "with resend_unacked, A's lost bytes arrived {:.1} ms after the restore",
        ms(started, Instant::now())
    );
    assert_eq!(&got, lost);
    exchange(&mut client, &mut restored, b"third time")?;
    exchange(&mut restored, &mut client, b"still one connection")?;

    assert_one_clean_connection(&capture.finish()?);
    Ok(())
}

/// Bytes the client sends while its server is in flight: where do they go, and how long until
/// the destination reads them? Without a relay they wait for the client's retransmission
/// timer; with one, the source forwards what it caught as soon as the destination announced.
#[test]
fn bytes_sent_during_the_move_arrive() -> Result<()> {
    let Some(bed) = namespaces("bytes_sent_during_the_move")? else {
        return Ok(());
    };
    const TRIALS: usize = 5;
    let addr = ServiceAddr::new(&bed, DEFAULT_OCTET)?;
    addr.add(bed.a())?;
    let capture = Capture::start(bed.client(), "client", addr.addr())?;
    let (mut client, mut server, _listener) = connect(&bed, addr.addr())?;
    exchange(&mut client, &mut server, b"hello")?;

    let mut hosts = [bed.a().clone(), bed.b().clone()];
    let mut lines = Vec::new();
    for trial in 0..2 * TRIALS {
        let with_relay = trial >= TRIALS;
        let (from, to) = (&hosts[0], &hosts[1]);
        // Warm up so the client's RTT estimate is fresh, as with a typing user.
        for _ in 0..5 {
            exchange(&mut client, &mut server, b"k")?;
            exchange(&mut server, &mut client, b"e")?;
        }
        let relay = if with_relay {
            let a = addr.addr();
            Some(from.run(move || Relay::start("eth0", a))??)
        } else {
            None
        };
        let key = format!("key typed during move {trial}");
        let mut sent_at = None;
        let client_ref = &mut client;
        let (mut restored, _, t) =
            move_connection(&addr, from, to, server, relay.as_ref(), || {
                sent_at = Some(Instant::now());
                client_ref.write_all(key.as_bytes())?;
                Ok(())
            })?;
        let mut got = vec![0u8; key.len()];
        restored.read_exact(&mut got)?;
        let read_at = Instant::now();
        assert_eq!(got, key.as_bytes(), "the key typed during the move arrives");
        let sent_at = sent_at.unwrap_or(t.start);
        let line = format!(
            "trial {trial} {}->{} relay={}: move {:.1} ms (restored {:.1}, announced {:.1}){}; \
             key sent->read {:.1} ms, announced->read {:.1} ms",
            from.name(),
            to.name(),
            if with_relay { "yes" } else { "no " },
            ms(t.start, t.announced),
            ms(t.start, t.restored),
            ms(t.start, t.announced),
            t.relayed
                .map(|(_, n)| format!(", {n} segment(s) relayed"))
                .unwrap_or_default(),
            ms(sent_at, read_at),
            ms(t.announced, read_at),
        );
        println!("{line}");
        lines.push(line);
        if let Some((_, n)) = t.relayed {
            assert!(n >= 1, "the relay caught the client's segment");
        }
        exchange(&mut restored, &mut client, b"ack")?;
        server = restored;
        hosts.swap(0, 1);
    }
    assert_one_clean_connection(&capture.finish()?);
    Ok(())
}
