//! `dmore bench response`: key response the way a person at a viewer sees it, straight into
//! QEMU's own VNC and through a `dmore console`, on one guest in one run (the paper's
//! "keyboard response", +221 µs for its DomR; and its screen update, +9 µs).
//!
//! ```text
//!  QEMU (tiny guest, text mode, echoes keys) ─┬─ TCP display ─────────── direct viewer (Raw)
//!   serial: K n D|U                           └─ unix VNC ── console ─── dmore viewer (Raw)
//!  each key: press+release from one viewer (alternating), then
//!    key → guest: the guest's serial report of the press
//!    key → echo:  the first update on the typing viewer that changes the text area
//!  then the screen path (the same animated-corner update on both viewers: dmore − direct)
//! ```
//!
//! Both viewers watch all the time, so each sees the other's echoes too; only the typing
//! viewer's first change after its key is its echo. Keys go one at a time, each after the
//! previous one's echo and release report, so every key measures the path, not a queue.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rfb::framebuffer::Framebuffer;
use rfb::ServerMessage;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use vnc::client::ClientWriter;

use super::plot::{self, Reference};
use super::{at_most, pct, us, Metric, Run, Summary};
use crate::bench::keys::{press_release, wait_key};
use crate::bench::screen::{connect, raw_setup, Watchers};
use crate::bench::{rig, BenchError, BenchOptions, ConsoleSockets, Scratch};
use crate::typist::keysym_of;

/// The paper's DomR: keyboard response +221 µs.
pub const PAPER_KEY_US: f64 = 221.0;
/// The paper's DomR: screen update +9 µs.
pub const PAPER_SCREEN_US: f64 = 9.0;
/// Issue 13: key response ≤ +20 µs p50.
pub const TARGET_KEY_US: f64 = 20.0;
/// Issue 13: screen update ≤ +9 µs p50.
pub const TARGET_SCREEN_US: f64 = 9.0;

/// Rows of the text area the guest echoes into (below its status row), pixels.
const TEXT_TOP: u16 = 16;
/// Height of a VGA text cell, pixels.
const CELL_H: u16 = 16;
/// A cell's scanlines that hold glyphs and never the cursor (the cursor is an underline).
const GLYPH_ROWS: u16 = 12;
/// Pause after a key's echo before the next key.
const KEY_GAP: Duration = Duration::from_millis(5);
/// Longest wait for an echo (a hang guard, not a measurement).
const ECHO_DEADLINE: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct ResponseOptions {
    /// Keys per path.
    pub keys: usize,
    /// Matched screen updates (the animated corner).
    pub frames: usize,
}

impl ResponseOptions {
    /// 1000 keys per path and 500 screen updates; `quick`: 20 and 20.
    pub fn new(quick: bool) -> ResponseOptions {
        if quick {
            ResponseOptions {
                keys: 20,
                frames: 20,
            }
        } else {
            ResponseOptions {
                keys: 1000,
                frames: 500,
            }
        }
    }
}

/// The raw samples, µs, in the order measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResponseSamples {
    /// Key → guest serial report, straight to QEMU's VNC.
    pub key_guest_qemu_us: Vec<f64>,
    /// Key → guest serial report, through dmore.
    pub key_guest_dmore_us: Vec<f64>,
    /// Key → echo in the typing viewer's framebuffer, straight to QEMU's VNC.
    pub key_echo_qemu_us: Vec<f64>,
    /// Key → echo in the typing viewer's framebuffer, through dmore.
    pub key_echo_dmore_us: Vec<f64>,
    /// The same screen update's arrival through dmore minus its direct arrival.
    pub screen_diff_us: Vec<f64>,
}

