//! The test guest's VGA text screen as QEMU's display shows it (the surface VNC serves, read
//! with QMP `screendump`): 720x400 (80x25 cells of 9x16 pixels), with typed keys echoed from
//! row 1, column 0. Under KVM+qboot no VGA BIOS sets the mode, so this checks the guest's own
//! VGA programming; under TCG SeaBIOS's VGA BIOS runs first.

use std::path::Path;
use std::time::Duration;

use guest::keymap;
use guest::report::Report;
use qmp::InputEvent;
use testbed::qemu::{kvm_usable, Accel, AccelChoice, Qemu, QemuConfig};

/// Generous: a bound on a wait for an event, not a timing assertion.
const WAIT: Duration = Duration::from_secs(60);

const WIDTH: usize = 720;
const HEIGHT: usize = 400;
const CELL_W: usize = 9;
const CELL_H: usize = 16;

/// Typed at row 1 from column 0: the two `a` cells must match, `b` must differ, the space is
/// blank. The cursor ends on column 4, which is not looked at (it blinks).
const TEXT: &str = "ab a";

/// A screendump: RGB pixels, row-major.
struct Screen {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Screen {
    /// Parses a binary PPM (P6, maxval 255) as QEMU's `screendump` writes it.
    fn parse_ppm(data: &[u8]) -> anyhow::Result<Screen> {
        // Header: four whitespace-separated tokens, then one whitespace byte, then pixels.
        let mut fields = Vec::new();
        let mut pos = 0;
        while fields.len() < 4 {
            while data.get(pos).is_some_and(u8::is_ascii_whitespace) {
                pos += 1;
            }
            let start = pos;
            while data.get(pos).is_some_and(|b| !b.is_ascii_whitespace()) {
                pos += 1;
            }
            anyhow::ensure!(pos > start, "PPM header cut short");
            fields.push(std::str::from_utf8(&data[start..pos])?);
        }
        anyhow::ensure!(fields[0] == "P6", "not a P6 PPM: {:?}", fields[0]);
        anyhow::ensure!(fields[3] == "255", "PPM maxval {}", fields[3]);
        let width: usize = fields[1].parse()?;
        let height: usize = fields[2].parse()?;
        anyhow::ensure!(width <= 4096 && height <= 4096, "PPM of {width}x{height}");
        let rgb = data
            .get(pos + 1..pos + 1 + width * height * 3)
            .ok_or_else(|| anyhow::anyhow!("PPM pixels cut short"))?
            .to_vec();
        Ok(Screen { width, height, rgb })
    }

    /// The pixels of text cell (`row`, `col`), RGB, row by row.
    fn cell(&self, row: usize, col: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(CELL_W * CELL_H * 3);
        for y in row * CELL_H..(row + 1) * CELL_H {
            let start = (y * self.width + col * CELL_W) * 3;
            out.extend_from_slice(&self.rgb[start..start + CELL_W * 3]);
        }
        out
    }

    /// Whether cell (`row`, `col`) is one colour (no glyph drawn in it).
    fn blank(&self, row: usize, col: usize) -> bool {
        let cell = self.cell(row, col);
        cell.chunks_exact(3).all(|p| p == &cell[..3])
    }
}

/// Takes a screendump into `dir` and parses it.
async fn screendump(qemu: &Qemu, dir: &Path) -> anyhow::Result<Screen> {
    let file = dir.join("screen.ppm");
    let _ = std::fs::remove_file(&file);
    qemu.qmp()
        .execute(
            "screendump",
            serde_json::json!({"filename": file.to_string_lossy()}),
        )
        .await?;
    Screen::parse_ppm(&std::fs::read(&file)?)
}

/// Types `text` key by key, each sent once the guest has reported the previous key's release
/// (the guest echoes a key before it reads the next byte, so the screen is written by then).
async fn type_text(qemu: &mut Qemu, text: &str) -> anyhow::Result<()> {
    for c in text.chars() {
        let stroke = keymap::stroke(c).ok_or_else(|| anyhow::anyhow!("no key for {c:?}"))?;
        anyhow::ensure!(!stroke.shift, "{c:?} needs Shift");
        qemu.qmp()
            .input_send_event(&[
                InputEvent::qcode(stroke.key.qcode, true),
                InputEvent::qcode(stroke.key.qcode, false),
            ])
            .await?;
        loop {
            let got = qemu.serial().next(WAIT, "the key's release").await?;
            if let Report::Key {
                down: false, code, ..
            } = got
            {
                anyhow::ensure!(
                    code == u16::from(stroke.key.code),
                    "released {code:#x}, typed {c:?}"
                );
                break;
            }
        }
    }
    Ok(())
}

/// Boots the guest on `accel`, checks the screen is 720x400 text with the title on row 0, types
/// TEXT and checks the echoed cells.
async fn check_screen(accel: AccelChoice, want: Accel) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = QemuConfig::new(dir.path());
    cfg.accel = accel;
    let mut qemu = Qemu::launch(cfg).await?;
    anyhow::ensure!(qemu.accel() == want, "running on {}", qemu.accel());
    qemu.wait_ready(WAIT).await?;

    let before = screendump(&qemu, dir.path()).await?;
    assert_eq!(
        (before.width, before.height),
        (WIDTH, HEIGHT),
        "not the 80x25 text screen (640x480 is QEMU's \"not initialized\" placeholder)"
    );
    // Row 0 is the status line " dmore test guest": column 1 holds a glyph.
    assert!(!before.blank(0, 1), "no title on the status line");
    for col in 1..TEXT.len() {
        assert!(
            before.blank(1, col),
            "cell (1, {col}) not blank before typing"
        );
    }

    type_text(&mut qemu, TEXT).await?;
    let after = screendump(&qemu, dir.path()).await?;
    let result = (|| {
        anyhow::ensure!(
            (after.width, after.height) == (WIDTH, HEIGHT),
            "screen resized"
        );
        anyhow::ensure!(!after.blank(1, 0), "`a` not echoed at (1, 0)");
        anyhow::ensure!(!after.blank(1, 1), "`b` not echoed at (1, 1)");
        anyhow::ensure!(after.blank(1, 2), "the space at (1, 2) is not blank");
        anyhow::ensure!(
            after.cell(1, 0) == after.cell(1, 3),
            "the two `a` cells differ"
        );
        anyhow::ensure!(
            after.cell(1, 0) != after.cell(1, 1),
            "`a` and `b` look the same"
        );
        Ok(())
    })();
    if let Err(e) = result {
        let kept = std::env::temp_dir().join(format!("guest_screen_{want}.ppm"));
        let _ = std::fs::copy(dir.path().join("screen.ppm"), &kept);
        anyhow::bail!("{e} (screendump kept in {})", kept.display());
    }
    let status = qemu.shutdown(WAIT).await?;
    assert!(status.success(), "QEMU exited with {status}");
    Ok(())
}

#[tokio::test]
async fn kvm_qboot_shows_typed_keys_on_the_text_screen() -> anyhow::Result<()> {
    if !kvm_usable() {
        println!("skipped: /dev/kvm does not open, so there is no KVM+qboot to test");
        return Ok(());
    }
    check_screen(AccelChoice::Kvm, Accel::Kvm).await
}

#[tokio::test]
async fn tcg_shows_typed_keys_on_the_text_screen() -> anyhow::Result<()> {
    check_screen(AccelChoice::Tcg, Accel::Tcg).await
}
