//! The steady viewer: a scripted VNC viewer that keeps one connection for its whole life and
//! keeps the console busy the way a person at the keyboard does, only faster. It types a key
//! every 10 ms (press and release, `a` to `z` round and round), moves the mouse and clicks
//! every 100 ms, keeps an incremental update request outstanding, and records when each
//! update that changed a pixel arrived.
//!
//! ```text
//!   connect ──> Running ── every key_interval: KeyEvent down+up ─────────┐ (logged: at, code)
//!                  │  └─── every click_interval: move, left down, left up ┤ (logged: at)
//!                  │  └─── FramebufferUpdate: pixels changed? ── log at ──┘  request next
//!                  │ read or write fails
//!                  v
//!               Dropped (logged: at, why) ── never reconnects: a dropped connection is a result
//! ```
//!
//! What the guest received is counted from its serial reports ([`tally`]), not from the
//! console's word: keys in order (lost, duplicated, reordered), clicks by number.

pub mod tally;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rfb::framebuffer::Framebuffer;
use rfb::{ClientMessage, RectPayload, ServerMessage};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vnc::client::{ClientReader, ClientWriter, Setup};

use crate::typist::{keysym_of, plain_client_config};

pub use tally::{longest_gap, tally, Tally};

/// How the steady viewer drives its console.
#[derive(Debug, Clone, Copy)]
pub struct SteadyConfig {
    /// Time between two keys (each a press and a release).
    pub key_interval: Duration,
    /// Time between two clicks (each a left press and a release).
    pub click_interval: Duration,
    /// Move the pointer to a new place before each click (else every click lands at one
    /// place: only buttons, no motion, reach the console after the first).
    pub move_mouse: bool,
}

impl Default for SteadyConfig {
    /// A key every 10 ms, a click every 100 ms, each at a new place.
    fn default() -> Self {
        SteadyConfig {
            key_interval: Duration::from_millis(10),
            click_interval: Duration::from_millis(100),
            move_mouse: true,
        }
    }
}

/// One key the viewer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentKey {
    /// When its press and release were written.
    pub at: Instant,
    /// The set-1 make code the guest reports for it.
    pub code: u16,
}

/// Everything the viewer did and saw.
#[derive(Debug, Clone, Default)]
pub struct SteadyLog {
    /// Keys sent, in order.
    pub keys: Vec<SentKey>,
    /// Clicks sent, in order.
    pub clicks: Vec<Instant>,
    /// Arrival of every update that changed at least one pixel.
    pub updates: Vec<Instant>,
    /// The connection's local address (the viewer's end of the 4-tuple).
    pub local: Option<SocketAddr>,
    /// The console's address.
    pub peer: Option<SocketAddr>,
    /// When the handshake completed.
    pub connected_at: Option<Instant>,
    /// When and why the connection failed, if it did.
    pub dropped: Option<(Instant, String)>,
}

impl SteadyLog {
    /// Whether the one connection is still up.
    pub fn connection_kept(&self) -> bool {
        self.dropped.is_none()
    }

    /// The codes of the keys sent, in order.
    pub fn key_codes(&self) -> Vec<u16> {
        self.keys.iter().map(|k| k.code).collect()
    }

    /// Keys sent at or after `from` and before `to`.
    pub fn keys_between(&self, from: Instant, to: Instant) -> usize {
        self.keys
            .iter()
            .filter(|k| k.at >= from && k.at < to)
            .count()
    }

    /// Clicks sent at or after `from` and before `to`.
    pub fn clicks_between(&self, from: Instant, to: Instant) -> usize {
        self.clicks.iter().filter(|&&t| t >= from && t < to).count()
    }

    /// The longest time without a screen change within `[from, to]`.
    pub fn gap(&self, from: Instant, to: Instant) -> Duration {
        longest_gap(&self.updates, from, to)
    }
}

