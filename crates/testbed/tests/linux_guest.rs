//! The Linux test guest (Debian's kernel, TCG) in each combination of input device, display
//! and firmware: it boots, a viewer's keys and clicks through QEMU's own VNC (dmore's RFB
//! client on QEMU's VNC socket) reach its kernel and are reported exactly, once each, in
//! order, from the device the combination puts them on; Caps Lock lights its LED, and the
//! LED state reaches the viewer (QEMU's LED pseudo-encoding: the guest's kernel sent it to the
//! keyboard device); and it draws on demand, as QEMU's `screendump` shows.
//!
//! Input is paced by the guest: one keystroke or click is sent, and the next only once its
//! reports arrived (QEMU's USB HID queue holds 16 events; DESIGN.md measured USB keyboards
//! exact only up to ~41 events/s under TCG).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use linux_guest::keymap::{evdev_from_set1, BTN_LEFT, BTN_MIDDLE, BTN_RIGHT};
use linux_guest::launch::{Display, Firmware, Input, LinuxOptions};
use linux_guest::report::{Input as Event, Report};
use rfb::{ClientConfig, ClientMessage, Encoding, RectPayload, ServerMessage};
use testbed::qemu::{Accel, Qemu, QemuConfig};
use tokio::net::UnixStream;
use vnc::client::{ClientReader, ClientWriter, Setup};

/// A bound on a wait, not a timing assertion: boots under TCG on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

/// Typed with Shift where a US keyboard needs it.
const TEXT: &str = "Hello, World! dmore 42";

const KEY_LEFTSHIFT: u16 = 42;
const KEY_CAPSLOCK: u16 = 58;

/// A booted guest and what it said about itself.
struct Guest {
    qemu: Qemu,
    keyboard: u32,
    pointer: u32,
    framebuffer: Option<(u32, u32)>,
    keys: u64,
    buttons: u64,
}

async fn boot(dir: &Path, options: LinuxOptions) -> anyhow::Result<Guest> {
    let started = Instant::now();
    let mut qemu = Qemu::launch(QemuConfig::linux(dir, options)).await?;
    ensure!(qemu.accel() == Accel::Tcg, "the Linux guest runs under TCG");
    let mut devices = Vec::new();
    let mut framebuffer = None;
    let mut booted_ms = 0;
    loop {
        match qemu.serial().next_linux(WAIT, "READY").await? {
            Report::Ready => break,
            Report::Device {
                index, bus, name, ..
            } => devices.push((index, bus, name)),
            Report::Framebuffer { width, height, .. } => framebuffer = Some((width, height)),
            Report::Booted { uptime_ms } => booted_ms = uptime_ms,
            _ => {}
        }
    }
    println!(
        "{options:?}: READY {:.1} s after launch ({booted_ms} ms after the kernel started); \
         devices {devices:?}; framebuffer {framebuffer:?}",
        started.elapsed().as_secs_f64()
    );
    let find = |name: &str| {
        devices
            .iter()
            .find(|(_, _, n)| n == name)
            .map(|(i, _, _)| *i)
            .with_context(|| format!("no input device {name:?} in {devices:?}"))
    };
    let (keyboard, pointer) = match options.input {
        Input::Ps2 => (
            find("AT Translated Set 2 keyboard")?,
            find("ImExPS/2 Generic Explorer Mouse")?,
        ),
        Input::Usb => (
            find("QEMU QEMU USB Keyboard")?,
            find("QEMU QEMU USB Tablet")?,
        ),
    };
    Ok(Guest {
        qemu,
        keyboard,
        pointer,
        framebuffer,
        keys: 0,
        buttons: 0,
    })
}

/// A viewer on QEMU's own VNC server.
struct Viewer {
    reader: ClientReader<UnixStream>,
    writer: ClientWriter<UnixStream>,
}

impl Viewer {
    /// Reads until QEMU reports keyboard LED state `mask` (scroll 1, num 2, caps 4).
    async fn wait_leds(&mut self, mask: u8) -> anyhow::Result<()> {
        let mut seen = Vec::new();
        loop {
            let message = tokio::time::timeout(WAIT, self.reader.read_message())
                .await
                .with_context(|| format!("no LED state {mask} from QEMU; seen {seen:?}"))??;
            if let ServerMessage::FramebufferUpdate(rects) = message {
                for rect in rects {
                    if let RectPayload::QemuLedState(state) = rect.payload {
                        if state == mask {
                            return Ok(());
                        }
                        seen.push(state);
                    }
                }
            }
        }
    }
}

