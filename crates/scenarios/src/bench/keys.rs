//! Key response: a viewer's KeyEvent until the guest's serial report of that key, straight to
//! QEMU's VNC and through the console, alternating so both see the same machine state.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use guest::report::Report;
use rfb::ClientMessage;
use testbed::qemu::Qemu;
use tokio::net::TcpStream;
use vnc::client::ClientWriter;

use super::screen::{connect, raw_setup};
use super::BenchError;
use crate::typist::keysym_of;

/// Time after a key's release report before the next key, so each key measures the path, as
/// for a person typing (≥ 30 ms per key), and not the journal's PS/2 pacing of bursts.
const KEY_GAP: Duration = Duration::from_millis(6);
/// Longest wait for one report (a guard against hanging, not a measurement).
const REPORT_DEADLINE: Duration = Duration::from_secs(10);

/// Key-press latencies, in the order typed.
#[derive(Debug, Clone, Default)]
pub struct KeyResults {
    /// Straight to QEMU's VNC (TCP display, same `key-delay-ms`).
    pub direct: Vec<Duration>,
    /// Through the console.
    pub console: Vec<Duration>,
}

/// A key-sending connection; its reader is drained by a task (aborted on drop).
pub(super) struct Typist {
    writer: ClientWriter<TcpStream>,
    drain: tokio::task::JoinHandle<()>,
}

impl Drop for Typist {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

impl Typist {
    pub(super) async fn connect(addr: SocketAddr) -> Result<Typist, BenchError> {
        let (_, mut reader, writer) = connect(addr, &raw_setup()).await?;
        let drain = tokio::spawn(async move { while reader.read_message().await.is_ok() {} });
        Ok(Typist { writer, drain })
    }

    pub(super) async fn press_release(&mut self, keysym: u32) -> Result<(), BenchError> {
        press_release(&mut self.writer, keysym).await
    }
}

/// Sends `keysym` pressed and released.
pub(super) async fn press_release(
    writer: &mut ClientWriter<TcpStream>,
    keysym: u32,
) -> Result<(), BenchError> {
    writer
        .send_all(&[
            ClientMessage::KeyEvent { down: true, keysym },
            ClientMessage::KeyEvent {
                down: false,
                keysym,
            },
        ])
        .await
        .map_err(BenchError::Vnc)
}

/// Sends `keys` keys, even ones straight to `direct`, odd ones through `console`, each only
/// once the guest reported the previous key's release.
pub async fn measure(
    vm: &mut Qemu,
    direct: SocketAddr,
    console: SocketAddr,
    keys: usize,
) -> Result<KeyResults, BenchError> {
    let mut lanes = [
        Typist::connect(direct).await?,
        Typist::connect(console).await?,
    ];
    let mut results = KeyResults::default();
    for n in 0..keys {
        let keysym = keysym_of(n);
        let code = char::from_u32(keysym)
            .and_then(guest::keymap::scancode)
            .map(u16::from)
            .ok_or(BenchError::NoScancode(keysym))?;
        let lane = n % 2;
        let sent = Instant::now();
        if let Some(typist) = lanes.get_mut(lane) {
            typist.press_release(keysym).await?;
        }
        let pressed = wait_key(vm, true, code).await?;
        wait_key(vm, false, code).await?;
        let took = pressed.saturating_duration_since(sent);
        if lane == 0 {
            results.direct.push(took);
        } else {
            results.console.push(took);
        }
        tokio::time::sleep(KEY_GAP).await;
    }
    Ok(results)
}

/// Waits for the report of `code` going `down` (or up); any other key is an error.
pub(super) async fn wait_key(vm: &mut Qemu, down: bool, code: u16) -> Result<Instant, BenchError> {
    loop {
        match vm.serial().next(REPORT_DEADLINE, "a key report").await? {
            Report::Key {
                down: d, code: c, ..
            } if d == down && c == code => return Ok(Instant::now()),
            Report::Key {
                down: d, code: c, ..
            } => {
                return Err(BenchError::UnexpectedKey {
                    expected: (down, code),
                    got: (d, c),
                })
            }
            _ => {}
        }
    }
}
