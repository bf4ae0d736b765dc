//! Live migration of the test guest between two test hosts: its key counter continues on the
//! destination (A -> B -> A), a failed migration leaves the source running and says why, and a
//! migration cancelled at `pre-switchover` resumes the source.

use std::time::Duration;

use guest::report::Report;
use migrate::vm::{self, MigrateError, Migration, MigrationOptions, MigrationStatus, Phase};
use qmp::InputEvent;
use testbed::hosts::{Host, Testbed};
use testbed::qemu::{AccelChoice, Qemu};

/// How long any single wait in these tests may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

/// `DMORE_TEST_ACCEL=tcg` forces TCG; otherwise KVM where it works.
fn accel() -> AccelChoice {
    match std::env::var("DMORE_TEST_ACCEL").as_deref() {
        Ok("tcg") => AccelChoice::Tcg,
        _ => AccelChoice::Auto,
    }
}

/// Starts the guest (`memory_mib`) on `host` as `vm`; `incoming`: `-incoming defer`.
async fn launch(host: &Host, vm: &str, memory_mib: u32, incoming: bool) -> anyhow::Result<Qemu> {
    let mut cfg = host.qemu_config(vm);
    cfg.memory_mib = memory_mib;
    cfg.incoming = incoming;
    cfg.accel = accel();
    let mut qemu = Qemu::launch(cfg).await?;
    if !incoming {
        qemu.wait_ready(WAIT).await?;
    }
    Ok(qemu)
}

/// Presses and releases `key` `times` times, each event once the guest reported the one
/// before (the PS/2 queue is 16 bytes), and returns the counts the guest reported.
async fn type_keys(vm: &mut Qemu, key: &'static str, times: usize) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::new();
    for _ in 0..times {
        for down in [true, false] {
            vm.qmp()
                .input_send_event(&[InputEvent::qcode(key, down)])
                .await?;
            loop {
                match vm.serial().next(WAIT, "a key report").await? {
                    Report::Key { count, down: d, .. } => {
                        assert_eq!(d, down, "press/release reported as sent");
                        counts.push(count);
                        break;
                    }
                    Report::Leds(_) | Report::Options { .. } | Report::Ready => continue,
                    other => anyhow::bail!("unexpected report {other:?}"),
                }
            }
        }
    }
    Ok(counts)
}

async fn status(vm: &Qemu) -> anyhow::Result<String> {
    Ok(vm.qmp().query_status().await?.status)
}

fn assert_consecutive(counts: &[u64], first: u64) {
    let want: Vec<u64> = (first..).take(counts.len()).collect();
    assert_eq!(
        counts,
        want.as_slice(),
        "key counts continue without gap or repeat"
    );
}

fn options(pause_before_switchover: bool) -> MigrationOptions {
    MigrationOptions {
        pause_before_switchover,
        ..MigrationOptions::default()
    }
}

#[tokio::test]
async fn guest_key_counter_continues_across_migrations_between_hosts() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    let mut a = launch(bed.a(), "vm1", 128, false).await?;
    println!("testbed mode: {}, accel: {}", bed.mode(), a.accel());
    let on_a = type_keys(&mut a, "a", 5).await?;
    println!("on A: key counts {on_a:?}");
    let first = on_a.first().copied().unwrap_or_default();
    assert_consecutive(&on_a, first);

    // A -> B, stopping at pre-switchover on the way.
    let mut b = launch(bed.b(), "vm1", 128, true).await?;
    assert_eq!(status(&b).await?, "inmigrate");
    let uri = bed.b().incoming_uri()?;
    let mut m = Migration::start(a.qmp(), b.qmp(), &uri, options(true)).await?;
    assert_eq!(m.run().await?, Phase::PreSwitchover);
    assert_eq!(
        status(&a).await?,
        "finish-migrate",
        "source paused at pre-switchover"
    );
    m.proceed().await?;
    let report = m.report();
    println!("A->B over {uri}: {report:?}");
    assert_eq!(report.status, MigrationStatus::Completed);
    assert!(report.paused_at_switchover);
    assert_eq!(status(&b).await?, "running");
    assert_eq!(status(&a).await?, "postmigrate");

    // The source no longer takes input; the destination continues the count.
    let refused = a
        .qmp()
        .input_send_event(&[InputEvent::qcode("b", true)])
        .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_vm_not_running()),
        "{refused:?}"
    );
    let on_b = type_keys(&mut b, "b", 5).await?;
    println!("on B: key counts {on_b:?}");
    let next = on_a.last().map_or(first, |n| n + 1);
    assert_consecutive(&on_b, next);

    // And back B -> A, into a fresh QEMU on A, without the pause.
    drop(a);
    let mut a2 = launch(bed.a(), "vm2", 128, true).await?;
    let uri = bed.a().incoming_uri()?;
    let report = vm::migrate(b.qmp(), a2.qmp(), &uri, options(false)).await?;
    println!("B->A over {uri}: {report:?}");
    assert_eq!(report.status, MigrationStatus::Completed);
    let back = type_keys(&mut a2, "c", 3).await?;
    println!("on A again: key counts {back:?}");
    assert_consecutive(&back, on_b.last().map_or(next, |n| n + 1));
    Ok(())
}

#[tokio::test]
async fn failed_migration_leaves_the_source_running_and_says_why() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    let mut a = launch(bed.a(), "vm", 128, false).await?;
    // A destination with a different RAM size refuses the stream.
    let b = launch(bed.b(), "vm", 256, true).await?;
    let uri = bed.b().incoming_uri()?;
    let err = vm::migrate(a.qmp(), b.qmp(), &uri, options(false))
        .await
        .expect_err("a RAM size mismatch must fail");
    println!("failure reported: {err}");
    assert!(matches!(err, MigrateError::Failed { .. }), "{err}");
    assert_eq!(status(&a).await?, "running");
    let keys = type_keys(&mut a, "a", 1).await?;
    assert_eq!(keys.len(), 2, "the source still takes input");
    Ok(())
}

#[tokio::test]
async fn cancel_at_pre_switchover_resumes_the_source() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    let mut a = launch(bed.a(), "vm", 128, false).await?;
    let before = type_keys(&mut a, "a", 1).await?;
    let b = launch(bed.b(), "vm", 128, true).await?;
    let uri = bed.b().incoming_uri()?;
    let mut m = Migration::start(a.qmp(), b.qmp(), &uri, options(true)).await?;
    assert_eq!(m.run().await?, Phase::PreSwitchover);
    m.cancel().await?;
    assert_eq!(m.phase(), Phase::Aborted);
    println!("cancelled: {:?}", m.report());
    assert_eq!(status(&a).await?, "running");
    let after = type_keys(&mut a, "a", 1).await?;
    let first = before.first().copied().unwrap_or_default();
    assert_consecutive(&[before, after].concat(), first);
    Ok(())
}
