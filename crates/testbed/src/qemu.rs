//! The QEMU launcher: runs the test guest ([`guest`]) in `qemu-system-x86_64`, or the Linux
//! test guest ([`linux_guest`], with [`QemuConfig::linux`]).
//!
//! - KVM with qboot where `/dev/kvm` opens (SeaBIOS would take ~5 s), TCG (with QEMU's default
//!   firmware, SeaBIOS) otherwise; [`Qemu::accel`] says which, checked with `query-kvm`. The
//!   Linux guest runs under TCG unless KVM is asked for ([`AccelChoice::Kvm`]): it does not
//!   boot under the nested `kvm-pvm` of the machines these tests run on (DESIGN.md); its
//!   firmware is its options' (SeaBIOS or OVMF), never qboot.
//! - Everything lives in the config's runtime directory: `qmp.sock` (the harness's monitor,
//!   held by [`Qemu::qmp`]), `qmp2.sock` (a free monitor for dmore's console, with
//!   [`QemuConfig::extra_qmp`]), `vnc.sock`, `serial.sock`, `qemu.pid` (for the sweep of dead
//!   runs), `qemu.stderr` and `qemu.stdout`.
//! - Serial is a unix-socket chardev with `wait=on`: QEMU holds the guest until the launcher
//!   has connected, so no line is lost; [`Serial`] parses the lines ([`guest::report`]).
//! - QEMU dies with the test process (`PR_SET_PDEATHSIG`, see `spawn`), is killed on `Drop`,
//!   and [`Qemu::shutdown`] asks it to `quit` first.
//!
//! ```text
//!  launch ──spawn──▶ wait for serial.sock ──connect──▶ QMP connect ──query-kvm──▶ Qemu
//!     │ QEMU exits: LaunchError::Exited (with its stderr)        │
//!     └ binary missing: LaunchError::QemuMissing (names qemu-system-x86)
//! ```

mod args;
mod serial;
mod spawn;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use guest::GuestOptions;
use linux_guest::launch::LinuxOptions;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::time::Instant;

pub use args::QBOOT;
pub use serial::{Serial, SerialError};

/// The Debian package that has `qemu-system-x86_64`.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM where `/dev/kvm` opens, TCG otherwise.
    #[default]
    Auto,
    /// KVM, or fail.
    Kvm,
    /// TCG, even where KVM works.
    Tcg,
}

/// The accelerator a QEMU runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (with qboot firmware).
    Kvm,
    /// QEMU's emulator (with SeaBIOS).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Whether `/dev/kvm` opens for reading and writing (what QEMU needs for `-accel kvm`).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// How to start one QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary, a name looked up in `PATH` or a path.
    pub qemu_binary: PathBuf,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// The test guest's options.
    pub guest: GuestOptions,
    /// Boot the Linux test guest with these options instead of the tiny test guest (whose
    /// `guest` options are then unused). Its initramfs is written into the runtime directory.
    pub linux: Option<LinuxOptions>,
    /// Which accelerator.
    pub accel: AccelChoice,
    /// Where the sockets, pidfile and logs go (created if missing). Unix socket paths are
    /// limited to 107 bytes, so keep it short.
    pub runtime_dir: PathBuf,
    /// Run QEMU inside this network namespace (`ip netns exec NAME`).
    pub netns: Option<String>,
    /// Start as a migration destination (`-incoming defer`); the guest prints nothing until a
    /// migration brings it.
    pub incoming: bool,
    /// An extra VNC display on TCP, for viewers that connect straight to QEMU. QEMU 7.2 takes
    /// a display number, so the port must be 5900 or above.
    pub vnc_tcp: Option<SocketAddr>,
    /// `key-delay-ms` for the VNC displays (QEMU's default is 10 ms per key).
    pub key_delay_ms: Option<u32>,
    /// A second QMP monitor (`qmp2.sock`) for dmore's console, since the harness holds the
    /// first.
    pub extra_qmp: bool,
    /// The keyboard layout of QEMU's VNC server (`-k LAYOUT`, a file in QEMU's keymaps).
    pub keymap: Option<String>,
    /// A serial console on `serial-console.sock`, `-chardev socket,...,server=on,wait=off`,
    /// that dmore's serial lane attaches to: the tiny guest's COM2; the Linux guest's COM1
    /// (`ttyS0`) when it serves one ([`LinuxOptions::serial`], its reports then on COM2).
    pub serial_console: bool,
    /// Extra arguments appended to QEMU's command line.
    pub extra_args: Vec<OsString>,
    /// How long start-up may take before [`Qemu::launch`] gives up.
    pub start_timeout: Duration,
}

