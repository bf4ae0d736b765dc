//! The console process: viewers in front, one hub in the middle, the QEMU link behind.
//!
//! ```text
//!  viewer ─TCP─ reader task ─(channel of 4)─┐                   ┌─ QemuLink (back) ─ QEMU
//!  viewer ─TCP─ reader task ────────────────┤                   │   push / events
//!                                           ▼                   ▼
//!                          hub task: Screen, every Session, the link (its input journal)
//!                                           │  one batch at a time, only when the writer is idle
//!  viewer ◀TCP─ writer task ◀(channel of 1)─┘
//!  control socket (unix): "status" → one JSON line; "freeze" → hand-over, then exit 0
//! ```
//!
//! **Backpressure.** An update is encoded for a viewer only when its writer has finished the
//! previous batch, so a slow viewer's damage coalesces in its session's bounded tile map and
//! the hub never waits on a socket. When the input journal is full (`JournalFull`), the hub
//! stops polling that viewer's reader (its events wait in order in the slot, then in the
//! channel, then in the socket: TCP backpressure) and retries when the link signals room
//! ([`LinkInput::room`](crate::back::LinkInput::room)), never on a timer.
//!
//! **Access.** Without passwords, security type None. With `password`, VNC Authentication;
//! with `view_only_password` too, the same VNC Authentication accepts either and the second
//! makes the viewer view-only (its input and clipboard are ignored). A viewer whose ClientInit
//! has `shared = 0` disconnects every other viewer (RFC 6143 §7.3.1).
//!
//! **One journal.** All input goes straight into the link, whose
//! [`Journal`](crate::journal::Journal) holds it while the VM is paused and paces it (held
//! input is replayed with the viewers' own gaps): exactly-once is decided in that one place. `status` reports the link's
//! view (`vm_running` from `query-status` at connect, then `STOP`/`RESUME`; `held`).
//!
//! **Freeze / restore.** [`run`] with `restore_from` connects to the old console's control
//! socket and asks it to freeze: it stops reading viewers, freezes the link
//! ([`QemuLink::freeze_with`](crate::back::QemuLink::freeze_with), with the input the journal
//! had refused) — delivery stops, what is in flight resolves, the journal's state comes back —
//! writes pending replies, snapshots screen, sessions (their ZRLE streams end at a flush
//! boundary by construction) and that journal, and passes each viewer's socket with the bytes
//! read but not handled ([`handover`]). The new console starts its link from the journal
//! ([`LinkConfig::restore`](crate::back::LinkConfig::restore)), which holds the input until
//! its VM runs, restores the viewers and carries on.

pub mod conn;
mod control_server;
pub mod gate;
pub mod handover;
mod hub;
mod incoming;
pub mod migration;
mod peer;
mod report;
pub mod serial;
pub mod service;
pub mod viewer;

use crate::back::{LinkConfig, LinkError};
use crate::screen::{ScreenError, ScreenRestoreError};
use crate::session::SessionRestoreError;
use crate::snapshot::SnapshotError;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use handover::{HandedViewer, Handover, HandoverError};
pub use peer::{PeerError, PeerKey};
pub use serial::{SerialConfig, SerialError};
pub use service::{ServiceAddress, ServiceError};
pub use viewer::ViewerError;

use control_server::Request;
use migration::CoMigration;
use tokio::sync::{mpsc, watch};

/// Who may connect, and with which rights.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Full-access password (VNC Authentication); `None` with no view-only password: no auth.
    pub password: Option<rfb::Password>,
    /// View-only password; needs `password` too.
    pub view_only_password: Option<rfb::Password>,
    /// Every viewer is view-only whatever it authenticated with.
    pub all_view_only: bool,
    /// Viewers may connect with no password at all: anyone who reaches the listen address can
    /// type into the VM. The operator's explicit choice (`--insecure-no-auth`); without it, a
    /// console with no password refuses to start.
    pub insecure_no_auth: bool,
}

/// [`ConsoleConfig::qemu_wait`] unless told otherwise (`dmore console --qemu-wait`).
pub const DEFAULT_QEMU_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The shortest pre-shared key the console-to-console transfer accepts, in bytes.
pub const MIN_PEER_KEY_LEN: usize = 16;

