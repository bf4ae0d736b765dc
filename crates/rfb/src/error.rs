//! Errors, one enum per layer: [`MessageError`] for the message stream after the handshake,
//! [`HandshakeError`] for the handshakes. Every variant names what was wrong; none of them can
//! be recovered from on the same connection (RFB has no framing to resynchronise on).

use crate::{Encoding, SecurityType};

/// A message in the stream could not be decoded (RFC 6143 §7.5, §7.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A client-to-server message type this crate does not know; its length is unknown.
    #[error("unknown client message type {0}")]
    UnknownClientMessage(u8),
    /// A server-to-client message type this crate does not know; its length is unknown.
    #[error("unknown server message type {0}")]
    UnknownServerMessage(u8),
    /// A QEMU client message (type 255) with an unknown submessage type.
    #[error("unknown QEMU client submessage {0}")]
    UnknownQemuSubmessage(u8),
    /// A QEMU audio client message with an unknown operation.
    #[error("unknown QEMU audio operation {0}")]
    UnknownQemuAudioOperation(u16),
    /// Cut text longer than [`Limits::max_cut_text`](crate::Limits::max_cut_text).
    #[error("cut text of {len} bytes exceeds the limit of {limit}")]
    CutTextTooLong {
        /// Announced length (an extended-clipboard negative length reads as a huge one).
        len: u32,
        /// The configured limit.
        limit: usize,
    },
    /// A rectangle or screen larger than [`Limits::max_dimension`](crate::Limits::max_dimension).
    #[error("{width}x{height} exceeds the largest dimension of {limit}")]
    DimensionTooLarge {
        /// Announced width.
        width: u16,
        /// Announced height.
        height: u16,
        /// The configured limit.
        limit: u16,
    },
    /// A rectangle payload larger than
    /// [`Limits::max_rect_payload`](crate::Limits::max_rect_payload).
    #[error("rectangle payload of {len} bytes exceeds the limit of {limit}")]
    RectPayloadTooLarge {
        /// Payload length the header implies.
        len: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A whole message longer than [`Limits::max_message`](crate::Limits::max_message).
    #[error("message of at least {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Length reached so far.
        len: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A rectangle with an encoding whose payload length this crate cannot work out.
    #[error("rectangle with unsupported encoding {0:?}")]
    UnsupportedEncoding(Encoding),
    /// A Fence message whose payload is longer than the 64 bytes rfbproto allows.
    #[error("fence payload of {0} bytes exceeds 64")]
    FencePayloadTooLong(u8),
    /// A Hextile or Tight payload whose end cannot be found: it is malformed.
    #[error("malformed {encoding:?} rectangle: {reason}")]
    MalformedPayload {
        /// The rectangle's encoding.
        encoding: Encoding,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A handshake (RFC 6143 §7.1–§7.3) failed. After one, the handshake is over; any bytes
/// [`poll_output`](crate::ServerHandshake::poll_output) still yields tell the peer why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The 12-byte ProtocolVersion was not `RFB xxx.yyy\n`.
    #[error("malformed protocol version {0:?}")]
    BadVersion([u8; 12]),
    /// A well-formed version this crate cannot speak (major version below 3).
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// The server refused the connection and said why (§7.1.2 with zero types, or type 0).
    #[error("server refused the connection: {reason}")]
    Refused {
        /// The server's reason string.
        reason: String,
    },
    /// Client side: none of the server's security types is acceptable.
    #[error("no acceptable security type among {offered:?}")]
    NoCommonSecurity {
        /// What the server offered (or, for 3.3, decided).
        offered: Vec<SecurityType>,
    },
    /// Client side: the server requires VNC Authentication and no password was configured.
    #[error("the server requires a password and none was given")]
    PasswordRequired,
    /// Server side: the client chose a security type that was not offered.
    #[error("client chose security type {0:?}, which was not offered")]
    SecurityTypeNotOffered(SecurityType),
    /// Server side: the client's VNC Authentication response did not match.
    #[error("wrong password")]
    WrongPassword,
    /// Client side: the server's SecurityResult said failed.
    #[error("authentication failed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    AuthenticationFailed {
        /// The server's reason string (RFB 3.8 only).
        reason: Option<String>,
    },
    /// Client side: RFB 3.3's server-chosen security type is not a `u8` number.
    #[error("server chose security type {0}, which does not exist")]
    BadSecurityType(u32),
    /// A reason string or desktop name longer than
    /// [`Limits::max_name`](crate::Limits::max_name).
    #[error("string of {len} bytes exceeds the limit of {limit}")]
    StringTooLong {
        /// Announced length.
        len: u32,
        /// The configured limit.
        limit: usize,
    },
    /// ServerInit announced a framebuffer larger than
    /// [`Limits::max_dimension`](crate::Limits::max_dimension).
    #[error("framebuffer {width}x{height} exceeds the largest dimension of {limit}")]
    FramebufferTooLarge {
        /// Announced width.
        width: u16,
        /// Announced height.
        height: u16,
        /// The configured limit.
        limit: u16,
    },
    /// The configuration cannot work (e.g. a server offering no security type).
    #[error("invalid handshake configuration: {0}")]
    Config(&'static str),
    /// Input was fed after the handshake had already failed or finished.
    #[error("the handshake is already over")]
    Over,
}
