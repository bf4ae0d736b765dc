//! The gateway's web side (tokio), over TCP or TLS: the noVNC page's static files from a directory, and the
//! WebSocket (`/websockify`, subprotocol `binary`, as noVNC and websockify speak it) whose
//! binary messages carry a viewer's RFB bytes into its resumable session
//! ([`crate::dial::serve_viewer`]), after its token is checked; and a browser terminal's
//! WebSocket (`/serial`), whose bytes a caller-given [`SerialService`](crate::serial::SerialService) carries to the console's
//! serial lane.
//!
//! ```text
//!  GET /vnc.html, /core/rfb.js, ...     -> the file under the web root (read-only), or 404
//!  GET /websockify?token=T[&console=N]  -> 403 (wrong, expired or other console's token), or
//!                                          101 and the WebSocket ⇄ session to T's console
//!  GET /serial?token=T[&console=N]      -> 403 alike, or 101 and the WebSocket ⇄ SerialService
//! ```
//!
//! Tokens are read from the token file at each upgrade (so `dmore gateway token` needs no
//! channel to a running gateway) and never logged: the query is never logged at all.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::dial::{serve_viewer, Dial};
use crate::http::{self, Request};
use crate::serial::SerialService;
use crate::tokens::Tokens;

/// The WebSocket's path.
pub const WEBSOCKET_PATH: &str = "/websockify";
/// The browser terminal's WebSocket path (a console's serial lane).
pub const SERIAL_PATH: &str = "/serial";
/// The WebSocket subprotocol noVNC and websockify use for RFB bytes.
pub const SUBPROTOCOL: &str = "binary";
/// How long a browser may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered between the WebSocket and the session, each way.
const PIPE: usize = 64 * 1024;

/// What the web side serves.
#[derive(Debug, Clone)]
pub struct Web {
    /// The directory of static files (e.g. Debian's `/usr/share/novnc`), served read-only.
    pub root: PathBuf,
    /// The file `/` (and a path ending in `/`) names.
    pub index: String,
    /// The token file ([`crate::tokens`]), read at each upgrade.
    pub token_file: PathBuf,
    /// Each console's name and how to reach it.
    pub consoles: HashMap<String, Dial>,
    /// The consoles whose serial lane the browser terminal reaches, and what carries it.
    pub serial: Option<SerialLanes>,
}

/// The browser terminal's consoles ([`Web::serial`]).
#[derive(Clone)]
pub struct SerialLanes {
    /// The consoles' names (a token for another console is refused).
    pub consoles: HashSet<String>,
    /// What carries the bytes.
    pub service: SerialService,
}

impl std::fmt::Debug for SerialLanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLanes")
            .field("consoles", &self.consoles)
            .finish_non_exhaustive()
    }
}

/// Where an upgraded WebSocket goes.
enum Target<'a> {
    /// An RFB viewer's session.
    Viewer(&'a Dial),
    /// A console's serial lane.
    Serial(&'a SerialLanes, String),
}

/// A browser's connection: TCP, or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for S {}

/// Accepts browsers on `listener`, each connection on its own task, until the listener fails;
/// over TLS (https, wss) when given an acceptor ([`crate::tls::acceptor`]).
pub async fn serve_web(
    listener: TcpListener,
    web: Web,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let web = Arc::new(web);
    loop {
        let (conn, peer) = listener.accept().await?;
        // The RFB bytes are small and interactive (keys, small updates).
        let _ = conn.set_nodelay(true);
        let (web, tls) = (web.clone(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                None => serve_connection(conn, &web).await,
                Some(tls) => match tokio::time::timeout(HEAD_TIMEOUT, tls.accept(conn)).await {
                    Ok(Ok(conn)) => serve_connection(conn, &web).await,
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "web connection ended");
            }
        });
    }
}

/// Why a web connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Reading or writing the connection failed, or the head did not come in time.
    #[error("connection")]
    Io(#[from] std::io::Error),
    /// The request head was refused (answered 400).
    #[error("bad request")]
    Http(#[from] http::HttpError),
    /// The WebSocket failed.
    #[error("websocket")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The viewer's session ended other than by both ends closing.
    #[error("session")]
    Session(#[from] crate::GatewayError),
}

/// Serves one connection: one request.
async fn serve_connection<S: Conn>(mut conn: S, web: &Web) -> Result<(), WebError> {
    let mut buf = Vec::new();
    let end = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn, &mut buf)).await {
        Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        Ok(Err(WebError::Http(e))) => {
            conn.write_all(&http::empty_response("400 Bad Request"))
                .await?;
            return Err(e.into());
        }
        Ok(r) => r?,
    };
    let request = match Request::parse(&buf[..end]) {
        // Nothing may follow the head: no request here has a body, and a WebSocket client
        // waits for the 101 before it sends a frame.
        Ok(r) if end == buf.len() => r,
        _ => {
            conn.write_all(&http::empty_response("400 Bad Request"))
                .await?;
            return Ok(());
        }
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", WEBSOCKET_PATH | SERIAL_PATH) => websocket(conn, &request, web).await,
        ("GET" | "HEAD", _) => static_file(conn, &request, web).await,
        _ => {
            conn.write_all(&http::empty_response("405 Method Not Allowed"))
                .await?;
            Ok(())
        }
    }
}

