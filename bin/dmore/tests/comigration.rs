//! Co-migration on real hosts (network namespaces), real QEMU and real `dmore console`
//! processes: what issue 6 must show.
//!
//! - consecutive co-migrations of a 128 MiB and a 1 GiB guest dirtying memory, a key every
//!   10 ms and a click every 100 ms: nothing lost or duplicated, one TCP connection (the
//!   client's capture: one SYN, no FIN, no RST); `DMORE_MIGRATIONS=N` sets N (default 5);
//! - the migration driven by a plain-QMP manager script (`manager/qmp_migrate.py`, which
//!   answers `pre-switchover` itself), with the `events` capability on, off, and left alone:
//!   nothing lost, nothing the console reports uncertain;
//! - an unmodified viewer, vncdotool, typing through a co-migration;
//! - faults (SIGKILL): the destination QEMU during RAM pre-copy; the destination console
//!   after it received the snapshot; a takeover failing late (QEMU's VNC unreachable); the
//!   source QEMU in the switchover (nobody can take over: a bounded wait, a clear error);
//! - a key held down across the switch is released once;
//! - German text typed with QEMU and the consoles on `-k de` through co-migrations: every key
//!   edge reaches the guest once, in order, as the scancode a German keyboard gives;
//! - Ctrl-C on `dmore migrate` during pre-copy: cancelled, the session stays on the source;
//! - a second migration of the VM while one runs: refused, the first undisturbed;
//! - SIGTERM to the source console while it holds the session (libvirt's `release` hook can
//!   send it before the takeover): it hands over first.
//!
//! Skipped (with a note) where network namespaces cannot be made (not root).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;

use anyhow::{bail, ensure, Context as _};
use console::control::{request, Command};
use guest::report::Report;
use guest::GuestOptions;
use migrate::vm::{Migration, MigrationOptions, Phase};
use rfb::ClientMessage;
use scenarios::cobed::{CoBed, CoBedOptions};
use scenarios::delivery::{
    check_nothing_lost, check_nothing_lost_by_dmore, steady_viewer as viewer,
};
use scenarios::migrations_from_env;
use scenarios::steady::tally::{key_presses, tally};
use testbed::capture::Capture;

/// Bound on each wait (a guard against hanging, not a timed assertion).
const WAIT: Duration = Duration::from_secs(60);

/// One bed at a time: each runs two QEMUs, two consoles and a viewer, and this machine has
/// two cores; beds side by side would measure the machine, not dmore.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bed, or `None` (with a note) where namespaces cannot be made.
async fn bed(memory_mib: u32, guest: GuestOptions) -> anyhow::Result<Option<CoBed>> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.memory_mib = memory_mib;
    options.guest = guest;
    Ok(CoBed::start_or_skip(options).await?)
}

/// Starts QEMU's migration with `pause-before-switchover` and runs it until the source VM is
/// held there (the console's move then waits for `proceed`).
async fn held_at_pre_switchover<'m>(
    src: &'m qmp::Connection,
    dst: &'m qmp::Connection,
    incoming_uri: &str,
) -> anyhow::Result<Migration<'m, qmp::Client, qmp::Client>> {
    let options = MigrationOptions {
        pause_before_switchover: true,
        ..MigrationOptions::default()
    };
    let mut m = Migration::start(src.client(), dst.client(), incoming_uri, options).await?;
    ensure!(
        m.run().await? == Phase::PreSwitchover,
        "held at pre-switchover"
    );
    Ok(m)
}

fn dirtying(dirty_mib: u32, rate: u32) -> GuestOptions {
    GuestOptions {
        dirty_mib,
        dirty_rate_mib_s: rate,
        ..GuestOptions::default()
    }
}

/// The serving console runs as `nobody` with only CAP_NET_ADMIN and CAP_NET_RAW (bits 12 and
/// 13 of CapEff), whatever the test itself runs as: dmore never needs root.
fn check_unprivileged(bed: &CoBed) -> anyhow::Result<()> {
    let (_, pid) = bed.home_pids().context("home console")?;
    let ps = std::process::Command::new("ps")
        .args(["-o", "user,pid,args", "-p", &pid.to_string()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&ps.stdout));
    common::check_runs_as_nobody(
        "console",
        pid,
        "0000000000003000",
        "only CAP_NET_ADMIN and CAP_NET_RAW",
    )
}

/// Co-migrations per test; `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 5;

