//! Real, unmodified viewers against a tiny server built on the `rfb` crate: `vncdotool` and
//! the TigerVNC viewer (under Xvfb), with security None and with VNC Authentication. Each
//! viewer must receive a frame in the encoding it prefers — vncdotool ZRLE or Hextile as it is
//! told, TigerVNC Tight (its default) — checked by the pixels it shows, and the keys it types
//! must reach the server.

use std::time::Duration;

use anyhow::{ensure, Context};
use rfb::framebuffer::{Framebuffer, UpdateEncoder};
use rfb::{
    ClientMessage, Encoding, Password, PixelFormat, SecurityType, ServerConfig, ServerInit,
    ServerMessage, Version,
};
use testbed::viewers::{Image, TigerVnc, ViewerAuth, Vncdo, VncdoEncoding, Xvfb, FULL_COLOUR};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const WIDTH: u16 = 320;
const HEIGHT: u16 = 200;
const NAME: &str = "dmore-pattern";
const PASSWORD: &str = "s3cret";
/// The first row of the pattern's gradient, sent as a rectangle of its own.
const GRADIENT_FROM: usize = 180;

/// Eight colour bars over a checkerboard strip over a gradient: many runs and few colours,
/// so ZRLE's palette and RLE tiles and Tight's palette are exercised, then many colours (Tight's
/// full-colour stream), and any misplaced or miscoloured pixel shows.
fn pattern() -> Framebuffer {
    const BARS: [u32; 8] = [
        0xffffff, 0xffff00, 0x00ffff, 0x00ff00, 0xff00ff, 0xff0000, 0x0000ff, 0x000000,
    ];
    let mut fb = Framebuffer::new(WIDTH, HEIGHT);
    let mut view = fb.view_mut(0, 0, WIDTH, HEIGHT).expect("whole framebuffer");
    for y in 0..usize::from(HEIGHT) {
        for (x, pixel) in view.row_mut(y).iter_mut().enumerate() {
            *pixel = if y < 150 {
                BARS[x * BARS.len() / usize::from(WIDTH)]
            } else if y >= GRADIENT_FROM {
                u32::try_from(x * 0x0103 + y * 0x0a_0000).unwrap_or(0) & 0x00ff_ffff
            } else if (x / 4 + y / 4) % 2 == 0 {
                0x203040
            } else {
                0xc0b0a0
            };
        }
    }
    fb
}

/// What the tiny server saw from one viewer.
#[derive(Debug)]
enum Seen {
    /// The encoding each full frame was sent with.
    Frame(Encoding),
    /// A key pressed, as a keysym.
    KeyDown(u32),
}

/// Serves `fb` to every viewer that connects: a full frame for each non-incremental request
/// (incremental ones wait: nothing ever changes), and reports frames and key presses.
async fn serve(
    listener: TcpListener,
    password: Option<&'static str>,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let fb = pattern();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let config = ServerConfig {
            version: Version::V3_8,
            security: match password {
                Some(_) => vec![SecurityType::VncAuth],
                None => vec![SecurityType::None],
            },
            password: password.map(|p| Password(p.as_bytes().to_vec())),
            challenge: *b"0123456789abcdef",
            init: ServerInit {
                width: WIDTH,
                height: HEIGHT,
                pixel_format: PixelFormat::RGBX32_LE,
                name: NAME.into(),
            },
        };
        let (fb, seen) = (fb.clone(), seen.clone());
        tokio::spawn(async move {
            let Ok((_, mut reader, mut writer)) = vnc::server::accept(stream, config).await else {
                return;
            };
            let mut encoder = UpdateEncoder::new();
            while let Ok(message) = reader.read_message().await {
                match message {
                    ClientMessage::SetPixelFormat(pf) if encoder.set_pixel_format(pf).is_err() => {
                        return;
                    }
                    ClientMessage::SetEncodings(list) => encoder.set_encodings(&list),
                    ClientMessage::FramebufferUpdateRequest {
                        incremental: false, ..
                    } => {
                        // Two rectangles: few colours above, many below.
                        let split = GRADIENT_FROM as u16;
                        let (Ok(top), Ok(bottom)) = (
                            encoder.encode(&fb, 0, 0, WIDTH, split),
                            encoder.encode(&fb, 0, split, WIDTH, HEIGHT - split),
                        ) else {
                            return;
                        };
                        let encoding = top.payload.encoding();
                        let update = ServerMessage::FramebufferUpdate(vec![top, bottom]);
                        if writer.send(&update).await.is_err() {
                            return;
                        }
                        let _ = seen.send(Seen::Frame(encoding));
                    }
                    ClientMessage::KeyEvent { down: true, keysym }
                    | ClientMessage::QemuExtendedKeyEvent {
                        down: true, keysym, ..
                    } => {
                        let _ = seen.send(Seen::KeyDown(keysym));
                    }
                    _ => {}
                }
            }
        });
    }
}

async fn start_server(
    password: Option<&'static str>,
) -> anyhow::Result<(u16, mpsc::UnboundedReceiver<Seen>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(serve(listener, password, tx));
    Ok((port, rx))
}

