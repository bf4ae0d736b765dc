//! The co-migration bed: hosts A, B and a client; the test guest on A under a real
//! `dmore console` process serving a service address; and a VM that migrates with its console
//! from host to host, as many times as asked (A → B → A …).
//!
//! ```text
//!   client ── VNC ──> SERVICE:5900 (on the VM's home host's eth0, moves with the console)
//!   home host:  QEMU (vmN: qmp.sock harness, qmp2.sock console, mig.sock orchestrator)
//!               dmore console --service-interface eth0 --listen SERVICE:5900 --control vmN/console.ctl
//!   other host: prepare_destination: QEMU -incoming defer (vmN+1) + dmore console --incoming IP:PORT
//!   run_migration: orchestrate::comigrate   finish: the old QEMU quit, the old console exited 0,
//!               its serial drained; the other host is home now
//! ```
//!
//! Gateway mode ([`CoBedOptions::gateway`]): no service address and no capabilities; each
//! console also listens for the gateway on its host's address, port [`GATEWAY_PORT`], and a
//! stationary `dmore gateway serve` on the client host (its address, the viewers' port) knows
//! both hosts' consoles; viewers connect to the gateway. With [`CoBedOptions::gateway_web`] it
//! also serves browsers: a web root and the WebSocket into a console's session, opened by a
//! token the bed issues (over https and wss with a certificate made for the bed, if asked).
//!
//! `migrate` runs the three steps; tests that inject faults run them one by one and use the
//! destination's pids in between. Every QEMU and console is killed on drop, on every path (and
//! the testbed kills whatever is left in its namespaces, also on SIGINT/SIGTERM).
//!
//! The orchestrator needs QEMU's main monitor to itself, while the testbed's [`Qemu`] holds its
//! own: each QEMU gets a third monitor, `mig.sock`, for the orchestrator only (never the
//! console's).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use guest::report::Report;
use guest::GuestOptions;
use linux_guest::launch::LinuxOptions;
use orchestrate::{OrchestrateError, Plan, Progress, Timeline};
use rfb::framebuffer::Framebuffer;
use testbed::capture::{Capture, CaptureError, CaptureReport};
use testbed::hosts::{Host, HostsError, Role, Testbed};
use testbed::qemu::{Qemu, Serial};
use testbed::service::{ServiceAddr, ServiceError, DEFAULT_OCTET, INTERFACE};
use tokio::time::Instant;

use crate::bench::input::ps2trace::{self, Ps2Trace};
use crate::steady::tally::{key_presses, left_clicks};
use crate::steady::{tally, SteadyLog, SteadyViewer, Tally};

/// The PS/2 trace's file in a QEMU's runtime directory ([`CoBedOptions::ps2_trace`]).
const PS2_TRACE: &str = "ps2-trace.log";

/// How long a QEMU or console may take to come up, and a console to exit after a takeover.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the Linux guest may take to boot under TCG (~10 s alone, 20-35 s with three more
/// booting beside it on two loaded cores).
const LINUX_BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// How long the old QEMU's serial port may take to close after its `quit`.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the guest may take to report what was typed once the viewer stops (it is done as
/// soon as it reported every key, or said nothing for [`QUIET`]).
const QUIET_DEADLINE: Duration = Duration::from_secs(600);
/// How long a guest that has not reported every key may stay silent before the rest counts as
/// lost.
const QUIET: Duration = Duration::from_secs(3);

/// How to build the bed.
#[derive(Debug, Clone)]
pub struct CoBedOptions {
    /// The `dmore` executable that runs the consoles (`std::env::current_exe()` in the demo,
    /// `env!("CARGO_BIN_EXE_dmore")` in bin/dmore's tests).
    pub dmore: PathBuf,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// The guest's options (a dirtying workload, animation).
    pub guest: GuestOptions,
    /// Run the Linux test guest with these options instead (`guest` is then unused; give it
    /// [`testbed::qemu::LINUX_MEMORY_MIB`] of memory). Its keys and buttons come as the tiny
    /// guest's [`Report`]s (see `testbed::qemu::Serial`). Keep its workload to input, screen
    /// and serial: plain QEMU 7.2 migration under TCG corrupts a Linux guest dirtying memory
    /// (DESIGN.md).
    pub linux: Option<LinuxOptions>,
    /// The port viewers connect to on the service address.
    pub port: u16,
    /// The orchestrator's limit for each stage of a co-migration.
    pub timeout: Duration,
    /// Run the consoles as this user (uid, gid) with only `CAP_NET_ADMIN` and `CAP_NET_RAW`
    /// (through `setpriv`), as an operator would; `None`: as the test's own user. Default:
    /// `nobody` when the bed runs as root, as dmore must never need root.
    pub console_user: Option<(u32, u32)>,
    /// The keyboard layout of both QEMUs (`-k`) and consoles (`--keymap`).
    pub keymap: Option<String>,
    /// The consoles' `--qemu-wait` (how long a session outlives its QEMU); `None`: dmore's
    /// default.
    pub qemu_wait: Option<Duration>,
    /// The serial lane: each QEMU gets the serial console (`QemuConfig::serial_console`, the
    /// guest's COM2) and each console serves it on the service address at this port
    /// (`--serial-listen`) and on `serial.sock` in its directory (`--serial-attach`).
    pub serial_port: Option<u16>,
    /// Have every QEMU trace its PS/2 keyboard queue into `ps2-trace.log` in its runtime
    /// directory ([`ps2trace`]), replayed by [`CoBed::ps2_traces`].
    pub ps2_trace: bool,
    /// More options for every console (e.g. `--lossy`).
    pub console_args: Vec<String>,
    /// Gateway mode: viewers reach the consoles through a stationary `dmore gateway serve` on
    /// the client host; no service address moves and the consoles have no capabilities.
    pub gateway: bool,
    /// Gateway mode: the gateway also serves browsers (`--web-listen`).
    pub gateway_web: Option<GatewayWeb>,
    /// Gateway mode with [`serial_port`](Self::serial_port): the consoles take the gateway's
    /// serial sessions on that port (`--serial-gateway-listen`) instead of `--serial-listen`,
    /// and the gateway serves SSH on the client host at [`SSH_PORT`], a key the bed makes
    /// ([`CoBed::ssh_keys`]) listed for the console [`CONSOLE_NAME`]; with
    /// [`gateway_web`](Self::gateway_web), its browser terminal (`/serial`) too.
    pub ssh: bool,
}

