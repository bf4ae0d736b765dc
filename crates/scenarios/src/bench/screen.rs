//! Screen path: the same guest update seen by a client straight on QEMU's VNC and by one
//! through the console, identified by content; and the subscribed viewers of the load phase.
//!
//! ```text
//!  guest animates the top right corner (small update) │ F1 repaints the screen (full update)
//!        │                                            │
//!  QEMU ─┬─ VNC (TCP display) ─────────────────────── direct client ── Seen{at, corner, fill}
//!        └─ VNC (unix socket) ── console ── TCP ───── console client ─ Seen{at, corner, fill}
//!  matched by content: corner hash (small), fill colour (full); difference = console - direct
//! ```

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rfb::framebuffer::Framebuffer;
use rfb::{ClientMessage, Encoding, PixelFormat, ServerMessage};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vnc::client::{ClientReader, ClientWriter, Setup};

use super::BenchError;
use crate::typist::plain_client_config;

/// Width of the animated corner looked at: the guest's 8 text cells (72 pixels) or 64 pixels in
/// graphics mode; 72 covers both.
const CORNER_W: u16 = 72;
/// Height of the animated corner: one text row, or 16 pixels in graphics mode.
const CORNER_H: u16 = 16;
/// Points sampled to see a full-screen repaint: inside text cells (clear of the cursor's
/// underline) and clear of the animated corner.
const FILL_SAMPLES: [(u16, u16); 5] = [(4, 20), (364, 196), (600, 388), (4, 388), (600, 20)];
/// The F1 key's keysym: the guest repaints its whole screen on F1.
const KEYSYM_F1: u32 = 0xffbe;

/// Raw only (so encoding costs the same on both paths), in dmore's pixel format.
pub fn raw_setup() -> Setup {
    Setup {
        pixel_format: Some(PixelFormat::RGBX32_LE),
        encodings: vec![Encoding::Raw],
    }
}

type Halves = (
    rfb::ClientDone,
    ClientReader<TcpStream>,
    ClientWriter<TcpStream>,
);

/// A plain RFB 3.8 client over TCP with Nagle off.
pub async fn connect(addr: SocketAddr, setup: &Setup) -> Result<Halves, BenchError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| BenchError::Connect { addr, source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| BenchError::Connect { addr, source })?;
    vnc::client::connect(stream, plain_client_config(), setup)
        .await
        .map_err(BenchError::Vnc)
}

/// What a screen client saw in one update.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the whole update had been read and applied.
    at: Instant,
    /// Hash of the animated corner.
    corner: u64,
    /// The colour every fill sample shows, if they all agree.
    fill: Option<u32>,
}

fn corner_hash(fb: &Framebuffer) -> u64 {
    let mut h = DefaultHasher::new();
    let (w, h_px) = (fb.width(), fb.height());
    let x0 = w.saturating_sub(CORNER_W);
    for y in 0..CORNER_H.min(h_px) {
        for x in x0..w {
            h.write_u32(pixel(fb, x, y).unwrap_or(0));
        }
    }
    h.finish()
}

fn pixel(fb: &Framebuffer, x: u16, y: u16) -> Option<u32> {
    let i = usize::from(y) * usize::from(fb.width()) + usize::from(x);
    fb.pixels().get(i).copied()
}

fn fill_colour(fb: &Framebuffer) -> Option<u32> {
    let mut colours = FILL_SAMPLES.iter().map(|&(x, y)| pixel(fb, x, y));
    let first = colours.next()??;
    colours.all(|c| c == Some(first)).then_some(first)
}

