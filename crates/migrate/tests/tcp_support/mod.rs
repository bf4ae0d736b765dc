//! Helpers of the TCP hand-over tests: the testbed (skipped without root), the connection
//! and its move. The service address and the client's packet capture are the testbed's
//! (`testbed::service`, `testbed::capture`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use migrate::tcp::{self, Checkpoint, Relay};
use testbed::capture::CaptureReport;
use testbed::hosts::{Host, Mode, Testbed};
use testbed::service::ServiceAddr;

/// Port the service listens on.
pub const PORT: u16 = 5901;
/// Read timeout on every test socket, so a broken hand-over fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A testbed in network namespaces, or `None` (with a note printed) where that is impossible.
pub fn namespaces(test: &str) -> Result<Option<Testbed>> {
    if !nix_is_root() {
        testbed::skip::skip(test, "TCP_REPAIR and network namespaces need root");
        return Ok(None);
    }
    let bed = Testbed::create()?;
    if bed.mode() != Mode::Namespaces {
        testbed::skip::skip(
            test,
            "no network namespaces here (testbed fell back to loopback)",
        );
        return Ok(None);
    }
    Ok(Some(bed))
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Asserts the capture saw one connection to the service address: one handshake (SYN,
/// SYN-ACK), no FIN or RST.
pub fn assert_one_clean_connection(report: &CaptureReport) {
    println!("capture: {report}");
    let t = report.total();
    assert_eq!(report.connections.len(), 1, "one 4-tuple: {report:?}");
    assert_eq!(
        (t.syn, t.syn_ack),
        (1, 1),
        "one SYN and one SYN-ACK: {report:?}"
    );
    assert_eq!((t.fin, t.rst), (0, 0), "no FIN, no RST: {report:?}");
}

/// A client connected to `addr:PORT` from the client host, and the server's accepted socket
/// on host A (where the listener runs). Returns (client, server, listener).
pub fn connect(
    bed: &Testbed,
    addr: Ipv4Addr,
) -> Result<(TcpStream, TcpStream, std::net::TcpListener)> {
    let listener = bed
        .a()
        .run(move || std::net::TcpListener::bind((addr, PORT)))??;
    let client = bed
        .client()
        .run(move || TcpStream::connect((addr, PORT)))??;
    let (server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
    }
    Ok((client, server, listener))
}

/// Writes `data` on `from` and reads exactly it on `to`.
pub fn exchange(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) -> Result<()> {
    from.write_all(data)?;
    let mut got = vec![0u8; data.len()];
    to.read_exact(&mut got)?;
    ensure!(got == data, "bytes changed on the way");
    Ok(())
}

/// Waits (with a deadline) until `sock` has `n` unread bytes queued.
pub fn wait_queued(sock: &TcpStream, n: usize) -> Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = vec![0u8; n];
    loop {
        if sock.peek(&mut buf)? >= n {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{n} bytes never arrived");
        std::thread::yield_now();
    }
}

/// Test-only: queues `data` on `sock` as if it had been sent and lost in flight (repair mode,
/// send queue). The socket is left in repair mode, as [`tcp::checkpoint`] leaves it.
pub fn inject_lost_send(sock: &TcpStream, data: &[u8]) -> Result<()> {
    let fd = sock.as_raw_fd();
    let set = |name, value: libc::c_int| -> Result<()> {
        // SAFETY: a valid fd and a live int of the length passed.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_TCP,
                name,
                (&value as *const libc::c_int).cast(),
                4,
            )
        };
        ensure!(r == 0, "setsockopt: {}", std::io::Error::last_os_error());
        Ok(())
    };
    set(libc::TCP_REPAIR, 1)?;
    set(libc::TCP_REPAIR_QUEUE, 2)?;
    // SAFETY: `data` is readable.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
    ensure!(
        usize::try_from(n).ok() == Some(data.len()),
        "send in repair mode: {}",
        std::io::Error::last_os_error()
    );
    set(libc::TCP_REPAIR_QUEUE, 0)
}

/// When each step of a move finished.
#[derive(Debug, Clone, Copy)]
pub struct MoveTimes {
    pub start: Instant,
    pub restored: Instant,
    pub announced: Instant,
    pub relayed: Option<(Instant, usize)>,
}

/// Moves the server's connection from `from` to `to`, in the order that keeps it alive: stop
/// `from` answering for the address, checkpoint, close silently, hand the checkpoint over as
/// bytes, restore on `to`, add the address there, announce it, and (with a relay started on
/// `from` before all this) forward what `from` caught. `between` runs right after the address
/// left `from` (the client sending during the move).
pub fn move_connection(
    addr: &ServiceAddr,
    from: &Host,
    to: &Host,
    sock: TcpStream,
    relay: Option<&Relay>,
    between: impl FnOnce() -> Result<()>,
) -> Result<(TcpStream, Checkpoint, MoveTimes)> {
    let start = Instant::now();
    addr.del(from)?;
    between()?;
    let cp = tcp::checkpoint(&sock)?;
    tcp::abandon(sock)?;
    let wire = cp.encode();
    let cp2 = Checkpoint::decode(&wire)?;
    let restored = to.run(move || tcp::restore(&cp2))??;
    let t_restored = Instant::now();
    addr.add(to)?;
    let a = addr.addr();
    to.run(move || tcp::announce("eth0", a))??;
    let announced = Instant::now();
    let relayed = match relay {
        Some(r) => {
            let mac = to.run(|| tcp::hardware_address("eth0"))??;
            Some((Instant::now(), r.forward(mac)?))
        }
        None => None,
    };
    restored.set_nodelay(true)?;
    restored.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok((
        restored,
        cp,
        MoveTimes {
            start,
            restored: t_restored,
            announced,
            relayed,
        },
    ))
}

/// Milliseconds between two instants, for printing.
pub fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}