/// Why the steady viewer could not start.
#[derive(Debug, thiserror::Error)]
pub enum SteadyError {
    /// The TCP connection failed.
    #[error("connecting to the console at {addr}")]
    Connect {
        /// The console's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The RFB handshake failed.
    #[error("the RFB handshake with {addr} failed")]
    Handshake {
        /// The console's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: vnc::Error,
    },
}

/// A running steady viewer; stopped (and its connection closed) on [`stop`](Self::stop) or
/// drop.
#[derive(Debug)]
pub struct SteadyViewer {
    log: Arc<Mutex<SteadyLog>>,
    typing: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Framebuffer>>,
}

impl Drop for SteadyViewer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl SteadyViewer {
    /// Connects from inside `host` (the client host's network namespace) to `addr` and starts.
    pub async fn connect_from(
        host: &testbed::hosts::Host,
        addr: SocketAddr,
        config: SteadyConfig,
    ) -> Result<SteadyViewer, SteadyError> {
        let stream = crate::typist::connect_from(host, addr)
            .await
            .map_err(|source| SteadyError::Connect { addr, source })?;
        SteadyViewer::start(stream, config).await
    }

    /// Runs the handshake on `stream` and starts typing, clicking and watching the screen.
    pub async fn start(
        stream: TcpStream,
        config: SteadyConfig,
    ) -> Result<SteadyViewer, SteadyError> {
        let peer = stream.peer_addr().ok();
        let addr = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let connect = |source| SteadyError::Connect { addr, source };
        stream.set_nodelay(true).map_err(connect)?;
        let local = stream.local_addr().map_err(connect)?;
        let (_, reader, writer) =
            vnc::client::connect(stream, plain_client_config(), &Setup::default())
                .await
                .map_err(|source| SteadyError::Handshake { addr, source })?;
        let log = Arc::new(Mutex::new(SteadyLog {
            local: Some(local),
            peer,
            connected_at: Some(Instant::now()),
            ..SteadyLog::default()
        }));
        let typing = Arc::new(AtomicBool::new(true));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(drive(
            reader,
            writer,
            config,
            Arc::clone(&log),
            Arc::clone(&typing),
            stop_rx,
        ));
        Ok(SteadyViewer {
            log,
            typing,
            stop,
            task: Some(task),
        })
    }

    /// A copy of the log so far.
    pub fn snapshot(&self) -> SteadyLog {
        lock(&self.log).clone()
    }

    /// Pauses (`false`) or resumes typing and clicking; the screen is still watched. Pause
    /// before counting what the guest received, so nothing is in flight.
    pub fn set_typing(&self, on: bool) {
        self.typing.store(on, Ordering::SeqCst);
    }

    /// Stops the viewer, closes its connection and returns the log.
    pub async fn stop(self) -> SteadyLog {
        self.stop_with_screen().await.0
    }

