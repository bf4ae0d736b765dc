//! A private libvirtd for tests: Debian's libvirt 9.0, as root, with its own configuration,
//! state, run, log and socket directories under one directory, stopped on drop.
//!
//! libvirt 9.0 has no per-driver daemons and reads its QEMU driver's files from fixed paths
//! (`/etc/libvirt`, `/run/libvirt`, `/var/{lib,log,cache}/libvirt`), so the daemon runs in a
//! mount namespace of its own (`unshare --mount`) with a directory bound over each; clients
//! reach it through `unix_sock_dir`, outside the binds. `.ci/setup` installs the packages, the
//! `libvirt-qemu` user the daemon looks up even when `qemu.conf` says root, and the mount
//! points. QEMU runs as root (group `libvirt-qemu`) with no security driver, no relabelling
//! and no cgroups.
//!
//! On a test host ([`Libvirtd::start_on`]) the daemon runs inside the host's network namespace
//! with its own hostname (`unshare --uts`) and host UUID, and listens for other libvirtds on
//! the host's address (`libvirtd --listen`, `listen_tcp`, `auth_tcp = "none"`), with the
//! host's address as `migration_host`: two such daemons migrate domains between each other
//! (`virsh migrate --live --p2p DOMAIN` [`Libvirtd::uri`] of the other). A shell that is a
//! child subreaper sits above the daemon and reaps QEMU when it exits: PID 1 on these machines
//! reaps orphans ~1.2 s late, and libvirt waits for a killed QEMU to be gone (DESIGN.md: without
//! it `virsh migrate` took 1.2–2 s longer and the daemon 16 s to start). Measured here: each of
//! two such daemons answered after 1.6–2.2 s, against ~9 s for one from [`Libvirtd::start`].

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::hosts::Host;

/// Why libvirtd did not start.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtdError {
    /// A file or directory of its private tree.
    #[error("preparing {path}: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `unshare` could not be run.
    #[error("starting libvirtd under unshare: {0}")]
    Spawn(std::io::Error),
    /// The daemon exited before it answered.
    #[error("libvirtd exited ({status}) before answering; its log:\n{log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its output.
        log: String,
    },
    /// The daemon did not answer `virsh version` within the limit.
    #[error("libvirtd did not answer within {0:?} (is .ci/setup run? `virsh` missing?)")]
    NoAnswer(Duration),
}

/// A running private libvirtd (and its virtlogd); both stopped on drop.
pub struct Libvirtd {
    child: Child,
    root: PathBuf,
    /// The host's address, when it runs on a test host.
    ip: Option<Ipv4Addr>,
    /// How long it took to answer `virsh version`.
    pub started_in: Duration,
}

/// Its directories under the root: (name under the root, path bound over in the namespace).
const BINDS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

impl Libvirtd {
    /// Starts a libvirtd whose files all live under `root` (which must exist) and waits until it
    /// answers (about 9 s here, most of it probing QEMU's capabilities).
    pub fn start(root: &Path) -> Result<Self, LibvirtdError> {
        Self::launch(root, None, &[])
    }

    /// Starts a libvirtd on test host `host` (see the module doc) whose files all live under
    /// `root`, with each `(from, to)` of `binds` bound over `to` for it, its hooks and its
    /// QEMUs (a host's own directory where every host names the same path, as a domain's
    /// directory in its XML).
    pub fn start_on(
        root: &Path,
        host: &Host,
        binds: &[(PathBuf, PathBuf)],
    ) -> Result<Self, LibvirtdError> {
        Self::launch(root, Some(host), binds)
    }