impl QemuConfig {
    /// Defaults: `qemu-system-x86_64`, 128 MiB, an idle guest, `Auto` accelerator, no
    /// namespace, not incoming, VNC on the unix socket only, one QMP monitor, 60 s start-up.
    pub fn new(runtime_dir: impl Into<PathBuf>) -> QemuConfig {
        QemuConfig {
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            memory_mib: 128,
            guest: GuestOptions::default(),
            linux: None,
            accel: AccelChoice::Auto,
            runtime_dir: runtime_dir.into(),
            netns: None,
            incoming: false,
            vnc_tcp: None,
            key_delay_ms: None,
            extra_qmp: false,
            keymap: None,
            serial_console: false,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(60),
        }
    }

    /// Defaults for the Linux test guest with `options`: as [`new`](Self::new), with
    /// [`LINUX_MEMORY_MIB`] of memory.
    pub fn linux(runtime_dir: impl Into<PathBuf>, options: LinuxOptions) -> QemuConfig {
        QemuConfig {
            memory_mib: LINUX_MEMORY_MIB,
            linux: Some(options),
            ..QemuConfig::new(runtime_dir)
        }
    }
}

/// Memory for the Linux test guest, MiB: room for the kernel, its ~6 MB initramfs unpacked,
/// and the framebuffer console.
pub const LINUX_MEMORY_MIB: u32 = 256;

/// The files of one QEMU in its runtime directory.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    serial: PathBuf,
    qmp: PathBuf,
    qmp2: Option<PathBuf>,
    serial_console: Option<PathBuf>,
    vnc: PathBuf,
    pidfile: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Paths {
    fn new(dir: &Path, qmp2: bool, serial_console: bool) -> Paths {
        Paths {
            serial: dir.join("serial.sock"),
            qmp: dir.join("qmp.sock"),
            qmp2: qmp2.then(|| dir.join("qmp2.sock")),
            serial_console: serial_console.then(|| dir.join("serial-console.sock")),
            vnc: dir.join("vnc.sock"),
            pidfile: dir.join("qemu.pid"),
            stdout: dir.join("qemu.stdout"),
            stderr: dir.join("qemu.stderr"),
        }
    }

    fn sockets(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.serial, &self.qmp, &self.vnc]
            .into_iter()
            .chain(self.qmp2.as_ref())
            .chain(self.serial_console.as_ref())
    }
}

