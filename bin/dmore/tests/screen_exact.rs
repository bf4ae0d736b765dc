//! The screen exact through co-migrations: five viewers stay connected to `dmore console` on
//! the service address (each asks for one encoding: ZRLE, Raw, Hextile, Zlib, Tight) while the Linux test guest's
//! screen changes throughout (text mode: a line scrolls in every 50 ms; graphics mode: a new
//! 128x128 square every 50 ms on the bochs framebuffer) and the VM moves A → B → A → B. After
//! the last move the animation stops, the screen settles, and each viewer's framebuffer must
//! equal QEMU's own `screendump` of the serving VM, pixel for pixel (RGB).
//!
//! ```text
//!   guest: ANIM 50 ──> 3 co-migrations ──> ANIM 0 ──> QEMU's screendump twice the same,
//!          and changed since the last move by more than a cursor could
//!   viewers (ZRLE, Raw, Hextile, Zlib, Tight): incremental requests throughout ──> until equal to the dump, or
//!                        no update for QUIET ──> compare: pixels differing, bounding box,
//!                        both images saved as PNG (the directory kept, its path printed)
//! ```
//!
//! TigerVNC with its defaults (Tight, automatic quality, continuous updates) through the same
//! kind of moves on the tiny guest, typed into with `xdotool`: its window equals QEMU's
//! screendump pixel for pixel, over one TCP connection.
//!
//! Text mode under SeaBIOS (VGA text, 720x400), graphics under SeaBIOS too (the bochs DRM
//! framebuffer: it boots faster than OVMF under TCG); PS/2 input in both (nothing is typed).
//! Skipped (with a note) where network namespaces cannot be made (not root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use linux_guest::launch::{Display, Firmware, Input, LinuxOptions};
use linux_guest::report::Report;
use rfb::framebuffer::Framebuffer;
use rfb::{ClientConfig, Encoding, PixelFormat, ServerMessage};
use scenarios::cobed::{CoBed, CoBedOptions};
use scenarios::migrations_from_env;
use scenarios::steady::tally::{key_presses, tally};
use testbed::qemu::{Qemu, LINUX_MEMORY_MIB};
use testbed::viewers::{Image, TigerVnc, ViewerAuth, Xvfb};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vnc::client::{ClientReader, ClientWriter, Setup};

/// The viewers, by the one pixel encoding each asks for.
const ENCODINGS: [(&str, Encoding); 5] = [
    ("ZRLE", Encoding::Zrle),
    ("Raw", Encoding::Raw),
    ("Hextile", Encoding::Hextile),
    ("Zlib", Encoding::Zlib),
    ("Tight", Encoding::Tight),
];
/// Bound on each wait (a guard against hanging, not a timed assertion).
const WAIT: Duration = Duration::from_secs(120);
/// A viewer whose framebuffer still differs from QEMU's settled screen after this long without
/// an update is not going to be sent the difference.
const QUIET: Duration = Duration::from_secs(8);
/// One character cell of the VGA text screen (9x16): a blinking cursor changes no more.
const CELL_PIXELS: usize = 9 * 16;
/// The guest's animation period: a frame (graphics) or a line (text) every 50 ms.
const ANIM_MS: u64 = 50;

/// One bed at a time: each runs two TCG QEMUs, two consoles and two viewers on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Co-migrations per test (3); `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 3;

/// What a viewer holds at one moment.
struct Snapshot {
    framebuffer: Framebuffer,
    updates: u64,
    last_update: Instant,
    /// Bytes on the wire of the first update: the whole screen, asked for non-incrementally.
    first_update_bytes: usize,
}

/// A viewer that keeps an incremental update request outstanding for its whole connection and
/// hands out its framebuffer on demand.
struct Viewer {
    name: &'static str,
    asks: mpsc::Sender<oneshot::Sender<Snapshot>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Viewer {
    /// Connects from `bed`'s client host to the service address, announcing `encodings`
    /// (32-bit pixels, dmore's own format).
    async fn connect(
        bed: &CoBed,
        name: &'static str,
        encodings: Vec<Encoding>,
    ) -> anyhow::Result<Viewer> {
        let stream = scenarios::typist::connect_from(bed.testbed().client(), bed.service())
            .await
            .with_context(|| format!("{name}: connecting to {}", bed.service()))?;
        stream.set_nodelay(true)?;
        let config = ClientConfig::no_auth();
        let setup = Setup {
            pixel_format: Some(PixelFormat::RGBX32_LE),
            encodings,
        };
        let (_, reader, writer) = vnc::client::connect(stream, config, &setup)
            .await
            .with_context(|| format!("{name}: handshake"))?;
        let (asks, asked) = mpsc::channel(1);
        let task = tokio::spawn(watch(reader, writer, asked));
        Ok(Viewer { name, asks, task })
    }

    /// The framebuffer now; an error if the connection ended (a viewer must never lose it).
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let (reply, answer) = oneshot::channel();
        if self.asks.send(reply).await.is_ok() {
            if let Ok(snapshot) = answer.await {
                return Ok(snapshot);
            }
        }
        bail!("{}: the connection ended", self.name)
    }