/// The gateway's web side ([`CoBedOptions::gateway_web`]).
#[derive(Debug, Clone)]
pub struct GatewayWeb {
    /// The port on the client host's address.
    pub port: u16,
    /// The page's static files (`--web-root`); the gateway's user must be able to read them.
    pub root: PathBuf,
    /// Serve https and wss, with a certificate `openssl` makes for the bed.
    pub tls: bool,
}

/// Where a browser reaches the gateway's web side ([`CoBed::gateway_web`]).
#[derive(Debug, Clone)]
pub struct WebEntry {
    /// `https://ADDR:PORT` or `http://ADDR:PORT`.
    pub base: String,
    /// A token for the bed's console (the WebSocket's `?token=`), valid for 10 minutes.
    pub token: String,
    /// With [`CoBedOptions::ssh`]: a token for the serial console [`CONSOLE_NAME`] (the
    /// browser terminal's `/serial?token=`).
    pub serial_token: Option<String>,
}

/// Where the gateway serves SSH on the client host ([`CoBedOptions::ssh`]).
pub const SSH_PORT: u16 = 2222;

/// The bed's console name (`--name`), the SSH user that reaches its serial console.
pub const CONSOLE_NAME: &str = "dmore-demo";

/// Where the consoles listen for the gateway on their hosts in gateway mode.
pub const GATEWAY_PORT: u16 = 4800;

/// The key the gateway and the consoles share, in the bed's directory.
const GATEWAY_KEY: &str = "gateway.key";

/// The user and group `nobody` and `nogroup` on Debian.
pub const NOBODY: (u32, u32) = (65534, 65534);

impl CoBedOptions {
    /// A 128 MiB idle guest, viewers on port 5900, 30 s per stage.
    pub fn new(dmore: impl Into<PathBuf>) -> CoBedOptions {
        CoBedOptions {
            dmore: dmore.into(),
            memory_mib: 128,
            guest: GuestOptions::default(),
            linux: None,
            port: 5900,
            timeout: Duration::from_secs(30),
            console_user: nix::unistd::geteuid().is_root().then_some(NOBODY),
            keymap: None,
            qemu_wait: None,
            serial_port: None,
            ps2_trace: false,
            console_args: Vec::new(),
            gateway: false,
            gateway_web: None,
            ssh: false,
        }
    }
}

/// Why the bed failed.
#[derive(Debug, thiserror::Error)]
pub enum CoBedError {
    /// The hosts could not be made.
    #[error("creating the test hosts")]
    Hosts(#[from] HostsError),
    /// The service address could not be placed (it needs root and network namespaces).
    #[error("placing the service address")]
    Service(#[from] ServiceError),
    /// A file of the bed could not be written.
    #[error("writing {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not start.
    #[error("starting QEMU on host {host}")]
    Launch {
        /// The host.
        host: &'static str,
        /// Why.
        #[source]
        source: testbed::qemu::LaunchError,
    },
    /// The guest did not come up.
    #[error("the guest on host {host} did not come up")]
    Guest {
        /// The host.
        host: &'static str,
        /// Why.
        #[source]
        source: testbed::qemu::SerialError,
    },
    /// A console process could not be started.
    #[error("starting `{dmore} console` on host {host}")]
    ConsoleSpawn {
        /// The host.
        host: &'static str,
        /// The executable.
        dmore: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A console exited when it should have run, or failed when it should have exited 0.
    #[error("the console on host {host} {what} ({status:?}); its stderr ends:\n{stderr}")]
    Console {
        /// The host.
        host: &'static str,
        /// What went wrong.
        what: &'static str,
        /// Its exit status, if it exited.
        status: Option<ExitStatus>,
        /// The end of its stderr.
        stderr: String,
    },
    /// A tool the bed runs (`dmore gateway token`, `openssl`) failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its exit status and stderr, or why it did not start.
        detail: String,
    },
    /// A step was called out of order.
    #[error("{0}")]
    Order(&'static str),
    /// A console's control socket refused a request.
    #[error("asking a console")]
    Control(#[from] console::control::ControlError),
    /// A co-migration by [`CoBed::migrate`] failed (the VM and console stay home unless the
    /// cause says otherwise); the destination, now gone, said this.
    #[error(
        "the move failed; the destination console {state}; its stderr ends:\n{stderr}\n\
         the source QEMU {source_qemu}"
    )]
    Move {
        /// Whether the destination console had exited ("exited (status)") or still ran.
        state: String,
        /// The end of the destination console's stderr.
        stderr: String,
        /// Whether the source QEMU still ran, or how it ended.
        source_qemu: SourceQemu,
        /// Why the move failed.
        #[source]
        source: Box<CoBedError>,
    },
    /// The packet capture on the client host failed.
    #[error("the packet capture on the client host")]
    Capture(#[from] CaptureError),
    /// A blocking task (the capture) died.
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    /// The co-migration failed (the VM and console stay home unless the error says otherwise).
    #[error("co-migrating from host {from} to host {to}")]
    Migrate {
        /// The source host.
        from: &'static str,
        /// The destination host.
        to: &'static str,
        /// Why.
        #[source]
        source: OrchestrateError,
    },
}

impl CoBedError {
    /// Whether the bed failed only because this machine cannot make network namespaces (not
    /// root): tests skip then.
    pub fn needs_namespaces(&self) -> bool {
        matches!(self, CoBedError::Service(ServiceError::Loopback))
    }

    /// Whether a move failed because the guest's kernel had panicked at home: QEMU's own TCG
    /// migration corrupts a Linux guest now and then (DESIGN.md), which is not the console's.
    pub fn guest_kernel_panicked(&self) -> bool {
        matches!(self, CoBedError::Move { source_qemu, .. } if source_qemu.guest_kernel_panicked())
    }
}

/// How the home QEMU stood when a move failed.
#[derive(Debug)]
pub enum SourceQemu {
    /// It still ran.
    Ran,
    /// It had exited: a guest kernel that panics ends QEMU (`-no-reboot`).
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its stderr.
        stderr: String,
        /// The last lines its guest printed on the report port (the Linux guest's kernel
        /// console).
        serial: String,
    },
}

impl SourceQemu {
    /// Whether the guest printed a kernel panic before QEMU ended.
    pub fn guest_kernel_panicked(&self) -> bool {
        matches!(self, SourceQemu::Exited { serial, .. } if serial.contains("Kernel panic"))
    }
}

impl std::fmt::Display for SourceQemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceQemu::Ran => f.write_str("still ran"),
            SourceQemu::Exited {
                status,
                stderr,
                serial,
            } => write!(
                f,
                "had exited ({status}); its stderr ends:\n{stderr}\nits guest's serial ends:\n{serial}"
            ),
        }
    }
}