/// Reads until the head's blank line; returns where it ends in `buf`.
async fn read_head<S: Conn>(conn: &mut S, buf: &mut Vec<u8>) -> Result<usize, WebError> {
    let mut chunk = [0; 2048];
    loop {
        if let Some(end) = http::head_end(buf)? {
            return Ok(end);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn static_file<S: Conn>(mut conn: S, request: &Request, web: &Web) -> Result<(), WebError> {
    let file = http::resolve(&web.root, &request.path, &web.index);
    let body = match &file {
        Some(path) => match tokio::fs::metadata(path).await {
            Ok(m) if m.is_file() => tokio::fs::read(path).await.ok(),
            _ => None,
        },
        None => None,
    };
    let (Some(path), Some(body)) = (file, body) else {
        tracing::debug!(path = %request.path, "404");
        conn.write_all(&http::empty_response("404 Not Found"))
            .await?;
        return Ok(());
    };
    let mut response = http::ok_head(http::content_type(&path), body.len() as u64);
    if request.method == "GET" {
        response.extend_from_slice(&body);
    }
    conn.write_all(&response).await?;
    conn.shutdown().await?;
    Ok(())
}

/// The token check, the upgrade, and the viewer's session (or the serial lane) relayed.
async fn websocket<S: Conn>(mut conn: S, request: &Request, web: &Web) -> Result<(), WebError> {
    let offered: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    let key = request.header("sec-websocket-key");
    let upgrade = request.header_lists("upgrade", "websocket")
        && request.header_lists("connection", "upgrade")
        && request.header("sec-websocket-version") == Some("13");
    let (Some(key), true) = (key, upgrade) else {
        conn.write_all(&http::empty_response("400 Bad Request"))
            .await?;
        return Ok(());
    };
    if !offered.is_empty() && !offered.contains(&SUBPROTOCOL) {
        conn.write_all(&http::empty_response("400 Bad Request"))
            .await?;
        return Ok(());
    }
    let Some(target) = authorize(request, web).await else {
        conn.write_all(&http::empty_response("403 Forbidden"))
            .await?;
        return Ok(());
    };
    let protocol = if offered.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")
    };
    let accept = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        derive_accept_key(key.as_bytes())
    );
    conn.write_all(accept.as_bytes()).await?;
    conn.flush().await?;
    let ws = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
    let (browser, far) = tokio::io::duplex(PIPE);
    match target {
        Target::Viewer(dial) => {
            let (pumped, served) = tokio::join!(pump(ws, browser), serve_viewer(far, dial));
            pumped?;
            served?;
        }
        Target::Serial(lanes, console) => {
            let (pumped, ()) =
                tokio::join!(pump(ws, browser), (lanes.service)(console, Box::new(far)));
            pumped?;
        }
    }
    Ok(())
}

/// Where the request's token leads on its path, if it opens a console there. A wrong,
/// expired or other console's token, an unreadable token file and a console this gateway does
/// not know (or whose serial lane it does not serve) are refused alike.
async fn authorize<'a>(request: &Request, web: &'a Web) -> Option<Target<'a>> {
    let tokens = match tokio::fs::read_to_string(&web.token_file).await {
        Ok(text) => match Tokens::parse(&text) {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::error!(file = %web.token_file.display(), error = %e, "token file");
                Tokens::default()
            }
        },
        Err(e) => {
            tracing::error!(file = %web.token_file.display(), error = %e, "token file");
            Tokens::default()
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = request.query_param("token").unwrap_or("");
    let console = request.query_param("console");
    match tokens.check(token, console, now) {
        Ok(grant) => {
            let target = if request.path == SERIAL_PATH {
                web.serial
                    .as_ref()
                    .filter(|lanes| lanes.consoles.contains(&grant.console))
                    .map(|lanes| Target::Serial(lanes, grant.console.clone()))
            } else {
                web.consoles.get(&grant.console).map(Target::Viewer)
            };
            if target.is_none() {
                tracing::warn!(console = %grant.console, path = %request.path, "a valid token for a console not configured here");
            }
            target
        }
        Err(_) => {
            tracing::info!("WebSocket refused: access denied");
            None
        }
    }
}

/// Carries binary messages into `io` and `io`'s bytes out as binary messages, until either
/// side ends; then closes the other.
async fn pump<S: Conn>(
    ws: WebSocketStream<S>,
    io: tokio::io::DuplexStream,
) -> Result<(), WebError> {
    let (mut sink, mut messages) = ws.split();
    let (mut from_session, mut to_session) = tokio::io::split(io);
    let mut buf = vec![0; PIPE];
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if to_session.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket itself; text is not RFB.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    tracing::debug!("a text message: the binary subprotocol carries bytes only");
                    break;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "WebSocket failed");
                    break;
                }
            },
            n = from_session.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => sink.send(Message::binary(buf[..n].to_vec())).await?,
            },
        }
    }
    // The session's side sees the end of the viewer's bytes.
    let _ = to_session.shutdown().await;
    Ok(())
}
