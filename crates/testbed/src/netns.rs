//! Named network namespaces (`ip netns`), and entering them from a thread or a child process:
//! the hosts make them, the sweep deletes them.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use nix::sched::CloneFlags;

/// Where `ip netns` keeps its named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of making, using and deleting a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A file system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An `ip` command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Ip {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Entering a host's network namespace failed.
    #[error("entering network namespace {netns}: {source}")]
    Setns {
        /// The namespace.
        netns: String,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },
}

/// A named network namespace, held open by a file descriptor so that it can be entered.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// `ip netns add NAME`, then opens it.
    pub(crate) fn create(name: &str) -> Result<Self, NetnsError> {
        run_ip(&["netns", "add", name])?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|e| NetnsError::Io {
            what: format!("opening {}", path.display()),
            source: e,
        })?;
        Ok(Netns {
            name: name.to_string(),
            file,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Moves the calling thread into this namespace (for the rest of its life).
    pub(crate) fn enter_current_thread(&self) -> Result<(), NetnsError> {
        nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetnsError::Setns {
                netns: self.name.clone(),
                source,
            }
        })
    }
}

/// Makes `cmd`'s child enter `ns` between `fork` and `exec`.
pub(crate) fn enter_in_child(cmd: &mut Command, ns: Arc<Netns>) {
    let fd = ns.file.as_raw_fd();
    // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd that `ns`
    // (moved into the closure, so alive as long as the Command) keeps open.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Runs `ip ARGS...` and returns its stdout, or its stderr as the error.
fn run_ip(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Io {
            what: "running ip (is iproute2 installed?)".to_owned(),
            source: e,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Ip {
            command: format!("ip {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Names of all named network namespaces starting with `prefix`.
pub(crate) fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Pids of the processes whose network namespace is the named one.
pub(crate) fn netns_pids(name: &str) -> Vec<i32> {
    run_ip(&["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `ip netns delete NAME` (the namespace itself goes once nothing uses it).
pub(crate) fn delete_netns(name: &str) -> Result<(), NetnsError> {
    run_ip(&["netns", "delete", name]).map(|_| ())
}
