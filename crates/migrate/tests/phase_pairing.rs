//! A source and a destination phase machine paired over a simulated connection, with a
//! simulated QEMU that keeps its guarantees (never both VMs running; the source stops before
//! the destination runs; a migration ends with the destination's RESUME or the source's),
//! and random delays of VM events and messages, connection drops and destination restarts.
//! Checked after every step: never both sides serve; the source's checkpoint lives until the
//! takeover is acknowledged or the source thaws; at the end exactly one side serves, and a
//! failed migration ends with the source serving.

use std::collections::VecDeque;

use migrate::phase::{
    destination_step, source_step, DestinationAction as DA, DestinationEvent as DE,
    DestinationState as DS, Link, SourceAction as SA, SourceEvent as SE, SourceState as SS,
};
use migrate::protocol::Message;
use proptest::prelude::*;

const SNAP: &[u8] = b"the console snapshot";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mig {
    NotStarted,
    Precopy,
    Switchover,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    VmStep,
    ReadSrcVm,
    ReadDstVm,
    ToDst,
    ToSrc,
    Drop,
    Connect,
    RestartDst,
    Complete,
}

#[derive(Default)]
struct Conn {
    to_dst: VecDeque<Message>,
    to_src: VecDeque<Message>,
}

struct Sim {
    success: bool,
    fail_early: bool,
    events_on: bool,
    mig: Mig,
    src_vm_running: bool,
    dst_vm_running: bool,
    dst_vm_dead: bool,
    src: Option<SS>,
    dst: Option<DS>,
    src_vm_events: VecDeque<SE>,
    dst_vm_events: VecDeque<DE>,
    conn: Option<Conn>,
    wants_connect: bool,
    checkpoint: bool,
    restores_this_dst: usize,
    log: Vec<String>,
}

impl Sim {
    fn new(success: bool, fail_early: bool, events_on: bool) -> Sim {
        Sim {
            success,
            fail_early,
            events_on,
            mig: Mig::NotStarted,
            src_vm_running: true,
            dst_vm_running: false,
            dst_vm_dead: false,
            src: Some(SS::Serving {
                peer: Link::Disconnected,
            }),
            dst: Some(DS::Waiting),
            src_vm_events: VecDeque::new(),
            dst_vm_events: VecDeque::new(),
            conn: None,
            wants_connect: true,
            checkpoint: false,
            restores_this_dst: 0,
            log: Vec::new(),
        }
    }

    fn src_event(&mut self, e: SE) -> Result<(), String> {
        let Some(s) = self.src.take() else {
            return Ok(());
        };
        self.log.push(format!("src {s} + {e:?}"));
        let (s, actions) = source_step(s, e).map_err(|r| format!("{}: {:?}", r.error, self.log))?;
        self.src = Some(s);
        for a in actions {
            self.src_action(a)?;
        }
        Ok(())
    }

    fn dst_event(&mut self, e: DE) -> Result<(), String> {
        let Some(d) = self.dst.take() else {
            return Ok(());
        };
        self.log.push(format!("dst {d} + {e:?}"));
        let (d, actions) =
            destination_step(d, e).map_err(|r| format!("{}: {:?}", r.error, self.log))?;
        self.dst = Some(d);
        for a in actions {
            self.dst_action(a)?;
        }
        Ok(())
    }

    fn send_to_dst(&mut self, m: Message) -> Result<(), String> {
        let c = self.conn.as_mut().ok_or("source sent with no connection")?;
        c.to_dst.push_back(m);
        Ok(())
    }

    /// Closes the connection; the side that did not close it sees PeerLost.
    fn close(&mut self, closed_by_src: bool) -> Result<(), String> {
        if self.conn.take().is_some() {
            if closed_by_src {
                self.dst_event(DE::PeerLost)?;
            } else {
                self.src_event(SE::PeerLost)?;
            }
        }
        Ok(())
    }

