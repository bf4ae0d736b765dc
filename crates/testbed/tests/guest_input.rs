//! The test guest under KVM+qboot and under TCG counts key presses, releases and mouse button
//! clicks exactly, in order, with the right scancodes, and answers Caps Lock with `L 4`.

use std::time::Duration;

use guest::keymap;
use guest::report::{Button, Report};
use qmp::{InputButton, InputEvent};
use testbed::qemu::{kvm_usable, Accel, AccelChoice, Qemu, QemuConfig};

/// Generous: a bound on a wait for an event, not a timing assertion.
const WAIT: Duration = Duration::from_secs(60);

/// 20 keys, all typed without Shift.
const TEXT: &str = "dmore test guest 123";

async fn launch(accel: AccelChoice, dir: &std::path::Path) -> anyhow::Result<Qemu> {
    let mut cfg = QemuConfig::new(dir);
    cfg.accel = accel;
    let mut qemu = Qemu::launch(cfg).await?;
    qemu.wait_ready(WAIT).await?;
    Ok(qemu)
}

async fn next(qemu: &mut Qemu, what: &str) -> anyhow::Result<Report> {
    Ok(qemu.serial().next(WAIT, what).await?)
}

/// Sends the events in one `input-send-event` and expects exactly `expected` back, in order.
async fn send_expect(
    qemu: &mut Qemu,
    events: &[InputEvent],
    expected: &[Report],
) -> anyhow::Result<()> {
    qemu.qmp().input_send_event(events).await?;
    for want in expected {
        let got = next(qemu, &want.to_string()).await?;
        anyhow::ensure!(got == *want, "expected `{want}`, guest reported `{got}`");
    }
    Ok(())
}

fn key(count: u64, down: bool, code: u8) -> Report {
    Report::Key {
        count,
        down,
        code: u16::from(code),
    }
}

fn button(count: u64, down: bool, button: Button) -> Report {
    Report::Button {
        count,
        down,
        button,
    }
}

/// Types TEXT, presses Caps Lock, clicks 5 left and 3 right, and checks every report.
async fn exercise(qemu: &mut Qemu) -> anyhow::Result<()> {
    let mut keys = 0u64;
    // Each key goes down and up in one command (2 bytes in the 16-byte PS/2 queue), and the
    // next is sent only once both were reported: paced by the guest, not by sleeps.
    for c in TEXT.chars() {
        let stroke = keymap::stroke(c).ok_or_else(|| anyhow::anyhow!("no key for {c:?}"))?;
        anyhow::ensure!(!stroke.shift, "{c:?} needs Shift");
        let (qcode, code) = (stroke.key.qcode, stroke.key.code);
        send_expect(
            qemu,
            &[
                InputEvent::qcode(qcode, true),
                InputEvent::qcode(qcode, false),
            ],
            &[key(keys + 1, true, code), key(keys + 2, false, code)],
        )
        .await?;
        keys += 2;
    }
    assert_eq!(keys, 40, "20 presses and 20 releases");

    // Caps Lock: the guest sends the LED command and reports the mask once acknowledged. The
    // L line may come before or after the release's report.
    qemu.qmp()
        .input_send_event(&[
            InputEvent::qcode("caps_lock", true),
            InputEvent::qcode("caps_lock", false),
        ])
        .await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(qemu, "Caps Lock reports").await?);
    }
    let caps = keymap::CAPS_LOCK_CODE;
    let keys_only: Vec<Report> = got
        .iter()
        .copied()
        .filter(|r| !matches!(r, Report::Leds(_)))
        .collect();
    assert_eq!(
        keys_only,
        [key(keys + 1, true, caps), key(keys + 2, false, caps)],
        "{got:?}"
    );
    assert_eq!(got.first(), Some(&key(keys + 1, true, caps)), "{got:?}");
    assert!(
        got.contains(&Report::Leds(4)),
        "no `L 4` after Caps Lock: {got:?}"
    );
    keys += 2;

    // Buttons: press and release in separate commands (QEMU's PS/2 mouse sends one packet per
    // command with the buttons' final state, so both in one command would cancel out).
    let mut clicks = 0u64;
    for (qemu_button, reported, times) in [
        (InputButton::Left, Button::Left, 5),
        (InputButton::Right, Button::Right, 3),
    ] {
        for _ in 0..times {
            for down in [true, false] {
                clicks += 1;
                send_expect(
                    qemu,
                    &[InputEvent::Btn {
                        button: qemu_button,
                        down,
                    }],
                    &[button(clicks, down, reported)],
                )
                .await?;
            }
        }
    }
    assert_eq!(clicks, 16, "8 clicks, each a press and a release");

    // A last key proves nothing else was reported in between: its count follows on exactly.
    let a = keymap::scancode('a').ok_or_else(|| anyhow::anyhow!("no key for a"))?;
    send_expect(
        qemu,
        &[InputEvent::qcode("a", true), InputEvent::qcode("a", false)],
        &[key(keys + 1, true, a), key(keys + 2, false, a)],
    )
    .await?;

    // The guest echoed the text on screen row 1, and the last `a` as `A` (Caps Lock is on).
    // Under KVM+qboot too: the guest sets the VGA text mode itself (see also guest_screen.rs).
    let row = screen_row(qemu, 1).await?;
    assert_eq!(
        row.trim_end_matches([' ', '\0']),
        format!("{TEXT}A"),
        "screen row 1"
    );
    Ok(())
}

