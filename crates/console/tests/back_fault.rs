//! QEMU going away ends the link with a typed error naming the socket, and its event stream;
//! a full journal refuses (`try_push`) or holds the caller (`push`) until there is room.

mod back_support;

use back_support::*;
use console::back::{LinkConfig, LinkError, PushError, QemuLink, VmEvent};
use console::journal::{Config, ViewerId};

#[tokio::test]
async fn qemu_exit_ends_the_link_with_the_cause() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let (link, mut events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    for down in [true, false] {
        link.push(ViewerId(0), key_event(ENTER, down, false))
            .await?;
    }
    assert_eq!(seen(&vm.serial().keys(2).await?), expected(&[ENTER]));

    drop(vm); // kills QEMU
              // The event stream ends once the task has failed.
    while tokio::time::timeout(DEADLINE, events.recv())
        .await?
        .is_some()
    {}
    let err = link.shutdown().await.expect_err("QEMU is gone");
    println!("link ended with: {err} ({err:?})");
    assert!(
        matches!(
            err,
            LinkError::Vnc(vnc::Error::Closed | vnc::Error::Io(_))
                | LinkError::QmpClosed
                | LinkError::Qmp(_)
        ),
        "a socket-closed cause, got {err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_full_journal_pushes_back_on_the_caller() -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let mut config = LinkConfig::new(&vm.vnc, &vm.qmp);
    config.journal = Config {
        max_held: 8,
        ..Config::default()
    };
    let (link, events) = QemuLink::connect(config).await?;
    let mut vm_rx = vm_events(events);
    vm.qmp().stop().await?;
    wait_vm(&mut vm_rx, VmEvent::Stopped).await?;

    let keys = letters(4);
    for &key in &keys {
        for down in [true, false] {
            link.try_push(ViewerId(0), key_event(key, down, false))
                .await?;
        }
    }
    let extra = letters(5)[4];
    let refused = link
        .try_push(ViewerId(0), key_event(extra, true, false))
        .await;
    assert!(
        matches!(refused, Err(PushError::Full(f)) if f.held == 8 && f.max == 8),
        "{refused:?}"
    );
    // A waiting push: still pending after the link has handled it.
    let input = link.input();
    let waiting = tokio::spawn(async move {
        input
            .push(ViewerId(0), key_event(extra, true, false))
            .await?;
        input
            .push(ViewerId(0), key_event(extra, false, false))
            .await
    });
    // The link counts the waiting push's refusal once it has handled it.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let j = link.stats().await?.journal;
        if j.refused >= 2 {
            assert_eq!(j.held, 8);
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "push never reached the link"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(
        !waiting.is_finished(),
        "push waits while the journal is full"
    );

    vm.qmp().cont().await?;
    waiting.await??;
    let all: Vec<Key> = letters(5);
    assert_eq!(seen(&vm.serial().keys(10).await?), expected(&all));
    link.shutdown().await?;
    Ok(())
}
