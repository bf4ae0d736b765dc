//! libvirt drives, dmore follows (issue 12): two test hosts each run a private libvirtd with
//! dmore's hook installed; the test guest, started by libvirt on A, gets its console through
//! the hook; a viewer types a key every 10 ms (and clicks every 100 ms) through that console's
//! service address while `virsh migrate --live` moves the VM A → B → A … with no dmore command
//! at all: the source console learns of each migration from its own QMP monitor and finds the
//! destination console among the domain's `peers`, and the destination's hook started that
//! console with `--incoming`. The hook starts each console as `libvirt-qemu` (the user Debian's
//! libvirt runs QEMU as; QEMU runs as root in that group here) with only `CAP_NET_ADMIN` and
//! `CAP_NET_RAW`: checked in `/proc` on the first and the last console.
//!
//! First a migration cancelled in pre-copy (`virsh domjobabort`): the session stays on A, the
//! destination's console goes. Then the moves, taking turns with the flags `--live --p2p`,
//! Nova's `--live --p2p --persistent --undefinesource`, the same with `--auto-converge`,
//! `--live` driven by virsh itself, and `--live --p2p --tunnelled` (`DMORE_MIGRATIONS=N` moves,
//! default 5: each once). Every key and click reaches the guest once, in order, over one TCP
//! connection (the client host's capture: one SYN, no FIN, no RST), but exactly those QEMU's
//! PS/2 devices dropped themselves (a vCPU stalled by pre-copy reads nothing while its 16-byte
//! queue overflows), as each QEMU's PS/2 trace shows (the domain's test-only `-trace` args); every source console is
//! gone after its move; the viewer's last screen is QEMU's with the typed text on it; `virsh
//! destroy` stops the last console. Then the baseline: a domain without dmore, its viewer on
//! libvirt's own VNC, loses its connection at the move.
//!
//! ```text
//!   client ── VNC ──> SERVICE:5900 (moves with the console)
//!   host A: libvirtd --listen (own mount and UTS namespace, T/a/dmore bound over T/dmore)
//!           QEMU (KVM+qboot or TCG, the tiny guest, serial → T/serial.sock) + hook → console
//!   host B: the same; `virsh migrate --live --p2p dmore-e2e qemu+tcp://B/system` on A
//! ```
//!
//! Each host's domain directory is its own (a bind in its libvirtd's mount namespace), as on
//! real hosts: the domain's XML names one path on both. Skipped (with a note) when not root;
//! on CI (`CI=true`) that is a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use console::control::{request, Command};
use guest::GuestOptions;
use scenarios::bench::input::ps2trace;
use scenarios::cobed::{count_session, TimedReports};
use scenarios::delivery::check_count_by_dmore;
use scenarios::steady::{SteadyConfig, SteadyViewer};
use testbed::capture::Capture;
use testbed::hosts::{Host, Mode, Testbed};
use testbed::libvirtd::Libvirtd;
use testbed::qemu::Serial;
use testbed::service::{ServiceAddr, DEFAULT_OCTET};
use testbed::viewers::Image;

const DOMAIN: &str = "dmore-e2e";
/// Where each host's console waits for an arriving session.
const INCOMING_PORT: u16 = 4700;
/// The port viewers connect to on the service address.
const VIEWER_PORT: u16 = 5900;
/// Each QEMU's PS/2 trace, in the shared domain directory's parent (`%d`: QEMU's pid).
const PS2_TRACE: &str = "ps2-%d.log";
/// Bound on each wait (a guard against hanging, not a timed assertion).
const WAIT: Duration = Duration::from_secs(60);

/// The flags of each move, in turn: libvirt's peer-to-peer migration, Nova's flags, Nova's
/// with `--auto-converge`, a migration virsh drives itself, and one tunnelled through the
/// libvirtds.
const FLAGS: [&[&str]; 5] = [
    &["--live", "--p2p"],
    &["--live", "--p2p", "--persistent", "--undefinesource"],
    &[
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        "--auto-converge",
    ],
    &["--live"],
    &["--live", "--p2p", "--tunnelled"],
];

