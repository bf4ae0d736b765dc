//! The tokio shell: one task per connection owns the socket and a [`Session`]; cheap
//! [`Client`] handles send it commands, [`Events`] receives events.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::error::{CloseReason, Error};
use crate::input::InputEvent;
use crate::message::{Event, Greeting};
use crate::session::{Config, Output, Session, Token};
use crate::types::{MigrationInfo, MouseInfo, StatusInfo};
use crate::Seq;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Requests queued to the connection task before senders wait.
const REQUEST_QUEUE: usize = 64;

/// One command: its name and its `arguments` (`Value::Null` for none).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The command name, e.g. `query-status`.
    pub name: String,
    /// The arguments object, or `Value::Null`.
    pub args: Value,
}

impl Command {
    /// A command with arguments (`Value::Null` for none).
    pub fn new(name: impl Into<String>, args: Value) -> Self {
        Self {
            name: name.into(),
            args,
        }
    }
}

/// A successful reply and its position in the inbound stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Where the reply arrived: events with a smaller `seq` came before it.
    pub seq: Seq,
    /// The `return` value.
    pub value: Value,
}

type ReplySender = oneshot::Sender<Result<Reply, Error>>;

struct Request {
    commands: Vec<(Command, ReplySender)>,
}

/// A handle for sending commands; clone it freely, use it from any task. Replies are matched
/// to their commands whatever the interleaving.
#[derive(Debug, Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    closed: Arc<OnceLock<CloseReason>>,
}

/// The connection's events, in arrival order. Ends (`recv` gives `None`) when the connection
/// closes, after every event that arrived before.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event, or `None` once the connection has closed and all events were taken.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is already here. Once a reply's future resolved, every event
    /// that arrived before that reply is here.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// An open QMP connection: owns the connection task. Dropping it stops the task too;
/// [`close`](Self::close) also waits for it and reports how the connection ended.
#[derive(Debug)]
pub struct Connection {
    client: Client,
    greeting: Greeting,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<CloseReason>,
}

impl Connection {
    /// Connects to QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`), reads the
    /// greeting and negotiates capabilities (none enabled). A QMP socket serves one client
    /// at a time: while another is connected this waits, so wrap it in a timeout if that can
    /// happen.
    pub async fn connect(path: impl AsRef<Path>) -> Result<(Connection, Events), Error> {
        Self::connect_with(path, Config::default()).await
    }

    /// [`connect`](Self::connect) with explicit settings.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        config: Config,
    ) -> Result<(Connection, Events), Error> {
        let path = path.as_ref().to_path_buf();
        let span = tracing::debug_span!("qmp", path = %path.display());
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| Error::Connect {
                path: path.clone(),
                source,
            })?;
        let (mut reader, mut writer) = stream.into_split();
        let mut session = Session::new(config);
        let mut buf = vec![0u8; READ_CHUNK];
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let greeting = handshake(&mut session, &mut reader, &mut writer, &mut buf, &events_tx)
            .instrument(span.clone())
            .await
            .map_err(|reason| Error::Handshake {
                path: path.clone(),
                reason,
            })?;
        tracing::debug!(parent: &span, version = ?greeting.version, "QMP ready");

        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let closed = Arc::new(OnceLock::new());
        let driver = Driver {
            session,
            reader,
            writer,
            buf,
            requests: requests_rx,
            events: events_tx,
            pending: HashMap::new(),
            closed: closed.clone(),
        };
        let task = tokio::spawn(driver.run(shutdown_rx).instrument(span));
        let client = Client { requests, closed };
        Ok((
            Connection {
                client,
                greeting,
                shutdown: Some(shutdown),
                task,
            },
            Events { rx: events_rx },
        ))
    }

    /// The command handle (clone it to share).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// QEMU's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Closes the connection and waits for its task. Commands still waiting get
    /// [`Error::Closed`]. Returns an error only if the connection had already failed (I/O or
    /// protocol error); QEMU closing it (e.g. after `quit`) is not an error.
    pub async fn close(mut self) -> Result<(), Error> {
        if let Some(shutdown) = self.shutdown.take() {
            // The task may have ended already; then there is no one to tell.
            let _ = shutdown.send(());
        }
        match self.task.await.map_err(Error::Task)? {
            CloseReason::Eof | CloseReason::Shutdown => Ok(()),
            reason => Err(Error::Connection(reason)),
        }
    }
}

async fn handshake(
    session: &mut Session,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    buf: &mut [u8],
    events: &mpsc::UnboundedSender<Event>,
) -> Result<Greeting, CloseReason> {
    let io = CloseReason::from_io;
    loop {
        while !session.pending_transmit().is_empty() {
            let n = writer.write(session.pending_transmit()).await.map_err(io)?;
            if n == 0 {
                return Err(io(std::io::ErrorKind::WriteZero.into()));
            }
            session.transmitted(n);
        }
        let n = reader.read(buf).await.map_err(io)?;
        if n == 0 {
            return Err(CloseReason::Eof);
        }
        session
            .handle_input(buf.get(..n).unwrap_or_default())
            .map_err(CloseReason::Protocol)?;
        let mut greeting = None;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Ready(g) => greeting = Some(g),
                // Events are only sent after negotiation; keep any anyway, in order.
                Output::Event(e) => {
                    let _ = events.send(e);
                }
                // No command of ours is in flight during the handshake.
                Output::Reply { .. } => {}
            }
        }
        if let Some(g) = greeting {
            return Ok(g);
        }
    }
}

