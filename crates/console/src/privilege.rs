//! Least privilege: a console keeps only the capabilities its mode needs, and nothing it could
//! gain back.
//!
//! | mode | needs | for |
//! |---|---|---|
//! | plain, gateway, local hand-over | nothing | unix sockets to QEMU, a TCP listener |
//! | transparent (`--service-interface`) | `CAP_NET_ADMIN` | `TCP_REPAIR`, `IP_TRANSPARENT`, the service address (rtnetlink) |
//! | | `CAP_NET_RAW` | packet sockets: the relay of segments caught during a move, the gratuitous ARP |
//!
//! Run the console as a user of its own; in transparent mode give it those two as ambient
//! capabilities (`setpriv --reuid=dmore --regid=dmore --init-groups --inh-caps=+net_admin,+net_raw
//! --ambient-caps=+net_admin,+net_raw dmore console ...`, or systemd's `AmbientCapabilities=`).
//! Started as root, it drops every other capability (so root's uid no longer bypasses file
//! permissions) and sets `no_new_privs`.

use caps::{CapSet, Capability, CapsHashSet};

/// Why the console's capabilities could not be set as its mode needs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The mode needs capabilities the process does not have.
    #[error(
        "transparent mode (--service-interface) needs {missing}, which this process lacks: run it \
         as its own user with `setpriv --reuid=USER --regid=GROUP --init-groups \
         --inh-caps=+net_admin,+net_raw --ambient-caps=+net_admin,+net_raw -- dmore console ...` \
         (or systemd's AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)"
    )]
    Missing {
        /// The missing capabilities, by name.
        missing: String,
    },
    /// The kernel refused a change of the capability sets.
    #[error("setting the process's capabilities failed")]
    Caps(#[from] caps::errors::CapsError),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("setting no_new_privs failed")]
    NoNewPrivs(#[source] std::io::Error),
}

/// The capabilities a console needs: `CAP_NET_ADMIN` and `CAP_NET_RAW` in transparent mode,
/// none otherwise.
pub fn needed(transparent: bool) -> CapsHashSet {
    if transparent {
        [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]
            .into_iter()
            .collect()
    } else {
        CapsHashSet::new()
    }
}

/// Keeps exactly `needed` in the effective, permitted and inheritable sets (and, where allowed,
/// the bounding set), clears the ambient set (the console runs no programs), and sets
/// `no_new_privs`. Call it before any thread starts: capabilities are per thread, and threads
/// inherit them when they are made. Fails, changing nothing, when
/// the process does not have all of `needed`. Returns what it dropped, for the log.
pub fn keep_only(needed: &CapsHashSet) -> Result<CapsHashSet, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let mut missing: Vec<String> = needed
        .difference(&permitted)
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(PrivilegeError::Missing {
            missing: missing.join(" and "),
        });
    }
    if nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "running as root: give the console a user of its own (docs/security.md); every \
             capability but what its mode needs is dropped"
        );
    }
    let dropped: CapsHashSet = permitted.difference(needed).copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::read(None, CapSet::Bounding)?.difference(needed) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, needed)?;
    caps::set(None, CapSet::Effective, needed)?;
    caps::set(None, CapSet::Permitted, needed)?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    let set = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if set != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_mode_needs_exactly_net_admin_and_net_raw() {
        assert!(needed(false).is_empty());
        let t = needed(true);
        assert_eq!(t.len(), 2);
        assert!(t.contains(&Capability::CAP_NET_ADMIN) && t.contains(&Capability::CAP_NET_RAW));
    }
}
