//! Checks shared by the end-to-end tests.

use anyhow::ensure;

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
