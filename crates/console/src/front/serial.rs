//! The serial lane's I/O shell: QEMU's serial chardev socket behind, serial viewers in front,
//! the pure [`crate::serial`] core in between. A sibling of the graphics lanes: one task, told
//! the VM's run state by the hub, frozen into the snapshot with the rest of the console.
//!
//! ```text
//!  viewer (unix --serial-attach / TCP --serial-listen /
//!          a resumable stream from the gateway, --serial-gateway-listen) ─reader task─▶ input ─┐
//!                                                                           ▼
//!   QEMU -chardev socket,server=on ◀─one byte per write()── lane task: SerialState, Gate
//!                                  ──output──────────────▶   │ header + scrollback, then live
//!  viewer ◀─writer task◀─(channel of VIEWER_QUEUE chunks)────┘
//! ```
//!
//! While bytes are in QEMU's socket the lane measures them every [`MEASURE_EVERY`]
//! (`SIOCOUTQ` over the memory of a one-byte write, [`WriteUnit`]). A viewer whose queue is
//! full (it reads slower than the guest writes) is cut; it reconnects and resumes from the
//! scrollback (see [`Header`]).
//!
//! A gateway's session (`dmore gateway serve --ssh-listen`: an SSH user's channel) is a viewer
//! like the others, over a [`Pipe`]: authenticated by the gateway's key, cut at a freeze like
//! every viewer (the stream is closed), and resumed by the gateway with a new session on the
//! console where the VM runs next, by the same [`Header`] rule (`console::serial_attach`).

use crate::back::VmEvent;
use crate::front::GatewayConfig;
use crate::serial::{Gate, Header, SerialState};
use ::gateway::accept::Router;
use ::gateway::pipe::Pipe;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// How often the lane measures QEMU's reads while bytes are in its socket.
const MEASURE_EVERY: Duration = Duration::from_millis(1);
/// Longest a freeze of a running VM's lane waits for QEMU to read what is in its socket.
const SETTLE: Duration = Duration::from_millis(500);
/// Output chunks queued for one viewer before it is cut.
const VIEWER_QUEUE: usize = 256;
/// Bytes in QEMU's socket at most: the 16550A's FIFO, all QEMU takes before the guest reads.
const WINDOW: usize = 16;
/// Largest read from a socket.
const CHUNK: usize = 4096;

/// The serial lane's configuration (`dmore console --serial-socket ...`).
#[derive(Debug, Clone)]
pub struct SerialConfig {
    /// QEMU's serial chardev (`-chardev socket,id=ser0,path=PATH,server=on,wait=off -serial
    /// chardev:ser0`).
    pub socket: PathBuf,
    /// A unix socket for operators on this host (`dmore serial attach PATH`).
    pub attach: Option<PathBuf>,
    /// A TCP address for serial viewers (on the service address, it moves with the VM).
    pub listen: Option<SocketAddr>,
    /// Output bytes kept and moved (`--serial-scrollback`).
    pub scrollback: usize,
    /// Where the gateway's resumable streams for serial viewers arrive, and their key
    /// (`--serial-gateway-listen`, `--gateway-psk-file`).
    pub gateway: Option<GatewayConfig>,
}

/// Why the serial lane could not start.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// QEMU's chardev socket did not accept the console.
    #[error("cannot connect to QEMU's serial socket {path} (is QEMU running with -chardev socket,id=ser0,path={path},server=on,wait=off -serial chardev:ser0?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A viewer socket could not be made.
    #[error("cannot listen for serial viewers on {what}")]
    Listen {
        /// The path or address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's accounting of a one-byte write could not be measured.
    #[error("cannot measure a one-byte write's memory on a unix socket (SIOCOUTQ)")]
    Unit(#[source] std::io::Error),
}

/// QEMU's serial socket, connected before the console waits for its VM (a destination must be
/// attached before its VM runs: QEMU drops the guest's output while no client is connected).
#[derive(Debug)]
pub struct SerialPort {
    stream: UnixStream,
    unit: WriteUnit,
}

impl SerialPort {
    /// Connects to QEMU's chardev at `path`.
    pub async fn connect(path: &Path) -> Result<SerialPort, SerialError> {
        let unit = WriteUnit::measure().map_err(SerialError::Unit)?;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| SerialError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        tracing::info!(path = %path.display(), unit = unit.0, "serial lane attached");
        Ok(SerialPort { stream, unit })
    }
}

/// The memory `SIOCOUTQ` counts for one unread one-byte write on a unix stream socket: with
/// one byte per write, `SIOCOUTQ / unit` is the exact number of bytes the peer has not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteUnit(pub usize);

impl WriteUnit {
    /// Measured on a socketpair: one write, then [`WINDOW`] of them, must count linearly.
    pub fn measure() -> std::io::Result<WriteUnit> {
        let (mut a, _b) = std::os::unix::net::UnixStream::pair()?;
        a.write_all(b"x")?;
        let unit = outq(a.as_raw_fd())?;
        for _ in 1..WINDOW {
            a.write_all(b"x")?;
        }
        let all = outq(a.as_raw_fd())?;
        if unit == 0 || all != unit * WINDOW {
            return Err(std::io::Error::other(format!(
                "one write counts {unit}, {WINDOW} count {all}: not linear"
            )));
        }
        Ok(WriteUnit(unit))
    }

    /// Bytes written one per `write()` to the unix stream socket `fd` and still unread.
    pub fn unread(self, fd: RawFd) -> std::io::Result<usize> {
        Ok(outq(fd)?.div_ceil(self.0))
    }
}

/// `ioctl(SIOCOUTQ)`: the memory of the unread writes on a unix stream socket.
fn outq(fd: RawFd) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    usize::try_from(n).map_err(|_| std::io::Error::other("negative SIOCOUTQ"))
}

