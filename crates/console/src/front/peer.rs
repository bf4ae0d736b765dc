//! The connection between a source and a destination console: one task per TCP connection
//! runs the [`migrate::protocol::Codec`] (Hellos, HMAC, framing) and reports to the hub.
//!
//! ```text
//!  hub ──Message──▶ connection task ──frames──▶ TCP ──▶ the other console
//!  hub ◀─PeerEvent─ connection task ◀─frames─── TCP ◀──
//! ```
//!
//! A source connects (retrying until the destination answers or the hub says stop); a
//! destination accepts, and a newer connection replaces an older one (a source that lost its
//! connection reconnects). Every event carries its connection's generation, so the hub ignores
//! what a replaced connection still reports.

use std::net::SocketAddr;
use std::time::Duration;

use migrate::protocol::{Codec, Config, Message, ProtocolError, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a source waits between attempts to reach its destination console.
const RETRY: Duration = Duration::from_millis(50);
/// Longest a TCP connect to a possible destination may take before the next is tried (a host
/// that is down answers nothing).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest the Hellos may take on a fresh connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the consoles share: the pre-shared key and the VM's id.
#[derive(Clone)]
pub struct PeerKey {
    /// The pre-shared key (HMAC); the same on both hosts.
    pub psk: Vec<u8>,
    /// The VM whose console moves; both consoles must name the same one.
    pub vm_id: String,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerKey")
            .field("vm_id", &self.vm_id)
            .finish_non_exhaustive()
    }
}

