//! A packet capture on one host: `tcpdump` in the host's network namespace writes every TCP
//! segment of its `eth0` to a pcap file, and [`Capture::finish`] reads it back as the TCP flags
//! of each connection to a service address — what a viewer's connection went through (one
//! SYN and no FIN or RST for a connection that survived its console's moves).
//!
//! ```text
//!  start ── tcpdump -i eth0 -w FILE ("listening on") ── ... traffic ... ──
//!  finish ── UDP end marker to the service address, until it shows in FILE ── SIGINT ──
//!           tcpdump -r FILE -nn -tt ── parse_text ── CaptureReport
//!                                      └─ payload_times: when the service sent data
//! ```
//!
//! The end marker makes `finish` wait until tcpdump has written everything sent before it,
//! without sleeping a guessed time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::hosts::Host;

/// UDP port of the end marker (discard).
const MARKER_PORT: u16 = 9;
/// How long tcpdump may take to start listening, and to write the end marker.
const DEADLINE: Duration = Duration::from_secs(10);

/// The Debian package that has `tcpdump`.
pub const TCPDUMP_PACKAGE: &str = "tcpdump";

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// tcpdump could not be run.
    #[error("running tcpdump on host {host} (install the Debian package `{TCPDUMP_PACKAGE}`)")]
    Spawn {
        /// The host.
        host: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// tcpdump exited or stayed silent instead of listening.
    #[error("tcpdump on host {host} did not start listening: {stderr}")]
    NotListening {
        /// The host.
        host: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// The end marker never reached the capture file.
    #[error("tcpdump never wrote the end marker to {0}")]
    NoMarker(PathBuf),
    /// Sending the end marker failed.
    #[error("sending the capture's end marker")]
    Marker(#[source] std::io::Error),
    /// Entering the host failed.
    #[error("entering host {0}")]
    Host(&'static str, #[source] crate::hosts::HostsError),
    /// Reading the file back failed.
    #[error("tcpdump -r {file} failed: {stderr}")]
    Read {
        /// The pcap file.
        file: PathBuf,
        /// What tcpdump said.
        stderr: String,
    },
}

/// The TCP flags of one connection (a 4-tuple) to the service address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionFlags {
    /// Segments either way.
    pub segments: usize,
    /// SYNs from the client (connection attempts, retransmitted ones included).
    pub syn: usize,
    /// SYN-ACKs from the service.
    pub syn_ack: usize,
    /// FINs either way.
    pub fin: usize,
    /// RSTs either way.
    pub rst: usize,
}

/// What a capture saw of the connections to one service address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureReport {
    /// Each distinct (client, service) 4-tuple, with its flags.
    pub connections: BTreeMap<(SocketAddrV4, SocketAddrV4), ConnectionFlags>,
    /// TCP segments of other connections (not to the service address).
    pub other_segments: usize,
}

impl CaptureReport {
    /// Flags summed over every connection to the service address.
    pub fn total(&self) -> ConnectionFlags {
        self.connections
            .values()
            .fold(ConnectionFlags::default(), |a, c| ConnectionFlags {
                segments: a.segments + c.segments,
                syn: a.syn + c.syn,
                syn_ack: a.syn_ack + c.syn_ack,
                fin: a.fin + c.fin,
                rst: a.rst + c.rst,
            })
    }

    /// Client SYNs beyond the first: reconnections (or retransmitted SYNs).
    pub fn syns_after_first(&self) -> usize {
        self.total().syn.saturating_sub(1)
    }
}

impl std::fmt::Display for CaptureReport {
    /// One line: connections, SYNs after the first, FINs, RSTs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.total();
        write!(
            f,
            "{} connection(s), {} segments; SYNs after the first: {}, FINs: {}, RSTs: {}",
            self.connections.len(),
            t.segments,
            self.syns_after_first(),
            t.fin,
            t.rst
        )
    }
}

/// Parses `tcpdump -nn -r FILE` text into the flags of each connection to `service`.
/// Lines that are no IPv4 TCP segment are ignored; nothing here panics on odd text.
pub fn parse_text(text: &str, service: Ipv4Addr) -> CaptureReport {
    parse_with(text, |a| *a.ip() == service)
}

/// [`parse_text`] for the connections to one address and port: how a capture on `lo` tells
/// a client from a service on the same host.
pub fn parse_text_at(text: &str, service: SocketAddrV4) -> CaptureReport {
    parse_with(text, |a| a == service)
}

