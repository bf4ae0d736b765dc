//! Gateway mode (issue 14) on real hosts and QEMU: a stationary `dmore gateway serve` on the
//! client host, consoles that serve the gateway's resumable streams themselves
//! (`--gateway-listen`), run as `nobody` with no capability and no service address; a
//! viewer connected to the gateway types keys and clicks while the VM co-migrates A ⇄ B.
//!
//! - every key and click reaches the guest once, in order (the guest's serial reports);
//! - the viewer's connection to the gateway is one connection: SYN 1, FIN 0, RST 0 (captured
//!   on the client host's `lo`, where the gateway is);
//! - after the last move the screen the viewer holds is QEMU's screendump but for at most the
//!   blinking cursor's cell;
//! - the gateway reattached at each move where the source's Moved frame said (its log);
//! - printed per move: the VM's downtime, freeze→takeover, and the viewer's longest gap
//!   between screen updates during the move.
//!
//! And a migration cancelled at `pre-switchover`, after the source console froze and sent
//! its snapshot: the source thaws and serves the same live gateway session again, then a real
//! move follows; every key once, one connection.
//!
//! `DMORE_MIGRATIONS=N` sets N (default 10). Skipped (with a note) where network namespaces
//! cannot be made (not root); never on CI.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use console::control::{request, Command};
use migrate::vm::{Migration, MigrationOptions, Phase};
use scenarios::cobed::{CoBed, CoBedOptions, SessionCount};
use scenarios::delivery::{check_count, steady_viewer};
use scenarios::migrations_from_env;
use scenarios::steady::SteadyViewer;
use testbed::capture::Capture;

/// Bound on each wait (a guard against hanging, not a timed assertion).
const WAIT: Duration = Duration::from_secs(60);

/// One bed at a time: each runs two QEMUs, two consoles, a gateway and a viewer on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway-mode bed with a viewer typing and clicking through the gateway, its connection
/// captured as `capture`; `None` (with a note) where namespaces cannot be made.
async fn bed_with_viewer(capture: &str) -> anyhow::Result<Option<(CoBed, Capture, SteadyViewer)>> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.gateway = true;
    let Some(bed) = CoBed::start_or_skip(options).await? else {
        return Ok(None);
    };
    let capture = bed.capture(capture).await?;
    let viewer = steady_viewer(&bed).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Some((bed, capture, viewer)))
}

/// Every key and click reached the guest once, and the viewer's connection to the gateway
/// was one connection: SYN 1, FIN 0, RST 0.
fn check_one_connection(count: &SessionCount) -> anyhow::Result<()> {
    let report = count.capture.as_ref().context("the capture")?;
    common::check_one_connection("viewer-gateway capture", report)?;
    check_count(count)?;
    Ok(())
}

/// One character cell of the VGA text screen (9x16): a blinking cursor changes no more.
const CURSOR_CELL: usize = 9 * 16;

/// Co-migrations per test; `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_through_the_gateway_keeps_its_one_connection_through_co_migrations(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((mut bed, capture, viewer)) = bed_with_viewer("gateway").await? else {
        return Ok(());
    };
    let mut moves = Vec::new();
    for n in 1..=migrations_from_env(MIGRATIONS) {
        let (from, to) = (bed.home(), bed.other());
        let started = Instant::now();
        let t = bed.migrate(false).await?;
        let (_, console) = bed.home_pids().context("home console")?;
        common::check_unprivileged("console", console)?;
        common::note_link_losses(&bed, n).await?;
        moves.push((n, from, to, started, Instant::now(), t));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::check_unprivileged("gateway", bed.gateway_pid().context("the gateway")?)?;
    // Each move's source told the gateway where the session went (no probing).
    let log = bed.gateway_log().context("the gateway's log")?;
    common::check_followed_moves(&log, moves.len())?;
    let count = bed.count_session(viewer, Some(capture)).await?;
    for (n, from, to, started, ended, t) in &moves {
        println!(
            "move {n} {from:?}->{to:?}: VM downtime {:?} ms, freeze->takeover {:?}, viewer gap {:?}",
            t.vm_downtime_ms,
            t.freeze_to_takeover,
            count.log.gap(*started, *ended)
        );
    }
    check_one_connection(&count)?;
    // The viewer's screen against QEMU's own.
    let screen = count.screen.as_ref().context("the viewer's screen")?;
    let qemu = bed.home_qemu().context("home QEMU")?;
    let file = bed.testbed().run_dir().join("screendump.ppm");
    qemu.qmp()
        .execute("screendump", serde_json::json!({ "filename": file }))
        .await?;
    let dump = testbed::viewers::parse_ppm(&std::fs::read(&file)?)?;
    ensure!(
        (usize::from(screen.width()), usize::from(screen.height())) == (dump.width, dump.height),
        "the viewer's screen is {}x{}, QEMU's {}x{}",
        screen.width(),
        screen.height(),
        dump.width,
        dump.height
    );
    let differing = screen
        .pixels()
        .iter()
        .zip(&dump.pixels)
        .filter(|(a, b)| *a & 0x00ff_ffff != **b)
        .count();
    println!(
        "viewer's screen against QEMU's screendump ({}x{}): {differing} pixels differ",
        dump.width, dump.height
    );
    ensure!(
        differing <= CURSOR_CELL,
        "the viewer's screen is QEMU's but for at most the cursor's cell: {differing} pixels differ"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_cancelled_after_the_freeze_thaws_the_gateway_viewer_on_the_source(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((mut bed, capture, viewer)) = bed_with_viewer("thaw").await? else {
        return Ok(());
    };
    let plan = bed.announce(true).await?;
    {
        let (src, _src_events) = qmp::Connection::connect(&plan.source_qmp).await?;
        let (dst, _dst_events) = qmp::Connection::connect(&plan.dest_qmp).await?;
        let options = MigrationOptions {
            pause_before_switchover: true,
            ..MigrationOptions::default()
        };
        let mut m =
            Migration::start(src.client(), dst.client(), &plan.incoming_uri, options).await?;
        ensure!(
            m.run().await? == Phase::PreSwitchover,
            "held at pre-switchover"
        );
        let sent = Command::Wait {
            phase: "Sent".into(),
            timeout: WAIT,
        };
        request(&plan.source_console, &sent).await?;
        // The viewer types into the frozen console meanwhile: its keys wait in the gateway.
        tokio::time::sleep(Duration::from_millis(300)).await;
        m.cancel().await?;
        println!("migration cancelled at pre-switchover after the freeze");
    }
    bed.abandon_destination();
    let serving = Command::Wait {
        phase: "Serving".into(),
        timeout: WAIT,
    };
    request(&plan.source_console, &serving).await?;
    let status = request(&plan.source_console, &Command::Status).await?;
    ensure!(
        status["viewers"] == 1,
        "the source serves its gateway viewer again: {status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    bed.migrate(false).await?;
    println!("a real move after the thaw succeeded");
    let count = bed.count_session(viewer, Some(capture)).await?;
    check_one_connection(&count)?;
    Ok(())
}