/// Why a connection to the other console failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The socket failed.
    #[error("connection to the other console failed")]
    Io(#[from] std::io::Error),
    /// The other side broke the protocol (bad key, another VM, malformed or out-of-order
    /// frames, no common version).
    #[error("the other console's messages were refused")]
    Protocol(#[from] ProtocolError),
    /// The other side closed the connection.
    #[error("closed by the other console{}", if *.during_hellos { " during the Hellos" } else { "" })]
    Closed {
        /// Before the Hellos completed.
        during_hellos: bool,
    },
    /// No Hello within [`HELLO_TIMEOUT`].
    #[error("no Hello within {} s", HELLO_TIMEOUT.as_secs())]
    HelloTimeout,
    /// A message other than a Hello came first.
    #[error("{0} before the Hellos completed")]
    BeforeHellos(&'static str),
}

/// What a connection task reports.
#[derive(Debug)]
pub(super) enum PeerEvent {
    /// Hellos exchanged: messages may be sent.
    Connected,
    /// A message from the other console.
    Received(Message),
    /// The connection ended (closed, failed, or refused by the protocol).
    Lost(PeerError),
    /// An attempt to reach the destination console failed during the Hellos; the source
    /// tries again.
    Refused(PeerError),
}

/// One live (or connecting) connection, as the hub holds it.
pub(super) struct Peer {
    generation: u64,
    to: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

impl Peer {
    /// Connects to a destination console at one of `addrs`, tried in turn (each attempt
    /// bounded by [`CONNECT_TIMEOUT`]), until one answers and the Hellos are exchanged (the
    /// phase machines' `Connect`: "until it answers"). Only the console of this VM that waits
    /// for it (`--incoming`) completes the Hellos: a closed port, another VM's console or a
    /// wrong key is skipped. A refused attempt (wrong key, another VM, a console that died
    /// during the Hellos) is reported as [`PeerEvent::Refused`] and retried.
    pub(super) fn connect(
        addrs: Vec<SocketAddr>,
        key: PeerKey,
        generation: u64,
        events: mpsc::UnboundedSender<(u64, PeerEvent)>,
    ) -> Peer {
        let (to, from_hub) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            for addr in addrs.iter().cycle() {
                let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr));
                let mut stream = match attempt.await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "destination console not reachable yet");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "destination console: no answer to the connect");
                        continue;
                    }
                };
                match handshake(&mut stream, Role::Source, key.clone()).await {
                    Ok(codec) => {
                        tracing::info!(%addr, "connected to the destination console");
                        return serve(stream, codec, generation, &events, from_hub).await;
                    }
                    Err(why) => {
                        tracing::debug!(%addr, error = %why, "not this VM's destination console");
                        let _ = events.send((generation, PeerEvent::Refused(why)));
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
        Peer {
            generation,
            to,
            task,
        }
    }

    /// Serves a connection a source console made to this destination.
    pub(super) fn accepted(
        stream: TcpStream,
        key: PeerKey,
        generation: u64,
        events: mpsc::UnboundedSender<(u64, PeerEvent)>,
    ) -> Peer {
        let (to, from_hub) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream = stream;
            match handshake(&mut stream, Role::Destination, key).await {
                Ok(codec) => serve(stream, codec, generation, &events, from_hub).await,
                Err(why) => {
                    let _ = events.send((generation, PeerEvent::Lost(why)));
                }
            }
        });
        Peer {
            generation,
            to,
            task,
        }
    }

    /// The generation its events carry.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Where messages for this connection are queued, for an answer given later.
    pub(super) fn sender(&self) -> mpsc::UnboundedSender<Message> {
        self.to.clone()
    }

    /// Queues a message (dropped if the connection has ended: its `Lost` is on the way).
    pub(super) fn send(&self, msg: Message) {
        let _ = self.to.send(msg);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a connection whose Hellos are exchanged until it ends.
async fn serve(
    mut stream: TcpStream,
    mut codec: Codec,
    generation: u64,
    events: &mpsc::UnboundedSender<(u64, PeerEvent)>,
    mut from_hub: mpsc::UnboundedReceiver<Message>,
) {
    let report = |e: PeerEvent| {
        let _ = events.send((generation, e));
    };
    report(PeerEvent::Connected);
    if let Err(e) = drain(&mut codec, &report) {
        return report(PeerEvent::Lost(e.into()));
    }
    let mut buf = vec![0u8; 64 << 10];
    let why = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => break match codec.end_of_stream() {
                    Ok(()) => PeerError::Closed { during_hellos: false },
                    Err(e) => e.into(),
                },
                Ok(n) => {
                    codec.feed(buf.get(..n).unwrap_or_default());
                    if let Err(e) = drain(&mut codec, &report) {
                        break e.into();
                    }
                }
                Err(e) => break e.into(),
            },
            msg = from_hub.recv() => {
                let Some(msg) = msg else { return };
                let written = match codec.encode(&msg) {
                    Ok(bytes) => stream.write_all(&bytes).await.map_err(PeerError::from),
                    Err(e) => Err(e.into()),
                };
                if let Err(why) = written {
                    break why;
                }
            }
        }
    };
    report(PeerEvent::Lost(why));
}

/// Exchanges Hellos; the codec is then ready for messages.
async fn handshake(stream: &mut TcpStream, role: Role, key: PeerKey) -> Result<Codec, PeerError> {
    let _ = stream.set_nodelay(true);
    let nonce: [u8; migrate::protocol::NONCE_LEN] = rand::random();
    let mut codec = Codec::new(Config::new(role, key.psk, key.vm_id), nonce)?;
    let hello = codec.start()?;
    let exchange = async {
        stream.write_all(&hello).await?;
        let mut buf = [0u8; 4096];
        while codec.version().is_none() {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(PeerError::Closed {
                    during_hellos: true,
                });
            }
            codec.feed(buf.get(..n).unwrap_or_default());
            // The peer's Hello is checked and consumed here; what follows it stays buffered.
            while codec.version().is_none() {
                match codec.poll_message()? {
                    Some(Message::Hello(_)) => {}
                    Some(m) => return Err(PeerError::BeforeHellos(m.name())),
                    None => break,
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(HELLO_TIMEOUT, exchange)
        .await
        .map_err(|_| PeerError::HelloTimeout)??;
    Ok(codec)
}

fn drain(codec: &mut Codec, report: &impl Fn(PeerEvent)) -> Result<(), ProtocolError> {
    while let Some(m) = codec.poll_message()? {
        report(PeerEvent::Received(m));
    }
    Ok(())
}
