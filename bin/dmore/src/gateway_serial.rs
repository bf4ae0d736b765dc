//! The gateway's serial consoles (`dmore gateway serve --serial-console NAME=ADDR`): an SSH
//! user's channel or a browser terminal's WebSocket carried to the console's serial lane by
//! the serial lane's resuming client ([`console::serial_attach`], the rule of `dmore serial
//! attach --reconnect`), each of whose connections is a resumable session of its own through
//! the gateway's [`Dial`]. A session the console closes (it froze to move) is followed by a
//! new one to wherever the console serves next; the header the client sends says what to
//! skip and what to type again, so no byte is lost or repeated either way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway::dial::Dial;
use gateway::serial::SerialService;

/// How long a user's serial session keeps trying to reach its console.
const SERIAL_RECONNECT: Duration = Duration::from_secs(60);
/// Failed attempts after which one resumable session of a serial line is given up (~1 s):
/// one whose console moved without closing it (its Close lost) is then replaced by a new one
/// instead of being retried for --max-attempts.
const SERIAL_ATTEMPTS: u32 = 6;

/// The service that carries users to the consoles `dials` reach (by console name).
pub(crate) fn service(dials: HashMap<String, Dial>) -> SerialService {
    let dials = Arc::new(dials);
    Arc::new(move |name: String, pipe| {
        let dials = Arc::clone(&dials);
        Box::pin(async move {
            let Some(dial) = dials.get(&name) else {
                return;
            };
            // A session is given up soon: the next one is as good (the header resumes it).
            let dial = Arc::new(Dial {
                max_attempts: SERIAL_ATTEMPTS,
                retry_after: Duration::from_millis(100),
                ..dial.clone()
            });
            let connect = || {
                let dial = Arc::clone(&dial);
                async move {
                    let (ours, theirs) = tokio::io::duplex(64 << 10);
                    tokio::spawn(async move {
                        if let Err(e) = gateway::dial::serve_viewer(theirs, &dial).await {
                            tracing::info!(error = %e, "serial session through the gateway ended");
                        }
                    });
                    Ok::<_, std::io::Error>(ours)
                }
            };
            let (input, output) = tokio::io::split(pipe);
            match console::serial_attach::attach_with(
                connect,
                input,
                output,
                Some(SERIAL_RECONNECT),
            )
            .await
            {
                Ok(report) => tracing::info!(console = name, ?report, "serial session ended"),
                Err(e) => tracing::warn!(console = name, error = %e, "serial session failed"),
            }
        })
    })
}