fn moves() -> usize {
    scenarios::migrations_from_env(FLAGS.len())
}

/// One host's libvirt side: its daemon's tree and its own domain directory.
struct Side {
    host: Host,
    /// The domain's directory as this host's libvirtd, hook, QEMU and console see it at the
    /// shared path (bound from here).
    domain_dir: PathBuf,
    daemon: Option<Libvirtd>,
}

impl Side {
    fn daemon(&self) -> &Libvirtd {
        self.daemon.as_ref().expect("started")
    }

    fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.daemon().virsh(args)?;
        ensure!(
            out.status.success(),
            "virsh {args:?} on {}: {}",
            self.host.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `virsh ARGS` against this host's libvirtd, run in the host (without `--p2p` virsh itself
    /// connects to the destination's libvirtd, which only the hosts reach), in the background.
    fn virsh_in_host(&self, args: &[&str]) -> tokio::task::JoinHandle<std::io::Result<Output>> {
        let mut cmd = self.host.command("virsh");
        cmd.arg("-c")
            .arg(format!(
                "qemu:///system?socket={}",
                self.daemon().socket().display()
            ))
            .args(args);
        tokio::task::spawn_blocking(move || cmd.output())
    }

    fn control(&self) -> PathBuf {
        self.domain_dir.join(libvirt::hook::CONTROL_SOCKET)
    }

    fn console_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.domain_dir.join(libvirt::hook::PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(self.domain_dir.join(libvirt::hook::LOG_FILE)).unwrap_or_default()
    }
}

/// The PS/2 traces `host`'s QEMUs wrote ([`PS2_TRACE`], in the host's own copy of the shared
/// directory), each with its path.
fn ps2_logs(root: &Path, host: &Host) -> Vec<(PathBuf, String)> {
    let dir = root.join(host.name()).join("dmore");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ps2-") && n.ends_with(".log"))
        })
        .filter_map(|p| Some((p.clone(), std::fs::read_to_string(&p).ok()?)))
        .collect()
}

fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits until `done` answers `Some`; fails after [`WAIT`] with `what` and `context()`.
async fn wait_for<T>(
    what: &str,
    mut done: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = done() {
            return Ok(t);
        }
        if start.elapsed() > WAIT {
            bail!("gave up waiting for {what}:\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hook's configuration on `host`: the console serves the service address in transparent
/// mode and finds its peer among both hosts' incoming addresses.
/// The user the hook runs consoles as: the one Debian's libvirt runs QEMU as (`.ci/setup`
/// makes it), whose group QEMU runs in here.
const CONSOLE_USER: &str = "libvirt-qemu";

fn hook_config(
    host: &Host,
    hosts: &[&Host],
    service: &ServiceAddr,
    key: &Path,
    dmore: &Path,
) -> String {
    let peers: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}:{INCOMING_PORT}", h.ip()))
        .collect();
    serde_json::json!({
        "dmore": dmore,
        "user": CONSOLE_USER,
        "dir_group": CONSOLE_USER,
        "peer_key_file": key,
        "domains": { DOMAIN: {
            "listen": format!("{}:{VIEWER_PORT}", service.addr()),
            "insecure_no_auth": true,
            "service_interface": testbed::service::INTERFACE,
            "incoming": format!("{}:{INCOMING_PORT}", host.ip()),
            "peers": peers,
        }}
    })
    .to_string()
}

/// The test guest as a libvirt domain `name` (KVM and qboot, else TCG; direct kernel boot;
/// serial to `serial`), with libvirt's own VNC display on every address of its host; with
/// `ps2_log`, each of its QEMUs writes a PS/2 trace there (a `%d` in it is QEMU's pid:
/// libvirt starts a new QEMU at each arrival), a test-only `<qemu:commandline>`. No
/// animation: the typed text changes the screen every 10 ms; with the guest redrawing a corner
/// every millisecond besides, a machine under a load average of 6-7 lost keys even with no
/// migration under way (in 3 runs of 3; 0 of 3 without it, same load).
fn domain_xml(name: &str, serial: &Path, ps2_log: Option<&Path>) -> String {
    let guest = GuestOptions::default();
    // KVM with qboot where KVM works (as the testbed's own QEMUs), else TCG.
    let kvm = testbed::qemu::kvm_usable() && Path::new(testbed::qemu::QBOOT).exists();
    let (kind, loader) = if kvm {
        (
            "kvm",
            format!("\n    <loader type='rom'>{}</loader>", testbed::qemu::QBOOT),
        )
    } else {
        ("qemu", String::new())
    };
    let trace: String = ps2_log
        .map(|log| {
            let args: String = ps2trace::qemu_args(log)
                .iter()
                .map(|a| format!("\n    <qemu:arg value='{}'/>", a.to_string_lossy()))
                .collect();
            format!("\n  <qemu:commandline>{args}\n  </qemu:commandline>")
        })
        .unwrap_or_default();
    format!(
        "<domain type='{kind}' xmlns:qemu='{QEMU_NS}'>
  <name>{name}</name>
  <memory unit='KiB'>131072</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>{loader}
    <kernel>{kernel}</kernel>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='unix'>
      <source mode='connect' path='{serial}'/>
      <target port='0'/>
    </serial>
    <graphics type='vnc' port='{VIEWER_PORT}' autoport='no' listen='0.0.0.0'/>
    <video>
      <model type='vga'/>
    </video>
  </devices>{trace}
</domain>
",
        kernel = guest::kernel_path().display(),
        cmdline = guest.cmdline(),
        serial = serial.display(),
        QEMU_NS = libvirt::QEMU_NS,
    )
}

/// `virsh domjobinfo --completed`'s "Total downtime" in ms, if it says.
fn downtime_ms(jobinfo: &str) -> Option<u64> {
    jobinfo
        .lines()
        .find_map(|l| l.strip_prefix("Total downtime:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virsh_migrate_live_keeps_the_console_session() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        testbed::skip::skip(
            "libvirt migrate",
            "needs root (network namespaces, libvirtd in mount namespaces)",
        );
        return Ok(());
    }
    let bed = Testbed::create()?;
    if bed.mode() != Mode::Namespaces {
        testbed::skip::skip("libvirt migrate", "no network namespaces here");
        return Ok(());
    }
    let service = ServiceAddr::new(&bed, DEFAULT_OCTET)?;
    // In the run's directory, which the testbed removes (also after a killed run: its sweep);
    // short, as unix sockets in the domain directory are limited to 107 bytes.
    let tmp = tempfile::Builder::new()
        .prefix("lv")
        .tempdir_in(bed.run_dir())?;
    let root = tmp.path();
    let shared_dir = root.join("dmore");
    std::fs::create_dir_all(&shared_dir)?;
    let domain_dir = shared_dir.join("e2e");
    let key = root.join("peer.key");
    std::fs::write(&key, "libvirt e2e shared secret\n")?;
    // The consoles run as CONSOLE_USER: they reach the run's directory, read the key (its
    // group's), and run a dmore outside a checkout that may be root's alone.
    let run_as = libvirt::hook::RunAs::lookup(CONSOLE_USER)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(&key, None, Some(run_as.gid))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640))?;
    }
    let dmore = scenarios::cobed::reachable_copy(
        Path::new(env!("CARGO_BIN_EXE_dmore")),
        &root.join("dmore-bin"),
    )?;
    let serial_path = root.join("serial.sock");
    let listener = tokio::net::UnixListener::bind(&serial_path)?;
    let mut serial = Serial::chained(listener, false)?;

    let hosts = [bed.a(), bed.b()];
    let mut sides = Vec::new();
    for host in hosts {
        let dir = root.join(host.name());
        let own_dir = dir.join("dmore");
        std::fs::create_dir_all(&own_dir)?;
        let config = dir.join("dmore.json");
        std::fs::write(&config, hook_config(host, &hosts, &service, &key, &dmore))?;
        // Installed before libvirtd starts: it looks for hooks only then.
        let install = std::process::Command::new(env!("CARGO_BIN_EXE_dmore"))
            .args(["libvirt", "install-hook", "--hooks-dir"])
            .arg(dir.join("libvirt/etc/hooks"))
            .arg("--config")
            .arg(&config)
            .output()?;
        ensure!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        sides.push(Side {
            host: host.clone(),
            domain_dir: own_dir.join("e2e"),
            daemon: None,
        });
    }
    // Both daemons start at once (each ~9 s, most of it probing QEMU).
    let started: Vec<_> = sides
        .iter()
        .map(|side| {
            let host = side.host.clone();
            let daemon_root = root.join(host.name()).join("libvirt");
            let binds = vec![(root.join(host.name()).join("dmore"), shared_dir.clone())];
            std::thread::spawn(move || Libvirtd::start_on(&daemon_root, &host, &binds))
        })
        .collect();
    for (side, start) in sides.iter_mut().zip(started) {
        let daemon = start
            .join()
            .map_err(|_| anyhow::anyhow!("libvirtd start panicked"))??;
        println!(
            "libvirtd on {} answered after {:?}",
            side.host.name(),
            daemon.started_in
        );
        side.daemon = Some(daemon);
    }

    service.add(bed.a())?;
    let xml_path = root.join("e2e.xml");
    let patched = libvirt::patch_domain(
        &domain_xml(DOMAIN, &serial_path, Some(&shared_dir.join(PS2_TRACE))),
        &libvirt::DomainDir::new(&domain_dir),
    )?;
    std::fs::write(&xml_path, patched)?;
    sides[0].virsh(&["create", xml_path.to_str().context("path")?])?;
    serial
        .wait_ready(WAIT)
        .await
        .context("the guest started by libvirt on A")?;
    let first = &sides[0];
    wait_for(
        "A's console to listen",
        || {
            first
                .console_log()
                .contains("dmore console: listening on")
                .then_some(())
        },
        || first.console_log(),
    )
    .await?;

    unprivileged(first, run_as)?;

    let capture = Capture::start(bed.client(), "libvirt", service.addr())?;
    let viewer = SteadyViewer::connect_from(
        bed.client(),
        SocketAddr::from((service.addr(), VIEWER_PORT)),
        SteadyConfig::default(),
    )
    .await?;
    // The same measure with nothing moving, for comparison with each move's.
    let calm = tokio::time::Instant::now();
    let connected = calm;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "no move: viewer's longest screen gap over 1 s {:?}",
        viewer
            .snapshot()
            .gap(calm.into_std(), tokio::time::Instant::now().into_std())
    );

    aborted_move(&sides[0], &sides[1]).await?;
    println!(
        "aborted move done {:?} after the viewer connected",
        connected.elapsed()
    );

    for n in 1..=moves() {
        let (from, to) = if n % 2 == 1 {
            (&sides[0], &sides[1])
        } else {
            (&sides[1], &sides[0])
        };
        let source_pid = from.console_pid().context("the source console's pid")?;
        let mut args = vec!["migrate"];
        args.extend(FLAGS[(n - 1) % FLAGS.len()]);
        let uri = to.daemon().uri().context("a host's libvirtd")?;
        args.extend([DOMAIN, uri.as_str()]);
        let before = tokio::time::Instant::now();
        let virsh = from.virsh_in_host(&args).await??;
        let took = before.elapsed();
        println!(
            "move {n} ran from {:?} to {:?} after the viewer connected",
            before.duration_since(connected),
            connected.elapsed()
        );
        ensure!(
            virsh.status.success(),
            "move {n}: virsh {args:?}: {}\nsource console:\n{}\ndestination console:\n{}",
            String::from_utf8_lossy(&virsh.stderr),
            from.console_log(),
            to.console_log()
        );
        let status = serving(to).await?;
        wait_for(
            "the source console to exit",
            || (!running(source_pid)).then_some(()),
            || from.console_log(),
        )
        .await?;
        ensure!(
            service.is_on(&to.host)? && !service.is_on(&from.host)?,
            "move {n}: the service address must be on {} alone",
            to.host.name()
        );
        println!(
            "move {n}: the new home console's input counters {}",
            counters(&status)
        );
        let jobinfo = to.virsh(&["domjobinfo", "--completed", DOMAIN]).ok();
        let mig = &status["comigration"];
        let freeze_to_takeover_ms = mig["taken_over_at_us"]
            .as_u64()
            .zip(mig["frozen_at_us"].as_u64())
            .map(|(t, f)| t.saturating_sub(f) as f64 / 1000.0);
        println!(
            "move {n} {}->{} ({}): virsh {took:?}, VM downtime {:?} ms, console freeze->takeover {:?} ms, state {} B",
            from.host.name(),
            to.host.name(),
            args.join(" "),
            jobinfo.as_deref().and_then(downtime_ms),
            freeze_to_takeover_ms,
            mig["snapshot_bytes"],
        );
        let log = viewer.snapshot();
        println!(
            "move {n}: viewer's longest screen gap over the move {:?}",
            log.gap(before.into_std(), tokio::time::Instant::now().into_std())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut reports = TimedReports::default();
    let count = count_session(Some(&mut serial), &mut reports, viewer, Some(capture)).await?;
    let report = count.capture.clone().context("the capture")?;
    let flags = report.total();
    println!(
        "capture: {} connection(s), SYN {}, FIN {}, RST {}",
        report.connections.len(),
        flags.syn,
        flags.fin,
        flags.rst
    );
    // Every key and click once, but those QEMU's PS/2 devices dropped themselves, as the
    // traces of its QEMUs on both hosts show, replayed in the order they ran.
    let traces = ps2trace::chain(sides.iter().flat_map(|side| ps2_logs(root, &side.host)));
    let keys = check_count_by_dmore(&count, &traces)?;
    // The traces saw the session: one per QEMU that got input (the first and one per move),
    // and between them every key the viewer sent (else nothing would be forgiven rightly).
    let per_qemu = traces
        .iter()
        .map(|(_, t)| (t.presses, t.tally.max_depth, t.span))
        .collect::<Vec<_>>();
    println!(
        "PS/2 traces, (presses, deepest keyboard queue, first and last event in Unix time) of \
         each QEMU in turn: {per_qemu:?}"
    );
    let presses: u64 = per_qemu.iter().map(|(p, _, _)| p).sum();
    ensure!(
        traces.len() == moves() + 1 && usize::try_from(presses)? == keys.sent,
        "PS/2 traces of {} QEMUs with {presses} presses, for {} moves and {} keys sent",
        traces.len(),
        moves(),
        keys.sent
    );
    ensure!(report.connections.len() == 1, "one 4-tuple: {report:?}");
    ensure!((flags.syn, flags.fin, flags.rst) == (1, 0, 0), "{report:?}");

    // What the viewer saw last is the guest's screen, with what was typed: QEMU's own
    // (`virsh screenshot`) but for the blinking cursor.
    let home = &sides[moves() % 2];
    let shot = root.join("screen.png");
    home.virsh(&["screenshot", DOMAIN, shot.to_str().context("path")?])?;
    // libvirt 9.0 asks QEMU for a PNG.
    let want = testbed::viewers::decode_png(&std::fs::read(&shot)?)?;
    let seen = count.screen.as_ref().context("the viewer's last screen")?;
    same_screen(seen, &want)?;

    unprivileged(home, run_as)?;

    // Destroyed where it runs: the hook stops its console.
    let pid = home.console_pid().context("the last console's pid")?;
    home.virsh(&["destroy", DOMAIN])?;
    wait_for(
        "the last console to stop",
        || (!running(pid)).then_some(()),
        || home.console_log(),
    )
    .await?;

    baseline(&bed, &sides, root).await?;
    for side in &mut sides {
        side.daemon = None;
    }
    drop(serial);
    Ok(())
}

/// `side`'s console runs as `user` (real, effective, saved and file-system ids) with only the
/// capabilities the service address needs, `CAP_NET_ADMIN` and `CAP_NET_RAW` (bits 12 and 13),
/// as the hook started it; prints its `ps` line.
fn unprivileged(side: &Side, user: libvirt::hook::RunAs) -> anyhow::Result<()> {
    let pid = side.console_pid().context("the console's pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (uids, gids, cap_eff) = (field("Uid:"), field("Gid:"), field("CapEff:"));
    let all_are =
        |ids: &[&str], id: u32| ids.len() == 4 && ids.iter().all(|i| *i == id.to_string());
    let ps = std::process::Command::new("ps")
        .args(["-o", "user,pid,cmd", "-p", &pid.to_string()])
        .output()?;
    println!(
        "{}'s console: Uid {uids:?} Gid {gids:?} CapEff {cap_eff:?}\n{}",
        side.host.name(),
        String::from_utf8_lossy(&ps.stdout).trim_end()
    );
    ensure!(
        all_are(&uids, user.uid) && all_are(&gids, user.gid),
        "the console runs as {user:?}: Uid {uids:?} Gid {gids:?}"
    );
    ensure!(
        cap_eff == ["0000000000003000"],
        "the console keeps CAP_NET_ADMIN and CAP_NET_RAW alone: CapEff {cap_eff:?}"
    );
    Ok(())
}

/// The console's `status` once it serves the session (phase `Serving`, role `source`: it took
/// over, and is the one to migrate next).
async fn serving(side: &Side) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        if let Ok(status) = request(&side.control(), &Command::Status).await {
            if status["phase"] == "Serving" && status["role"] == "source" {
                return Ok(status);
            }
        }
        if start.elapsed() > WAIT {
            bail!(
                "the console on {} did not take over:\n{}",
                side.host.name(),
                side.console_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same move for a domain without dmore (the hook leaves it alone), its viewer on
/// libvirt's own VNC display on host A: the connection drops when libvirt stops the source
/// QEMU. Printed: the keys lost up to the drop, the VM's downtime without a console to move.
async fn baseline(bed: &Testbed, sides: &[Side], root: &Path) -> anyhow::Result<()> {
    const PLAIN: &str = "plain-e2e";
    let (a, b) = (&sides[0], &sides[1]);
    let serial_path = root.join("plain-serial.sock");
    let listener = tokio::net::UnixListener::bind(&serial_path)?;
    let mut serial = Serial::chained(listener, false)?;
    let xml_path = root.join("plain.xml");
    std::fs::write(&xml_path, domain_xml(PLAIN, &serial_path, None))?;
    a.virsh(&["create", xml_path.to_str().context("path")?])?;
    serial.wait_ready(WAIT).await.context("the plain guest")?;
    let viewer = SteadyViewer::connect_from(
        bed.client(),
        SocketAddr::from((a.host.ip(), VIEWER_PORT)),
        SteadyConfig::default(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let uri = b.daemon().uri().context("B's libvirtd")?;
    let out = a
        .virsh_in_host(&["migrate", "--live", "--p2p", PLAIN, &uri])
        .await??;
    ensure!(
        out.status.success(),
        "baseline: virsh migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = wait_for(
        "the viewer on libvirt's own VNC to lose its connection",
        || viewer.snapshot().dropped,
        || "still connected".into(),
    )
    .await?;
    let jobinfo = b.virsh(&["domjobinfo", "--completed", PLAIN]).ok();
    let mut reports = TimedReports::default();
    let count = count_session(Some(&mut serial), &mut reports, viewer, None).await?;
    println!(
        "baseline (libvirt's own VNC, migrate --live --p2p a->b): connection dropped ({}); keys {:?}; VM downtime {:?} ms",
        dropped.1,
        count.keys,
        jobinfo.as_deref().and_then(downtime_ms),
    );
    b.virsh(&["destroy", PLAIN])?;
    Ok(())
}

/// A migration cancelled during pre-copy (`virsh domjobabort` on a migration slowed to
/// 1 MiB/s): `virsh migrate` fails, the source console serves on (the session never left),
/// and the destination's console is gone with its QEMU (libvirt's `release` hook there).
async fn aborted_move(from: &Side, to: &Side) -> anyhow::Result<()> {
    let uri = to.daemon().uri().context("a host's libvirtd")?;
    let migrate = from.virsh_in_host(&[
        "migrate",
        "--live",
        "--p2p",
        "--bandwidth",
        "1",
        DOMAIN,
        &uri,
    ]);
    let start = Instant::now();
    loop {
        let status = request(&from.control(), &Command::Status).await?;
        if status["phase"] == "Precopying" {
            break;
        }
        ensure!(
            start.elapsed() < WAIT,
            "the source console never saw the migration start: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dest_pid = wait_for(
        "the destination console",
        || to.console_pid(),
        || to.console_log(),
    )
    .await?;
    from.virsh(&["domjobabort", DOMAIN])?;
    let out = migrate.await??;
    ensure!(
        !out.status.success(),
        "the aborted migration succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "aborted move: virsh migrate said {:?}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let start = Instant::now();
    loop {
        let status = request(&from.control(), &Command::Status).await?;
        if status["phase"] == "Serving" && status["vm_running"] == true {
            println!(
                "aborted move: the source console's input counters {}",
                counters(&status)
            );
            break;
        }
        ensure!(
            start.elapsed() < WAIT,
            "the source console did not serve again: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(
        "the destination console to stop",
        || (!running(dest_pid)).then_some(()),
        || to.console_log(),
    )
    .await?;
    Ok(())
}

/// The tiny guest's VGA text cell, in pixels.
const CELL: (usize, usize) = (9, 16);

/// `seen` (a viewer's framebuffer) shows QEMU's screen `want`: the same size, and every pixel
/// the same but at most one cell (the cursor blinks); and typed text is there (many pixels
/// unlike the background).
fn same_screen(seen: &rfb::framebuffer::Framebuffer, want: &Image) -> anyhow::Result<()> {
    let (width, height) = (usize::from(seen.width()), usize::from(seen.height()));
    ensure!(
        (width, height) == (want.width, want.height),
        "the viewer's screen is {width}x{height}, QEMU's {}x{}",
        want.width,
        want.height
    );
    let mut bounds: Option<(usize, usize, usize, usize)> = None;
    for (i, (a, b)) in seen.pixels().iter().zip(&want.pixels).enumerate() {
        if (a & 0x00ff_ffff) == *b {
            continue;
        }
        let (x, y) = (i % width, i / width);
        let (l, t, r, btm) = bounds.unwrap_or((x, y, x, y));
        bounds = Some((l.min(x), t.min(y), r.max(x), btm.max(y)));
    }
    if let Some((l, t, r, b)) = bounds {
        ensure!(
            r - l < CELL.0 && b - t < CELL.1,
            "the viewer's screen differs from QEMU's in ({l},{t})-({r},{b}), more than a cursor"
        );
    }
    let background = want.pixel(0, height - 1).unwrap_or(0);
    let text = want.pixels.iter().filter(|p| **p != background).count();
    println!(
        "the viewer's last screen equals QEMU's{}; {text} pixels of text",
        if bounds.is_some() {
            " but for the cursor"
        } else {
            ""
        }
    );
    ensure!(
        text > 1000,
        "hardly any text on the guest's screen: {text} pixels"
    );
    Ok(())
}

/// A console's input counters from its `status` (events pushed, delivered on each lane,
/// uncertain and dropped), for locating a loss.
fn counters(status: &serde_json::Value) -> String {
    [
        "link_pushed",
        "link_delivered",
        "link_fast_sent",
        "link_qmp_delivered",
        "link_qmp_not_running",
        "link_uncertain",
        "link_dropped",
    ]
    .iter()
    .map(|k| format!("{}={}", k.trim_start_matches("link_"), status[*k]))
    .collect::<Vec<_>>()
    .join(" ")
}
