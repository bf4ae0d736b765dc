//! A serial viewer (`dmore serial attach`): a byte stream between a terminal (or any reader
//! and writer) and a console's serial lane, resumed across reconnections so that a console
//! that moved loses or doubles no byte ([`crate::serial::Resume`]).
//!
//! ```text
//!  input ──typed──▶ Resume ──▶ socket ──▶ console        connect: header ─▶ Resume::connected
//!  output ◀──new bytes── Resume ◀── socket ◀── console   (skip what was seen, resend the rest)
//! ```

use crate::serial::{Header, HeaderError, Resume, ResumeError, HEADER_MAX};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How long one TCP connection attempt may take (a service address on the move answers no SYN).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections one attachment makes at most (each reconnection is one).
const MAX_CONNECTIONS: u64 = 10_000;

/// Where the console serves its serial lane.
#[derive(Debug, Clone)]
pub enum Target {
    /// Its `--serial-attach` unix socket.
    Unix(PathBuf),
    /// Its `--serial-listen` TCP address.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Target, Self::Err> {
        Ok(match s.parse() {
            Ok(addr) => Target::Tcp(addr),
            Err(_) => Target::Unix(PathBuf::from(s)),
        })
    }
}

/// Why attaching ended with a fault.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The console could not be reached (within the reconnect time, if any).
    #[error("cannot reach the console's serial lane (at {target:?})")]
    Connect {
        /// Where, if the caller said.
        target: Option<Target>,
        /// Why (the last attempt).
        #[source]
        source: std::io::Error,
    },
    /// The console's first line is not a serial header.
    #[error("the console's serial header")]
    Header(#[from] HeaderError),
    /// The session is not this viewer's to resume.
    #[error("resuming")]
    Resume(#[from] ResumeError),
}

/// What one attachment saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Connections made (1 + reconnections).
    pub connections: u64,
    /// Output bytes the console no longer had at a reconnection.
    pub lost: u64,
    /// Typed bytes sent again after a reconnection.
    pub resent: u64,
}

/// Copies `input` to the console at `target` and the console's output to `output` until
/// `input` ends and the console closes, or `output` fails. With `reconnect`, a lost
/// connection is made again (tried for that long) and resumed.
pub async fn attach<I, O>(
    target: &Target,
    input: I,
    output: O,
    reconnect: Option<Duration>,
) -> Result<AttachReport, AttachError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    attach_with(|| connect_once(target), input, output, reconnect)
        .await
        .map_err(|e| match e {
            AttachError::Connect { source, .. } => AttachError::Connect {
                target: Some(target.clone()),
                source,
            },
            e => e,
        })
}

/// [`attach`] with connections made by `connect` (e.g. from another network namespace).
pub async fn attach_with<C, F, S, I, O>(
    mut connect: C,
    mut input: I,
    mut output: O,
    reconnect: Option<Duration>,
) -> Result<AttachReport, AttachError>
where
    C: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let mut resume = Resume::new();
    let mut report = AttachReport::default();
    let mut input_open = true;
    let mut buf = vec![0u8; 4096];
    let mut typed = vec![0u8; 4096];
    loop {
        let mut stream = retry(&mut connect, reconnect).await?;
        report.connections += 1;
        let (header, rest) = match read_header(&mut stream).await {
            Ok(h) => h,
            // A console that closed before its header (it was freezing): try again.
            Err(_) if reconnect.is_some() && report.connections < MAX_CONNECTIONS => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let r = resume.connected(header)?;
        report.lost += r.lost;
        report.resent += r.resend.len() as u64;
        if r.lost > 0 {
            tracing::warn!(lost = r.lost, "serial output lost while disconnected");
        }
        let new = resume.output(&rest);
        if output.write_all(new).await.is_err() || output.flush().await.is_err() {
            return Ok(report);
        }
        if stream.write_all(&r.resend).await.is_err() {
            continue;
        }
        loop {
            tokio::select! {
                n = input.read(&mut typed), if input_open => match n {
                    Ok(0) | Err(_) => input_open = false,
                    Ok(n) => {
                        resume.typed(&typed[..n]);
                        if stream.write_all(&typed[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                n = stream.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let new = resume.output(&buf[..n]);
                        if output.write_all(new).await.is_err() || output.flush().await.is_err() {
                            return Ok(report);
                        }
                    }
                },
            }
        }
        if reconnect.is_none() {
            return Ok(report);
        }
        tracing::info!("serial connection lost: reconnecting");
    }
}

/// A byte stream to the console, either kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection attempt to `target`.
async fn connect_once(target: &Target) -> std::io::Result<Box<dyn Stream>> {
    match target {
        Target::Unix(p) => Ok(Box::new(tokio::net::UnixStream::connect(p).await?)),
        Target::Tcp(a) => {
            let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
    }
}

/// Connects, trying again for `reconnect` if given.
async fn retry<C, F, S>(connect: &mut C, reconnect: Option<Duration>) -> Result<S, AttachError>
where
    C: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<S>>,
{
    let deadline = Instant::now() + reconnect.unwrap_or_default();
    loop {
        match connect().await {
            Ok(s) => return Ok(s),
            Err(source) if Instant::now() >= deadline => {
                return Err(AttachError::Connect {
                    target: None,
                    source,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The header, and the output bytes that came with it.
async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Header, Vec<u8>), AttachError> {
    let mut got = Vec::with_capacity(HEADER_MAX);
    let mut buf = [0u8; 4096];
    loop {
        if let Some((h, used)) = Header::parse(&got)? {
            return Ok((h, got.split_off(used)));
        }
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return Err(HeaderError::Malformed(String::from_utf8_lossy(&got).into_owned()).into());
        }
        got.extend_from_slice(&buf[..n]);
    }
}
