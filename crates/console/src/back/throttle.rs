//! Key pacing for a guest whose vCPU QEMU throttles during a migration (auto-converge):
//! sans-I/O, a throttle percentage in, a pacing decision out. Not wired in yet.
//!
//! QEMU 7.2's CPU throttle (`softmmu/cpu-throttle.c`): at `p` %, a vCPU sleeps
//! 10 ms · p / (100 − p) after each 10 ms slice it ran ([`vcpu_sleep`]): 90 ms at 90 %, 990 ms
//! at 99 %. The guest reads nothing from the 16-byte PS/2 keyboard queue meanwhile, and QEMU
//! drops what does not fit (the journal's `Config`, "Pacing"). The journal's pacing assumes a
//! guest that reads within a few ms: live keys at the viewer's pace (up to `live_burst` at once,
//! then one per `live_interval`), a backlog at one key per `key_drain`. Measured (`cargo test
//! -p console --test console_throttle -- --ignored --nocapture`): a guest dirtying memory,
//! migrated at 8 MiB/s with auto-converge starting at 90 %, lost keys typed through the console
//! at 100 keys/s in every throttled period.
//!
//! [`decide`] keeps the pacing while the live pace cannot overrun [`QUEUE_EVENTS`] in one sleep,
//! and otherwise sends every key event through the bucket with `key_drain` stretched by
//! 100 / (100 − p) (at least the sleep over the queue's room after a burst): then at most
//! `max_paced_per_batch` + 1 + p / (10 · `key_drain` in ms) events arrive in one sleep (≤ 6
//! at the defaults, any p); the input lags instead of being lost.
//! [`anticipated`] is the throttle to pace for: one auto-converge step ahead of the one
//! `query-migrate` reports, since a step comes at once at a dirty sync (from 0 to
//! `cpu-throttle-initial`, 90 % in the reproducer) and a poll sees it only later.

use std::time::Duration;

use crate::journal::Config;

/// QEMU's `CPU_THROTTLE_TIMESLICE_NS`: how long a throttled vCPU runs between sleeps.
pub const TIMESLICE: Duration = Duration::from_millis(10);

/// Key events the PS/2 keyboard queue is taken to hold while the vCPU sleeps: half its 16
/// bytes (a key event is 1–2 bytes with the i8042's translation, as guests run it).
pub const QUEUE_EVENTS: u32 = 8;

/// QEMU's highest throttle (`cpu-throttle-percentage` is at most 99).
pub const MAX_THROTTLE: u8 = 99;

/// How key input goes to a guest throttled to some percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// As the journal's `Config` says: the live pace cannot overrun the queue in one sleep.
    Unchanged,
    /// Every key event through the pacing bucket (live input too), one per `key_drain`.
    Paced {
        /// The stretched drain.
        key_drain: Duration,
    },
}

/// How long a vCPU throttled to `pct` % sleeps after each [`TIMESLICE`] (QEMU:
/// `timeslice · pct / (1 − pct)`); `pct` above [`MAX_THROTTLE`] counts as 99.
pub fn vcpu_sleep(pct: u8) -> Duration {
    let p = u32::from(pct.min(MAX_THROTTLE));
    TIMESLICE * p / (100 - p)
}

/// Auto-converge's steps, from `query-migrate-parameters` (QEMU's defaults: 20 and 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoConverge {
    /// `cpu-throttle-initial`: the first step, from no throttle.
    pub initial: u8,
    /// `cpu-throttle-increment`: each later step.
    pub increment: u8,
}

/// The throttle to pace for during a migration: one step ahead of the one `query-migrate`
/// reports (`cpu-throttle-percentage`, 0 or absent before the first step) when auto-converge
/// is on (`None`: it is off, QEMU never throttles). A step comes at a dirty sync, at once,
/// and a poll sees it only later; paced one step ahead, the keys sent meanwhile still fit.
pub fn anticipated(reported: u8, auto_converge: Option<AutoConverge>) -> u8 {
    let ahead = match auto_converge {
        None => reported,
        Some(a) if reported == 0 => a.initial,
        Some(a) => reported.saturating_add(a.increment),
    };
    ahead.min(MAX_THROTTLE)
}

/// The most key events that reach QEMU while the vCPU sleeps once, at `pacing`.
pub fn worst_events_per_sleep(pct: u8, pacing: Pacing, config: &Config) -> u32 {
    let sleep = vcpu_sleep(pct);
    let (burst, gap) = match pacing {
        Pacing::Unchanged => (config.live_burst, config.live_interval),
        Pacing::Paced { key_drain } => (paced_burst(config), key_drain),
    };
    let spaced = if gap.is_zero() {
        u32::MAX
    } else {
        u32::try_from(sleep.as_nanos() / gap.as_nanos()).unwrap_or(u32::MAX)
    };
    burst.saturating_add(spaced)
}