async fn consecutive(memory_mib: u32, guest: GuestOptions) -> anyhow::Result<()> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.memory_mib = memory_mib;
    options.guest = guest;
    // A guest busy dirtying memory on a loaded host can leave its PS/2 queue unread long
    // enough for QEMU to drop a mouse packet (CI lost 1 click of 215 so, keys exact): the
    // trace tells QEMU's own losses from dmore's.
    options.ps2_trace = true;
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let service = match bed.service().ip() {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => bail!("IPv4 service address expected"),
    };
    let capture = Capture::start(bed.testbed().client(), "comigration", service)?;
    let viewer = viewer(&bed).await?;
    let first_key = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=migrations_from_env(MIGRATIONS) {
        let (from, to) = (bed.home(), bed.other());
        let started = first_key.elapsed();
        let t = bed.migrate(false).await?;
        ensure!(
            bed.service_is_on(to)? && !bed.service_is_on(from)?,
            "migration {n}: the service address must be on {to:?} alone"
        );
        common::note_link_losses(&bed, n).await?;
        println!(
            "migration {n} ran from {started:?} to {:?} after the viewer connected",
            first_key.elapsed()
        );
        println!(
            "migration {n} {from:?}->{to:?}: VM downtime {:?} ms, freeze->takeover {:?}, state {:?} B",
            t.vm_downtime_ms, t.freeze_to_takeover, t.state_bytes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The capture ends before the viewer closes its connection (its own FIN).
    common::check_one_connection("capture", &capture.finish()?)?;
    check_unprivileged(&bed)?;
    check_nothing_lost_by_dmore(&mut bed, viewer).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_comigrations_of_a_128_mib_guest_dirtying_memory_lose_nothing(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    consecutive(128, dirtying(64, 64)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_comigrations_of_a_1_gib_guest_dirtying_memory_lose_nothing(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    consecutive(1024, dirtying(256, 64)).await
}

/// The `events` migration capability as the home QEMU has it now.
async fn events_capability(bed: &CoBed) -> anyhow::Result<bool> {
    let caps = bed
        .home_qemu()
        .context("home QEMU")?
        .qmp()
        .execute("query-migrate-capabilities", serde_json::Value::Null)
        .await?;
    caps.as_array()
        .and_then(|list| list.iter().find(|c| c["capability"] == "events"))
        .and_then(|c| c["state"].as_bool())
        .with_context(|| format!("no events capability in {caps}"))
}

/// How the plain-QMP manager script (`manager/qmp_migrate.py`) migrates.
#[derive(Debug, Clone, Copy)]
struct Manager {
    /// Its `--events`: `on`, `off` (set explicitly right before `migrate`), or `default` (left
    /// alone: a bare `migrate`).
    events: &'static str,
    /// Its `--pause-before-switchover` (libvirt always turns it on).
    pause_before_switchover: bool,
    /// Its `--postcopy MIB_S`: switch to post-copy after the first pass over RAM, sent at
    /// this pace until then.
    postcopy_mib_s: Option<u32>,
}

impl Manager {
    /// As libvirt migrates (pause-before-switchover on), with `events` as given.
    fn libvirt_like(events: &'static str) -> Manager {
        Manager {
            events,
            pause_before_switchover: true,
            postcopy_mib_s: None,
        }
    }

    /// The script's arguments after its sockets and URI.
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--events".to_owned(),
            self.events.to_owned(),
            "--pause-before-switchover".to_owned(),
            if self.pause_before_switchover {
                "on"
            } else {
                "off"
            }
            .to_owned(),
        ];
        if let Some(rate) = self.postcopy_mib_s {
            args.extend(["--postcopy".to_owned(), rate.to_string()]);
        }
        args
    }
}

/// A manager's migrations, A -> B -> A, of `guest`: the consoles are told where to go (as a
/// libvirt hook would), and a plain-QMP script, knowing nothing of dmore, migrates the VM as
/// `manager` says. Every key and click once, over one TCP connection (the client host's
/// capture), nothing the consoles report uncertain or dropped; only what QEMU's PS/2 trace
/// shows QEMU lost itself is forgiven (README, failure table).
async fn driven_by_a_manager(manager: Manager, guest: GuestOptions) -> anyhow::Result<()> {
    const MOVES: usize = 2;
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.guest = guest;
    options.ps2_trace = true;
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let capture = bed.capture("manager").await?;
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=MOVES {
        // The console turns the capability on whenever no migration runs (QEMU's default is
        // off), also on a destination whose manager had turned it off for the last move.
        let mut on = false;
        for _ in 0..500 {
            on = events_capability(&bed).await?;
            if on {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ensure!(
            on,
            "move {n}: the home console turned the events capability on"
        );
        bed.prepare_destination().await?;
        let plan = bed.plan(false)?;
        request(
            &plan.source_console,
            &Command::Prepare(plan.dest_console_addr),
        )
        .await?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manager/qmp_migrate.py");
        let out = tokio::process::Command::new("python3")
            .arg(script)
            .arg("--source")
            .arg(&plan.source_qmp)
            .arg("--dest")
            .arg(&plan.dest_qmp)
            .args(["--uri", &plan.incoming_uri])
            .args(manager.args())
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        ensure!(
            out.status.success(),
            "the manager script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if manager.postcopy_mib_s.is_some() {
            ensure!(
                stdout.contains("post-copy: the destination VM runs"),
                "move {n} went through post-copy"
            );
        }
        let serving = Command::Wait {
            phase: "Serving".into(),
            timeout: WAIT,
        };
        if let Err(e) = request(&plan.dest_console, &serving).await {
            for control in [&plan.source_console, &plan.dest_console] {
                let log = std::fs::read_to_string(control.with_file_name("console.stderr"));
                println!("{}:\n{}", control.display(), log.unwrap_or_default());
            }
            bail!("move {n}: the destination console never served: {e}");
        }
        bed.finish().await?;
    }
    // What the consoles report: nothing uncertain (a key that may or may not have reached the
    // guest) and nothing dropped, over both moves (the counts travel with the session).
    let home = request(
        bed.home_control().context("home console")?,
        &Command::Status,
    )
    .await?;
    println!(
        "console reports: uncertain {} dropped {}",
        home["link_uncertain"], home["link_dropped"]
    );
    ensure!(
        home["link_uncertain"] == 0 && home["link_dropped"] == 0,
        "the console is sure of every key: {home}"
    );
    let report = tokio::task::spawn_blocking(move || capture.finish()).await??;
    println!("the client's capture: {:?}", report.connections);
    ensure!(
        report.connections.len() == 1
            && report
                .connections
                .values()
                .all(|f| (f.syn, f.fin, f.rst) == (1, 0, 0)),
        "one connection: one SYN, no FIN, no RST: {report:?}"
    );
    check_nothing_lost_by_dmore(&mut bed, viewer).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_script_migrates_with_events_on_and_the_console_follows() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    driven_by_a_manager(Manager::libvirt_like("on"), GuestOptions::default()).await
}

/// Nothing but the source console's `prepare` announces this migration: the script turns
/// `events` off right before `migrate`. Still every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_script_migrates_with_events_off_and_the_console_follows() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    driven_by_a_manager(Manager::libvirt_like("off"), GuestOptions::default()).await
}

/// The script leaves `events` as it finds it (QEMU's default is off; the console turned it
/// on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_script_migrates_with_events_left_alone_and_the_console_follows(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    driven_by_a_manager(Manager::libvirt_like("default"), GuestOptions::default()).await
}

/// A manager that turns `pause-before-switchover` off (issue 12): QEMU switches over on its
/// own, nobody answers anything; the consoles follow by the run state alone (the source
/// freezes at `STOP`, the destination takes over at `RESUME`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_script_migrates_without_pause_before_switchover_and_the_console_follows(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let manager = Manager {
        pause_before_switchover: false,
        ..Manager::libvirt_like("on")
    };
    driven_by_a_manager(manager, GuestOptions::default()).await
}

