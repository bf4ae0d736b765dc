//! The link's screen: after the guest echoes keys, the link's framebuffer equals a fresh VNC
//! client's framebuffer of the same QEMU, pixel for pixel, at 720x400 text mode; and the
//! Raw rectangles it hands over rebuild that same framebuffer.

mod back_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use back_support::*;
use console::back::{LinkConfig, LinkEvent, QemuLink};
use console::journal::ViewerId;
use rfb::framebuffer::{Framebuffer, UpdateDecoder};
use rfb::{PixelFormat, RectPayload, Rectangle, ServerMessage};
use testbed::qemu::AccelChoice;

/// A fresh client's view: connect, ask for everything, read until the whole screen came.
async fn fresh_framebuffer(vm: &Vm) -> anyhow::Result<Framebuffer> {
    let (mut reader, mut writer) = plain_client(vm).await?;
    let (w, h) = {
        let fb = reader.framebuffer();
        (fb.width(), fb.height())
    };
    writer.request_update(false, w, h).await?;
    let mut covered = 0usize;
    while covered < usize::from(w) * usize::from(h) {
        let msg = tokio::time::timeout(DEADLINE, reader.read_message()).await??;
        if let ServerMessage::FramebufferUpdate(rects) = msg {
            covered += rects
                .iter()
                .filter(|r| matches!(r.payload, RectPayload::Raw(_)))
                .map(|r| usize::from(r.width) * usize::from(r.height))
                .sum::<usize>();
        }
    }
    Ok(reader.framebuffer().clone())
}

#[tokio::test]
async fn link_framebuffer_matches_a_fresh_client_after_the_echo() -> anyhow::Result<()> {
    // TCG (SeaBIOS); the guest_screen test covers the text screen under KVM+qboot.
    let mut vm = Vm::launch_on(false, AccelChoice::Tcg).await?;
    let (link, mut events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;

    // The console's side: rebuild the screen from the link's events alone.
    let mirror = Arc::new(Mutex::new(Framebuffer::new(0, 0)));
    let resized = Arc::new(Mutex::new(Vec::new()));
    let (m, rs) = (mirror.clone(), resized.clone());
    let first = link.framebuffer().await?;
    if let Ok(mut fb) = m.lock() {
        *fb = first.clone();
    }
    let consumer = tokio::spawn(async move {
        let mut decoder = UpdateDecoder::new(PixelFormat::RGBX32_LE)?;
        while let Some(e) = events.recv().await {
            let mut fb = m.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            match e {
                LinkEvent::ScreenChanged { rects } => {
                    for r in &rects {
                        decoder.apply(&mut fb, r)?;
                    }
                }
                LinkEvent::Resized { width, height } => {
                    rs.lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push((width, height));
                    decoder.apply(
                        &mut fb,
                        &Rectangle {
                            x: 0,
                            y: 0,
                            width,
                            height,
                            payload: RectPayload::DesktopSize,
                        },
                    )?;
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    });

    let text = "hello dmore";
    let keys: Vec<Key> = text
        .chars()
        .map(|c| Key {
            keysym: u32::from(c),
            code: guest::keymap::scancode(c).map_or(0, u16::from),
        })
        .collect();
    for &key in &keys {
        for down in [true, false] {
            link.push(ViewerId(0), key_event(key, down, false)).await?;
        }
    }
    assert_eq!(
        seen(&vm.serial().keys(keys.len() * 2).await?),
        expected(&keys)
    );

    // The screen settles shortly after the echo (the text cursor may still blink): poll until
    // the three views agree, with a deadline.
    let deadline = Instant::now() + DEADLINE;
    let (fresh, ours) = loop {
        let fresh = fresh_framebuffer(&vm).await?;
        let ours = link.framebuffer().await?;
        let mirrored = mirror
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        if fresh == ours && mirrored == ours {
            break (fresh, ours);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "link {}x{} vs fresh {}x{} vs mirror {}x{}: never equal",
            ours.width(),
            ours.height(),
            fresh.width(),
            fresh.height(),
            mirrored.width(),
            mirrored.height()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((ours.width(), ours.height()), (720, 400), "VGA text mode");
    assert_ne!(ours, first, "the echo changed the screen the link holds");
    let colours: std::collections::BTreeSet<u32> = fresh.pixels().iter().copied().collect();
    assert!(colours.len() > 1, "text is on the screen");
    println!(
        "[tcg] link framebuffer == fresh client's == rebuilt from link events ({}x{}, {} colours); \
         resizes seen: {:?}; {:?}",
        ours.width(),
        ours.height(),
        colours.len(),
        resized.lock().map(|r| r.clone()).unwrap_or_default(),
        link.stats().await?
    );
    link.shutdown().await?;
    consumer.await??;
    Ok(())
}

/// With nobody typing, a changing guest screen keeps reaching the console: the link asks QEMU
/// for the next update as soon as the console took the last one (a link that waited for some
/// other wake-up delivered one update and then stalled).
#[tokio::test]
async fn screen_updates_keep_flowing_without_input() -> anyhow::Result<()> {
    let guest = guest::GuestOptions {
        animate: true,
        ..guest::GuestOptions::default()
    };
    let vm = Vm::launch_with(false, AccelChoice::Auto, guest).await?;
    let (link, mut events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let mut updates = 0;
    while updates < 20 {
        match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(LinkEvent::ScreenChanged { .. })) => updates += 1,
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the link ended after {updates} screen updates"),
            Err(_) => anyhow::bail!("the screen stalled after {updates} updates"),
        }
    }
    println!("[{}] {updates} screen updates with no input", accel());
    link.shutdown().await?;
    Ok(())
}