/// One viewer that types and watches: its writer (shared with its reader task, which asks
/// for the next update as soon as one arrives), and the times its text area changed.
struct Viewer {
    writer: Arc<Mutex<ClientWriter<TcpStream>>>,
    changes: mpsc::UnboundedReceiver<Instant>,
    task: JoinHandle<Result<(), BenchError>>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Hash of the text area's glyph rows: every text row below the status row, without each
/// cell's bottom scanlines, where QEMU blinks the cursor (every 250 ms) — a blink is not an
/// echo.
fn text_hash(fb: &Framebuffer) -> u64 {
    let mut h = DefaultHasher::new();
    let width = usize::from(fb.width());
    for (y, row) in fb.pixels().chunks(width.max(1)).enumerate() {
        if y >= usize::from(TEXT_TOP) && y % usize::from(CELL_H) < usize::from(GLYPH_ROWS) {
            for p in row {
                h.write_u32(*p);
            }
        }
    }
    h.finish()
}

impl Viewer {
    async fn connect(addr: SocketAddr) -> Result<Viewer, BenchError> {
        let (done, mut reader, mut writer) = connect(addr, &raw_setup()).await?;
        let (w, h) = (done.server_init.width, done.server_init.height);
        writer.request_update(false, w, h).await?;
        // The whole screen first, before any key: an echo folded into it would be no change.
        while !matches!(
            reader.read_message().await?,
            ServerMessage::FramebufferUpdate(_)
        ) {}
        let fb = reader.framebuffer();
        writer.request_update(true, fb.width(), fb.height()).await?;
        let mut last = Some(text_hash(fb));
        let writer = Arc::new(Mutex::new(writer));
        let requests = Arc::clone(&writer);
        let (tx, changes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                if let ServerMessage::FramebufferUpdate(_) = reader.read_message().await? {
                    let at = Instant::now();
                    let fb = reader.framebuffer();
                    requests
                        .lock()
                        .await
                        .request_update(true, fb.width(), fb.height())
                        .await?;
                    let now = text_hash(fb);
                    if last.is_some_and(|l| l != now) && tx.send(at).is_err() {
                        return Ok(());
                    }
                    last = Some(now);
                }
            }
        });
        Ok(Viewer {
            writer,
            changes,
            task,
        })
    }

    /// Forgets the changes seen so far (the other viewer's echoes).
    fn drain(&mut self) {
        while self.changes.try_recv().is_ok() {}
    }

    async fn type_key(&mut self, keysym: u32) -> Result<(), BenchError> {
        press_release(&mut *self.writer.lock().await, keysym).await
    }

    /// The first change of the text area after `sent`.
    async fn echo_after(&mut self, sent: Instant) -> Result<Instant, BenchError> {
        loop {
            match tokio::time::timeout(ECHO_DEADLINE, self.changes.recv()).await {
                Ok(Some(at)) if at >= sent => return Ok(at),
                Ok(Some(at)) => {
                    tracing::debug!(
                        early_us = us(sent.duration_since(at)),
                        "a change before the key"
                    );
                }
                Ok(None) => return Err(BenchError::Timeout("a viewer that stays connected")),
                Err(_) => return Err(BenchError::Timeout("a key's echo on the screen")),
            }
        }
    }
}

/// Measures on one guest with its console (`launch` builds the console's command).
pub async fn measure<L>(
    options: ResponseOptions,
    launch: L,
    progress: &mut impl FnMut(&str),
) -> Result<(ResponseSamples, String), BenchError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let scratch = Scratch::create()?;
    progress("booting the guest (text mode, echoing keys) and its console");
    let bench = BenchOptions::default();
    let (mut rig, machine) = rig(scratch.path(), "r", None, &bench, &launch).await?;
    let mut viewers = [
        Viewer::connect(rig.direct).await?,
        Viewer::connect(rig.console.addr()).await?,
    ];
    let mut samples = ResponseSamples::default();
    progress(&format!(
        "key response: {} keys per path, alternating",
        options.keys
    ));
    for n in 0..options.keys * 2 {
        let keysym = keysym_of(n);
        let code = char::from_u32(keysym)
            .and_then(guest::keymap::scancode)
            .map(u16::from)
            .ok_or(BenchError::NoScancode(keysym))?;
        for v in &mut viewers {
            v.drain();
        }
        let lane = n % 2;
        let Some(viewer) = viewers.get_mut(lane) else {
            continue;
        };
        let sent = Instant::now();
        viewer.type_key(keysym).await?;
        let pressed = wait_key(&mut rig.vm, true, code).await?;
        let echoed = viewer.echo_after(sent).await?;
        wait_key(&mut rig.vm, false, code).await?;
        let guest = us(pressed.saturating_duration_since(sent));
        let echo = us(echoed.saturating_duration_since(sent));
        if lane == 0 {
            samples.key_guest_qemu_us.push(guest);
            samples.key_echo_qemu_us.push(echo);
        } else {
            samples.key_guest_dmore_us.push(guest);
            samples.key_echo_dmore_us.push(echo);
        }
        tokio::time::sleep(KEY_GAP).await;
    }
    drop(viewers);
    progress(&format!(
        "screen path: {} animated-corner updates seen by both",
        options.frames
    ));
    let guard = Duration::from_secs(60)
        + Duration::from_millis(200) * u32::try_from(options.frames).unwrap_or(u32::MAX);
    let mut watchers = Watchers::start(rig.direct, rig.console.addr()).await?;
    let frames = watchers
        .small(options.frames, Instant::now() + guard)
        .await?;
    samples.screen_diff_us = frames.diffs_ns.iter().map(|&ns| ns as f64 / 1e3).collect();
    Ok((samples, machine))
}

