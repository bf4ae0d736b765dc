//! A destination console (`--incoming ADDR`) before it serves: it waits for the source
//! console's snapshot and for its own VM to run, whichever comes first, and hands the session
//! to the hub, which restores the viewers' connections and takes the service address only once
//! nothing else can fail (see `Hub::start`).
//!
//! It watches its VM on the console's own QMP monitor (`RESUME`, or `running` at start: a
//! console restarted after the switchover) and lets go of that monitor before the hub's link
//! attaches to it. It delivers no input (there is none before the takeover: the viewers are
//! still the source's).
//!
//! It attaches to QEMU's VNC server at once (QEMU serves it while `inmigrate`) and hands that
//! connection to the hub's link, so the takeover does not wait for that attach. While a
//! migration comes (a source console connected), it keeps QEMU's VNC refresh at its 30 ms base
//! with a wake that reaches no guest ([`VncAttached::wake`]): QEMU backs the refresh off while
//! nothing changes, and when the VM runs here, the first key a viewer types after the takeover
//! (a client message, which resets that timer) would otherwise bring a refresh at once, before
//! the guest drew its echo, and the echo would wait a whole interval more. Nothing is asked of
//! the connection before the link starts, after the VM runs: what QEMU's framebuffer holds
//! before the switchover never reaches a viewer. If the migration fails, the connection closes
//! with this console; the source never sees it.

use migrate::phase::{DestinationAction, DestinationEvent};
use migrate::protocol::Message;
use tokio::sync::mpsc;

use super::control_server::Request;
use super::migration::{CoMigration, MigrationInput, MovedSession};
use super::report::error_chain;
use super::ConsoleError;
use crate::back::{LinkConfig, QemuLink, VncAttached};
use crate::control;

/// How often an arriving console wakes QEMU's VNC refresh: within its base interval (30 ms).
const WAKE_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// Waits for the session; returns it as it came (nothing restored yet), with the VNC
/// connection attached meanwhile (`None` if that failed: the link attaches itself).
pub(super) async fn arrive(
    link: &LinkConfig,
    mig: &mut CoMigration,
    requests: &mut mpsc::Receiver<Request>,
) -> Result<(MovedSession, Option<VncAttached>), ConsoleError> {
    let qmp_socket = link.qmp_socket.as_path();
    let watch_err = |source: qmp::Error| ConsoleError::Watch {
        path: qmp_socket.to_path_buf(),
        source,
    };
    let (qmp, mut events) = qmp::Connection::connect(qmp_socket)
        .await
        .map_err(watch_err)?;
    let mut vnc = match QemuLink::attach_vnc(link).await {
        Ok(vnc) => {
            tracing::debug!("attached to QEMU's VNC server ahead of the takeover");
            Some(vnc)
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e),
                "attaching to QEMU's VNC server ahead of the takeover failed; the link retries then");
            None
        }
    };
    let mut pending = Vec::new();
    if qmp
        .client()
        .query_status()
        .await
        .map_err(watch_err)?
        .running
    {
        pending.push(DestinationEvent::Resumed);
    }
    let mut wake = tokio::time::interval(WAKE_EVERY);
    wake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for event in pending.drain(..) {
            for action in mig.step_destination(event) {
                if let Some(moved) = act(mig, action)? {
                    if let Err(e) = qmp.close().await {
                        tracing::debug!(error = %e, "closing the watch monitor");
                    }
                    return Ok((moved, vnc));
                }
            }
        }
        tokio::select! {
            input = mig.next() => match input {
                MigrationInput::Destination(e) => pending.push(e),
                // Nothing to announce to a console that does not serve yet: the announcer
                // hears nothing and the migration goes on as QEMU says.
                MigrationInput::Source(_)
                | MigrationInput::Announce(_)
                | MigrationInput::AnnouncementExpired
                | MigrationInput::Nothing => {}
            },
            event = events.recv() => match event.as_ref().map(|e| e.name.as_str()) {
                Some("RESUME") => pending.push(DestinationEvent::Resumed),
                Some("STOP") => pending.push(DestinationEvent::Stopped),
                Some(_) => {}
                None => return Err(ConsoleError::VmGone {
                    path: qmp_socket.to_path_buf(),
                }),
            },
            Some(request) = requests.recv() => answer(mig, request),
            _ = wake.tick(), if vnc.is_some() && matches!(mig.phase(), "Connected" | "Ready") => {
                if let Some(attached) = vnc.as_mut() {
                    if let Err(e) = attached.wake().await {
                        tracing::warn!(error = %error_chain(&e),
                            "QEMU's VNC connection failed while arriving; the link attaches again");
                        vnc = None;
                    }
                }
            }
        }
    }
}

/// Performs one action; `Restore` ends the wait with the session.
fn act(
    mig: &mut CoMigration,
    action: DestinationAction,
) -> Result<Option<MovedSession>, ConsoleError> {
    match action {
        DestinationAction::RequestSnapshot => {
            tracing::info!("the VM runs here and no snapshot came: asking the source for it");
            mig.send_in(Message::ResendSnapshot);
        }
        DestinationAction::SendTakenOver => mig.send_in(mig.taken_over()),
        DestinationAction::Discard => tracing::info!("the source gave this migration up"),
        DestinationAction::Restore { snapshot } => {
            let moved = MovedSession::decode(&snapshot)?;
            mig.record.snapshot_bytes = u64::try_from(snapshot.len()).ok();
            mig.record.viewers_moved = u64::try_from(moved.viewers.len()).ok();
            mig.record.frozen_at_us = Some(moved.frozen_at_us);
            tracing::info!(
                viewers = moved.viewers.len(),
                "the session is here and the VM runs: taking over"
            );
            return Ok(Some(moved));
        }
    }
    Ok(None)
}

/// Control requests while arriving: only `status` means something yet.
fn answer(mig: &CoMigration, request: Request) {
    let refuse = |reply: tokio::sync::oneshot::Sender<String>, what: &str| {
        let _ = reply.send(control::failed(
            &format!("{what}: this console is waiting for an incoming session"),
            serde_json::json!({ "phase": mig.phase() }),
        ));
    };
    match request {
        Request::Status(reply) => {
            let _ = reply.send(control::ok(serde_json::json!({
                "role": mig.role(),
                "phase": mig.phase(),
                "viewers": 0,
                "comigration": mig.status(),
            })));
        }
        Request::Prepare(_, reply) => refuse(reply, "cannot migrate out"),
        Request::Migration(_, reply) => refuse(reply, "no migration to announce"),
        Request::Freeze(_) => tracing::warn!("freeze refused: nothing to hand over yet"),
    }
}