/// A steady viewer's session through the bed, counted by [`CoBed::count_session`].
#[derive(Debug)]
pub struct SessionCount {
    /// Keys: the viewer's against the guest's reports.
    pub keys: Tally,
    /// Clicks sent and left clicks the guest reported.
    pub clicks: (usize, usize),
    /// Everything the viewer did and saw.
    pub log: SteadyLog,
    /// Every report the guest printed, across its homes.
    pub reports: Vec<Report>,
    /// The client host's capture, when one was given.
    pub capture: Option<CaptureReport>,
    /// The screen as the viewer had it when it stopped.
    pub screen: Option<Framebuffer>,
}

/// Counts a steady viewer's session once the guest is quiet: stops the typing, lets what is
/// in flight arrive, adds every report from `serial` to `timed` (which holds those of the
/// guest's earlier homes), ends `capture` (before the viewer closes its connection: that FIN
/// is no news), then stops the viewer.
pub async fn count_session(
    serial: Option<&mut Serial>,
    timed: &mut TimedReports,
    viewer: SteadyViewer,
    capture: Option<Capture>,
) -> Result<SessionCount, CoBedError> {
    viewer.set_typing(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, clicked) = {
        let log = viewer.snapshot();
        (log.keys.len(), log.clicks.len())
    };
    await_reports(serial, timed, sent, clicked).await;
    let reports = timed.reports.clone();
    let capture = match capture {
        Some(capture) => Some(tokio::task::spawn_blocking(move || capture.finish()).await??),
        None => None,
    };
    let (log, screen) = viewer.stop_with_screen().await;
    Ok(SessionCount {
        keys: tally(&log.key_codes(), &key_presses(&reports)),
        clicks: (log.clicks.len(), left_clicks(&reports)),
        log,
        reports,
        capture,
        screen,
    })
}

/// Adds the guest's reports from `serial` to `timed` until it reported `keys` key presses and
/// `clicks` left clicks (counted over all of `timed`), or said nothing for a few seconds: a
/// guest on a loaded machine can fall seconds behind its viewer.
pub async fn await_reports(
    mut serial: Option<&mut Serial>,
    timed: &mut TimedReports,
    keys: usize,
    clicks: usize,
) {
    let deadline = Instant::now() + QUIET_DEADLINE;
    let mut last_news = Instant::now();
    let mut seen = timed.reports.len();
    loop {
        if let Some(serial) = serial.as_deref_mut() {
            collect(
                serial,
                timed,
                Duration::from_millis(100),
                Duration::from_millis(500),
            )
            .await;
        }
        let reports = &timed.reports;
        let now = Instant::now();
        if reports.len() > seen {
            seen = reports.len();
            last_news = now;
        }
        if (key_presses(reports).len() >= keys && left_clicks(reports) >= clicks)
            || now.duration_since(last_news) >= QUIET
            || now >= deadline
        {
            break;
        }
    }
}

/// A guest's serial reports, in order, each with the time its line came out of the port.
#[derive(Debug, Clone, Default)]
pub struct TimedReports {
    /// The reports.
    pub reports: Vec<Report>,
    /// When each of `reports` came out of the guest's serial port (a report cut by a
    /// switchover: when it was joined).
    pub arrivals: Vec<std::time::Instant>,
}

impl TimedReports {
    fn push(&mut self, at: std::time::Instant, report: Report) {
        self.reports.push(report);
        self.arrivals.push(at);
    }
}

/// Adds the reports `serial` gives to `timed` until it is quiet for `quiet` or `max` passed.
async fn collect(serial: &mut Serial, timed: &mut TimedReports, quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, serial.recv_timed()).await {
            Ok(Some((at, report))) => timed.push(at, report),
            Ok(None) | Err(_) => break,
        }
    }
}

/// A `dmore console` process; killed and reaped on drop.
#[derive(Debug)]
struct ConsoleChild {
    child: Child,
    stderr: PathBuf,
}

impl ConsoleChild {
    /// Waits up to `within` for it to exit; its status and what it wrote to stderr.
    async fn exit(&mut self, within: Duration) -> Option<(ExitStatus, String)> {
        let status = wait_exit(&mut self.child, within).await?;
        Some((
            status,
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        ))
    }
}

impl Drop for ConsoleChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ConsoleChild {
    fn stderr_tail(&self) -> String {
        let bytes = std::fs::read(&self.stderr).unwrap_or_default();
        let from = bytes.len().saturating_sub(4096);
        String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
    }

    fn fail(
        &self,
        host: &'static str,
        what: &'static str,
        status: Option<ExitStatus>,
    ) -> CoBedError {
        CoBedError::Console {
            host,
            what,
            status,
            stderr: self.stderr_tail(),
        }
    }
}

/// One VM incarnation on one host: its QEMU and its console.
#[derive(Debug)]
struct Vm {
    role: Role,
    qemu: Qemu,
    console: ConsoleChild,
    control: PathBuf,
    orchestrator_qmp: PathBuf,
}

/// A destination made ready by [`CoBed::prepare_destination`].
#[derive(Debug)]
struct Destination {
    vm: Vm,
    incoming_uri: String,
    console_addr: SocketAddr,
}

/// The co-migration bed. Dropping it kills every QEMU and console and removes the hosts.
#[derive(Debug)]
pub struct CoBed {
    /// The `dmore` the consoles run: [`CoBedOptions::dmore`], or a link to it in the bed's
    /// own directory that the console user can reach.
    dmore: PathBuf,
    home: Option<Vm>,
    dest: Option<Destination>,
    reports: TimedReports,
    options: CoBedOptions,
    key_file: PathBuf,
    generation: u32,
    service: ServiceAddr,
    /// Gateway mode: the gateway process.
    gateway: Option<ConsoleChild>,
    /// Gateway mode with a web side: where browsers go.
    web: Option<WebEntry>,
    testbed: Testbed,
}

