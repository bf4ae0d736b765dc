//! The client role of the handshake: what dmore runs against QEMU's VNC server.

use super::{parse_string, Io, Password, ServerInit, RESULT_OK};
use crate::error::HandshakeError;
use crate::limits::Limits;
use crate::security::{vnc_auth_response, SecurityType, CHALLENGE_LEN};
use crate::version::{Version, VERSION_LEN};
use crate::wire::{Parse, Reader, Stop};

/// What a client accepts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Highest version spoken; the lower of this and the server's is used.
    pub version: Version,
    /// Acceptable security types, most preferred first. VncAuth is only chosen with a password.
    pub security: Vec<SecurityType>,
    /// Password for VNC Authentication.
    pub password: Option<Password>,
    /// ClientInit's shared flag: leave other clients connected.
    pub shared: bool,
    /// Limits on the desktop name, reasons and framebuffer size.
    pub limits: Limits,
}

impl ClientConfig {
    /// RFB 3.8 with no security, shared, default limits: what a viewer asks of a server that
    /// needs no password (QEMU's VNC on its unix socket, a console started without one).
    pub fn no_auth() -> ClientConfig {
        ClientConfig {
            version: Version::V3_8,
            security: vec![SecurityType::None],
            password: None,
            shared: true,
            limits: Limits::DEFAULT,
        }
    }
}

/// The outcome of a successful client handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDone {
    /// The version spoken.
    pub version: Version,
    /// The security type used.
    pub security: SecurityType,
    /// The server's desktop: size, pixel format, name.
    pub server_init: ServerInit,
    /// Bytes received after ServerInit: the server's first messages, to decode next.
    pub leftover: Vec<u8>,
}

#[derive(Debug)]
enum State {
    Version,
    SecurityType33,
    SecurityTypes,
    Challenge {
        version: Version,
    },
    SecurityResult {
        version: Version,
        security: SecurityType,
    },
    ServerInit {
        version: Version,
        security: SecurityType,
    },
}

/// The client side of the handshake, as a sans-I/O state machine (see the module docs).
#[derive(Debug)]
pub struct ClientHandshake {
    config: ClientConfig,
    /// The version agreed, once known.
    version: Version,
    state: State,
    io: Io<ClientDone>,
}

impl ClientHandshake {
    /// Starts a handshake; it waits for the server's ProtocolVersion.
    pub fn new(config: ClientConfig) -> Self {
        let version = config.version;
        ClientHandshake {
            config,
            version,
            state: State::Version,
            io: Io::default(),
        }
    }

    /// Feeds received bytes and advances as far as they allow. An error ends the handshake.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        let (config, state, version) = (&self.config, &mut self.state, &mut self.version);
        self.io
            .feed(data, |r, out| step(config, version, state, r, out))
    }

    /// Bytes to send to the server, if any.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.io.poll_output()
    }

    /// Whether the handshake has finished and its outcome is waiting in
    /// [`poll_done`](Self::poll_done). Bytes fed from then on are added to its `leftover`.
    pub fn is_done(&self) -> bool {
        self.io.is_done()
    }

    /// The outcome, once the handshake has finished (returned once).
    pub fn poll_done(&mut self) -> Option<ClientDone> {
        self.io.poll_done()
    }
}

/// Picks the first acceptable type the server offers; VncAuth only with a password.
fn choose(config: &ClientConfig, offered: &[SecurityType]) -> Result<SecurityType, HandshakeError> {
    let usable = |t: &SecurityType| *t != SecurityType::VncAuth || config.password.is_some();
    if let Some(t) = config
        .security
        .iter()
        .find(|t| offered.contains(t) && usable(t))
    {
        return Ok(*t);
    }
    if offered.contains(&SecurityType::VncAuth) && config.security.contains(&SecurityType::VncAuth)
    {
        return Err(HandshakeError::PasswordRequired);
    }
    Err(HandshakeError::NoCommonSecurity {
        offered: offered.to_vec(),
    })
}

/// What follows a chosen type: a challenge, a SecurityResult (3.8), or ClientInit at once.
fn after_choice(
    config: &ClientConfig,
    version: Version,
    security: SecurityType,
    out: &mut Vec<u8>,
) -> State {
    match security {
        SecurityType::VncAuth => State::Challenge { version },
        _ if version >= Version::V3_8 => State::SecurityResult { version, security },
        _ => {
            out.push(u8::from(config.shared));
            State::ServerInit { version, security }
        }
    }
}

fn step(
    config: &ClientConfig,
    agreed: &mut Version,
    state: &mut State,
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
) -> Parse<Option<ClientDone>, HandshakeError> {
    match *state {
        State::Version => {
            let version = Version::parse(&r.array::<VERSION_LEN, _>()?)?.min(config.version);
            out.extend_from_slice(&version.to_bytes());
            *agreed = version;
            *state = if version == Version::V3_3 {
                State::SecurityType33
            } else {
                State::SecurityTypes
            };
        }
        State::SecurityType33 => {
            let chosen = match r.u32()? {
                0 => {
                    return Err(Stop::Invalid(HandshakeError::Refused {
                        reason: parse_string(r, &config.limits)?,
                    }))
                }
                n => SecurityType::from(
                    u8::try_from(n).map_err(|_| HandshakeError::BadSecurityType(n))?,
                ),
            };
            let security = choose(config, &[chosen])?;
            *state = after_choice(config, *agreed, security, out);
        }
        State::SecurityTypes => {
            let n = r.u8()?;
            if n == 0 {
                return Err(Stop::Invalid(HandshakeError::Refused {
                    reason: parse_string(r, &config.limits)?,
                }));
            }
            let offered: Vec<SecurityType> = r
                .take(usize::from(n))?
                .iter()
                .map(|t| SecurityType::from(*t))
                .collect();
            let security = choose(config, &offered)?;
            out.push(u8::from(security));
            *state = after_choice(config, *agreed, security, out);
        }
        State::Challenge { version } => {
            let challenge = r.array::<CHALLENGE_LEN, _>()?;
            let password = config
                .password
                .as_ref()
                .map_or(&[][..], |p: &Password| &p.0[..]);
            out.extend_from_slice(&vnc_auth_response(password, &challenge));
            *state = State::SecurityResult {
                version,
                security: SecurityType::VncAuth,
            };
        }
        State::SecurityResult { version, security } => {
            if r.u32()? != RESULT_OK {
                let reason = if version >= Version::V3_8 {
                    Some(parse_string(r, &config.limits)?)
                } else {
                    None
                };
                return Err(Stop::Invalid(HandshakeError::AuthenticationFailed {
                    reason,
                }));
            }
            out.push(u8::from(config.shared));
            *state = State::ServerInit { version, security };
        }
        State::ServerInit { version, security } => {
            let server_init = ServerInit::parse(r, &config.limits)?;
            return Ok(Some(ClientDone {
                version,
                security,
                server_init,
                leftover: Vec::new(),
            }));
        }
    }
    Ok(None)
}

impl super::Outcome for ClientDone {
    fn leftover_mut(&mut self) -> &mut Vec<u8> {
        &mut self.leftover
    }
}
