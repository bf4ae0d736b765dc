//! The control socket's server side: one task accepts, one task per client parses its line
//! ([`crate::control::Command`]) and either answers itself (`version`, `wait`) or asks the
//! console's loop, which owns the state.

use std::net::SocketAddr;
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

/// Accepts control clients until the console ends.
pub(super) fn serve(
    listener: UnixListener,
    console: mpsc::Sender<Request>,
    phase: watch::Receiver<&'static str>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(client(sock, console.clone(), phase.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn client(
    sock: UnixStream,
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