/// Key events the bucket may send back to back: its `max_paced_per_batch`, and one more, as a
/// key sent late lets the next go up to one `key_drain` sooner (the journal's `note_key`).
fn paced_burst(config: &Config) -> u32 {
    u32::try_from(config.max_paced_per_batch)
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

/// The pacing for a guest throttled to `pct` % (see [`anticipated`]).
pub fn decide(pct: u8, config: &Config) -> Pacing {
    if worst_events_per_sleep(pct, Pacing::Unchanged, config) <= QUEUE_EVENTS {
        return Pacing::Unchanged;
    }
    let p = u32::from(pct.min(MAX_THROTTLE));
    let stretched = config.key_drain * 100 / (100 - p);
    // A short drain or a large bucket: at least enough for the queue's room after a burst.
    let room = QUEUE_EVENTS.saturating_sub(paced_burst(config)).max(1);
    Pacing::Paced {
        key_drain: stretched.max(vcpu_sleep(pct) / room),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn qemu_sleeps_ninety_ms_per_slice_at_ninety_percent() {
        assert_eq!(vcpu_sleep(0), Duration::ZERO);
        assert_eq!(vcpu_sleep(50), Duration::from_millis(10));
        assert_eq!(vcpu_sleep(90), Duration::from_millis(90));
        assert_eq!(vcpu_sleep(99), Duration::from_millis(990));
        assert_eq!(vcpu_sleep(100), vcpu_sleep(99));
    }

    #[test]
    fn the_defaults_keep_their_pace_up_to_a_third_and_stretch_the_drain_above() {
        let c = Config::default();
        // Live: 2 at once + 5.4 ms / 0.8 ms = 8 events in a sleep at 35 %; 2 + 5.6 / 0.8 = 9
        // at 36 %. Paced: 2 ms · 100 / 64 = 3.125 ms at 36 %, 20 ms at 90 %, 200 ms at 99 %.
        assert_eq!(decide(0, &c), Pacing::Unchanged);
        assert_eq!(decide(35, &c), Pacing::Unchanged);
        assert_eq!(
            decide(36, &c),
            Pacing::Paced {
                key_drain: Duration::from_micros(3125)
            }
        );
        assert_eq!(
            decide(90, &c),
            Pacing::Paced {
                key_drain: Duration::from_millis(20)
            }
        );
        assert_eq!(
            decide(99, &c),
            Pacing::Paced {
                key_drain: Duration::from_millis(200)
            }
        );
    }

    #[test]
    fn auto_converge_is_paced_for_one_step_ahead() {
        let qemu_default = Some(AutoConverge {
            initial: 20,
            increment: 10,
        });
        assert_eq!(anticipated(0, None), 0);
        assert_eq!(anticipated(0, qemu_default), 20);
        assert_eq!(anticipated(60, qemu_default), 70);
        assert_eq!(anticipated(95, qemu_default), MAX_THROTTLE);
        let forced = AutoConverge {
            initial: 90,
            increment: 10,
        };
        assert_eq!(anticipated(0, Some(forced)), 90);
    }

    proptest! {
        /// Paced for the step ahead, the keys sent before a poll sees a step still fit in one
        /// sleep at whatever throttle up to that step QEMU runs at.
        #[test]
        fn a_step_before_the_poll_sees_it_overruns_nothing(
            reported in 0u8..=99,
            initial in 1u8..=99,
            increment in 1u8..=50,
            actual in 0u8..=99,
        ) {
            let c = Config::default();
            let paced_for = anticipated(reported, Some(AutoConverge { initial, increment }));
            let actual = actual.min(paced_for);
            let pacing = decide(paced_for, &c);
            prop_assert!(worst_events_per_sleep(actual, pacing, &c) <= QUEUE_EVENTS);
        }
    }

    proptest! {
        /// Whatever the throttle and a sane journal config, no sleep of the vCPU sees more key
        /// events than the queue takes, and a harder throttle never paces faster.
        #[test]
        fn no_sleep_overruns_the_queue(
            pct in 0u8..=100,
            drain_us in 100u64..=10_000,
            live_us in 100u64..=5_000,
            live_burst in 1u32..=4,
            batch in 1usize..=3,
        ) {
            let c = Config {
                key_drain: Duration::from_micros(drain_us),
                live_interval: Duration::from_micros(live_us),
                live_burst,
                max_paced_per_batch: batch,
                ..Config::default()
            };
            let pacing = decide(pct, &c);
            prop_assert!(worst_events_per_sleep(pct, pacing, &c) <= QUEUE_EVENTS);
            if let (Pacing::Paced { key_drain: a }, Pacing::Paced { key_drain: b }) =
                (pacing, decide(pct.saturating_add(1), &c))
            {
                prop_assert!(b >= a);
            }
        }
    }
}