/// The connection task's state.
struct Driver {
    session: Session,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buf: Vec<u8>,
    requests: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<Event>,
    pending: HashMap<Token, (String, ReplySender)>,
    closed: Arc<OnceLock<CloseReason>>,
}

impl Driver {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) -> CloseReason {
        let reason = loop {
            // Outputs are dispatched in order: an event reaches the channel before any later
            // reply resolves its future.
            self.dispatch();
            let want_write = !self.session.pending_transmit().is_empty();
            tokio::select! {
                biased;
                // Fires on close() and when the Connection is dropped.
                _ = &mut shutdown => break CloseReason::Shutdown,
                read = self.reader.read(&mut self.buf) => match read {
                    Ok(0) => break CloseReason::Eof,
                    Ok(n) => {
                        let data = self.buf.get(..n).unwrap_or_default();
                        if let Err(e) = self.session.handle_input(data) {
                            // Lines before the bad one were valid: deliver them.
                            self.dispatch();
                            break CloseReason::Protocol(e);
                        }
                    }
                    Err(e) => break CloseReason::from_io(e),
                },
                written = self.writer.write(self.session.pending_transmit()), if want_write => {
                    match written {
                        Ok(0) => break CloseReason::Io(Arc::new(std::io::ErrorKind::WriteZero.into())),
                        Ok(n) => self.session.transmitted(n),
                        Err(e) => break CloseReason::from_io(e),
                    }
                }
                request = self.requests.recv() => match request {
                    Some(request) => {
                        if let Err(reason) = self.submit(request) {
                            break reason;
                        }
                    }
                    // Every Client is gone, including the Connection's own.
                    None => break CloseReason::Shutdown,
                },
            }
        };
        match &reason {
            CloseReason::Eof | CloseReason::Shutdown => tracing::debug!(%reason, "QMP closed"),
            _ => tracing::warn!(error = %reason, "QMP connection failed"),
        }
        self.fail_all(reason)
    }

    fn submit(&mut self, request: Request) -> Result<(), CloseReason> {
        for (command, reply) in request.commands {
            tracing::trace!(command = %command.name, "QMP command");
            match self.session.submit(&command.name, &command.args) {
                Ok(token) => {
                    self.pending.insert(token, (command.name, reply));
                }
                Err(e) => {
                    let reason = CloseReason::Protocol(e);
                    let _ = reply.send(Err(Error::Closed {
                        command: command.name,
                        reason: reason.clone(),
                    }));
                    return Err(reason);
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Event(event) => {
                    tracing::debug!(event = %event.name, seq = %event.seq, "QMP event");
                    // Nobody listening is fine: events are informational.
                    let _ = self.events.send(event);
                }
                Output::Reply { token, seq, result } => {
                    let Some((command, reply)) = self.pending.remove(&token) else {
                        continue;
                    };
                    let result = match result {
                        Ok(value) => Ok(Reply { seq, value }),
                        Err(source) => Err(Error::Qmp {
                            command,
                            seq,
                            source,
                        }),
                    };
                    // The caller may have stopped waiting.
                    let _ = reply.send(result);
                }
                Output::Ready(_) => {}
            }
        }
    }

    /// Records why the connection ended and fails every waiting command with it.
    fn fail_all(mut self, reason: CloseReason) -> CloseReason {
        let _ = self.closed.set(reason.clone());
        for (_, (command, reply)) in self.pending.drain() {
            let _ = reply.send(Err(Error::Closed {
                command,
                reason: reason.clone(),
            }));
        }
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            for (command, reply) in request.commands {
                let _ = reply.send(Err(Error::Closed {
                    command: command.name,
                    reason: reason.clone(),
                }));
            }
        }
        reason
    }
}

impl Client {
    fn close_reason(&self) -> CloseReason {
        self.closed.get().cloned().unwrap_or(CloseReason::Shutdown)
    }

    /// Sends several commands in one write and waits for all their replies (one result per
    /// command, in order). QEMU runs them in order; a failing one does not stop the others.
    pub async fn execute_batch(&self, commands: Vec<Command>) -> Vec<Result<Reply, Error>> {
        let mut names = Vec::with_capacity(commands.len());
        let mut receivers = Vec::with_capacity(commands.len());
        let mut entries = Vec::with_capacity(commands.len());
        for command in commands {
            let (tx, rx) = oneshot::channel();
            names.push(command.name.clone());
            receivers.push(rx);
            entries.push((command, tx));
        }
        if self
            .requests
            .send(Request { commands: entries })
            .await
            .is_err()
        {
            let reason = self.close_reason();
            return names
                .into_iter()
                .map(|command| {
                    Err(Error::Closed {
                        command,
                        reason: reason.clone(),
                    })
                })
                .collect();
        }
        let mut results = Vec::with_capacity(names.len());
        for (rx, command) in receivers.into_iter().zip(names) {
            results.push(match rx.await {
                Ok(result) => result,
                Err(_) => Err(Error::Closed {
                    command,
                    reason: self.close_reason(),
                }),
            });
        }
        results
    }