/// Collects what the server saw until `keys` key presses arrived (or `wait` passed).
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    keys: usize,
    wait: Duration,
) -> (Vec<Encoding>, String) {
    let (mut frames, mut typed) = (Vec::new(), String::new());
    let deadline = tokio::time::Instant::now() + wait;
    while typed.chars().count() < keys {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Frame(encoding))) => frames.push(encoding),
            Ok(Some(Seen::KeyDown(keysym))) => typed.extend(char::from_u32(keysym)),
            _ => break,
        }
    }
    while let Ok(Seen::Frame(encoding)) = rx.try_recv() {
        frames.push(encoding);
    }
    (frames, typed)
}

fn assert_shows_pattern(image: &Image, who: &str) -> anyhow::Result<()> {
    let expected = pattern();
    let shown = image
        .crop(0, 0, WIDTH.into(), HEIGHT.into())
        .with_context(|| {
            format!(
                "{who}'s image is {}x{}, smaller than the desktop",
                image.width, image.height
            )
        })?;
    let wrong = shown
        .pixels
        .iter()
        .zip(expected.pixels())
        .filter(|(a, b)| a != b)
        .count();
    if wrong > 0 {
        let path = std::env::temp_dir().join(format!("dmore-{who}.png"));
        if image.save_png(&path).is_ok() {
            eprintln!("{who}'s screen saved to {}", path.display());
        }
    }
    ensure!(
        wrong == 0,
        "{who} shows {wrong} of {} pixels differently from the server",
        shown.pixels.len()
    );
    Ok(())
}

async fn vncdotool_round(
    password: Option<&'static str>,
    asked: VncdoEncoding,
) -> anyhow::Result<()> {
    let (port, mut seen) = start_server(password).await?;
    let vncdo = Vncdo::new(
        format!("127.0.0.1::{port}"),
        password.map(str::to_owned),
        asked,
    );
    let want = match asked {
        VncdoEncoding::Raw => Encoding::Raw,
        VncdoEncoding::Zrle => Encoding::Zrle,
        VncdoEncoding::Hextile => Encoding::Hextile,
    };
    let image = vncdo.capture().await?;
    assert_shows_pattern(&image, "vncdotool")?;
    vncdo.type_text("dmore").await?;
    let (frames, typed) = collect(&mut seen, 5, Duration::from_secs(30)).await;
    ensure!(
        frames.contains(&want),
        "no {want:?} frame was sent to vncdotool: {frames:?}"
    );
    ensure!(
        typed == "dmore",
        "the server received {typed:?} from vncdotool, not \"dmore\""
    );
    println!(
        "vncdotool (password: {}): {want:?} frame shown exactly, keys {typed:?} received",
        password.is_some()
    );
    Ok(())
}

#[tokio::test]
async fn vncdotool_without_password() -> anyhow::Result<()> {
    vncdotool_round(None, VncdoEncoding::Zrle).await
}

#[tokio::test]
async fn vncdotool_with_vnc_authentication() -> anyhow::Result<()> {
    vncdotool_round(Some(PASSWORD), VncdoEncoding::Zrle).await
}

#[tokio::test]
async fn vncdotool_hextile() -> anyhow::Result<()> {
    vncdotool_round(None, VncdoEncoding::Hextile).await
}

async fn tigervnc_round(password: Option<&'static str>) -> anyhow::Result<()> {
    let (port, mut seen) = start_server(password).await?;
    let xvfb = Xvfb::start().await?;
    let auth = match password {
        Some(p) => ViewerAuth::Password(p.into()),
        None => ViewerAuth::None,
    };
    let viewer = TigerVnc::connect(
        &xvfb,
        &format!("127.0.0.1::{port}"),
        auth,
        NAME,
        None,
        FULL_COLOUR,
    )
    .await?;
    // The window exists before the first frame is drawn: wait until the pattern shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let image = viewer.screenshot().await?;
        match assert_shows_pattern(&image, "TigerVNC") {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    viewer.type_text("dmore").await?;
    let (frames, typed) = collect(&mut seen, 5, Duration::from_secs(30)).await;
    ensure!(
        frames.contains(&Encoding::Tight),
        "no Tight frame was sent to TigerVNC: {frames:?}"
    );
    ensure!(
        typed == "dmore",
        "the server received {typed:?} from TigerVNC, not \"dmore\""
    );
    println!(
        "TigerVNC (password: {}): Tight frame shown exactly, keys {typed:?} received",
        password.is_some()
    );
    Ok(())
}

#[tokio::test]
async fn tigervnc_without_password() -> anyhow::Result<()> {
    tigervnc_round(None).await
}

#[tokio::test]
async fn tigervnc_with_vnc_authentication() -> anyhow::Result<()> {
    tigervnc_round(Some(PASSWORD)).await
}

#[tokio::test]
async fn vncdotool_with_a_wrong_password_is_refused() -> anyhow::Result<()> {
    let (port, mut seen) = start_server(Some(PASSWORD)).await?;
    let vncdo = Vncdo::new(
        format!("127.0.0.1::{port}"),
        Some("wrong".into()),
        VncdoEncoding::Zrle,
    );
    let outcome = vncdo.type_text("x").await;
    ensure!(outcome.is_err(), "vncdo with a wrong password succeeded");
    // Nothing should come: give a refused viewer's bytes a moment to arrive if they were sent.
    let (frames, typed) = collect(&mut seen, 1, Duration::from_secs(2)).await;
    ensure!(
        frames.is_empty() && typed.is_empty(),
        "a refused viewer got {frames:?} / sent {typed:?}"
    );
    Ok(())
}
