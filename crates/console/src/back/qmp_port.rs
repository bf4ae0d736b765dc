//! The link's QMP side: commands in flight and events, handed back in the order QEMU sent
//! them.
//!
//! The journal must see "`STOP`, then the reply to `input-send-event`" in that order, or it
//! would hold input for a VM that runs (or deliver into one that stopped). The [`qmp`] crate
//! gives every inbound message a [`qmp::Seq`] and completes a reply only after handing over
//! every earlier event. So:
//! - replies come back in submission order (no `oob`: QEMU answers in order), so only the
//!   oldest command's future is awaited;
//! - before an event is handed out, the oldest command's future is polled: if it is still
//!   pending, its reply was not yet sent when that event was, so the event comes first;
//! - before a reply is handed out, the events that came before it (smaller seq) go first.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use serde_json::Value;

use crate::journal::{BatchId, ProbeId};

/// What a command in flight was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// An `input-send-event` batch of the journal, carrying `keys` key/button events.
    Batch {
        /// The journal's name for it.
        batch: BatchId,
        /// Key and button events in it.
        keys: u64,
        /// Where the guest's pointer is once it is delivered.
        pointer: (u16, u16),
    },
    /// A `query-status` confirming fast-lane events after a fence.
    Probe(ProbeId),
    /// A `query-status` after `STOP`: was it a migration's stop?
    Classify,
    /// A `query-mice` after QEMU refused motion: is the guest's mouse absolute?
    Mice,
    /// A `migrate-set-capabilities` turning `events` on (why: `vm_watch::Decision::EventsOn`).
    EventsOn,
}

/// One inbound item, in QEMU's order.
#[derive(Debug)]
pub(super) enum Item {
    /// An event.
    Event(qmp::Event),
    /// The reply to a command of ours.
    Reply(Kind, Result<qmp::Reply, qmp::Error>),
}

type ReplyFuture = Pin<Box<dyn Future<Output = Result<qmp::Reply, qmp::Error>> + Send>>;

/// Commands in flight and events not yet handed out.
pub(super) struct QmpPort {
    client: qmp::Client,
    events: qmp::Events,
    in_flight: VecDeque<(Kind, ReplyFuture)>,
    /// The oldest command's result, once its future completed.
    head: Option<(Kind, Result<qmp::Reply, qmp::Error>)>,
    buffered: VecDeque<qmp::Event>,
    events_ended: bool,
}

impl QmpPort {
    pub(super) fn new(client: qmp::Client, events: qmp::Events) -> Self {
        QmpPort {
            client,
            events,
            in_flight: VecDeque::new(),
            head: None,
            buffered: VecDeque::new(),
            events_ended: false,
        }
    }

    /// Sends a command now (compact JSON, no id: see the qmp crate).
    pub(super) fn send(&mut self, kind: Kind, name: &'static str, args: Value) {
        let client = self.client.clone();
        let mut future: ReplyFuture = Box::pin(async move { client.execute_at(name, args).await });
        // The first poll hands the command to the connection task, so commands reach QEMU in
        // the order they were sent (its queue holds 64; we never have more than 5 in flight).
        let mut cx = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(result) if self.in_flight.is_empty() && self.head.is_none() => {
                self.head = Some((kind, result));
            }
            Poll::Ready(result) => {
                self.in_flight
                    .push_back((kind, Box::pin(std::future::ready(result))));
            }
            Poll::Pending => self.in_flight.push_back((kind, future)),
        }
    }

    /// The event stream ended (QEMU closed QMP) and every event was handed out.
    pub(super) fn ended(&self) -> bool {
        self.events_ended && self.buffered.is_empty() && self.head.is_none()
    }

    /// The next item that is already here, in QEMU's order; `None` if nothing is.
    pub(super) fn next_ready(&mut self) -> Option<Item> {
        while let Some(event) = self.events.try_recv() {
            self.buffered.push_back(event);
        }
        if self.head.is_none() {
            if let Some((_, future)) = self.in_flight.front_mut() {
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(result) = future.as_mut().poll(&mut cx) {
                    if let Some((kind, _)) = self.in_flight.pop_front() {
                        self.head = Some((kind, result));
                    }
                }
            }
        }
        match &self.head {
            Some((_, result)) => {
                // A reply without a position (the connection closed) comes after every event.
                let before = |e: &qmp::Event| reply_seq(result).is_none_or(|s| e.seq < s);
                if self.buffered.front().is_some_and(before) {
                    self.buffered.pop_front().map(Item::Event)
                } else {
                    self.head
                        .take()
                        .map(|(kind, result)| Item::Reply(kind, result))
                }
            }
            // The oldest reply was not sent yet when these events were read: they come first.
            None => self.buffered.pop_front().map(Item::Event),
        }
    }

    /// Waits until [`next_ready`](Self::next_ready) has something or the events ended.
    /// Cancel-safe.
    pub(super) async fn wait(&mut self) {
        if self.head.is_some() || !self.buffered.is_empty() {
            return;
        }
        let front = self.in_flight.front_mut().map(|(_, f)| f);
        let woke = tokio::select! {
            event = self.events.recv(), if !self.events_ended => Woke::Event(event),
            result = async {
                match front {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => Woke::Reply(result),
        };
        match woke {
            Woke::Event(Some(event)) => self.buffered.push_back(event),
            Woke::Event(None) => self.events_ended = true,
            Woke::Reply(result) => {
                if let Some((kind, _)) = self.in_flight.pop_front() {
                    self.head = Some((kind, result));
                }
            }
        }
    }
}

enum Woke {
    Event(Option<qmp::Event>),
    Reply(Result<qmp::Reply, qmp::Error>),
}

/// Where a reply sits in the inbound stream; `None` when there was no reply (closed).
fn reply_seq(result: &Result<qmp::Reply, qmp::Error>) -> Option<qmp::Seq> {
    match result {
        Ok(reply) => Some(reply.seq),
        Err(qmp::Error::Qmp { seq, .. }) => Some(*seq),
        Err(_) => None,
    }
}