/// Post-copy (issue 12): a guest dirtying 32 MiB/s while RAM goes at 16 MiB/s (pre-copy cannot
/// converge), `postcopy-ram` on both sides, `migrate-start-postcopy` after the first pass. The
/// source VM stops for the switch to post-copy and the destination VM runs while its RAM still
/// comes from the source: the console moves at that switch, by the run state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_script_migrates_in_postcopy_and_the_console_follows() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let manager = Manager {
        postcopy_mib_s: Some(16),
        ..Manager::libvirt_like("on")
    };
    driven_by_a_manager(manager, dirtying(32, 32)).await
}

/// vncdotool from the client host: `key` commands 40 ms apart, a co-migration in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vncdotool_types_through_a_comigration() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, GuestOptions::default()).await? else {
        return Ok(());
    };
    let letters: Vec<String> = (0..60)
        .map(|i| char::from(b'a' + (i % 26) as u8).to_string())
        .collect();
    let mut args = vec![
        "-s".to_owned(),
        format!("{}::{}", bed.service().ip(), bed.service().port()),
    ];
    for l in &letters {
        args.extend([
            "key".to_owned(),
            l.clone(),
            "pause".to_owned(),
            "0.04".to_owned(),
        ]);
    }
    let mut vncdo = bed.testbed().client().command("/opt/dmore-venv/bin/vncdo");
    vncdo.args(&args);
    let typing = tokio::process::Command::from(vncdo).output();
    let migrating = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        bed.migrate(false).await
    };
    let (out, migrated) = tokio::join!(typing, migrating);
    let out = out.context("running vncdo (installed by .ci/setup)")?;
    migrated?;
    ensure!(
        out.status.success(),
        "vncdo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports = bed
        .collect_reports(Duration::from_millis(500), WAIT)
        .await
        .to_vec();
    let expected: Vec<u16> = letters
        .iter()
        .filter_map(|l| guest::keymap::scancode(l.chars().next()?).map(u16::from))
        .collect();
    let keys = tally(&expected, &key_presses(&reports));
    println!("vncdo: {keys:?}");
    ensure!(
        keys.sent == 60 && keys.exact(),
        "every key once, in order: {keys:?}"
    );
    Ok(())
}

