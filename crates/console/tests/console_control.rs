//! The control socket belongs to the console's user: made 0600, every caller's credentials
//! checked (`SO_PEERCRED`), a stale file from a killed console replaced, the file removed when
//! the console ends.

mod console_support;

use console_support::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

/// What a client running as `uid` gets back for `status`: the reply, or the client's error.
fn status_as(uid: u32, control: &std::path::Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             try:\n  s.connect(sys.argv[1])\n  s.sendall(b'status\\n')\n  print('reply:', s.recv(4096))\n\
             except OSError as e:\n  print('error:', e.strerror)",
        ])
        .arg(control)
        .uid(uid)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_the_console_users_alone() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmC-").tempdir()?;
    let vm = launch_vm(dir.path(), false).await?;
    // A killed console leaves its socket file behind.
    let control = dir.path().join("c.ctl");
    drop(std::os::unix::net::UnixListener::bind(&control)?);
    assert!(control.exists());

    let mut console = ConsoleProc::spawn(&vm, dir.path(), "c", None, None).await?;
    let status = console.status().await?;
    assert_eq!(status["ok"], true, "the stale file was replaced: {status}");
    let mode = std::fs::metadata(&control)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    let nobody = 65534;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let refused = status_as(nobody, &control)?;
    assert!(
        refused.contains("Permission denied"),
        "another user cannot open it: {refused}"
    );
    // Even with the file opened up, the console checks who is calling.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666))?;
    let ignored = status_as(nobody, &control)?;
    // The console drops the connection as soon as it has read the caller's credentials: the
    // client's write fails (broken pipe) if the close came first, else its read sees the end
    // or the reset of a socket closed with its request unread. Each is "closed unanswered".
    assert!(
        ignored == "reply: b''"
            || ignored.contains("reset by peer")
            || ignored.contains("Broken pipe"),
        "another user's connection is closed unanswered: {ignored}"
    );
    assert_eq!(
        console.status().await?["ok"],
        true,
        "its own user still does"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(console.pid())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let exit = console.wait_exit().await?;
    assert!(exit.success(), "console: {exit}");
    assert!(!control.exists(), "the control socket is removed at exit");
    vm.shutdown(std::time::Duration::from_secs(5)).await?;
    Ok(())
}
