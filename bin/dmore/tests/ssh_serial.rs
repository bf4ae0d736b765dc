//! The serial console over SSH through the stationary gateway (issue 19), on the real Linux
//! guest: its init serves its serial console on COM1 (`/dev/ttyS0`, the port of users'
//! `console=ttyS0`; `dmore.uart=20`: every received byte counted and echoed, a numbered line
//! `#<n> <received>` every 20 ms from the first byte received; its reports, which the bed
//! reads, and the kernel's console go to COM2). OpenSSH's `ssh` on the client host logs in to
//! `dmore gateway serve --ssh-listen` with the key listed for the console, and types a command
//! line every 50 ms while the VM co-migrates A ⇄ B (consoles as `nobody` with no capability,
//! gateway mode). The
//! gateway carries the channel to the console's serial lane over resumable streams
//! (`--serial-gateway-listen`), resuming at each move.
//!
//! - every typed byte reached the guest exactly once, in order (the guest's count, and its
//!   echoes equal to what was typed);
//! - the output `ssh` printed is what the guest wrote: numbered lines from the first (0) with
//!   no gap, repeat or garbled byte, echoes in between;
//! - the one `ssh` process and its connection lasted the whole run: one SSH session on the
//!   gateway, SYN 1, FIN 0, RST 0 on the connection (captured on the client host's `lo`);
//! - the consoles and the gateway run as `nobody` with no capability;
//! - a key not listed, and the right key for another console, are refused alike.
//!
//! And the baseline on the same guest: a client on QEMU's own chardev socket loses its
//! connection and bytes at each move. `DMORE_MIGRATIONS=N` sets the moves (default 10).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use linux_guest::launch::LinuxOptions;
use scenarios::cobed::{CoBed, CoBedOptions, CONSOLE_NAME, SSH_PORT};
use scenarios::migrations_from_env;
use scenarios::serial::{SerialClient, LINE_MS};

mod common;
mod serial_baseline;

/// Bound on the wait for the guest to count every typed byte (a guard, not a timing).
const WAIT: Duration = Duration::from_secs(60);
/// Typing between moves.
const BETWEEN: Duration = Duration::from_millis(700);
/// Co-migrations per test; `DMORE_MIGRATIONS=N` sets N.
const MIGRATIONS: usize = 10;

/// One bed at a time: each runs two QEMUs, two consoles and a gateway on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn linux() -> LinuxOptions {
    LinuxOptions {
        uart_ms: LINE_MS,
        ..LinuxOptions::default()
    }
}