/// Fault: the destination QEMU is killed while RAM is pre-copied. The migration fails, the
/// session stays on the source (nothing lost), and a retried migration succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_destination_qemu_during_precopy_leaves_the_session_on_the_source(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, dirtying(64, 32)).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    let source = bed.home_qemu().context("home QEMU")?.qmp().clone();
    // Slow enough that pre-copy lasts seconds: the kill lands in it.
    source
        .execute(
            "migrate-set-parameters",
            serde_json::json!({"max-bandwidth": 8 << 20}),
        )
        .await?;
    bed.prepare_destination().await?;
    let (dest_qemu, _) = bed.destination_pids().context("destination")?;
    let killer = async {
        loop {
            let info = source
                .execute("query-migrate", serde_json::Value::Null)
                .await?;
            let sent = info
                .pointer("/ram/transferred")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if info.get("status").and_then(|s| s.as_str()) == Some("active") && sent > 4 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dest_qemu as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        println!("destination QEMU killed during pre-copy");
        anyhow::Ok(())
    };
    let (migrated, killed) = tokio::join!(bed.run_migration(false, |_| {}), killer);
    killed?;
    let err = migrated.err().context("the migration failed")?;
    println!("migration failed as it must: {err}");
    bed.abandon_destination();
    let status = request(bed.home_control().context("home")?, &Command::Status).await?;
    ensure!(
        status["phase"] == "Serving" && status["viewers"] == 1,
        "the source serves: {status}"
    );
    source
        .execute(
            "migrate-set-parameters",
            serde_json::json!({"max-bandwidth": 128 << 20}),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bed.migrate(false).await?;
    println!("retried migration succeeded");
    check_nothing_lost(&mut bed, viewer).await?;
    Ok(())
}

/// Fault: the source QEMU is killed while the VM is held at pre-switchover, after the source
/// console froze and sent its snapshot. The migration cannot complete, so no destination
/// console ever takes over: the source console, holding the checkpoint with no QEMU, must not
/// wait forever. After `--qemu-wait` it exits non-zero saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_qemu_dying_in_the_switchover_ends_the_session_with_a_clear_error(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.qemu_wait = Some(Duration::from_secs(3));
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let _viewer = viewer(&bed).await?;
    let plan = bed.announce(true).await?;
    let (src, _src_events) = qmp::Connection::connect(&plan.source_qmp).await?;
    let (dst, _dst_events) = qmp::Connection::connect(&plan.dest_qmp).await?;
    let m = held_at_pre_switchover(&src, &dst, &plan.incoming_uri).await?;
    let ready = Command::Wait {
        phase: "Ready".into(),
        timeout: WAIT,
    };
    request(&plan.dest_console, &ready).await?;
    let status = request(&plan.source_console, &Command::Status).await?;
    ensure!(
        status["phase"] == "Sent",
        "the source froze and sent: {status}"
    );
    let (source_qemu, _) = bed.home_pids().context("home")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(source_qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    println!("source QEMU killed in the switchover");
    drop(m);
    drop((src, dst));
    let (status, stderr) = bed
        .home_console_exit(WAIT)
        .await
        .context("the source console waited on past --qemu-wait")?;
    println!("source console gave up as it must ({status}):\n{stderr}");
    ensure!(!status.success(), "it exits non-zero");
    ensure!(
        stderr.contains("no destination console took the session over within 3 s"),
        "its error says why"
    );
    Ok(())
}

/// Fault: the destination console is killed after it received the snapshot (the VM is held
/// at pre-switchover). The VM switches anyway; a restarted destination console takes over
/// from the source's checkpoint and the viewer's connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_destination_console_takes_over_from_the_sources_checkpoint(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, GuestOptions::default()).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plan = bed.announce(true).await?;
    let (src, _src_events) = qmp::Connection::connect(&plan.source_qmp).await?;
    let (dst, _dst_events) = qmp::Connection::connect(&plan.dest_qmp).await?;
    let mut m = held_at_pre_switchover(&src, &dst, &plan.incoming_uri).await?;
    let ready = Command::Wait {
        phase: "Ready".into(),
        timeout: WAIT,
    };
    request(&plan.dest_console, &ready).await?;
    let (_, dest_console) = bed.destination_pids().context("destination")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dest_console as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    println!("destination console killed with the snapshot in hand");
    m.proceed().await?;
    println!("VM switched: {:?}", m.report());
    tokio::time::sleep(Duration::from_millis(500)).await;
    bed.restart_destination_console().await?;
    let serving = Command::Wait {
        phase: "Serving".into(),
        timeout: WAIT,
    };
    if let Err(e) = request(&plan.dest_console, &serving).await {
        let log = |path: &Path| std::fs::read_to_string(path.with_file_name("console.stderr"));
        bail!(
            "{e}\nsource console:\n{}\nrestarted destination console:\n{}",
            log(&plan.source_console).unwrap_or_default(),
            log(&plan.dest_console).unwrap_or_default()
        );
    }
    println!("the restarted destination console serves the session");
    src.client().quit().await.ok();
    drop((src, dst));
    bed.finish().await?;
    check_nothing_lost(&mut bed, viewer).await?;
    Ok(())
}

