//! noVNC in headless Chromium on `dmore console` through co-migrations (issue 18): Debian's
//! noVNC 1.3.0 (its own app, `/usr/share/novnc/vnc.html`) and a current noVNC from npm (the
//! library, under `tests/web/novnc.html`), each behind a stationary websockify on the client
//! host that connects to the console's service address (transparent mode, as `dmore demo`).
//! And through `dmore gateway` (issue 14): Debian's noVNC from a gateway-mode bed's stationary
//! gateway over https and wss while the VM co-migrates, everything of dmore's as `nobody`
//! without capabilities; npm's through `dmore gateway endpoint` to a stationary console.
//! Each prints, per move, the page's longest pause between framebuffer updates.
//!
//! ```text
//!  client host: Chromium (Playwright, tests/web/novnc.cjs) ─ws─> websockify 127.0.0.1:6080
//!                                                                 └─TCP─> SERVICE:5900
//!  A ⇄ B: the tiny guest and its console, co-migrated 10 times while the page types lines
//!         of text (the guest echoes them: the screen scrolls)
//! ```
//!
//! Checked: every key typed through the page reached the guest once, in order (its serial
//! reports); the WebSocket never closed and the page never showed "disconnected"; the canvas
//! read back (`getImageData`) equals QEMU's `screendump` pixel for pixel, opaque, with
//! lossless settings; with JPEG allowed (`dmore console --lossy`, noVNC's quality 6), on the
//! Linux guest's framebuffer showing a photo-like picture after 2 co-migrations, its PSNR
//! against the screendump is at least [`LOSSY_MIN_PSNR`].
//!
//! Why a Node script: Playwright (`playwright-core` from npm, driving Debian's chromium)
//! launches the browser, types real key events into the page and reads its canvas in a few
//! lines; the DevTools protocol from Rust would need a CDP client crate and its own launch
//! and input plumbing for the same. The packages come from `.ci/setup` (`/opt/dmore-web`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use common::browser::{
    in_kept_dir, repo_web, spawn_in, type_through_moves, wait_listening, web_dir, Dmore, Page, WAIT,
};
use linux_guest::launch::{Display, Firmware, Input, LinuxOptions};
use linux_guest::report::Report;
use rfb::framebuffer::PIXEL_ENCODINGS;
use rfb::Encoding;
use scenarios::cobed::{CoBed, CoBedOptions, GatewayWeb};
use scenarios::migrations_from_env;
use scenarios::steady::tally::{key_presses, tally};
use testbed::qemu::{Qemu, LINUX_MEMORY_MIB};
use testbed::viewers::Image;
use tokio::process::Child;

/// Co-migrations while the page types (10); `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 10;

/// The lowest PSNR (dB, RGB) accepted between noVNC's canvas and QEMU's screen with JPEG
/// allowed at noVNC's default quality 6 (TigerVNC's JPEG quality 79).
const LOSSY_MIN_PSNR: f64 = 30.0;
/// Where websockify listens on the client host.
const WEBSOCKIFY: &str = "127.0.0.1:6080";
/// The page types a key every this many ms.
const PACE_MS: u64 = 15;

/// Which noVNC.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// Debian's `novnc` package (1.3.0): its own app page.
    Debian,
    /// The npm package `@novnc/novnc` (the library) in dmore's page.
    Npm,
}

impl Client {
    /// The web root to serve (made in `dir` for npm) and the page's URL path, the page
    /// connecting to the WebSocket at `ws_path` (URL-encoded).
    fn site(
        self,
        dir: &Path,
        quality: u8,
        compression: u8,
        ws_path: &str,
    ) -> anyhow::Result<(PathBuf, String)> {
        match self {
            Client::Debian => {
                let root = PathBuf::from("/usr/share/novnc");
                ensure!(
                    root.join("vnc.html").exists(),
                    "Debian's noVNC is not installed (run .ci/setup)"
                );
                Ok((
                    root,
                    format!(
                        "vnc.html?autoconnect=true&path={ws_path}&resize=off\
                         &quality={quality}&compression={compression}"
                    ),
                ))
            }
            Client::Npm => {
                let novnc = web_dir().join("node_modules/@novnc/novnc");
                ensure!(
                    novnc.join("core/rfb.js").exists(),
                    "noVNC from npm is not in {} (run .ci/setup)",
                    novnc.display()
                );
                let root = dir.join("www");
                if !root.exists() {
                    std::fs::create_dir_all(&root)?;
                    for part in ["core", "vendor"] {
                        std::os::unix::fs::symlink(novnc.join(part), root.join(part))?;
                    }
                    std::fs::copy(repo_web().join("novnc.html"), root.join("novnc.html"))?;
                }
                Ok((
                    root,
                    format!(
                        "novnc.html?path={ws_path}&quality={quality}&compression={compression}"
                    ),
                ))
            }
        }
    }
}