    /// Runs one command and returns its reply with its stream position.
    pub async fn execute_at(&self, command: &str, args: Value) -> Result<Reply, Error> {
        let mut results = self.execute_batch(vec![Command::new(command, args)]).await;
        results.pop().unwrap_or_else(|| {
            Err(Error::Closed {
                command: command.to_owned(),
                reason: self.close_reason(),
            })
        })
    }

    /// Runs one command (`args`: an object, or `Value::Null` for none) and returns its
    /// `return` value. QEMU's error replies become [`Error::Qmp`].
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value, Error> {
        self.execute_at(command, args)
            .await
            .map(|reply| reply.value)
    }

    async fn execute_typed<T: DeserializeOwned>(
        &self,
        command: &str,
        args: Value,
    ) -> Result<T, Error> {
        let value = self.execute(command, args).await?;
        serde_json::from_value(value).map_err(|source| Error::Decode {
            command: command.to_owned(),
            source,
        })
    }

    /// `query-status`: the VM's run state.
    pub async fn query_status(&self) -> Result<StatusInfo, Error> {
        self.execute_typed("query-status", Value::Null).await
    }

    /// `query-mice`: the pointer devices, the current one (gets motion now) marked.
    pub async fn query_mice(&self) -> Result<Vec<MouseInfo>, Error> {
        self.execute_typed("query-mice", Value::Null).await
    }

    /// `query-migrate`: the current or last migration's state and statistics.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, Error> {
        self.execute_typed("query-migrate", Value::Null).await
    }

    /// `migrate`: starts an outgoing migration to `uri` (e.g. `tcp:10.0.0.2:4444`). Returns
    /// once it started; follow it with `query-migrate` or `MIGRATION` events.
    pub async fn migrate(&self, uri: &str) -> Result<(), Error> {
        self.execute("migrate", json!({"uri": uri})).await.map(drop)
    }

    /// `migrate-incoming`: makes a QEMU started with `-incoming defer` listen on `uri`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), Error> {
        self.execute("migrate-incoming", json!({"uri": uri}))
            .await
            .map(drop)
    }

    /// `migrate-set-capabilities`, e.g. `&[("events", true), ("pause-before-switchover", true)]`.
    /// Capabilities are global to the QEMU process: never call this on a VM a manager owns.
    pub async fn migrate_set_capabilities(
        &self,
        capabilities: &[(&str, bool)],
    ) -> Result<(), Error> {
        let list: Vec<Value> = capabilities
            .iter()
            .map(|(name, state)| json!({"capability": name, "state": state}))
            .collect();
        self.execute("migrate-set-capabilities", json!({"capabilities": list}))
            .await
            .map(drop)
    }

    /// `migrate-continue`: leaves the pause state `state` (e.g. `pre-switchover`).
    pub async fn migrate_continue(&self, state: &str) -> Result<(), Error> {
        self.execute("migrate-continue", json!({"state": state}))
            .await
            .map(drop)
    }

    /// `migrate_cancel`: cancels the outgoing migration (the source VM runs again).
    pub async fn migrate_cancel(&self) -> Result<(), Error> {
        self.execute("migrate_cancel", Value::Null).await.map(drop)
    }

    /// `stop`: pauses the VM. Returns the reply's position (the `STOP` event, if the VM was
    /// running, comes before it).
    pub async fn stop(&self) -> Result<Seq, Error> {
        self.execute_at("stop", Value::Null).await.map(|r| r.seq)
    }

    /// `cont`: resumes the VM. Returns the reply's position (`RESUME` comes before it).
    pub async fn cont(&self) -> Result<Seq, Error> {
        self.execute_at("cont", Value::Null).await.map(|r| r.seq)
    }

    /// `quit`: QEMU exits. QEMU closing the connection before its reply also counts as
    /// success, since exiting is what was asked.
    pub async fn quit(&self) -> Result<(), Error> {
        match self.execute("quit", Value::Null).await {
            Ok(_)
            | Err(Error::Closed {
                reason: CloseReason::Eof,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `input-send-event` with a list of events, in one command. Returns the reply's position.
    /// On a VM that does not run, fails with QEMU's `VM not running`
    /// ([`Error::is_vm_not_running`]): the events were not delivered.
    pub async fn input_send_event(&self, events: &[InputEvent]) -> Result<Seq, Error> {
        self.execute_at("input-send-event", InputEvent::arguments(events))
            .await
            .map(|r| r.seq)
    }

    /// `set_password` for a display protocol (`vnc`). The password is never logged.
    pub async fn set_password(&self, protocol: &str, password: &str) -> Result<(), Error> {
        self.execute(
            "set_password",
            json!({"protocol": protocol, "password": password}),
        )
        .await
        .map(drop)
    }
}