enum Command {
    Vm(VmEvent),
    Running(bool),
    Freeze(oneshot::Sender<SerialState>),
    Thaw,
    Status(oneshot::Sender<serde_json::Value>),
}

/// The running lane; its task ends when this is dropped.
#[derive(Debug)]
pub(super) struct SerialLane {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for SerialLane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SerialLane {
    /// Starts the lane on `port`, from a moved or handed-over `state` or fresh.
    pub(super) fn start(
        port: SerialPort,
        config: &SerialConfig,
        state: Option<SerialState>,
    ) -> Result<SerialLane, SerialError> {
        let mut state = state.unwrap_or_else(|| SerialState::new(config.scrollback));
        state.output.set_capacity(config.scrollback);
        let attach = match &config.attach {
            Some(path) => Some(bind_attach(path)?),
            None => None,
        };
        let tcp = config.listen.map(bind_tcp).transpose()?;
        let (gateway, pipes) = match &config.gateway {
            Some(g) => {
                let (lane, pipes) = GatewayLane::bind(g)?;
                (Some(lane), Some(pipes))
            }
            None => (None, None),
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let (input_tx, input_rx) = mpsc::channel(16);
        let lane = Lane {
            state,
            gate: Gate::default(),
            port,
            viewers: Vec::new(),
            next_id: 0,
            tasks: JoinSet::new(),
            input_tx,
            input_rx,
            viewers_cut: 0,
        };
        let task = tokio::spawn(lane.run(rx, attach, tcp, gateway, pipes));
        Ok(SerialLane { commands, task })
    }

    /// A run-state or migration event of the VM.
    pub(super) fn vm(&self, event: VmEvent) {
        let _ = self.commands.send(Command::Vm(event));
    }

    /// The VM's run state as the link saw it at attach.
    pub(super) fn running(&self, running: bool) {
        let _ = self.commands.send(Command::Running(running));
    }

    /// Stops writing to QEMU and reading viewers, reads QEMU's output dry, closes the viewers
    /// (they resume wherever the console serves next) and returns the state to move.
    pub(super) async fn freeze(&self) -> Option<SerialState> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Freeze(tx)).ok()?;
        rx.await.ok()
    }

    /// The VM runs here again after all: carry on.
    pub(super) fn thaw(&self) {
        let _ = self.commands.send(Command::Thaw);
    }