    fn src_action(&mut self, a: SA) -> Result<(), String> {
        match a {
            SA::Freeze => self.checkpoint = true,
            SA::SendSnapshot => {
                if !self.checkpoint {
                    return Err("snapshot sent without a checkpoint".into());
                }
                self.send_to_dst(Message::Snapshot {
                    bytes: SNAP.to_vec(),
                })?;
            }
            SA::SendAbort(reason) => self.send_to_dst(Message::Abort { reason })?,
            SA::Connect => {
                self.close(true)?;
                self.wants_connect = true;
            }
            SA::Disconnect => {
                self.close(true)?;
                self.wants_connect = false;
            }
            SA::Thaw => {
                if !self.src_vm_running || !self.checkpoint {
                    return Err(format!(
                        "thaw with VM stopped or no checkpoint: {:?}",
                        self.log
                    ));
                }
                self.checkpoint = false;
            }
            SA::ReleaseCheckpoint => {
                if !matches!(self.dst, Some(DS::Serving { .. })) {
                    return Err(format!(
                        "checkpoint released before takeover: {:?}",
                        self.log
                    ));
                }
                self.checkpoint = false;
            }
            SA::Exit => {
                self.src = None;
                self.close(true)?;
            }
        }
        Ok(())
    }

    fn dst_action(&mut self, a: DA) -> Result<(), String> {
        let c = self.conn.as_mut();
        match a {
            DA::Discard => {}
            DA::RequestSnapshot => c
                .ok_or("no connection")?
                .to_src
                .push_back(Message::ResendSnapshot),
            DA::SendTakenOver => c
                .ok_or("no connection")?
                .to_src
                .push_back(Message::TakenOver { relay_to: None }),
            DA::Restore { snapshot } => {
                self.restores_this_dst += 1;
                if !self.dst_vm_running || snapshot != SNAP || self.restores_this_dst > 1 {
                    return Err(format!("bad restore: {:?}", self.log));
                }
            }
        }
        Ok(())
    }

    fn vm_step(&mut self) -> Result<(), String> {
        match self.mig {
            Mig::NotStarted => {
                self.mig = Mig::Precopy;
                if self.events_on {
                    self.src_vm_events.push_back(SE::MigrationStarted);
                }
            }
            Mig::Precopy if !self.success && self.fail_early => {
                if self.events_on {
                    self.src_vm_events.push_back(SE::MigrationFailed);
                }
                self.dst_dies()?;
            }
            Mig::Precopy => {
                self.mig = Mig::Switchover;
                self.src_vm_running = false;
                self.src_vm_events.push_back(SE::StoppedForMigration);
            }
            Mig::Switchover if self.success => {
                self.mig = Mig::Completed;
                self.dst_vm_running = true;
                self.dst_vm_events.push_back(DE::Resumed);
                if self.events_on {
                    self.src_vm_events.push_back(SE::MigrationCompleted);
                }
            }
            Mig::Switchover => {
                if self.events_on {
                    self.src_vm_events.push_back(SE::MigrationFailed);
                }
                self.src_vm_running = true;
                self.src_vm_events.push_back(SE::Resumed);
                self.dst_dies()?;
            }
            Mig::Completed | Mig::Failed => {}
        }
        Ok(())
    }

    /// The destination QEMU exits after a failed migration; its console follows.
    fn dst_dies(&mut self) -> Result<(), String> {
        self.mig = Mig::Failed;
        self.dst_vm_dead = true;
        self.dst = None;
        self.dst_vm_events.clear();
        self.close(false)
    }

