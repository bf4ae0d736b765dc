//! The serial console over SSH through the stationary gateway (issue 19), on the real Linux
//! guest with a real shell on ttyS0 (COM1, the port of users' `console=ttyS0`): busybox's `sh`
//! (Debian's busybox-static, copied into the initramfs at test time) on a pty whose master the
//! guest's init relays to ttyS0 and back, counting the bytes each way and hashing what it wrote
//! (`dmore.shell=1`; the guest's reports, which the bed reads, and the kernel's console are on
//! COM2). OpenSSH's `ssh` on the client host logs in to `dmore gateway serve --ssh-listen` with
//! the key listed for the console and types an `echo` command every 50 ms while the VM
//! co-migrates A ⇄ B (consoles as `nobody` with no capability, gateway mode). The gateway
//! carries the channel to the console's serial lane over resumable streams
//! (`--serial-gateway-listen`), resuming at each move. Checked against the guest's own counts:
//!
//! - every typed byte reached the guest exactly once (the init's count equals what was typed)
//!   and each command was answered exactly once;
//! - the output `ssh` received is what the guest wrote, byte for byte (the same length and
//!   FNV-1a 64 as the init's);
//! - the one `ssh` process and its connection lasted the whole run: one SSH session on the
//!   gateway, SYN 1, FIN 0, RST 0 on the connection (captured on the client host's `lo`);
//! - the consoles and the gateway run as `nobody` with no capability;
//! - a key not listed, and the right key for another console, are refused alike.
//!
//! And the baseline on the same guest (its init's counting service on ttyS0, `dmore.uart=20`:
//! every byte counted and echoed, a numbered line every 20 ms): a client on QEMU's own chardev
//! socket loses its connection and bytes at each move. `DMORE_MIGRATIONS=N` sets the moves
//! (default 10).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use linux_guest::launch::{LinuxOptions, SerialConsole};
use linux_guest::report::{Report, SerialCount};
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

/// The baseline's guest: its init's counting service on ttyS0 (numbered lines tell what a
/// client lost).
fn counting_guest() -> LinuxOptions {
    LinuxOptions {
        serial: SerialConsole::Lines(LINE_MS),
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

/// A gateway-mode bed on the Linux guest with its shell on ttyS0, and the gateway's SSH front.
async fn start_bed() -> anyhow::Result<Option<CoBed>> {
    let mut options = CoBedOptions::new(env!("CARGO_BIN_EXE_dmore"));
    options.linux = Some(LinuxOptions {
        serial: SerialConsole::Shell,
        ..LinuxOptions::default()
    });
    options.memory_mib = testbed::qemu::LINUX_MEMORY_MIB;
    options.serial_port = Some(4801);
    options.gateway = true;
    options.ssh = true;
    Ok(CoBed::start_or_skip(options).await?)
}

/// One `ssh` session through the gateway, typing, with its connection captured on the client
/// host's `lo`.
struct SshSession {
    client: SerialClient,
    capture: testbed::capture::Capture,
    stderr: tokio::process::ChildStderr,
}

impl SshSession {
    async fn start(bed: &CoBed, key: &std::path::Path) -> anyhow::Result<SshSession> {
        let client_host = bed.testbed().client().clone();
        let client_ip = client_host.ip();
        let capture = tokio::task::spawn_blocking(move || {
            testbed::capture::Capture::start_on(
                &client_host,
                "lo",
                "ssh",
                client_ip,
                Some(SSH_PORT),
            )
        })
        .await??;
        let mut ssh = tokio::process::Command::from(bed.ssh_client(CONSOLE_NAME, key));
        ssh.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = ssh.spawn().context("starting ssh")?;
        let stderr = child.stderr.take().context("ssh's stderr")?;
        Ok(SshSession {
            client: SerialClient::over_process(child),
            capture,
            stderr,
        })
    }

    /// Ends the session (typing stopped and the guest done, see the callers): what was typed
    /// and received, after checking the gateway ran as nobody and the one `ssh` connection
    /// lasted the whole run (one SSH session on the gateway, SYN 1, FIN 0, RST 0).
    async fn finish(self, bed: &CoBed) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let gateway = bed.gateway_pid().context("the gateway")?;
        common::check_runs_as_nobody("gateway", gateway, "0000000000000000", "no capability")?;
        // Before ssh is stopped (its end would be a FIN).
        let capture = self.capture;
        let connection = tokio::task::spawn_blocking(move || capture.finish()).await??;
        let (typed, output, report) = self.client.finish(Duration::ZERO, |n| n).await;
        let log = bed.gateway_log().context("the gateway's log")?;
        let ssh_sessions = log.matches("SSH serial session started").count();
        // Each resumable session the console closed (it froze to move) was followed by a new one.
        let reconnections = log.matches("serial connection lost: reconnecting").count();
        println!(
            "ssh link {report:?}; SSH sessions on the gateway {ssh_sessions}, serial sessions to the consoles resumed {reconnections} times"
        );
        let Some(report) = report else {
            let mut err = String::new();
            use tokio::io::AsyncReadExt as _;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::BufReader::new(self.stderr).read_to_string(&mut err),
            )
            .await;
            anyhow::bail!("the ssh connection lasted the whole run (ssh's stderr: {err:?})");
        };
        ensure!(report.connections == 1, "one ssh connection: {report:?}");
        ensure!(ssh_sessions == 1, "one SSH session on the gateway");
        common::check_one_connection("ssh-gateway capture", &connection)?;
        Ok((typed, output))
    }
}