/// The figures and plots of `samples`.
pub fn summarise(
    run: Run,
    samples: &ResponseSamples,
    machine: &str,
) -> Result<Summary, super::ResultsError> {
    run.write_samples(samples)?;
    let p50 = |v: &[f64]| pct(v, 50);
    let over = |d: &[f64], q: &[f64], p: usize| Some(pct(d, p)? - pct(q, p)?);
    let s = samples;
    let mut metrics = Vec::new();
    for (what, q, d) in [
        (
            "key → guest serial report",
            &s.key_guest_qemu_us,
            &s.key_guest_dmore_us,
        ),
        (
            "key → echo in the viewer's framebuffer",
            &s.key_echo_qemu_us,
            &s.key_echo_dmore_us,
        ),
    ] {
        for p in [50, 90, 99] {
            let mut m = Metric::new(&format!("{what}, p{p}"), "µs", pct(q, p), pct(d, p));
            if p == 50 {
                m = m.paper("+221 µs");
            }
            metrics.push(m);
        }
        let overhead = over(d, q, 50);
        metrics.push(
            Metric::new(&format!("{what}: dmore − QEMU, p50"), "µs", None, overhead)
                .paper("+221 µs")
                .target("≤ +20 µs", at_most(overhead, TARGET_KEY_US)),
        );
    }
    let screen = p50(&s.screen_diff_us);
    metrics.push(
        Metric::new(
            "screen update: same update via dmore − direct, p50",
            "µs",
            None,
            screen,
        )
        .paper("+9 µs")
        .target("≤ +9 µs", at_most(screen, TARGET_SCREEN_US)),
    );
    let mut plots = Vec::new();
    for (suffix, title, q, d) in [
        (
            "guest.png",
            "Key → guest serial report (CDF)",
            &s.key_guest_qemu_us,
            &s.key_guest_dmore_us,
        ),
        (
            "echo.png",
            "Key → echo visible in the viewer's framebuffer (CDF)",
            &s.key_echo_qemu_us,
            &s.key_echo_dmore_us,
        ),
    ] {
        let references: Vec<Reference> = p50(q)
            .map(|q50| Reference {
                label: "paper's DomR: plain p50 + 221 µs".to_owned(),
                at: q50 + PAPER_KEY_US,
            })
            .into_iter()
            .collect();
        plot::cdf(
            &run.path(suffix),
            title,
            "latency (µs, log scale)",
            &[
                ("plain QEMU VNC".to_owned(), q.clone()),
                ("dmore console".to_owned(), d.clone()),
            ],
            &references,
        )?;
        plots.push(run.file_name(suffix));
    }
    let notes = vec![
        "Keys alternate between the two paths, one at a time, each after the previous \
         one's echo and release report; both QEMU displays run with key-delay-ms=0."
            .to_owned(),
        "key → echo includes QEMU's display refresh timer (30 ms when the screen changes), \
         so its spread is QEMU's; the difference between the paths is dmore's."
            .to_owned(),
        "screen update: the same animated-corner update as seen by a Raw viewer on each \
         path, matched by content (as `dmore bench console`)."
            .to_owned(),
    ];
    run.finish(
        "key response and screen update, plain QEMU VNC vs dmore console",
        machine,
        metrics,
        plots,
        notes,
    )
}

/// Measures, writes the samples, figures and plots; `dir` is the results folder.
pub async fn run<L>(
    dir: &Path,
    command: String,
    quick: bool,
    launch: L,
    mut progress: impl FnMut(&str),
) -> Result<Summary, super::SuiteError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let run = Run::start(dir, "response", command, quick)?;
    let (samples, machine) = measure(ResponseOptions::new(quick), launch, &mut progress).await?;
    Ok(summarise(run, &samples, &machine)?)
}