/// libvirt's `release` hook stops the source console (SIGTERM) once its QEMU is gone, which
/// can come before the destination console took over. A stop signal while the source holds
/// its checkpoint waits: the console is still there at `pre-switchover` after the signal,
/// hands the session over when the VM switches, and exits; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_frozen_source_console_waits_for_the_handover() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, GuestOptions::default()).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plan = bed.announce(true).await?;
    let (src, _src_events) = qmp::Connection::connect(&plan.source_qmp).await?;
    let (dst, _dst_events) = qmp::Connection::connect(&plan.dest_qmp).await?;
    let mut m = held_at_pre_switchover(&src, &dst, &plan.incoming_uri).await?;
    let sent = Command::Wait {
        phase: "Sent".into(),
        timeout: WAIT,
    };
    request(&plan.source_console, &sent).await?;
    let (_, source_console) = bed.home_pids().context("home")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(source_console as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = request(&plan.source_console, &Command::Status).await?;
    ensure!(
        status["phase"] == "Sent",
        "the source console still holds the session after SIGTERM: {status}"
    );
    m.proceed().await?;
    bed.finish().await?;
    check_nothing_lost(&mut bed, viewer).await?;
    Ok(())
}

/// Fault: the destination console's takeover fails late — its VM runs, the snapshot is in, and
/// the console's QMP socket cannot be reached again (hidden for the test; the console watched
/// the VM on it and attached to QEMU's VNC before, and its link reconnects to it after the
/// switchover). The console must fail before it restores a viewer socket: the connections stay
/// with the source's checkpoint, and a console restarted once the socket is back takes over
/// with nothing lost and no reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_fails_late_leaves_the_session_to_a_restarted_console() -> anyhow::Result<()>
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, GuestOptions::default()).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plan = bed.announce(false).await?;
    let qmp = bed
        .destination_qemu()
        .context("destination")?
        .qmp2_path()
        .context("the console's QMP socket")?
        .to_path_buf();
    let (src, _src_events) = qmp::Connection::connect(&plan.source_qmp).await?;
    let (dst, _dst_events) = qmp::Connection::connect(&plan.dest_qmp).await?;
    // The arriving console watches on its QMP socket first, then attaches to QEMU's VNC: once
    // QEMU lists that VNC client, hiding the socket hits only the link's reconnect.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let vnc = dst
            .client()
            .execute("query-vnc", serde_json::Value::Null)
            .await?;
        if vnc["clients"].as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the destination console never attached to QEMU's VNC: {vnc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hidden = qmp.with_extension("hidden");
    std::fs::rename(&qmp, &hidden)?;
    let mut m = Migration::start(
        src.client(),
        dst.client(),
        &plan.incoming_uri,
        MigrationOptions::default(),
    )
    .await?;
    ensure!(m.run().await? == Phase::Completed, "the VM switched");
    let (status, stderr) = bed
        .destination_console_exit(WAIT)
        .await
        .context("the destination console did not fail without its QMP socket")?;
    println!("destination console failed as it must ({status}):\n{stderr}");
    ensure!(!status.success(), "it exits non-zero");
    ensure!(
        stderr.contains(&qmp.display().to_string()),
        "its error names the QMP socket it could not reach"
    );
    std::fs::rename(&hidden, &qmp)?;
    bed.restart_destination_console().await?;
    let serving = Command::Wait {
        phase: "Serving".into(),
        timeout: WAIT,
    };
    request(&plan.dest_console, &serving).await?;
    println!("the restarted destination console serves the session");
    src.client().quit().await.ok();
    drop((src, dst));
    bed.finish().await?;
    // Typing goes on into the restarted console's VM.
    tokio::time::sleep(Duration::from_millis(500)).await;
    check_nothing_lost(&mut bed, viewer).await?;
    Ok(())
}

/// A key pressed on the source and released on the destination reaches the guest as one
/// press and one release (QEMU drops a VNC release whose press it did not see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_across_the_switch_is_released_once() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, GuestOptions::default()).await? else {
        return Ok(());
    };
    let stream = scenarios::typist::connect_from(bed.testbed().client(), bed.service()).await?;
    let (_done, mut reader, mut writer) = vnc::client::connect(
        stream,
        scenarios::typist::plain_client_config(),
        &vnc::client::Setup::default(),
    )
    .await?;
    let drain = tokio::spawn(async move { while reader.read_message().await.is_ok() {} });
    let a = 0x61;
    writer
        .send_all(&[ClientMessage::KeyEvent {
            down: true,
            keysym: a,
        }])
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bed.migrate(false).await?;
    writer
        .send_all(&[ClientMessage::KeyEvent {
            down: false,
            keysym: a,
        }])
        .await?;
    let reports = bed
        .collect_reports(Duration::from_millis(700), WAIT)
        .await
        .to_vec();
    drain.abort();
    let edges: Vec<bool> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Key {
                down, code: 0x1e, ..
            } => Some(*down),
            _ => None,
        })
        .collect();
    println!("the guest saw 'a': {edges:?} (true = press)");
    ensure!(
        edges == [true, false],
        "one press, then one release: {edges:?}"
    );
    Ok(())
}

