//! Gateway mode's I/O shell (tokio) around the sans-I/O [`resume::Stream`]:
//! - [`dial`]: the gateway's side: one session per viewer, dialed to the console and dialed
//!   again (to the next known address) whenever the connection is lost;
//! - [`accept`]: the console's side: connections routed to their session by the opening's
//!   session id ([`accept::Router`]), each session relayed to a local TCP service
//!   (`dmore gateway endpoint`);
//! - [`pipe`]: the console's side inside the console: a session as the viewer's byte pipe,
//!   exported when the console moves and imported where it arrives;
//! - [`relay`]: one connection of a session, driven;
//! - [`ssh`]: serial consoles over SSH: the server, public keys per console; what carries
//!   its channels, and the browser terminal's WebSockets, to the consoles: a [`serial`]
//!   service;
//! - [`web`]: browsers: noVNC's static files and the WebSocket into a viewer's session, with
//!   per-console [`tokens`] checked before the upgrade ([`http`]: the HTTP it takes), over
//!   [`tls`] when given a certificate.
//!
//! The protocol, and the plan for the console and `dmore gateway`: `docs/gateway.md`.

#![warn(missing_docs)]

pub mod accept;
pub mod dial;
pub mod http;
pub mod pipe;
pub mod relay;
pub mod serial;
pub mod ssh;
pub mod tls;
pub mod tokens;
pub mod web;

/// Why a session ended other than by both ends closing.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The stream ended the session (the ends disagree; bytes would be lost or repeated).
    #[error("resumable session failed")]
    Session(#[from] resume::Error),
    /// No console address accepted a connection, after every attempt.
    #[error("no console reachable at {addresses:?} after {attempts} attempts")]
    NoConsole {
        /// The addresses tried.
        addresses: Vec<std::net::SocketAddr>,
        /// Consecutive failed attempts.
        attempts: u32,
    },
    /// The local service a session relays to could not be reached.
    #[error("cannot reach the local service {0}")]
    Service(std::net::SocketAddr, #[source] std::io::Error),
}
