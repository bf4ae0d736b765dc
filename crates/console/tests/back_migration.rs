//! 300 keys typed while the VM is held paused by a migration at `pre-switchover`: through the
//! link every one arrives once, in order, after `migrate_cancel` resumes the VM; sent straight
//! to QEMU's VNC socket they are all lost.
//!
//! The first test turns `events` off (as a manager may, after the link turned it on), so the
//! link must tell the migration's stop from a plain one by itself (`query-status` →
//! `finish-migrate`).
//!
//! A destination console attaches to its QEMU's VNC server while the VM is incoming; the link
//! it starts over that connection once the VM runs shows the running VM's screen and takes
//! keys.

mod back_support;

use back_support::*;
use console::back::{LinkConfig, QemuLink, VmEvent};
use console::journal::ViewerId;
use rfb::ClientMessage;
use serde_json::json;

#[tokio::test]
async fn keys_typed_during_a_held_migration_arrive_once_after_cancel() -> anyhow::Result<()> {
    let mut src = Vm::launch(false).await?;
    let dst = Vm::launch(true).await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&src.vnc, &src.qmp)).await?;
    let mut vm_rx = vm_events(events);

    // A warm-up key on the fast lane, so the link is known to work before the migration.
    for down in [true, false] {
        link.push(ViewerId(0), key_event(ENTER, down, false))
            .await?;
    }
    assert_eq!(seen(&src.serial().keys(2).await?), expected(&[ENTER]));
    // And confirmed by the link (fence and probe answered): with `events` off the migration's
    // stop is unannounced, and a key whose probe QEMU answers after it is rightly uncertain
    // (CI, load ~11: the warm-up's release was).
    wait_stats(&link, "the warm-up confirmed", |s| {
        s.journal.delivered == s.journal.pushed
    })
    .await?;

    let port = Vm::free_port()?;
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.qmp().migrate_incoming(&uri).await?;
    src.qmp()
        .migrate_set_capabilities(&[("events", false), ("pause-before-switchover", true)])
        .await?;
    src.qmp().migrate(&uri).await?;
    src.wait_migration("pre-switchover").await?;
    assert_eq!(src.qmp().query_status().await?.status, "finish-migrate");
    wait_vm(&mut vm_rx, VmEvent::Stopped).await?;
    wait_vm(&mut vm_rx, VmEvent::StoppedForMigration).await?;

    // Straight to QEMU's VNC: 300 digits, then a fence proving QEMU handled (dropped) them.
    let direct = digits(300);
    let (mut reader, mut writer) = plain_client(&src).await?;
    for key in &direct {
        for down in [true, false] {
            writer
                .send(&ClientMessage::KeyEvent {
                    down,
                    keysym: key.keysym,
                })
                .await?;
        }
    }
    vnc_fence(&mut reader, &mut writer).await?;

    // Through the link: 300 letters, half of them with scancodes.
    let keys = letters(300);
    let mark = src.ps2_mark()?;
    for (i, &key) in keys.iter().enumerate() {
        for down in [true, false] {
            link.push(ViewerId(1), key_event(key, down, i % 2 == 0))
                .await?;
        }
    }
    let held = link.stats().await?;
    assert_eq!(held.journal.held, 600, "all held while paused: {held:?}");
    assert_eq!(
        src.serial().pending_keys().await,
        vec![],
        "nothing reaches a paused guest"
    );

    src.qmp().migrate_cancel().await?;
    let before_resume = wait_vm(&mut vm_rx, VmEvent::Resumed).await?;
    println!("link events before RESUME: {before_resume:?}");
    let t_resume = std::time::Instant::now();
    // Every key once, in order, then the marker: no duplicates, and none of the 600 direct
    // VNC events arrived.
    for down in [true, false] {
        link.push(ViewerId(0), key_event(ENTER, down, false))
            .await?;
    }
    let reports = src.serial().keys_until(ENTER.code).await?;
    let release = src.serial().key().await?;
    src.check_keys(
        "held at pre-switchover, replayed after the cancel",
        mark,
        &expected(&[&keys[..], &[ENTER]].concat()),
        &[seen(&reports), vec![(true, ENTER.code)], seen(&[release])].concat(),
    )?;
    let stats = link.stats().await?;
    println!(
        "[{}] held 600 events, replayed in {:?} after RESUME; direct VNC: 0 of 600 arrived; {:?}",
        accel(),
        reports
            .last()
            .map(|r| r.at.saturating_duration_since(t_resume)),
        stats
    );
    assert!(
        stats.qmp_delivered < 600 && stats.journal.fast_sent >= 600 - stats.qmp_delivered,
        "the fast lane reopens once the migration ended, while keys are still held: they \
         replay on it, paced, rather than one QMP round trip each"
    );
    assert_eq!(stats.journal.uncertain, 0);
    link.shutdown().await?;
    drop(dst);
    Ok(())
}

