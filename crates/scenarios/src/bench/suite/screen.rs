//! `dmore bench screen` (issue 18): bytes on the wire and encode time per frame for one screen
//! session, per encoding, QEMU's own VNC beside dmore with the same encoding list, in one run;
//! and the frames per second of a continuously changing region seen by a direct and a dmore
//! viewer at once.
//!
//! ```text
//!  QEMU (tiny guest, text mode: animated corner, scrolling text typed at 100 keys/s) ─┬─ TCP
//!                                                                                     └─ console
//!  per encoding (Raw, Hextile, Zlib, ZRLE, Tight, Tight + JPEG q6):
//!    window 1: a direct viewer and a dmore viewer, both subscribed (an update request always
//!              outstanding), bytes they read, updates, the console's CPU, QEMU's CPU
//!    window 2: the dmore viewer alone: QEMU's CPU without the direct viewer
//!    QEMU's extra CPU for serving its viewer = window 1 − window 2
//! ```
//!
//! The console runs with `--lossy` (it sends JPEG only to a viewer that asks with a quality
//! level); QEMU's own display runs as configured by the testbed.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rfb::{Encoding, PixelFormat, ServerMessage};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use vnc::client::Setup;

use super::plot;
use super::{at_most, Metric, Run, SuiteError, Summary};
use crate::bench::keys::Typist;
use crate::bench::process::cpu_time;
use crate::bench::{rig, BenchError, BenchOptions, ConsoleSockets, Scratch};
use crate::typist::{keysym_of, plain_client_config};

/// Issue 13: ≤ 8 MiB RSS per console with one viewer.
pub const TARGET_RSS_MIB: f64 = 8.0;
/// The Enter key's keysym.
const KEYSYM_RETURN: u32 = 0xff0d;
/// Characters per typed line before Enter (the screen scrolls once it is full).
const LINE: usize = 20;
/// Time between two typed keys.
const KEY_INTERVAL: Duration = Duration::from_millis(10);

/// The encoding lists compared, by name: each the encoding, then the pseudo-encodings a
/// viewer announces with it.
pub fn encodings() -> Vec<(&'static str, Vec<Encoding>)> {
    vec![
        ("Raw", vec![Encoding::Raw]),
        ("Hextile", vec![Encoding::Hextile, Encoding::Raw]),
        ("Zlib", vec![Encoding::Zlib, Encoding::Raw]),
        ("ZRLE", vec![Encoding::Zrle, Encoding::Raw]),
        (
            "Tight lossless",
            vec![Encoding::Tight, Encoding::CompressLevel(6), Encoding::Raw],
        ),
        (
            "Tight + JPEG q6",
            vec![
                Encoding::Tight,
                Encoding::CompressLevel(6),
                Encoding::QualityLevel(6),
                Encoding::Raw,
            ],
        ),
    ]
}

/// A TCP stream that counts the bytes read from it.
struct Counted {
    inner: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len().saturating_sub(before);
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A viewer subscribed to every update, counting bytes and updates.
struct Subscribed {
    bytes: Arc<AtomicU64>,
    updates: Arc<AtomicU64>,
    task: JoinHandle<Result<(), BenchError>>,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscribed {
    async fn connect(addr: SocketAddr, encodings: &[Encoding]) -> Result<Subscribed, BenchError> {
        let inner = TcpStream::connect(addr)
            .await
            .map_err(|source| BenchError::Connect { addr, source })?;
        inner
            .set_nodelay(true)
            .map_err(|source| BenchError::Connect { addr, source })?;
        let bytes = Arc::new(AtomicU64::new(0));
        let stream = Counted {
            inner,
            read: Arc::clone(&bytes),
        };
        let setup = Setup {
            pixel_format: Some(PixelFormat::RGBX32_LE),
            encodings: encodings.to_vec(),
        };
        let (done, mut reader, mut writer) =
            vnc::client::connect(stream, plain_client_config(), &setup).await?;
        let (w, h) = (done.server_init.width, done.server_init.height);
        writer.request_update(false, w, h).await?;
        let updates = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&updates);
        let task = tokio::spawn(async move {
            loop {
                if let ServerMessage::FramebufferUpdate(_) = reader.read_message().await? {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let fb = reader.framebuffer();
                    writer.request_update(true, fb.width(), fb.height()).await?;
                }
            }
        });
        Ok(Subscribed {
            bytes,
            updates,
            task,
        })
    }

    fn counts(&self) -> Result<(u64, u64), BenchError> {
        if self.task.is_finished() {
            return Err(BenchError::Timeout("a screen viewer that stays connected"));
        }
        Ok((
            self.bytes.load(Ordering::Relaxed),
            self.updates.load(Ordering::Relaxed),
        ))
    }
}

/// One encoding's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EncodingSample {
    /// The encoding list's name.
    pub encoding: String,
    /// Window length, s.
    pub seconds: f64,
    /// Bytes the direct viewer read in the window.
    pub qemu_bytes: u64,
    /// Bytes the dmore viewer read in the window.
    pub dmore_bytes: u64,
    /// Updates the direct viewer received.
    pub qemu_frames: u64,
    /// Updates the dmore viewer received.
    pub dmore_frames: u64,
    /// The console process's CPU time in the window, ms.
    pub console_cpu_ms: f64,
    /// QEMU's CPU time with both viewers, ms.
    pub qemu_cpu_ms: f64,
    /// QEMU's CPU time over as long with the dmore viewer alone, ms.
    pub qemu_cpu_without_direct_ms: f64,
    /// The console process's `VmRSS` at the end, with its one viewer, KiB.
    pub console_rss_kib: u64,
}

