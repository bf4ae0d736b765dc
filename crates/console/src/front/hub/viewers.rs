//! The hub's viewers: admission, the per-viewer slot (reader and writer tasks), input into the
//! link, and updates out.

use super::*;

/// Replies (fence answers, ...) queued for a viewer before the hub stops reading it.
pub(super) const MAX_REPLIES: usize = 16;
/// Longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// One viewer as the hub sees it.
pub(super) struct Slot {
    pub(super) session: Session,
    pub(super) peer: String,
    pub(super) from: mpsc::Receiver<FromViewer>,
    pub(super) to: mpsc::Sender<Vec<ServerMessage>>,
    pub(super) writer_idle: bool,
    /// FramebufferUpdates handed to the writer (for status and tests).
    pub(super) updates_sent: u64,
    pub(super) replies: Vec<ServerMessage>,
    /// Input the journal refused (full), in order; the viewer is not read meanwhile.
    pub(super) blocked: VecDeque<InputEvent>,
    pub(super) stop_reader: Option<oneshot::Sender<()>>,
    pub(super) reader: JoinHandle<ReaderParts>,
    pub(super) writer: JoinHandle<ConnWrite>,
}

impl Slot {
    pub(super) fn readable(&self) -> bool {
        self.blocked.is_empty() && self.replies.len() < MAX_REPLIES
    }

    pub(super) fn close(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A finished handshake, from its task.
pub(super) struct Admission {
    pub(super) stream: Conn,
    pub(super) peer: SocketAddr,
    pub(super) result: Result<viewer::Admitted, ViewerError>,
}

impl Hub {
    pub(super) fn add_viewer(
        &mut self,
        id: ViewerId,
        session: Session,
        stream: Conn,
        leftover: Vec<u8>,
    ) {
        let peer = stream.peer();
        let (read, write) = stream.split();
        let (from_tx, from) = mpsc::channel(FROM_VIEWER_QUEUE);
        let (to, to_rx) = mpsc::channel(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let reader = tokio::spawn(viewer::reader(read, leftover, from_tx, stop_rx));
        let writer = tokio::spawn(viewer::writer(id, write, to_rx, self.written_tx.clone()));
        self.viewers.insert(
            id,
            Slot {
                session,
                peer,
                from,
                to,
                writer_idle: true,
                updates_sent: 0,
                replies: Vec::new(),
                blocked: VecDeque::new(),
                stop_reader: Some(stop_tx),
                reader,
                writer,
            },
        );
    }

    pub(super) fn close_viewer(&mut self, id: ViewerId, reason: &dyn std::fmt::Display) {
        if let Some(slot) = self.viewers.remove(&id) {
            tracing::info!(viewer = id.0, peer = %slot.peer, %reason, "viewer closed");
            if !slot.blocked.is_empty() {
                tracing::warn!(
                    viewer = id.0,
                    events = slot.blocked.len(),
                    "closed viewer's refused input dropped"
                );
            }
            slot.close();
        }
    }

    /// A new connection: its handshake runs on a task of its own, if the gate lets it.
    pub(super) fn handshake(&mut self, mut stream: Conn, peer: SocketAddr) {
        if let Err(refusal) = self
            .gate
            .start(peer.ip(), self.viewers.len(), Instant::now())
        {
            tracing::info!(%peer, %refusal, "viewer refused before its handshake");
            return;
        }
        let access = self.config.access.clone();
        let init = ServerInit {
            width: self.screen.width(),
            height: self.screen.height(),
            pixel_format: PixelFormat::RGBX32_LE,
            name: self.desktop_name(),
        };
        let admit = self.admit_tx.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                viewer::handshake(&mut stream, &access, init),
            )
            .await
            .unwrap_or(Err(ViewerError::HandshakeTimeout));
            let _ = admit
                .send(Admission {
                    stream,
                    peer,
                    result,
                })
                .await;
        });
    }

