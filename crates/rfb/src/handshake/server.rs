//! The server role of the handshake: what dmore's console runs for each viewer.

use super::{put_string, Io, Password, ServerInit, RESULT_FAILED, RESULT_OK};
use crate::error::HandshakeError;
use crate::security::{responses_match, vnc_auth_response, SecurityType, CHALLENGE_LEN};
use crate::version::{Version, VERSION_LEN};
use crate::wire::{Parse, Reader, Stop};

/// What a server offers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Highest version offered; the client may ask for a lower one.
    pub version: Version,
    /// Security types offered, most preferred first (RFB 3.3 uses the first). Only
    /// [`SecurityType::None`] and [`SecurityType::VncAuth`] can be offered.
    pub security: Vec<SecurityType>,
    /// The password checked by VNC Authentication; required if it is offered.
    pub password: Option<Password>,
    /// The VNC Authentication challenge: the caller supplies 16 random bytes (no RNG here).
    pub challenge: [u8; CHALLENGE_LEN],
    /// What ServerInit tells the client.
    pub init: ServerInit,
}

/// The outcome of a successful server handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDone {
    /// The version spoken.
    pub version: Version,
    /// The security type used.
    pub security: SecurityType,
    /// ClientInit's shared flag: the client accepts other clients on the same desktop.
    pub shared: bool,
    /// Bytes received after ClientInit: the client's first messages, to decode next.
    pub leftover: Vec<u8>,
}

#[derive(Debug)]
enum State {
    Version,
    SecurityChoice {
        version: Version,
    },
    AuthResponse {
        version: Version,
    },
    ClientInit {
        version: Version,
        security: SecurityType,
    },
}

/// The server side of the handshake, as a sans-I/O state machine (see the module docs).
#[derive(Debug)]
pub struct ServerHandshake {
    config: ServerConfig,
    state: State,
    io: Io<ServerDone>,
}

impl ServerHandshake {
    /// Starts a handshake; the ProtocolVersion is queued for [`poll_output`](Self::poll_output)
    /// at once. Fails if nothing usable is offered or VncAuth has no password.
    pub fn new(config: ServerConfig) -> Result<Self, HandshakeError> {
        if config.security.is_empty() {
            return Err(HandshakeError::Config("no security type offered"));
        }
        for t in &config.security {
            match t {
                SecurityType::None => {}
                SecurityType::VncAuth if config.password.is_some() => {}
                SecurityType::VncAuth => {
                    return Err(HandshakeError::Config("VncAuth offered without a password"))
                }
                SecurityType::Other(_) => {
                    return Err(HandshakeError::Config(
                        "only None and VncAuth can be offered",
                    ))
                }
            }
        }
        let mut io = Io::default();
        io.outbox.extend_from_slice(&config.version.to_bytes());
        Ok(ServerHandshake {
            config,
            state: State::Version,
            io,
        })
    }

    /// Feeds received bytes and advances as far as they allow. An error ends the handshake;
    /// send what [`poll_output`](Self::poll_output) still holds, then close.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        let (config, state) = (&self.config, &mut self.state);
        self.io.feed(data, |r, out| step(config, state, r, out))
    }

    /// Bytes to send to the client, if any.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.io.poll_output()
    }

    /// Whether the handshake has finished and its outcome is waiting in
    /// [`poll_done`](Self::poll_done). Bytes fed from then on are added to its `leftover`.
    pub fn is_done(&self) -> bool {
        self.io.is_done()
    }

    /// The outcome, once the handshake has finished (returned once).
    pub fn poll_done(&mut self) -> Option<ServerDone> {
        self.io.poll_done()
    }
}

/// Sends a failed SecurityResult (with a reason from 3.8 on) and returns `err`.
fn refuse<T>(
    version: Version,
    out: &mut Vec<u8>,
    reason: &str,
    err: HandshakeError,
) -> Parse<T, HandshakeError> {
    out.extend_from_slice(&RESULT_FAILED.to_be_bytes());
    if version >= Version::V3_8 {
        put_string(out, reason);
    }
    Err(Stop::Invalid(err))
}

/// Starts the chosen security type: a challenge for VncAuth, else straight on.
fn begin_security(
    config: &ServerConfig,
    version: Version,
    chosen: SecurityType,
    out: &mut Vec<u8>,
) -> State {
    match chosen {
        SecurityType::VncAuth => {
            out.extend_from_slice(&config.challenge);
            State::AuthResponse { version }
        }
        _ => {
            if version >= Version::V3_8 {
                out.extend_from_slice(&RESULT_OK.to_be_bytes());
            }
            State::ClientInit {
                version,
                security: chosen,
            }
        }
    }
}

fn step(
    config: &ServerConfig,
    state: &mut State,
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
) -> Parse<Option<ServerDone>, HandshakeError> {
    match *state {
        State::Version => {
            let version = Version::parse(&r.array::<VERSION_LEN, _>()?)?.min(config.version);
            *state = if version == Version::V3_3 {
                // RFB 3.3: the server decides; `new` checked the list is not empty.
                let chosen = config
                    .security
                    .first()
                    .copied()
                    .unwrap_or(SecurityType::None);
                out.extend_from_slice(&u32::from(u8::from(chosen)).to_be_bytes());
                begin_security(config, version, chosen, out)
            } else {
                let types: Vec<u8> = config
                    .security
                    .iter()
                    .take(255)
                    .map(|t| u8::from(*t))
                    .collect();
                out.push(u8::try_from(types.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&types);
                State::SecurityChoice { version }
            };
            Ok(None)
        }
        State::SecurityChoice { version } => {
            let chosen = SecurityType::from(r.u8()?);
            if !config.security.contains(&chosen) {
                return refuse(
                    version,
                    out,
                    "security type not offered",
                    HandshakeError::SecurityTypeNotOffered(chosen),
                );
            }
            *state = begin_security(config, version, chosen, out);
            Ok(None)
        }
        State::AuthResponse { version } => {
            let response = r.array::<CHALLENGE_LEN, _>()?;
            let password = config.password.as_ref().map_or(&[][..], |p| &p.0[..]);
            if !responses_match(&vnc_auth_response(password, &config.challenge), &response) {
                return refuse(
                    version,
                    out,
                    "authentication failed",
                    HandshakeError::WrongPassword,
                );
            }
            out.extend_from_slice(&RESULT_OK.to_be_bytes());
            *state = State::ClientInit {
                version,
                security: SecurityType::VncAuth,
            };
            Ok(None)
        }
        State::ClientInit { version, security } => {
            let shared = r.u8()? != 0;
            config.init.encode(out);
            Ok(Some(ServerDone {
                version,
                security,
                shared,
                leftover: Vec::new(),
            }))
        }
    }
}

impl super::Outcome for ServerDone {
    fn leftover_mut(&mut self) -> &mut Vec<u8> {
        &mut self.leftover
    }
}
