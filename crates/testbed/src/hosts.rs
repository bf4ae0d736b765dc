//! Test hosts: network namespaces joined by a bridge, each with its own runtime directory.
//!
//! ```text
//!   netns dmt-<run>-a        netns dmt-<run>-b        netns dmt-<run>-client
//!   eth0 10.213.N.10/24      eth0 10.213.N.11/24      eth0 10.213.N.100/24
//!        |                        |                        |
//!   +----p-a------------------p-b-----------------------p-client----+
//!   |                         br0 (no address)                      |
//!   +------------------------ netns dmt-<run>-sw -------------------+
//! ```
//!
//! Nothing is added to the root namespace: the bridge lives in a "switch" namespace of its own
//! and every address exists only inside the run's namespaces, so parallel runs never see each
//! other's traffic (they may even share N). Each run owns `/tmp/dmore-testbed/<run>/`, holding
//! `owner.pid` (the owning process's pid and start time) and one runtime directory per host.
//!
//! Cleanup happens in three places:
//! - [`Testbed`]'s `Drop` kills what runs in the run's namespaces and QEMUs named by pidfiles
//!   in its directories, deletes the namespaces and removes the run directory;
//! - on SIGINT/SIGTERM a handler (installed on first use, only if the signal still has its
//!   default disposition) cleans every live testbed of the process, then dies of the signal;
//! - what a SIGKILLed run left behind is removed by [`crate::sweep::sweep`], which
//!   [`Testbed::create`] calls first. It never touches a run whose owner is alive.
//!
//! Without root, where namespaces cannot be made, or with `DMORE_TESTBED_MODE=loopback`, the
//! testbed falls back to [`Mode::Loopback`]: every host is 127.0.0.1 with its own runtime
//! directory, and services must use distinct ports ([`Host::free_port`]). The runs' root is
//! made sticky and world-writable (like `/tmp`) so root and unprivileged runs can share it.
//! With `DMORE_KEEP=DIR` ([`KEEP_ENV`]) a run's files are copied to `DIR/<run>/` first.

mod signals;

use std::fmt;
use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::netns;
pub use crate::netns::NetnsError;
use crate::runs::OwnerRecord;
pub use crate::runs::{NETNS_PREFIX, OWNER_FILE, RUNS_ROOT};

/// Environment variable that forces a mode: `loopback` or `namespaces`.
pub const MODE_ENV: &str = "DMORE_TESTBED_MODE";

/// Errors of creating, using and removing test hosts.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// A file system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Making, configuring or entering a host's network namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// `DMORE_TESTBED_MODE=namespaces` was asked for but namespaces cannot be made here.
    #[error("network namespaces were required ({MODE_ENV}=namespaces) but need root")]
    NamespacesUnavailable,
    /// A closure run inside a host panicked.
    #[error("a closure run inside host {0} panicked")]
    Panicked(String),
}

impl HostsError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        HostsError::Io {
            what: what.into(),
            source,
        }
    }
}

/// How the testbed's hosts are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each host is a network namespace on a private bridge (needs root).
    Namespaces,
    /// Every host is 127.0.0.1 in the caller's namespace; hosts differ by port and directory.
    Loopback,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Namespaces => "namespaces",
            Mode::Loopback => "loopback",
        })
    }
}

/// The three hosts of a testbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Migration source.
    A,
    /// Migration destination.
    B,
    /// Where viewers run.
    Client,
}

impl Role {
    /// All roles, in creation order.
    pub const ALL: [Role; 3] = [Role::A, Role::B, Role::Client];

    /// Short name, used in namespace and directory names.
    pub fn name(self) -> &'static str {
        match self {
            Role::A => "a",
            Role::B => "b",
            Role::Client => "client",
        }
    }

    fn host_octet(self) -> u8 {
        match self {
            Role::A => 10,
            Role::B => 11,
            Role::Client => 100,
        }
    }
}

/// One test host: a name, an address, a runtime directory and (in [`Mode::Namespaces`]) a
/// network namespace that commands and closures can be run in.
#[derive(Debug, Clone)]
pub struct Host {
    role: Role,
    ip: Ipv4Addr,
    dir: PathBuf,
    netns: Option<Arc<netns::Netns>>,
}

