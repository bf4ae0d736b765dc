//! libvirt's QEMU hook for dmore: which action each libvirt call means (pure), the console's
//! command line (pure), and carrying the action out.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu.d/*` as `HOOK DOMAIN OPERATION SUB-OPERATION EXTRA`
//! with the domain's XML on stdin, synchronously, inside libvirtd: a hook must return fast and
//! must never call libvirt's API (it deadlocks). On the destination of a migration the calls
//! come as `migrate begin`, `prepare begin`, `start begin`, `started begin`, all before the
//! switchover; on the source, `stopped end` and `release end` once its QEMU is gone.
//!
//! ```text
//!   migrate begin   -> mark the domain as incoming (its console waits for the source's session)
//!   prepare begin   -> make the domain's directory (QEMU creates its sockets there)
//!   started begin   -> start the console, detached (QEMU's sockets exist from here on); if
//!                      incoming, announce the migration to the console serving the VM and
//!                      wait for its answer (`crate::announce`): the source QEMU has not
//!                      started migrating yet
//!   reconnect begin -> the same, if it is not running (libvirtd restarted)
//!   release end     -> stop the console, forget the incoming mark
//! ```
//! The console is started at `started`, not `prepare`/`start`: it attaches to QEMU's VNC and
//! QMP sockets once, as it starts, and QEMU creates them only when it is launched (between
//! `start` and `started`). A domain not patched for dmore ([`crate::read_patched`]) or absent
//! from the hook's configuration is left alone. The hook writes nothing on stdout: libvirt
//! takes a `migrate` hook's output as a replacement XML.

use crate::patch::{DomainDir, Patched};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the hook reads its configuration unless told otherwise.
pub const CONFIG: &str = "/etc/dmore/libvirt.json";
/// The console's process id, in the domain's directory.
pub const PID_FILE: &str = "console.pid";
/// The console's stdout and stderr, in the domain's directory.
pub const LOG_FILE: &str = "console.log";
/// The console's control socket, in the domain's directory.
pub const CONTROL_SOCKET: &str = "console.ctl";
/// File name of the console's `--serial-attach` socket in a domain's directory (`dmore serial
/// attach DIR/serial-attach.sock`), when the domain's serial port is dmore's.
pub const SERIAL_ATTACH: &str = "serial-attach.sock";
/// What a console started by the hook logs to [`LOG_FILE`] (its `RUST_LOG`), unless the hook
/// itself was given a `RUST_LOG`.
pub const CONSOLE_LOG_LEVEL: &str = "info";
/// What the hook did, a line per step with the libvirt call it answered, appended in the
/// domain's directory (libvirt does not keep a hook's stderr): whether each migration was
/// announced, and why not.
pub const HOOK_LOG: &str = "hook.log";
/// Present while the domain is arriving by migration, in the domain's directory.
pub const INCOMING_MARK: &str = "incoming";

/// What the hook does for one libvirt call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (most calls).
    Nothing,
    /// Remember that the domain arrives by migration.
    MarkIncoming,
    /// Create the domain's directory.
    MakeDir,
    /// Start the domain's console unless it runs.
    StartConsole,
    /// Stop the domain's console and forget the incoming mark.
    StopConsole,
}

/// The action for libvirt's `OPERATION SUB-OPERATION` (see the module doc).
pub fn decide(operation: &str, sub_operation: &str) -> Action {
    match (operation, sub_operation) {
        ("migrate", "begin") => Action::MarkIncoming,
        ("prepare", "begin") => Action::MakeDir,
        ("started", "begin") | ("reconnect", "begin") => Action::StartConsole,
        ("release", "end") => Action::StopConsole,
        _ => Action::Nothing,
    }
}

/// The hook's configuration (JSON, [`CONFIG`]).
///
/// ```json
/// { "user": "dmore", "peer_key_file": "/etc/dmore/peer.key",
///   "domains": { "vm1": { "listen": "10.0.0.50:5900", "password_file": "/etc/dmore/vm1.pw",
///                         "incoming": "10.0.0.2:4700",
///                         "peers": ["10.0.0.2:4700", "10.0.0.3:4700"] } } }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The dmore executable the console runs from; default: the hook's own.
    #[serde(default)]
    pub dmore: Option<PathBuf>,
    /// Run consoles as this user (with its groups, through `setpriv`); default: as libvirtd's
    /// user (root), and the console drops every capability it does not need.
    #[serde(default)]
    pub user: Option<String>,
    /// Group owning each domain's directory (mode 0770), e.g. the group QEMU runs as; default:
    /// the directory is root's, mode 0755.
    #[serde(default)]
    pub dir_group: Option<String>,
    /// The key both consoles of a migration share (`dmore console --peer-key-file`).
    #[serde(default)]
    pub peer_key_file: Option<PathBuf>,
    /// Domains whose consoles the hook runs, by name.
    #[serde(default)]
    pub domains: BTreeMap<String, DomainConfig>,
}

