//! Keys pushed into the link reach the test guest exactly once and in order, on the fast lane
//! while the VM runs; and the per-key latency of each lane, printed (`--nocapture`).

mod back_support;

use std::time::{Duration, Instant};

use back_support::*;
use console::back::{LinkConfig, QemuLink};
use console::journal::{Config, ViewerId};

/// Polls the link's counters until every pushed key/button event is accounted for.
async fn settled(link: &QemuLink) -> anyhow::Result<console::back::LinkStats> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = link.stats().await?;
        let j = s.journal;
        if j.held == 0 && j.delivered + j.uncertain == j.pushed {
            return Ok(s);
        }
        anyhow::ensure!(Instant::now() < deadline, "link never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn keys_arrive_once_in_order_on_the_fast_lane() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let _vm_events = vm_events(events);

    // Alternate viewers with and without scancodes (TigerVNC / vncdotool style).
    let keys = letters(150);
    let mark = vm.ps2_mark()?;
    for (i, &key) in keys.iter().enumerate() {
        let viewer = ViewerId(u32::from(i % 2 == 0));
        for down in [true, false] {
            link.push(viewer, key_event(key, down, i % 2 == 0)).await?;
        }
    }
    let stats = settled(&link).await?;
    // Every key once, in order, and nothing more: the marker comes next, not a duplicate.
    link.push(ViewerId(0), key_event(ENTER, true, false))
        .await?;
    link.push(ViewerId(0), key_event(ENTER, false, false))
        .await?;
    let reports = vm.serial().keys_until(ENTER.code).await?;
    let release = vm.serial().key().await?;
    vm.check_keys(
        "fast lane, every key once, in order",
        mark,
        &expected(&[&keys[..], &[ENTER]].concat()),
        &[seen(&reports), vec![(true, ENTER.code)], seen(&[release])].concat(),
    )?;

    let j = stats.journal;
    println!(
        "[{}] {} events: fast lane {}, QMP lane {}, fences {}, delivered {}, uncertain {}",
        accel(),
        j.pushed,
        j.fast_sent,
        stats.qmp_delivered,
        j.fences,
        j.delivered,
        j.uncertain
    );
    assert_eq!(j.pushed, 300);
    assert_eq!(
        j.fast_sent, 300,
        "a running VM gets everything on the fast lane"
    );
    assert_eq!(stats.qmp_delivered, 0);
    assert_eq!(
        j.delivered, 300,
        "every fast-lane key confirmed by fence + status"
    );
    assert_eq!(j.uncertain, 0);
    link.shutdown().await?;
    Ok(())
}

/// One key at a time: push, wait for the guest's report; press and release each measured.
async fn measure(
    link: &QemuLink,
    vm: &mut Vm,
    n: usize,
    scancode: bool,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n * 2);
    for key in letters(n) {
        for down in [true, false] {
            let t0 = Instant::now();
            link.push(ViewerId(0), key_event(key, down, scancode))
                .await?;
            let r = vm.serial().key().await?;
            anyhow::ensure!((r.down, r.code) == (down, key.code), "wrong report {r:?}");
            samples.push(r.at.saturating_duration_since(t0));
        }
    }
    samples.sort();
    Ok(samples)
}

#[tokio::test]
async fn per_key_latency_fast_lane_vs_qmp_lane() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let mut config = LinkConfig::new(&vm.vnc, &vm.qmp);
    // Measure the lanes, not the journal's pacing (one key is in flight at a time anyway).
    config.journal = Config {
        min_interval: Duration::ZERO,
        max_gap: Duration::ZERO,
        ..Config::default()
    };
    let (link, events) = QemuLink::connect(config).await?;
    let _vm_events = vm_events(events);

    // Baseline: a plain VNC client straight on QEMU's socket, no link.
    let direct = {
        let (_reader, mut writer) = plain_client(&vm).await?;
        let mut samples = Vec::with_capacity(400);
        for key in letters(200) {
            for down in [true, false] {
                let t0 = Instant::now();
                writer
                    .send(&rfb::ClientMessage::KeyEvent {
                        down,
                        keysym: key.keysym,
                    })
                    .await?;
                let r = vm.serial().key().await?;
                anyhow::ensure!((r.down, r.code) == (down, key.code), "wrong report {r:?}");
                samples.push(r.at.saturating_duration_since(t0));
            }
        }
        samples.sort();
        samples
    };
    let fast = measure(&link, &mut vm, 200, true).await?;
    let before = settled(&link).await?;
    // As dmore's own `migrate` would: input moves to the QMP lane.
    link.migration_started().await?;
    let qmp = measure(&link, &mut vm, 200, true).await?;
    // The guest reports a key before QEMU's answer to its QMP command reaches the link.
    let after = settled(&link).await?;
    link.migration_ended().await?;

    for (name, s) in [
        ("direct to QEMU's VNC (no link)", &direct),
        ("link, fast lane (VNC)", &fast),
        ("link, QMP lane", &qmp),
    ] {
        println!(
            "[{}] push -> guest serial report, {name}: n={} p50={} us p99={} us",
            accel(),
            s.len(),
            percentile_us(s, 50),
            percentile_us(s, 99)
        );
    }
    assert_eq!(before.journal.fast_sent, 400);
    assert_eq!(before.qmp_delivered, 0);
    assert_eq!(
        after.journal.fast_sent, 400,
        "nothing on the fast lane once migrating"
    );
    assert_eq!(after.qmp_delivered, 400);
    link.shutdown().await?;
    Ok(())
}
