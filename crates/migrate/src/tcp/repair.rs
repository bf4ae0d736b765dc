//! Checkpoint and restore of one socket (the recipe of CRIU's soccr, restricted to established
//! connections with no FIN in either queue).

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::sys::{self, TcpRepairOpt, TcpRepairWindow};
use super::{Checkpoint, RepairWindow, Step, TcpRepairError, WindowScale};

/// Bytes of `struct tcp_info` up to and including `tcpi_snd_rcv_wscale` (the fields read here).
const TCP_INFO_MIN: usize = 8;

fn set_int(
    fd: BorrowedFd<'_>,
    name: libc::c_int,
    value: libc::c_int,
    step: Step,
) -> Result<(), TcpRepairError> {
    sys::set_opt(fd, libc::SOL_TCP, name, &value).map_err(TcpRepairError::sys(step))
}

fn select_queue(fd: BorrowedFd<'_>, queue: libc::c_int) -> Result<(), TcpRepairError> {
    set_int(fd, libc::TCP_REPAIR_QUEUE, queue, Step::SelectQueue)
}

fn queue_seq(fd: BorrowedFd<'_>) -> Result<u32, TcpRepairError> {
    // The kernel writes an int; read it as u32 (sequence numbers wrap, DESIGN.md).
    sys::get_opt::<u32>(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, 4)
        .map_err(TcpRepairError::sys(Step::GetQueueSeq))
}

fn set_queue_seq(fd: BorrowedFd<'_>, queue: libc::c_int, seq: u32) -> Result<(), TcpRepairError> {
    select_queue(fd, queue)?;
    sys::set_opt(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &seq)
        .map_err(TcpRepairError::sys(Step::SetQueueSeq))
}