    fn apply(&mut self, op: Op) -> Result<bool, String> {
        match op {
            Op::VmStep => self.vm_step()?,
            Op::ReadSrcVm => match self.src_vm_events.pop_front() {
                Some(e) => self.src_event(e)?,
                None => return Ok(false),
            },
            Op::ReadDstVm => match self.dst_vm_events.pop_front() {
                Some(e) => self.dst_event(e)?,
                None => return Ok(false),
            },
            Op::ToDst => match self.conn.as_mut().and_then(|c| c.to_dst.pop_front()) {
                Some(m) => self.dst_event(DE::Received(m))?,
                None => return Ok(false),
            },
            Op::ToSrc => match self.conn.as_mut().and_then(|c| c.to_src.pop_front()) {
                Some(m) => self.src_event(SE::Received(m))?,
                None => return Ok(false),
            },
            Op::Drop => {
                if self.conn.take().is_none() {
                    return Ok(false);
                }
                self.src_event(SE::PeerLost)?;
                self.dst_event(DE::PeerLost)?;
            }
            Op::Connect => {
                if self.conn.is_some()
                    || !self.wants_connect
                    || self.src.is_none()
                    || self.dst.is_none()
                {
                    return Ok(false);
                }
                self.conn = Some(Conn::default());
                self.src_event(SE::PeerConnected)?;
                self.dst_event(DE::PeerConnected)?;
            }
            Op::RestartDst => {
                // Killing a serving destination kills the session, migration or not.
                if self.dst_vm_dead
                    || self.dst.is_none()
                    || matches!(self.dst, Some(DS::Serving { .. }))
                {
                    return Ok(false);
                }
                self.log.push("dst restarted".into());
                self.dst = None;
                self.close(false)?;
                self.dst = Some(DS::Waiting);
                self.restores_this_dst = 0;
                self.dst_vm_events.clear();
                if self.dst_vm_running {
                    self.dst_event(DE::Resumed)?;
                }
            }
            Op::Complete => {
                let mut any = false;
                if matches!(self.src, Some(SS::Thawing)) {
                    self.src_event(SE::Thawed)?;
                    any = true;
                }
                if matches!(self.dst, Some(DS::TakingOver { .. })) {
                    self.dst_event(DE::Restored)?;
                    any = true;
                }
                return Ok(any);
            }
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), String> {
        let src = self.src.as_ref().is_some_and(SS::serves);
        let dst = self.dst.as_ref().is_some_and(DS::serves);
        if src && dst {
            return Err(format!("both serve: {:?}", self.log));
        }
        if self.src.is_none() && !matches!(self.dst, Some(DS::Serving { .. })) {
            return Err(format!(
                "source exited, destination not serving: {:?}",
                self.log
            ));
        }
        if self.src_vm_running && self.dst_vm_running {
            return Err("simulated QEMU broke its guarantee".into());
        }
        Ok(())
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::VmStep),
        3 => Just(Op::ReadSrcVm),
        3 => Just(Op::ReadDstVm),
        4 => Just(Op::ToDst),
        4 => Just(Op::ToSrc),
        1 => Just(Op::Drop),
        3 => Just(Op::Connect),
        1 => Just(Op::RestartDst),
        2 => Just(Op::Complete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_session_is_always_in_exactly_one_place(
        success in any::<bool>(),
        fail_early in any::<bool>(),
        events_on in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut sim = Sim::new(success, fail_early, events_on);
        for op in ops {
            sim.apply(op).map_err(TestCaseError::fail)?;
            sim.check().map_err(TestCaseError::fail)?;
        }
        // Then let everything happen, fairly, with no more faults.
        while !matches!(sim.mig, Mig::Completed | Mig::Failed) {
            sim.vm_step().map_err(TestCaseError::fail)?;
        }
        let quiet = [Op::ReadSrcVm, Op::ReadDstVm, Op::Complete, Op::Connect, Op::ToDst, Op::ToSrc];
        let mut rounds = 0;
        while quiet.iter().try_fold(false, |any, op| sim.apply(*op).map(|p| any | p))
            .map_err(TestCaseError::fail)?
        {
            sim.check().map_err(TestCaseError::fail)?;
            rounds += 1;
            prop_assert!(rounds < 1000, "no quiescence: {:?}", sim.log);
        }
        let src_serves = sim.src.as_ref().is_some_and(SS::serves);
        let dst_serves = matches!(sim.dst, Some(DS::Serving { .. }));
        if sim.mig == Mig::Completed {
            prop_assert!(dst_serves && sim.src.is_none(), "handed over and acknowledged: {:?}", sim.log);
        } else {
            prop_assert!(src_serves && sim.dst.is_none(), "failed: source serves: {:?}", sim.log);
            let serving = matches!(sim.src, Some(SS::Serving { .. }) | Some(SS::Precopying { .. }));
            prop_assert!(serving, "failed: source back to serving");
        }
        prop_assert!(!sim.checkpoint, "checkpoint released or consumed at the end");
    }
}