/// The characters of VGA text row `row`, read from the guest's text buffer through the monitor.
async fn screen_row(qemu: &Qemu, row: u32) -> anyhow::Result<String> {
    let addr = 0xb8000 + row * 160;
    let out = qemu
        .qmp()
        .execute(
            "human-monitor-command",
            serde_json::json!({"command-line": format!("xp /80hx {addr:#x}")}),
        )
        .await?;
    let text = out.as_str().unwrap_or_default();
    // Lines like `00000000000b80a0: 0x0764 0x076d ...`: character in the low byte.
    let mut chars = String::new();
    for word in text.lines().flat_map(|l| l.split_whitespace().skip(1)) {
        let cell = u16::from_str_radix(word.trim_start_matches("0x"), 16)?;
        chars.push(char::from(cell.to_le_bytes()[0]));
    }
    anyhow::ensure!(chars.len() == 80, "unexpected xp output: {text}");
    Ok(chars)
}

#[tokio::test]
async fn auto_accel_prefers_kvm_with_qboot_and_counts_input_exactly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut qemu = launch(AccelChoice::Auto, dir.path()).await?;
    let kvm_enabled = qemu
        .qmp()
        .execute("query-kvm", serde_json::Value::Null)
        .await?;
    println!("accelerator: {} (query-kvm: {kvm_enabled})", qemu.accel());
    if kvm_usable() {
        assert_eq!(
            qemu.accel(),
            Accel::Kvm,
            "/dev/kvm opens but KVM was not used"
        );
        assert_eq!(
            kvm_enabled["enabled"], true,
            "/dev/kvm opens but KVM is off"
        );
    }
    exercise(&mut qemu).await?;
    let status = qemu.shutdown(WAIT).await?;
    assert!(status.success(), "QEMU exited with {status}");
    Ok(())
}

#[tokio::test]
async fn tcg_counts_input_exactly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut qemu = launch(AccelChoice::Tcg, dir.path()).await?;
    let kvm_enabled = qemu
        .qmp()
        .execute("query-kvm", serde_json::Value::Null)
        .await?;
    println!("accelerator: {} (query-kvm: {kvm_enabled})", qemu.accel());
    assert_eq!(qemu.accel(), Accel::Tcg);
    assert_eq!(kvm_enabled["enabled"], false);
    exercise(&mut qemu).await?;
    qemu.shutdown(WAIT).await?;
    Ok(())
}
