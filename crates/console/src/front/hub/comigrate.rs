//! The hub's side of co-migration: what it does for each phase machine action (see
//! [`super::super::migration`] for the protocol and the guarantees).

use std::collections::VecDeque;
use std::net::SocketAddr;

use migrate::phase::{
    DestinationAction, DestinationEvent, DestinationState, Link, SourceAction, SourceEvent,
    SourceState,
};
use migrate::protocol::Message;
use migrate::tcp::{self, MacAddr};
use rfb::framebuffer::UpdateEncoder;
use rfb::{RectPayload, Rectangle};
use tokio::sync::oneshot;

use super::Hub;
use crate::back::VmEvent;
use crate::control;
use crate::front::handover::HandedViewer;
use crate::front::migration::{self, now_us, MigrationInput, Record};
use crate::front::report::error_chain;
use crate::front::{ConsoleError, Exit};
use crate::snapshot::ConsoleSnapshot;

/// Longest an exiting source waits for its gateway sessions' Moved frames to leave.
const HAND_OFF_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Hub {
    /// Whether the console serves its viewers now (not frozen for a migration).
    pub(super) fn serves(&self) -> bool {
        self.mig.as_ref().is_none_or(|m| m.source.serves())
    }

    /// Whether a checkpoint is kept for a destination console.
    pub(super) fn holds_checkpoint(&self) -> bool {
        self.mig.as_ref().is_some_and(|m| m.kept.is_some())
    }

    /// A console that arrived with its VM: the session is restored here; tell the source.
    pub(super) fn arrived(&mut self) {
        let Some(m) = self.mig.as_mut() else {
            return;
        };
        if !matches!(m.destination, Some(DestinationState::TakingOver { .. })) {
            return;
        }
        m.record.taken_over_at_us = Some(now_us());
        let actions = m.step_destination(DestinationEvent::Restored);
        self.destination_actions(actions);
        tracing::info!("took over the session");
    }

    fn destination_actions(&mut self, actions: Vec<DestinationAction>) {
        let Some(m) = self.mig.as_mut() else {
            return;
        };
        for action in actions {
            match action {
                DestinationAction::SendTakenOver => m.send_in(m.taken_over()),
                other => {
                    tracing::warn!(action = ?other, "ignored: this console already serves the session")
                }
            }
        }
    }

    /// Something from the other console.
    pub(super) async fn migration_input(
        &mut self,
        input: MigrationInput,
    ) -> Result<Option<Exit>, ConsoleError> {
        match input {
            MigrationInput::Source(e) => {
                let serving = self
                    .mig
                    .as_ref()
                    .is_some_and(|m| matches!(m.source, SourceState::Serving { .. }));
                if serving && matches!(e, SourceEvent::PeerConnected) {
                    self.prepared().await;
                }
                self.source_event(e).await
            }
            MigrationInput::Destination(e) => {
                let actions = self
                    .mig
                    .as_mut()
                    .map(|m| m.step_destination(e))
                    .unwrap_or_default();
                self.destination_actions(actions);
                Ok(None)
            }
            MigrationInput::Announce(reply) => {
                self.announced(reply).await;
                Ok(None)
            }
            MigrationInput::AnnouncementExpired => {
                tracing::info!(
                    "{} s since the migration was announced: unless QEMU migrates, it is over",
                    migration::ANNOUNCE_HOLD.as_secs()
                );
                if self.link.announcement_expired().await.is_err() {
                    tracing::warn!("the QEMU link has ended");
                }
                Ok(None)
            }
            MigrationInput::Nothing => Ok(None),
        }
    }

    /// The destination host announced a migration of this VM (libvirt's hook there, before
    /// QEMU migrates): input moves to the exactly-once lane now, and the announcer hears
    /// [`Message::Announced`] once nothing sent on the fast lane awaits confirmation. With
    /// QEMU's `MIGRATION` `setup` alone the lane closes only as the migration starts, and a
    /// small VM's switchover `STOP` can follow within 20 ms (measured under libvirt), before
    /// a loaded console has confirmed its last fast-lane keys: those would be uncertain.
    async fn announced(&mut self, reply: tokio::sync::mpsc::UnboundedSender<Message>) {
        let serving = self
            .mig
            .as_ref()
            .is_some_and(|m| !m.arriving() && matches!(m.source, SourceState::Serving { .. }));
        if !serving {
            tracing::warn!("a migration announced while this console does not serve: ignored");
            return;
        }
        let fenced = match self.link.migration_fenced().await {
            Ok(fenced) => fenced,
            Err(_) => {
                tracing::warn!("the QEMU link has ended: the migration is not announced to it");
                return;
            }
        };
        tracing::info!(
            "the destination host announced a migration: input takes the exactly-once lane"
        );
        self.with_mig(|m| {
            m.announce_expiry = Some(tokio::time::Instant::now() + migration::ANNOUNCE_HOLD);
        });
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            if fenced.await.is_ok() {
                let took_us = start.elapsed().as_micros();
                tracing::info!(took_us, "announced migration: the fast lane is confirmed");
                let _ = reply.send(Message::Announced);
            }
        });
    }

    /// A run-state change of this console's VM.
    pub(super) async fn vm_event(&mut self, v: VmEvent) -> Result<Option<Exit>, ConsoleError> {
        if self.mig.is_none() {
            return Ok(None);
        }
        let event = match v {
            VmEvent::Stopped => SourceEvent::Stopped,
            VmEvent::StoppedForMigration => SourceEvent::StoppedForMigration,
            VmEvent::Resumed => SourceEvent::Resumed,
            VmEvent::MigrationStarted => SourceEvent::MigrationStarted,
            VmEvent::MigrationCompleted => SourceEvent::MigrationCompleted,
            VmEvent::MigrationEnded => SourceEvent::MigrationFailed,
        };
        self.source_event(event).await
    }

    /// Steps the source machine and performs its actions (and their follow-up events).
    async fn source_event(&mut self, first: SourceEvent) -> Result<Option<Exit>, ConsoleError> {
        let mut queue = VecDeque::from([first]);
        while let Some(event) = queue.pop_front() {
            let Some(m) = self.mig.as_mut() else {
                break;
            };
            if let SourceEvent::Received(Message::TakenOver { relay_to }) = &event {
                m.relay_to = *relay_to;
            }
            for action in m.step_source(event) {
                match action {
                    SourceAction::Freeze => self.freeze_for_migration().await?,
                    SourceAction::SendSnapshot => self.with_mig(|m| {
                        if let Some(kept) = &m.kept {
                            m.send_out(Message::Snapshot {
                                bytes: kept.moved.clone(),
                            });
                        }
                    }),
                    SourceAction::SendAbort(reason) => {
                        self.with_mig(|m| m.send_out(Message::Abort { reason }));
                    }
                    SourceAction::Connect => self.with_mig(|m| m.connect()),
                    SourceAction::Disconnect => self.with_mig(|m| m.disconnect()),
                    SourceAction::Thaw => {
                        self.thaw().await?;
                        queue.push_back(SourceEvent::Thawed);
                    }
                    SourceAction::ReleaseCheckpoint => self.release(),
                    SourceAction::Exit => return Ok(Some(Exit::HandedOver)),
                }
            }
        }
        Ok(None)
    }

    fn with_mig(&mut self, f: impl FnOnce(&mut migration::CoMigration)) {
        if let Some(m) = self.mig.as_mut() {
            f(m);
        }
    }

    /// The freeze: relay on, hub frozen, service address off this host, sockets checkpointed.
    async fn freeze_for_migration(&mut self) -> Result<(), ConsoleError> {
        let frozen_at = now_us();
        let service = self.mig.as_ref().and_then(|m| m.service.clone());
        let relay = service.as_ref().and_then(|s| match s.relay() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "no relay: input sent during the move waits for the viewers' retransmission");
                None
            }
        });
        let handover = self.freeze().await?;
        // Acknowledge now what the viewers sent and the kernel holds (it travels in the
        // checkpoint): a viewer with unacknowledged bytes holds its next keys back (Nagle)
        // until an acknowledgement it accepts, and the restored socket's first segment (a
        // window probe) is not one. Acknowledged, it sends them at once: the relay catches them.
        for v in &handover.viewers {
            if let Err(e) = socket2::SockRef::from(&v.stream).set_quickack(true) {
                tracing::debug!(viewer = v.id.0, error = %e, "no quick acknowledgement");
            }
        }
        if let Some(s) = &service {
            if let Err(e) = s.remove() {
                tracing::error!(error = %error_chain(&e), "the service address is still here: this host may reset the viewers' connections");
            }
        }
        let kept = migration::checkpoint(handover, frozen_at, relay);
        tracing::info!(
            bytes = kept.moved.len(),
            viewers = kept.sockets.len(),
            gateway_viewers = kept.pipes.len(),
            "frozen for the switchover; checkpoint kept"
        );
        self.with_mig(|m| {
            m.record = Record {
                snapshot_bytes: u64::try_from(kept.moved.len()).ok(),
                viewers_moved: u64::try_from(kept.sockets.len() + kept.pipes.len()).ok(),
                frozen_at_us: Some(frozen_at),
                taken_over_at_us: None,
            };
            m.kept = Some(kept);
        });
        Ok(())
    }

    /// The VM runs here again: the viewers come back from the checkpoint, held input flows.
    /// The sessions are restored before the sockets leave repair mode: if that fails, the
    /// sockets are closed silently (the error ends the console, and the viewers' connections
    /// end with their retransmission timers, not with a reset from here).
    async fn thaw(&mut self) -> Result<(), ConsoleError> {
        let Some(kept) = self.mig.as_mut().and_then(|m| m.kept.take()) else {
            return Ok(());
        };
        let handed: Vec<HandedViewer> = kept
            .sockets
            .into_iter()
            .map(|(id, stream, unread)| HandedViewer { id, stream, unread })
            .collect();
        let (sessions, mut streams) = match ConsoleSnapshot::decode(&kept.console)
            .map_err(ConsoleError::from)
            .and_then(
                |ConsoleSnapshot {
                     screen,
                     sessions,
                     streams,
                     ..
                 }| Ok((self.restore_sessions(screen, sessions)?, streams)),
            ) {
            Ok(restored) => restored,
            Err(e) => {
                migration::abandon_sockets(handed);
                return Err(e);
            }
        };
        // The gateway sessions are still live here: served again with the bytes the frozen
        // readers had taken out of them.
        let pipes = kept
            .pipes
            .into_iter()
            .map(|(id, pipe)| {
                let unread = streams.remove(&id).map(|s| s.unread).unwrap_or_default();
                (id, pipe, unread)
            })
            .collect();
        for v in &handed {
            if let Err(e) = tcp::resume(&v.stream) {
                tracing::error!(viewer = v.id.0, error = %error_chain(&e), "viewer socket cannot leave repair mode");
            }
        }
        if let Some(s) = self.mig.as_ref().and_then(|m| m.service.clone()) {
            if let Err(e) = s.add().and_then(|()| s.announce()) {
                tracing::error!(error = %error_chain(&e), "the service address could not come back");
            }
        }
        self.attach_viewers(sessions, handed, pipes);
        if let Some(lane) = &self.serial {
            lane.thaw();
        }
        // The screen moved on while frozen; the restored sessions learn it as damage.
        self.refresh_screen().await;
        if self.link.thaw().await.is_err() {
            tracing::warn!("the QEMU link ended during the thaw");
        }
        tracing::info!(
            viewers = self.viewers.len(),
            "thawed: the VM runs here again"
        );
        Ok(())
    }

    /// Applies the link's whole framebuffer to the screen cache (changes become damage).
    pub(super) async fn refresh_screen(&mut self) {
        let Ok(fb) = self.link.framebuffer().await else {
            return;
        };
        if (fb.width(), fb.height()) != (self.screen.width(), self.screen.height()) {
            self.apply(&Rectangle {
                x: 0,
                y: 0,
                width: fb.width(),
                height: fb.height(),
                payload: RectPayload::DesktopSize,
            });
        }
        if let Ok(rect) = UpdateEncoder::new().encode(&fb, 0, 0, fb.width(), fb.height()) {
            self.apply(&rect);
        }
    }

    /// The destination serves the session: hand it what the relay caught, close the repaired
    /// sockets silently.
    fn release(&mut self) {
        let Some(m) = self.mig.as_mut() else {
            return;
        };
        let Some(kept) = m.kept.take() else {
            return;
        };
        if let (Some(relay), Some(mac)) = (&kept.relay, m.relay_to) {
            match relay.forward(MacAddr(mac)) {
                Ok(n) => tracing::info!(segments = n, "relayed what viewers sent during the move"),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "relay failed: the viewers will retransmit")
                }
            }
        }
        for (id, sock, _) in kept.sockets {
            if let Err(e) = tcp::abandon(sock) {
                tracing::warn!(viewer = id.0, error = %error_chain(&e), "closing a moved socket");
            }
        }
        // The gateway sessions live on the destination now: tell the gateway where.
        let moved_to = self.gateway_moved_to();
        for (id, pipe) in kept.pipes {
            tracing::debug!(viewer = id.0, ?moved_to, "gateway session handed off");
            self.handed_off.extend(pipe.hand_off(moved_to));
        }
    }

    /// `prepare ADDR`: connect to the destination console now, so the snapshot leaves at once.
    pub(super) fn prepare(&mut self, addr: SocketAddr, reply: oneshot::Sender<String>) {
        let Some(m) = self.mig.as_mut() else {
            let _ = reply.send(control::failed(
                "co-migration is off: start the console with --peer-key-file",
                serde_json::json!({}),
            ));
            return;
        };
        let connected = matches!(
            m.source,
            SourceState::Serving {
                peer: Link::Connected
            } | SourceState::Precopying {
                peer: Link::Connected
            }
        );
        if matches!(
            m.source,
            SourceState::Sent | SourceState::Thawing | SourceState::Done
        ) {
            let _ = reply.send(control::failed(
                &format!("a migration is in flight (phase {})", m.source),
                serde_json::json!({ "phase": m.phase() }),
            ));
            return;
        }
        if connected && m.to_destination == Some(addr) {
            let _ = reply.send(control::ok(serde_json::json!({})));
            return;
        }
        if let (SourceState::Precopying { .. }, Some(to)) = (&m.source, m.to_destination) {
            if to != addr {
                // Re-pointing the console now would cut the migration under way from its
                // destination: one migration of a VM at a time.
                let _ = reply.send(control::failed(
                    &format!(
                        "a migration to {to} is under way (phase {}): one at a time; if it is \
                         over, say `migration-ended` first",
                        m.source
                    ),
                    serde_json::json!({ "phase": m.phase() }),
                ));
                return;
            }
        }
        if connected {
            m.disconnect();
            m.step_source(SourceEvent::PeerLost);
        }
        m.to_destination = Some(addr);
        m.prepare_reply = Some(reply);
        m.connect();
    }

    /// A `prepare` connected to its destination console: a migration is coming. Input moves
    /// to the exactly-once lane now, as on `migration-started`: a manager that migrates with
    /// the `events` capability off announces nothing else before the switchover's `STOP`, and
    /// a fast-lane key QEMU reads just after that `STOP` is dropped. (Under libvirt nobody
    /// prepares: the `MIGRATION` event announces the migration, and the source looks for its
    /// destination among its `--peer`s.) The lane reopens when the migration ends (`MIGRATION` `failed`/`cancelled`, the source
    /// resuming after its switchover, or `migration-ended`); until then keys cost a QMP round
    /// trip, never a loss.
    async fn prepared(&mut self) {
        if self.link.migration_started().await.is_err() {
            tracing::warn!("the QEMU link has ended: the migration is not announced to it");
        }
    }

    /// `migration-started` / `migration-ended` from the orchestrator.
    pub(super) async fn announce_migration(
        &mut self,
        started: bool,
        reply: oneshot::Sender<String>,
    ) {
        let sent = if started {
            self.link.migration_started().await
        } else {
            self.link.migration_ended().await
        };
        let line = match sent {
            Ok(()) => control::ok(serde_json::json!({})),
            Err(_) => control::failed("the QEMU link has ended", serde_json::json!({})),
        };
        let _ = reply.send(line);
    }

    /// Ends the console: the link is shut (if still there), the gateway told where its
    /// sessions went (bounded by [`HAND_OFF_WAIT`]).
    pub(super) async fn exit(self, exit: Exit) -> Result<Exit, ConsoleError> {
        let deadline = tokio::time::Instant::now() + HAND_OFF_WAIT;
        for driver in self.handed_off {
            if tokio::time::timeout_at(deadline, driver).await.is_err() {
                tracing::warn!("a gateway session's Moved frame did not leave in time: the gateway finds the destination by retrying");
                break;
            }
        }
        for (_, slot) in self.viewers {
            slot.close();
        }
        if let Err(e) = self.link.shutdown().await {
            if self.gone.is_none() {
                tracing::warn!(error = %error_chain(&e), "the QEMU link had failed");
            }
        }
        tracing::info!(?exit, "console exiting");
        Ok(exit)
    }
}
