//! The serial console in a browser terminal through co-migrations (issue 19): xterm.js
//! (`tests/web/terminal.html`, from npm) in headless Chromium, served by the bed's stationary
//! `dmore gateway serve` (gateway mode, run as nobody without capabilities) with a token for
//! the serial console; its WebSocket (`/serial`) is carried to the console's serial lane
//! (`--serial-console`, the console's `--serial-gateway-listen`) by the lane's resuming
//! client over resumable sessions, as SSH users' channels are (`ssh_serial`).
//!
//! ```text
//!  client host: Chromium ─ws─> dmore gateway CLIENT:6082 ─resumable sessions─> A/B:4801
//!  A ⇄ B: the Linux guest (its init on ttyS0, COM1: echoes and counts what it receives, a
//!         numbered line every 20 ms) and its console, co-migrated 10 times while the page types
//! ```
//!
//! Checked by reading the terminal's buffer (scrollback included): the guest received every
//! byte the terminal sent exactly once (its own count, and its echoes equal to what was sent),
//! the guest's numbered lines arrived without gap or repeat (output neither lost nor
//! doubled), nothing garbled, and the WebSocket never closed. Printed per move: the page's
//! longest pause in the guest's output.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use common::browser::{in_kept_dir, repo_web, type_through_moves, web_dir, Page, WAIT};
use linux_guest::launch::{LinuxOptions, SerialConsole};
use scenarios::cobed::{CoBed, CoBedOptions, GatewayWeb};
use scenarios::migrations_from_env;
use scenarios::serial::{parse, GuestStream, LINE_MS};

/// Co-migrations while the page types (10); `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 10;
/// The page types a key every this many ms.
const PACE_MS: u64 = 15;
/// Where the gateway serves browsers on the client host's address.
const WEB_PORT: u16 = 6082;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_terminal_through_co_migrations() -> anyhow::Result<()> {
    let moves = migrations_from_env(MIGRATIONS);
    in_kept_dir("browser terminal", |dir| async move {
        terminal(&dir, moves).await
    })
    .await
}

/// The page's web root: dmore's page and xterm.js from npm beside it.
fn site(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let xterm = web_dir().join("node_modules/@xterm/xterm");
    ensure!(
        xterm.join("lib/xterm.js").exists(),
        "xterm.js from npm is not in {} (run .ci/setup)",
        xterm.display()
    );
    let root = dir.join("www");
    std::fs::create_dir_all(&root)?;
    // The gateway's user (nobody, when the test runs as root) reads it.
    for readable in [dir, &root] {
        std::fs::set_permissions(
            readable,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    std::os::unix::fs::symlink(&xterm, root.join("xterm"))?;
    std::fs::copy(repo_web().join("terminal.html"), root.join("terminal.html"))?;
    Ok(root)
}

/// What the terminal shows, as the guest's stream: all of it (the guest writes nothing before
/// it receives its first byte, and the page was connected before it typed) but the screen's
/// blank rows below the cursor (newlines no echo has: the page types none).
async fn shown(page: &mut Page) -> anyhow::Result<GuestStream> {
    let answer = page.ask(serde_json::json!({ "cmd": "buffer" })).await?;
    let text = answer["text"].as_str().context("the terminal's text")?;
    Ok(parse(text.trim_end_matches('\n').as_bytes()))
}

async fn terminal(dir: &Path, moves: usize) -> anyhow::Result<()> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.linux = Some(LinuxOptions {
        serial: SerialConsole::Lines(LINE_MS),
        ..LinuxOptions::default()
    });
    options.memory_mib = testbed::qemu::LINUX_MEMORY_MIB;
    // Gateway mode: the consoles take the gateway's serial sessions on this port, the ones
    // SSH users get too (`ssh_serial`); the gateway serves the terminal's page and `/serial`.
    options.gateway = true;
    options.ssh = true;
    options.serial_port = Some(4801);
    options.gateway_web = Some(GatewayWeb {
        port: WEB_PORT,
        root: site(dir)?,
        tls: false,
    });
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    if nix::unistd::geteuid().is_root() {
        common::check_unprivileged("gateway", bed.gateway_pid().context("the gateway")?)?;
    }
    let web = bed.gateway_web().context("the gateway's web side")?.clone();
    let token = web.serial_token.context("a token for the serial console")?;
    let client = bed.testbed().client().clone();
    let url = format!("{}/terminal.html?path=serial%3Ftoken%3D{token}", web.base);
    let mut page = Page::open("terminal.cjs", &client, &url, dir).await?;
    // The guest writes from the first byte it receives on: before the page types, nothing.
    let before = shown(&mut page).await?;
    ensure!(
        before == GuestStream::default(),
        "the guest wrote before the terminal typed: {before:?}"
    );
    let answer = type_through_moves(
        &mut bed,
        &mut page,
        "terminal",
        moves,
        PACE_MS,
        "in the guest's output",
    )
    .await?;
    let sent = answer["sent"]
        .as_str()
        .context("sent bytes")?
        .as_bytes()
        .to_vec();

    // The guest counts what it received in each numbered line: wait for the last of it.
    let want = u32::try_from(sent.len())?;
    let deadline = Instant::now() + WAIT;
    let stream = loop {
        let stream = shown(&mut page).await?;
        if stream.received() >= Some(want) || Instant::now() >= deadline {
            break stream;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let status = page.ask(serde_json::json!({ "cmd": "status" })).await?;
    println!(
        "terminal: {} bytes sent over {moves} co-migrations; the guest counted {:?}, \
         echoed {} bytes (equal: {}); {} numbered lines, {} missing, {} repeated, {} garbled; \
         WebSocket closes {}",
        sent.len(),
        stream.received(),
        stream.echoed.len(),
        stream.echoed == sent,
        stream.lines.len(),
        stream.missing_lines(),
        stream.repeated_lines(),
        stream.garbled,
        status["closes"]
    );
    ensure!(sent.len() > 50, "the page typed too little to judge");
    ensure!(
        stream.received() == Some(want),
        "the guest received every byte once: counted {:?}, want {want}",
        stream.received()
    );
    ensure!(
        stream.echoed == sent,
        "the guest's echo is what the terminal sent"
    );
    ensure!(
        stream.lines.first().map(|l| l.0) == Some(0)
            && stream.missing_lines() == 0
            && stream.repeated_lines() == 0
            && stream.garbled == 0,
        "the guest's output, whole (from its first line) and once"
    );
    ensure!(
        status["closes"] == serde_json::json!([]) && status["connected"] == true,
        "the terminal's connection ended: {status}"
    );
    page.quit().await?;
    ensure!(
        !bed.gateway_log().unwrap_or_default().contains(&token),
        "the gateway logged the token"
    );
    Ok(())
}