impl EncodingSample {
    fn per_frame(total: f64, frames: u64) -> Option<f64> {
        (frames > 0).then(|| total / frames as f64)
    }

    /// QEMU's extra CPU for its own viewer, ms per frame.
    pub fn qemu_cpu_per_frame_ms(&self) -> Option<f64> {
        Self::per_frame(
            (self.qemu_cpu_ms - self.qemu_cpu_without_direct_ms).max(0.0),
            self.qemu_frames,
        )
    }

    /// The console's CPU, ms per frame.
    pub fn dmore_cpu_per_frame_ms(&self) -> Option<f64> {
        Self::per_frame(self.console_cpu_ms, self.dmore_frames)
    }
}

/// Bytes per frame, frames per second, CPU per frame for every encoding list.
pub async fn measure<L>(
    window: Duration,
    launch: L,
    progress: &mut impl FnMut(&str),
) -> Result<(Vec<EncodingSample>, String), BenchError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let scratch = Scratch::create()?;
    progress("booting the guest (text mode, animated corner) and its console (--lossy)");
    let lossy = |s: &ConsoleSockets<'_>| {
        let mut c = launch(s);
        c.arg("--lossy");
        c
    };
    let (rig, machine) = rig(scratch.path(), "s", None, &BenchOptions::default(), &lossy).await?;
    let qemu_pid = rig
        .vm
        .pid()
        .ok_or(BenchError::Timeout("QEMU's process id"))?;
    let mut typist = Typist::connect(rig.direct).await?;
    // Fill the screen so that every line typed from now on scrolls it.
    for _ in 0..26 {
        typist.press_release(KEYSYM_RETURN).await?;
        tokio::time::sleep(KEY_INTERVAL).await;
    }
    let typing: JoinHandle<Result<(), BenchError>> = tokio::spawn(async move {
        for n in 0.. {
            let keysym = if n % (LINE + 1) == LINE {
                KEYSYM_RETURN
            } else {
                keysym_of(n)
            };
            typist.press_release(keysym).await?;
            tokio::time::sleep(KEY_INTERVAL).await;
        }
        Ok(())
    });
    let mut out = Vec::new();
    let settle = Duration::from_millis(500);
    for (name, list) in encodings() {
        progress(&format!(
            "{name}: {window:?} with both viewers, then as long with dmore's alone"
        ));
        let dmore = Subscribed::connect(rig.console.addr(), &list).await?;
        let direct = Subscribed::connect(rig.direct, &list).await?;
        tokio::time::sleep(settle).await;
        let (d0, c0) = (direct.counts()?, dmore.counts()?);
        let (cc0, q0, t0) = (rig.console.cpu_time()?, cpu_time(qemu_pid)?, Instant::now());
        tokio::time::sleep(window).await;
        let (d1, c1) = (direct.counts()?, dmore.counts()?);
        let (cc1, q1, t1) = (rig.console.cpu_time()?, cpu_time(qemu_pid)?, Instant::now());
        drop(direct);
        tokio::time::sleep(settle).await;
        let (q2, t2) = (cpu_time(qemu_pid)?, Instant::now());
        tokio::time::sleep(window).await;
        let (q3, t3) = (cpu_time(qemu_pid)?, Instant::now());
        let console_rss_kib = rig.console.rss_kib()?;
        dmore.counts()?;
        let secs = t1.duration_since(t0).as_secs_f64();
        let alone = t3.duration_since(t2).as_secs_f64().max(1e-3);
        out.push(EncodingSample {
            encoding: name.to_owned(),
            seconds: secs,
            qemu_bytes: d1.0.saturating_sub(d0.0),
            dmore_bytes: c1.0.saturating_sub(c0.0),
            qemu_frames: d1.1.saturating_sub(d0.1),
            dmore_frames: c1.1.saturating_sub(c0.1),
            console_cpu_ms: super::ms(cc1.saturating_sub(cc0)),
            qemu_cpu_ms: super::ms(q1.saturating_sub(q0)),
            qemu_cpu_without_direct_ms: super::ms(q3.saturating_sub(q2)) * secs / alone,
            console_rss_kib,
        });
    }
    if typing.is_finished() {
        return match typing.await? {
            Err(e) => Err(e),
            Ok(()) => Err(BenchError::Timeout("the typist")),
        };
    }
    typing.abort();
    Ok((out, machine))
}

