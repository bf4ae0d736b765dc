//! Link-layer help for moving a service address: a gratuitous ARP that tells the segment's
//! neighbours the address's new owner, and a [`Relay`] that hands segments the old owner
//! caught during the move to the new one (so the peer need not wait for its retransmission
//! timer). Both use raw `AF_PACKET` sockets (no `arping` needed) and need `CAP_NET_RAW`.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::TcpRepairError;

const ETH_HLEN: usize = 14;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
/// Frames a relay keeps at most; a console's viewers send a handful during a move.
const RELAY_MAX_FRAMES: usize = 4096;
/// Largest frame a relay reads (the test hosts' MTU is 1500).
const FRAME_MAX: usize = 65_536;

/// An Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

fn link_err(what: String) -> impl FnOnce(io::Error) -> TcpRepairError {
    move |source| TcpRepairError::Link { what, source }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An interface's index in the calling thread's network namespace.
fn if_index(interface: &str) -> io::Result<libc::c_int> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    libc::c_int::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// The MAC address of `interface` in the calling thread's network namespace.
pub fn hardware_address(interface: &str) -> Result<MacAddr, TcpRepairError> {
    hw_addr(interface).map_err(link_err(format!("reading the MAC address of {interface}")))
}

fn hw_addr(interface: &str) -> io::Result<MacAddr> {
    let bytes = interface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain syscall; the fd is owned below.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes a sockaddr into `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) })?;
    // SAFETY: the ioctl filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = *src as u8;
    }
    Ok(MacAddr(mac))
}

/// Closes a packet socket on a thread of its own: closing one waits for an RCU grace period
/// (`packet_release` calls `synchronize_net`), measured at 10-25 ms here, which must not sit
/// on the takeover path.
fn close_in_background(sock: OwnedFd) {
    if let Err(e) = std::thread::Builder::new()
        .name("close-packet-socket".into())
        .spawn(move || drop(sock))
    {
        tracing::debug!(error = %e, "no thread to close a packet socket on; it was closed here");
    }
}

fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned below.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol.to_be()),
        )
    })?;
    // SAFETY: `fd` was just created.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn link_addr(ifindex: libc::c_int, protocol: u16, dst: MacAddr) -> libc::sockaddr_ll {
    let mut addr = [0u8; 8];
    addr[..6].copy_from_slice(&dst.0);
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr,
    }
}

fn send_frame(sock: &OwnedFd, to: &libc::sockaddr_ll, frame: &[u8]) -> io::Result<()> {
    // SAFETY: `frame` is readable and `to` is a valid sockaddr_ll of the length passed.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One gratuitous ARP frame for `addr` owned by `mac`: `op` 1 is the request form, 2 the reply.
fn garp_frame(mac: MacAddr, addr: Ipv4Addr, op: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + 28);
    f.extend_from_slice(&MacAddr::BROADCAST.0);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETH_P_IP.to_be_bytes()); // protocol type: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac.0); // sender MAC
    f.extend_from_slice(&addr.octets()); // sender IP
    f.extend_from_slice(&if op == 1 {
        [0; 6]
    } else {
        MacAddr::BROADCAST.0
    }); // target MAC
    f.extend_from_slice(&addr.octets()); // target IP = sender IP: gratuitous
    f
}

/// Tells the link that `addr` now lives at `interface`'s MAC: one gratuitous ARP request and
/// one reply, broadcast from the calling thread's network namespace. Call it only once the
/// connections to `addr` are restored here (earlier, this host's kernel resets them). Needs
/// the hosts on one L2 segment whose switches and neighbours accept gratuitous ARP (Linux
/// updates an existing neighbour entry from one). Returns the MAC announced.
pub fn announce(interface: &str, addr: Ipv4Addr) -> Result<MacAddr, TcpRepairError> {
    let what = || format!("announcing {addr} on {interface} (gratuitous ARP)");
    let mac = hardware_address(interface)?;
    let ifindex = if_index(interface).map_err(link_err(what()))?;
    // Protocol 0: a send-only socket (one made with ETH_P_ARP would also receive).
    let sock = packet_socket(0).map_err(link_err(what()))?;
    let to = link_addr(ifindex, ETH_P_ARP, MacAddr::BROADCAST);
    let sent = [1, 2]
        .into_iter()
        .try_for_each(|op| send_frame(&sock, &to, &garp_frame(mac, addr, op)));
    close_in_background(sock);
    sent.map_err(link_err(what()))?;
    Ok(mac)
}

/// Catches, on the host a service address is leaving, the IPv4 TCP segments that still arrive
/// for it (the peer's ARP entry points here until the new owner's announcement is heard), so
/// they can be handed to the new owner instead of being lost. Without it, bytes a viewer sends
/// during a move arrive only with the viewer's retransmission timer (200 ms or more).
///
/// Start it before the address is removed; call [`Relay::forward`] once the new owner has
/// restored the connections and announced the address. Segments the old owner had already
/// processed may be forwarded too: TCP discards such duplicates.
#[derive(Debug)]
pub struct Relay {
    sock: OwnedFd,
    ifindex: libc::c_int,
    mac: MacAddr,
    addr: Ipv4Addr,
}

impl Relay {
    /// Starts catching frames for `addr` arriving on `interface` (calling thread's namespace).
    pub fn start(interface: &str, addr: Ipv4Addr) -> Result<Relay, TcpRepairError> {
        let what = || format!("starting a relay for {addr} on {interface}");
        let mac = hardware_address(interface)?;
        let ifindex = if_index(interface).map_err(link_err(what()))?;
        // Made with protocol 0 (catching nothing) and given ETH_P_IP by `bind`: a socket made
        // with the protocol is hooked to every interface at once, and re-binding it waits for
        // an RCU grace period (`synchronize_net`, ~10 ms measured at the freeze).
        let sock = packet_socket(0).map_err(link_err(what()))?;
        let bind_to = link_addr(ifindex, ETH_P_IP, MacAddr([0; 6]));
        // SAFETY: `bind_to` is a valid sockaddr_ll of the length passed.
        check(unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&bind_to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })
        .map_err(link_err(what()))?;
        Ok(Relay {
            sock,
            ifindex,
            mac,
            addr,
        })
    }

    /// Sends every caught segment for the address to `to` (the new owner's MAC, on the same
    /// link), with this host as the frame's source. Returns how many were forwarded.
    pub fn forward(&self, to: MacAddr) -> Result<usize, TcpRepairError> {
        let what = || format!("relaying segments for {} to {to}", self.addr);
        let frames = self.drain().map_err(link_err(what()))?;
        let dst = link_addr(self.ifindex, ETH_P_IP, to);
        for mut frame in frames.iter().cloned() {
            if let Some(head) = frame.get_mut(..12) {
                head[..6].copy_from_slice(&to.0);
                head[6..].copy_from_slice(&self.mac.0);
            }
            // A segment from a local or virtual sender may carry only a partial checksum (the
            // NIC was to finish it); the new owner verifies it, so make it whole.
            fix_tcp_checksum(&mut frame);
            send_frame(&self.sock, &dst, &frame).map_err(link_err(what()))?;
        }
        Ok(frames.len())
    }

    /// Reads everything queued on the socket, keeping incoming TCP segments for the address.
    fn drain(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; FRAME_MAX];
        loop {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are writable for the lengths passed.
            let got = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            let Ok(got) = usize::try_from(got) else {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock => Ok(kept),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(err),
                };
            };
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = buf.get(..got).unwrap_or_default();
            if self.wanted(frame) && kept.len() < RELAY_MAX_FRAMES {
                kept.push(frame.to_vec());
            }
        }
    }

    /// An IPv4 TCP segment addressed to the relayed address?
    fn wanted(&self, frame: &[u8]) -> bool {
        let ip = frame.get(ETH_HLEN..).unwrap_or_default();
        frame.get(12..14) == Some(&ETH_P_IP.to_be_bytes()[..])
            && ip.first().is_some_and(|v| v >> 4 == 4)
            && ip.get(9) == Some(&IPPROTO_TCP)
            && ip.get(16..20) == Some(&self.addr.octets()[..])
    }
}

/// One's-complement sum of 16-bit big-endian words (an odd last byte padded with zero).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = words.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // `acc` fits 16 bits after folding.
    u16::try_from(acc).unwrap_or(0)
}

/// Recomputes the TCP checksum of an Ethernet frame holding an unfragmented IPv4 segment;
/// leaves anything else untouched.
fn fix_tcp_checksum(frame: &mut [u8]) {
    let Some(ip) = frame.get_mut(ETH_HLEN..) else {
        return;
    };
    let Some(&first) = ip.first() else { return };
    let ihl = usize::from(first & 0x0f) * 4;
    let Some(total) = ip
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return;
    };
    let fragmented = ip.get(6..8).is_some_and(|b| b[0] & 0x3f != 0 || b[1] != 0);
    if ihl < 20 || total < ihl + 20 || total > ip.len() || fragmented {
        return;
    }
    let (header, rest) = ip.split_at_mut(ihl);
    let Some(segment) = rest.get_mut(..total - ihl) else {
        return;
    };
    let Ok(seg_len) = u16::try_from(segment.len()) else {
        return;
    };
    segment[16] = 0;
    segment[17] = 0;
    let mut acc = sum16(&header[12..20], 0); // source and destination addresses
    acc = acc.wrapping_add(u32::from(IPPROTO_TCP));
    acc = acc.wrapping_add(u32::from(seg_len));
    acc = sum16(segment, acc);
    let sum = !fold(acc);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_names_the_address_twice() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let f = garp_frame(mac, Ipv4Addr::new(10, 0, 0, 5), 1);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[10, 0, 0, 5]);
        assert_eq!(&f[38..42], &[10, 0, 0, 5]);
        assert_eq!(mac.to_string(), "02:00:00:00:00:01");
    }

    #[test]
    fn tcp_checksum_is_recomputed() {
        // A SYN from 10.0.0.1:12345 to 10.0.0.2:80 carrying a wrong checksum (0xabcd).
        let mut frame = vec![0u8; ETH_HLEN];
        frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = [
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let tcp = [
            0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xab, 0xcd, 0, 0,
        ];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&tcp);
        fix_tcp_checksum(&mut frame);
        let seg = &frame[ETH_HLEN + 20..];
        // Verifying: the sum over pseudo-header and segment (checksum included) is 0xffff.
        let mut acc = sum16(&frame[ETH_HLEN + 12..ETH_HLEN + 20], 0);
        acc = acc.wrapping_add(6).wrapping_add(20);
        assert_eq!(fold(sum16(seg, acc)), 0xffff);
        assert_ne!(&seg[16..18], &[0xab, 0xcd]);
        // A truncated frame is left alone and does not panic.
        let mut short = frame[..ETH_HLEN + 25].to_vec();
        let before = short.clone();
        fix_tcp_checksum(&mut short);
        assert_eq!(short, before);
    }
}