/// German text as a viewer on a German keyboard sends it: per character its keysym, whether
/// Shift and AltGr are held, and the key a German (nodeadkeys) keyboard gives, written out here
/// by hand (not derived from the code under test): Z and Y swapped, umlauts, AltGr symbols,
/// keysyms with two keys in QEMU's de map (`&`, `^`, `°`, `` ` ``). The last column is the key
/// QEMU's VNC server releases: its own, except for `°` — QEMU 7.2 presses Shift+0x29 for it and
/// releases 0x0b, the first of its two keycodes (it never finds a keycode with a modifier flag
/// down), so both lanes must do that too.
const GERMAN: &[(char, bool, bool, u16, u16)] = &[
    ('G', true, false, 0x22, 0x22),
    ('r', false, false, 0x13, 0x13),
    ('ü', false, false, 0x1a, 0x1a),
    ('ß', false, false, 0x0c, 0x0c),
    ('e', false, false, 0x12, 0x12),
    (' ', false, false, 0x39, 0x39),
    ('Z', true, false, 0x15, 0x15),
    ('y', false, false, 0x2c, 0x2c),
    ('z', false, false, 0x15, 0x15),
    ('Y', true, false, 0x2c, 0x2c),
    (':', true, false, 0x34, 0x34),
    ('@', false, true, 0x10, 0x10),
    ('€', false, true, 0x12, 0x12),
    ('{', false, true, 0x08, 0x08),
    ('|', false, true, 0x56, 0x56),
    ('}', false, true, 0x0b, 0x0b),
    ('\\', false, true, 0x0c, 0x0c),
    ('~', false, true, 0x1b, 0x1b),
    ('<', false, false, 0x56, 0x56),
    ('>', true, false, 0x56, 0x56),
    ('&', true, false, 0x07, 0x07),
    ('/', true, false, 0x08, 0x08),
    ('^', false, false, 0x29, 0x29),
    ('°', true, false, 0x29, 0x0b),
    ('`', true, false, 0x0d, 0x0d),
    ('Ä', true, false, 0x28, 0x28),
    ('ö', false, false, 0x27, 0x27),
    ('Ü', true, false, 0x1a, 0x1a),
    ('-', false, false, 0x35, 0x35),
    ('.', false, false, 0x34, 0x34),
];

