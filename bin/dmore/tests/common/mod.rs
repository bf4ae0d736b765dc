//! Checks shared by the end-to-end tests.

// Each test binary compiles this module and uses some of it.
#![allow(dead_code)]

pub mod browser;

use anyhow::{ensure, Context as _};
use console::control::{request, Command};
use scenarios::cobed::CoBed;
use testbed::capture::CaptureReport;

/// Process `pid` runs as `nobody` with exactly the effective capabilities `cap_eff` (the hex
/// CapEff of `/proc/PID/status`; `meaning` says which they are, for the error); prints both.
pub fn check_runs_as_nobody(
    what: &str,
    pid: u32,
    cap_eff: &str,
    meaning: &str,
) -> anyhow::Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or_else(String::new, |v| v.trim().to_owned())
    };
    let (uid, caps) = (field("Uid:"), field("CapEff:"));
    println!("{what} pid {pid}: Uid {uid}; CapEff {caps}");
    ensure!(
        uid.split_whitespace().all(|u| u == "65534"),
        "{what} runs as nobody: Uid {uid}"
    );
    ensure!(caps == cap_eff, "{what} has {meaning}: CapEff {caps}");
    Ok(())
}

/// Notes what the home console reports uncertain or dropped on its link after move `n`, if
/// anything.
pub async fn note_link_losses(bed: &CoBed, n: usize) -> anyhow::Result<()> {
    let home = request(
        bed.home_control().context("home console")?,
        &Command::Status,
    )
    .await?;
    if home["link_uncertain"] != 0 || home["link_dropped"] != 0 {
        println!(
            "move {n}: the console reports uncertain {} dropped {}",
            home["link_uncertain"], home["link_dropped"]
        );
    }
    Ok(())
}

/// The viewer's connection in `what` (a capture) was one connection, opened once and never
/// closed: SYN 1, FIN 0, RST 0.
pub fn check_one_connection(what: &str, report: &CaptureReport) -> anyhow::Result<()> {
    let flags = report.total();
    println!(
        "{what}: {} connection(s), SYN {}, FIN {}, RST {}",
        report.connections.len(),
        flags.syn,
        flags.fin,
        flags.rst
    );
    ensure!(report.connections.len() == 1, "one 4-tuple: {report:?}");
    ensure!((flags.syn, flags.fin, flags.rst) == (1, 0, 0), "{report:?}");
    Ok(())
}

/// Process `pid` runs as `nobody` with no effective capability.
pub fn check_unprivileged(what: &str, pid: u32) -> anyhow::Result<()> {
    check_runs_as_nobody(what, pid, "0000000000000000", "no capability")
}

/// The gateway (its `log`) reattached where the source's Moved frame said at each of `moves`
/// moves (no probing).
pub fn check_followed_moves(log: &str, moves: usize) -> anyhow::Result<()> {
    let followed = log.matches("the console moved: reattaching there").count();
    println!("the gateway followed {followed} Moved frame(s)");
    ensure!(
        followed == moves,
        "the gateway followed a Moved frame at each of the {moves} moves, not {followed}"
    );
    Ok(())
}