    /// The lane's counters for `status`.
    pub(super) async fn status(&self) -> serde_json::Value {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Status(tx)).is_err() {
            return serde_json::Value::Null;
        }
        rx.await.unwrap_or(serde_json::Value::Null)
    }
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, SerialError> {
    super::hub::bind_viewers(addr).map_err(|e| SerialError::Listen {
        what: addr.to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn bind_attach(path: &Path) -> Result<UnixListener, SerialError> {
    let err = |source| SerialError::Listen {
        what: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let l = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

/// What a viewer's reader task tells the lane.
enum FromViewer {
    Input(u64, Vec<u8>),
    Ended(u64),
}

struct Viewer {
    id: u64,
    out: mpsc::Sender<Vec<u8>>,
}

struct Lane {
    state: SerialState,
    gate: Gate,
    port: SerialPort,
    viewers: Vec<Viewer>,
    next_id: u64,
    tasks: JoinSet<()>,
    input_tx: mpsc::Sender<FromViewer>,
    input_rx: mpsc::Receiver<FromViewer>,
    viewers_cut: u64,
}

impl Lane {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        attach: Option<UnixListener>,
        tcp: Option<TcpListener>,
        gateway: Option<GatewayLane>,
        mut pipes: Option<mpsc::Receiver<Pipe>>,
    ) {
        let mut buf = vec![0u8; CHUNK];
        let mut qemu_open = true;
        loop {
            // Every wake-up measures (one ioctl): QEMU's reads free room in the window.
            if self.state.input.in_socket() > 0 {
                self.measure();
            }
            self.write_some();
            let in_socket = self.state.input.in_socket() > 0;
            let take_input = !self.gate.frozen && self.state.input.room() >= CHUNK;
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(c @ Command::Freeze(_)) => {
                        self.settle().await;
                        self.command(c);
                    }
                    Some(c) => self.command(c),
                    None => return,
                },
                read = self.port.stream.read(&mut buf), if qemu_open => match read {
                    Ok(0) | Err(_) => {
                        tracing::info!("QEMU closed its serial socket");
                        qemu_open = false;
                    }
                    Ok(n) => self.output(&buf[..n]),
                },
                () = tokio::time::sleep(MEASURE_EVERY), if in_socket => {}
                Some(msg) = self.input_rx.recv(), if take_input => match msg {
                    FromViewer::Input(id, bytes) => {
                        let n = self.state.input.accept(&bytes);
                        if n < bytes.len() {
                            tracing::warn!(viewer = id, lost = bytes.len() - n, "serial input beyond the limit");
                        }
                    }
                    FromViewer::Ended(id) => self.viewers.retain(|v| v.id != id),
                },
                Some(Ok((s, _))) = accept_unix(attach.as_ref()), if !self.gate.frozen => self.add_viewer(s),
                Some(Ok((s, _))) = accept_tcp(tcp.as_ref()), if !self.gate.frozen => {
                    let _ = s.set_nodelay(true);
                    self.add_viewer(s)
                }
                Some(Ok((s, peer))) = accept_tcp(gateway.as_ref().map(|g| &g.listener)) => {
                    // A frozen lane serves nobody: the gateway tries the next console at once.
                    if let (false, Some(g)) = (self.gate.frozen, &gateway) {
                        g.route(s, peer);
                    }
                }
                Some(pipe) = new_pipe(pipes.as_mut()) => {
                    // Routed while the lane froze: closed, the gateway starts again elsewhere.
                    if !self.gate.frozen {
                        self.add_viewer(pipe);
                    }
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        let before = self.gate;
        self.apply(c);
        if self.gate != before {
            tracing::debug!(gate = ?self.gate, open = self.gate.open(), "serial lane gate");
        }
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Vm(v) => match v {
                VmEvent::Stopped | VmEvent::StoppedForMigration => self.gate.running = false,
                VmEvent::Resumed => self.gate.running = true,
                VmEvent::MigrationStarted => self.gate.migrating = true,
                VmEvent::MigrationCompleted | VmEvent::MigrationEnded => {
                    self.gate.migrating = false
                }
            },
            Command::Running(r) => self.gate.running = r,
            Command::Freeze(reply) => {
                self.gate.frozen = true;
                self.drain_output();
                self.measure();
                self.viewers.clear();
                self.tasks.abort_all();
                // The moved state counts the bytes still in this socket as never written;
                // this console keeps them as written, should its VM run here again (thaw).
                let mut moved = self.state.clone();
                let unread = moved.input.detach();
                if unread > 0 && self.gate.migrating {
                    // Written before the migration started and still unread: the guest has
                    // not read its UART since. Exact if the FIFO is full (QEMU reads nothing
                    // more); if it has room, QEMU may still take them before it saves the UART
                    // (see the module docs of `crate::serial`).
                    tracing::warn!(
                        unread,
                        "serial bytes still in QEMU's socket at the switchover: written again on the destination"
                    );
                }
                tracing::info!(
                    consumed = moved.input.consumed(),
                    pending = moved.input.pending(),
                    unread,
                    output = moved.output.end(),
                    "serial lane frozen"
                );
                let _ = reply.send(moved);
            }
            Command::Thaw => {
                self.gate.frozen = false;
                self.gate.migrating = false;
            }
            Command::Status(reply) => {
                let i = &self.state.input;
                let _ = reply.send(serde_json::json!({
                    "consumed": i.consumed(),
                    "accepted": i.accepted(),
                    "pending": i.pending(),
                    "in_socket": i.in_socket(),
                    "output": self.state.output.end(),
                    "scrollback_start": self.state.output.start(),
                    "viewers": self.viewers.len(),
                    "viewers_cut": self.viewers_cut,
                    "gate_open": self.gate.open(),
                }));
            }
        }
    }

    /// A freeze while the VM runs (a local hand-over: the new console attaches to the same
    /// QEMU, which may still read this socket's bytes before it sees it close): first let QEMU
    /// read what is in the socket, for up to [`SETTLE`]. A VM stopped for a migration reads
    /// nothing more (module docs of `crate::serial`).
    async fn settle(&mut self) {
        self.gate.frozen = true;
        let deadline = tokio::time::Instant::now() + SETTLE;
        while self.gate.running
            && self.state.input.in_socket() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(MEASURE_EVERY).await;
            self.measure();
        }
    }

    /// Writes what the gate and the window allow, one byte per `write()`.
    fn write_some(&mut self) {
        while let Some(b) = self.state.input.next_write(self.gate, WINDOW) {
            match self.port.stream.try_write(&[b]) {
                Ok(1) => self.state.input.wrote(),
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "writing to QEMU's serial socket failed");
                    break;
                }
            }
        }
    }

    fn measure(&mut self) {
        match self.port.unit.unread(self.port.stream.as_raw_fd()) {
            Ok(unread) => {
                if let Err(e) = self.state.input.measured(unread) {
                    tracing::error!(error = %e, "serial input count inconsistent");
                }
            }
            Err(e) => tracing::warn!(error = %e, "SIOCOUTQ on QEMU's serial socket failed"),
        }
    }

    /// Reads everything QEMU's socket holds now (the VM stopped: nothing more comes).
    fn drain_output(&mut self) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match self.port.stream.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.output(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn output(&mut self, bytes: &[u8]) {
        self.state.output.push(bytes);
        let before = self.viewers.len();
        self.viewers
            .retain(|v| v.out.try_send(bytes.to_vec()).is_ok());
        self.viewers_cut += (before - self.viewers.len()) as u64;
    }

    fn add_viewer<S>(&mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self.next_id;
        self.next_id += 1;
        let (from, bytes) = self.state.output.since(0);
        let header = Header {
            output: from,
            input: self.state.input.accepted(),
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(VIEWER_QUEUE);
        let mut first = header.encode();
        first.extend_from_slice(&bytes);
        let _ = tx.try_send(first);
        let (mut r, mut w) = tokio::io::split(stream);
        let input = self.input_tx.clone();
        self.tasks.spawn(async move {
            let reader = async {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if input
                                .send(FromViewer::Input(id, buf[..n].to_vec()))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            };
            let writer = async {
                while let Some(chunk) = rx.recv().await {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                () = reader => {}
                () = writer => {}
            }
            let _ = input.send(FromViewer::Ended(id)).await;
        });
        tracing::info!(viewer = id, "serial viewer attached");
        self.viewers.push(Viewer { id, out: tx });
    }
}

/// The lane's listener for the gateway's resumable streams, and the sessions routed on it.
struct GatewayLane {
    listener: TcpListener,
    router: Router,
    pipes_tx: mpsc::Sender<Pipe>,
}

impl GatewayLane {
    /// Binds the listener; routed sessions come out of the receiver.
    fn bind(config: &GatewayConfig) -> Result<(GatewayLane, mpsc::Receiver<Pipe>), SerialError> {
        let listener = bind_tcp(config.listen)?;
        let (pipes_tx, pipes) = mpsc::channel(4);
        let lane = GatewayLane {
            listener,
            router: Router::new(resume::Config::new(
                resume::Role::Console,
                config.psk.clone(),
            )),
            pipes_tx,
        };
        Ok((lane, pipes))
    }

    /// Reads a connection's opening on a task of its own: a new session becomes a viewer, a
    /// later connection of a session goes to that session.
    fn route(&self, conn: tokio::net::TcpStream, peer: SocketAddr) {
        let _ = conn.set_nodelay(true);
        let (router, tx) = (self.router.clone(), self.pipes_tx.clone());
        tokio::spawn(async move {
            match Pipe::accept(&router, conn).await {
                Some(Ok(pipe)) => {
                    tracing::info!(%peer, "serial viewer through the gateway");
                    let _ = tx.send(pipe).await;
                }
                Some(Err(e)) => tracing::info!(%peer, error = %e, "gateway serial session refused"),
                None => {}
            }
        });
    }
}

async fn new_pipe(pipes: Option<&mut mpsc::Receiver<Pipe>>) -> Option<Pipe> {
    match pipes {
        Some(p) => p.recv().await,
        None => std::future::pending().await,
    }
}

async fn accept_unix(
    l: Option<&UnixListener>,
) -> Option<std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)>> {
    match l {
        Some(l) => Some(l.accept().await),
        None => std::future::pending().await,
    }
}

async fn accept_tcp(
    l: Option<&TcpListener>,
) -> Option<std::io::Result<(tokio::net::TcpStream, SocketAddr)>> {
    match l {
        Some(l) => Some(l.accept().await),
        None => std::future::pending().await,
    }
}
