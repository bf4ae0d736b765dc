//! QEMU gone (it exited or closed a socket): the session is kept, never dropped at once.
//!
//! * **Serving or settling** (no checkpoint kept): the viewers stay connected and keep the
//!   last screen. Those that announced the DesktopName pseudo-encoding (-307) are told by the
//!   desktop's name, which says QEMU has gone; new viewers get that name in ServerInit. Input
//!   typed meanwhile is discarded and counted (`status` `input_discarded`), never journaled:
//!   there is no VM to give it to, and a restarted VM is a new boot. Every [`RETRY`] the
//!   console tries QEMU's sockets again (same paths: a VM restarted by its manager); once they
//!   answer it re-attaches with a fresh journal, the new screen reaches the same viewers as
//!   damage, the name comes back, and input flows again. After
//!   [`ConsoleConfig::qemu_wait`](super::super::ConsoleConfig::qemu_wait) without QEMU it
//!   gives up: the viewers are closed and the console exits with [`ConsoleError::QemuGone`].
//! * **Frozen with a checkpoint** (a co-migration in flight: the source QEMU exits after, or
//!   instead of, the switchover): the checkpoint waits for the destination's `TakenOver` —
//!   the normal end when a manager stops the source QEMU once the migration completed. The
//!   console does not re-attach meanwhile (a VM started again here is not the one that
//!   moved). If no destination takes over within `qemu_wait`, the console exits with
//!   [`ConsoleError::Abandoned`]; the viewers' sockets, still in repair mode, are closed
//!   silently: a destination that took over without the acknowledgement reaching this host
//!   must not have its connections cut by a reset from here.

use super::*;

/// How often QEMU's sockets are tried again while QEMU is gone.
const RETRY: Duration = Duration::from_millis(500);
/// Longest one re-attach attempt may take (connects and handshakes).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer than any wait anyone means.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The console's QEMU has gone; since when, until when it waits.
pub(super) struct Gone {
    since: Instant,
    deadline: Instant,
    next_try: Instant,
}

impl Hub {
    /// The link ended (`None` from its events): keep the session and start waiting.
    pub(super) fn qemu_gone(&mut self) {
        let now = Instant::now();
        self.gone = Some(Gone {
            since: now,
            // A wait too long for the clock (`--qemu-wait` in the centuries): a century.
            deadline: now
                .checked_add(self.config.qemu_wait)
                .unwrap_or(now + CENTURY),
            next_try: now,
        });
        if self.holds_checkpoint() {
            tracing::info!(
                wait_s = self.config.qemu_wait.as_secs(),
                "QEMU went away while the session is in flight: the checkpoint waits for the destination console"
            );
            return;
        }
        let mut discarded = 0;
        for slot in self.viewers.values_mut() {
            discarded += slot.blocked.len();
            slot.blocked.clear();
        }
        self.input_discarded += u64::try_from(discarded).unwrap_or(u64::MAX);
        tracing::warn!(
            viewers = self.viewers.len(),
            wait_s = self.config.qemu_wait.as_secs(),
            discarded,
            "QEMU has gone: viewers kept and told, input discarded; waiting for its sockets to answer again"
        );
        self.tell_name();
    }

    /// When the next step of the wait is due (a re-attach attempt, or giving up).
    pub(super) fn gone_wake(&self) -> tokio::time::Instant {
        let at = match &self.gone {
            Some(g) if self.holds_checkpoint() => g.deadline,
            Some(g) => g.next_try.min(g.deadline),
            // Not polled: the hub's branch is off while QEMU is attached.
            None => Instant::now() + RETRY,
        };
        at.into()
    }

    /// Tries QEMU's sockets again. `Some(waited)`: the wait is over, give up.
    pub(super) async fn gone_step(&mut self) -> Option<Duration> {
        let checkpoint = self.holds_checkpoint();
        let g = self.gone.as_mut()?;
        let now = Instant::now();
        let waited = now.duration_since(g.since);
        if now >= g.deadline {
            return Some(waited);
        }
        if checkpoint {
            return None;
        }
        g.next_try = now + RETRY;
        let mut config = self.config.link.clone();
        // A restarted VM is a new boot: a fresh journal, not the one a takeover began from.
        config.restore = None;
        config.connect_timeout = config.connect_timeout.min(ATTEMPT_TIMEOUT);
        let (link, events) = match QemuLink::connect(config).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "QEMU still gone");
                return None;
            }
        };
        let old = std::mem::replace(&mut self.link, link);
        self.events = events;
        self.gone = None;
        self.reattached += 1;
        let cause = old.shutdown().await.err();
        self.refresh_screen().await;
        self.tell_name();
        tracing::info!(
            after_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            viewers = self.viewers.len(),
            previous = cause.as_ref().map(|e| error_chain(e)).unwrap_or_default(),
            "QEMU answers again: re-attached, serving the same viewers"
        );
        None
    }

    /// The wait is over: close the viewers and exit saying why.
    pub(super) async fn give_up(self, waited: Duration) -> Result<Exit, ConsoleError> {
        let waited_s = waited.as_secs();
        let checkpoint = self.holds_checkpoint();
        let Hub { link, viewers, .. } = self;
        for (id, slot) in viewers {
            tracing::info!(viewer = id.0, peer = %slot.peer, "viewer closed: QEMU did not come back");
            slot.close();
        }
        let cause = match link.shutdown().await {
            Err(e) => e,
            Ok(_) => LinkError::QmpClosed,
        };
        if checkpoint {
            tracing::error!(
                waited_s,
                "no destination console took the session over: giving it up"
            );
            return Err(ConsoleError::Abandoned { waited_s });
        }
        tracing::error!(waited_s, cause = %error_chain(&cause), "QEMU did not come back: console exiting");
        Err(ConsoleError::QemuGone {
            waited_s,
            source: Box::new(cause),
        })
    }

    /// Input while QEMU is gone: not journaled, counted.
    pub(super) fn discard(&mut self) {
        self.input_discarded += 1;
    }

    /// The desktop name viewers see now.
    pub(super) fn desktop_name(&self) -> String {
        if self.gone.is_some() {
            format!(
                "{} [QEMU has gone: input discarded; waiting for it]",
                self.config.name
            )
        } else {
            self.config.name.clone()
        }
    }

    /// Tells every viewer that announced DesktopName the name of now.
    fn tell_name(&mut self) {
        let name = self.desktop_name().into_bytes();
        for slot in self.viewers.values_mut() {
            if slot.session.accepts(rfb::Encoding::DesktopName) && slot.replies.len() < MAX_REPLIES
            {
                slot.replies
                    .push(ServerMessage::FramebufferUpdate(vec![Rectangle {
                        x: 0,
                        y: 0,
                        width: 0,
                        height: 0,
                        payload: RectPayload::DesktopName(name.clone()),
                    }]));
            }
        }
    }
}