/// Why QEMU could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The QEMU binary is not installed.
    #[error("QEMU binary `{binary}` not found: install the Debian package `{QEMU_PACKAGE}` (apt-get install {QEMU_PACKAGE})")]
    QemuMissing {
        /// The binary that was looked for.
        binary: String,
    },
    /// KVM was asked for but `/dev/kvm` does not open.
    #[error("KVM was asked for but /dev/kvm does not open for reading and writing")]
    KvmUnavailable,
    /// The runtime directory cannot be made.
    #[error("cannot create the runtime directory {path}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket path is longer than a unix socket address takes.
    #[error("socket path {0} is longer than 107 bytes: use a shorter runtime directory")]
    PathTooLong(PathBuf),
    /// Spawning failed (not for a missing QEMU, see `QemuMissing`).
    #[error("cannot start {program}")]
    Spawn {
        /// What was spawned.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU 7.2 puts a TCP VNC display at port 5900 + display number only.
    #[error("VNC on TCP needs a port of 5900 or above (QEMU takes a display number), not {0}")]
    VncPort(u16),
    /// QEMU exited during start-up.
    #[error("QEMU exited during start-up ({status}); its stderr:\n{stderr}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr (the last 8 KiB).
        stderr: String,
    },
    /// Start-up took too long.
    #[error("QEMU did not {what} within {timeout:?}; its stderr:\n{stderr}")]
    Timeout {
        /// The step that did not finish.
        what: &'static str,
        /// The limit.
        timeout: Duration,
        /// What QEMU printed on stderr so far.
        stderr: String,
    },
    /// The Linux guest's boot files cannot be made.
    #[error("cannot make the Linux guest's boot files")]
    LinuxImage(#[from] linux_guest::image::ImageError),
    /// QMP failed during start-up.
    #[error("QMP failed during start-up")]
    Qmp(#[from] qmp::Error),
    /// QEMU runs on another accelerator than the one asked for.
    #[error("QEMU was to run on {wanted} but query-kvm says KVM enabled = {kvm_enabled}")]
    AccelMismatch {
        /// The accelerator asked for.
        wanted: Accel,
        /// What `query-kvm` answered.
        kvm_enabled: bool,
    },
}

/// Why a clean shutdown did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// Waiting for QEMU failed.
    #[error("waiting for QEMU to exit failed")]
    Wait(#[source] std::io::Error),
}

/// A running QEMU with the test guest. Killed on drop.
#[derive(Debug)]
pub struct Qemu {
    child: Option<Child>,
    accel: Accel,
    paths: Paths,
    qmp: qmp::Connection,
    events: Option<qmp::Events>,
    serial: Serial,
}

impl Qemu {
    /// Starts QEMU and connects to its serial port and QMP monitor. Returns before the guest
    /// is up: see [`wait_ready`](Self::wait_ready).
    pub async fn launch(cfg: QemuConfig) -> Result<Qemu, LaunchError> {
        let binary = resolve_binary(&cfg.qemu_binary)?;
        if let Some(port) = cfg.vnc_tcp.map(|a| a.port()).filter(|p| *p < 5900) {
            return Err(LaunchError::VncPort(port));
        }
        let accel = match cfg.accel {
            AccelChoice::Auto if kvm_usable() && cfg.linux.is_none() => Accel::Kvm,
            AccelChoice::Auto | AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm if kvm_usable() => Accel::Kvm,
            AccelChoice::Kvm => return Err(LaunchError::KvmUnavailable),
        };
        std::fs::create_dir_all(&cfg.runtime_dir).map_err(|source| LaunchError::RuntimeDir {
            path: cfg.runtime_dir.clone(),
            source,
        })?;
        let paths = Paths::new(&cfg.runtime_dir, cfg.extra_qmp, cfg.serial_console);
        for socket in paths.sockets() {
            if socket.as_os_str().len() > 107 {
                return Err(LaunchError::PathTooLong(socket.clone()));
            }
            let _ = std::fs::remove_file(socket);
        }
        let boot = match &cfg.linux {
            None => args::Boot::Tiny(guest::kernel_path()),
            Some(options) => {
                let shell = options.serial == linux_guest::launch::SerialConsole::Shell;
                let image = linux_guest::image::Image::build(&cfg.runtime_dir, shell)?;
                args::Boot::Linux(options.qemu_args(&image))
            }
        };
        let qemu_args = args::qemu_args(&cfg, accel, &paths, &boot);
        let mut cmd = match &cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        cmd.args(&qemu_args).stdin(Stdio::null());
        let open = |p: &Path| {
            std::fs::File::create(p).map_err(|source| LaunchError::RuntimeDir {
                path: p.to_owned(),
                source,
            })
        };
        cmd.stdout(open(&paths.stdout)?)
            .stderr(open(&paths.stderr)?);
        tracing::debug!(?cmd, %accel, "starting QEMU");
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = spawn::spawn(cmd)
            .await
            .map_err(|source| LaunchError::Spawn { program, source })?;
        let _ = std::fs::write(&paths.pidfile, format!("{}\n", child.id()));
        let mut starting = Starting {
            child: Some(child),
            paths: paths.clone(),
            deadline: Instant::now() + cfg.start_timeout,
            timeout: cfg.start_timeout,
        };
        let stream = starting.connect_serial().await?;
        let serial = Serial::start(stream, cfg.linux.is_some());
        let (qmp, events) = starting.connect_qmp().await?;
        let kvm = qmp.client().execute("query-kvm", Value::Null).await?;
        let kvm_enabled = kvm.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        if kvm_enabled != (accel == Accel::Kvm) {
            return Err(LaunchError::AccelMismatch {
                wanted: accel,
                kvm_enabled,
            });
        }
        Ok(Qemu {
            child: starting.child.take(),
            accel,
            paths,
            qmp,
            events: Some(events),
            serial,
        })
    }

    /// The accelerator QEMU runs on (checked with `query-kvm` at launch).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id (also in `qemu.pid`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The harness's QMP client (on [`qmp_path`](Self::qmp_path), which serves one client).
    pub fn qmp(&self) -> &qmp::Client {
        self.qmp.client()
    }

    /// The QMP events of the harness's monitor; `None` once taken.
    pub fn take_events(&mut self) -> Option<qmp::Events> {
        self.events.take()
    }

    /// The harness's QMP socket (already connected: see [`qmp`](Self::qmp)).
    pub fn qmp_path(&self) -> &Path {
        &self.paths.qmp
    }

    /// The second QMP socket, free for dmore's console, if configured.
    pub fn qmp2_path(&self) -> Option<&Path> {
        self.paths.qmp2.as_deref()
    }

    /// The serial console's chardev socket ([`QemuConfig::serial_console`]), if configured.
    pub fn serial_console_path(&self) -> Option<&Path> {
        self.paths.serial_console.as_deref()
    }

    /// QEMU's VNC server on a unix socket.
    pub fn vnc_path(&self) -> &Path {
        &self.paths.vnc
    }

    /// The guest's serial port, parsed.
    pub fn serial(&mut self) -> &mut Serial {
        &mut self.serial
    }

    /// Waits until the guest prints `READY` (interrupts on, devices programmed).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), SerialError> {
        self.serial.wait_ready(timeout).await
    }

    /// QEMU's exit status if it has exited (a guest that panics under `-no-reboot` ends it),
    /// without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// What QEMU printed on stderr so far (the last 8 KiB).
    pub fn stderr(&self) -> String {
        read_tail(&self.paths.stderr)
    }

    /// Asks QEMU to `quit`, waits up to `grace` for it to exit, then kills it. Returns its
    /// exit status.
    pub async fn shutdown(mut self, grace: Duration) -> Result<ExitStatus, ShutdownError> {
        let _ = tokio::time::timeout(grace, self.qmp.client().quit()).await;
        let deadline = Instant::now() + grace;
        let status = loop {
            let Some(child) = self.child.as_mut() else {
                return Err(ShutdownError::Wait(std::io::Error::other("no child")));
            };
            match child.try_wait().map_err(ShutdownError::Wait)? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    tracing::warn!("QEMU did not quit within {grace:?}; killing it");
                    let _ = child.kill();
                    break child.wait().map_err(ShutdownError::Wait)?;
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        self.child = None;
        let _ = std::fs::remove_file(&self.paths.pidfile);
        Ok(status)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.paths.pidfile);
        }
    }
}