/// Co-migrates `bed` [`MIGRATIONS`] times (`DMORE_MIGRATIONS`), typing [`BETWEEN`] after each
/// move, each console as nobody without capabilities; `show` says how far things got.
async fn move_while_typing(bed: &mut CoBed, show: impl Fn() -> String) -> anyhow::Result<usize> {
    tokio::time::sleep(BETWEEN).await;
    println!("before the moves: {}", show());
    let moves = migrations_from_env(MIGRATIONS);
    for n in 1..=moves {
        let (from, to) = (bed.home(), bed.other());
        let t = bed.migrate(false).await?;
        let (_, console) = bed.home_pids().context("home console")?;
        common::check_runs_as_nobody("console", console, "0000000000000000", "no capability")?;
        common::note_link_losses(bed, n).await?;
        println!(
            "move {n} {from:?}->{to:?}: VM downtime {:?} ms; {}",
            t.vm_downtime_ms,
            show()
        );
        tokio::time::sleep(BETWEEN).await;
    }
    Ok(moves)
}

/// The guest's counts of its shell's serial console (`SERIAL`, on its report port).
async fn shell_count(bed: &mut CoBed) -> anyhow::Result<SerialCount> {
    let serial = bed.home_serial().context("no home VM")?;
    serial.send_line("SERIAL").await?;
    loop {
        if let Report::Serial(count) = serial.next_linux(WAIT, "SERIAL").await? {
            return Ok(count);
        }
    }
}

/// The module doc's test: `ssh` into busybox's `sh` on ttyS0 through co-migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_through_the_gateway_into_busybox_sh_on_the_linux_guests_ttys0_across_co_migrations(
) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut bed) = start_bed().await? else {
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

    let mut session = SshSession::start(&bed, &key).await?;
    let client = &session.client;
    let show = || {
        format!(
            "ssh received {} B, {} B typed",
            client.output().len(),
            client.typed().len()
        )
    };
    let moves = move_while_typing(&mut bed, show).await?;
    // Done once the guest read every typed byte, `ssh` has all it wrote, and the shell is back
    // at its prompt after answering the last command (it had read them all).
    let typed = session.client.stop_typing().await;
    let last = typed
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    let last_answer = scenarios::serial::typed_answer(last as u64);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let count = shell_count(&mut bed).await?;
        let output = session.client.output();
        if count.received == typed.len() as u64
            && count.written == output.len() as u64
            && output.ends_with(b"$ ")
            && String::from_utf8_lossy(&output).contains(&last_answer)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (typed, output) = session.finish(&bed).await?;
    let count = shell_count(&mut bed).await?;
    let hash = linux_guest::fnv::update(linux_guest::fnv::OFFSET, &output);
    let commands = typed.iter().filter(|b| **b == b'\n').count();
    // Each answer once, wherever it lands: the terminal echoes typed-ahead bytes (and the
    // shell's line editor redraws them) between the shell's answers.
    let text = String::from_utf8_lossy(&output);
    let answered_once = (0..commands)
        .filter(|n| {
            text.matches(&scenarios::serial::typed_answer(*n as u64))
                .count()
                == 1
        })
        .count();
    println!(
        "busybox sh on ttyS0 through ssh and the gateway, {moves} moves: typed {} B in {commands} \
         commands, the guest read {} B; ssh received {} B, the guest wrote {} B (FNV-1a {:016x}, \
         the guest's {:016x}); commands answered once {answered_once} of {commands}",
        typed.len(),
        count.received,
        output.len(),
        count.written,
        hash,
        count.hash,
    );
    ensure!(commands > 50, "too few commands typed to judge");
    ensure!(
        count.received == typed.len() as u64,
        "every typed byte reached the shell once"
    );
    ensure!(
        count.written == output.len() as u64 && count.hash == hash,
        "ssh received what the guest wrote, byte for byte"
    );
    ensure!(answered_once == commands, "each command answered once");
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
            cfg.linux = Some(counting_guest());
            cfg.memory_mib = testbed::qemu::LINUX_MEMORY_MIB;
        },
        migrations_from_env(MIGRATIONS),
        BETWEEN,
    )
    .await
}