    /// Waits until the framebuffer equals `screen`, or no update came for [`QUIET`]; returns
    /// the framebuffer then.
    async fn settled(&self, screen: &Image) -> anyhow::Result<Snapshot> {
        let deadline = Instant::now() + WAIT;
        loop {
            let snapshot = self.snapshot().await?;
            if image_of(&snapshot.framebuffer) == *screen
                || snapshot.last_update.elapsed() >= QUIET
                || Instant::now() >= deadline
            {
                return Ok(snapshot);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes the connection and reports how it ended.
    async fn close(self) -> anyhow::Result<()> {
        drop(self.asks);
        self.task.await?
    }
}

/// The viewer's loop: applies updates (the reader does), asks for the next one after each,
/// answers snapshot requests; ends when the connection fails or the asks channel closes.
async fn watch(
    mut reader: ClientReader<TcpStream>,
    mut writer: ClientWriter<TcpStream>,
    mut asked: mpsc::Receiver<oneshot::Sender<Snapshot>>,
) -> anyhow::Result<()> {
    let (width, height) = (reader.framebuffer().width(), reader.framebuffer().height());
    writer.request_update(false, width, height).await?;
    let mut updates = 0;
    let mut last_update = Instant::now();
    let mut first_update_bytes = 0;
    loop {
        tokio::select! {
            message = reader.read_message() => {
                let message = message?;
                if let ServerMessage::FramebufferUpdate(_) = message {
                    if updates == 0 {
                        // Payloads are kept as received: encoding again gives the wire bytes.
                        let mut wire = Vec::new();
                        message.encode(&mut wire);
                        first_update_bytes = wire.len();
                    }
                    updates += 1;
                    last_update = Instant::now();
                    let fb = reader.framebuffer();
                    writer.request_update(true, fb.width(), fb.height()).await?;
                }
            }
            ask = asked.recv() => match ask {
                Some(reply) => {
                    let _ = reply.send(Snapshot {
                        framebuffer: reader.framebuffer().clone(),
                        updates,
                        last_update,
                        first_update_bytes,
                    });
                }
                None => return Ok(()),
            },
        }
    }
}

fn image_of(fb: &Framebuffer) -> Image {
    Image {
        width: usize::from(fb.width()),
        height: usize::from(fb.height()),
        pixels: fb.pixels().iter().map(|p| p & 0x00ff_ffff).collect(),
    }
}

/// QEMU's own `screendump` of `qemu`'s screen, through `file`.
async fn screendump(qemu: &Qemu, file: &Path) -> anyhow::Result<Image> {
    qemu.qmp()
        .execute("screendump", serde_json::json!({ "filename": file }))
        .await?;
    Ok(testbed::viewers::parse_ppm(&std::fs::read(file)?)?)
}

/// QEMU's screen once two dumps 300 ms apart are the same.
async fn settled_screendump(qemu: &Qemu, file: &Path, tolerance: usize) -> anyhow::Result<Image> {
    let mut last = screendump(qemu, file).await?;
    let mut changes = Vec::new();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = screendump(qemu, file).await?;
        match difference(&now, &last) {
            Some(d) if d.pixels > tolerance => changes.push(d),
            _ => return Ok(now),
        }
        last = now;
    }
    let previous = file.with_extension("previous.png");
    last.save_png(&previous)?;
    testbed::viewers::parse_ppm(&std::fs::read(file)?)?.save_png(&file.with_extension("png"))?;
    changes.truncate(5);
    bail!(
        "QEMU's screen never settled (its last two dumps: {}); its first changes: {changes:?}",
        previous.display()
    )
}

/// How a viewer's image differs from QEMU's.
#[derive(Debug)]
struct Difference {
    pixels: usize,
    /// Left, top, right, bottom (inclusive).
    bounds: (usize, usize, usize, usize),
}

/// `None` when the images are equal (same size, same pixels).
fn difference(seen: &Image, want: &Image) -> Option<Difference> {
    if (seen.width, seen.height) != (want.width, want.height) {
        return Some(Difference {
            pixels: want.width * want.height,
            bounds: (0, 0, want.width.max(1) - 1, want.height.max(1) - 1),
        });
    }
    let mut found: Option<Difference> = None;
    for (i, (a, b)) in seen.pixels.iter().zip(&want.pixels).enumerate() {
        if a == b {
            continue;
        }
        let (x, y) = (i % want.width, i / want.width);
        let d = found.get_or_insert(Difference {
            pixels: 0,
            bounds: (x, y, x, y),
        });
        d.pixels += 1;
        let (l, t, r, b) = d.bounds;
        d.bounds = (l.min(x), t.min(y), r.max(x), b.max(y));
    }
    found
}

/// Runs [`check`] in a fresh directory, kept (its path in the error) when the check fails:
/// it holds the images to look at.
async fn screen_exact_through_comigrations(linux: LinuxOptions) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    match check(linux, dir.path()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!("images kept in {}", kept.display())))
        }
    }
}

