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
    /// The kernel refused to add or remove the address.
    #[error("{what} {addr} on {interface}: {source} (does dmore have CAP_NET_ADMIN here?)")]
    Address {
        /// "adding" or "removing".
        what: &'static str,
        /// The address.
        addr: Ipv4Addr,
        /// The interface.
        interface: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gratuitous ARP or the relay failed.
    #[error("announcing or relaying the service address")]
    Link(#[from] TcpRepairError),
}

impl ServiceAddress {
    /// Adds the address as a /32 (the host's own route covers the subnet); present already
    /// is fine.
    pub fn add(&self) -> Result<(), ServiceError> {
        match netlink::address(libc::RTM_NEWADDR, &self.interface, self.addr) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(|source| self.error("adding", source)),
        }
    }

    /// Removes the address, whatever its prefix; absent already is fine.
    pub fn remove(&self) -> Result<(), ServiceError> {
        match netlink::address(libc::RTM_DELADDR, &self.interface, self.addr) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => other.map_err(|source| self.error("removing", source)),
        }
    }

    fn error(&self, what: &'static str, source: std::io::Error) -> ServiceError {
        ServiceError::Address {
            what,
            addr: self.addr,
            interface: self.interface.clone(),
            source,
        }
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

/// Adding and removing an IPv4 address with one rtnetlink request each. Written here rather
/// than spawning `ip` (two processes, ~2-7 ms on the freeze and takeover path) or pulling in
/// an async netlink stack for two messages.
mod netlink {
    use std::io;
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const NLMSG_HDR: usize = 16;
    const IFADDRMSG: usize = 8;
    const RTA_ADDR: usize = 8;

    /// Sends `RTM_NEWADDR` for `addr`/32, or `RTM_DELADDR` for `addr` whatever its prefix, on
    /// `interface`, and waits for the ack. A delete names only the local address: with
    /// `IFA_ADDRESS` too the kernel matches the prefix length as well, and an address added
    /// as /24 by an operator would stay (both hosts would then answer for it).
    pub(super) fn address(kind: u16, interface: &str, addr: Ipv4Addr) -> io::Result<()> {
        let name = std::ffi::CString::new(interface)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let attrs: &[u16] = if kind == libc::RTM_NEWADDR {
            flags |= (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
            &[libc::IFA_LOCAL, libc::IFA_ADDRESS]
        } else {
            &[libc::IFA_LOCAL]
        };
        let total = NLMSG_HDR + IFADDRMSG + attrs.len() * RTA_ADDR;
        let mut msg = Vec::with_capacity(total);
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
                                                    // struct ifaddrmsg: family, prefix length, flags, scope, interface index.
        msg.extend_from_slice(&[libc::AF_INET as u8, 32, 0, libc::RT_SCOPE_UNIVERSE]);
        msg.extend_from_slice(&index.to_ne_bytes());
        for attr in attrs {
            msg.extend_from_slice(&(RTA_ADDR as u16).to_ne_bytes());
            msg.extend_from_slice(&attr.to_ne_bytes());
            msg.extend_from_slice(&addr.octets());
        }
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `msg` is readable for its length.
        let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 512];
        // SAFETY: `reply` is writable for its length.
        let got =
            unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
        // The ack: struct nlmsghdr with type NLMSG_ERROR, then the error code (0: done).
        let field = |at: usize| -> Option<[u8; 4]> { reply.get(at..at + 4)?.try_into().ok() };
        let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        match (kind, field(NLMSG_HDR)) {
            (Some(k), Some(code)) if got >= NLMSG_HDR + 4 && i32::from(k) == libc::NLMSG_ERROR => {
                match i32::from_ne_bytes(code) {
                    0 => Ok(()),
                    errno => Err(io::Error::from_raw_os_error(-errno)),
                }
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no netlink acknowledgement",
            )),
        }
    }
}