impl Host {
    /// The host's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The host's short name (`a`, `b`, `client`).
    pub fn name(&self) -> &'static str {
        self.role.name()
    }

    /// The host's address, reachable from the testbed's other hosts.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's own runtime directory (sockets, pidfiles, logs).
    pub fn runtime_dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace's name, or `None` in [`Mode::Loopback`].
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref().map(netns::Netns::name)
    }

    /// A command that runs inside the host: the child enters the host's network namespace
    /// before `exec`, so its pid is the program's own (killable, waitable).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some(ns) = &self.netns {
            netns::enter_in_child(&mut cmd, Arc::clone(ns));
        }
        cmd
    }

    /// Runs `f` on a fresh thread that has entered the host's network namespace and returns
    /// its result. Sockets made inside stay in that namespace wherever they are used later, so
    /// this is how to bind a listener or connect from a host without a child process.
    pub fn run<F, R>(&self, f: F) -> Result<R, HostsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.netns.clone();
        let handle = std::thread::Builder::new()
            .name(format!("host-{}", self.name()))
            .spawn(move || -> Result<R, HostsError> {
                if let Some(ns) = ns {
                    ns.enter_current_thread()?;
                }
                Ok(f())
            })
            .map_err(|e| HostsError::io("spawning a thread for a host", e))?;
        handle
            .join()
            .map_err(|_| HostsError::Panicked(self.name().to_string()))?
    }

    /// A launcher configuration for a QEMU named `vm` on this host: its runtime directory is
    /// `<host dir>/<vm>` (one QEMU per directory, so the sweeper finds its pidfile) and it
    /// runs in the host's namespace.
    pub fn qemu_config(&self, vm: &str) -> crate::qemu::QemuConfig {
        let mut cfg = crate::qemu::QemuConfig::new(self.dir.join(vm));
        cfg.netns = self.netns().map(str::to_string);
        cfg
    }

    /// A `tcp:IP:PORT` address for an incoming migration to this host: a port free here now,
    /// so it also works in loopback mode where hosts share 127.0.0.1.
    pub fn incoming_uri(&self) -> Result<String, HostsError> {
        Ok(format!("tcp:{}:{}", self.ip, self.free_port()?))
    }

    /// A TCP port free on this host's address right now. In [`Mode::Loopback`] hosts share one
    /// address, so every service needs a port of its own; this picks one from the kernel.
    pub fn free_port(&self) -> Result<u16, HostsError> {
        let ip = self.ip;
        self.run(move || -> io::Result<u16> {
            let l = TcpListener::bind((ip, 0))?;
            Ok(l.local_addr()?.port())
        })?
        .map_err(|e| HostsError::io(format!("finding a free port on {ip}"), e))
    }
}

/// A set of test hosts (A, B, client) for one test run; removes everything it made on drop.
#[derive(Debug)]
pub struct Testbed {
    run_id: String,
    mode: Mode,
    dir: PathBuf,
    subnet: u8,
    hosts: Vec<Host>,
    switch: Option<Arc<netns::Netns>>,
}

impl Testbed {
    /// Sweeps what dead runs left behind, then creates hosts A, B and client: in network
    /// namespaces when root and the kernel lets us, else on loopback. `DMORE_TESTBED_MODE`
    /// (`loopback` or `namespaces`) forces a mode; forced namespaces fail rather than fall back.
    pub fn create() -> Result<Self, HostsError> {
        let root = nix::unistd::geteuid().is_root();
        match std::env::var(MODE_ENV).ok().as_deref() {
            Some("loopback") => Self::create_in_mode(Mode::Loopback),
            Some("namespaces") if !root => Err(HostsError::NamespacesUnavailable),
            Some("namespaces") => Self::create_in_mode(Mode::Namespaces),
            _ if !root => Self::create_in_mode(Mode::Loopback),
            // Root may still lack the right to make namespaces (a restricted container).
            _ => Self::create_in_mode(Mode::Namespaces).or_else(|e| match e {
                HostsError::Netns(NetnsError::Ip { .. } | NetnsError::Setns { .. }) => {
                    tracing::warn!(error = %e, "no network namespaces here; using loopback");
                    Self::create_in_mode(Mode::Loopback)
                }
                other => Err(other),
            }),
        }
    }

    /// Like [`Testbed::create`], in the given mode.
    pub fn create_in_mode(mode: Mode) -> Result<Self, HostsError> {
        if let Err(e) = crate::sweep::sweep() {
            tracing::warn!(error = %e, "sweeping dead test runs failed");
        }
        signals::install_once();
        let (run_id, dir) = make_run_dir()?;
        // The run is registered (and so cleaned on drop or signal) before anything else exists.
        let mut bed = Testbed {
            subnet: subnet_for(&run_id),
            run_id,
            mode,
            dir,
            hosts: Vec::new(),
            switch: None,
        };
        signals::register(&bed.run_id, &bed.dir);
        match mode {
            Mode::Namespaces => bed.build_namespaces()?,
            Mode::Loopback => bed.build_loopback()?,
        }
        tracing::info!(run = %bed.run_id, mode = %mode, "testbed created");
        Ok(bed)
    }

    fn build_loopback(&mut self) -> Result<(), HostsError> {
        for role in Role::ALL {
            let dir = self.host_dir(role)?;
            self.hosts.push(Host {
                role,
                ip: Ipv4Addr::LOCALHOST,
                dir,
                netns: None,
            });
        }
        Ok(())
    }

