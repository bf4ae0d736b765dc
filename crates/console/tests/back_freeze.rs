//! The link's freeze, thaw and restore on real QEMU: an aborted migration (freeze, then thaw
//! in the same process) and a take-over (a fresh link restored from the frozen journal) each
//! deliver every key exactly once, in order; a link attached to a paused VM holds input from
//! the start and never uses the fast lane.

mod back_support;

use back_support::*;
use console::back::{LinkConfig, QemuLink, VmEvent};
use console::journal::ViewerId;

async fn push_keys(link: &QemuLink, keys: &[Key]) -> anyhow::Result<()> {
    for &key in keys {
        for down in [true, false] {
            link.push(ViewerId(0), key_event(key, down, false)).await?;
        }
    }
    Ok(())
}

/// Pushes the ENTER marker and returns every report up to it; then checks its release.
async fn reports_until_marker(vm: &mut Vm, link: &QemuLink) -> anyhow::Result<Vec<Report>> {
    push_keys(link, &[ENTER]).await?;
    let reports = vm.serial().keys_until(ENTER.code).await?;
    let release = vm.serial().key().await?;
    assert_eq!((release.down, release.code), (false, ENTER.code));
    Ok(reports)
}

/// Checks the reports before the marker are `keys` ([`Vm::check_keys`]: QEMU's PS/2 queue
/// traced since `mark`, the marker typed after them).
fn check(vm: &Vm, what: &str, mark: usize, keys: &[Key], got: &[Report]) -> anyhow::Result<()> {
    let typed = expected(&[keys, &[ENTER]].concat());
    let reported = [seen(got), expected(&[ENTER])].concat();
    vm.check_keys(what, mark, &typed, &reported)
}

