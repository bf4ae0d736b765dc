//! `dmore soak --moves 20` as CI runs it: the real binary, real hosts, QEMU and consoles; it
//! must exit 0 and its report must say nothing was lost or duplicated over one connection.
//! Skipped (with a note) when not root (the hosts are network namespaces).

use anyhow::ensure;

#[test]
fn twenty_moves_under_a_typing_viewer_lose_nothing_over_one_connection() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: the soak needs root (network namespaces, TCP_REPAIR)");
        return Ok(());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmore"))
        .args(["soak", "--moves", "20"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "dmore soak failed: {}", out.status);
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(line("moves:").starts_with("moves: 20 of 20 in"), "{stdout}");
    let keys = line("keys:");
    ensure!(keys.contains(" lost 0 dup 0 reordered 0 "), "{keys}");
    let viewer = line("viewer:");
    ensure!(
        viewer.contains("1 connection(s) in the client's capture (SYN 1, FIN 0, RST 0)"),
        "{viewer}"
    );
    ensure!(viewer.ends_with("never dropped"), "{viewer}");
    Ok(())
}