/// websockify on the client host, serving `root` and relaying to the console.
async fn websockify(bed: &CoBed, root: &Path, log: &Path) -> anyhow::Result<Child> {
    let target = bed.service().to_string();
    let root = root.to_str().context("web root path")?;
    let mut child = spawn_in(
        bed.testbed().client(),
        "websockify",
        &["--web", root, WEBSOCKIFY, &target],
        Some(log),
    )?;
    wait_listening(bed.testbed().client(), WEBSOCKIFY, &mut child).await?;
    Ok(child)
}

/// The canvas, through `file`: RGB pixels and how many were not opaque.
async fn canvas(page: &mut Page, file: &Path) -> anyhow::Result<(Image, usize)> {
    let answer = page
        .ask(serde_json::json!({ "cmd": "canvas", "file": file }))
        .await?;
    let (width, height) = (dimension(&answer, "width")?, dimension(&answer, "height")?);
    let rgba = std::fs::read(file)?;
    ensure!(
        rgba.len() == width * height * 4,
        "canvas of {} bytes",
        rgba.len()
    );
    let translucent = rgba.chunks_exact(4).filter(|p| p[3] != 255).count();
    let pixels = rgba
        .chunks_exact(4)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Ok((
        Image {
            width,
            height,
            pixels,
        },
        translucent,
    ))
}

fn dimension(answer: &serde_json::Value, key: &str) -> anyhow::Result<usize> {
    let n = answer[key]
        .as_u64()
        .with_context(|| format!("no {key}: {answer}"))?;
    Ok(usize::try_from(n)?)
}

/// QEMU's own `screendump`, through `file`.
async fn screendump(qemu: &Qemu, file: &Path) -> anyhow::Result<Image> {
    qemu.qmp()
        .execute("screendump", serde_json::json!({ "filename": file }))
        .await?;
    Ok(testbed::viewers::parse_ppm(&std::fs::read(file)?)?)
}

/// Pixels that differ (all of them if the sizes differ).
fn differing(seen: &Image, want: &Image) -> usize {
    if (seen.width, seen.height) != (want.width, want.height) {
        return want.width * want.height;
    }
    seen.pixels
        .iter()
        .zip(&want.pixels)
        .filter(|(a, b)| a != b)
        .count()
}