/// `ssh` as `user` with `key`, run to its end with no input: its exit status and stderr.
async fn ssh_once(
    bed: &CoBed,
    user: &str,
    key: &std::path::Path,
) -> anyhow::Result<(Option<i32>, String)> {
    let mut cmd = tokio::process::Command::from(bed.ssh_client(user, key));
    cmd.arg("true").stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output()).await??;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_through_the_gateway_types_into_the_linux_guests_serial_console_across_co_migrations(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.linux = Some(linux());
    options.memory_mib = testbed::qemu::LINUX_MEMORY_MIB;
    options.serial_port = Some(4801);
    options.gateway = true;
    options.ssh = true;
    let Some(mut bed) = CoBed::start_or_skip(options).await? else {
        return Ok(());
    };
    let (key, wrong) = bed.ssh_keys().context("the bed's SSH keys")?;

    // Refused: a key nobody listed, and the listed key for a console it does not open.
    let refused_key = ssh_once(&bed, CONSOLE_NAME, &wrong).await?;
    let refused_console = ssh_once(&bed, "another-vm", &key).await?;
    println!("wrong key: {refused_key:?}; right key, other console: {refused_console:?}");
    for (what, (code, stderr)) in [
        ("a key not listed", &refused_key),
        ("another console's name", &refused_console),
    ] {
        ensure!(
            *code == Some(255) && stderr.contains("Permission denied (publickey)"),
            "{what} is refused by the gateway: {code:?} {stderr:?}"
        );
    }
    ensure!(
        refused_console.1.replace("another-vm", CONSOLE_NAME) == refused_key.1,
        "both refusals read alike"
    );

    let client_host = bed.testbed().client().clone();
    let client_ip = client_host.ip();
    let capture = tokio::task::spawn_blocking(move || {
        testbed::capture::Capture::start_on(&client_host, "lo", "ssh", client_ip, Some(SSH_PORT))
    })
    .await??;
    let mut ssh = tokio::process::Command::from(bed.ssh_client(CONSOLE_NAME, &key));
    ssh.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = ssh.spawn().context("starting ssh")?;
    let stderr = child.stderr.take().context("ssh's stderr")?;
    let client = SerialClient::over_process(child);
    tokio::time::sleep(BETWEEN).await;
    let s = client.stream();
    println!(
        "before the moves: ssh has {} lines, guest counted {:?} of {} typed",
        s.lines.len(),
        s.received(),
        client.typed().len()
    );
    ensure!(
        !s.lines.is_empty(),
        "the guest's numbered lines reach ssh through the gateway"
    );
    let moves = migrations_from_env(MIGRATIONS);
    for n in 1..=moves {
        let (from, to) = (bed.home(), bed.other());
        let t = bed.migrate(false).await?;
        let (_, console) = bed.home_pids().context("home console")?;
        common::check_runs_as_nobody("console", console, "0000000000000000", "no capability")?;
        common::note_link_losses(&bed, n).await?;
        let s = client.stream();
        println!(
            "move {n} {from:?}->{to:?}: VM downtime {:?} ms; ssh has {} lines, guest counted {:?} of {} typed",
            t.vm_downtime_ms,
            s.lines.len(),
            s.received(),
            client.typed().len()
        );
        tokio::time::sleep(BETWEEN).await;
    }
    let gateway = bed.gateway_pid().context("the gateway")?;
    common::check_runs_as_nobody("gateway", gateway, "0000000000000000", "no capability")?;
    // Before ssh is stopped (its end would be a FIN).
    let connection = tokio::task::spawn_blocking(move || capture.finish()).await??;
    let (typed, output, report) = client.finish(WAIT, |n| n).await;
    let s = scenarios::serial::parse(&output);
    let log = bed.gateway_log().context("the gateway's log")?;
    let ssh_sessions = log.matches("SSH serial session started").count();
    // Each resumable session the console closed (it froze to move) was followed by a new one.
    let reconnections = log.matches("serial connection lost: reconnecting").count();
    println!(
        "ssh through the gateway, {moves} moves: {}; ssh link {report:?}; SSH sessions on the gateway {ssh_sessions}, serial sessions to the consoles resumed {reconnections} times",
        s.summary(&typed, &output)
    );
    let report = match report {
        Some(r) => r,
        None => {
            let mut err = String::new();
            use tokio::io::AsyncReadExt as _;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::BufReader::new(stderr).read_to_string(&mut err),
            )
            .await;
            anyhow::bail!("the ssh connection lasted the whole run (ssh's stderr: {err:?})");
        }
    };
    ensure!(report.connections == 1, "one ssh connection: {report:?}");
    ensure!(ssh_sessions == 1, "one SSH session on the gateway");
    common::check_one_connection("ssh-gateway capture", &connection)?;
    ensure!(
        s.lines.first().map(|l| l.0) == Some(0),
        "the output from the guest's first line on"
    );
    s.check_exact(&typed)?;
    Ok(())
}

/// The baseline on the same guest: a client on QEMU's own chardev loses its connection and
/// bytes at each move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_a_client_on_the_linux_guests_chardev_loses_bytes_at_each_move(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    serial_baseline::run(
        "Linux guest",
        |cfg| {
            cfg.linux = Some(linux());
            cfg.memory_mib = testbed::qemu::LINUX_MEMORY_MIB;
        },
        migrations_from_env(MIGRATIONS),
        BETWEEN,
    )
    .await
}