fn parse_with(text: &str, is_service: impl Fn(SocketAddrV4) -> bool) -> CaptureReport {
    let mut report = CaptureReport::default();
    for line in text.lines() {
        let Some(seg) = parse_segment(line) else {
            continue;
        };
        let (client, server, from_client) = if is_service(seg.dst) {
            (seg.src, seg.dst, true)
        } else if is_service(seg.src) {
            (seg.dst, seg.src, false)
        } else {
            report.other_segments += 1;
            continue;
        };
        let c = report.connections.entry((client, server)).or_default();
        c.segments += 1;
        let syn = seg.flags.contains('S');
        c.syn += usize::from(syn && from_client);
        c.syn_ack += usize::from(syn && !from_client);
        c.fin += usize::from(seg.flags.contains('F'));
        c.rst += usize::from(seg.flags.contains('R'));
    }
    report
}

/// When `from` sent a segment with data, in tcpdump's `-tt` text (seconds since the Unix
/// epoch, as [`Capture::finish_text`] gives it), in the capture's order: what a viewer's host
/// saw of a server's framebuffer updates. Lines without a `-tt` time or a `length` are
/// ignored.
pub fn payload_times(text: &str, from: SocketAddrV4) -> Vec<f64> {
    text.lines()
        .filter_map(|line| {
            let seg = parse_segment(line)?;
            let length: u64 = line.rsplit_once(" length ")?.1.trim().parse().ok()?;
            let time: f64 = line.split_whitespace().next()?.parse().ok()?;
            (seg.src == from && length > 0).then_some(time)
        })
        .collect()
}

/// One TCP segment of tcpdump's text.
struct Segment<'a> {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: &'a str,
}

/// `TIME IP A.B.C.D.PORT > E.F.G.H.PORT: Flags [S.], ...`
fn parse_segment(line: &str) -> Option<Segment<'_>> {
    let (_, rest) = line.split_once(" IP ")?;
    let (src, rest) = rest.split_once(" > ")?;
    let (dst, rest) = rest.split_once(": ")?;
    let flags = rest.strip_prefix("Flags [")?;
    let flags = flags.get(..flags.find(']')?)?;
    Some(Segment {
        src: endpoint(src)?,
        dst: endpoint(dst)?,
        flags,
    })
}

/// `A.B.C.D.PORT` (tcpdump's `-nn` form).
fn endpoint(text: &str) -> Option<SocketAddrV4> {
    let (ip, port) = text.rsplit_once('.')?;
    Some(SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?))
}

/// tcpdump capturing a host's `eth0` (TCP, and the end marker); stopped on drop.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    host: Host,
    service: Ipv4Addr,
    /// The service's port, when only connections to it count.
    port: Option<u16>,
}

impl Capture {
    /// Starts tcpdump on `host`'s `eth0`, writing `<host dir>/<name>.pcap`, and waits until it
    /// listens. `service` is the address whose connections [`finish`](Self::finish) reports
    /// (and where the end marker goes: it must be reachable from `host`). Blocks briefly.
    pub fn start(host: &Host, name: &str, service: Ipv4Addr) -> Result<Capture, CaptureError> {
        Capture::start_on(host, "eth0", name, service, None)
    }

    /// [`Capture::start`] on another of `host`'s interfaces (e.g. `lo`, for connections to
    /// a service on the host itself: then give its `port`, which tells the service's end
    /// from the client's).
    pub fn start_on(
        host: &Host,
        interface: &str,
        name: &str,
        service: Ipv4Addr,
        port: Option<u16>,
    ) -> Result<Capture, CaptureError> {
        let file = host.runtime_dir().join(format!("{name}.pcap"));
        let mut child = host
            .command("tcpdump")
            // Immediate mode: libpcap's ring hands packets over only when a block fills or
            // times out, and those still in the ring are lost on SIGINT. `-Z root`: write the
            // file as root (Debian's tcpdump would switch to its own user first).
            .args([
                "-i",
                interface,
                "-nn",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(format!("tcp or (udp and dst port {MARKER_PORT})"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CaptureError::Spawn {
                host: host.name(),
                source,
            })?;
        let stderr = child.stderr.take();
        let mut capture = Capture {
            child: Some(child),
            file,
            host: host.clone(),
            service,
            port,
        };
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        // A thread reads stderr to its end, so tcpdump never blocks on it.
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut said = String::new();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                } else if tx.is_some() && said.len() < 4096 {
                    said.push_str(&line);
                    said.push('\n');
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(said));
            }
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(Ok(())) => Ok(capture),
            Ok(Err(stderr)) => {
                capture.stop(false);
                Err(CaptureError::NotListening {
                    host: host.name(),
                    stderr,
                })
            }
            Err(_) => {
                capture.stop(false);
                Err(CaptureError::NotListening {
                    host: host.name(),
                    stderr: format!("nothing within {DEADLINE:?}"),
                })
            }
        }
    }