    fn build_namespaces(&mut self) -> Result<(), HostsError> {
        let switch = netns::Netns::create(&format!("{NETNS_PREFIX}{}-sw", self.run_id))?;
        switch.ip(&["link", "add", "name", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        self.switch = Some(Arc::new(switch));
        for role in Role::ALL {
            let dir = self.host_dir(role)?;
            let name = format!("{NETNS_PREFIX}{}-{}", self.run_id, role.name());
            let ns = netns::Netns::create(&name)?;
            let port = format!("p-{}", role.name());
            if let Some(sw) = &self.switch {
                sw.ip(&[
                    "link", "add", "name", &port, "type", "veth", "peer", "name", "eth0", "netns",
                    &name,
                ])?;
                sw.ip(&["link", "set", &port, "master", "br0", "up"])?;
            }
            let ip = Ipv4Addr::new(10, 213, self.subnet, role.host_octet());
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            // No IPv6 link-local address: it would turn valid a second or two after the link
            // comes up (duplicate address detection), and Chromium, seeing the host's
            // addresses change, fails what it is loading with ERR_NETWORK_CHANGED.
            ns.ip(&["link", "set", "eth0", "addrgenmode", "none"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["link", "set", "lo", "up"])?;
            self.hosts.push(Host {
                role,
                ip,
                dir,
                netns: Some(Arc::new(ns)),
            });
        }
        Ok(())
    }

    fn host_dir(&self, role: Role) -> Result<PathBuf, HostsError> {
        let dir = self.dir.join(role.name());
        std::fs::create_dir(&dir)
            .map_err(|e| HostsError::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// The run's id, part of every namespace and directory name.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// How the hosts are isolated.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The run's directory, `RUNS_ROOT/<run>`.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// The third octet of the run's private subnet 10.213.N.0/24 (namespaces mode).
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The host with the given role.
    pub fn host(&self, role: Role) -> &Host {
        // `hosts` holds one host per role, in `Role::ALL` order, once `create` succeeded.
        let i = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
        &self.hosts[i]
    }

    /// Host A (migration source).
    pub fn a(&self) -> &Host {
        self.host(Role::A)
    }

    /// Host B (migration destination).
    pub fn b(&self) -> &Host {
        self.host(Role::B)
    }

    /// The client host (viewers).
    pub fn client(&self) -> &Host {
        self.host(Role::Client)
    }

    /// Names of the network namespaces this run made (empty on loopback).
    pub fn namespaces(&self) -> Vec<String> {
        self.switch
            .iter()
            .chain(self.hosts.iter().filter_map(|h| h.netns.as_ref()))
            .map(|ns| ns.name().to_string())
            .collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Kill what still runs inside, then let the namespaces go (their `Netns` handles only
        // hold fds; deleting the names is what frees them once nothing is inside).
        self.hosts.clear();
        self.switch = None;
        if let Some(keep) = std::env::var_os(KEEP_ENV) {
            let to = Path::new(&keep).join(&self.run_id);
            if let Err(e) = copy_files(&self.dir, &to) {
                tracing::warn!(to = %to.display(), "keeping the run's files: {e}");
            }
        }
        let report = crate::sweep::remove_run(&self.run_id, &self.dir);
        signals::unregister(&self.run_id);
        tracing::info!(run = %self.run_id, ?report, "testbed removed");
    }
}

/// `DMORE_KEEP=DIR`: a testbed copies its run directory's regular files (logs, traces, QEMU's
/// and the consoles' stderr) to `DIR/<run>/` before removing it, for a run that failed.
pub const KEEP_ENV: &str = "DMORE_KEEP";

/// Copies the regular files under `from` to `to`, keeping the tree (sockets and the like are
/// left out).
fn copy_files(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_files(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Creates a fresh run directory with `owner.pid` in it, and returns the run id and path.
fn make_run_dir() -> Result<(String, PathBuf), HostsError> {
    let root = Path::new(RUNS_ROOT);
    std::fs::create_dir_all(root)
        .map_err(|e| HostsError::io(format!("creating {}", root.display()), e))?;
    // Shared like /tmp: anyone may add runs, nobody may remove another user's (sticky bit).
    // Only the directory's owner can set this; for others it fails, harmlessly.
    let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o1777));
    let owner = OwnerRecord::of_self()
        .map_err(|e| HostsError::io("reading this process's start time", e))?;
    loop {
        let id = random_id()?;
        let dir = root.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                owner.write_into(&dir).map_err(|e| {
                    HostsError::io(format!("writing {OWNER_FILE} in {}", dir.display()), e)
                })?;
                return Ok((id, dir));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(HostsError::io(format!("creating {}", dir.display()), e)),
        }
    }
}

/// Six hex digits from the kernel's random source: short, and unique enough among live runs
/// (a clash is caught by `create_dir`).
fn random_id() -> Result<String, HostsError> {
    let mut buf = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| HostsError::io("reading /dev/urandom", e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The subnet's third octet, derived from the run id (1..=254).
fn subnet_for(run_id: &str) -> u8 {
    let sum = run_id
        .bytes()
        .fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(b.into()));
    u8::try_from(sum % 254 + 1).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_is_a_usable_octet() {
        for id in ["000000", "ffffff", "a1b2c3", ""] {
            let n = subnet_for(id);
            assert!((1..=254).contains(&n), "{id} -> {n}");
        }
    }

    #[test]
    fn run_ids_are_six_hex_digits() {
        let id = random_id().unwrap();
        assert_eq!(id.len(), 6);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