impl Access {
    /// Checks that the rights make sense before anyone connects; the error names the fix.
    fn validate(&self) -> Result<(), ConsoleError> {
        match (&self.password, &self.view_only_password) {
            (None, Some(_)) => Err(ConsoleError::Config(
                "a view-only password needs a full-access password too",
            )),
            (None, None) if !self.insecure_no_auth => Err(ConsoleError::Config(
                "no viewer password: anyone who reaches the listen address could type into the \
                 VM; give a password (--password-file or DMORE_VNC_PASSWORD), or say \
                 --insecure-no-auth if the address is reachable only by trusted viewers",
            )),
            (Some(_), _) if self.insecure_no_auth => Err(ConsoleError::Config(
                "--insecure-no-auth and a password contradict each other: drop one",
            )),
            (Some(full), Some(view)) if vnc_auth_key(full) == vnc_auth_key(view) => {
                Err(ConsoleError::Config(
                    "the view-only password equals the full-access one in its first 8 bytes, \
                     the only ones VNC Authentication uses: a view-only viewer would get full \
                     access; pick passwords that differ early",
                ))
            }
            (None, None) => {
                tracing::warn!(
                    "--insecure-no-auth: viewers connect without a password; anyone who \
                     reaches the listen address can type into the VM"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The bytes of a password VNC Authentication uses: the first 8, zero-padded.
fn vnc_auth_key(p: &rfb::Password) -> [u8; 8] {
    let mut key = [0; 8];
    for (k, b) in key.iter_mut().zip(&p.0) {
        *k = *b;
    }
    key
}

/// Everything one console needs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How to reach QEMU.
    pub link: LinkConfig,
    /// TCP address for viewers (port 0 picks one; the bound address is printed on stdout).
    pub listen: SocketAddr,
    /// Passwords and rights.
    pub access: Access,
    /// Desktop name shown to viewers.
    pub name: String,
    /// Control socket (`status`, `freeze`), if any.
    pub control: Option<PathBuf>,
    /// Take over from the console whose control socket this is (freeze it, restore here).
    pub restore_from: Option<PathBuf>,
    /// Co-migration with the VM, if any.
    pub migration: Option<MigrationConfig>,
    /// How long the session outlives its QEMU: serving, the viewers stay (told by the desktop
    /// name, input discarded) until QEMU's sockets answer again; frozen for a migration, the
    /// checkpoint waits for the destination. Then the console exits with
    /// [`ConsoleError::QemuGone`] or [`ConsoleError::Abandoned`]. Zero: exit at once.
    pub qemu_wait: std::time::Duration,
    /// Allow Tight JPEG to viewers that ask for it with a quality level (`dmore console
    /// --lossy`); off, every encoding is lossless, as QEMU's VNC is without its `lossy` option.
    pub lossy: bool,
    /// The serial lane (QEMU's serial chardev and its viewers), if any.
    pub serial: Option<SerialConfig>,
    /// Gateway mode: also serve viewers that come through `dmore gateway` over resumable
    /// streams (docs/gateway.md).
    pub gateway: Option<GatewayConfig>,
}

/// Where and with which key the console accepts the gateway's resumable streams.
#[derive(Clone)]
pub struct GatewayConfig {
    /// TCP address the gateway connects to. A VM's consoles use the same port on every host:
    /// a source console tells the gateway the destination's address as the destination
    /// console's host with this port (the Moved frame).
    pub listen: SocketAddr,
    /// The key shared with the gateway (at least [`resume::MIN_PSK`] bytes).
    pub psk: Vec<u8>,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// How this console moves with its VM.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// Authenticates the console-to-console transfer.
    pub key: PeerKey,
    /// Transparent mode: `listen`'s address moves with the VM on this interface.
    pub service_interface: Option<String>,
    /// A destination console: listen here for the source console and wait for its session
    /// (and, once serving, for announcements as `announce_listen`).
    pub incoming: Option<SocketAddr>,
    /// A serving console: listen here for its VM's destination host announcing a migration
    /// before QEMU migrates (libvirt's hook; protocol version 2), so that input leaves the
    /// fast lane however soon the switchover follows. Not with `incoming`, which listens
    /// for both.
    pub announce_listen: Option<SocketAddr>,
    /// Where this VM's destination console may listen (its `incoming` on the other hosts),
    /// tried in turn when the VM starts migrating and no `prepare` named the destination: a
    /// manager such as libvirt migrates without telling the console where to.
    pub peers: Vec<SocketAddr>,
}

/// How a console ended without a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (SIGTERM, SIGINT).
    Stopped,
    /// Frozen and handed over to another console.
    HandedOver,
}

/// Why the console stopped with a fault (the process exits non-zero with this as the cause).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Attaching to QEMU failed.
    #[error(
        "cannot attach to QEMU through {vnc} and {qmp}: is QEMU running with \
         -vnc unix:{vnc},key-delay-ms=0,lock-key-sync=off and -qmp unix:{qmp},server=on,wait=off \
         (and -k as given to the console's --keymap)?"
    )]
    Attach {
        /// The VNC socket path.
        vnc: String,
        /// The QMP socket path.
        qmp: String,
        /// What failed.
        #[source]
        source: Box<LinkError>,
    },
    /// The link to QEMU failed while freezing (QEMU exited or closed a socket).
    #[error("lost QEMU")]
    Link(#[source] Box<LinkError>),
    /// QEMU went away and its sockets did not answer again within `qemu_wait`.
    #[error(
        "QEMU went away and did not come back within {waited_s} s (--qemu-wait): viewers closed"
    )]
    QemuGone {
        /// Seconds waited.
        waited_s: u64,
        /// How the link ended.
        #[source]
        source: Box<LinkError>,
    },
    /// QEMU went away while the session was frozen for a migration, and no destination
    /// console took it over within `qemu_wait`: the session is lost.
    #[error(
        "QEMU went away during a migration's switchover and no destination console took the \
         session over within {waited_s} s (--qemu-wait): the viewers' connections are given up"
    )]
    Abandoned {
        /// Seconds waited.
        waited_s: u64,
    },
    /// The gateway's address could not be bound.
    #[error(
        "cannot listen for the gateway on {addr} (address in use? use another --gateway-listen)"
    )]
    GatewayListen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The viewer address could not be bound.
    #[error("cannot listen for viewers on {addr} (address in use? use another --listen)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be bound.
    #[error(
        "cannot create the control socket {path} (is another console using it? pick another path)"
    )]
    Control {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU's screen size is beyond the cache's limits.
    #[error("QEMU's screen cannot be cached")]
    Screen(#[from] ScreenError),
    /// Taking over from the old console failed.
    #[error("cannot take over from the console at {path}")]
    TakeOver {
        /// Its control socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: HandoverError,
    },
    /// Sending the hand-over to the new console failed (the viewers are lost).
    #[error("handing over to the new console failed")]
    HandOver(#[source] HandoverError),
    /// The snapshot could not be written or read.
    #[error("console snapshot")]
    Snapshot(#[from] SnapshotError),
    /// The snapshot's screen could not be restored.
    #[error("restoring the screen cache")]
    RestoreScreen(#[from] ScreenRestoreError),
    /// A snapshot's session could not be restored.
    #[error("restoring a viewer session")]
    RestoreSession(#[from] SessionRestoreError),
    /// The snapshot's journal could not be restored.
    #[error("restoring the input journal")]
    RestoreJournal(#[from] crate::journal::RestoreError),
    /// The configuration is contradictory.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The address for the source console could not be bound.
    #[error(
        "cannot listen for the other host's console on {addr} (address in use? use another --incoming or --announce-listen)"
    )]
    Incoming {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Watching the destination VM failed.
    #[error("cannot watch the VM through its console monitor {path} (is QEMU running with -qmp unix:{path},server=on,wait=off?)")]
    Watch {
        /// The QMP socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: qmp::Error,
    },
    /// The destination QEMU went away before the session arrived.
    #[error("the destination QEMU closed its monitor {path} before the VM arrived")]
    VmGone {
        /// The QMP socket.
        path: PathBuf,
    },
    /// The source's session could not be read.
    #[error("the source console's session is unreadable")]
    Moved(#[from] migration::MovedError),
    /// The service address could not be moved.
    #[error("moving the service address")]
    Service(#[from] ServiceError),
    /// The serial lane could not start.
    #[error("serial lane")]
    Serial(#[from] SerialError),
}

/// Runs one console until it is stopped, hands over, or QEMU goes away. With `restore_from`,
/// first takes over the console listening on that control socket; with an incoming
/// migration, first waits for the source console's session.
pub async fn run(config: ConsoleConfig) -> Result<Exit, ConsoleError> {
    config.access.validate()?;
    if let Some(m) = &config.migration {
        if m.key.psk.len() < MIN_PEER_KEY_LEN {
            return Err(ConsoleError::Config(
                "the peer key is shorter than 16 bytes: a guessable key lets anyone who reaches \
                 the console-to-console port take the session; use e.g. \
                 `openssl rand -hex 32 > KEYFILE`",
            ));
        }
    }
    if config
        .gateway
        .as_ref()
        .is_some_and(|g| g.psk.len() < resume::MIN_PSK)
    {
        return Err(ConsoleError::Config(
            "the gateway key is shorter than 16 bytes: use e.g. `openssl rand -hex 32 > KEYFILE`",
        ));
    }
    let incoming = config.migration.as_ref().and_then(|m| m.incoming);
    if incoming.is_some() && config.restore_from.is_some() {
        return Err(ConsoleError::Config(
            "a console either arrives with its VM (--incoming) or takes over a local one (--restore-from)",
        ));
    }
    // The viewers' listener first: a destination restores its viewers' sockets on the same
    // address and port, which the kernel allows only while they are in repair mode.
    let listener = hub::bind_viewers(config.listen)?;
    if config.serial.as_ref().is_some_and(|s| s.listen.is_some()) && !config.access.insecure_no_auth
    {
        return Err(ConsoleError::Config(
            "serial viewers on TCP (--serial-listen) have no password: anyone who reaches the \
             address could type into the VM's serial console; say --insecure-no-auth if only \
             trusted viewers reach it, or use --serial-attach (a unix socket of this user)",
        ));
    }
    // Attached before waiting for the VM: QEMU drops the guest's serial output while no
    // client is connected, and a destination's VM may run before its session arrives.
    let serial_port = match &config.serial {
        Some(s) => Some(serial::SerialPort::connect(&s.socket).await?),
        None => None,
    };
    let (phase_tx, phase_rx) = watch::channel("Serving");
    let (requests_tx, mut requests) = mpsc::channel::<Request>(4);
    let control = match &config.control {
        Some(path) => {
            let l = control_server::bind(path).map_err(|source| ConsoleError::Control {
                path: path.clone(),
                source,
            })?;
            Some(control_server::serve(
                l,
                path.clone(),
                requests_tx,
                phase_rx,
            ))
        }
        None => None,
    };
    let mut mig = match &config.migration {
        Some(m) => {
            if m.incoming.is_some() && m.announce_listen.is_some() {
                return Err(ConsoleError::Config(
                    "--announce-listen is for a console that serves from the start: an arriving \
                     one (--incoming) takes announcements on its incoming address once it serves",
                ));
            }
            let incoming = match m.incoming.or(m.announce_listen) {
                Some(addr) => Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|source| ConsoleError::Incoming { addr, source })?,
                ),
                None => None,
            };
            let service = match (&m.service_interface, config.listen.ip()) {
                (Some(interface), std::net::IpAddr::V4(addr)) => Some(ServiceAddress {
                    interface: interface.clone(),
                    addr,
                }),
                (Some(_), std::net::IpAddr::V6(_)) => {
                    return Err(ConsoleError::Config(
                        "a moving service address must be IPv4 (gratuitous ARP)",
                    ))
                }
                (None, _) => None,
            };
            Some(CoMigration::new(
                m.key.clone(),
                service,
                incoming,
                m.incoming.is_some(),
                m.peers.clone(),
                phase_tx,
            ))
        }
        None => None,
    };
    let (taken, vnc) = match (&config.restore_from, incoming, mig.as_mut()) {
        (Some(path), _, _) => (
            Some(hub::Taken::Local(hub::take_over(path).await.map_err(
                |source| ConsoleError::TakeOver {
                    path: path.clone(),
                    source,
                },
            )?)),
            None,
        ),
        (None, Some(addr), Some(m)) => {
            println!("dmore console: waiting for the source console on {addr}");
            let (moved, vnc) = incoming::arrive(&config.link, m, &mut requests).await?;
            (Some(hub::Taken::Moved(moved)), vnc)
        }
        _ => (None, None),
    };
    let result = hub::Hub::start(config, taken, vnc, listener, requests, mig, serial_port)
        .await?
        .run()
        .await;
    drop(control);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(full: Option<&str>, view: Option<&str>, insecure: bool) -> Access {
        let pw = |p: &str| rfb::Password(p.as_bytes().to_vec());
        Access {
            password: full.map(pw),
            view_only_password: view.map(pw),
            all_view_only: false,
            insecure_no_auth: insecure,
        }
    }

    #[test]
    fn no_password_needs_the_operators_explicit_word() {
        assert!(access(None, None, false).validate().is_err());
        assert!(access(None, None, true).validate().is_ok());
        assert!(access(Some("secret12"), None, true).validate().is_err());
        assert!(access(Some("secret12"), None, false).validate().is_ok());
        assert!(access(None, Some("viewonly"), false).validate().is_err());
    }

    #[test]
    fn a_view_only_password_must_differ_in_the_bytes_vnc_uses() {
        assert!(
            access(Some("samefirst8-full"), Some("samefirst8-view"), false)
                .validate()
                .is_err()
        );
        assert!(access(Some("short"), Some("short"), false)
            .validate()
            .is_err());
        assert!(access(Some("full-pass"), Some("view-pass"), false)
            .validate()
            .is_ok());
    }
}
