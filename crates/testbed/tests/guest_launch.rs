//! The launcher's errors name the cause, and its QEMU goes away cleanly: shutdown, pidfile,
//! a second VNC display on TCP, the second QMP monitor.

use std::time::Duration;

use guest::report::Report;
use testbed::qemu::{LaunchError, Qemu, QemuConfig, QEMU_PACKAGE};
use tokio::io::AsyncReadExt as _;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_missing_binary_names_the_package() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = QemuConfig::new(dir.path());
    cfg.qemu_binary = "qemu-system-x86_64-not-installed".into();
    let err = Qemu::launch(cfg)
        .await
        .expect_err("a missing binary cannot launch");
    assert!(matches!(err, LaunchError::QemuMissing { .. }), "{err:?}");
    let text = err.to_string();
    println!("{text}");
    assert!(
        text.contains(QEMU_PACKAGE) && QEMU_PACKAGE == "qemu-system-x86",
        "{text}"
    );

    let mut cfg = QemuConfig::new(dir.path());
    cfg.qemu_binary = dir.path().join("nope/qemu");
    let err = Qemu::launch(cfg)
        .await
        .expect_err("a missing path cannot launch");
    assert!(err.to_string().contains("qemu-system-x86"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_vnc_port_below_5900_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = QemuConfig::new(dir.path());
    cfg.vnc_tcp = Some(([127, 0, 0, 1], 5800).into());
    let err = Qemu::launch(cfg)
        .await
        .expect_err("QEMU cannot listen there");
    assert!(matches!(err, LaunchError::VncPort(5800)), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_bad_option_reports_qemus_stderr() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = QemuConfig::new(dir.path());
    cfg.extra_args = vec!["-no-such-option-here".into()];
    let err = Qemu::launch(cfg)
        .await
        .expect_err("a bad option cannot launch");
    let text = err.to_string();
    println!("{text}");
    match &err {
        LaunchError::Exited { status, stderr } => {
            assert!(!status.success());
            assert!(stderr.contains("-no-such-option-here"), "{stderr}");
            assert!(text.contains("invalid option"), "{text}");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn shutdown_quits_and_removes_the_pidfile_and_extra_displays_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = {
        // A free port above 5900 (QEMU 7.2 takes a display number).
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    anyhow::ensure!(port >= 5900, "ephemeral port {port} below 5900");
    let mut cfg = QemuConfig::new(dir.path());
    cfg.extra_qmp = true;
    cfg.key_delay_ms = Some(0);
    cfg.vnc_tcp = Some(([127, 0, 0, 1], port).into());
    cfg.guest.dirty_mib = 8;
    cfg.guest.dirty_rate_mib_s = 4;
    cfg.guest.animate = true;
    let mut qemu = Qemu::launch(cfg).await?;
    let first = qemu.serial().next(WAIT, "OPTS").await?;
    assert_eq!(
        first,
        Report::Options {
            dirty_mib: 8,
            dirty_rate_mib_s: 4,
            animate_ms: 1
        }
    );
    qemu.wait_ready(WAIT).await?;
    let pid = qemu.pid().expect("running");
    let pidfile = dir.path().join("qemu.pid");
    assert_eq!(std::fs::read_to_string(&pidfile)?.trim(), pid.to_string());

    // Both VNC displays speak RFB; the second QMP monitor greets a second client.
    for mut s in [
        tokio::net::UnixStream::connect(qemu.vnc_path())
            .await
            .map(Either::Unix)?,
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(Either::Tcp)?,
    ] {
        let mut version = [0u8; 12];
        s.read_exact(&mut version).await?;
        assert_eq!(&version, b"RFB 003.008\n");
    }
    let qmp2 = qemu.qmp2_path().expect("configured").to_owned();
    let (second, _events) = qmp::Connection::connect(&qmp2).await?;
    let status = second.client().query_status().await?;
    assert_eq!(status.status, "running");

    let status = qemu.shutdown(WAIT).await?;
    assert!(status.success(), "QEMU exited with {status}");
    assert!(!pidfile.exists(), "pidfile left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU still there"
    );
    Ok(())
}

enum Either {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Either {
    async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Either::Unix(s) => s.read_exact(buf).await,
            Either::Tcp(s) => s.read_exact(buf).await,
        }
    }
}

/// Env var that turns [`holder`] into a QEMU holder for [`qemu_dies_with_the_test_process`].
const HOLDER_DIR: &str = "DMORE_TEST_QEMU_HOLDER_DIR";

/// Does nothing in a normal run. As the child of [`qemu_dies_with_the_test_process`]: launches
/// QEMU, prints `HOLDING <pid>` and waits to be killed.
#[tokio::test]
async fn holder() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os(HOLDER_DIR) else {
        return Ok(());
    };
    let mut qemu = Qemu::launch(QemuConfig::new(dir)).await?;
    qemu.wait_ready(WAIT).await?;
    println!("HOLDING {}", qemu.pid().expect("running"));
    std::future::pending::<()>().await;
    Ok(())
}

/// A test process killed with SIGKILL (no destructor runs) takes its QEMU with it.
#[test]
fn qemu_dies_with_the_test_process() -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["holder", "--exact", "--nocapture", "--test-threads=1"])
        .env(HOLDER_DIR, dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut pid = None;
    for line in std::io::BufReader::new(stdout).lines() {
        // libtest prints `test holder ... ` on the same line first.
        let line = line?;
        if let Some((_, p)) = line.split_once("HOLDING ") {
            pid = Some(p.trim().parse::<u32>()?);
            break;
        }
    }
    let Some(pid) = pid else {
        let status = child.wait()?;
        anyhow::bail!("the holder exited ({status}) without starting QEMU");
    };
    child.kill()?; // SIGKILL
    child.wait()?;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // Gone, or a zombie waiting for init to reap it: either way QEMU no longer runs.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "QEMU {pid} still runs after its test process was SIGKILLed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
