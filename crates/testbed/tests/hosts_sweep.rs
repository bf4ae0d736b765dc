//! A test run killed with SIGKILL leaves its hosts and QEMUs behind; the next run sweeps them,
//! and leaves a concurrently live run's alone.
//!
//! The test re-executes its own binary as the "killed run" (`DMORE_SWEEP_HELPER=1` selects
//! the helper test): it creates a namespace testbed with a QEMU on host A, a loopback testbed
//! with a QEMU too (found only through its pidfile), prints `HOLDING ...` and waits to die.
//! Its QEMUs are started directly, not through `testbed::qemu`: the launcher's QEMUs die with
//! their parent (`PR_SET_PDEATHSIG`), and the sweeper is there for those that do not.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testbed::hosts::{Host, Mode, Testbed};

const HELPER_ENV: &str = "DMORE_SWEEP_HELPER";

/// Kills a child on every path.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an idle QEMU (no guest) on `host` that writes its pidfile into the host's dir.
fn spawn_qemu(host: &Host) -> anyhow::Result<(Child, PathBuf)> {
    let pidfile = host.runtime_dir().join("qemu.pid");
    let child = host
        .command("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .arg("-pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pidfile.exists() {
        anyhow::ensure!(Instant::now() < deadline, "QEMU wrote no pidfile");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((child, pidfile))
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The "killed run": only does something when re-executed by the test below.
#[test]
fn sweep_helper_holds_hosts_until_killed() -> anyhow::Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let bed = Testbed::create()?;
    let (qemu, _) = spawn_qemu(bed.a())?;
    let sleeper = bed.b().command("sleep").arg("1000").spawn()?;
    let lo = Testbed::create_in_mode(Mode::Loopback)?;
    let (lo_qemu, _) = spawn_qemu(lo.a())?;
    println!(
        "HOLDING {} {} {} {} {} {} {}",
        bed.mode(),
        bed.run_dir().display(),
        lo.run_dir().display(),
        qemu.id(),
        lo_qemu.id(),
        sleeper.id(),
        bed.namespaces().join(","),
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What the helper holds, from its `HOLDING` line.
struct Holding {
    mode: String,
    dirs: [PathBuf; 2],
    pids: Vec<u32>,
    namespaces: Vec<String>,
}

impl Holding {
    fn assert_left_behind(&self) {
        for d in &self.dirs {
            assert!(d.is_dir(), "{} left behind", d.display());
        }
        for pid in &self.pids {
            assert!(alive(*pid), "process {pid} left running");
        }
        if self.mode == "namespaces" {
            assert_eq!(self.namespaces.len(), 4, "{:?}", self.namespaces);
            assert!(self.namespaces.iter().all(|n| netns_exists(n)));
        }
    }

    fn assert_gone(&self) {
        for d in &self.dirs {
            assert!(!d.exists(), "{} removed", d.display());
        }
        for pid in &self.pids {
            assert!(!alive(*pid), "process {pid} killed");
        }
        assert!(self.namespaces.iter().all(|n| !netns_exists(n)));
    }
}

/// Starts the helper run and reads what it holds.
fn start_helper() -> anyhow::Result<(KillOnDrop, Holding)> {
    let helper = Command::new(std::env::current_exe()?)
        .args([
            "sweep_helper_holds_hosts_until_killed",
            "--exact",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut helper = KillOnDrop(helper);
    let stdout = helper
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    for l in BufReader::new(stdout).lines() {
        let l = l?;
        if l.starts_with("HOLDING ") {
            line = l;
            break;
        }
    }
    println!("helper: {line}");
    let f: Vec<&str> = line.split_whitespace().collect();
    anyhow::ensure!(f.len() >= 7, "helper said {line:?}");
    let holding = Holding {
        mode: f[1].to_string(),
        dirs: [PathBuf::from(f[2]), PathBuf::from(f[3])],
        pids: f[4..7]
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()?,
        namespaces: f
            .get(7)
            .map(|n| n.split(',').map(String::from).collect())
            .unwrap_or_default(),
    };
    Ok((helper, holding))
}

/// The two tests below must not sweep each other's helper.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn sigkilled_run_is_swept_and_live_run_is_not() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The live run, which must survive the sweep.
    let live = Testbed::create()?;
    let (live_qemu, live_pidfile) = spawn_qemu(live.a())?;
    let live_qemu = KillOnDrop(live_qemu);

    let (mut helper, held) = start_helper()?;
    println!(
        "killed run's mode: {}, live run's mode: {}",
        held.mode,
        live.mode()
    );
    helper.0.kill()?;
    helper.0.wait()?;
    held.assert_left_behind();

    let report = testbed::sweep::sweep()?;
    println!("sweep: {report:?}");
    held.assert_gone();

    // The live run is untouched.
    assert!(live.run_dir().is_dir() && live_pidfile.exists());
    assert!(alive(live_qemu.0.id()), "the live run's QEMU still runs");
    assert!(live.namespaces().iter().all(|n| netns_exists(n)));
    assert!(!report.runs.iter().any(|r| r == live.run_id()));
    Ok(())
}

#[test]
fn sigterm_cleans_up_without_a_sweep() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut helper, held) = start_helper()?;
    held.assert_left_behind();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(helper.0.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let status = helper.0.wait()?;
    println!("helper after SIGTERM: {status:?}");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "died of the signal");
    held.assert_gone();
    Ok(())
}
