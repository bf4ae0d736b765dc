//! A `stop` from another QMP monitor, which the link did not see coming: nothing pushed after
//! the link saw `STOP` is lost, nothing arrives twice or out of order, and every key that did
//! not arrive was reported uncertain. How many keys in flight get caught is measured over 20
//! trials and printed (`--nocapture`).

mod back_support;

use std::time::{Duration, Instant};

use back_support::*;
use console::back::{LinkConfig, LinkEvent, QemuLink, VmEvent};
use console::journal::{Seq, SeqRange, ViewerId};

const TRIALS: usize = 20;

/// One journaled event: its seq and what the guest should report.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: Seq,
    down: bool,
    code: u16,
}

async fn push_keys(link: &QemuLink, keys: &[Key], out: &mut Vec<Sent>) -> anyhow::Result<()> {
    for &key in keys {
        for down in [true, false] {
            let seq = link
                .push(ViewerId(0), key_event(key, down, false))
                .await?
                .ok_or_else(|| anyhow::anyhow!("a key got no seq"))?;
            out.push(Sent {
                seq,
                down,
                code: key.code,
            });
        }
    }
    Ok(())
}

async fn settled(link: &QemuLink) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let j = link.stats().await?.journal;
        if j.held == 0 && j.delivered + j.uncertain == j.pushed {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "link never settled: {j:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn unannounced_stop_loses_nothing_pushed_after_it_and_reports_what_it_caught(
) -> anyhow::Result<()> {
    let mut vm = Vm::launch(false).await?;
    let (link, events) = QemuLink::connect(LinkConfig::new(&vm.vnc, &vm.qmp)).await?;
    let mut vm_rx = vm_events(events);
    let (mut caught, mut lost, mut total_before) = (0u64, 0u64, 0usize);

    for trial in 0..TRIALS {
        let mut sent = Vec::new();
        // 30 keys (60 events) paced by the journal at 4 ms: the stop lands mid-stream.
        let before = letters(30);
        push_keys(&link, &before, &mut sent).await?;
        total_before += sent.len();
        let stop_after = 2 + (trial * 5) % 50;
        let mut reports = vm.serial().keys(stop_after).await?;
        vm.qmp().stop().await?;
        let seen_before_stop = wait_vm(&mut vm_rx, VmEvent::Stopped).await?;
        // Typed after the link saw STOP: must all arrive.
        let after = digits(10);
        let first_after = sent.len();
        push_keys(&link, &after, &mut sent).await?;
        vm.qmp().cont().await?;
        let mut seen_until_resume = wait_vm(&mut vm_rx, VmEvent::Resumed).await?;
        settled(&link).await?;
        for down in [true, false] {
            link.push(ViewerId(0), key_event(ENTER, down, false))
                .await?;
        }
        reports.extend(vm.serial().keys_until(ENTER.code).await?);
        // The marker's release.
        let release = vm.serial().key().await?;
        assert_eq!((release.down, release.code), (false, ENTER.code));

        let mut uncertain: Vec<SeqRange> = Vec::new();
        seen_until_resume.extend(seen_before_stop);
        while let Ok(e) = vm_rx.try_recv() {
            seen_until_resume.push(e);
        }
        for e in &seen_until_resume {
            if let LinkEvent::Uncertain(r) = e {
                uncertain.push(*r);
            }
        }

        // Match reports to sent events in order: a report is the next sent event it equals;
        // skipped events are the missing ones.
        let mut missing = Vec::new();
        let mut it = reports.iter().peekable();
        for s in &sent {
            match it.peek() {
                Some(r) if (r.down, r.code) == (s.down, s.code) => {
                    it.next();
                }
                _ => missing.push(*s),
            }
        }
        let extra: Vec<_> = it.collect();
        assert!(
            extra.is_empty(),
            "trial {trial}: extra or reordered reports {extra:?}"
        );
        for m in &missing {
            assert!(
                uncertain.iter().any(|r| r.contains(m.seq)),
                "trial {trial}: {m:?} lost without being reported uncertain ({uncertain:?})"
            );
        }
        let after_seqs: Vec<Seq> = sent[first_after..].iter().map(|s| s.seq).collect();
        assert!(
            !missing.iter().any(|m| after_seqs.contains(&m.seq)),
            "trial {trial}: a key typed after STOP was lost"
        );
        let n_uncertain: u64 = uncertain.iter().map(|r| r.len()).sum();
        caught += n_uncertain;
        lost += missing.len() as u64;
    }
    let stats = link.stats().await?;
    println!(
        "[{}] {TRIALS} unannounced stops, {total_before} events typed before them: \
         {caught} reported uncertain, {lost} of those actually lost; \
         0 lost after STOP was seen. {stats:?}",
        accel()
    );
    assert_eq!(stats.journal.uncertain, caught);
    link.shutdown().await?;
    Ok(())
}