    fn launch(
        root: &Path,
        host: Option<&Host>,
        binds: &[(PathBuf, PathBuf)],
    ) -> Result<Self, LibvirtdError> {
        for d in ["etc/hooks", "run", "lib", "log/qemu", "cache", "sock"] {
            let p = root.join(d);
            at(&p, std::fs::create_dir_all(&p))?;
        }
        let conf = root.join("etc/libvirtd.conf");
        let mut text = format!(
            "unix_sock_dir = \"{}\"\nunix_sock_rw_perms = \"0700\"\n\
             auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
            root.join("sock").display()
        );
        // QEMU's group is `libvirt-qemu`: its sockets (libvirt starts it with umask 002) are
        // then open to a console running as that user. No relabelling: files stay as they are.
        let mut qemu_conf_text = "user = \"root\"\ngroup = \"libvirt-qemu\"\n\
                    dynamic_ownership = 0\nsecurity_driver = \"none\"\n\
                    cgroup_controllers = [ ]\n"
            .to_owned();
        if let Some(host) = host {
            let ip = host.ip();
            let [.., last] = ip.octets();
            text.push_str(&format!(
                "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = \"{ip}\"\n\
                 host_uuid = \"6d6f7265-0000-4000-8000-0000000000{last:02x}\"\n"
            ));
            qemu_conf_text.push_str(&format!(
                "migration_host = \"{ip}\"\nmigration_address = \"{ip}\"\n"
            ));
        }
        at(&conf, std::fs::write(&conf, text))?;
        let qemu_conf = root.join("etc/qemu.conf");
        at(&qemu_conf, std::fs::write(&qemu_conf, qemu_conf_text))?;
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let mut mounts: String = BINDS
            .iter()
            .map(|(from, to)| format!("mount --bind {} {to} && ", quote(&root.join(from))))
            .collect();
        for (from, to) in binds {
            mounts.push_str(&format!("mount --bind {} {} && ", quote(from), quote(to)));
        }
        let log_path = root.join("libvirtd.log");
        let open = || -> std::io::Result<_> {
            let out = std::fs::File::create(&log_path)?;
            let err = out.try_clone()?;
            Ok((out, err))
        };
        let (out, err) = at(&log_path, open())?;
        let daemon = "libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid";
        let (mut cmd, script) = match host {
            None => (
                Command::new("unshare"),
                format!("{mounts}virtlogd -d -p /run/libvirt/virtlogd.pid && exec {daemon}"),
            ),
            Some(host) => {
                let mut cmd = host.command("unshare");
                cmd.arg("--uts");
                // SAFETY: prctl is async-signal-safe; the child only sets its own attribute,
                // which survives `exec` (unshare and sh run in this process).
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                // sh waits for the daemon, reaping every orphan handed to it meanwhile, and
                // passes SIGTERM on.
                let script = format!(
                    "hostname dmt-libvirt-{name} && {mounts}\
                     virtlogd -d -p /run/libvirt/virtlogd.pid || exit 1\n\
                     {daemon} --listen & pid=$!\n\
                     trap 'kill -TERM $pid' TERM\n\
                     while kill -0 $pid 2>/dev/null; do wait; done\n",
                    name = host.name()
                );
                (cmd, script)
            }
        };
        let child = cmd
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(LibvirtdError::Spawn)?;
        let mut daemon = Libvirtd {
            child,
            root: root.to_owned(),
            ip: host.map(Host::ip),
            started_in: Duration::ZERO,
        };
        let start = Instant::now();
        let limit = Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(LibvirtdError::Exited {
                    status,
                    log: std::fs::read_to_string(&log_path).unwrap_or_default(),
                });
            }
            if daemon.virsh(&["version"]).is_ok_and(|o| o.status.success()) {
                daemon.started_in = start.elapsed();
                return Ok(daemon);
            }
            if start.elapsed() > limit {
                return Err(LibvirtdError::NoAnswer(limit));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The URI another libvirtd migrates to this one with (`qemu+tcp://IP/system`), when it
    /// runs on a test host.
    pub fn uri(&self) -> Option<String> {
        self.ip.map(|ip| format!("qemu+tcp://{ip}/system"))
    }

    /// The daemon's read-write socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("sock/libvirt-sock")
    }

    /// libvirt's hooks directory (`/etc/libvirt/hooks` inside the daemon's namespace).
    pub fn hooks_dir(&self) -> PathBuf {
        self.root.join("etc/hooks")
    }

    /// The daemon's own output (its stdout and stderr).
    pub fn log(&self) -> PathBuf {
        self.root.join("libvirtd.log")
    }

    /// A QEMU domain's log (`/var/log/libvirt/qemu/NAME.log` inside).
    pub fn domain_log(&self, name: &str) -> PathBuf {
        self.root.join("log/qemu").join(format!("{name}.log"))
    }

    /// Runs `virsh` against this daemon.
    pub fn virsh(&self, args: &[&str]) -> std::io::Result<Output> {
        Self::client(&self.socket(), args)
    }

    /// Runs `virsh` against the daemon on `socket` (one that may be gone).
    pub fn client(socket: &Path, args: &[&str]) -> std::io::Result<Output> {
        Command::new("virsh")
            .arg("-c")
            .arg(format!("qemu:///system?socket={}", socket.display()))
            .args(args)
            .output()
    }
}

fn at<T>(path: &Path, r: std::io::Result<T>) -> Result<T, LibvirtdError> {
    r.map_err(|source| LibvirtdError::Prepare {
        path: path.to_owned(),
        source,
    })
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // libvirtd kills the QEMUs it started when it stops only if told to; destroy them first.
        if let Ok(out) = self.virsh(&["list", "--name"]) {
            for name in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
            {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        // SIGTERM: it closes its sockets and exits; SIGKILL if it has not within 10 s.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid_file = self.root.join("run/virtlogd.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}