impl CoBed {
    /// Creates the hosts, puts the service address on A, boots the guest on A and starts its
    /// console there; returns once the console answers on its control socket.
    pub async fn start(options: CoBedOptions) -> Result<CoBed, CoBedError> {
        let testbed = Testbed::create()?;
        let service = ServiceAddr::new(&testbed, DEFAULT_OCTET)?;
        if !options.gateway {
            service.add(testbed.a())?;
        }
        let key_file = testbed.run_dir().join("peer.key");
        let key = random_key().map_err(|source| CoBedError::File {
            path: key_file.clone(),
            source,
        })?;
        std::fs::write(&key_file, format!("{key}\n")).map_err(|source| CoBedError::File {
            path: key_file.clone(),
            source,
        })?;
        let gateway_key = testbed.run_dir().join(GATEWAY_KEY);
        let key = random_key().map_err(|source| CoBedError::File {
            path: gateway_key.clone(),
            source,
        })?;
        std::fs::write(&gateway_key, format!("{key}\n")).map_err(|source| CoBedError::File {
            path: gateway_key.clone(),
            source,
        })?;
        if options.ssh {
            ssh_keys(testbed.run_dir())?;
        }
        let dmore = match options.console_user {
            Some(user) => {
                give(&key_file, user)?;
                give(&gateway_key, user)?;
                if options.ssh {
                    give(&testbed.run_dir().join(SSH_HOST_KEY), user)?;
                    give(&testbed.run_dir().join(SSH_AUTHORIZED_KEYS), user)?;
                }
                reachable_copy(&options.dmore, &testbed.run_dir().join("dmore"))?
            }
            None => options.dmore.clone(),
        };
        let mut bed = CoBed {
            dmore,
            home: None,
            dest: None,
            reports: TimedReports::default(),
            options,
            key_file,
            generation: 0,
            service,
            gateway: None,
            web: None,
            testbed,
        };
        let vm = bed.launch(Role::A, None).await?;
        bed.home = Some(vm);
        if bed.options.gateway {
            bed.gateway = Some(bed.spawn_gateway(&gateway_key).await?);
        }
        Ok(bed)
    }

