//! Freezing the hub into a hand-over (local, or for a migration) and taking one over.

use super::*;
use crate::front::conn::{self, Reunited};
use crate::snapshot::StreamPiece;

/// Longest a freeze waits for the viewers' writers, all of them together: a viewer whose
/// writer is still in the middle of a batch then is cut (its RFB stream would break
/// mid-message) and counted, never the session.
const FREEZE_WAIT: Duration = Duration::from_secs(2);
/// How long an idle writer may take to end once its channel closed (it ends at once; this only
/// bounds a scheduler that is slow to run it), whatever the deadline.
const IDLE_WRITER_GRACE: Duration = Duration::from_secs(1);

/// Asks the console at `path` to freeze and receives its hand-over.
pub(in crate::front) async fn take_over(path: &Path) -> Result<Handover, HandoverError> {
    let mut sock = UnixStream::connect(path).await?;
    sock.write_all(b"freeze\n").await?;
    let mut sock = sock.into_std()?;
    sock.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || recv_handover(&mut sock))
        .await
        .map_err(|e| HandoverError::Io(std::io::Error::other(e)))?
}

impl Hub {
    /// Freezes the console into a hand-over (see `front`'s module docs for the steps).
    pub(super) async fn freeze(&mut self) -> Result<Handover, ConsoleError> {
        tracing::info!(viewers = self.viewers.len(), "freezing");
        let deadline = Instant::now() + FREEZE_WAIT;
        // 1. Stop reading every viewer; keep what was read but not handled, in order.
        let mut unread: BTreeMap<ViewerId, Vec<u8>> = BTreeMap::new();
        let mut reads = BTreeMap::new();
        for (id, slot) in &mut self.viewers {
            if let Some(stop) = slot.stop_reader.take() {
                let _ = stop.send(());
            }
            let parts = (&mut slot.reader).await;
            let mut bytes = Vec::new();
            while let Ok(FromViewer::Message(m)) = slot.from.try_recv() {
                m.encode(&mut bytes);
            }
            if let Ok(parts) = parts {
                if let Some(m) = &parts.unsent {
                    m.encode(&mut bytes);
                }
                bytes.extend_from_slice(&parts.buffered);
                reads.insert(*id, parts.read);
            }
            unread.insert(*id, bytes);
        }
        // 2. Freeze the link with the refused input: its journal is the snapshot's.
        let mut extra = Vec::new();
        for (id, slot) in &mut self.viewers {
            extra.extend(slot.blocked.drain(..).map(|ev| (*id, ev)));
        }
        let journal = self
            .link
            .freeze_with(extra)
            .await
            .map_err(|e| ConsoleError::Link(Box::new(e)))?;
        // 3. Wait for the writers to finish.
        loop {
            let busy = self
                .viewers
                .values()
                .any(|s| !s.writer_idle || !s.replies.is_empty());
            if !busy {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!("freeze: writers not settled; carried on");
                break;
            }
            for slot in self.viewers.values_mut() {
                if slot.writer_idle && !slot.replies.is_empty() {
                    let batch = std::mem::take(&mut slot.replies);
                    if slot.to.try_send(batch).is_ok() {
                        slot.writer_idle = false;
                    }
                }
            }
            tokio::select! {
                Some(w) = self.written_rx.recv() => self.written(w),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
        // 4. Snapshot, then reunite each socket. Every writer's channel closes first, so idle
        // writers end together; only one still in the middle of a batch at the deadline is cut.
        let mut sessions = BTreeMap::new();
        let mut viewers = Vec::new();
        let mut streams = BTreeMap::new();
        let mut pipes = Vec::new();
        let writers: Vec<_> = std::mem::take(&mut self.viewers)
            .into_iter()
            .map(|(id, mut slot)| {
                sessions.insert(id, slot.session.freeze());
                let Slot {
                    to,
                    writer,
                    writer_idle,
                    ..
                } = slot;
                drop(to);
                (id, writer, writer_idle)
            })
            .collect();
        for (id, mut writer, idle) in writers {
            let until = if idle {
                Instant::now() + IDLE_WRITER_GRACE
            } else {
                deadline
            };
            let write = match tokio::time::timeout_at(until.into(), &mut writer).await {
                Ok(Ok(w)) => w,
                _ => {
                    writer.abort();
                    self.viewers_cut += 1;
                    tracing::warn!(
                        viewer = id.0,
                        "writer still busy at the freeze's deadline: viewer cut, not handed over"
                    );
                    sessions.remove(&id);
                    continue;
                }
            };
            let Some(read) = reads.remove(&id) else {
                sessions.remove(&id);
                continue;
            };
            let unread = unread.remove(&id).unwrap_or_default();
            match conn::reunite(read, write) {
                Some(Reunited::Tcp(stream)) => viewers.push(HandedViewer { id, stream, unread }),
                Some(Reunited::Gateway(pipe)) => {
                    // Nothing reads or writes it now: its state is final for the snapshot.
                    streams.insert(
                        id,
                        StreamPiece {
                            stream: pipe.export(),
                            unread,
                        },
                    );
                    pipes.push((id, pipe));
                }
                None => {
                    sessions.remove(&id);
                }
            }
        }
        let held = journal.held();
        let serial = match &self.serial {
            Some(lane) => lane.freeze().await,
            None => None,
        };
        let snapshot = ConsoleSnapshot {
            journal,
            screen: self.screen.freeze(),
            sessions,
            serial,
            streams,
        }
        .encode()?;
        tracing::info!(
            bytes = snapshot.len(),
            viewers = viewers.len(),
            gateway_viewers = pipes.len(),
            held,
            "frozen"
        );
        Ok(Handover {
            snapshot,
            viewers,
            pipes,
        })
    }
}
