//! A service address: an IP of the testbed's subnet that belongs to no host but moves between
//! them, as a VM's address (or a console's, in dmore's transparent mode) does. It lives on at
//! most one host's `eth0` at a time; [`ServiceAddr`] removes it from every host on drop.
//!
//! ```text
//!  A eth0: 10.213.N.10/24 + 10.213.N.200/24   ──move──>   B eth0: 10.213.N.11/24 + .200/24
//! ```
//!
//! The prefix is /24, as `dmore console --service-interface` expects it (it deletes and adds
//! the address with the subnet's prefix). Namespaces only: on loopback there is nothing to move.

use std::net::Ipv4Addr;
use std::process::Stdio;

use crate::hosts::{Host, Mode, Testbed};

/// The host octet of the default service address, `10.213.N.200`.
pub const DEFAULT_OCTET: u8 = 200;
/// The service address's prefix length (the testbed's subnet).
pub const PREFIX: u8 = 24;
/// The interface every testbed host has.
pub const INTERFACE: &str = "eth0";

/// Why the service address could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The testbed runs on loopback: hosts share one address, nothing can move.
    #[error("a service address needs network-namespace hosts (run as root); this testbed is on loopback")]
    Loopback,
    /// `ip` could not be run.
    #[error("running `ip` on host {host}")]
    Spawn {
        /// The host.
        host: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `ip` failed.
    #[error("`ip {args}` on host {host} failed: {stderr}")]
    Ip {
        /// The host.
        host: &'static str,
        /// The arguments.
        args: String,
        /// What `ip` said.
        stderr: String,
    },
}

/// A service address of the testbed's subnet; removed from every host on drop.
#[derive(Debug)]
pub struct ServiceAddr {
    addr: Ipv4Addr,
    hosts: Vec<Host>,
}

impl ServiceAddr {
    /// `10.213.N.<octet>` of `bed`'s subnet, on no host yet. Fails on a loopback testbed.
    pub fn new(bed: &Testbed, octet: u8) -> Result<ServiceAddr, ServiceError> {
        if bed.mode() != Mode::Namespaces {
            return Err(ServiceError::Loopback);
        }
        Ok(ServiceAddr {
            addr: Ipv4Addr::new(10, 213, bed.subnet(), octet),
            hosts: vec![bed.a().clone(), bed.b().clone(), bed.client().clone()],
        })
    }

    /// The address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `ADDR/24`, as `ip addr` takes it.
    pub fn cidr(&self) -> String {
        format!("{}/{PREFIX}", self.addr)
    }

    /// Adds the address to `host`'s `eth0`.
    pub fn add(&self, host: &Host) -> Result<(), ServiceError> {
        ip(host, &["addr", "add", &self.cidr(), "dev", INTERFACE]).map(drop)
    }

    /// Removes the address from `host`'s `eth0`.
    pub fn del(&self, host: &Host) -> Result<(), ServiceError> {
        ip(host, &["addr", "del", &self.cidr(), "dev", INTERFACE]).map(drop)
    }

    /// Whether the address is on `host`'s `eth0` now.
    pub fn is_on(&self, host: &Host) -> Result<bool, ServiceError> {
        let out = ip(host, &["-4", "-o", "addr", "show", "dev", INTERFACE])?;
        Ok(lists_address(&out, self.addr))
    }
}

impl Drop for ServiceAddr {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = host
                .command("ip")
                .args(["addr", "del", &self.cidr(), "dev", INTERFACE])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether `ip -o addr show` output lists `addr` (as `inet ADDR/PREFIX`).
fn lists_address(out: &str, addr: Ipv4Addr) -> bool {
    let wanted = format!("inet {addr}/");
    out.lines().any(|l| l.contains(&wanted))
}

/// Runs `ip ARGS` inside `host`; its stdout.
fn ip(host: &Host, args: &[&str]) -> Result<String, ServiceError> {
    let out = host
        .command("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ServiceError::Spawn {
            host: host.name(),
            source,
        })?;
    if !out.status.success() {
        return Err(ServiceError::Ip {
            host: host.name(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_ip_output_and_not_a_longer_one() {
        let out = "2: eth0    inet 10.213.7.10/24 brd 10.213.7.255 scope global eth0\n\
                   2: eth0    inet 10.213.7.200/24 scope global secondary eth0\n";
        assert!(lists_address(out, Ipv4Addr::new(10, 213, 7, 200)));
        assert!(lists_address(out, Ipv4Addr::new(10, 213, 7, 10)));
        assert!(!lists_address(out, Ipv4Addr::new(10, 213, 7, 20)));
        assert!(!lists_address(out, Ipv4Addr::new(10, 213, 7, 1)));
    }
}
