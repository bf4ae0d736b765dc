//! Handing a frozen console to a fresh process: the snapshot bytes plus each viewer's live
//! connection (its socket and the bytes already read from it but not yet handled).
//!
//! ```text
//!  new console ──"freeze\n"──▶ old console's control socket (unix)
//!      ◀── header "DMOREHO1" + viewer count (u32), the sockets as SCM_RIGHTS ──
//!      ◀── body length (u32) + body: per viewer (id u32, unread len u32, unread bytes),
//!          then the snapshot (ConsoleSnapshot bytes) ──
//!  old console exits 0; the new one restores the snapshot and serves the sockets
//! ```
//!
//! Only the way a socket travels is specific to this hand-over (a file descriptor passed over
//! a unix socket between two processes on one host). The migration swaps it — `TCP_REPAIR`
//! or a gateway — and keeps [`Handover`] as it is. Integers are big-endian.

use crate::journal::ViewerId;
use crate::snapshot::MAX_SNAPSHOT;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// First bytes of a hand-over.
pub const HANDOVER_MAGIC: [u8; 8] = *b"DMOREHO1";
/// Most viewer connections one hand-over carries.
pub const MAX_HANDED_VIEWERS: usize = 64;
/// Most unread bytes carried per viewer (a few messages).
pub const MAX_UNREAD: usize = 1 << 20;

/// A frozen console, ready to be taken over.
#[derive(Debug)]
pub struct Handover {
    /// The [`crate::snapshot::ConsoleSnapshot`] bytes.
    pub snapshot: Vec<u8>,
    /// The viewers' live connections.
    pub viewers: Vec<HandedViewer>,
    /// The gateway viewers' live sessions (their state is in the snapshot): handed off once
    /// the successor serves them, or served again by a thaw. They never cross the socket.
    pub pipes: Vec<(ViewerId, gateway::pipe::Pipe)>,
}

/// One viewer's live connection.
#[derive(Debug)]
pub struct HandedViewer {
    /// Its id (its session is the snapshot's piece `session/<id>`).
    pub id: ViewerId,
    /// The connected socket.
    pub stream: std::net::TcpStream,
    /// Bytes the old console read from it and did not handle: the viewer's next messages.
    pub unread: Vec<u8>,
}