    /// The pcap file (kept in the host's directory until the testbed goes).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Waits until everything sent so far is in the file (an end marker sent after it shows
    /// up), stops tcpdump and returns the connections to the service address. Blocks.
    pub fn finish(mut self) -> Result<CaptureReport, CaptureError> {
        let text = self.finish_text()?;
        Ok(match self.port {
            Some(port) => parse_text_at(&text, SocketAddrV4::new(self.service, port)),
            None => parse_text(&text, self.service),
        })
    }

    /// Like [`finish`](Self::finish), but returns `tcpdump -nn -tt -r`'s text (TCP lines
    /// only; each begins with its time in seconds since the Unix epoch).
    pub fn finish_text(&mut self) -> Result<String, CaptureError> {
        let host_name = self.host.name();
        let marker = self
            .host
            .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
            .map_err(|e| CaptureError::Host(host_name, e))?
            .map_err(CaptureError::Marker)?;
        let needle = format!("{}.{MARKER_PORT}: UDP", self.service);
        let deadline = Instant::now() + DEADLINE;
        loop {
            marker
                .send_to(b"end of capture", (self.service, MARKER_PORT))
                .map_err(CaptureError::Marker)?;
            if self.read(false)?.contains(&needle) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CaptureError::NoMarker(self.file.clone()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop(true);
        let text = self.read(true)?;
        Ok(text
            .lines()
            .filter(|l| !l.contains(" UDP"))
            .map(|l| format!("{l}\n"))
            .collect())
    }

    /// The file as text; `strict`: fail if tcpdump does (a file still being written may end
    /// in a partial record, which tcpdump reports after printing the rest).
    fn read(&self, strict: bool) -> Result<String, CaptureError> {
        let out = self
            .host
            .command("tcpdump")
            .args(["-nn", "-tt", "-r"])
            .arg(&self.file)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CaptureError::Spawn {
                host: self.host.name(),
                source,
            })?;
        if strict && !out.status.success() {
            return Err(CaptureError::Read {
                file: self.file.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops tcpdump: SIGINT (it flushes and closes the file) when `gently`, else SIGKILL.
    fn stop(&mut self, gently: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).ok();
        match pid {
            Some(pid) if gently => {
                // SAFETY: signalling our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGINT) };
                let deadline = Instant::now() + DEADLINE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            _ => {}
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 213, 7, 200);

    fn a(text: &str) -> SocketAddrV4 {
        text.parse().expect("address")
    }

    /// On `lo` both ends have the service's address: its port tells them apart.
    #[test]
    fn a_service_on_the_clients_own_host_is_told_by_its_port() {
        let text = "\
12:00:00.000001 IP 10.213.7.100.40000 > 10.213.7.100.5900: Flags [S], seq 1, win 64240, length 0
12:00:00.000002 IP 10.213.7.100.5900 > 10.213.7.100.40000: Flags [S.], seq 9, ack 2, win 65160, length 0
12:00:00.000003 IP 10.213.7.100.40000 > 10.213.7.100.5900: Flags [.], ack 1, win 502, length 0
";
        let r = parse_text_at(text, a("10.213.7.100:5900"));
        assert_eq!(r.connections.len(), 1);
        let c = r.connections[&(a("10.213.7.100:40000"), a("10.213.7.100:5900"))];
        assert_eq!(
            (c.segments, c.syn, c.syn_ack, c.fin, c.rst),
            (3, 1, 1, 0, 0)
        );
    }

    #[test]
    fn payload_times_are_the_services_segments_with_data() {
        let text = "\
1700000000.000001 IP 10.213.7.100.40000 > 10.213.7.200.5900: Flags [P.], seq 1:9, ack 1, length 8
1700000000.250000 IP 10.213.7.200.5900 > 10.213.7.100.40000: Flags [P.], seq 1:301, ack 9, length 300
1700000000.300000 IP 10.213.7.200.5900 > 10.213.7.100.40000: Flags [.], ack 9, win 502, length 0
1700000001.500000 IP 10.213.7.200.5900 > 10.213.7.100.40000: Flags [P.], seq 301:302, ack 9, length 1
12:00:02.000000 IP 10.213.7.200.5900 > 10.213.7.100.40000: Flags [P.], seq 302:303, ack 9, length 1
1700000002.000000 IP 10.213.7.200.5901 > 10.213.7.100.40000: Flags [P.], seq 1:2, ack 9, length 1
";
        assert_eq!(
            payload_times(text, a("10.213.7.200:5900")),
            [1_700_000_000.25, 1_700_000_001.5]
        );
    }

    #[test]
    fn counts_flags_per_connection_in_both_directions() {
        let text = "\
12:00:00.000001 IP 10.213.7.100.40000 > 10.213.7.200.5900: Flags [S], seq 1, win 64240, length 0
12:00:00.000002 IP 10.213.7.200.5900 > 10.213.7.100.40000: Flags [S.], seq 9, ack 2, win 65160, length 0
12:00:00.000003 IP 10.213.7.100.40000 > 10.213.7.200.5900: Flags [.], ack 1, win 502, length 0
12:00:00.000004 IP 10.213.7.100.40000 > 10.213.7.200.5900: Flags [P.], seq 1:9, ack 1, length 8
12:00:01.000000 IP 10.213.7.100.40002 > 10.213.7.200.5900: Flags [S], seq 1, win 64240, length 0
12:00:01.000001 IP 10.213.7.200.5900 > 10.213.7.100.40002: Flags [R.], seq 0, ack 2, length 0
12:00:02.000000 IP 10.213.7.100.40000 > 10.213.7.200.5900: Flags [F.], seq 9, ack 1, length 0
12:00:02.000001 IP 10.213.7.10.5555 > 10.213.7.11.6666: Flags [S], seq 1, length 0
";
        let r = parse_text(text, SERVICE);
        assert_eq!(r.connections.len(), 2);
        let first = r.connections[&(a("10.213.7.100:40000"), a("10.213.7.200:5900"))];
        assert_eq!(
            first,
            ConnectionFlags {
                segments: 5,
                syn: 1,
                syn_ack: 1,
                fin: 1,
                rst: 0
            }
        );
        let second = r.connections[&(a("10.213.7.100:40002"), a("10.213.7.200:5900"))];
        assert_eq!((second.syn, second.syn_ack, second.rst), (1, 0, 1));
        assert_eq!(r.other_segments, 1);
        assert_eq!(r.syns_after_first(), 1);
        let t = r.total();
        assert_eq!((t.segments, t.fin, t.rst), (7, 1, 1));
        assert_eq!(
            r.to_string(),
            "2 connection(s), 7 segments; SYNs after the first: 1, FINs: 1, RSTs: 1"
        );
    }

    #[test]
    fn ignores_lines_that_are_not_tcp_segments() {
        let text = "\
reading from file x.pcap, link-type EN10MB (Ethernet)
12:00:00.000001 ARP, Request who-has 10.213.7.200 tell 10.213.7.100, length 28
12:00:00.000002 IP 10.213.7.100.41000 > 10.213.7.200.9: UDP, length 14
12:00:00.000003 IP 10.213.7.100.x > 10.213.7.200.5900: Flags [S], length 0
12:00:00.000004 IP 10.213.7.100.41000 > 10.213.7.200.5900: Flags [S
IP  > : Flags []
";
        let r = parse_text(text, SERVICE);
        assert!(r.connections.is_empty(), "{r:?}");
        assert_eq!(r.syns_after_first(), 0);
    }

    #[test]
    fn endpoints_parse_only_in_dotted_port_form() {
        assert_eq!(endpoint("10.0.0.1.80"), Some(a("10.0.0.1:80")));
        assert_eq!(endpoint("10.0.0.1"), None);
        assert_eq!(endpoint("10.0.0.1.99999"), None);
        assert_eq!(endpoint(""), None);
    }
}