    /// [`CoBed::start`], or `None` with a note on stdout where the bed cannot be made here
    /// (not root: no network namespaces, no `TCP_REPAIR`), so tests skip rather than fail.
    pub async fn start_or_skip(options: CoBedOptions) -> Result<Option<CoBed>, CoBedError> {
        match CoBed::start(options).await {
            Ok(bed) => Ok(Some(bed)),
            // On CI nothing may skip (`testbed::skip`): the error fails the test there.
            Err(e) if e.needs_namespaces() && !testbed::skip::on_ci() => {
                println!("skipped: co-migration needs root (network namespaces, TCP_REPAIR)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The hosts.
    pub fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    /// Where viewers connect: the service address and port (gateway mode: the gateway's).
    pub fn service(&self) -> SocketAddr {
        if self.options.gateway {
            return SocketAddr::from((self.testbed.client().ip(), self.options.port));
        }
        SocketAddr::from((self.service.addr(), self.options.port))
    }

    /// Where serial viewers connect: the service address and the serial port, if configured.
    pub fn serial_service(&self) -> Option<SocketAddr> {
        self.options
            .serial_port
            .map(|port| SocketAddr::from((self.service.addr(), port)))
    }

    /// The home console's `--serial-attach` socket (with [`CoBedOptions::serial_port`]).
    pub fn home_serial_attach(&self) -> Option<PathBuf> {
        self.options.serial_port?;
        Some(self.home.as_ref()?.control.parent()?.join("serial.sock"))
    }

    /// With [`CoBedOptions::ssh`]: the private key listed for the console, and one that is not.
    pub fn ssh_keys(&self) -> Option<(PathBuf, PathBuf)> {
        self.options.ssh.then(|| {
            let dir = self.testbed.run_dir();
            (dir.join(SSH_USER_KEY), dir.join(SSH_WRONG_KEY))
        })
    }

    /// With [`CoBedOptions::ssh`]: OpenSSH's `ssh` on the client host to the gateway as
    /// `user` with the private key `key`, no pty (bytes pass unchanged), the gateway's host
    /// key taken unchecked (the bed made it a moment ago), no agent, no other key.
    pub fn ssh_client(&self, user: &str, key: &Path) -> std::process::Command {
        let mut cmd = self.testbed.client().command("ssh");
        cmd.arg("-T")
            .arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(key)
            .args(["-p", &SSH_PORT.to_string()])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "IdentityAgent=none"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("{user}@{}", self.testbed.client().ip()));
        cmd
    }

    /// Gateway mode: the gateway's process id.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().map(|g| g.child.id())
    }

    /// Gateway mode with [`CoBedOptions::gateway_web`]: where browsers reach the gateway.
    pub fn gateway_web(&self) -> Option<&WebEntry> {
        self.web.as_ref()
    }

    /// Gateway mode: what the gateway logged so far (its sessions' events at `info`).
    pub fn gateway_log(&self) -> Option<String> {
        let g = self.gateway.as_ref()?;
        std::fs::read_to_string(&g.stderr).ok()
    }

    /// Starts `dmore gateway serve` on the client host, knowing both hosts' consoles, and
    /// waits until it listens.
    async fn spawn_gateway(&mut self, key: &Path) -> Result<ConsoleChild, CoBedError> {
        let host = self.testbed.client().clone();
        let dir = host.runtime_dir().to_path_buf();
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::File::create(&path).map_err(|source| CoBedError::File { path, source })
        };
        let mut cmd = self.unprivileged(&host, false);
        cmd.args(["gateway", "serve", "--listen"])
            .arg(self.service().to_string())
            .arg("--key-file")
            .arg(key);
        for role in [Role::A, Role::B] {
            let ip = self.testbed.host(role).ip();
            cmd.arg("--console")
                .arg(SocketAddr::from((ip, GATEWAY_PORT)).to_string());
        }
        if let Some(web) = self.options.gateway_web.clone() {
            self.web = Some(self.web_side(&web, &mut cmd)?);
        }
        if self.options.ssh {
            let run = self.testbed.run_dir();
            cmd.arg("--ssh-listen")
                .arg(SocketAddr::from((host.ip(), SSH_PORT)).to_string())
                .arg("--ssh-host-key")
                .arg(run.join(SSH_HOST_KEY))
                .arg("--ssh-authorized-keys")
                .arg(run.join(SSH_AUTHORIZED_KEYS));
            for role in [Role::A, Role::B] {
                let ip = self.testbed.host(role).ip();
                let port = self.options.serial_port.unwrap_or(GATEWAY_PORT + 1);
                cmd.arg("--serial-console")
                    .arg(format!("{CONSOLE_NAME}={}", SocketAddr::from((ip, port))));
            }
        }
        let stdout = dir.join("gateway.stdout");
        cmd.env(
            "RUST_LOG",
            "gateway=info,dmore=info,console::serial_attach=info",
        )
        .stdin(Stdio::null())
        .stdout(file("gateway.stdout")?)
        .stderr(file("gateway.stderr")?);
        let child = cmd.spawn().map_err(|source| CoBedError::ConsoleSpawn {
            host: host.name(),
            dmore: self.dmore.display().to_string(),
            source,
        })?;
        let mut gateway = ConsoleChild {
            child,
            stderr: dir.join("gateway.stderr"),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let said = std::fs::read_to_string(&stdout).unwrap_or_default();
            // The viewers' listener, then the browsers' if any.
            let listeners = 1 + usize::from(self.web.is_some());
            if said.matches("listening on").count() >= listeners {
                return Ok(gateway);
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                return Err(gateway.fail(
                    host.name(),
                    "(the gateway) exited at start",
                    Some(status),
                ));
            }
            if Instant::now() >= deadline {
                return Err(gateway.fail(host.name(), "(the gateway) never listened", None));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Issues a token and (with TLS) makes a certificate in the bed's directory, both readable
    /// by the console user, and adds the web side's options to the gateway's `cmd`.
    fn web_side(
        &self,
        web: &GatewayWeb,
        cmd: &mut std::process::Command,
    ) -> Result<WebEntry, CoBedError> {
        let dir = self.testbed.run_dir();
        let tokens = dir.join("gateway.tokens");
        // The gateway's consoles are unnamed: `default`.
        let token = issue_token(&self.options.dmore, &tokens, "default")?;
        let serial_token = if self.options.ssh {
            Some(issue_token(&self.options.dmore, &tokens, CONSOLE_NAME)?)
        } else {
            None
        };
        let listen = SocketAddr::from((self.testbed.client().ip(), web.port));
        cmd.arg("--web-listen")
            .arg(listen.to_string())
            .arg("--web-root")
            .arg(&web.root)
            .arg("--token-file")
            .arg(&tokens);
        let mut scheme = "http";
        if web.tls {
            let (cert, cert_key) = (dir.join("web-cert.pem"), dir.join("web-key.pem"));
            run_tool(
                "openssl",
                std::process::Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                    .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                    .args(["-subj", "/CN=dmore-bed"])
                    .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                    .arg("-keyout")
                    .arg(&cert_key)
                    .arg("-out")
                    .arg(&cert),
            )?;
            if let Some(user) = self.options.console_user {
                give(&cert_key, user)?;
            }
            cmd.arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&cert_key);
            scheme = "https";
        }
        if let Some(user) = self.options.console_user {
            give(&tokens, user)?;
        }
        Ok(WebEntry {
            base: format!("{scheme}://{listen}"),
            token,
            serial_token,
        })
    }

    /// `dmore` on `host` as the console user (with the capabilities transparent mode needs
    /// when `caps`, else none), or as the test's own user.
    fn unprivileged(&self, host: &Host, caps: bool) -> std::process::Command {
        match self.options.console_user {
            Some((uid, gid)) => {
                let mut cmd = host.command("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups");
                if caps {
                    cmd.arg("--inh-caps=+net_admin,+net_raw")
                        .arg("--ambient-caps=+net_admin,+net_raw");
                } else {
                    cmd.arg("--inh-caps=-all");
                }
                cmd.arg("--").arg(&self.dmore);
                cmd
            }
            None => host.command(&self.dmore),
        }
    }

    /// Whether the service address is on `role`'s host now (it must be on the VM's home only).
    pub fn service_is_on(&self, role: Role) -> Result<bool, CoBedError> {
        Ok(self.service.is_on(self.testbed.host(role))?)
    }

    /// The host the VM and its console run on now.
    pub fn home(&self) -> Role {
        self.home.as_ref().map_or(Role::A, |vm| vm.role)
    }

    /// The host the next migration goes to.
    pub fn other(&self) -> Role {
        match self.home() {
            Role::A => Role::B,
            _ => Role::A,
        }
    }

    /// The home QEMU's and console's process ids.
    pub fn home_pids(&self) -> Option<(u32, u32)> {
        self.home
            .as_ref()
            .map(|vm| (vm.qemu.pid().unwrap_or(0), vm.console.child.id()))
    }

    /// The prepared destination's QEMU and console process ids (to inject faults).
    pub fn destination_pids(&self) -> Option<(u32, u32)> {
        self.dest
            .as_ref()
            .map(|d| (d.vm.qemu.pid().unwrap_or(0), d.vm.console.child.id()))
    }

    /// The home QEMU, through the testbed's own monitor (e.g. to slow a migration down).
    pub fn home_qemu(&self) -> Option<&Qemu> {
        self.home.as_ref().map(|vm| &vm.qemu)
    }

    /// The prepared destination's QEMU (e.g. to make its sockets unreachable for a while).
    pub fn destination_qemu(&self) -> Option<&Qemu> {
        self.dest.as_ref().map(|d| &d.vm.qemu)
    }

    /// Waits up to `within` for the prepared destination's console to exit, and returns its
    /// status and what it wrote to stderr; `None` if it still runs.
    pub async fn destination_console_exit(
        &mut self,
        within: Duration,
    ) -> Option<(ExitStatus, String)> {
        self.dest.as_mut()?.vm.console.exit(within).await
    }

    /// [`destination_console_exit`](Self::destination_console_exit) for the home console.
    pub async fn home_console_exit(&mut self, within: Duration) -> Option<(ExitStatus, String)> {
        self.home.as_mut()?.console.exit(within).await
    }

    /// Starts the prepared destination's console again, with the same addresses (after it
    /// died), and waits until it answers on its control socket.
    pub async fn restart_destination_console(&mut self) -> Result<(), CoBedError> {
        let Some(dest) = self.dest.as_ref() else {
            return Err(CoBedError::Order("prepare_destination first"));
        };
        let host = self.testbed.host(dest.vm.role).clone();
        let dir = dest
            .vm
            .control
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let addr = dest.console_addr;
        // The dead console's socket file stays behind; the new one binds the same path.
        let _ = std::fs::remove_file(&dest.vm.control);
        let console =
            self.spawn_console(&host, &dest.vm.qemu, &dir, &dest.vm.control, Some(addr))?;
        let Some(dest) = self.dest.as_mut() else {
            return Err(CoBedError::Order("prepare_destination first"));
        };
        dest.vm.console = console;
        wait_console_up(&host, &mut dest.vm).await
    }

    /// The home console's control socket.
    pub fn home_control(&self) -> Option<&Path> {
        self.home.as_ref().map(|vm| vm.control.as_path())
    }

    /// The prepared destination console's control socket.
    pub fn destination_control(&self) -> Option<&Path> {
        self.dest.as_ref().map(|d| d.vm.control.as_path())
    }

    /// The guest's serial port on its home QEMU (reports not yet taken by
    /// [`collect_reports`](Self::collect_reports)).
    pub fn home_serial(&mut self) -> Option<&mut Serial> {
        self.home.as_mut().map(|vm| vm.qemu.serial())
    }

    /// Every report the guest printed so far, across its homes, in order: takes what the home
    /// QEMU's serial has, until it is quiet for `quiet` or `max` has passed.
    pub async fn collect_reports(&mut self, quiet: Duration, max: Duration) -> &[Report] {
        if let Some(vm) = self.home.as_mut() {
            collect(vm.qemu.serial(), &mut self.reports, quiet, max).await;
        }
        &self.reports.reports
    }

    /// When each report [`collect_reports`](Self::collect_reports) returns came out of the
    /// guest's serial port, in the same order (a report cut by a switchover: when it was
    /// joined).
    pub fn report_arrivals(&self) -> &[std::time::Instant] {
        &self.reports.arrivals
    }

    /// Starts tcpdump on the client host's `eth0`, reporting the connections to the service
    /// address (`<client dir>/<name>.pcap`); end it with [`count_session`](Self::count_session).
    pub async fn capture(&self, name: &str) -> Result<Capture, CoBedError> {
        let std::net::IpAddr::V4(service) = self.service().ip() else {
            return Err(CoBedError::Order("the service address is IPv4"));
        };
        let client = self.testbed.client().clone();
        let name = name.to_owned();
        // Gateway mode: the gateway is on the client host itself.
        let (interface, port) = match self.options.gateway {
            true => ("lo", Some(self.options.port)),
            false => ("eth0", None),
        };
        Ok(tokio::task::spawn_blocking(move || {
            Capture::start_on(&client, interface, &name, service, port)
        })
        .await??)
    }

    /// Counts a steady viewer's session once the guest is quiet ([`count_session`]) from the
    /// home QEMU's serial port.
    pub async fn count_session(
        &mut self,
        viewer: SteadyViewer,
        capture: Option<Capture>,
    ) -> Result<SessionCount, CoBedError> {
        let serial = self.home.as_mut().map(|vm| vm.qemu.serial());
        count_session(serial, &mut self.reports, viewer, capture).await
    }

    /// Starts the destination on the other host: QEMU with `-incoming defer` (same
    /// configuration) and an `--incoming` console, which answers on its control socket.
    pub async fn prepare_destination(&mut self) -> Result<(), CoBedError> {
        if self.dest.is_some() {
            return Err(CoBedError::Order("a destination is already prepared"));
        }
        let role = self.other();
        let host = self.testbed.host(role).clone();
        let console_addr = SocketAddr::from((host.ip(), host.free_port()?));
        // Two picks in a row can give the same port (each is free again once picked), and
        // then QEMU's `migrate-incoming` fails with EADDRINUSE (seen once in 430 moves).
        let taken = format!(":{}", console_addr.port());
        let incoming_uri = loop {
            let uri = host.incoming_uri()?;
            if !uri.ends_with(&taken) {
                break uri;
            }
        };
        let vm = self.launch(role, Some(console_addr)).await?;
        self.dest = Some(Destination {
            vm,
            incoming_uri,
            console_addr,
        });
        Ok(())
    }

    /// Prepares the destination and announces the migration to the home console as an
    /// orchestrator does (`prepare`, `migration-started`), for a test that then drives QEMU's
    /// migration itself with the returned plan.
    pub async fn announce(&mut self, hold_switchover: bool) -> Result<Plan, CoBedError> {
        use console::control::{request, Command};
        self.prepare_destination().await?;
        let plan = self.plan(hold_switchover)?;
        request(
            &plan.source_console,
            &Command::Prepare(plan.dest_console_addr),
        )
        .await?;
        request(&plan.source_console, &Command::MigrationStarted).await?;
        Ok(plan)
    }

    /// The orchestrator's plan from home to the prepared destination.
    pub fn plan(&self, hold_switchover: bool) -> Result<Plan, CoBedError> {
        let (Some(home), Some(dest)) = (&self.home, &self.dest) else {
            return Err(CoBedError::Order("prepare_destination first"));
        };
        Ok(Plan {
            source_qmp: home.orchestrator_qmp.clone(),
            dest_qmp: dest.vm.orchestrator_qmp.clone(),
            incoming_uri: dest.incoming_uri.clone(),
            source_console: home.control.clone(),
            dest_console: dest.vm.control.clone(),
            dest_console_addr: dest.console_addr,
            hold_switchover,
            events: true,
            timeout: self.options.timeout,
            quit_source: true,
        })
    }

    /// Runs the co-migration to the prepared destination ([`orchestrate::comigrate`]).
    /// Call [`finish`](Self::finish) after success, [`abandon_destination`](Self::abandon_destination)
    /// after a failure.
    pub async fn run_migration(
        &mut self,
        hold_switchover: bool,
        progress: impl FnMut(&Progress),
    ) -> Result<Timeline, CoBedError> {
        let plan = self.plan(hold_switchover)?;
        let (from, to) = (self.home().name(), self.other().name());
        orchestrate::comigrate(&plan, progress)
            .await
            .map_err(|source| CoBedError::Migrate { from, to, source })
    }

    /// After a successful co-migration: takes the old QEMU's last serial reports (its
    /// `quit` closes the port), checks that the old console exited 0, and makes the
    /// destination the VM's home.
    pub async fn finish(&mut self) -> Result<(), CoBedError> {
        let Some(dest) = self.dest.take() else {
            return Err(CoBedError::Order("no destination to finish"));
        };
        let Some(mut old) = self.home.replace(dest.vm) else {
            return Err(CoBedError::Order("no home VM"));
        };
        let host = old.role.name();
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            while let Some((at, report)) = old.qemu.serial().recv_timed().await {
                self.reports.push(at, report);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                host,
                "the old QEMU's serial port stayed open after its quit"
            );
        }
        if let Some(tail) = old.qemu.serial().unterminated_tail() {
            self.join_split_report(&tail).await;
        }
        let status = wait_exit(&mut old.console.child, START_DEADLINE).await;
        match status {
            Some(status) if status.success() => {}
            Some(status) => {
                return Err(old.console.fail(
                    host,
                    "exited with an error after the takeover",
                    Some(status),
                ))
            }
            None => {
                return Err(old
                    .console
                    .fail(host, "did not exit after the takeover", None))
            }
        }
        let _ = old.qemu.shutdown(Duration::from_secs(5)).await;
        Ok(())
    }

    /// The guest stopped for the switchover in the middle of printing a report: its start
    /// (`tail`) came out of the old QEMU's serial port, the rest is the new home's first line.
    async fn join_split_report(&mut self, tail: &str) {
        let Some(home) = self.home.as_mut() else {
            return;
        };
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let first = loop {
            if let Some(first) = home.qemu.serial().lines().into_iter().next() {
                break first;
            }
            if Instant::now() >= deadline {
                tracing::warn!(tail, "a report cut by the switchover was never completed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let line = format!("{tail}{first}");
        let parsed = match self.options.linux {
            None => guest::report::parse_line(&line).map_err(|e| e.to_string()),
            Some(_) => linux_guest::report::parse_line(&line)
                .map(|r| r.as_guest_report())
                .map_err(|e| e.to_string())
                .and_then(|r| r.ok_or_else(|| "not a key or button report".to_owned())),
        };
        match parsed {
            Ok(report) => {
                self.reports.push(std::time::Instant::now(), report);
            }
            Err(e) => tracing::warn!(tail, first, error = %e, "a report cut by the switchover"),
        }
    }

    /// The PS/2 keyboard queue and mouse of every QEMU the bed started so far, replayed from
    /// its trace (with [`CoBedOptions::ps2_trace`]; a running QEMU's trace as far as it got),
    /// each named by its runtime directory, in the order they ran. A destination's replay
    /// starts where its source's ended (the last trace to end before its own begins): its
    /// queue and buttons came with the migration.
    pub fn ps2_traces(&self) -> Vec<(PathBuf, Ps2Trace)> {
        let vms = std::fs::read_dir(self.testbed.run_dir())
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|host| std::fs::read_dir(host.path()).into_iter().flatten())
            .flatten();
        let logs = vms.filter_map(|vm| {
            let log = std::fs::read_to_string(vm.path().join(PS2_TRACE)).ok()?;
            Some((vm.path(), log))
        });
        ps2trace::chain(logs)
    }

    /// After a failed co-migration: kills the prepared destination; the VM stays home.
    pub fn abandon_destination(&mut self) {
        self.dest = None;
    }

    /// One co-migration to the other host: prepare, run, finish (or abandon on failure, with
    /// the destination console's last words in [`CoBedError::Move`]: its files go with the bed).
    pub async fn migrate(&mut self, hold_switchover: bool) -> Result<Timeline, CoBedError> {
        self.prepare_destination().await?;
        match self.run_migration(hold_switchover, |_| {}).await {
            Ok(timeline) => {
                self.finish().await?;
                Ok(timeline)
            }
            Err(e) => {
                let exited = self.destination_console_exit(Duration::from_secs(1)).await;
                let stderr = self
                    .dest
                    .as_ref()
                    .map(|d| d.vm.console.stderr_tail())
                    .unwrap_or_default();
                self.abandon_destination();
                Err(CoBedError::Move {
                    state: exited.map_or("still ran".to_owned(), |(status, _)| {
                        format!("exited ({status})")
                    }),
                    stderr,
                    source_qemu: self.home_qemu_state(),
                    source: Box::new(e),
                })
            }
        }
    }

    /// Whether the home QEMU still runs, or how it ended.
    fn home_qemu_state(&mut self) -> SourceQemu {
        let Some(home) = self.home.as_mut() else {
            return SourceQemu::Ran;
        };
        match home.qemu.exit_status() {
            None => SourceQemu::Ran,
            Some(status) => SourceQemu::Exited {
                status,
                stderr: home.qemu.stderr(),
                serial: home.qemu.serial().log_tail(),
            },
        }
    }

    /// Starts QEMU (incoming when `incoming` is given) and its console on `role`'s host.
    async fn launch(&mut self, role: Role, incoming: Option<SocketAddr>) -> Result<Vm, CoBedError> {
        self.generation += 1;
        let host = self.testbed.host(role).clone();
        let mut cfg = host.qemu_config(&format!("vm{}", self.generation));
        let dir = cfg.runtime_dir.clone();
        let orchestrator_qmp = dir.join("mig.sock");
        let mut monitor = OsString::from("unix:");
        monitor.push(&orchestrator_qmp);
        monitor.push(",server=on,wait=off");
        cfg.memory_mib = self.options.memory_mib;
        cfg.guest = self.options.guest;
        cfg.linux = self.options.linux;
        cfg.key_delay_ms = Some(0);
        cfg.extra_qmp = true;
        cfg.incoming = incoming.is_some();
        cfg.keymap.clone_from(&self.options.keymap);
        cfg.serial_console = self.options.serial_port.is_some();
        cfg.extra_args = vec!["-qmp".into(), monitor];
        if self.options.ps2_trace {
            cfg.extra_args
                .extend(ps2trace::qemu_args(&dir.join(PS2_TRACE)));
        }
        let launch = |source| CoBedError::Launch {
            host: host.name(),
            source,
        };
        let mut qemu = Qemu::launch(cfg).await.map_err(launch)?;
        if incoming.is_none() {
            let deadline = match self.options.linux {
                Some(_) => LINUX_BOOT_DEADLINE,
                None => START_DEADLINE,
            };
            qemu.wait_ready(deadline)
                .await
                .map_err(|source| CoBedError::Guest {
                    host: host.name(),
                    source,
                })?;
        }
        let control = dir.join("console.ctl");
        if let Some(user) = self.options.console_user {
            // What an operator does for a console user: QEMU's sockets and the console's
            // directory are its.
            for path in [
                Some(dir.as_path()),
                Some(qemu.vnc_path()),
                qemu.qmp2_path(),
                qemu.serial_console_path(),
            ]
            .into_iter()
            .flatten()
            {
                give(path, user)?;
            }
        }
        let console = self.spawn_console(&host, &qemu, &dir, &control, incoming)?;
        let mut vm = Vm {
            role,
            qemu,
            console,
            control,
            orchestrator_qmp,
        };
        wait_console_up(&host, &mut vm).await?;
        Ok(vm)
    }

    fn spawn_console(
        &self,
        host: &Host,
        qemu: &Qemu,
        dir: &Path,
        control: &Path,
        incoming: Option<SocketAddr>,
    ) -> Result<ConsoleChild, CoBedError> {
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::File::create(&path).map_err(|source| CoBedError::File { path, source })
        };
        let stderr = dir.join("console.stderr");
        let mut cmd = self.unprivileged(host, !self.options.gateway);
        cmd.arg("console")
            .arg("--vnc-socket")
            .arg(qemu.vnc_path())
            .arg("--qmp-socket")
            .arg(qemu.qmp2_path().unwrap_or(Path::new("qmp2.sock")));
        if self.options.gateway {
            let key = self.testbed.run_dir().join(GATEWAY_KEY);
            cmd.arg("--listen")
                .arg(SocketAddr::from((host.ip(), self.options.port)).to_string())
                .arg("--gateway-listen")
                .arg(SocketAddr::from((host.ip(), GATEWAY_PORT)).to_string())
                .arg("--gateway-psk-file")
                .arg(key);
        } else {
            cmd.arg("--listen")
                .arg(self.service().to_string())
                .arg("--service-interface")
                .arg(INTERFACE);
        }
        cmd.arg("--control")
            .arg(control)
            .arg("--peer-key-file")
            .arg(&self.key_file)
            // The bed's viewers reach the service address only from its own namespaces.
            .arg("--insecure-no-auth")
            .args(["--name", CONSOLE_NAME]);
        if let Some(addr) = incoming {
            cmd.arg("--incoming").arg(addr.to_string());
        }
        if let Some(layout) = &self.options.keymap {
            cmd.arg("--keymap").arg(layout);
        }
        if let Some(wait) = self.options.qemu_wait {
            cmd.arg("--qemu-wait").arg(wait.as_secs().to_string());
        }
        if let (Some(socket), Some(addr)) = (qemu.serial_console_path(), self.serial_service()) {
            cmd.arg("--serial-socket").arg(socket);
            if self.options.ssh {
                cmd.arg("--serial-gateway-listen")
                    .arg(SocketAddr::from((host.ip(), addr.port())).to_string());
            } else {
                cmd.arg("--serial-listen").arg(addr.to_string());
            }
            cmd.arg("--serial-attach").arg(dir.join("serial.sock"));
        }
        cmd.args(&self.options.console_args);
        cmd.stdin(Stdio::null())
            .stdout(file("console.stdout")?)
            .stderr(file("console.stderr")?);
        let child = cmd.spawn().map_err(|source| CoBedError::ConsoleSpawn {
            host: host.name(),
            dmore: self.dmore.display().to_string(),
            source,
        })?;
        Ok(ConsoleChild { child, stderr })
    }
}

/// Polls the console's control socket with `version` until it answers, or fails if the
/// console exits or stays silent.
async fn wait_console_up(host: &Host, vm: &mut Vm) -> Result<(), CoBedError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if console::control::request(&vm.control, &console::control::Command::Version)
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = vm.console.child.try_wait() {
            return Err(vm
                .console
                .fail(host.name(), "exited at start", Some(status)));
        }
        if Instant::now() >= deadline {
            return Err(vm
                .console
                .fail(host.name(), "never answered on its control socket", None));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The child's exit status once it exits, or `None` after `within`.
async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Makes `path` belong to `user` (uid, gid).
/// The gateway's SSH host key, the user's key, a key nobody listed, the authorized keys.
const SSH_HOST_KEY: &str = "ssh-host-key";
const SSH_USER_KEY: &str = "ssh-user-key";
const SSH_WRONG_KEY: &str = "ssh-wrong-key";
const SSH_AUTHORIZED_KEYS: &str = "ssh-authorized-keys";

/// Makes the SSH keys in `dir` with `ssh-keygen` and lists the user's key for the console.
fn ssh_keys(dir: &Path) -> Result<(), CoBedError> {
    for name in [SSH_HOST_KEY, SSH_USER_KEY, SSH_WRONG_KEY] {
        let path = dir.join(name);
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .status()
            .and_then(|s| {
                s.success()
                    .then_some(())
                    .ok_or_else(|| std::io::Error::other(format!("ssh-keygen: {s}")))
            });
        made.map_err(|source| CoBedError::File {
            path: path.clone(),
            source,
        })?;
    }
    let public = dir.join(format!("{SSH_USER_KEY}.pub"));
    let line = std::fs::read_to_string(&public).map_err(|source| CoBedError::File {
        path: public,
        source,
    })?;
    let keys = dir.join(SSH_AUTHORIZED_KEYS);
    std::fs::write(&keys, format!("{CONSOLE_NAME} {line}")).map_err(|source| CoBedError::File {
        path: keys.clone(),
        source,
    })
}

fn give(path: &Path, (uid, gid): (u32, u32)) -> Result<(), CoBedError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| CoBedError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// `dmore` at `at`, where any user can run it (its own directory may not be reachable: a
/// checkout under /root): a hard link, or a copy across file systems.
pub fn reachable_copy(dmore: &Path, at: &Path) -> Result<PathBuf, CoBedError> {
    let file = |source| CoBedError::File {
        path: at.to_path_buf(),
        source,
    };
    if std::fs::hard_link(dmore, at).is_err() {
        std::fs::copy(dmore, at).map_err(file)?;
    }
    Ok(at.to_path_buf())
}

/// A fresh pre-shared key for the consoles: 16 random bytes in hex.
/// A token for `console`, good for 10 minutes, from `dmore gateway token` (the executable
/// `dmore`), added to `token_file`.
pub fn issue_token(dmore: &Path, token_file: &Path, console: &str) -> Result<String, CoBedError> {
    let printed = run_tool(
        "dmore gateway token",
        std::process::Command::new(dmore)
            .args(["gateway", "token", "--console", console, "--ttl", "600"])
            .arg("--token-file")
            .arg(token_file),
    )?;
    Ok(printed.lines().next().unwrap_or_default().to_owned())
}

/// Runs `cmd` to its end; its stdout if it succeeded.
fn run_tool(tool: &'static str, cmd: &mut std::process::Command) -> Result<String, CoBedError> {
    let fail = |detail: String| CoBedError::Tool { tool, detail };
    let out = cmd.output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout).map_err(|e| fail(e.to_string()))
}

fn random_key() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