/// Why a hand-over could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The unix socket failed.
    #[error("hand-over socket I/O failed")]
    Io(#[from] std::io::Error),
    /// Passing the sockets failed.
    #[error("passing the viewer sockets failed")]
    Fds(#[from] nix::Error),
    /// The bytes are not a hand-over this dmore reads.
    #[error("malformed hand-over: {0}")]
    Malformed(&'static str),
}

/// Sends `h` over `sock` (blocking).
pub fn send_handover(sock: &mut UnixStream, h: &Handover) -> Result<(), HandoverError> {
    if h.viewers.len() > MAX_HANDED_VIEWERS {
        return Err(HandoverError::Malformed("too many viewers"));
    }
    let count = u32::try_from(h.viewers.len()).map_err(|_| HandoverError::Malformed("count"))?;
    let mut header = HANDOVER_MAGIC.to_vec();
    header.extend_from_slice(&count.to_be_bytes());
    let fds: Vec<RawFd> = h.viewers.iter().map(|v| v.stream.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let mut sent = 0;
    while sent < header.len() {
        let rest = header.get(sent..).unwrap_or_default();
        let iov = [IoSlice::new(rest)];
        let c = if sent == 0 { cmsgs } else { &[] };
        sent += sendmsg::<()>(sock.as_raw_fd(), &iov, c, MsgFlags::empty(), None)?;
    }
    let mut body = Vec::new();
    for v in &h.viewers {
        if v.unread.len() > MAX_UNREAD {
            return Err(HandoverError::Malformed("too many unread bytes"));
        }
        body.extend_from_slice(&v.id.0.to_be_bytes());
        body.extend_from_slice(&u32::try_from(v.unread.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&v.unread);
    }
    body.extend_from_slice(&h.snapshot);
    let len = u32::try_from(body.len()).map_err(|_| HandoverError::Malformed("too large"))?;
    sock.write_all(&len.to_be_bytes())?;
    sock.write_all(&body)?;
    sock.flush()?;
    Ok(())
}

/// Receives a hand-over from `sock` (blocking).
pub fn recv_handover(sock: &mut UnixStream) -> Result<Handover, HandoverError> {
    let mut header = [0u8; 12];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut got = 0;
    while got < header.len() {
        let mut space = nix::cmsg_space!([RawFd; MAX_HANDED_VIEWERS]);
        let rest = header.get_mut(got..).unwrap_or_default();
        let mut iov = [IoSliceMut::new(rest)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        if msg.bytes == 0 {
            return Err(HandoverError::Malformed("closed before the header"));
        }
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors for this process; each is
                // owned once, here.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        got += msg.bytes;
    }
    let (magic, count) = header.split_at(8);
    if magic != HANDOVER_MAGIC {
        return Err(HandoverError::Malformed("bad magic"));
    }
    let count = usize::try_from(u32::from_be_bytes(
        count
            .try_into()
            .map_err(|_| HandoverError::Malformed("count"))?,
    ))
    .map_err(|_| HandoverError::Malformed("count"))?;
    if count != fds.len() {
        return Err(HandoverError::Malformed("viewer count and sockets differ"));
    }
    let mut len = [0u8; 4];
    sock.read_exact(&mut len)?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_SNAPSHOT + MAX_HANDED_VIEWERS * (MAX_UNREAD + 8) {
        return Err(HandoverError::Malformed("body too large"));
    }
    let mut body = Vec::new();
    sock.take(u64::try_from(len).unwrap_or(0))
        .read_to_end(&mut body)?;
    if body.len() != len {
        return Err(HandoverError::Malformed("truncated body"));
    }
    let mut rest = body.as_slice();
    let mut viewers = Vec::with_capacity(count);
    for fd in fds {
        let id = take_u32(&mut rest)?;
        let n = usize::try_from(take_u32(&mut rest)?).unwrap_or(usize::MAX);
        if n > MAX_UNREAD || n > rest.len() {
            return Err(HandoverError::Malformed("unread bytes"));
        }
        let (unread, tail) = rest.split_at(n);
        rest = tail;
        viewers.push(HandedViewer {
            id: ViewerId(id),
            stream: std::net::TcpStream::from(fd),
            unread: unread.to_vec(),
        });
    }
    Ok(Handover {
        snapshot: rest.to_vec(),
        viewers,
        pipes: Vec::new(),
    })
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, HandoverError> {
    if rest.len() < 4 {
        return Err(HandoverError::Malformed("truncated viewer entry"));
    }
    let (head, tail) = rest.split_at(4);
    *rest = tail;
    Ok(u32::from_be_bytes(head.try_into().map_err(|_| {
        HandoverError::Malformed("truncated viewer entry")
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        (a, b)
    }

    #[test]
    fn sockets_unread_bytes_and_snapshot_cross_intact() {
        let (mut viewer1, console1) = tcp_pair();
        let (mut viewer2, console2) = tcp_pair();
        let h = Handover {
            snapshot: (0..=255u8).cycle().take(100_000).collect(),
            viewers: vec![
                HandedViewer {
                    id: ViewerId(3),
                    stream: console1,
                    unread: b"half a message".to_vec(),
                },
                HandedViewer {
                    id: ViewerId(9),
                    stream: console2,
                    unread: Vec::new(),
                },
            ],
            pipes: Vec::new(),
        };
        let (mut tx, mut rx) = UnixStream::pair().expect("pair");
        let sender = std::thread::spawn(move || send_handover(&mut tx, &h).map(|()| h.snapshot));
        let got = recv_handover(&mut rx).expect("received");
        let snapshot = sender.join().expect("join").expect("sent");
        assert_eq!(got.snapshot, snapshot);
        assert_eq!(got.viewers.len(), 2);
        assert_eq!(got.viewers[0].id, ViewerId(3));
        assert_eq!(got.viewers[0].unread, b"half a message");
        assert_eq!(got.viewers[1].id, ViewerId(9));
        // The received sockets are the same connections.
        let mut s = &got.viewers[1].stream;
        s.write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        viewer2.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
        viewer1.write_all(b"x").expect("write");
        let mut s = &got.viewers[0].stream;
        s.read_exact(&mut buf[..1]).expect("read");
        assert_eq!(buf[0], b'x');
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for bytes in [
            &b"NOTAHAND\0\0\0\0"[..],
            &b"DMOREHO1\0\0\0\x02"[..], // two viewers announced, no sockets passed
            &b"DMOREHO1\0\0\0\0\xff\xff\xff\xff"[..], // body far too large
            &b"DMOREHO1\0\0\0\0\0\0\0\x10abc"[..], // truncated body
            &b"DMO"[..],
        ] {
            let (mut tx, mut rx) = UnixStream::pair().expect("pair");
            tx.write_all(bytes).expect("write");
            drop(tx);
            assert!(recv_handover(&mut rx).is_err(), "{bytes:?} accepted");
        }
    }
}