/// Measures, writes the samples, figures and plots.
pub async fn run<L>(
    dir: &Path,
    command: String,
    quick: bool,
    launch: L,
    mut progress: impl FnMut(&str),
) -> Result<Summary, SuiteError>
where
    L: Fn(&ConsoleSockets<'_>) -> Command,
{
    let run = Run::start(dir, "screen", command, quick)?;
    let window = Duration::from_millis(if quick { 500 } else { 4000 });
    let (samples, machine) = measure(window, launch, &mut progress).await?;
    summarise(run, &samples, &machine)
}

fn summarise(run: Run, samples: &[EncodingSample], machine: &str) -> Result<Summary, SuiteError> {
    run.write_samples(&samples)?;
    let mut metrics = Vec::new();
    for s in samples {
        let e = &s.encoding;
        let secs = s.seconds.max(1e-3);
        let kib_s = |b: u64| Some(b as f64 / 1024.0 / secs);
        let ratio = (s.qemu_bytes > 0).then(|| s.dmore_bytes as f64 / s.qemu_bytes as f64);
        metrics.push(
            Metric::new(
                &format!("{e}: bytes on the wire, same session"),
                "KiB/s",
                kib_s(s.qemu_bytes),
                kib_s(s.dmore_bytes),
            )
            .target("≤ 1.0× QEMU's", ratio.map(|r| r <= 1.0)),
        );
        let per_frame = |b: u64, f: u64| (f > 0).then(|| b as f64 / 1024.0 / f as f64);
        metrics.push(Metric::new(
            &format!("{e}: bytes per frame"),
            "KiB",
            per_frame(s.qemu_bytes, s.qemu_frames),
            per_frame(s.dmore_bytes, s.dmore_frames),
        ));
        metrics.push(Metric::new(
            &format!("{e}: CPU per frame (QEMU: its extra for its viewer; dmore: the console)"),
            "ms",
            s.qemu_cpu_per_frame_ms(),
            s.dmore_cpu_per_frame_ms(),
        ));
        let fps = |f: u64| Some(f as f64 / secs);
        let (q, d) = (fps(s.qemu_frames), fps(s.dmore_frames));
        metrics.push(
            Metric::new(
                &format!("{e}: frames per second, both at once"),
                "fps",
                q,
                d,
            )
            .target(
                "no fps drop (≥ QEMU's − 0.4)",
                q.zip(d).map(|(q, d)| d >= q - 0.4),
            ),
        );
    }
    let rss = samples
        .iter()
        .map(|s| s.console_rss_kib)
        .max()
        .map(|kib| kib as f64 / 1024.0);
    metrics.push(
        Metric::new(
            "console RSS with one viewer (largest over the encodings)",
            "MiB",
            None,
            rss,
        )
        .target("≤ 8 MiB", at_most(rss, TARGET_RSS_MIB)),
    );
    let categories: Vec<String> = samples.iter().map(|s| s.encoding.clone()).collect();
    let kib_s = |f: fn(&EncodingSample) -> u64| -> Vec<f64> {
        samples
            .iter()
            .map(|s| f(s) as f64 / 1024.0 / s.seconds.max(1e-3))
            .collect()
    };
    plot::bars(
        &run.path("bytes.png"),
        "Bytes on the wire for the same screen session, per encoding",
        "bytes read by the viewer (KiB/s, log scale)",
        &categories,
        &[
            ("plain QEMU VNC".to_owned(), kib_s(|s| s.qemu_bytes)),
            ("dmore console".to_owned(), kib_s(|s| s.dmore_bytes)),
        ],
    )?;
    plot::bars(
        &run.path("cpu.png"),
        "CPU time per frame: QEMU's extra for its viewer vs the console",
        "CPU per frame (ms, log scale)",
        &categories,
        &[
            (
                "plain QEMU VNC (extra CPU)".to_owned(),
                samples
                    .iter()
                    .map(|s| s.qemu_cpu_per_frame_ms().unwrap_or(0.0))
                    .collect(),
            ),
            (
                "dmore console (all its CPU)".to_owned(),
                samples
                    .iter()
                    .map(|s| s.dmore_cpu_per_frame_ms().unwrap_or(0.0))
                    .collect(),
            ),
        ],
    )?;
    let notes = vec![
        "session: the tiny guest in VGA text mode (720x400) with its animated corner and a \
         typist writing 20-character lines at 100 keys/s into a full screen (it scrolls \
         every 0.2 s); both viewers subscribed at once, each asking for the next update as \
         soon as one arrives."
            .to_owned(),
        "CPU figures come from /proc ticks (10 ms) over each window: per-frame values are \
         coarse; QEMU's extra is its CPU with both viewers minus its CPU with the dmore \
         viewer alone."
            .to_owned(),
        "the console runs with --lossy; QEMU's own display without lossy=on, as the \
         testbed starts it."
            .to_owned(),
    ];
    let plots = vec![run.file_name("bytes.png"), run.file_name("cpu.png")];
    Ok(run.finish(
        "bytes, CPU and frame rate per encoding: QEMU's own VNC vs dmore, one session",
        machine,
        metrics,
        plots,
        notes,
    )?)
}
