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

/// What a connection task reports.
#[derive(Debug)]
pub(super) enum PeerEvent {
    /// Hellos exchanged: messages may be sent.
    Connected,
    /// A message from the other console.
    Received(Message),
    /// The connection ended (closed, failed, or refused by the protocol).
    Lost(String),
    /// An attempt to reach the destination console failed during the Hellos; the source
    /// tries again.
    Refused(String),
}

/// One live (or connecting) connection, as the hub holds it.
pub(super) struct Peer {
    generation: u64,
    to: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

impl Peer {
    /// Connects to a destination console at `addr`, retrying until it answers and the Hellos
    /// are exchanged (the phase machines' `Connect`: "until it answers"). A refused attempt
    /// (wrong key, another VM, a console that died during the Hellos) is reported as
    /// [`PeerEvent::Refused`] and retried.
    pub(super) fn connect(
        addr: SocketAddr,
        key: PeerKey,
        generation: u64,
        events: mpsc::UnboundedSender<(u64, PeerEvent)>,
    ) -> Peer {
        let (to, from_hub) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let mut stream = match TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "destination console not reachable yet");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                match handshake(&mut stream, Role::Source, key.clone()).await {
                    Ok(codec) => {
                        return serve(stream, codec, generation, &events, from_hub).await;
                    }
                    Err(why) => {
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
        return report(PeerEvent::Lost(e.to_string()));
    }
    let mut buf = vec![0u8; 64 << 10];
    let why = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => break match codec.end_of_stream() {
                    Ok(()) => "closed by the other console".to_owned(),
                    Err(e) => e.to_string(),
                },
                Ok(n) => {
                    codec.feed(buf.get(..n).unwrap_or_default());
                    if let Err(e) = drain(&mut codec, &report) {
                        break e.to_string();
                    }
                }
                Err(e) => break e.to_string(),
            },
            msg = from_hub.recv() => {
                let Some(msg) = msg else { return };
                let written = match codec.encode(&msg) {
                    Ok(bytes) => stream.write_all(&bytes).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
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
async fn handshake(stream: &mut TcpStream, role: Role, key: PeerKey) -> Result<Codec, String> {
    let _ = stream.set_nodelay(true);
    let nonce: [u8; migrate::protocol::NONCE_LEN] = rand::random();
    let mut codec =
        Codec::new(Config::new(role, key.psk, key.vm_id), nonce).map_err(|e| e.to_string())?;
    let hello = codec.start().map_err(|e| e.to_string())?;
    let exchange = async {
        stream.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        while codec.version().is_none() {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed during the Hellos".to_owned());
            }
            codec.feed(buf.get(..n).unwrap_or_default());
            // The peer's Hello is checked and consumed here; what follows it stays buffered.
            while codec.version().is_none() {
                match codec.poll_message().map_err(|e| e.to_string())? {
                    Some(Message::Hello(_)) => {}
                    Some(m) => return Err(format!("{} before the Hellos completed", m.name())),
                    None => break,
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(HELLO_TIMEOUT, exchange)
        .await
        .map_err(|_| "no Hello within 5 s".to_owned())??;
    Ok(codec)
}

fn drain(codec: &mut Codec, report: &impl Fn(PeerEvent)) -> Result<(), ProtocolError> {
    while let Some(m) = codec.poll_message()? {
        report(PeerEvent::Received(m));
    }
    Ok(())
}