/// PSNR (dB) over the R, G and B samples; infinite when equal, 0 when the sizes differ.
fn psnr(seen: &Image, want: &Image) -> f64 {
    if (seen.width, seen.height) != (want.width, want.height) {
        return 0.0;
    }
    let mut squares = 0u64;
    for (a, b) in seen.pixels.iter().zip(&want.pixels) {
        for shift in [0, 8, 16] {
            let d = i64::from((a >> shift) & 0xff) - i64::from((b >> shift) & 0xff);
            squares += d.unsigned_abs().pow(2);
        }
    }
    if squares == 0 {
        return f64::INFINITY;
    }
    let mse = squares as f64 / (seen.pixels.len() * 3) as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// The pixel encoding dmore uses for a viewer that sent `list` (the first it implements).
fn pixel_encoding(list: &[i32]) -> Encoding {
    list.iter()
        .map(|&n| Encoding::from(n))
        .find(|e| PIXEL_ENCODINGS.contains(e))
        .unwrap_or(Encoding::Raw)
}

/// The page's canvas against QEMU's screen at one moment.
struct Comparison {
    canvas: Image,
    screen: Image,
    /// Pixels whose RGB differ.
    differing: usize,
    /// Canvas pixels not fully opaque.
    translucent: usize,
    /// PSNR (dB).
    psnr: f64,
}

/// Reads the canvas and QEMU's screen in turn until they are equal (the guest's cursor
/// blinks; the page may still be catching up) or [`WAIT`] passes (with JPEG: 20 reads);
/// returns the closest pair seen.
async fn closest(
    page: &mut Page,
    qemu: &Qemu,
    dir: &Path,
    lossy: bool,
) -> anyhow::Result<Comparison> {
    let deadline = Instant::now() + WAIT;
    let mut best: Option<Comparison> = None;
    let mut tries = 0;
    loop {
        tries += 1;
        let screen = screendump(qemu, &dir.join("screen.ppm")).await?;
        let (canvas, translucent) = canvas(page, &dir.join("canvas.rgba")).await?;
        let now = Comparison {
            differing: differing(&canvas, &screen),
            psnr: psnr(&canvas, &screen),
            canvas,
            screen,
            translucent,
        };
        // Lossless: the fewest pixels off; with JPEG: the highest PSNR.
        let better = |b: &Comparison| match lossy {
            false => (now.differing, now.translucent) < (b.differing, b.translucent),
            true => now.psnr > b.psnr || (now.psnr == b.psnr && now.translucent < b.translucent),
        };
        if best.as_ref().is_none_or(better) {
            best = Some(now);
        }
        let exact = best
            .as_ref()
            .is_some_and(|b| b.differing == 0 && b.translucent == 0);
        // With JPEG, equality may never come: the best of 20 reads is the screen.
        if exact || (lossy && tries >= 20) || Instant::now() >= deadline {
            return best.context("no comparison");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The whole check for one client; `lossy`: the console allows JPEG, noVNC at quality 6.
async fn novnc_through_comigrations(
    client: Client,
    lossy: bool,
    moves: usize,
) -> anyhow::Result<()> {
    in_kept_dir(&format!("{client:?} lossy={lossy}"), |dir| async move {
        check(client, lossy, moves, &dir).await
    })
    .await
}

async fn check(client: Client, lossy: bool, moves: usize, dir: &Path) -> anyhow::Result<()> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    if lossy {
        // A picture JPEG is for (text is sent lossless even when lossy is allowed): the Linux
        // guest's framebuffer.
        options.console_args.push("--lossy".into());
        options.memory_mib = LINUX_MEMORY_MIB;
        options.linux = Some(LinuxOptions {
            input: Input::Ps2,
            display: Display::Graphics,
            firmware: Firmware::SeaBios,
            ..LinuxOptions::default()
        });
    }
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let (quality, compression) = if lossy { (6, 2) } else { (9, 0) };
    let (root, path) = client.site(dir, quality, compression, "websockify")?;
    let _websockify = websockify(&bed, &root, &dir.join("websockify.log")).await?;
    let url = format!("http://{WEBSOCKIFY}/{path}");
    let mut page = Page::open("novnc.cjs", bed.testbed().client(), &url, dir).await?;
    session(
        &mut bed,
        &mut page,
        &format!("{client:?}"),
        moves,
        lossy,
        dir,
    )
    .await?;
    page.quit().await
}

/// Through an open `page`: types while the VM co-migrates `moves` times (or for 3 s), then
/// checks every key once, in order, the connection never ended, and the canvas against QEMU's
/// screen (exact; with `lossy`, the PSNR).
async fn session(
    bed: &mut CoBed,
    page: &mut Page,
    client: &str,
    moves: usize,
    lossy: bool,
    dir: &Path,
) -> anyhow::Result<()> {
    let status = page.ask(serde_json::json!({ "cmd": "status" })).await?;
    let encodings: Vec<i32> = serde_json::from_value(status["encodings"].clone())
        .with_context(|| format!("the client's SetEncodings: {status}"))?;
    println!(
        "{client}: noVNC asked for {encodings:?}: dmore sends {:?}",
        pixel_encoding(&encodings)
    );

    // Keys an earlier session typed into this guest are not this one's.
    let before = key_presses(
        bed.collect_reports(Duration::from_millis(300), Duration::from_secs(2))
            .await,
    )
    .len();
    let typed = type_through_moves(
        bed,
        page,
        client,
        moves,
        PACE_MS,
        "between framebuffer updates",
    )
    .await?;
    let typed = typed["typed"].as_str().context("typed text")?.to_owned();
    let sent: Vec<u16> = typed
        .chars()
        .map(|c| guest::keymap::scancode(c).map(u16::from))
        .collect::<Option<_>>()
        .context("a typed character has no key")?;

    // Every key once, in order, from the guest's own reports.
    let deadline = Instant::now() + WAIT;
    let keys = loop {
        let reports = bed
            .collect_reports(Duration::from_millis(500), Duration::from_secs(2))
            .await;
        let received = key_presses(reports).split_off(before);
        if received.len() >= sent.len() || Instant::now() >= deadline {
            break tally(&sent, &received);
        }
    };
    let status = page.ask(serde_json::json!({ "cmd": "status" })).await?;
    println!(
        "{client}: {} keys typed through the page over {moves} co-migrations: {keys:?}; \
         WebSocket closes {}, \"disconnected\" shown: {}",
        sent.len(),
        status["closes"],
        status["disconnected_shown"]
    );
    ensure!(
        sent.len() > 50,
        "the page typed too little to judge: {keys:?}"
    );
    ensure!(keys.exact(), "every key once, in order: {keys:?}");
    ensure!(
        status["closes"] == serde_json::json!([]) && status["connected"] == true,
        "the page's connection ended: {status}"
    );
    ensure!(
        status["disconnected_shown"] == false,
        "the page showed \"disconnected\""
    );

    // The screen: the canvas against QEMU's; with JPEG allowed, a photo-like picture on it.
    if lossy {
        let serial = bed.home_serial().context("no home VM")?;
        serial.send_line("PICTURE").await?;
        while !matches!(
            serial.next_linux(WAIT, "DREW FRAME").await?,
            Report::Drew { frames: true, .. }
        ) {}
        // Drawn is not yet shown: the framebuffer reaches QEMU's display a little later.
        let qemu = bed.home_qemu().context("no home VM")?;
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = screendump(qemu, &dir.join("screen.ppm")).await?;
            let colours: std::collections::HashSet<u32> = screen.pixels.iter().copied().collect();
            if colours.len() > 10_000 {
                println!(
                    "{client}: the guest shows a picture of {} colours",
                    colours.len()
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the guest's picture never showed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let qemu = bed.home_qemu().context("no home VM")?;
    let Comparison {
        canvas: seen,
        screen,
        differing: diff,
        translucent,
        psnr: quality,
    } = closest(page, qemu, dir, lossy).await?;
    println!(
        "{client}: canvas {}x{} against QEMU's screendump {}x{}: {diff} pixels differ, \
         {translucent} not opaque, PSNR {quality:.1} dB",
        seen.width, seen.height, screen.width, screen.height
    );
    if lossy {
        ensure!(
            quality >= LOSSY_MIN_PSNR && translucent == 0,
            "PSNR {quality:.1} dB below {LOSSY_MIN_PSNR} (or {translucent} pixels not opaque)"
        );
    } else if diff != 0 || translucent != 0 {
        seen.save_png(&dir.join("canvas.png"))?;
        screen.save_png(&dir.join("screendump.png"))?;
        bail!(
            "the canvas differs from QEMU's screendump in {diff} pixels ({translucent} not opaque)"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_novnc_exact_through_comigrations() -> anyhow::Result<()> {
    novnc_through_comigrations(Client::Debian, false, migrations_from_env(MIGRATIONS)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_novnc_exact_through_comigrations() -> anyhow::Result<()> {
    novnc_through_comigrations(Client::Npm, false, migrations_from_env(MIGRATIONS)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_novnc_lossy_psnr() -> anyhow::Result<()> {
    novnc_through_comigrations(Client::Debian, true, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_novnc_lossy_psnr() -> anyhow::Result<()> {
    novnc_through_comigrations(Client::Npm, true, migrations_from_env(MIGRATIONS).min(2)).await
}

/// Debian's noVNC served by the stationary gateway of a gateway-mode bed (issue 14) over https
/// and wss, with a token, typing while the VM co-migrates 10 times; the gateway and the
/// consoles run as nobody without capabilities: every key once, in order, the WebSocket never
/// closed, "disconnected" never shown, the canvas equal to QEMU's screendump after the last
/// move; the gateway followed each move's Moved frame and logged no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_novnc_from_the_gateway_over_wss_through_comigrations() -> anyhow::Result<()> {
    let moves = migrations_from_env(MIGRATIONS);
    in_kept_dir("Debian from the gateway over wss", |dir| async move {
        from_the_gateway(&dir, moves).await
    })
    .await
}

async fn from_the_gateway(dir: &Path, moves: usize) -> anyhow::Result<()> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.gateway = true;
    let (root, _) = Client::Debian.site(dir, 9, 0, "")?;
    options.gateway_web = Some(GatewayWeb {
        port: 6080,
        root,
        tls: true,
    });
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let web = bed.gateway_web().context("the gateway's web side")?.clone();
    let ws_path = format!("websockify%3Ftoken%3D{}", web.token);
    let (_, page_path) = Client::Debian.site(dir, 9, 0, &ws_path)?;
    let url = format!("{}/{page_path}", web.base);
    ensure!(
        url.starts_with("https://"),
        "the page over TLS: {}",
        web.base
    );
    let mut page = Page::open("novnc.cjs", bed.testbed().client(), &url, dir).await?;
    session(
        &mut bed,
        &mut page,
        "Debian from the gateway (wss)",
        moves,
        false,
        dir,
    )
    .await?;
    page.quit().await?;
    common::check_unprivileged("gateway", bed.gateway_pid().context("the gateway")?)?;
    let (_, console) = bed.home_pids().context("home console")?;
    common::check_unprivileged("console", console)?;
    let log = bed.gateway_log().context("the gateway's log")?;
    common::check_followed_moves(&log, moves)?;
    ensure!(!log.contains(&web.token), "the gateway logged the token");
    Ok(())
}

/// npm's noVNC over http and ws, served by `dmore gateway serve --web-listen`, its WebSocket
/// relayed over a resumable stream to `dmore gateway endpoint` next to a stationary console
/// (the endpoint relays to the console's TCP service), with a token; the gateway and the
/// endpoint run as nobody without capabilities: every key typed once, the canvas equal to
/// QEMU's screendump, the token in no log (at `trace`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_novnc_through_the_gateway_endpoint() -> anyhow::Result<()> {
    in_kept_dir("npm through the gateway endpoint", |dir| async move {
        through_endpoint(&dir).await
    })
    .await
}

async fn through_endpoint(dir: &Path) -> anyhow::Result<()> {
    let dmore = env!("CARGO_BIN_EXE_dmore");
    let Some(mut bed) = CoBed::start_or_skip(CoBedOptions::new(dmore)).await? else {
        return Ok(());
    };
    let client = bed.testbed().client().clone();
    // The gateway and the endpoint need no privilege: as root, the test runs them as nobody
    // without capabilities, and gives nobody the files they read.
    let servers = Dmore::unprivileged(&bed, dmore)?;
    let (key_path, token_path, token) = servers.gateway_files(dir, dmore, "vm1")?;
    let key = key_path.to_str().context("key path")?;
    let tokens = token_path.to_str().context("token file path")?;
    let endpoint = std::net::SocketAddr::from((bed.testbed().a().ip(), 4800));
    let service = bed.service().to_string();
    let endpoint_addr = endpoint.to_string();
    let endpoint_args = [
        "gateway",
        "endpoint",
        "--listen",
        &endpoint_addr,
        "--service",
        &service,
        "--key-file",
        key,
    ];
    let mut endpoint_child =
        servers.spawn(bed.testbed().a(), &endpoint_args, &dir.join("endpoint.log"))?;
    wait_listening(&client, &endpoint.to_string(), &mut endpoint_child).await?;
    let ws_path = format!("websockify%3Ftoken%3D{token}");
    let (root, page_path) = Client::Npm.site(dir, 9, 0, &ws_path)?;
    let listen = "127.0.0.1:6081";
    let console = format!("vm1={endpoint}");
    let args = [
        "gateway",
        "serve",
        "--web-listen",
        listen,
        "--web-root",
        root.to_str().context("web root")?,
        "--key-file",
        key,
        "--token-file",
        tokens,
        "--console",
        &console,
    ];
    let log = dir.join("gateway.log");
    let mut gateway = servers.spawn(&client, &args, &log)?;
    wait_listening(&client, listen, &mut gateway).await?;
    if servers.is_nobody() {
        common::check_unprivileged("gateway", gateway.id().context("the gateway's pid")?)?;
        common::check_unprivileged(
            "endpoint",
            endpoint_child.id().context("the endpoint's pid")?,
        )?;
    }
    let mut page = Page::open(
        "novnc.cjs",
        &client,
        &format!("http://{listen}/{page_path}"),
        dir,
    )
    .await?;
    session(
        &mut bed,
        &mut page,
        "npm through the gateway endpoint",
        0,
        false,
        dir,
    )
    .await?;
    page.quit().await?;
    let log = std::fs::read_to_string(&log)? + &std::fs::read_to_string(dir.join("endpoint.log"))?;
    ensure!(
        !log.contains(&token),
        "the gateway or the endpoint logged the token"
    );
    Ok(())
}
