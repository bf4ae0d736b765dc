//! The service address: the IP viewers connect to, which moves with the VM (transparent mode).
//!
//! The source console removes it from its host at the freeze (so nothing on the source answers
//! for it: no RST can reach a viewer), the destination console adds it once the viewers'
//! sockets are restored there and announces it with a gratuitous ARP (announced earlier, the
//! destination's kernel would reset the connections: DESIGN.md). Both hosts must be on one L2
//! segment that permits gratuitous ARP. Needs `CAP_NET_ADMIN` (root in the host's namespace).

use std::net::Ipv4Addr;

use migrate::tcp::{self, MacAddr, Relay, TcpRepairError};

/// An address this console moves on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddress {
    /// The interface (`eth0`).
    pub interface: String,
    /// The address.
    pub addr: Ipv4Addr,
}

/// Why the address could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `ip` failed or could not run.
    #[error(
        "`ip {args}` failed: {detail} (is iproute2 installed, and does dmore have CAP_NET_ADMIN?)"
    )]
    Ip {
        /// The arguments.
        args: String,
        /// Its stderr, or why it did not run.
        detail: String,
    },
    /// The gratuitous ARP or the relay failed.
    #[error("announcing or relaying the service address")]
    Link(#[from] TcpRepairError),
}

impl ServiceAddress {
    /// The prefix length the address has on the interface now, if it is there.
    pub async fn present(&self) -> Result<Option<u8>, ServiceError> {
        let out = ip(&["-o", "-4", "addr", "show", "dev", &self.interface]).await?;
        let wanted = format!("inet {}/", self.addr);
        Ok(out.lines().find_map(|line| {
            let rest = line.split(&wanted).nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        }))
    }

    /// Adds the address (as a /32: the host's own route covers the subnet) unless present.
    pub async fn add(&self) -> Result<(), ServiceError> {
        if self.present().await?.is_none() {
            let cidr = format!("{}/32", self.addr);
            ip(&["addr", "add", &cidr, "dev", &self.interface]).await?;
        }
        Ok(())
    }

    /// Removes the address, whatever its prefix; nothing to do if absent.
    pub async fn remove(&self) -> Result<(), ServiceError> {
        if let Some(prefix) = self.present().await? {
            let cidr = format!("{}/{prefix}", self.addr);
            ip(&["addr", "del", &cidr, "dev", &self.interface]).await?;
        }
        Ok(())
    }

    /// Sends the gratuitous ARP; returns this host's hardware address.
    pub fn announce(&self) -> Result<MacAddr, ServiceError> {
        Ok(tcp::announce(&self.interface, self.addr)?)
    }

    /// This host's hardware address on the interface.
    pub fn hardware_address(&self) -> Result<MacAddr, ServiceError> {
        Ok(tcp::hardware_address(&self.interface)?)
    }

    /// Starts catching the segments viewers send to the address while it moves.
    pub fn relay(&self) -> Result<Relay, ServiceError> {
        Ok(Relay::start(&self.interface, self.addr)?)
    }
}

async fn ip(args: &[&str]) -> Result<String, ServiceError> {
    let failed = |detail: String| ServiceError::Ip {
        args: args.join(" "),
        detail,
    };
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
