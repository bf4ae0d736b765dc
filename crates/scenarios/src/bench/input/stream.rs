//! The viewer's side: a steady stream of RFB input events, typing with Shift as real typing
//! makes it and clicking, written one message at a time at their scheduled instants by a
//! thread of its own (tokio's timer has millisecond grain; 1000 events/s needs better).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rfb::{ClientHandshake, ClientMessage};

use crate::typist::plain_client_config;

/// X11 keysym of the left Shift key.
pub const SHIFT: u32 = 0xffe1;

/// One viewer input event of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    /// A key press or release, by keysym.
    Key {
        /// Press or release.
        down: bool,
        /// X11 keysym.
        keysym: u32,
    },
    /// The left button, pressed or released where the pointer rests.
    Click {
        /// Press or release.
        down: bool,
    },
}

/// Events per repetition of [`stream`]'s pattern.
pub const PATTERN_LEN: usize = 32;

/// `n` events (rounded down to whole repetitions, so every key and button ends up): five
/// times "Shift down, `A` down, `A` up, Shift up, `b` down, `b` up", then a click.
pub fn stream(n: usize) -> Vec<Stroke> {
    let key = |down, keysym| Stroke::Key { down, keysym };
    let unit = [
        key(true, SHIFT),
        key(true, u32::from(b'A')),
        key(false, u32::from(b'A')),
        key(false, SHIFT),
        key(true, u32::from(b'b')),
        key(false, u32::from(b'b')),
    ];
    let mut pattern: Vec<Stroke> = unit.iter().copied().cycle().take(30).collect();
    pattern.extend([Stroke::Click { down: true }, Stroke::Click { down: false }]);
    pattern
        .iter()
        .copied()
        .cycle()
        .take(n / PATTERN_LEN * PATTERN_LEN)
        .collect()
}

/// Connects to `addr` as a plain RFB 3.8 viewer (security None, Nagle off), then writes
/// `strokes`, the `i`-th at `start + i * period`, each in a write of its own; returns each
/// one's time of sending (after its write returned).
pub fn send(
    addr: SocketAddr,
    strokes: &[Stroke],
    start: Instant,
    period: Duration,
) -> std::io::Result<Vec<Instant>> {
    let mut socket = TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    handshake(&mut socket)?;
    let mut sent = Vec::with_capacity(strokes.len());
    let mut bytes = Vec::with_capacity(8);
    for (i, stroke) in strokes.iter().enumerate() {
        let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        wait_until(due);
        bytes.clear();
        match *stroke {
            Stroke::Key { down, keysym } => ClientMessage::KeyEvent { down, keysym },
            Stroke::Click { down } => ClientMessage::PointerEvent {
                buttons: u8::from(down),
                x: 8,
                y: 8,
            },
        }
        .encode(&mut bytes);
        socket.write_all(&bytes)?;
        sent.push(Instant::now());
    }
    Ok(sent)
}

/// Sleeps to shortly before `due`, then spins to it.
fn wait_until(due: Instant) {
    const SPIN: Duration = Duration::from_micros(300);
    let now = Instant::now();
    if due > now + SPIN {
        std::thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

/// The RFB handshake, driven over the blocking socket.
fn handshake(socket: &mut TcpStream) -> std::io::Result<()> {
    let mut hs = ClientHandshake::new(plain_client_config());
    let mut buf = [0u8; 4096];
    while !hs.is_done() {
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        hs.feed(buf.get(..n).unwrap_or_default())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        while let Some(out) = hs.poll_output() {
            socket.write_all(&out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_releases_everything_it_presses() {
        let s = stream(100);
        assert_eq!(s.len(), 96);
        let downs = s
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    Stroke::Key { down: true, .. } | Stroke::Click { down: true }
                )
            })
            .count();
        assert_eq!(downs * 2, s.len());
        assert_eq!(
            s.iter()
                .filter(|k| matches!(k, Stroke::Click { .. }))
                .count(),
            6
        );
    }
}