    pub(super) fn admitted(&mut self, a: Admission) {
        let wrong_password = matches!(
            a.result,
            Err(ViewerError::Handshake(rfb::HandshakeError::WrongPassword))
        );
        self.gate
            .finished(a.peer.ip(), wrong_password, Instant::now());
        let admitted = match a.result {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(peer = %a.peer, reason = %error_chain(&e), "viewer refused");
                return;
            }
        };
        if self.viewers.len() >= super::super::gate::MAX_VIEWERS {
            tracing::info!(peer = %a.peer, "viewer refused: the console serves its maximum of viewers");
            return;
        }
        if !self.serves() {
            tracing::info!(peer = %a.peer, "viewer refused: the console is moving with its VM");
            return;
        }
        let id = ViewerId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        if !admitted.done.shared && admitted.view_only {
            tracing::info!(viewer = id.0, peer = %a.peer,
                "a view-only viewer asked for an exclusive session: it shares instead");
        } else if !admitted.done.shared {
            let others: Vec<ViewerId> = self.viewers.keys().copied().collect();
            for other in others {
                self.close_viewer(other, &"a non-shared viewer connected");
            }
        }
        let mut session = Session::new(
            id,
            Negotiated {
                version: admitted.done.version,
                shared: admitted.done.shared,
                view_only: admitted.view_only,
                width: self.screen.width(),
                height: self.screen.height(),
            },
        );
        session.set_lossy(self.config.lossy);
        tracing::info!(viewer = id.0, peer = %a.peer, view_only = admitted.view_only, "viewer connected");
        self.add_viewer(id, session, a.stream, admitted.done.leftover);
    }

    pub(super) fn written(&mut self, w: Written) {
        match w.result {
            Ok(()) => {
                if let Some(slot) = self.viewers.get_mut(&w.viewer) {
                    slot.writer_idle = true;
                }
            }
            Err(e) => self.close_viewer(w.viewer, &format!("writing failed: {e}")),
        }
    }

    /// Gives every idle writer its replies and, if due, the viewer's next update.
    pub(super) fn flush_writers(&mut self) {
        let mut failed = Vec::new();
        for (id, slot) in &mut self.viewers {
            if !slot.writer_idle {
                continue;
            }
            let mut batch = std::mem::take(&mut slot.replies);
            if let Some(plan) = slot.session.poll_update(&self.screen) {
                match slot.session.encode_update(&self.screen, &plan) {
                    Ok(m) => {
                        batch.push(m);
                        slot.updates_sent += 1;
                    }
                    Err(e) => {
                        failed.push((*id, error_chain(&e)));
                        continue;
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            if slot.to.try_send(batch).is_ok() {
                slot.writer_idle = false;
            }
        }
        for (id, why) in failed {
            self.close_viewer(id, &why);
        }
    }

    pub(super) async fn message(&mut self, id: ViewerId, m: ClientMessage) {
        let Some(slot) = self.viewers.get_mut(&id) else {
            return;
        };
        let outputs = match slot.session.handle_message(m) {
            Ok(o) => o,
            Err(e) => return self.close_viewer(id, &error_chain(&e)),
        };
        for out in outputs {
            match out {
                SessionOutput::Input(ev) => self.input(id, ev).await,
                SessionOutput::Reply(r) => {
                    if let Some(slot) = self.viewers.get_mut(&id) {
                        slot.replies.push(r);
                    }
                }
                SessionOutput::CutText(text) => {
                    tracing::trace!(viewer = id.0, len = text.len(), "clipboard ignored");
                }
            }
        }
    }

    /// One input event, in this viewer's order: behind its refused events, else into the
    /// link (whose journal holds it while the VM is stopped).
    pub(super) async fn input(&mut self, id: ViewerId, ev: InputEvent) {
        if self.gone.is_some() {
            return self.discard();
        }
        let blocked = self.viewers.get(&id).is_some_and(|s| !s.blocked.is_empty());
        if blocked || !self.offer(id, ev).await {
            if let Some(slot) = self.viewers.get_mut(&id) {
                slot.blocked.push_back(ev);
            }
        }
    }

    /// Tries to journal an event; false if the journal is full.
    pub(super) async fn offer(&mut self, id: ViewerId, ev: InputEvent) -> bool {
        match self.link.try_push(id, ev).await {
            Ok(_) => true,
            Err(PushError::Full(_)) => false,
            // The link has ended (the event loop sees it next): not delivered, counted.
            Err(PushError::Closed) => {
                self.discard();
                true
            }
        }
    }

    pub(super) async fn retry_blocked(&mut self) {
        let ids: Vec<ViewerId> = self.viewers.keys().copied().collect();
        for id in ids {
            while let Some(ev) = self
                .viewers
                .get(&id)
                .and_then(|s| s.blocked.front().copied())
            {
                if !self.offer(id, ev).await {
                    break;
                }
                if let Some(slot) = self.viewers.get_mut(&id) {
                    slot.blocked.pop_front();
                }
            }
        }
    }
}

/// Binds the viewers' listener. `IP_FREEBIND`: a destination console listens on the service
/// address before its host owns it; `SO_REUSEADDR`: the restored viewer sockets share the port.
pub(in crate::front) fn bind_viewers(addr: SocketAddr) -> Result<TcpListener, ConsoleError> {
    let listen_err = |source| ConsoleError::Listen { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(listen_err)?;
    socket.set_reuse_address(true).map_err(listen_err)?;
    if addr.is_ipv4() {
        socket.set_freebind(true).map_err(listen_err)?;
    }
    socket.set_nonblocking(true).map_err(listen_err)?;
    socket.bind(&addr.into()).map_err(listen_err)?;
    socket.listen(128).map_err(listen_err)?;
    TcpListener::from_std(socket.into()).map_err(listen_err)
}

/// The next message from any viewer the hub is willing to read, fairly.
pub(super) async fn next_message(
    viewers: &mut BTreeMap<ViewerId, Slot>,
    rotate: &mut usize,
) -> (ViewerId, FromViewer) {
    poll_fn(|cx| {
        let n = viewers.len();
        if n == 0 {
            return Poll::Pending;
        }
        let start = *rotate % n;
        for k in 0..n {
            let Some((id, slot)) = viewers.iter_mut().nth((start + k) % n) else {
                continue;
            };
            if !slot.readable() {
                continue;
            }
            if let Poll::Ready(m) = slot.from.poll_recv(cx) {
                *rotate = rotate.wrapping_add(1);
                let m = m.unwrap_or(FromViewer::Ended(ViewerError::Closed));
                return Poll::Ready((*id, m));
            }
        }
        Poll::Pending
    })
    .await
}
