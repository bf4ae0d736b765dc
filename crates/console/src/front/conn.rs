//! A viewer's byte pipe: a TCP socket (direct and transparent modes) or a resumable session
//! from the gateway (gateway mode, `gateway::pipe::Pipe`). The viewer tasks read and write
//! either the same way; only a freeze tells them apart (a socket is passed on or
//! checkpointed, a session's state is exported).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use gateway::pipe::Pipe;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A viewer's connection.
#[derive(Debug)]
pub enum Conn {
    /// A TCP socket.
    Tcp(TcpStream),
    /// A resumable session through the gateway.
    Gateway(Pipe),
}

/// A connection's read half.
#[derive(Debug)]
pub enum ConnRead {
    /// Of a TCP socket.
    Tcp(OwnedReadHalf),
    /// Of a resumable session.
    Gateway(ReadHalf<Pipe>),
}

/// A connection's write half.
#[derive(Debug)]
pub enum ConnWrite {
    /// Of a TCP socket.
    Tcp(OwnedWriteHalf),
    /// Of a resumable session.
    Gateway(WriteHalf<Pipe>),
}

impl Conn {
    /// Splits the connection for the reader and writer tasks.
    pub fn split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Tcp(s) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (ConnRead::Tcp(r), ConnWrite::Tcp(w))
            }
            Conn::Gateway(p) => {
                let (r, w) = tokio::io::split(p);
                (ConnRead::Gateway(r), ConnWrite::Gateway(w))
            }
        }
    }

    /// Who is at the other end, for logs.
    pub fn peer(&self) -> String {
        match self {
            Conn::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
            Conn::Gateway(p) => {
                let id = p.session();
                format!(
                    "gateway session {:02x}{:02x}{:02x}{:02x}",
                    id[0], id[1], id[2], id[3]
                )
            }
        }
    }
}

/// The two halves of one connection, put back together.
pub enum Reunited {
    /// A TCP socket, to pass on.
    Tcp(std::net::TcpStream),
    /// A resumable session, to export.
    Gateway(Pipe),
}

/// Puts a connection's halves back together; `None` if they are not two halves of one
/// connection or the socket cannot leave tokio.
pub fn reunite(read: ConnRead, write: ConnWrite) -> Option<Reunited> {
    match (read, write) {
        (ConnRead::Tcp(r), ConnWrite::Tcp(w)) => r
            .reunite(w)
            .ok()
            .and_then(|s| s.into_std().ok())
            .map(Reunited::Tcp),
        (ConnRead::Gateway(r), ConnWrite::Gateway(w)) => {
            r.is_pair_of(&w).then(|| Reunited::Gateway(r.unsplit(w)))
        }
        _ => None,
    }
}

/// Implements `AsyncRead` for a connection enum by passing each call to its variant's stream.
macro_rules! delegate_read {
    ($conn:ident) => {
        impl AsyncRead for $conn {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    $conn::Gateway(p) => Pin::new(p).poll_read(cx, buf),
                }
            }
        }
    };
}

/// Implements `AsyncWrite` for a connection enum by passing each call to its variant's stream.
macro_rules! delegate_write {
    ($conn:ident) => {
        impl AsyncWrite for $conn {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $conn::Tcp(s) => Pin::new(s).poll_write(cx, data),
                    $conn::Gateway(p) => Pin::new(p).poll_write(cx, data),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $conn::Tcp(s) => Pin::new(s).poll_flush(cx),
                    $conn::Gateway(p) => Pin::new(p).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    $conn::Gateway(p) => Pin::new(p).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Conn);
delegate_write!(Conn);
delegate_read!(ConnRead);
delegate_write!(ConnWrite);
