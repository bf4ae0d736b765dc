//! A migration announced from the destination host's hook to the console serving the VM,
//! before libvirt has QEMU migrate (docs/libvirt.md, "Following a libvirt migration").
//!
//! Under libvirt the source console hears of a migration first from QEMU's `MIGRATION`
//! `setup`, and a small VM's switchover `STOP` can follow 20 ms later: a console slowed by a
//! loaded host may then still have fast-lane keys unconfirmed, which the `STOP` leaves
//! uncertain. libvirt runs the destination's `started begin` hook (its QEMU launched, waiting
//! for the incoming migration) before the source QEMU migrates, and waits for the hook, so
//! the hook tells the source console then, over the consoles' own authenticated
//! protocol (version 2, [`Message::Announce`]), and waits until it answers that its fast lane
//! is closed and confirmed ([`Message::Announced`]). The hook does not know the source host:
//! it tries the domain's `peers` at once, and only the console serving this VM (the VM id and
//! the pre-shared key are in the Hellos' HMAC) can answer.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use migrate::protocol::{Codec, Config, Message, Role, NONCE_LEN, VERSION_2};

/// How long the hook waits for the serving console's answer: libvirt waits on the hook.
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(3);
/// Longest a TCP connect to one peer may take (a host that is down answers nothing).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The console that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// Its address (one of the peers).
    pub console: SocketAddr,
    /// From the first connect to its answer.
    pub took: Duration,
}

/// Tells the console serving `vm_id` at one of `peers` that a migration is coming, and waits
/// up to `wait` for its answer. The error lists what each peer did (for libvirt's log).
pub fn announce(
    peers: &[SocketAddr],
    psk: &[u8],
    vm_id: &str,
    wait: Duration,
) -> Result<Announced, Vec<(SocketAddr, String)>> {
    let start = Instant::now();
    let deadline = start + wait;
    let (tx, rx) = mpsc::channel();
    for &peer in peers {
        let (tx, psk, vm_id) = (tx.clone(), psk.to_vec(), vm_id.to_owned());
        // Detached: a thread still connecting when the answer came ends at its own deadline.
        std::thread::spawn(move || {
            let _ = tx.send((peer, announce_to(peer, &psk, &vm_id, deadline)));
        });
    }
    drop(tx);
    let mut failed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((console, Ok(()))) => {
                return Ok(Announced {
                    console,
                    took: start.elapsed(),
                })
            }
            Ok((peer, Err(why))) => failed.push((peer, why)),
            Err(_) => {
                for &peer in peers {
                    if !failed.iter().any(|(p, _)| *p == peer) {
                        failed.push((peer, format!("no answer within {wait:?}")));
                    }
                }
                return Err(failed);
            }
        }
    }
}

/// One peer: Hellos, `Announce`, then its `Announced`, all before `deadline`.
fn announce_to(peer: SocketAddr, psk: &[u8], vm_id: &str, deadline: Instant) -> Result<(), String> {
    let left = || {
        Some(deadline.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "no answer in time".to_owned())
    };
    let mut stream = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT.min(left()?))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let nonce: [u8; NONCE_LEN] = rand::random();
    let protocol = |e: migrate::protocol::ProtocolError| e.to_string();
    // The side that connects takes the codec's source role.
    let mut codec = Codec::new(Config::new(Role::Source, psk, vm_id), nonce).map_err(protocol)?;
    let io = |e: std::io::Error| e.to_string();
    stream
        .write_all(&codec.start().map_err(protocol)?)
        .map_err(io)?;
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(io)?;
        let n = stream.read(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "no answer in time".to_owned()
            }
            _ => e.to_string(),
        })?;
        if n == 0 {
            return Err("closed (not this VM's console, or another key)".to_owned());
        }
        codec.feed(buf.get(..n).unwrap_or_default());
        while let Some(msg) = codec.poll_message().map_err(protocol)? {
            match msg {
                Message::Hello(_) if codec.version() < Some(VERSION_2) => {
                    return Err(
                        "this VM's console speaks protocol version 1 only (an older dmore): it \
                         learns of the migration from QEMU"
                            .to_owned(),
                    )
                }
                Message::Hello(_) => stream
                    .write_all(&codec.encode(&Message::Announce).map_err(protocol)?)
                    .map_err(io)?,
                Message::Announced => return Ok(()),
                // A console that arrived by a migration greets every connection to its port
                // with `TakenOver`, for a source console that lost that answer; for the hook
                // it means nothing, and its `Announced` follows.
                Message::TakenOver { .. } => {}
                other => return Err(format!("answered {}", other.name())),
            }
        }
    }
}
