//! Serial consoles over SSH: the gateway's SSH server (russh), a thin shell. A user's `ssh
//! CONSOLE@gateway` authenticates with a public key that the authorized-keys file lists for
//! that console ([`AuthorizedKeys`], pure, read again at each attempt); its session channel
//! (a shell or an exec request; a pty request is granted and changes nothing: the bytes are
//! raw) becomes a byte stream handed to the caller's [`SerialService`], which carries it to
//! the console's serial lane over resumable streams.
//!
//! ```text
//!  ssh client ==SSH (TCP)==> gateway: auth (user = console name, key listed for it)
//!                                     └─ channel bytes ⇄ SerialService ⇄ resumable stream ⇄ console
//! ```
//!
//! A wrong key, an unknown console and a key listed for another console get the same answer
//! after the same delay ([`REJECTION_TIME`]): the usual SSH failure, naming nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};

use crate::serial::SerialService;
use tokio::net::TcpListener;

/// Every refused authentication takes this long, whatever was wrong.
pub const REJECTION_TIME: Duration = Duration::from_millis(500);

/// A line of the authorized-keys file that does not read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authorized keys line {line}: {why}")]
pub struct BadKeyLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: String,
}

/// Which public keys open which console: one line per grant, `CONSOLE KEYTYPE BASE64
/// [comment]` (an OpenSSH `authorized_keys` line with the console's name in front); blank
/// lines and `#` comments are skipped.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    grants: Vec<(String, PublicKey)>,
}

impl AuthorizedKeys {
    /// Parses the file's text; any bad line refuses the whole file.
    pub fn parse(text: &str) -> Result<AuthorizedKeys, BadKeyLine> {
        let mut grants = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| BadKeyLine {
                line: i + 1,
                why: why.to_owned(),
            };
            let mut words = line.split_whitespace();
            let (Some(console), Some(kind), Some(base64)) =
                (words.next(), words.next(), words.next())
            else {
                return Err(bad("want CONSOLE KEYTYPE BASE64 [comment]"));
            };
            if !crate::tokens::valid_console_name(console) {
                return Err(bad("not a console name"));
            }
            let key = russh::keys::parse_public_key_base64(base64)
                .map_err(|e| bad(&format!("not a public key: {e}")))?;
            if key.algorithm().as_str() != kind {
                return Err(bad("the key type does not match the key"));
            }
            grants.push((console.to_owned(), key));
        }
        Ok(AuthorizedKeys { grants })
    }

    /// Whether `key` opens `console` (the comment does not count).
    pub fn allows(&self, console: &str, key: &PublicKey) -> bool {
        self.grants
            .iter()
            .any(|(c, k)| c == console && k.key_data() == key.key_data())
    }
}

/// The SSH side's configuration.
#[derive(Clone)]
pub struct SshConfig {
    /// The gateway's host key (what `ssh` pins in `known_hosts`).
    pub host_key: PrivateKey,
    /// The authorized-keys file, read at each authentication (a change needs no restart).
    pub authorized_keys: PathBuf,
    /// The consoles this gateway serves (a user name must be one of them).
    pub consoles: Vec<String>,
}

impl std::fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the host key.
        f.debug_struct("SshConfig")
            .field("authorized_keys", &self.authorized_keys)
            .field("consoles", &self.consoles)
            .finish_non_exhaustive()
    }
}

/// The gateway's host key from an OpenSSH private key file (unencrypted, e.g. made by
/// `ssh-keygen -t ed25519 -N '' -f FILE`).
pub fn load_host_key(path: &std::path::Path) -> Result<PrivateKey, russh::keys::Error> {
    russh::keys::load_secret_key(path, None)
}

/// Serves SSH clients on `listener` until it fails.
pub async fn serve_ssh(
    listener: TcpListener,
    config: SshConfig,
    service: SerialService,
) -> std::io::Result<()> {
    let russh_config = Arc::new(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: REJECTION_TIME,
        // OpenSSH probes with "none" first: answering it at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![config.host_key.clone()],
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let mut server = Server {
        config: Arc::new(config),
        service,
    };
    russh::server::Server::run_on_socket(&mut server, russh_config, &listener).await
}

#[derive(Clone)]
struct Server {
    config: Arc<SshConfig>,
    service: SerialService,
}

impl russh::server::Server for Server {
    type Handler = Client;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Client {
        Client {
            server: self.clone(),
            peer,
            console: None,
            channels: BTreeMap::new(),
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        tracing::info!(error = %error, "SSH session ended");
    }
}

/// One SSH connection.
struct Client {
    server: Server,
    peer: Option<SocketAddr>,
    /// The console this connection authenticated for.
    console: Option<String>,
    /// Session channels opened and not yet started.
    channels: BTreeMap<ChannelId, Channel<Msg>>,
}

impl Client {
    /// Hands the channel to the service (a shell or exec request).
    fn start(&mut self, id: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
        match (self.channels.remove(&id), &self.console) {
            (Some(channel), Some(console)) => {
                session.channel_success(id)?;
                tracing::info!(peer = ?self.peer, console, "SSH serial session started");
                tokio::spawn((self.server.service)(
                    console.clone(),
                    Box::new(channel.into_stream()),
                ));
            }
            _ => session.channel_failure(id)?,
        }
        Ok(())
    }
}

impl russh::server::Handler for Client {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.allowed(user, offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.allowed(user, key.public_key) {
            tracing::info!(peer = ?self.peer, console = user, "SSH key accepted");
            self.console = Some(user.to_owned());
            Ok(Auth::Accept)
        } else {
            tracing::info!(peer = ?self.peer, "SSH key refused");
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.console.is_some() {
            self.channels.insert(channel.id(), channel);
            reply.accept().await;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The serial line is raw bytes; the user's terminal is what `ssh -t` makes raw.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, session)
    }
}

impl Client {
    /// Whether `key` opens the console named `user` (the file read now; unreadable or bad:
    /// nothing is allowed, and the gateway's log says why).
    fn allowed(&self, user: &str, key: &PublicKey) -> bool {
        if !self.server.config.consoles.iter().any(|c| c == user) {
            return false;
        }
        let path = &self.server.config.authorized_keys;
        let keys = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| AuthorizedKeys::parse(&text).map_err(|e| e.to_string()));
        match keys {
            Ok(keys) => keys.allows(user, key),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the authorized keys file");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBOnCPRw52o0swGgvma542hwcQu2jJ7mHXlq48uJJfDV";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA5VvmXFy1PF73LGMFXC9QAExB12vb7SVGEhQhYFz5Hm";

    fn key(base64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(base64).expect("a test key")
    }

    #[test]
    fn a_key_opens_only_the_console_it_is_listed_for() {
        let text = format!("# comment\n\nvm1 ssh-ed25519 {KEY_A} alice@laptop\n");
        let keys = AuthorizedKeys::parse(&text).expect("parses");
        assert!(keys.allows("vm1", &key(KEY_A)));
        assert!(!keys.allows("vm2", &key(KEY_A)));
        assert!(!keys.allows("vm1", &key(KEY_B)));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, line) in [
            ("vm1 ssh-ed25519\n".to_owned(), 1),
            (format!("\nvm1 ssh-rsa {KEY_A}\n"), 2),
            (format!("vm/1 ssh-ed25519 {KEY_A}\n"), 1),
            ("vm1 ssh-ed25519 notbase64!\n".to_owned(), 1),
        ] {
            let e = AuthorizedKeys::parse(&text).expect_err(&text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