/// A QEMU being started: killed if start-up fails.
struct Starting {
    child: Option<Child>,
    paths: Paths,
    deadline: Instant,
    timeout: Duration,
}

impl Starting {
    /// Fails if QEMU exited or the deadline passed.
    fn check(&mut self, what: &'static str) -> Result<(), LaunchError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(LaunchError::Exited {
                    status,
                    stderr: read_tail(&self.paths.stderr),
                });
            }
        }
        if Instant::now() >= self.deadline {
            return Err(LaunchError::Timeout {
                what,
                timeout: self.timeout,
                stderr: read_tail(&self.paths.stderr),
            });
        }
        Ok(())
    }

    async fn connect_serial(&mut self) -> Result<UnixStream, LaunchError> {
        loop {
            self.check("open its serial socket")?;
            if let Ok(stream) = UnixStream::connect(&self.paths.serial).await {
                return Ok(stream);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connect_qmp(&mut self) -> Result<(qmp::Connection, qmp::Events), LaunchError> {
        loop {
            self.check("answer on its QMP socket")?;
            if self.paths.qmp.exists() {
                let left = self.deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, qmp::Connection::connect(&self.paths.qmp)).await {
                    Ok(Ok(conn)) => return Ok(conn),
                    Ok(Err(e)) => tracing::debug!(%e, "QMP not ready yet"),
                    Err(_) => continue,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.paths.pidfile);
        }
    }
}

/// `binary` as a path QEMU can be run from: as given if it has a `/`, else found in `PATH`.
fn resolve_binary(binary: &Path) -> Result<PathBuf, LaunchError> {
    let missing = || LaunchError::QemuMissing {
        binary: binary.display().to_string(),
    };
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if binary.as_os_str().as_encoded_bytes().contains(&b'/') {
        return executable(binary)
            .then(|| binary.to_owned())
            .ok_or_else(missing);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| executable(p))
        .ok_or_else(missing)
}

/// The last 8 KiB of a log file, lossily decoded.
fn read_tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = bytes.len().saturating_sub(8192);
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}