fn len_of(n: usize) -> u32 {
    // Queue lengths are validated against MAX_QUEUE_BYTES, far below u32::MAX.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Grows the socket's buffers (past `wmem_max`/`rmem_max`, which needs CAP_NET_ADMIN like the
/// rest) when the checkpoint's queues would not fit: a refill that does not fit would block
/// forever in repair mode, and the never-sent part must be queued at once, not written later.
fn ensure_buffers(fd: BorrowedFd<'_>, cp: &Checkpoint) -> Result<(), TcpRepairError> {
    let send = cp.send_unacked.len().saturating_add(cp.send_unsent.len());
    for (need, get, force) in [
        (send, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
        (cp.recv_queue.len(), libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
    ] {
        if need == 0 {
            continue;
        }
        let have = sys::get_opt::<libc::c_int>(fd, libc::SOL_SOCKET, get, 4)
            .map_err(TcpRepairError::sys(Step::Buffers))?;
        // The kernel counts skb overhead against the buffer and doubles the value set.
        let want = need.saturating_mul(2);
        if usize::try_from(have).unwrap_or(0) / 2 < want {
            let value = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
            sys::set_opt(fd, libc::SOL_SOCKET, force, &value)
                .map_err(TcpRepairError::sys(Step::Buffers))?;
        }
    }
    Ok(())
}

/// Puts an established socket in repair mode and reads its whole state.
///
/// The socket **stays in repair mode**: it sends nothing from now on, and closing it sends no
/// FIN or RST. Before this call the caller should already have stopped the service address's
/// packets on this host (`ip addr del`, or a firewall drop, as CRIU does while it dumps):
/// repair mode freezes what the application can do, not what arrives from the network, so a
/// segment received after the checkpoint could be acknowledged here and be missing from it, and
/// once the socket is closed the host would answer with a RST. Then close the socket with [`abandon`], or return to normal
/// with [`resume`] if the move is aborted.
pub fn checkpoint(sock: &impl AsFd) -> Result<Checkpoint, TcpRepairError> {
    let fd = sock.as_fd();
    let info: libc::tcp_info = sys::get_opt(fd, libc::SOL_TCP, libc::TCP_INFO, TCP_INFO_MIN)
        .map_err(TcpRepairError::sys(Step::TcpInfo))?;
    if info.tcpi_state != sys::TCP_ESTABLISHED {
        return Err(TcpRepairError::NotEstablished(info.tcpi_state));
    }
    set_int(fd, libc::TCP_REPAIR, sys::TCP_REPAIR_ON, Step::RepairOn)?;
    // Repair mode is on: from here the state is frozen and everything read is consistent.
    let local = sys::name(fd, false).map_err(TcpRepairError::sys(Step::Addresses))?;
    let remote = sys::name(fd, true).map_err(TcpRepairError::sys(Step::Addresses))?;

    select_queue(fd, sys::TCP_RECV_QUEUE)?;
    let recv_seq = queue_seq(fd)?;
    let inq = sys::inq(fd).map_err(TcpRepairError::sys(Step::QueueLength))?;
    let recv_queue = sys::peek_exact(fd, usize::try_from(inq).unwrap_or(usize::MAX))
        .map_err(TcpRepairError::sys(Step::PeekQueue))?;

    select_queue(fd, sys::TCP_SEND_QUEUE)?;
    let send_seq = queue_seq(fd)?;
    let outq = sys::outq(fd).map_err(TcpRepairError::sys(Step::QueueLength))?;
    let unsent = sys::outq_not_sent(fd).map_err(TcpRepairError::sys(Step::QueueLength))?;
    let mut send_queue = sys::peek_exact(fd, usize::try_from(outq).unwrap_or(usize::MAX))
        .map_err(TcpRepairError::sys(Step::PeekQueue))?;
    let unacked_len = usize::try_from(outq.saturating_sub(unsent)).unwrap_or(usize::MAX);
    let send_unsent = send_queue.split_off(unacked_len.min(send_queue.len()));
    select_queue(fd, sys::TCP_NO_QUEUE)?;

    let mss = sys::get_opt::<u32>(fd, libc::SOL_TCP, libc::TCP_MAXSEG, 4)
        .map_err(TcpRepairError::sys(Step::GetMss))?;
    let timestamp = sys::get_opt::<u32>(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP, 4)
        .map_err(TcpRepairError::sys(Step::Timestamp))?;
    let w: TcpRepairWindow = sys::get_opt(
        fd,
        libc::SOL_TCP,
        libc::TCP_REPAIR_WINDOW,
        std::mem::size_of::<TcpRepairWindow>(),
    )
    .map_err(TcpRepairError::sys(Step::GetWindow))?;

    let window_scale = (info.tcpi_options & sys::TCPI_OPT_WSCALE != 0).then_some(WindowScale {
        // Bit fields `tcpi_snd_wscale:4, tcpi_rcv_wscale:4`, low nibble first.
        snd: info.tcpi_snd_rcv_wscale & 0x0f,
        rcv: info.tcpi_snd_rcv_wscale >> 4,
    });
    let cp = Checkpoint {
        local,
        remote,
        send_seq,
        recv_seq,
        recv_queue,
        send_unacked: send_queue,
        send_unsent,
        mss,
        window_scale,
        sack: info.tcpi_options & sys::TCPI_OPT_SACK != 0,
        timestamps: info.tcpi_options & sys::TCPI_OPT_TIMESTAMPS != 0,
        timestamp,
        window: RepairWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    };
    tracing::debug!(
        local = %cp.local, remote = %cp.remote, recv = cp.recv_queue.len(),
        unacked = cp.send_unacked.len(), unsent = cp.send_unsent.len(), "TCP checkpoint"
    );
    Ok(cp)
}

/// Closes a checkpointed socket without a word to the peer: it is put in (or kept in) repair
/// mode, in which closing sends neither FIN nor RST. The service address must already be gone
/// from this host (or its packets dropped), or the host's kernel answers the peer's next
/// segment with a RST once the socket is gone.
pub fn abandon(sock: TcpStream) -> Result<(), TcpRepairError> {
    set_int(
        sock.as_fd(),
        libc::TCP_REPAIR,
        sys::TCP_REPAIR_ON,
        Step::RepairOn,
    )?;
    drop(sock);
    Ok(())
}

/// Returns a checkpointed socket that was kept open to normal operation (an aborted move on
/// the source, socket never closed): leaves repair mode, which also sends a window probe that
/// makes the peer acknowledge at once.
pub fn resume(sock: &TcpStream) -> Result<(), TcpRepairError> {
    set_int(
        sock.as_fd(),
        libc::TCP_REPAIR_QUEUE,
        sys::TCP_NO_QUEUE,
        Step::SelectQueue,
    )?;
    set_int(
        sock.as_fd(),
        libc::TCP_REPAIR,
        sys::TCP_REPAIR_OFF,
        Step::RepairOff,
    )
}

/// Recreates the checkpointed connection in the calling thread's network namespace and returns
/// it in normal mode, ready for I/O. Sends no SYN; the peer sees at most a window probe and
/// retransmissions of what it had not acknowledged.
///
/// The socket is made with `IP_TRANSPARENT`, so it can be restored *before* this host owns the
/// local address: restore, then add the address, then [`super::announce`] it. The old socket
/// with the same addresses must be closed first (on the source: [`abandon`]). On error nothing
/// is left behind (the half-made socket is closed while still in repair mode).
pub fn restore(cp: &Checkpoint) -> Result<TcpStream, TcpRepairError> {
    restore_with(cp, &RestoreOptions::default())
}

/// Connects a socket in repair mode (no SYN is sent). Restored on the host it was abandoned
/// on (an aborted move), the old socket's 4-tuple was seen still hashed for a moment after
/// its close (`EADDRNOTAVAIL`, 1 run in 4 under load): retried for up to 100 ms.
fn connect_repaired(fd: BorrowedFd<'_>, remote: &SocketAddr) -> Result<(), TcpRepairError> {
    let mut tries = 0;
    loop {
        match sys::connect(fd, remote) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            other => {
                if tries > 0 {
                    tracing::debug!(tries, "the old connection's 4-tuple was still in use");
                }
                return other.map_err(TcpRepairError::sys(Step::Connect));
            }
        }
    }
}

/// Choices of [`restore_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Queue the checkpoint's sent-but-unacknowledged bytes as never sent, so they go out at
    /// once instead of after the restored socket's first retransmission timeout (1 s: the
    /// round-trip estimate is not part of the state `TCP_REPAIR` restores). The peer discards
    /// what it already had. The default (`false`) is CRIU's: restored as sent, so a peer's
    /// acknowledgement of them is accepted at once (the window probe sent when repair mode ends
    /// draws one), and only bytes really lost wait for the timer.
    pub resend_unacked: bool,
}

/// [`restore`] with options.
pub fn restore_with(
    cp: &Checkpoint,
    options: &RestoreOptions,
) -> Result<TcpStream, TcpRepairError> {
    cp.validate()?;
    let owned: OwnedFd = sys::tcp_socket(&cp.local).map_err(TcpRepairError::sys(Step::Socket))?;
    let fd = owned.as_fd();
    set_int(fd, libc::TCP_REPAIR, sys::TCP_REPAIR_ON, Step::RepairOn)?;
    sys::set_transparent(fd, &cp.local).map_err(TcpRepairError::sys(Step::Transparent))?;

    // Queue sequence numbers go in before connect: connect in repair mode takes them as is.
    let recv_start = cp.recv_seq.wrapping_sub(len_of(cp.recv_queue.len()));
    set_queue_seq(fd, sys::TCP_RECV_QUEUE, recv_start)?;
    set_queue_seq(fd, sys::TCP_SEND_QUEUE, cp.send_una())?;
    select_queue(fd, sys::TCP_NO_QUEUE)?;

    sys::bind(fd, &cp.local).map_err(TcpRepairError::sys(Step::Bind))?;
    connect_repaired(fd, &cp.remote)?;

    let mut opts = vec![TcpRepairOpt {
        opt_code: sys::TCPOPT_MSS,
        opt_val: cp.mss,
    }];
    if let Some(ws) = cp.window_scale {
        opts.push(TcpRepairOpt {
            opt_code: sys::TCPOPT_WINDOW,
            opt_val: u32::from(ws.snd) | (u32::from(ws.rcv) << 16),
        });
    }
    if cp.timestamps {
        opts.push(TcpRepairOpt {
            opt_code: sys::TCPOPT_TIMESTAMP,
            opt_val: 0,
        });
    }
    if cp.sack {
        opts.push(TcpRepairOpt {
            opt_code: sys::TCPOPT_SACK_PERM,
            opt_val: 0,
        });
    }
    sys::set_opt_slice(fd, libc::SOL_TCP, libc::TCP_REPAIR_OPTIONS, &opts)
        .map_err(TcpRepairError::sys(Step::SetOptions))?;
    if cp.timestamps {
        sys::set_opt(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP, &cp.timestamp)
            .map_err(TcpRepairError::sys(Step::Timestamp))?;
    }

    ensure_buffers(fd, cp)?;
    select_queue(fd, sys::TCP_RECV_QUEUE)?;
    sys::send_all(fd, &cp.recv_queue).map_err(TcpRepairError::sys(Step::RefillRecvQueue))?;
    let (as_sent, unsent): (&[u8], Vec<u8>) = if options.resend_unacked {
        (&[], [cp.send_unacked.as_slice(), &cp.send_unsent].concat())
    } else {
        (&cp.send_unacked, cp.send_unsent.clone())
    };
    select_queue(fd, sys::TCP_SEND_QUEUE)?;
    sys::send_all(fd, as_sent).map_err(TcpRepairError::sys(Step::RefillSendQueue))?;
    select_queue(fd, sys::TCP_NO_QUEUE)?;

    // After the queues: the kernel checks the window against the restored rcv_nxt.
    let w = TcpRepairWindow {
        snd_wl1: cp.window.snd_wl1,
        snd_wnd: cp.window.snd_wnd,
        max_window: cp.window.max_window,
        rcv_wnd: cp.window.rcv_wnd,
        rcv_wup: cp.window.rcv_wup,
    };
    sys::set_opt(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &w)
        .map_err(TcpRepairError::sys(Step::SetWindow))?;

    set_int(fd, libc::TCP_REPAIR, sys::TCP_REPAIR_OFF, Step::RepairOff)?;
    if let Err(e) = sys::send_all(fd, &unsent) {
        // Back in repair mode so that dropping the socket stays silent.
        let _ = set_int(fd, libc::TCP_REPAIR, sys::TCP_REPAIR_ON, Step::RepairOn);
        return Err(TcpRepairError::sys(Step::SendUnsent)(e));
    }
    tracing::debug!(local = %cp.local, remote = %cp.remote, "TCP connection restored");
    Ok(TcpStream::from(owned))
}
