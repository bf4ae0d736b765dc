//! The QMP lane's key numbers against QEMU's own VNC server, on QEMU's shipped keymaps.
//!
//! For each layout, one QEMU with `-k LAYOUT` (stopped at `-incoming defer`: QEMU's VNC
//! server translates and traces a key before the run state is checked, so no guest runs)
//! takes, as plain RFB KeyEvents on its VNC socket, every keysym its keymap file defines,
//! typed alone and with Shift, AltGr, Shift+AltGr and Ctrl held. QEMU's `vnc_key_event_map`
//! trace says which key number it chose for each; the console's translation
//! ([`console::keymap::Keyboard`], what the QMP lane sends) must choose the same, event for
//! event. The connection announces QEMU's LED-state pseudo-encoding as the console's does
//! (QEMU's lock-key sync is then off for it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use console::keymap::{Keyboard, Keymap, Layout, ALTGR, CTRL, SHIFT};
use rfb::{ClientConfig, ClientMessage, Encoding};
use testbed::qemu::{Qemu, QemuConfig};
use tokio::net::UnixStream;

/// A bound on each wait (not a timed assertion).
const DEADLINE: Duration = Duration::from_secs(120);
/// Shift_L, Control_L.
const SHIFT_L: u32 = 0xffe1;
const CONTROL_L: u32 = 0xffe3;

/// One key event as sent, and the key number the console's translation gives it (0: none).
struct Sent {
    down: bool,
    keysym: u32,
    expected: u16,
}

#[tokio::test]
async fn qmp_lane_numbers_equal_qemus_vnc_numbers_on_shipped_keymaps() -> anyhow::Result<()> {
    let mut checked = 0usize;
    for layout in ["en-us", "de", "fr", "sv", "ja"] {
        let keymap = Keymap::load(layout).with_context(|| {
            format!("QEMU's keymap {layout} (install qemu-system-data, as .ci/setup does)")
        })?;
        checked += check_layout(layout, Arc::new(keymap)).await?;
    }
    println!("{checked} key events matched QEMU's own choice");
    Ok(())
}

async fn check_layout(layout: &str, keymap: Arc<Keymap>) -> anyhow::Result<usize> {
    let dir = tempfile::Builder::new()
        .prefix("dmore-keymap-")
        .tempdir_in("/tmp")?;
    let trace = dir.path().join("trace.log");
    let mut cfg = QemuConfig::new(dir.path());
    cfg.incoming = true;
    cfg.keymap = Some(layout.to_owned());
    cfg.extra_args = vec![
        "-trace".into(),
        "vnc_key_event_map".into(),
        "-D".into(),
        trace.clone().into(),
    ];
    let qemu = Qemu::launch(cfg).await?;

    let sent = plan(&keymap);
    let stream = UnixStream::connect(qemu.vnc_path()).await?;
    let client = ClientConfig::no_auth();
    let setup = vnc::client::Setup {
        pixel_format: None,
        encodings: vec![
            Encoding::Raw,
            Encoding::QemuExtendedKeyEvent,
            Encoding::QemuLedState,
        ],
    };
    let (_done, _reader, mut writer) =
        tokio::time::timeout(DEADLINE, vnc::client::connect(stream, client, &setup))
            .await
            .context("VNC handshake timed out")??;
    let messages: Vec<ClientMessage> = sent
        .iter()
        .map(|s| ClientMessage::KeyEvent {
            down: s.down,
            keysym: s.keysym,
        })
        .collect();
    for chunk in messages.chunks(512) {
        writer.send_all(chunk).await?;
    }
    let chosen = read_trace(&trace, sent.len()).await?;
    for (i, (s, got)) in sent.iter().zip(&chosen).enumerate() {
        if s.keysym != got.0 || s.down != got.1 || s.expected != got.2 {
            bail!(
                "{layout}: event {i} (down {}, keysym {:#x}): the console chose {:#x}, QEMU's \
                 VNC server {:#x} (its trace: down {}, keysym {:#x})",
                s.down,
                s.keysym,
                s.expected,
                got.2,
                got.1,
                got.0
            );
        }
    }
    let multi = keymap.entries().filter(|(_, c)| c.len() > 1).count();
    println!(
        "{layout}: {} keysyms ({multi} with several keycodes), {} key events: same numbers",
        keymap.entries().count(),
        sent.len()
    );
    drop(qemu);
    Ok(sent.len())
}

/// Every keysym of the keymap, pressed and released alone and inside each modifier
/// combination, with the numbers the console's translation gives (QEMU's own keyboard state
/// takes every event, also those without a key, so the model applies them all).
fn plan(keymap: &Arc<Keymap>) -> Vec<Sent> {
    let mut keysyms: Vec<u32> = keymap.entries().map(|(k, _)| k).collect();
    keysyms.sort_unstable();
    // The layout's AltGr: a keysym on the right Alt key alone.
    let altgr = keysyms
        .iter()
        .copied()
        .find(|k| keymap.codes(*k) == [0xb8])
        .unwrap_or(0xfe03);
    let combos: [&[u32]; 5] = [&[], &[SHIFT_L], &[altgr], &[SHIFT_L, altgr], &[CONTROL_L]];
    let mut kb = Keyboard::new(Layout {
        keymap: keymap.clone(),
        given: true,
    });
    let mut sent = Vec::new();
    let mut event = |kb: &mut Keyboard, down: bool, keysym: u32| {
        let expected = kb.translate(down, keysym, None).unwrap_or(0);
        kb.apply(expected, down);
        sent.push(Sent {
            down,
            keysym,
            expected,
        });
    };
    for combo in combos {
        for &k in &keysyms {
            for &m in combo {
                event(&mut kb, true, m);
            }
            event(&mut kb, true, k);
            event(&mut kb, false, k);
            for &m in combo.iter().rev() {
                event(&mut kb, false, m);
            }
        }
    }
    // The modifier flags are what the test is about: make sure the layout has some.
    debug_assert!(keysyms.iter().any(|k| keymap
        .codes(*k)
        .iter()
        .any(|c| c & (SHIFT | ALTGR | CTRL) != 0)));
    sent
}

/// QEMU's `vnc_key_event_map` lines (`down D, sym 0xS -> keycode 0xK [name]`) once `count`
/// are there: (keysym, down, key number).
async fn read_trace(path: &Path, count: usize) -> anyhow::Result<Vec<(u32, bool, u16)>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("vnc_key_event_map ").map(|(_, r)| r))
            .collect();
        if lines.len() >= count {
            return lines.iter().take(count).map(|l| parse(l)).collect();
        }
        if Instant::now() > deadline {
            bail!(
                "QEMU traced {} of {count} key events in {DEADLINE:?}",
                lines.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn parse(line: &str) -> anyhow::Result<(u32, bool, u16)> {
    let bad = || format!("unexpected trace line {line:?}");
    let rest = line.strip_prefix("down ").with_context(bad)?;
    let (down, rest) = rest.split_once(", sym 0x").with_context(bad)?;
    let (sym, rest) = rest.split_once(" -> keycode 0x").with_context(bad)?;
    let (code, _) = rest.split_once(' ').with_context(bad)?;
    Ok((
        u32::from_str_radix(sym, 16).with_context(bad)?,
        down == "1",
        u16::from_str_radix(code, 16).with_context(bad)?,
    ))
}