    /// Stops the viewer, closes its connection and returns the log and the screen as the
    /// viewer last had it (`None` if its task failed).
    pub async fn stop_with_screen(mut self) -> (SteadyLog, Option<Framebuffer>) {
        let _ = self.stop.send(true);
        let screen = match self.task.take() {
            Some(task) => task.await.ok(),
            None => None,
        };
        (lock(&self.log).clone(), screen)
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn lock(log: &Mutex<SteadyLog>) -> std::sync::MutexGuard<'_, SteadyLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// The set-1 make code of the `n`-th key ([`keysym_of`]: `a` to `z`).
fn code_of(n: usize) -> u16 {
    let c = char::from_u32(keysym_of(n)).unwrap_or('a');
    guest::keymap::scancode(c).map_or(0, u16::from)
}

/// Where the `n`-th click goes: spread over the screen, away from its edges.
fn click_position(n: usize, width: u16, height: u16) -> (u16, u16) {
    let spread = |n: usize, size: u16, step: usize| {
        let usable = usize::from(size.saturating_sub(80)).max(1);
        u16::try_from(40 + (n * step) % usable).unwrap_or(40)
    };
    (spread(n, width, 37), spread(n, height, 23))
}

async fn drive(
    mut reader: ClientReader<TcpStream>,
    mut writer: ClientWriter<TcpStream>,
    config: SteadyConfig,
    log: Arc<Mutex<SteadyLog>>,
    typing: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> Framebuffer {
    let dropped = |why: String| {
        let mut log = lock(&log);
        log.dropped.get_or_insert((Instant::now(), why));
    };
    let mut keys = tokio::time::interval(config.key_interval);
    keys.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clicks = tokio::time::interval(config.click_interval);
    clicks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut n_keys, mut n_clicks) = (0usize, 0usize);
    let mut mirror: Vec<u32> = Vec::new();
    let (w, h) = (reader.framebuffer().width(), reader.framebuffer().height());
    if let Err(e) = writer.request_update(false, w, h).await {
        dropped(format!("requesting the first update: {e}"));
        return reader.framebuffer().clone();
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = reader.read_message() => match message {
                Ok(ServerMessage::FramebufferUpdate(rects)) => {
                    let fb = reader.framebuffer();
                    let mut changed = false;
                    for r in &rects {
                        let area = match &r.payload {
                            RectPayload::Raw(_)
                            | RectPayload::CopyRect { .. }
                            | RectPayload::Zrle(_) => (r.x, r.y, r.width, r.height),
                            // A resize: the mirror takes the new size.
                            RectPayload::DesktopSize | RectPayload::ExtendedDesktopSize(_) => {
                                (0, 0, 0, 0)
                            }
                            _ => continue,
                        };
                        changed |= tally::area_changed(fb, &mut mirror, area);
                    }
                    if changed {
                        lock(&log).updates.push(Instant::now());
                    }
                    let (w, h) = (fb.width(), fb.height());
                    if let Err(e) = writer.request_update(true, w, h).await {
                        dropped(format!("requesting an update: {e}"));
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    dropped(format!("reading: {}", error_chain(&e)));
                    break;
                }
            },
            _ = keys.tick() => {
                if !typing.load(Ordering::SeqCst) {
                    continue;
                }
                let keysym = keysym_of(n_keys);
                let sent = writer
                    .send_all(&[
                        ClientMessage::KeyEvent { down: true, keysym },
                        ClientMessage::KeyEvent { down: false, keysym },
                    ])
                    .await;
                if let Err(e) = sent {
                    dropped(format!("sending a key: {e}"));
                    break;
                }
                let code = code_of(n_keys);
                n_keys += 1;
                lock(&log).keys.push(SentKey { at: Instant::now(), code });
            }
            _ = clicks.tick() => {
                if !typing.load(Ordering::SeqCst) {
                    continue;
                }
                let fb = reader.framebuffer();
                let place = if config.move_mouse { n_clicks } else { 0 };
                let (x, y) = click_position(place, fb.width(), fb.height());
                let sent = writer
                    .send_all(&[
                        ClientMessage::PointerEvent { buttons: 0, x, y },
                        ClientMessage::PointerEvent { buttons: 1, x, y },
                        ClientMessage::PointerEvent { buttons: 0, x, y },
                    ])
                    .await;
                if let Err(e) = sent {
                    dropped(format!("sending a click: {e}"));
                    break;
                }
                n_clicks += 1;
                lock(&log).clicks.push(Instant::now());
            }
        }
    }
    let _ = writer.shutdown().await;
    reader.framebuffer().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_letters_with_their_set1_codes() {
        assert_eq!(code_of(0), 0x1e, "a");
        assert_eq!(code_of(1), 0x30, "b");
        assert_eq!(code_of(26), 0x1e, "a again");
    }

    #[test]
    fn clicks_stay_inside_the_screen() {
        for n in 0..200 {
            let (x, y) = click_position(n, 720, 400);
            assert!(
                (40..680).contains(&x) && (40..360).contains(&y),
                "{n}: {x},{y}"
            );
        }
        let (x, y) = click_position(3, 10, 10);
        assert_eq!((x, y), (40, 40), "a tiny screen still gets a position");
    }

    #[test]
    fn log_windows_count_what_was_sent_inside() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let log = SteadyLog {
            keys: (0..10)
                .map(|i| SentKey {
                    at: at(i * 10),
                    code: 0x1e,
                })
                .collect(),
            clicks: vec![at(0), at(100)],
            updates: vec![at(5), at(50)],
            ..SteadyLog::default()
        };
        assert_eq!(log.keys_between(at(20), at(50)), 3);
        assert_eq!(log.clicks_between(at(0), at(100)), 1);
        assert_eq!(log.gap(at(0), at(100)), Duration::from_millis(50));
        assert!(log.connection_kept());
    }
}
