//! The control socket's server side: one task accepts, one task per client parses its line
//! ([`crate::control::Command`]) and either answers itself (`version`, `wait`) or asks the
//! console's loop, which owns the state.
//!
//! **Who may ask.** The socket file is the console user's alone (mode 0600, made so before it
//! is bound, and removed when the console ends), and every client's credentials are checked
//! (`SO_PEERCRED`): the console's own user, or root, may ask; `freeze`, which hands over the
//! viewers' live sockets, only the console's own user.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::control::{self, Command, CONTROL_VERSION, MAX_COMMAND};

/// Longest a `prepare` waits for the destination console to answer.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request the console's loop answers.
pub(super) enum Request {
    /// `status`: the reply line.
    Status(oneshot::Sender<String>),
    /// `freeze`: hand over on this (blocking) socket.
    Freeze(std::os::unix::net::UnixStream),
    /// `prepare ADDR`: answered once connected (or refused).
    Prepare(SocketAddr, oneshot::Sender<String>),
    /// `migration-started` (true) / `migration-ended` (false).
    Migration(bool, oneshot::Sender<String>),
}

/// The bound control socket: its accept task, and the file, removed when this is dropped.
pub(super) struct ControlSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "control socket not removed");
        }
    }
}

/// Binds the control socket at `path`, readable and writable by this user alone. A socket
/// file nobody answers on (a console that was killed) is replaced; a live one is not.
pub(super) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        tracing::info!(path = %path.display(), "replacing a stale control socket");
        std::fs::remove_file(path)?;
    }
    // Bound in a private directory beside it, then renamed into place: the socket is never
    // reachable with wider permissions than 0600.
    let private = tempfile::Builder::new()
        .prefix(".dmore-control-")
        .tempdir_in(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
    let staged = private.path().join("control.sock");
    let listener = UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another console answers on this control socket",
        ));
    }
    std::fs::rename(&staged, path)?;
    Ok(listener)
}

/// Accepts control clients until the returned socket is dropped.
pub(super) fn serve(
    listener: UnixListener,
    path: PathBuf,
    console: mpsc::Sender<Request>,
    phase: watch::Receiver<&'static str>,
) -> ControlSocket {
    let owner = nix::unistd::geteuid().as_raw();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    let caller = match sock.peer_cred() {
                        Ok(cred) => cred.uid(),
                        Err(e) => {
                            tracing::warn!(error = %e, "control client without credentials: refused");
                            continue;
                        }
                    };
                    if caller != owner && caller != 0 {
                        tracing::warn!(caller, "control client of another user: refused");
                        continue;
                    }
                    let may_freeze = caller == owner;
                    tokio::spawn(client(sock, may_freeze, console.clone(), phase.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    ControlSocket { path, task }
}

async fn client(
    sock: UnixStream,
    may_freeze: bool,
    console: mpsc::Sender<Request>,
    mut phase: watch::Receiver<&'static str>,
) {
    let mut lines = BufReader::new(sock).take(MAX_COMMAND as u64);
    let mut line = String::new();
    if lines.read_line(&mut line).await.is_err() {
        return;
    }
    let mut sock = lines.into_inner().into_inner();
    let command = match Command::parse(line.trim()) {
        Ok(c) => c,
        Err(e) => return reply(&mut sock, control::failed(&e.to_string(), empty())).await,
    };
    let ask = |make: fn(oneshot::Sender<String>) -> Request| {
        let console = console.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            if console.send(make(tx)).await.is_err() {
                return control::failed("the console is stopping", empty());
            }
            rx.await
                .unwrap_or_else(|_| control::failed("the console is stopping", empty()))
        }
    };
    let answer = match command {
        Command::Version => control::ok(serde_json::json!({
            "control": "dmore-console",
            "version": CONTROL_VERSION,
        })),
        Command::Status => ask(Request::Status).await,
        Command::MigrationStarted => ask(|tx| Request::Migration(true, tx)).await,
        Command::MigrationEnded => ask(|tx| Request::Migration(false, tx)).await,
        Command::Prepare(addr) => {
            let (tx, rx) = oneshot::channel();
            if console.send(Request::Prepare(addr, tx)).await.is_err() {
                control::failed("the console is stopping", empty())
            } else {
                match tokio::time::timeout(PREPARE_TIMEOUT, rx).await {
                    Ok(Ok(line)) => line,
                    Ok(Err(_)) => control::failed("the console is stopping", empty()),
                    Err(_) => control::failed(
                        &format!(
                            "the destination console at {addr} did not answer within 10 s: is \
                             it running with --incoming {addr}, and is the port reachable?"
                        ),
                        empty(),
                    ),
                }
            }
        }
        Command::Wait {
            phase: wanted,
            timeout,
        } => {
            let reached = tokio::time::timeout(timeout, phase.wait_for(|p| *p == wanted))
                .await
                .is_ok_and(|r| r.is_ok());
            let now = *phase.borrow();
            match reached {
                true => control::ok(serde_json::json!({ "phase": now })),
                false => control::failed(
                    &format!(
                        "phase {wanted} not reached within {} ms",
                        timeout.as_millis()
                    ),
                    serde_json::json!({ "phase": now }),
                ),
            }
        }
        Command::Freeze if !may_freeze => control::failed(
            "freeze hands over the viewers' connections: only the console's own user may ask",
            empty(),
        ),
        Command::Freeze => {
            match sock
                .into_std()
                .and_then(|s| s.set_nonblocking(false).map(|()| s))
            {
                Ok(s) => {
                    let _ = console.send(Request::Freeze(s)).await;
                }
                Err(e) => tracing::warn!(error = %e, "control socket unusable for a hand-over"),
            }
            return;
        }
    };
    reply(&mut sock, answer).await;
}

async fn reply(sock: &mut UnixStream, line: String) {
    let _ = sock.write_all(format!("{line}\n").as_bytes()).await;
}

/// An empty JSON object: replies with nothing but `ok` and `error`.
fn empty() -> serde_json::Value {
    serde_json::json!({})
}
