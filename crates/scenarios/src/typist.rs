//! A scripted viewer that types like a person: one key every `interval`, through a VNC
//! connection; when the connection drops, it waits `reconnect_delay` (a user with a bookmark,
//! or noVNC's automatic reconnect) and connects again, wherever `connect` says the console is.
//!
//! ```text
//!  Connected ──key every interval──> Connected
//!      │ read or write fails (the server went away)
//!      v
//!  Disconnected ──keys typed here go nowhere──> after reconnect_delay: connect() ──> Connected
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use rfb::{ClientConfig, ClientMessage};
use tokio::net::TcpStream;
use tokio::sync::watch;
use vnc::client::{ClientReader, ClientWriter, Setup};

/// How the typist types.
#[derive(Debug, Clone, Copy)]
pub struct TypistConfig {
    /// Time between two keys.
    pub interval: Duration,
    /// How long after a dropped connection the typist connects again.
    pub reconnect_delay: Duration,
}

/// What happened to one key the typist typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFate {
    /// Written (press and release) to the connection with this index.
    Sent {
        /// Index into [`TypistLog::connections`].
        connection: usize,
    },
    /// Typed while disconnected: it went nowhere.
    Unsent,
}

/// One key typed.
#[derive(Debug, Clone, Copy)]
pub struct TypedKey {
    /// When it was typed.
    pub at: Instant,
    /// Its X keysym.
    pub keysym: u32,
    /// Where it went.
    pub fate: KeyFate,
}

/// One connection the typist made.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// When the handshake completed.
    pub connected_at: Instant,
    /// When the typist noticed it had dropped (`None`: still up when the typist stopped).
    pub dropped_at: Option<Instant>,
}

/// Everything the typist did.
#[derive(Debug, Clone, Default)]
pub struct TypistLog {
    /// Every key, in the order typed.
    pub keys: Vec<TypedKey>,
    /// Every connection, in order.
    pub connections: Vec<Connection>,
}

impl TypistLog {
    /// Keys written to some connection.
    pub fn sent(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| matches!(k.fate, KeyFate::Sent { .. }))
            .count()
    }

    /// Keys typed while disconnected.
    pub fn unsent(&self) -> usize {
        self.keys.len() - self.sent()
    }
}

/// The key typed `n`-th: `a` to `z`, round and round, so the guest's echo shows progress.
pub fn keysym_of(n: usize) -> u32 {
    const LETTERS: u32 = 26;
    u32::from(b'a') + u32::try_from(n).map_or(0, |n| n % LETTERS)
}

/// RFB client settings of a plain viewer: security None, RFB 3.8.
pub fn plain_client_config() -> ClientConfig {
    ClientConfig::no_auth()
}

type Halves = (ClientReader<TcpStream>, ClientWriter<TcpStream>);

/// Types until `stop` turns true. `connect` opens a TCP connection to wherever the console is
/// now (it is called again after each drop).
pub async fn type_until<C, F>(
    config: TypistConfig,
    mut connect: C,
    mut stop: watch::Receiver<bool>,
) -> TypistLog
where
    C: FnMut() -> F,
    F: Future<Output = std::io::Result<TcpStream>>,
{
    let mut log = TypistLog::default();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link: Option<Halves> = open(&mut connect, &mut log).await;
    let mut disconnected_since = Instant::now();
    loop {
        let reading = async {
            match link.as_mut() {
                Some((reader, _)) => reader.read_message().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            Err(_) = reading => {
                drop_link(&mut link, &mut log);
                disconnected_since = Instant::now();
            }
            _ = ticker.tick() => {
                if link.is_none() && disconnected_since.elapsed() >= config.reconnect_delay {
                    link = open(&mut connect, &mut log).await;
                }
                let n = log.keys.len();
                let keysym = keysym_of(n);
                let at = Instant::now();
                let fate = match link.as_mut() {
                    Some((_, writer)) => {
                        let press = ClientMessage::KeyEvent { down: true, keysym };
                        let release = ClientMessage::KeyEvent { down: false, keysym };
                        match writer.send_all(&[press, release]).await {
                            Ok(()) => KeyFate::Sent { connection: log.connections.len() - 1 },
                            Err(_) => KeyFate::Unsent,
                        }
                    }
                    None => KeyFate::Unsent,
                };
                log.keys.push(TypedKey { at, keysym, fate });
                if fate == KeyFate::Unsent && link.is_some() {
                    drop_link(&mut link, &mut log);
                    disconnected_since = Instant::now();
                }
            }
        }
    }
    log
}

async fn open<C, F>(connect: &mut C, log: &mut TypistLog) -> Option<Halves>
where
    C: FnMut() -> F,
    F: Future<Output = std::io::Result<TcpStream>>,
{
    let stream = connect().await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (_, reader, writer) =
        vnc::client::connect(stream, plain_client_config(), &Setup::default())
            .await
            .ok()?;
    log.connections.push(Connection {
        connected_at: Instant::now(),
        dropped_at: None,
    });
    Some((reader, writer))
}

fn drop_link(link: &mut Option<Halves>, log: &mut TypistLog) {
    *link = None;
    if let Some(last) = log.connections.last_mut() {
        last.dropped_at.get_or_insert_with(Instant::now);
    }
}

/// A typist's connection opened from inside a test host (its network namespace).
pub async fn connect_from(
    host: &testbed::hosts::Host,
    addr: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    let host = host.clone();
    let std_stream = tokio::task::spawn_blocking(move || {
        host.run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .map_err(std::io::Error::other)?
    })
    .await
    .map_err(std::io::Error::other)??;
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}