async fn check(linux: LinuxOptions, dir: &Path) -> anyhow::Result<()> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.memory_mib = LINUX_MEMORY_MIB;
    options.linux = Some(linux);
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let mut viewers = Vec::new();
    for (name, encoding) in ENCODINGS {
        viewers.push(Viewer::connect(&bed, name, vec![encoding, Encoding::DesktopSize]).await?);
    }
    let serial = bed.home_serial().context("no home VM")?;
    serial.send_line(&format!("ANIM {ANIM_MS}")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after_move = None;
    for n in 1..=migrations_from_env(MIGRATIONS) {
        let (from, to) = (bed.home(), bed.other());
        let t = bed.migrate(false).await?;
        println!(
            "{linux:?} migration {n} {from:?}->{to:?}: VM downtime {:?} ms, freeze->takeover {:?}",
            t.vm_downtime_ms, t.freeze_to_takeover
        );
        let qemu = bed.home_qemu().context("no home VM")?;
        after_move = Some(screendump(qemu, &dir.join("moved.ppm")).await?);
        let mut counts = Vec::new();
        for viewer in &viewers {
            counts.push(format!(
                "{} {}",
                viewer.name,
                viewer.snapshot().await?.updates
            ));
        }
        println!("  updates so far: {}", counts.join(", "));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let serial = bed.home_serial().context("no home VM")?;
    serial.send_line("ANIM 0").await?;
    let frames = loop {
        match serial.next_linux(WAIT, "DREW FRAME").await? {
            Report::Drew {
                frames: true,
                count,
            } => break count,
            _ => continue,
        }
    };
    let qemu = bed.home_qemu().context("no home VM")?;
    let screen = settled_screendump(qemu, &dir.join("screen.ppm"), 0).await?;
    println!(
        "{linux:?}: {frames} frames drawn; QEMU's screen {}x{} settled",
        screen.width, screen.height
    );

    // The guest drew after the last takeover, more than a blinking cursor can change: what
    // the viewers hold must come (also) from the console that serves now.
    let moved = after_move.context("no co-migration")?;
    let drawn = difference(&screen, &moved).map_or(0, |d| d.pixels);
    if drawn <= CELL_PIXELS {
        moved.save_png(&dir.join("after-last-move.png"))?;
        screen.save_png(&dir.join("settled.png"))?;
        bail!("the guest's screen changed in {drawn} pixels only after the last move");
    }
    println!("{linux:?}: {drawn} pixels changed after the last move");

    let mut failures = Vec::new();
    for viewer in &viewers {
        let snapshot = viewer.settled(&screen).await?;
        let seen = image_of(&snapshot.framebuffer);
        match difference(&seen, &screen) {
            None => println!(
                "{linux:?} {}: {} updates (the first, the whole screen, {} bytes); \
                 framebuffer {}x{} equals QEMU's screendump",
                viewer.name, snapshot.updates, snapshot.first_update_bytes, seen.width, seen.height
            ),
            Some(d) => {
                let (viewer_png, qemu_png) = save_pair(dir, viewer.name, &seen, &screen)?;
                let failure = format!(
                    "{linux:?} {}: framebuffer {}x{} differs from QEMU's screendump {}x{} in {} \
                     pixels within x {}..={}, y {}..={} ({} updates, the last {:?} ago); \
                     images: {} and {}",
                    viewer.name,
                    seen.width,
                    seen.height,
                    screen.width,
                    screen.height,
                    d.pixels,
                    d.bounds.0,
                    d.bounds.2,
                    d.bounds.1,
                    d.bounds.3,
                    snapshot.updates,
                    snapshot.last_update.elapsed(),
                    viewer_png.display(),
                    qemu_png.display(),
                );
                println!("{failure}");
                failures.push(failure);
            }
        }
    }
    if linux.display == Display::Text {
        println!("{linux:?}: the settled screen of scrolled text, to fresh viewers:");
        full_screen_bytes(&bed, &dir.join("fresh.ppm"), 0).await?;
    }
    for viewer in viewers {
        let name = viewer.name;
        viewer
            .close()
            .await
            .with_context(|| format!("the {name} viewer's connection"))?;
    }
    if linux.display == Display::Text {
        // Last: TigerVNC connects non-shared, and the console then closes the other viewers.
        tigervnc_shows_the_screen(&bed, &dir.join("tigervnc.ppm")).await?;
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Saves the viewer's and QEMU's images as PNG files in `dir`.
fn save_pair(
    dir: &Path,
    name: &str,
    seen: &Image,
    screen: &Image,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let viewer = dir.join(format!("viewer-{name}.png"));
    let qemu = dir.join(format!("qemu-for-{name}.png"));
    seen.save_png(&viewer)?;
    screen.save_png(&qemu)?;
    Ok((viewer, qemu))
}

/// For a fresh viewer of each encoding in turn: its first update (the whole screen, asked for
/// non-incrementally), checked against QEMU's screendump but for `tolerance` pixels; returns
/// (encoding's name, bytes of that update, width, height).
async fn full_screen_bytes(
    bed: &CoBed,
    file: &Path,
    tolerance: usize,
) -> anyhow::Result<Vec<(&'static str, usize, usize, usize)>> {
    let qemu = bed.home_qemu().context("no home VM")?;
    let mut sizes = Vec::new();
    for (name, encoding) in ENCODINGS {
        let viewer = Viewer::connect(bed, name, vec![encoding]).await?;
        let deadline = Instant::now() + WAIT;
        let snapshot = loop {
            let snapshot = viewer.snapshot().await?;
            ensure!(Instant::now() < deadline, "{name}: no update");
            if snapshot.updates > 0 {
                break snapshot;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let screen = screendump(qemu, file).await?;
        let seen = image_of(&snapshot.framebuffer);
        let differing = difference(&seen, &screen).map_or(0, |d| d.pixels);
        ensure!(
            differing <= tolerance,
            "{name}: the first update differs from QEMU's screendump in {differing} pixels"
        );
        viewer.close().await?;
        sizes.push((name, snapshot.first_update_bytes, seen.width, seen.height));
    }
    let raw = sizes.iter().find(|s| s.0 == "Raw").map_or(1, |s| s.1);
    for &(name, bytes, width, height) in &sizes {
        println!(
            "full {width}x{height} screen, {name:8} {bytes:>9} bytes ({:.4} of Raw)",
            bytes as f64 / raw as f64
        );
        ensure!(
            name == "Raw" || bytes < raw,
            "{name} took {bytes} bytes, no fewer than Raw's {raw}"
        );
    }
    Ok(sizes)
}

/// The tiny guest's 720x400 text screen, sent whole to a viewer of each encoding: each shows
/// QEMU's screendump but for at most its blinking cursor's cell, and each compressing encoding
/// takes fewer bytes than Raw. Prints the bytes of that full-screen update per encoding. Then
/// TigerVNC, with its defaults, shows the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_text_screen_bytes_per_encoding() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    let Some(bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let qemu = bed.home_qemu().context("no home VM")?;
    let file = dir.path().join("screen.ppm");
    // Booted: the screen changes no more than the cursor's blink.
    settled_screendump(qemu, &file, CELL_PIXELS).await?;
    full_screen_bytes(&bed, &file, CELL_PIXELS).await?;
    tigervnc_shows_the_screen(&bed, &file).await
}

/// TigerVNC's viewer with its defaults (no parameters) on `xvfb`, from the client host, on
/// the bed's service address.
async fn tigervnc_on(bed: &CoBed, xvfb: &Xvfb) -> anyhow::Result<TigerVnc> {
    let server = format!("{}::{}", bed.service().ip(), bed.service().port());
    let viewer = TigerVnc::connect(
        xvfb,
        &server,
        ViewerAuth::None,
        "dmore-demo",
        bed.testbed().client().netns(),
        &[],
    )
    .await?;
    Ok(viewer)
}

/// TigerVNC's viewer with its defaults (it prefers Tight, and asks for an exclusive session)
/// on the console, from the client host: its window shows QEMU's screendump but for at most
/// the blinking cursor's cell.
async fn tigervnc_shows_the_screen(bed: &CoBed, file: &Path) -> anyhow::Result<()> {
    let xvfb = Xvfb::start().await?;
    let viewer = tigervnc_on(bed, &xvfb).await?;
    let qemu = bed.home_qemu().context("no home VM")?;
    let deadline = Instant::now() + WAIT;
    loop {
        let screen = screendump(qemu, file).await?;
        let shot = viewer.screenshot().await?;
        let differing = shot
            .crop(0, 0, screen.width, screen.height)
            .map_or(usize::MAX, |seen| {
                difference(&seen, &screen).map_or(0, |d| d.pixels)
            });
        if differing <= CELL_PIXELS {
            println!(
                "TigerVNC (Tight, its default): {}x{} window equals QEMU's screendump \
                 ({differing} pixels differ: at most a blinking cursor's cell)",
                screen.width, screen.height
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            shot.save_png(&file.with_extension("tigervnc.png"))?;
            bail!("TigerVNC shows {differing} pixels differently from QEMU's screendump");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What TigerVNC's user types during the moves (lowercase, digits and spaces: no Shift) and
/// after the last one.
const TIGER_TEXT: [&str; 2] = [
    "tigervnc with its defaults types through the moves 0123456789 ",
    "and after the last one",
];

/// TigerVNC's viewer with its defaults (no parameters: Tight, automatic quality, an exclusive
/// session) from the client host while the tiny guest moves A → B → A → B, typed into with
/// `xdotool` during the moves and after the last: every key reaches the guest once, in order,
/// over one TCP connection (the client host's capture: one SYN, no RST), and the viewer's
/// window then equals QEMU's screendump pixel for pixel. The guest's text cursor blinks, so a
/// dump and a screenshot are taken in turn until a pair agrees (each pair's difference is
/// printed); the X pointer is not in the window's `xwd` image (Xvfb draws it in software and
/// takes it out of reads) and `xdotool type` never moves it. Says which encoding TigerVNC
/// chose (its log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tigervnc_with_its_defaults_through_comigrations() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let capture = bed.capture("tigervnc").await?;
    let xvfb = Xvfb::start().await?;
    let mut viewer = tigervnc_on(&bed, &xvfb).await?;
    let moves = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in 1..=migrations_from_env(MIGRATIONS) {
            let t = bed.migrate(false).await?;
            println!(
                "TigerVNC: move {n}: VM downtime {:?} ms, freeze->takeover {:?}",
                t.vm_downtime_ms, t.freeze_to_takeover
            );
        }
        anyhow::Ok(())
    };
    let (typed, moved) = tokio::join!(viewer.type_text(TIGER_TEXT[0]), moves);
    typed?;
    moved?;
    viewer.type_text(TIGER_TEXT[1]).await?;
    let typed = Instant::now();
    let reports = bed
        .collect_reports(Duration::from_millis(700), WAIT)
        .await
        .to_vec();
    let pcap = capture.file().to_owned();
    let capture = tokio::task::spawn_blocking(move || capture.finish()).await??;
    let expected: Vec<u16> = TIGER_TEXT
        .concat()
        .chars()
        .filter_map(|c| guest::keymap::scancode(c).map(u16::from))
        .collect();
    let keys = tally(&expected, &key_presses(&reports));
    println!("TigerVNC: keys {keys:?}; capture: {capture}");
    ensure!(
        keys.sent == TIGER_TEXT.concat().len() && keys.exact(),
        "every key once, in order: {keys:?}"
    );
    ensure!(
        capture.connections.len() == 1
            && capture.syns_after_first() == 0
            && capture.total().rst == 0,
        "one TCP connection, never reset: {capture}"
    );

    let qemu = bed.home_qemu().context("no home VM")?;
    let file = dir.path().join("screen.ppm");
    let deadline = Instant::now() + WAIT;
    let mut differences = Vec::new();
    loop {
        let screen = screendump(qemu, &file).await?;
        let shot = viewer.screenshot().await?;
        let seen = shot
            .crop(0, 0, screen.width, screen.height)
            .context("the window is smaller than the screen")?;
        match difference(&seen, &screen) {
            None => {
                println!(
                    "TigerVNC: {}x{} window equals QEMU's screendump pixel for pixel, {:?} \
                     after the last key (after {} differing pairs: {differences:?})",
                    screen.width,
                    screen.height,
                    typed.elapsed(),
                    differences.len()
                );
                break;
            }
            Some(d) if Instant::now() >= deadline => {
                let kept = dir.keep();
                save_pair(&kept, "tigervnc", &seen, &screen)?;
                bail!(
                    "TigerVNC's window differs from QEMU's screendump: {d:?}; images in {}",
                    kept.display()
                );
            }
            Some(d) => differences.push(d.pixels),
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    ensure!(viewer.is_running(), "TigerVNC exited");

    // Which encoding TigerVNC asked for and got, from the capture: its SetEncodings, and the
    // first rectangle of each update that begins a segment from the console.
    let service = bed.service();
    let to_service = format!("dst host {} and dst port {}", service.ip(), service.port());
    let asked = tcp_payloads(&pcap, &to_service)?
        .into_iter()
        .find_map(|p| set_encodings(&p))
        .context("no SetEncodings in the capture")?;
    let from_service = format!("src host {} and src port {}", service.ip(), service.port());
    let mut got = std::collections::BTreeMap::<String, usize>::new();
    for p in tcp_payloads(&pcap, &from_service)? {
        if let Some(e) = first_rectangle_encoding(&p) {
            *got.entry(format!("{e:?}")).or_default() += 1;
        }
    }
    println!("TigerVNC asked for {asked:?}; first rectangles of updates: {got:?}");
    ensure!(
        asked.iter().find(|e| (0..=16).contains(&i32::from(**e))) == Some(&Encoding::Tight)
            && got.contains_key("Tight"),
        "TigerVNC prefers Tight by default and gets it: asked {asked:?}, got {got:?}"
    );
    Ok(())
}

/// The TCP payloads of the segments in `pcap` that `filter` (tcpdump's) selects, in order.
fn tcp_payloads(pcap: &Path, filter: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let out = std::process::Command::new("tcpdump")
        .args(["-nn", "-x", "-r"])
        .arg(pcap)
        .arg(format!("tcp and ({filter})"))
        .output()
        .context("running tcpdump -r")?;
    ensure!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut packets: Vec<Vec<u8>> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.trim_start().strip_prefix("0x") {
            Some(hex) => {
                let bytes = hex.split_whitespace().skip(1).flat_map(|word| {
                    (0..word.len() / 2).filter_map(move |i| {
                        u8::from_str_radix(word.get(2 * i..2 * i + 2)?, 16).ok()
                    })
                });
                if let Some(packet) = packets.last_mut() {
                    packet.extend(bytes);
                }
            }
            None => packets.push(Vec::new()),
        }
    }
    // IPv4: the header's length, the packet's total length, then TCP's data offset.
    Ok(packets
        .into_iter()
        .filter_map(|p| {
            let ip_header = usize::from(p.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            let tcp_header = usize::from(p.get(ip_header + 12)? >> 4) * 4;
            let payload = p.get(ip_header + tcp_header..total.min(p.len()))?;
            (!payload.is_empty()).then(|| payload.to_vec())
        })
        .collect())
}

/// The list of a SetEncodings message (type 2) at the start of `payload`.
fn set_encodings(payload: &[u8]) -> Option<Vec<Encoding>> {
    let (&[2, _, a, b], rest) = payload.split_first_chunk::<4>()? else {
        return None;
    };
    let list = rest.get(..usize::from(u16::from_be_bytes([a, b])) * 4)?;
    Some(
        list.chunks_exact(4)
            .map(|c| Encoding::from(i32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    )
}

/// The encoding of the first rectangle of a FramebufferUpdate (type 0) at the start of
/// `payload`, if it is a pixel encoding (not a pseudo-encoding).
fn first_rectangle_encoding(payload: &[u8]) -> Option<Encoding> {
    let header = payload.get(..16)?;
    if header[..2] != [0, 0] || header[2..4] == [0, 0] {
        return None;
    }
    let code = i32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    (0..=16).contains(&code).then(|| Encoding::from(code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_screen_exact_after_comigrations_in_every_encoding() -> anyhow::Result<()> {
    screen_exact_through_comigrations(LinuxOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphics_screen_exact_after_comigrations_in_every_encoding() -> anyhow::Result<()> {
    screen_exact_through_comigrations(LinuxOptions {
        input: Input::Ps2,
        display: Display::Graphics,
        firmware: Firmware::SeaBios,
        ..LinuxOptions::default()
    })
    .await
}