async fn viewer(qemu: &Qemu) -> anyhow::Result<Viewer> {
    let stream = UnixStream::connect(qemu.vnc_path()).await?;
    let config = ClientConfig::no_auth();
    // Plain keysyms, as most viewers send them; QEMU maps them with its en-us keymap.
    let setup = Setup {
        pixel_format: None,
        encodings: vec![Encoding::Raw, Encoding::QemuLedState],
    };
    let (_done, reader, writer) = vnc::client::connect(stream, config, &setup).await?;
    Ok(Viewer { reader, writer })
}

impl Guest {
    /// Expects exactly `want` (key and button events, and LED lines), in order.
    async fn expect(&mut self, want: &[Report]) -> anyhow::Result<()> {
        for w in want {
            let got = self.qemu.serial().next_linux(WAIT, &w.to_string()).await?;
            ensure!(got == *w, "expected `{w}`, the guest reported `{got}`");
        }
        Ok(())
    }

    fn key(&mut self, code: u16, value: i32) -> Report {
        self.keys += 1;
        Report::Input(Event {
            button: false,
            count: self.keys,
            device: self.keyboard,
            code,
            value,
        })
    }

    fn button(&mut self, code: u16, value: i32) -> Report {
        self.buttons += 1;
        Report::Input(Event {
            button: true,
            count: self.buttons,
            device: self.pointer,
            code,
            value,
        })
    }

    /// Types TEXT (Shift held for the characters that need it) and Caps Lock.
    async fn type_text(&mut self, viewer: &mut Viewer) -> anyhow::Result<()> {
        for c in TEXT.chars() {
            let stroke = guest::keymap::stroke(c).with_context(|| format!("no key for {c:?}"))?;
            let keysym = guest::keymap::keysym(c).with_context(|| format!("no keysym {c:?}"))?;
            let code = evdev_from_set1(u16::from(stroke.key.code)).context("no evdev code")?;
            let event = |down, keysym| ClientMessage::KeyEvent { down, keysym };
            let (send, want) = if stroke.shift {
                let send = [
                    event(true, 0xffe1),
                    event(true, keysym),
                    event(false, keysym),
                    event(false, 0xffe1),
                ];
                let want = [
                    self.key(KEY_LEFTSHIFT, 1),
                    self.key(code, 1),
                    self.key(code, 0),
                    self.key(KEY_LEFTSHIFT, 0),
                ];
                (send.to_vec(), want.to_vec())
            } else {
                let send = [event(true, keysym), event(false, keysym)];
                (send.to_vec(), vec![self.key(code, 1), self.key(code, 0)])
            };
            viewer.writer.send_all(&send).await?;
            self.expect(&want).await?;
        }
        let caps = |down| ClientMessage::KeyEvent {
            down,
            keysym: 0xffe5,
        };
        viewer.writer.send_all(&[caps(true), caps(false)]).await?;
        let (down, up) = (self.key(KEY_CAPSLOCK, 1), self.key(KEY_CAPSLOCK, 0));
        self.expect(&[down, Report::Leds(4), up]).await?;
        viewer.wait_leds(4).await?;
        println!("Caps Lock: the guest set its LED and the viewer was told");
        println!("{} key events reported exactly", self.keys);
        Ok(())
    }

    /// Clicks left, middle, right, twice each, at a point on the screen.
    async fn click(&mut self, viewer: &mut Viewer) -> anyhow::Result<()> {
        for _ in 0..2 {
            for (mask, code) in [(1u8, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)] {
                for buttons in [mask, 0] {
                    viewer
                        .writer
                        .send(&ClientMessage::PointerEvent {
                            buttons,
                            x: 100,
                            y: 100,
                        })
                        .await?;
                    let want = self.button(code, i32::from(buttons != 0));
                    self.expect(&[want]).await?;
                }
            }
        }
        println!("{} button events reported exactly", self.buttons);
        Ok(())
    }

