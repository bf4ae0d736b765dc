//! Thin, checked wrappers over the socket calls `TCP_REPAIR` needs (`setsockopt`,
//! `getsockopt`, `ioctl`, `send`, `recv`, `bind`, `connect`), each returning `io::Result`.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `TCP_REPAIR_QUEUE` values (`linux/tcp.h`).
pub(crate) const TCP_NO_QUEUE: libc::c_int = 0;
pub(crate) const TCP_RECV_QUEUE: libc::c_int = 1;
pub(crate) const TCP_SEND_QUEUE: libc::c_int = 2;

/// `TCP_REPAIR` values: on, off (with a window probe to the peer).
pub(crate) const TCP_REPAIR_ON: libc::c_int = 1;
pub(crate) const TCP_REPAIR_OFF: libc::c_int = 0;

/// `TCP_REPAIR_OPTIONS` option codes (the TCP option kinds).
pub(crate) const TCPOPT_MSS: u32 = 2;
pub(crate) const TCPOPT_WINDOW: u32 = 3;
pub(crate) const TCPOPT_SACK_PERM: u32 = 4;
pub(crate) const TCPOPT_TIMESTAMP: u32 = 8;

/// `tcpi_options` bits (`linux/tcp.h`).
pub(crate) const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub(crate) const TCPI_OPT_SACK: u8 = 2;
pub(crate) const TCPI_OPT_WSCALE: u8 = 4;

/// `TCP_ESTABLISHED` in `tcpi_state`.
pub(crate) const TCP_ESTABLISHED: u8 = 1;

/// `SIOCOUTQNSD`: bytes in the send queue not yet sent (`linux/sockios.h`).
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
/// `IPV6_TRANSPARENT` (`linux/in6.h`).
const IPV6_TRANSPARENT: libc::c_int = 75;

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TcpRepairOpt {
    pub opt_code: u32,
    pub opt_val: u32,
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TcpRepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socklen<T>() -> libc::socklen_t {
    // Every type passed here is a small C struct; its size always fits a socklen_t.
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// `setsockopt(fd, level, name, &value, sizeof value)`.
pub(crate) fn set_opt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of exactly the length passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            socklen::<T>(),
        )
    })
    .map(drop)
}

/// `setsockopt` with a slice of `T` (for `TCP_REPAIR_OPTIONS`).
pub(crate) fn set_opt_slice<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    values: &[T],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of_val(values))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `values` is a live slice of `len` bytes.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, values.as_ptr().cast(), len) })
        .map(drop)
}

/// `getsockopt` into a `T`; fails unless the kernel filled at least `min_len` bytes.
pub(crate) fn get_opt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    min_len: usize,
) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = socklen::<T>();
    // SAFETY: `value` has room for `len` bytes; the kernel writes at most that many.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    if usize::try_from(len).unwrap_or(0) < min_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("getsockopt returned {len} bytes, expected at least {min_len}"),
        ));
    }
    // SAFETY: zero-initialised and then (partly) written by the kernel; every `T` used here is
    // plain integers, for which any bit pattern is valid.
    Ok(unsafe { value.assume_init() })
}

/// An `ioctl` that returns an `int` through its argument (`SIOCINQ`, `SIOCOUTQ`, ...).
fn ioctl_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    // SAFETY: the request writes one int to the pointer given.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut value) })?;
    u32::try_from(value).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))
}

/// Bytes in the receive queue not yet read (`SIOCINQ`).
pub(crate) fn inq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, libc::FIONREAD as libc::c_ulong)
}

/// Bytes in the send queue not yet acknowledged, sent or not (`SIOCOUTQ`).
pub(crate) fn outq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, libc::TIOCOUTQ as libc::c_ulong)
}

/// Bytes in the send queue not yet sent (`SIOCOUTQNSD`).
pub(crate) fn outq_not_sent(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD)
}

/// Peeks exactly `len` bytes of the selected queue without consuming them.
pub(crate) fn peek_exact(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    // SAFETY: `buf` has `len` writable bytes.
    let got = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    if got != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("peeked {got} of {len} queued bytes"),
        ));
    }
    Ok(buf)
}

/// Sends all of `data`; on `ENOMEM` (a repair-mode queue refill larger than the kernel takes at
/// once) retries with smaller chunks, as CRIU's soccr does.
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    let mut chunk = data.len();
    while !data.is_empty() {
        let n = chunk.min(data.len());
        // SAFETY: `data[..n]` is readable.
        let sent = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), n, 0) };
        match usize::try_from(sent) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(sent) => data = data.get(sent..).unwrap_or_default(),
            Err(_) => {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENOMEM) if chunk > 1 => chunk /= 2,
                    Some(libc::EINTR) => {}
                    _ => return Err(err),
                }
            }
        }
    }
    Ok(())
}

/// A new blocking TCP socket of the address's family.
pub(crate) fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the fd returned is owned by nobody else.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created and is valid.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lets the socket bind and connect from an address this host does not (yet) own.
pub(crate) fn set_transparent(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let on: libc::c_int = 1;
    match addr {
        SocketAddr::V4(_) => set_opt(fd, libc::SOL_IP, libc::IP_TRANSPARENT, &on),
        SocketAddr::V6(_) => set_opt(fd, libc::SOL_IPV6, IPV6_TRANSPARENT, &on),
    }
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            socklen::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            socklen::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

fn from_raw(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("address family {other} is not IP"),
        )),
    }
}

/// `bind(fd, addr)`.
pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = to_raw(addr);
    // SAFETY: `storage` holds a valid address of `len` bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// `connect(fd, addr)`; in repair mode this sends no SYN and the socket is established at once.
pub(crate) fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = to_raw(addr);
    // SAFETY: `storage` holds a valid address of `len` bytes.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

/// `getsockname` (`peer == false`) or `getpeername` (`peer == true`).
pub(crate) fn name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = socklen::<libc::sockaddr_storage>();
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: `storage` has room for `len` bytes.
    check(unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), ptr, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), ptr, &mut len)
        }
    })?;
    from_raw(&storage)
}
