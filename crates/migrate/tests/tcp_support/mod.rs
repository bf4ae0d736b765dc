//! Helpers of the TCP hand-over tests: the testbed (skipped without root), a service address
//! that moves between hosts, a packet capture in the client's namespace, and the move itself.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use migrate::tcp::{self, Checkpoint, Relay};
use testbed::hosts::{Host, Mode, Testbed};

/// UDP port of the capture's end marker (discard).
const MARKER_PORT: u16 = 9;

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

/// Runs `ip ARGS` inside `host`.
pub fn ip(host: &Host, args: &[&str]) -> Result<()> {
    let out = host
        .command("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {args:?} on {}", host.name()))?;
    ensure!(
        out.status.success(),
        "ip {args:?} on {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The service address: on at most one host at a time; removed from every host on drop.
pub struct ServiceAddr {
    pub addr: Ipv4Addr,
    hosts: Vec<Host>,
}

impl ServiceAddr {
    /// `10.213.N.50`, not yet on any host.
    pub fn new(bed: &Testbed) -> Self {
        ServiceAddr {
            addr: Ipv4Addr::new(10, 213, bed.subnet(), 50),
            hosts: vec![bed.a().clone(), bed.b().clone()],
        }
    }

    fn cidr(&self) -> String {
        format!("{}/32", self.addr)
    }

    /// Adds the address to `host`'s eth0.
    pub fn add(&self, host: &Host) -> Result<()> {
        ip(host, &["addr", "add", &self.cidr(), "dev", "eth0"])
    }

    /// Removes the address from `host`.
    pub fn del(&self, host: &Host) -> Result<()> {
        ip(host, &["addr", "del", &self.cidr(), "dev", "eth0"])
    }
}

impl Drop for ServiceAddr {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = h
                .command("ip")
                .args(["addr", "del", &self.cidr(), "dev", "eth0"])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `tcpdump` writing every TCP frame of the client's eth0 to a file; killed on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    /// Starts the capture and waits until tcpdump says it is listening.
    pub fn start(client: &Host) -> Result<Self> {
        let file = client.runtime_dir().join("client.pcap");
        let mut child = client
            .command("tcpdump")
            // Immediate mode: libpcap's default ring hands packets over only when a block
            // fills or times out, and those still in the ring are lost on SIGINT.
            .args(["-i", "eth0", "-nn", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(format!("tcp or (udp and dst port {MARKER_PORT})"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump in the client namespace")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let mut cap = Capture {
            child: Some(child),
            file,
        };
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => {}
                _ => {
                    cap.kill();
                    bail!("tcpdump exited before listening");
                }
            }
        }
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Ok(cap)
    }

    /// Waits until tcpdump has written everything sent so far (a UDP marker sent after it
    /// shows up in the file), stops it and returns `tcpdump -r FILE -nn`'s text (TCP only).
    pub fn finish(mut self, client: &Host, peer: Ipv4Addr) -> Result<String> {
        let marker = client.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))??;
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            marker.send_to(b"end of test", (peer, MARKER_PORT))?;
            if self
                .read(client, false)?
                .contains(&format!(".{MARKER_PORT}: UDP"))
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "tcpdump never wrote the end marker"
            );
        }
        if let Some(mut child) = self.child.take() {
            let pid = libc::pid_t::try_from(child.id()).context("tcpdump pid")?;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
            child.wait().context("waiting for tcpdump")?;
        }
        let text = self.read(client, true)?;
        Ok(text
            .lines()
            .filter(|l| !l.contains(" UDP"))
            .map(|l| format!("{l}\n"))
            .collect())
    }

    /// The capture as text; `strict`: fail if tcpdump does (a file still being written may
    /// end in a partial record).
    fn read(&self, client: &Host, strict: bool) -> Result<String> {
        let out = client
            .command("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .context("reading the capture")?;
        ensure!(!strict || out.status.success(), "tcpdump -r failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// TCP flags seen in a capture (`tcpdump -nn` text).
#[derive(Debug, Default)]
pub struct FlagCounts {
    pub segments: usize,
    pub syn: usize,
    pub fin: usize,
    pub rst: usize,
}

/// Counts SYN, FIN and RST segments in `tcpdump -r -nn` output.
pub fn count_flags(text: &str) -> FlagCounts {
    let mut c = FlagCounts::default();
    for line in text.lines() {
        let Some(start) = line.find("Flags [") else {
            continue;
        };
        let rest = &line[start + 7..];
        let flags = &rest[..rest.find(']').unwrap_or(rest.len())];
        c.segments += 1;
        c.syn += usize::from(flags.contains('S'));
        c.fin += usize::from(flags.contains('F'));
        c.rst += usize::from(flags.contains('R'));
    }
    c
}

/// Asserts the capture holds one handshake (SYN, SYN-ACK) and no FIN or RST at all.
pub fn assert_one_clean_connection(text: &str) {
    let c = count_flags(text);
    println!(
        "capture: {} segments, {} with SYN, {} with FIN, {} with RST",
        c.segments, c.syn, c.fin, c.rst
    );
    if std::env::var_os("TCP_TEST_SHOW_CAPTURE").is_some() {
        println!("{text}");
    }
    assert_eq!(c.syn, 2, "exactly one SYN and one SYN-ACK:\n{text}");
    assert_eq!(c.fin, 0, "no FIN:\n{text}");
    assert_eq!(c.rst, 0, "no RST:\n{text}");
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
    let a = addr.addr;
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