/// A viewer types German text (Shift and AltGr as a keyboard sends them) into a VM whose QEMU
/// and consoles use `-k de`, through two co-migrations: the guest sees every key edge once,
/// in order, each as the German key (whichever lane carried it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn german_text_typed_through_comigrations_arrives_as_german_keys() -> anyhow::Result<()> {
    const SHIFT_L: (u32, u16) = (0xffe1, 0x2a);
    const ALTGR: (u32, u16) = (0xfe03, 0xb8); // ISO_Level3_Shift, right Alt
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.keymap = Some("de".to_owned());
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let stream = scenarios::typist::connect_from(bed.testbed().client(), bed.service()).await?;
    let (_done, mut reader, mut writer) = vnc::client::connect(
        stream,
        scenarios::typist::plain_client_config(),
        &vnc::client::Setup::default(),
    )
    .await?;
    let drain = tokio::spawn(async move { while reader.read_message().await.is_ok() {} });
    let typing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let typist = {
        let typing = typing.clone();
        tokio::spawn(async move {
            // (down, scancode) edges the guest must see.
            let mut expected: Vec<(bool, u16)> = Vec::new();
            let mut rounds = 0;
            while typing.load(std::sync::atomic::Ordering::Relaxed) || rounds < 2 {
                rounds += 1;
                for &(c, shift, altgr, code, release) in GERMAN {
                    let mut held = Vec::new();
                    if shift {
                        held.push(SHIFT_L);
                    }
                    if altgr {
                        held.push(ALTGR);
                    }
                    let keysym = u32::from(c);
                    let mut edges: Vec<(bool, (u32, u16))> =
                        held.iter().map(|&m| (true, m)).collect();
                    edges.extend([(true, (keysym, code)), (false, (keysym, release))]);
                    edges.extend(held.iter().rev().map(|&m| (false, m)));
                    for (down, (keysym, code)) in edges {
                        writer
                            .send_all(&[ClientMessage::KeyEvent { down, keysym }])
                            .await?;
                        expected.push((down, code));
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                }
            }
            anyhow::Ok((expected, writer))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = async {
        bed.migrate(false).await?;
        bed.migrate(false).await
    }
    .await;
    typing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (expected, _writer) = typist.await??;
    moved?;
    let reports = bed
        .collect_reports(Duration::from_millis(700), WAIT)
        .await
        .to_vec();
    drain.abort();
    let edges: Vec<(bool, u16)> = reports
        .iter()
        .filter_map(|r| match r {
            // The guest reports an e0-prefixed key as 0xe0xx, QEMU numbers it 0x80 | xx.
            Report::Key { down, code, .. } => Some((*down, qnum(*code))),
            _ => None,
        })
        .collect();
    let presses: Vec<u16> = expected.iter().filter(|e| e.0).map(|e| e.1).collect();
    let seen: Vec<u16> = key_presses(&reports).into_iter().map(qnum).collect();
    let keys = tally(&presses, &seen);
    let home = request(bed.home_control().context("home")?, &Command::Status).await?;
    println!(
        "German text through 2 co-migrations: {} key edges sent, {} seen by the guest; \
         presses {keys:?}; the last console: {} keys through QMP, {} without a key",
        expected.len(),
        edges.len(),
        home["link_qmp_delivered"],
        home["link_unmapped_keys"]
    );
    ensure!(
        home["link_unmapped_keys"] == 0,
        "every German key has one: {home}"
    );
    if let Some(i) = (0..expected.len().max(edges.len())).find(|&i| expected.get(i) != edges.get(i))
    {
        bail!(
            "key edge {i}: sent {:?}, the guest saw {:?} (edges as (down, scancode))",
            expected.get(i),
            edges.get(i)
        );
    }
    Ok(())
}

/// QEMU's key number of a guest-reported set-1 code (`0xe0xx` is `0x80 | xx`).
fn qnum(code: u16) -> u16 {
    if code & 0xff00 == 0xe000 {
        0x80 | (code & 0x7f)
    } else {
        code
    }
}

/// The command line: `dmore migrate` moves the VM and its console (the viewer keeps typing) and
/// prints the timeline; `--hold-switchover` and `--events off` as an operator would give them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmore_migrate_moves_the_vm_and_its_console_and_prints_the_timeline() -> anyhow::Result<()>
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, GuestOptions::default()).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bed.prepare_destination().await?;
    let plan = bed.plan(true)?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dmore"))
        .arg("migrate")
        .arg("--source-qmp")
        .arg(&plan.source_qmp)
        .arg("--dest-qmp")
        .arg(&plan.dest_qmp)
        .args(["--incoming-uri", &plan.incoming_uri])
        .arg("--source-console")
        .arg(&plan.source_console)
        .arg("--dest-console")
        .arg(&plan.dest_console)
        .args(["--dest-console-addr", &plan.dest_console_addr.to_string()])
        .args(["--hold-switchover", "--events", "off"])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    ensure!(
        out.status.success(),
        "dmore migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in ["VM downtime", "freeze -> takeover", "viewers moved"] {
        ensure!(stdout.contains(figure), "the timeline shows {figure:?}");
    }
    bed.finish().await?;
    // Typing goes on after the move, into the destination.
    tokio::time::sleep(Duration::from_millis(500)).await;
    check_nothing_lost(&mut bed, viewer).await?;
    Ok(())
}

/// Whether a process has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// `dmore migrate` as an operator runs it, for `plan`; its output piped.
fn dmore_migrate(plan: &orchestrate::Plan) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dmore"))
        .arg("migrate")
        .arg("--source-qmp")
        .arg(&plan.source_qmp)
        .arg("--dest-qmp")
        .arg(&plan.dest_qmp)
        .args(["--incoming-uri", &plan.incoming_uri])
        .arg("--source-console")
        .arg(&plan.source_console)
        .arg("--dest-console")
        .arg(&plan.dest_console)
        .args(["--dest-console-addr", &plan.dest_console_addr.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// A guest with 64 MiB of non-zero memory (zero pages cost a migration no bandwidth), barely
/// dirtied: a dirtying loop in the timer interrupt, slowed by the migration's dirty logging,
/// would hold back the guest's keyboard on a loaded machine (its 16-byte PS/2 queue
/// overflows), which is not what these tests are about.
fn slowly_migrated() -> GuestOptions {
    dirtying(64, 1)
}

/// A `dmore migrate` whose pre-copy lasts (the source QEMU's bandwidth limited), returned
/// once pre-copy runs, with its plan and the source QEMU's monitor.
async fn slow_dmore_migrate(
    bed: &mut CoBed,
) -> anyhow::Result<(tokio::process::Child, orchestrate::Plan, qmp::Client)> {
    let source = bed.home_qemu().context("home QEMU")?.qmp().clone();
    // 64 MiB of data (`slowly_migrated`) at 8 MiB/s: seconds.
    source
        .execute(
            "migrate-set-parameters",
            serde_json::json!({"max-bandwidth": 8 << 20}),
        )
        .await?;
    bed.prepare_destination().await?;
    let plan = bed.plan(false)?;
    let child = dmore_migrate(&plan)?;
    tokio::time::timeout(WAIT, async {
        loop {
            let info = source
                .execute("query-migrate", serde_json::Value::Null)
                .await?;
            let sent = info
                .pointer("/ram/transferred")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if info.get("status").and_then(|s| s.as_str()) == Some("active") && sent > 4 << 20 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("pre-copy never ran")??;
    Ok((child, plan, source))
}

/// Waits for `child` (bounded) and prints its output.
async fn output_of(child: tokio::process::Child) -> anyhow::Result<std::process::Output> {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .context("dmore migrate did not end")??;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

/// [`check_nothing_lost`], printing the console's log if it fails.
async fn check_nothing_lost_or_show(
    bed: &mut CoBed,
    viewer: scenarios::steady::SteadyViewer,
    console: &Path,
) -> anyhow::Result<()> {
    let checked = check_nothing_lost(bed, viewer).await;
    if checked.is_err() {
        let log = console.with_file_name("console.stderr");
        println!(
            "the console's log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    checked?;
    Ok(())
}

/// Ctrl-C on `dmore migrate` while QEMU pre-copies: the migration is cancelled, the command
/// says so and exits 130, the VM runs on the source, whose console serves its viewer on the
/// same connection, every key typed before, during and after reached the guest once, and the
/// destination QEMU is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_dmore_migrate_cancels_and_the_session_stays_on_the_source() -> anyhow::Result<()>
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, slowly_migrated()).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (child, plan, source) = slow_dmore_migrate(&mut bed).await?;
    let (dest_qemu, _) = bed.destination_pids().context("destination")?;
    let pid = child.id().context("dmore migrate's pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    println!("SIGINT sent to dmore migrate during pre-copy");
    let out = output_of(child).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(130),
        "dmore migrate exits 130 after Ctrl-C: {:?}",
        out.status
    );
    ensure!(
        stdout.contains("cancelled") && stdout.contains("runs on the source"),
        "it says what happened and where the VM is: {stdout}"
    );
    let info = source
        .execute("query-migrate", serde_json::Value::Null)
        .await?;
    let status = source
        .execute("query-status", serde_json::Value::Null)
        .await?;
    println!(
        "source QEMU: migration {}, run state {}",
        info["status"], status["status"]
    );
    ensure!(
        info["status"] == "cancelled" && status["running"] == true,
        "the source VM runs and its migration was cancelled: {info} {status}"
    );
    let console = request(&plan.source_console, &Command::Status).await?;
    ensure!(
        console["phase"] == "Serving" && console["viewers"] == 1,
        "the source console serves its viewer: {console}"
    );
    tokio::time::timeout(WAIT, async {
        while !ended(dest_qemu) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the destination QEMU is still running")?;
    println!("destination QEMU ended");
    bed.abandon_destination();
    // Typing goes on into the source.
    tokio::time::sleep(Duration::from_millis(500)).await;
    check_nothing_lost_or_show(&mut bed, viewer, &plan.source_console).await
}

/// Two migrations of one VM at once: while a `dmore migrate` pre-copies, a second one (same
/// arguments) and a `prepare` towards another destination are refused with a clear error,
/// and the first, undisturbed, moves the VM and its console with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_migration_while_one_runs_is_refused_and_the_first_finishes() -> anyhow::Result<()>
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = bed(128, slowly_migrated()).await? else {
        return Ok(());
    };
    let viewer = viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (first, plan, source) = slow_dmore_migrate(&mut bed).await?;

    let second = output_of(dmore_migrate(&plan)?).await?;
    let said = String::from_utf8_lossy(&second.stderr);
    ensure!(
        !second.status.success() && said.contains("busy with another migration"),
        "the second dmore migrate is refused: {:?} {said}",
        second.status
    );
    let elsewhere = SocketAddr::from(([10, 213, 0, 99], 4700));
    let refused = request(&plan.source_console, &Command::Prepare(elsewhere)).await;
    println!("prepare towards another destination: {refused:?}");
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("under way")),
        "a prepare towards another destination is refused: {refused:?}"
    );
    let info = source
        .execute("query-migrate", serde_json::Value::Null)
        .await?;
    ensure!(
        info["status"] == "active",
        "the first migration runs on: {}",
        info["status"]
    );

    // Let the first one finish.
    source
        .execute(
            "migrate-set-parameters",
            serde_json::json!({"max-bandwidth": 1u64 << 30}),
        )
        .await?;
    let out = output_of(first).await?;
    ensure!(out.status.success(), "the first dmore migrate succeeded");
    bed.finish().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    check_nothing_lost_or_show(&mut bed, viewer, &plan.dest_console).await
}
