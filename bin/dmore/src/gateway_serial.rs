//! The gateway's browser terminal (`dmore gateway serve --serial-console NAME=ADDR`): a
//! terminal's bytes carried to a console's serial lane by the serial lane's own resuming
//! client ([`console::serial_attach`]), which reconnects when the console moves and resumes
//! with no byte lost or repeated either way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use console::serial_attach::{attach, Target};
use gateway::web::{SerialLanes, SerialService};

/// How long the gateway keeps trying to reach a console's serial lane again after losing it
/// (a move takes well under a second; a console that stays away longer ends the terminal).
const RECONNECT: Duration = Duration::from_secs(30);

/// The browser terminal's lanes: each console's `--serial-listen` address (where it moves
/// with the VM, or one the console keeps reachable).
pub(crate) fn lanes(serial_consoles: &[(String, SocketAddr)]) -> Option<SerialLanes> {
    if serial_consoles.is_empty() {
        return None;
    }
    let addrs: Arc<HashMap<String, SocketAddr>> =
        Arc::new(serial_consoles.iter().cloned().collect());
    let consoles = addrs.keys().cloned().collect();
    let service: SerialService = Arc::new(move |console, pipe| {
        let addrs = addrs.clone();
        Box::pin(async move {
            let Some(addr) = addrs.get(&console).copied() else {
                return;
            };
            let (input, output) = tokio::io::split(pipe);
            match attach(&Target::Tcp(addr), input, output, Some(RECONNECT)).await {
                Ok(report) => tracing::info!(%console, ?report, "browser terminal ended"),
                Err(e) => tracing::warn!(%console, error = %e, "browser terminal failed"),
            }
        })
    });
    Some(SerialLanes { consoles, service })
}