    /// Scrolls the console, then (graphics) draws a frame, checking QEMU's screendump.
    async fn draw(&mut self, dir: &Path) -> anyhow::Result<()> {
        let before = self.screendump(dir).await?;
        self.qemu.serial().send_line("SCROLL 40").await?;
        let drew = self.qemu.serial().next_linux(WAIT, "DREW LINE").await?;
        ensure!(
            drew == Report::Drew {
                frames: false,
                count: 40
            },
            "{drew}"
        );
        let scrolled = self.wait_screen(dir, |s| s != &before).await?;
        println!("40 lines scrolled: screen {}x{}", scrolled.0, scrolled.1);
        let Some((width, height)) = self.framebuffer else {
            return Ok(());
        };
        ensure!(
            (scrolled.0, scrolled.1) == (width as usize, height as usize),
            "screendump {}x{} is not the framebuffer's {width}x{height}",
            scrolled.0,
            scrolled.1
        );
        ensure!(width >= 1024 && height >= 768, "{width}x{height}");
        self.qemu.serial().send_line("FRAME 1").await?;
        let drew = self.qemu.serial().next_linux(WAIT, "DREW FRAME").await?;
        ensure!(
            drew == Report::Drew {
                frames: true,
                count: 1
            },
            "{drew}"
        );
        // Frame 1: a 128x128 square at (97, 61) in 0x3779b9 (see the init's `frame`).
        let (x, y) = (97 + 64, 61 + 64);
        self.wait_screen(dir, |s| s.2.get(y * s.0 + x) == Some(&0x3779b9))
            .await?;
        println!("frame 1 drawn on the {width}x{height} framebuffer");
        Ok(())
    }

    /// Runs the animation until QEMU's screen has changed twice, then stops it: the guest
    /// reports at least two frames more than it had drawn.
    async fn animate(&mut self, dir: &Path, frames_before: u64) -> anyhow::Result<()> {
        let mut screen = self.screendump(dir).await?;
        self.qemu.serial().send_line("ANIM 20").await?;
        for _ in 0..2 {
            screen = self.wait_screen(dir, |s| s != &screen).await?;
        }
        self.qemu.serial().send_line("ANIM 0").await?;
        match self.qemu.serial().next_linux(WAIT, "DREW FRAME").await? {
            Report::Drew {
                frames: true,
                count,
            } if count >= frames_before + 2 => {
                println!("animation: {} frames", count - frames_before);
                Ok(())
            }
            other => bail!("after two screen changes the guest reported `{other}`"),
        }
    }

    async fn screendump(&self, dir: &Path) -> anyhow::Result<(usize, usize, Vec<u32>)> {
        let file = dir.join("screen.ppm");
        self.qemu
            .qmp()
            .execute("screendump", serde_json::json!({ "filename": file }))
            .await?;
        let image = testbed::viewers::parse_ppm(&std::fs::read(&file)?)?;
        Ok((image.width, image.height, image.pixels))
    }

    /// QEMU's screen once it satisfies `ok` (the guest's console and framebuffer reach QEMU's
    /// display a little after the guest wrote them).
    async fn wait_screen(
        &self,
        dir: &Path,
        ok: impl Fn(&(usize, usize, Vec<u32>)) -> bool,
    ) -> anyhow::Result<(usize, usize, Vec<u32>)> {
        for _ in 0..300 {
            let screen = self.screendump(dir).await?;
            if ok(&screen) {
                return Ok(screen);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the screen never showed what the guest drew")
    }
}

/// Boots `options`, types, clicks and draws, and shuts the guest down.
async fn exercise(options: LinuxOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut guest = boot(dir.path(), options).await?;
    let mut viewer = viewer(&guest.qemu).await?;
    guest.type_text(&mut viewer).await?;
    guest.click(&mut viewer).await?;
    guest.draw(dir.path()).await?;
    let frames = u64::from(guest.framebuffer.is_some());
    guest.animate(dir.path(), frames).await?;
    let status = guest.qemu.shutdown(WAIT).await?;
    ensure!(status.success(), "QEMU exited with {status}");
    Ok(())
}

#[tokio::test]
async fn ps2_text_seabios() -> anyhow::Result<()> {
    exercise(LinuxOptions::default()).await
}

#[tokio::test]
async fn usb_graphics_seabios() -> anyhow::Result<()> {
    exercise(LinuxOptions {
        input: Input::Usb,
        display: Display::Graphics,
        firmware: Firmware::SeaBios,
        ..LinuxOptions::default()
    })
    .await
}

#[tokio::test]
async fn ps2_graphics_ovmf() -> anyhow::Result<()> {
    exercise(LinuxOptions {
        input: Input::Ps2,
        display: Display::Graphics,
        firmware: Firmware::Ovmf,
        ..LinuxOptions::default()
    })
    .await
}

#[tokio::test]
async fn usb_text_ovmf() -> anyhow::Result<()> {
    exercise(LinuxOptions {
        input: Input::Usb,
        display: Display::Text,
        firmware: Firmware::Ovmf,
        ..LinuxOptions::default()
    })
    .await
}