#[tokio::test]
async fn freeze_then_thaw_delivers_every_key_once() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let mut vm_rx = vm_events(events);

    // 1. Freeze mid-stream on a running VM: what is in flight resolves, nothing is uncertain.
    let flowing = letters(40);
    let mark = vm.ps2_mark()?;
    push_keys(&link, &flowing).await?;
    let first = vm.serial().key().await?;
    let state = link.freeze().await?;
    let s = link.stats().await?;
    assert!(s.frozen);
    assert!(
        state.uncertain().is_empty(),
        "in-flight input resolved before the state was taken: {:?}",
        state.uncertain()
    );
    assert_eq!(
        state.held() as u64 + s.journal.delivered,
        s.journal.pushed,
        "every key is either delivered or in the state: {s:?}"
    );
    let held_mid_stream = state.held();
    link.thaw().await?;
    let mut got = vec![first];
    got.extend(reports_until_marker(&mut vm, &link).await?);
    check(&vm, "mid-stream freeze and thaw", mark, &flowing, &got)?;

    // 2. The aborted migration: input held for a paused VM, frozen, the VM runs again here.
    // (Once the fast lane's keys are confirmed: the stop below is unannounced.)
    wait_stats(&link, "confirmed", |s| {
        s.journal.delivered == s.journal.pushed
    })
    .await?;
    vm.qmp().stop().await?;
    wait_vm(&mut vm_rx, VmEvent::Stopped).await?;
    let held = digits(25);
    let mark = vm.ps2_mark()?;
    push_keys(&link, &held).await?;
    let state = link.freeze().await?;
    assert_eq!(state.held(), 2 * held.len());
    assert!(state.uncertain().is_empty());
    let before = link.stats().await?;
    vm.qmp().cont().await?;
    wait_vm(&mut vm_rx, VmEvent::Resumed).await?;
    // The turn that handled RESUME is over: a frozen link sent nothing.
    let after = link.stats().await?;
    assert!(after.vm_running && after.frozen);
    assert_eq!(after.journal.held, 2 * held.len());
    assert_eq!(after.journal.qmp_batches, before.journal.qmp_batches);
    assert_eq!(after.journal.fast_sent, before.journal.fast_sent);
    link.thaw().await?;
    let got = reports_until_marker(&mut vm, &link).await?;
    check(&vm, "held keys after the thaw", mark, &held, &got)?;
    let s = link.stats().await?;
    assert_eq!(s.journal.uncertain, 0);
    println!(
        "[{}] freeze mid-stream held {held_mid_stream} of {} events, thaw delivered them once; \
         {} held for a paused VM, delivered once after RESUME + thaw. {s:?}",
        accel(),
        2 * flowing.len(),
        2 * held.len()
    );
    link.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_restored_link_holds_until_the_vm_runs_and_delivers_once() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let (old, events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let mut vm_rx = vm_events(events);
    vm.qmp().stop().await?;
    wait_vm(&mut vm_rx, VmEvent::Stopped).await?;
    let keys = letters(30);
    let mark = vm.ps2_mark()?;
    push_keys(&old, &keys).await?;
    let state = old.freeze().await?;
    assert_eq!(state.held(), 2 * keys.len());
    old.shutdown().await?;

    let mut config = LinkConfig::new(&vm.vnc, &vm.qmp);
    config.restore = Some(state);
    let (new, events) = QemuLink::connect(config).await?;
    let mut vm_rx = vm_events(events);
    let s = new.stats().await?;
    assert!(!s.vm_running, "the VM is paused: {s:?}");
    assert_eq!(s.journal.held, 2 * keys.len());
    vm.qmp().cont().await?;
    wait_vm(&mut vm_rx, VmEvent::Resumed).await?;
    let got = reports_until_marker(&mut vm, &new).await?;
    check(&vm, "restored link", mark, &keys, &got)?;
    new.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_link_attached_to_a_paused_vm_holds_and_never_uses_the_fast_lane() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    vm.qmp().stop().await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let mut vm_rx = vm_events(events);
    let s = link.stats().await?;
    assert!(!s.vm_running, "query-status at connect: {s:?}");
    let keys = letters(10);
    let mark = vm.ps2_mark()?;
    push_keys(&link, &keys).await?;
    let s = link.stats().await?;
    assert_eq!(s.journal.held, 2 * keys.len());
    assert_eq!(
        s.journal.fast_sent, 0,
        "nothing on the fast lane of a paused VM"
    );
    vm.qmp().cont().await?;
    wait_vm(&mut vm_rx, VmEvent::Resumed).await?;
    let s = wait_stats(&link, "delivered", |s| s.journal.held == 0).await?;
    assert!(s.vm_running);
    let got = reports_until_marker(&mut vm, &link).await?;
    check(&vm, "attached to a paused VM", mark, &keys, &got)?;
    assert_eq!(
        link.stats().await?.journal.fast_sent,
        2,
        "only the marker, typed once the VM ran with nothing held, took the fast lane"
    );
    link.shutdown().await?;
    Ok(())
}

/// A manager quits the source QEMU as soon as its migration completed, which can be before
/// the console's freeze reached the link: the link has lost QEMU, yet the freeze still gets
/// the journal, every held key in it, so the session moves on instead of dying with QEMU.
#[tokio::test]
async fn a_link_that_lost_qemu_still_hands_its_journal_to_a_freeze() -> anyhow::Result<()> {
    let vm = Vm::launch(false).await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let mut vm_rx = vm_events(events);
    vm.qmp().stop().await?;
    wait_vm(&mut vm_rx, VmEvent::Stopped).await?;
    let held = letters(12);
    push_keys(&link, &held).await?;
    vm.qmp().quit().await.ok();
    // The link's events end: the console learns that QEMU is gone.
    while tokio::time::timeout(DEADLINE, vm_rx.recv())
        .await?
        .is_some()
    {}
    let state = link.freeze().await?;
    assert_eq!(
        state.held(),
        2 * held.len(),
        "every held key is in the state"
    );
    assert!(state.uncertain().is_empty());
    assert!(
        link.push(ViewerId(0), key_event(ENTER, true, false))
            .await
            .is_err(),
        "no input is taken for a QEMU that is gone"
    );
    let ended = link.shutdown().await;
    assert!(ended.is_err(), "the link reports how it ended: {ended:?}");
    Ok(())
}
