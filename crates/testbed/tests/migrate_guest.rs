//! Live migration of the test guest between two test hosts: its key counter continues on the
//! destination, a failed migration leaves the source running, and a migration cancelled at
//! `pre-switchover` too.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use qmp::{Connection, Events, InputEvent};
use testbed::hosts::{Host, Testbed};
use testbed::migrate::{self, MigrateError, Migration, MigrationOptions, MigrationStatus, Phase};

/// How long any single wait in these tests may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills and reaps a child on every path.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A QEMU running the test guest on a host; killed on drop.
struct Vm {
    conn: Connection,
    _events: Events,
    serial: PathBuf,
    _child: KillOnDrop,
}

/// KVM (with qboot) where `/dev/kvm` opens, unless `DMORE_TEST_ACCEL=tcg`.
fn kvm_works() -> bool {
    std::env::var("DMORE_TEST_ACCEL").map_or(true, |a| a != "tcg")
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

impl Vm {
    /// Starts the guest on `host` (`incoming`: `-incoming defer`), serial to a file.
    async fn launch(
        host: &Host,
        name: &str,
        memory_mib: u32,
        incoming: bool,
    ) -> anyhow::Result<Vm> {
        let dir = host.runtime_dir();
        let qmp_path = dir.join(format!("{name}.qmp"));
        let serial = dir.join(format!("{name}.serial"));
        let mut cmd = host.command("qemu-system-x86_64");
        cmd.args(["-machine", "q35", "-nodefaults", "-display", "none"])
            .args(["-m", &memory_mib.to_string()])
            .arg("-kernel")
            .arg(guest::kernel_path())
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-pidfile")
            .arg(dir.join(format!("{name}.pid")));
        if kvm_works() {
            cmd.args(["-accel", "kvm", "-bios", "/usr/share/qemu/qboot.rom"]);
        } else {
            cmd.args(["-accel", "tcg"]);
        }
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let child = KillOnDrop(cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn()?);
        let deadline = Instant::now() + DEADLINE;
        let (conn, events) = loop {
            match Connection::connect(&qmp_path).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Ok(Vm {
            conn,
            _events: events,
            serial,
            _child: child,
        })
    }

    fn qmp(&self) -> &qmp::Client {
        self.conn.client()
    }

    async fn status(&self) -> anyhow::Result<String> {
        Ok(self.qmp().query_status().await?.status)
    }

    /// The guest's serial output so far.
    fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until `pred` holds for the serial output, and returns that output.
    async fn wait_serial(&self, what: &str, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.serial_text();
            if pred(&text) {
                return Ok(text);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no {what} on serial; got:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Presses and releases `key` `times` times, each event once the guest reported the one
    /// before (the PS/2 queue is 16 bytes), and returns the counts the guest reported.
    async fn type_keys(&self, key: &'static str, times: usize) -> anyhow::Result<Vec<u64>> {
        let mut counts = Vec::new();
        for _ in 0..times {
            for down in [true, false] {
                let before = key_counts(&self.serial_text()).len();
                self.qmp()
                    .input_send_event(&[InputEvent::qcode(key, down)])
                    .await?;
                let text = self
                    .wait_serial("key report", |t| key_counts(t).len() > before)
                    .await?;
                counts.extend(key_counts(&text).into_iter().skip(before));
            }
        }
        Ok(counts)
    }
}

/// The counts of the guest's key reports (`K <n> D|U <code>`), in order.
fn key_counts(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("K "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn assert_consecutive(counts: &[u64], first: u64) {
    let want: Vec<u64> = (first..first + counts.len() as u64).collect();
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
    println!(
        "testbed mode: {}, accel: {}",
        bed.mode(),
        if kvm_works() { "kvm+qboot" } else { "tcg" }
    );
    let a = Vm::launch(bed.a(), "vm1", 128, false).await?;
    a.wait_serial("READY", |t| t.contains("READY")).await?;
    let on_a = a.type_keys("a", 5).await?;
    println!("on A: key counts {on_a:?}");
    anyhow::ensure!(!on_a.is_empty());
    let first = on_a[0];
    assert_consecutive(&on_a, first);

    // A -> B, stopping at pre-switchover on the way.
    let b = Vm::launch(bed.b(), "vm1", 128, true).await?;
    assert_eq!(b.status().await?, "inmigrate");
    let uri = migrate::incoming_uri(bed.b())?;
    let mut m = Migration::start(a.qmp(), b.qmp(), &uri, options(true)).await?;
    assert_eq!(m.run().await?, Phase::PreSwitchover);
    assert_eq!(
        a.status().await?,
        "finish-migrate",
        "source paused at pre-switchover"
    );
    m.proceed().await?;
    let report = m.report();
    println!("A->B over {uri}: {report:?}");
    assert_eq!(report.status, MigrationStatus::Completed);
    assert!(report.paused_at_switchover);
    assert_eq!(b.status().await?, "running");
    assert_eq!(a.status().await?, "postmigrate");

    // The source no longer takes input; the destination continues the count.
    let refused = a
        .qmp()
        .input_send_event(&[InputEvent::qcode("b", true)])
        .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_vm_not_running()),
        "{refused:?}"
    );
    let on_b = b.type_keys("b", 5).await?;
    println!("on B: key counts {on_b:?}");
    let next = on_a.last().map_or(first, |n| n + 1);
    assert_consecutive(&on_b, next);

    // And back B -> A, into a fresh QEMU on A, without the pause.
    drop(a);
    let a2 = Vm::launch(bed.a(), "vm2", 128, true).await?;
    let uri = migrate::incoming_uri(bed.a())?;
    let report = migrate::migrate(b.qmp(), a2.qmp(), &uri, options(false)).await?;
    println!("B->A over {uri}: {report:?}");
    assert_eq!(report.status, MigrationStatus::Completed);
    let back = a2.type_keys("c", 3).await?;
    println!("on A again: key counts {back:?}");
    assert_consecutive(&back, on_b.last().map_or(next, |n| n + 1));
    Ok(())
}

#[tokio::test]
async fn failed_migration_leaves_the_source_running_and_says_why() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    let a = Vm::launch(bed.a(), "vm", 128, false).await?;
    a.wait_serial("READY", |t| t.contains("READY")).await?;
    // A destination with a different RAM size refuses the stream.
    let b = Vm::launch(bed.b(), "vm", 256, true).await?;
    let uri = migrate::incoming_uri(bed.b())?;
    let err = migrate::migrate(a.qmp(), b.qmp(), &uri, options(false))
        .await
        .expect_err("a RAM size mismatch must fail");
    println!("failure reported: {err}");
    assert!(matches!(err, MigrateError::Failed { .. }), "{err}");
    assert_eq!(a.status().await?, "running");
    let keys = a.type_keys("a", 1).await?;
    assert_eq!(keys.len(), 2, "the source still takes input");
    Ok(())
}

#[tokio::test]
async fn cancel_at_pre_switchover_resumes_the_source() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    let a = Vm::launch(bed.a(), "vm", 128, false).await?;
    a.wait_serial("READY", |t| t.contains("READY")).await?;
    let before = a.type_keys("a", 1).await?;
    let b = Vm::launch(bed.b(), "vm", 128, true).await?;
    let uri = migrate::incoming_uri(bed.b())?;
    let mut m = Migration::start(a.qmp(), b.qmp(), &uri, options(true)).await?;
    assert_eq!(m.run().await?, Phase::PreSwitchover);
    m.cancel().await?;
    assert_eq!(m.phase(), Phase::Aborted);
    println!("cancelled: {:?}", m.report());
    assert_eq!(a.status().await?, "running");
    let after = a.type_keys("a", 1).await?;
    let first = before.first().copied().unwrap_or_default();
    assert_consecutive(&[before, after].concat(), first);
    Ok(())
}