#[tokio::test]
async fn migration_events_capability_also_moves_input_to_qmp() -> anyhow::Result<()> {
    let mut src = Vm::launch(false).await?;
    let dst = Vm::launch(true).await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&src.vnc, &src.qmp)).await?;
    let mut vm_rx = vm_events(events);
    let port = Vm::free_port()?;
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.qmp().migrate_incoming(&uri).await?;
    src.qmp()
        .execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": true}]}),
        )
        .await?;
    // 32 KiB/s: the migration stays in pre-copy, the VM running, while the keys are typed
    // (held keys, typed while the VM is paused, replay on the fast lane once it ended).
    src.qmp()
        .execute("migrate-set-parameters", json!({"max-bandwidth": 32 << 10}))
        .await?;
    src.qmp().migrate(&uri).await?;
    wait_vm(&mut vm_rx, VmEvent::MigrationStarted).await?;
    let keys = letters(20);
    for &key in &keys {
        for down in [true, false] {
            link.push(ViewerId(0), key_event(key, down, true)).await?;
        }
    }
    let reports = src.serial().keys(40).await?;
    assert_eq!(seen(&reports), expected(&keys));
    src.qmp().migrate_cancel().await?;
    wait_vm(&mut vm_rx, VmEvent::MigrationEnded).await?;
    // The guest may report the last key before the link has read QEMU's reply to its batch.
    let mut stats = link.stats().await?;
    for _ in 0..500 {
        if stats.qmp_delivered >= 40 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stats = link.stats().await?;
    }
    assert_eq!(stats.journal.fast_sent, 0);
    assert_eq!(stats.qmp_delivered, 40);
    link.shutdown().await?;
    Ok(())
}

/// The `events` capability as QEMU has it now.
async fn events_capability(vm: &Vm) -> anyhow::Result<bool> {
    let caps = vm
        .qmp()
        .execute("query-migrate-capabilities", serde_json::Value::Null)
        .await?;
    let on = caps
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|c| c["capability"] == "events")
                .and_then(|c| c["state"].as_bool())
        })
        .ok_or_else(|| anyhow::anyhow!("no events capability in {caps}"))?;
    Ok(on)
}

/// Waits (bounded: a guard against hanging) until the link has turned `events` on.
async fn wait_events_on(vm: &Vm) -> anyhow::Result<()> {
    for _ in 0..500 {
        if events_capability(vm).await? {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("the link never turned the events capability on")
}

/// QEMU starts with `events` off; the link turns it on at attach and again when the VM runs
/// after a pause (here a manager had turned it off), so that a bare `migrate` announces itself
/// (`MIGRATION` `setup`/`active`) and input leaves the fast lane long before the switchover.
#[tokio::test]
async fn the_link_turns_migration_events_on_whenever_no_migration_runs() -> anyhow::Result<()> {
    let mut src = Vm::launch(false).await?;
    let dst = Vm::launch(true).await?;
    assert!(!events_capability(&src).await?, "QEMU's default is off");
    let (link, events) = QemuLink::connect(LinkConfig::new(&src.vnc, &src.qmp)).await?;
    let mut vm_rx = vm_events(events);
    wait_events_on(&src).await?;

    src.qmp()
        .migrate_set_capabilities(&[("events", false)])
        .await?;
    src.qmp().execute("stop", serde_json::Value::Null).await?;
    wait_vm(&mut vm_rx, VmEvent::Stopped).await?;
    src.qmp().execute("cont", serde_json::Value::Null).await?;
    wait_vm(&mut vm_rx, VmEvent::Resumed).await?;
    wait_events_on(&src).await?;

    // A bare `migrate` (only pause-before-switchover set, as libvirt would): announced.
    let port = Vm::free_port()?;
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.qmp().migrate_incoming(&uri).await?;
    src.qmp()
        .migrate_set_capabilities(&[("pause-before-switchover", true)])
        .await?;
    src.qmp().migrate(&uri).await?;
    wait_vm(&mut vm_rx, VmEvent::MigrationStarted).await?;
    src.wait_migration("pre-switchover").await?;
    let keys = letters(10);
    for &key in &keys {
        for down in [true, false] {
            link.push(ViewerId(0), key_event(key, down, true)).await?;
        }
    }
    src.qmp().migrate_cancel().await?;
    wait_vm(&mut vm_rx, VmEvent::MigrationEnded).await?;
    assert_eq!(seen(&src.serial().keys(20).await?), expected(&keys));
    let stats = link.stats().await?;
    assert_eq!(stats.journal.uncertain, 0);
    link.shutdown().await?;
    Ok(())
}

/// The arriving console's early VNC connection ([`QemuLink::attach_vnc`] while `inmigrate`)
/// survives the incoming migration and carries the link started over it once the VM runs:
/// its screen is the running VM's (the size a fresh client sees, not the blank 640x480 of
/// the incoming QEMU), and a key through it reaches the guest.
#[tokio::test]
async fn a_link_over_vnc_attached_while_incoming_works_once_the_vm_runs() -> anyhow::Result<()> {
    let src = Vm::launch(false).await?;
    let mut dst = Vm::launch(true).await?;
    let config = LinkConfig::new(&dst.vnc, &dst.qmp);
    let vnc = QemuLink::attach_vnc(&config).await?;
    assert_eq!(dst.qmp().query_status().await?.status, "inmigrate");

    let port = Vm::free_port()?;
    let uri = format!("tcp:127.0.0.1:{port}");
    dst.qmp().migrate_incoming(&uri).await?;
    src.qmp().migrate(&uri).await?;
    let deadline = std::time::Instant::now() + DEADLINE;
    while !dst.qmp().query_status().await?.running {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the destination VM never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let (link, events) = QemuLink::connect_attached(config, vnc).await?;
    let _vm_rx = vm_events(events);
    let (reader, _writer) = plain_client(&dst).await?;
    let (width, height) = (reader.framebuffer().width(), reader.framebuffer().height());
    assert_ne!(
        (width, height),
        (640, 480),
        "the running VM's own screen size"
    );
    loop {
        let fb = link.framebuffer().await?;
        if (fb.width(), fb.height()) == (width, height) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the link's screen stayed {}x{}, a fresh client sees {width}x{height}",
            fb.width(),
            fb.height()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for down in [true, false] {
        link.push(ViewerId(0), key_event(ENTER, down, false))
            .await?;
    }
    assert_eq!(seen(&dst.serial().keys(2).await?), expected(&[ENTER]));
    link.shutdown().await?;
    Ok(())
}