/// One subscribed screen client: asks for the next incremental update as soon as one arrives
/// (so a request is always outstanding) and reports each update that changed the corner or
/// the fill.
fn spawn_watcher(
    (done, mut reader, mut writer): Halves,
    tx: mpsc::UnboundedSender<Seen>,
) -> JoinHandle<Result<(), BenchError>> {
    tokio::spawn(async move {
        let (w, h) = (done.server_init.width, done.server_init.height);
        writer.request_update(false, w, h).await?;
        let mut last: Option<(u64, Option<u32>)> = None;
        loop {
            if let ServerMessage::FramebufferUpdate(_) = reader.read_message().await? {
                let at = Instant::now();
                let fb = reader.framebuffer();
                writer.request_update(true, fb.width(), fb.height()).await?;
                let now = (corner_hash(fb), fill_colour(fb));
                if last != Some(now) {
                    last = Some(now);
                    let seen = Seen {
                        at,
                        corner: now.0,
                        fill: now.1,
                    };
                    if tx.send(seen).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    })
}

/// Differences (console arrival minus direct arrival) of matched updates, in ns.
#[derive(Debug, Clone, Default)]
pub struct FrameResults {
    /// One per matched update.
    pub diffs_ns: Vec<i64>,
    /// Updates one client saw that the other never showed (coalesced or skipped).
    pub unmatched: usize,
}

/// Both screen clients, subscribed; dropping it stops them.
pub struct Watchers {
    direct: mpsc::UnboundedReceiver<Seen>,
    console: mpsc::UnboundedReceiver<Seen>,
    tasks: [JoinHandle<Result<(), BenchError>>; 2],
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Which client an update came from.
enum From {
    Direct(Seen),
    Console(Seen),
}

impl Watchers {
    /// Connects one Raw client straight to QEMU's VNC and one through the console.
    pub async fn start(direct: SocketAddr, console: SocketAddr) -> Result<Watchers, BenchError> {
        let (dtx, drx) = mpsc::unbounded_channel();
        let (ctx, crx) = mpsc::unbounded_channel();
        let d = spawn_watcher(connect(direct, &raw_setup()).await?, dtx);
        let c = spawn_watcher(connect(console, &raw_setup()).await?, ctx);
        Ok(Watchers {
            direct: drx,
            console: crx,
            tasks: [d, c],
        })
    }

    async fn next(&mut self, deadline: Instant) -> Result<From, BenchError> {
        let got = self.next_inner(deadline).await;
        if let Ok(From::Direct(s) | From::Console(s)) = &got {
            let side = if matches!(got, Ok(From::Direct(_))) {
                "direct"
            } else {
                "console"
            };
            tracing::debug!(side, corner = s.corner, fill = ?s.fill, "screen update");
        }
        got
    }

    async fn next_inner(&mut self, deadline: Instant) -> Result<From, BenchError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, async {
            tokio::select! {
                s = self.direct.recv() => s.map(From::Direct),
                s = self.console.recv() => s.map(From::Console),
            }
        })
        .await
        .map_err(|_| BenchError::Timeout("screen updates"))?;
        match got {
            Some(f) => Ok(f),
            None => Err(self.ended().await),
        }
    }

    /// Why a watcher stopped.
    async fn ended(&mut self) -> BenchError {
        for t in &mut self.tasks {
            if t.is_finished() {
                match t.await {
                    Ok(Err(e)) => return e,
                    Ok(Ok(())) => {}
                    Err(e) => return BenchError::Task(e),
                }
            }
        }
        BenchError::Timeout("a screen client ended")
    }

    /// Small updates: the guest's animated corner, until `frames` updates were seen by both.
    pub async fn small(
        &mut self,
        frames: usize,
        deadline: Instant,
    ) -> Result<FrameResults, BenchError> {
        let mut direct: HashMap<u64, Instant> = HashMap::new();
        let mut console: HashMap<u64, Instant> = HashMap::new();
        let mut out = FrameResults::default();
        // The first update of each is the connection's full screen: not a shared frame.
        while out.diffs_ns.len() < frames {
            match self.next(deadline).await? {
                From::Direct(s) => {
                    if let Some(c) = console.remove(&s.corner) {
                        out.diffs_ns.push(signed_ns(c, s.at));
                    } else {
                        direct.entry(s.corner).or_insert(s.at);
                    }
                }
                From::Console(s) => {
                    if let Some(d) = direct.remove(&s.corner) {
                        out.diffs_ns.push(signed_ns(s.at, d));
                    } else {
                        console.entry(s.corner).or_insert(s.at);
                    }
                }
            }
        }
        // Left over: updates still waiting for their twin now (in flight) are not counted.
        out.unmatched = direct.len().saturating_sub(1) + console.len().saturating_sub(1);
        Ok(out)
    }

    /// Full-screen updates: `frames` times, F1 through `key` (straight to QEMU), then the
    /// repaint's arrival on both clients.
    pub async fn full(
        &mut self,
        key: &mut ClientWriter<TcpStream>,
        frames: usize,
        deadline: Instant,
    ) -> Result<FrameResults, BenchError> {
        let mut out = FrameResults::default();
        let mut fills: [Option<u32>; 2] = [None, None];
        for _ in 0..frames {
            key.send_all(&[
                ClientMessage::KeyEvent {
                    down: true,
                    keysym: KEYSYM_F1,
                },
                ClientMessage::KeyEvent {
                    down: false,
                    keysym: KEYSYM_F1,
                },
            ])
            .await?;
            let mut arrived: [Option<Instant>; 2] = [None, None];
            while arrived.iter().any(Option::is_none) {
                let (i, s) = match self.next(deadline).await? {
                    From::Direct(s) => (0, s),
                    From::Console(s) => (1, s),
                };
                let (Some(slot), Some(prev)) = (arrived.get_mut(i), fills.get_mut(i)) else {
                    continue;
                };
                if s.fill.is_some() && s.fill != *prev && slot.is_none() {
                    *prev = s.fill;
                    *slot = Some(s.at);
                }
            }
            if let [Some(d), Some(c)] = arrived {
                out.diffs_ns.push(signed_ns(c, d));
            }
            if fills[0] != fills[1] {
                out.unmatched += 1;
            }
        }
        Ok(out)
    }
}

fn signed_ns(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(earlier.duration_since(later).as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Subscribed viewers on the console (default encodings: ZRLE, as TigerVNC would), each
/// asking for the next update as soon as one arrives; counts the updates they receive.
#[derive(Default)]
pub struct Viewers {
    tasks: Vec<JoinHandle<Result<(), BenchError>>>,
    updates: Arc<AtomicU64>,
}

impl Drop for Viewers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Viewers {
    /// Connects more viewers until there are `n`, each having received its first update.
    pub async fn grow_to(&mut self, addr: SocketAddr, n: usize) -> Result<(), BenchError> {
        while self.tasks.len() < n {
            let (done, mut reader, mut writer) = connect(addr, &Setup::default()).await?;
            let (w, h) = (done.server_init.width, done.server_init.height);
            writer.request_update(false, w, h).await?;
            loop {
                if let ServerMessage::FramebufferUpdate(_) = reader.read_message().await? {
                    break;
                }
            }
            let updates = Arc::clone(&self.updates);
            self.tasks.push(tokio::spawn(async move {
                loop {
                    let fb = reader.framebuffer();
                    writer.request_update(true, fb.width(), fb.height()).await?;
                    loop {
                        if let ServerMessage::FramebufferUpdate(_) = reader.read_message().await? {
                            updates.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }));
        }
        Ok(())
    }

    /// Updates received by all viewers so far.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Viewers whose task has ended (a decode error or a dropped connection).
    pub fn ended(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }
}

/// How long the load phase lets viewers settle before a window (not a measurement).
pub const SETTLE: Duration = Duration::from_millis(500);