/// One domain's console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// Address viewers connect to.
    pub listen: SocketAddr,
    /// The viewers' full-access password file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The view-only password file.
    #[serde(default)]
    pub view_only_password_file: Option<PathBuf>,
    /// Admit viewers with no password (a gateway in front, a private network).
    #[serde(default)]
    pub insecure_no_auth: bool,
    /// `listen` is a service address on this interface that moves with the VM.
    #[serde(default)]
    pub service_interface: Option<String>,
    /// Where this host's console waits for the source console's session when the domain
    /// arrives by migration.
    #[serde(default)]
    pub incoming: Option<SocketAddr>,
    /// Where this domain's console waits (`incoming`) on each host it may migrate to; this
    /// host's own `incoming` may be listed too (left out), so one list serves every host.
    /// The source console tries them in turn when libvirt migrates the domain.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
}

/// Why the hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The configuration file could not be read.
    #[error("reading the hook configuration {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is not valid.
    #[error("the hook configuration {path} is not valid: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The domain XML on stdin.
    #[error(transparent)]
    Xml(#[from] crate::PatchError),
    /// The XML names another domain than libvirt's first argument.
    #[error("libvirt called the hook for domain {object:?} with the XML of {xml:?}")]
    WrongDomain {
        /// libvirt's first argument.
        object: String,
        /// The XML's `<name>`.
        xml: String,
    },
    /// A user or group name that does not exist.
    #[error("no such {kind} {name:?} (hook configuration)")]
    NoSuch {
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A file operation.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl HookConfig {
    /// Reads the configuration file.
    pub fn load(path: &Path) -> Result<Self, HookError> {
        let text = std::fs::read(path).map_err(|source| HookError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| HookError::Config {
            path: path.to_owned(),
            source,
        })
    }
}

/// The user a console runs as (`HookConfig::user` resolved, with its primary group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl RunAs {
    /// Looks up user `name`.
    pub fn lookup(name: &str) -> Result<Self, HookError> {
        let user = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| HookError::NoSuch {
                kind: "user",
                name: name.to_owned(),
            })?;
        Ok(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// The command line that starts a domain's console: program first, then its arguments.
pub fn console_command(
    config: &HookConfig,
    domain: &DomainConfig,
    patched: &Patched,
    dmore: &Path,
    run_as: Option<RunAs>,
    incoming: bool,
) -> Vec<OsString> {
    let dir = &patched.dir;
    let mut cmd: Vec<OsString> = Vec::new();
    if let Some(RunAs { uid, gid }) = run_as {
        cmd.extend(
            [
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--init-groups".to_owned(),
            ]
            .map(OsString::from),
        );
        if domain.service_interface.is_some() {
            // Moving viewer connections needs these two, and the console keeps only them.
            cmd.push("--inh-caps=+net_admin,+net_raw".into());
            cmd.push("--ambient-caps=+net_admin,+net_raw".into());
        }
        cmd.push("--".into());
    }
    cmd.push(dmore.into());
    cmd.push("console".into());
    let mut arg = |flag: &str, value: &dyn AsRef<std::ffi::OsStr>| {
        cmd.push(flag.into());
        cmd.push(value.as_ref().to_owned());
    };
    arg("--vnc-socket", &dir.vnc_socket());
    arg("--qmp-socket", &dir.qmp_socket());
    if let Some(keymap) = &patched.keymap {
        arg("--keymap", keymap);
    }
    if let Some(serial) = &patched.serial_socket {
        arg("--serial-socket", serial);
        arg("--serial-attach", &dir.path().join(SERIAL_ATTACH));
    }
    arg("--listen", &domain.listen.to_string());
    arg("--name", &patched.name);
    arg("--control", &dir.path().join(CONTROL_SOCKET));
    if let Some(f) = &domain.password_file {
        arg("--password-file", f);
    }
    if let Some(f) = &domain.view_only_password_file {
        arg("--view-only-password-file", f);
    }
    if let Some(key) = &config.peer_key_file {
        arg("--peer-key-file", key);
        if let Some(iface) = &domain.service_interface {
            arg("--service-interface", iface);
        }
        if let Some(addr) = domain.incoming {
            // Arriving, it waits there for the source's session; serving, it hears this
            // VM's next destination announce the migration there (an arrived console too).
            let flag = if incoming {
                "--incoming"
            } else {
                "--announce-listen"
            };
            arg(flag, &addr.to_string());
        }
        for peer in domain.peers.iter().filter(|p| Some(**p) != domain.incoming) {
            arg("--peer", &peer.to_string());
        }
    }
    if domain.insecure_no_auth {
        cmd.push("--insecure-no-auth".into());
    }
    cmd
}

/// What carrying out an action did or would do, one line per step (for logs and `--dry-run`).
pub type Report = Vec<String>;

/// How the hook acts on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Really: make directories, spawn and signal consoles.
    Act,
    /// Only say what it would do.
    DryRun,
}

/// One libvirt call: `DOMAIN OPERATION SUB-OPERATION` and the domain's XML.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// libvirt's first argument, the domain's name.
    pub object: &'a str,
    /// `prepare`, `started`, `release`, …
    pub operation: &'a str,
    /// `begin`, `end`, …
    pub sub_operation: &'a str,
    /// The domain's XML (stdin).
    pub xml: &'a str,
}

/// Handles one libvirt call; returns what it did.
pub fn run(
    config: &HookConfig,
    call: &Call,
    dmore: &Path,
    mode: Mode,
) -> Result<Report, HookError> {
    let action = decide(call.operation, call.sub_operation);
    let mut report = Report::new();
    if action == Action::Nothing {
        return Ok(report);
    }
    let Some(patched) = crate::read_patched(call.xml)? else {
        report.push(format!(
            "domain {} is not patched for dmore: nothing to do",
            call.object
        ));
        return Ok(report);
    };
    if patched.name != call.object {
        return Err(HookError::WrongDomain {
            object: call.object.to_owned(),
            xml: patched.name,
        });
    }
    let Some(domain) = config.domains.get(&patched.name) else {
        report.push(format!(
            "domain {} has no entry in the hook configuration: nothing to do",
            patched.name
        ));
        return Ok(report);
    };
    let dir = patched.dir.path();
    let mark = dir.join(INCOMING_MARK);
    let pid_file = dir.join(PID_FILE);
    let act = mode == Mode::Act;
    match action {
        Action::Nothing => {}
        Action::MakeDir => {
            report.push(format!("make directory {}", dir.display()));
            if act {
                make_dir(dir, config.dir_group.as_deref())?;
            }
        }
        Action::MarkIncoming => {
            report.push(format!("mark incoming {}", mark.display()));
            if act {
                make_dir(dir, config.dir_group.as_deref())?;
                std::fs::write(&mark, b"").map_err(io("writing", &mark))?;
            }
        }
        Action::StartConsole => {
            if let Some(pid) = running_console(&pid_file, &patched.dir) {
                report.push(format!("console already running: pid {pid}"));
                return Ok(report);
            }
            let dmore = config.dmore.as_deref().unwrap_or(dmore);
            let run_as = config.user.as_deref().map(RunAs::lookup).transpose()?;
            let arriving = mark.exists();
            let cmd = console_command(config, domain, &patched, dmore, run_as, arriving);
            report.push(format!("start console: {}", shell_words(&cmd)));
            if act {
                // Also when `prepare` found no configuration yet (it was added since).
                make_dir(dir, config.dir_group.as_deref())?;
                if let Some(pid) = spawn_detached(&cmd, &dir.join(LOG_FILE))? {
                    std::fs::write(&pid_file, format!("{pid}\n"))
                        .map_err(io("writing", &pid_file))?;
                    report.push(format!("console pid {pid}"));
                }
            }
            if arriving && call.operation == "started" {
                announce_migration(config, domain, &patched.name, mode, &mut report);
            }
        }
        Action::StopConsole => {
            match running_console(&pid_file, &patched.dir) {
                Some(pid) => {
                    report.push(format!("stop console pid {pid}"));
                    if act {
                        // Gone already is as good as stopped.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                }
                None => report.push("no console running".to_owned()),
            }
            if act {
                for f in [&pid_file, &mark] {
                    match std::fs::remove_file(f) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io("removing", f)(e))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    if act && dir.is_dir() {
        append_log(&dir.join(HOOK_LOG), call, &report);
    }
    Ok(report)
}

/// Appends `report` to the hook's log; a log that cannot be written is no reason to fail
/// libvirt's call (the lines still go to stderr).
fn append_log(path: &Path, call: &Call, report: &Report) {
    use std::io::Write as _;
    let Ok(mut file) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    else {
        return;
    };
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    for line in report {
        let _ = writeln!(
            file,
            "{at:.6} {} {} {}: {line}",
            call.object, call.operation, call.sub_operation
        );
    }
}

/// Tells the console serving the domain on another host that it migrates here
/// ([`crate::announce`]) and waits for its answer. Never fails the hook: without the
/// announcement the source console learns of the migration from QEMU, as before.
fn announce_migration(
    config: &HookConfig,
    domain: &DomainConfig,
    vm_id: &str,
    mode: Mode,
    report: &mut Report,
) {
    let peers: Vec<SocketAddr> = domain
        .peers
        .iter()
        .copied()
        .filter(|p| Some(*p) != domain.incoming)
        .collect();
    let Some(key_file) = config
        .peer_key_file
        .as_deref()
        .filter(|_| !peers.is_empty())
    else {
        return;
    };
    report.push(format!(
        "announce the migration to the console serving {vm_id} at one of {peers:?}"
    ));
    if mode == Mode::DryRun {
        return;
    }
    let key = match std::fs::read(key_file) {
        Ok(text) => text
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default()
            .to_vec(),
        Err(e) => {
            report.push(format!(
                "not announced: reading {}: {e}",
                key_file.display()
            ));
            return;
        }
    };
    match crate::announce::announce(&peers, &key, vm_id, crate::announce::ANNOUNCE_WAIT) {
        Ok(a) => report.push(format!(
            "announced: the console at {} closed its fast lane in {:?}",
            a.console, a.took
        )),
        Err(failed) => report.push(format!(
            "not announced (the source console will learn of the migration from QEMU): {}",
            failed
                .iter()
                .map(|(peer, why)| format!("{peer}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HookError {
    let path = path.to_owned();
    move |source| HookError::Io { what, path, source }
}

/// The pid in `pid_file` if that process is a console of this domain (its command line names
/// the domain's QMP socket), so a recycled pid is never signalled.
fn running_console(pid_file: &Path, dir: &DomainDir) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let qmp = dir.qmp_socket();
    let qmp = qmp.as_os_str().as_encoded_bytes();
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == qmp)
        && cmdline.split(|b| *b == 0).any(|arg| arg == b"console");
    ours.then_some(pid)
}

fn make_dir(dir: &Path, group: Option<&str>) -> Result<(), HookError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mode = match group {
        Some(name) => {
            let gid = nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| HookError::NoSuch {
                    kind: "group",
                    name: name.to_owned(),
                })?
                .gid;
            nix::unistd::chown(dir, None, Some(gid))
                .map_err(|e| io("changing the group of", dir)(e.into()))?;
            0o770
        }
        None => 0o755,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", dir))
}

/// Starts `cmd` in its own process group with stdin from /dev/null and output to `log`: libvirtd
/// reads the hook's output until it closes, so the console must not inherit it. `None`: an
/// empty command, nothing started.
fn spawn_detached(cmd: &[OsString], log: &Path) -> Result<Option<u32>, HookError> {
    use std::os::unix::process::CommandExt as _;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening", log))?;
    let err = out.try_clone().map_err(io("opening", log))?;
    let Some((program, args)) = cmd.split_first() else {
        return Ok(None);
    };
    let mut command = std::process::Command::new(program);
    if std::env::var_os("RUST_LOG").is_none() {
        // libvirtd runs hooks with a bare environment: the console's log says what it did at
        // each migration (a few lines each), not only its errors.
        command.env("RUST_LOG", CONSOLE_LOG_LEVEL);
    }
    let child = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(io("starting", Path::new(program)))?;
    Ok(Some(child.id()))
}

/// `cmd` as a shell would read it (for reports).
fn shell_words(cmd: &[OsString]) -> String {
    cmd.iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@".contains(c))
            {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The drop-in libvirt runs (`HOOKS_DIR/qemu.d/dmore`): one line that execs dmore's hook.
pub fn drop_in(dmore: &Path, config: &Path) -> String {
    let quote = |p: &Path| shell_words(&[p.as_os_str().to_owned()]);
    format!(
        "#!/bin/sh\n\
         # dmore's libvirt hook (written by `dmore libvirt install-hook`): starts and stops\n\
         # each patched domain's console; see `dmore libvirt hook --help`.\n\
         exec {} libvirt hook --config {} \"$@\"\n",
        quote(dmore),
        quote(config)
    )
}

/// Writes the drop-in into `HOOKS_DIR/qemu.d/dmore` (mode 0755); returns its path.
pub fn install(hooks_dir: &Path, dmore: &Path, config: &Path) -> Result<PathBuf, HookError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = hooks_dir.join("qemu.d");
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let path = dir.join("dmore");
    let tmp = dir.join(".dmore.tmp");
    std::fs::write(&tmp, drop_in(dmore, config)).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("writing", &path))?;
    Ok(path)
}
