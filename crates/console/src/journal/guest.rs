//! Whether the guest has had the chance to read the input QEMU handed its devices: the input
//! gate on the guest's own clock.
//!
//! QEMU's PS/2 keyboard queue holds 16 bytes and drops what does not fit, and only the guest
//! empties it, from its interrupt handler, when its vCPU runs. A vCPU that does not run for
//! tens of ms (a loaded host that does not schedule it, QEMU's throttle for pre-copy, a main
//! loop stall) reads nothing meanwhile: the PS/2 traces of the console tests showed every drop
//! in such a gap (the guest unread for 36–999 ms). No pace chosen in advance is right for both
//! a quiet host and a starved vCPU, and nothing QEMU says over QMP or VNC tells when the guest
//! read. Its vCPU threads' CPU time does: QEMU names them (`query-cpus-fast`, `thread-id`) and
//! the kernel counts their time on a CPU (`/proc/<tid>/schedstat`, readable by any user). An
//! interrupt QEMU raised is taken as soon as the vCPU enters the guest again, so once the
//! vCPUs have been on a CPU for [`GUEST_RAN`] since QEMU took an event, the guest has been in
//! its handler since. Two weaker signs misled, both measured with QEMU's PS/2 trace:
//! - any growth at all: the kernel counts a running thread's time only at scheduler ticks, so
//!   growth seen after QEMU took an event may have come before;
//! - a thread switched in (the third `schedstat` field): under load a vCPU thread wakes for
//!   QEMU's big lock and loses it again, running no guest code, and the guest read nothing for
//!   227 ms while such wakes let 12 events through. A wake like that costs microseconds;
//!   guest code that takes an interrupt (and KVM's halt polling after it) costs hundreds.
//!
//! The gate: at most [`GUEST_UNREAD`] key and button events may be "unread" — sent to QEMU
//! and not yet answered, or answered with no vCPU time seen since. The shell samples the
//! time ([`GuestReads::observe`]) while anything is unread. A guest whose vCPUs have not run
//! for [`GUEST_STALL`] since it was handed events (a guest halted for good, a hung host) no
//! longer holds input back: it goes on as QEMU's own VNC server would hand it over.
//!
//! ```text
//!   sent ── QEMU answers (fence / QMP) ──▶ taken ── GUEST_RAN of vCPU time since ──▶ read
//!                                                └─ GUEST_STALL without ──▶ read (given up)
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most key and button events unread at once before a key waits. The keyboard queue takes
/// 16 bytes and a key event is 1–2 with the i8042's translation (as guests run it): 8 fit
/// even if all are extended keys. A mouse button is a packet in the mouse's queue of its own;
/// counted here too (erring on the safe side), but never held (`Journal::guest_full`).
pub const GUEST_UNREAD: u64 = 8;

/// How long events may wait for the guest's vCPUs to run before the gate gives up on them.
/// QEMU's heaviest pre-copy throttle (99 %) stops a vCPU for 990 ms at a time: the gate
/// must outlast that.
pub const GUEST_STALL: Duration = Duration::from_millis(1500);

/// vCPU time on a CPU that counts as the guest having run: far more than a thread waking for
/// QEMU's lock costs, and less than taking an interrupt and halting again costs a KVM vCPU
/// (its halt polling alone is up to 200 µs by default), so an idle guest that reads is seen
/// to within a few ms.
pub const GUEST_RAN: Duration = Duration::from_micros(500);

/// What the kernel counts for a VM's vCPU threads, summed (`/proc/<tid>/schedstat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuTime {
    /// Time on a CPU (first field); refreshed for a running thread only at scheduler ticks.
    pub on_cpu: Duration,
    /// Times a thread was switched in (third field); for the trace only (see the module docs
    /// for why it proves nothing).
    pub switch_ins: u64,
}

impl VcpuTime {
    /// The guest ran since `base` was sampled: [`GUEST_RAN`] more time on a CPU.
    fn ran_since(&self, base: &VcpuTime) -> bool {
        self.on_cpu >= base.on_cpu.saturating_add(GUEST_RAN)
    }
}

/// Events QEMU took at one time, and the vCPU time first sampled after that.
#[derive(Debug, Clone, Copy)]
struct Taken {
    events: u64,
    /// vCPU time and when it was sampled; `None` until the first sample after taking.
    base: Option<(VcpuTime, Instant)>,
}

/// The gate's state: what QEMU took and the guest may not have read. See the module docs.
#[derive(Debug, Default)]
pub(super) struct GuestReads {
    /// The shell samples the guest's vCPU time: the gate is on.
    clocked: bool,
    taken: VecDeque<Taken>,
}

impl GuestReads {
    /// QEMU took `events` key/button events just now (a fence answered, a QMP batch
    /// delivered).
    pub(super) fn took(&mut self, events: u64) {
        if self.clocked && events > 0 {
            self.taken.push_back(Taken { events, base: None });
        }
    }

    /// The guest's vCPUs' `time`, sampled at `now` (after every reply
    /// the shell handed over before). The first sample turns the gate on, with the guest's
    /// queue taken to be full until its vCPUs run: what an earlier sender left there (the
    /// source console, which handed its session over at a migration's switchover with up to
    /// [`GUEST_UNREAD`] events unread in a queue QEMU migrated) is read only once the guest
    /// runs here. Without that the queue could hold twice what fits: a 10-move libvirt run
    /// under load dropped 13 bytes in 21 ms on one destination.
    pub(super) fn observe(&mut self, time: VcpuTime, now: Instant) {
        if !self.clocked {
            self.clocked = true;
            self.taken.push_front(Taken {
                events: GUEST_UNREAD,
                base: None,
            });
        }
        for t in self.taken.iter_mut().filter(|t| t.base.is_none()) {
            t.base = Some((time, now));
        }
        while let Some(&Taken {
            events,
            base: Some((base, since)),
        }) = self.taken.front()
        {
            let ran = time.ran_since(&base);
            let stalled = now.saturating_duration_since(since) >= GUEST_STALL;
            if !ran && !stalled {
                break;
            }
            tracing::trace!(
                events,
                waited_us = now.saturating_duration_since(since).as_micros(),
                switch_ins = time.switch_ins.saturating_sub(base.switch_ins),
                on_cpu_us = time.on_cpu.saturating_sub(base.on_cpu).as_micros(),
                "the guest read"
            );
            if stalled && !ran {
                tracing::warn!(
                    events,
                    waited_ms = GUEST_STALL.as_millis(),
                    "the guest's vCPUs did not run; input goes on unread"
                );
            }
            self.taken.pop_front();
        }
    }

    /// Events QEMU took that the guest may not have read yet.
    pub(super) fn unread(&self) -> u64 {
        self.taken.iter().map(|t| t.events).sum()
    }

    /// The gate is on and waits for the guest to read something: sample its vCPU time.
    pub(super) fn wants_samples(&self) -> bool {
        self.clocked && !self.taken.is_empty()
    }

    /// Whether `more` events on top of `in_flight` (sent, QEMU's answer outstanding) and the
    /// unread ones would be too many for the guest's queue.
    pub(super) fn full_with(&self, in_flight: u64, more: u64) -> bool {
        self.clocked && self.unread() + in_flight + more > GUEST_UNREAD
    }
}
