//! A private libvirtd for tests: Debian's libvirt 9.0, as root, with its own configuration,
//! state, run, log and socket directories under one directory, stopped on drop.
//!
//! libvirt 9.0 has no per-driver daemons and reads its QEMU driver's files from fixed paths
//! (`/etc/libvirt`, `/run/libvirt`, `/var/{lib,log,cache}/libvirt`), so the daemon runs in a
//! mount namespace of its own (`unshare --mount`) with a directory bound over each; clients
//! reach it through `unix_sock_dir`, outside the binds. `.ci/setup` installs the packages, the
//! `libvirt-qemu` user the daemon looks up even when `qemu.conf` says root, and the mount
//! points. QEMU runs as root with no security driver and no cgroups.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
        for d in ["etc/hooks", "run", "lib", "log/qemu", "cache", "sock"] {
            let p = root.join(d);
            at(&p, std::fs::create_dir_all(&p))?;
        }
        let conf = root.join("etc/libvirtd.conf");
        let text = format!(
            "unix_sock_dir = \"{}\"\nunix_sock_rw_perms = \"0700\"\n\
             auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
            root.join("sock").display()
        );
        at(&conf, std::fs::write(&conf, text))?;
        let qemu_conf = root.join("etc/qemu.conf");
        let text = "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\n\
                    cgroup_controllers = [ ]\n";
        at(&qemu_conf, std::fs::write(&qemu_conf, text))?;
        let binds: String = BINDS
            .iter()
            .map(|(from, to)| format!("mount --bind '{}/{from}' {to} && ", root.display()))
            .collect();
        let log_path = root.join("libvirtd.log");
        let open = || -> std::io::Result<_> {
            let out = std::fs::File::create(&log_path)?;
            let err = out.try_clone()?;
            Ok((out, err))
        };
        let (out, err) = at(&log_path, open())?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "{binds}virtlogd -d -p /run/libvirt/virtlogd.pid && \
                 exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(LibvirtdError::Spawn)?;
        let mut daemon = Libvirtd {
            child,
            root: root.to_owned(),
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

    /// The daemon's read-write socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("sock/libvirt-sock")
    }

    /// libvirt's hooks directory (`/etc/libvirt/hooks` inside the daemon's namespace).
    pub fn hooks_dir(&self) -> PathBuf {
        self.root.join("etc/hooks")
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
