//! Who may start a viewer handshake: bounds on viewers and handshakes in progress, and a
//! per-address back-off after failed passwords, so that guessing a VNC password (8 bytes at
//! most, RFC 6143 §7.2.2) from one address takes years instead of hours. Pure: the hub asks
//! and reports, passing `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::handover::MAX_HANDED_VIEWERS;

/// Most viewers served at once: as many as a hand-over or a migration carries, so that every
/// connected viewer always moves with the console.
pub const MAX_VIEWERS: usize = MAX_HANDED_VIEWERS;
/// Most handshakes in progress at once; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 16;
/// Failed passwords from one address that cost it no wait.
const FREE_FAILURES: u32 = 3;
/// The first wait; it doubles with each further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An address with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most (the oldest is forgotten first).
const MAX_ADDRESSES: usize = 4096;

/// Why a connection is closed before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// [`MAX_HANDSHAKES`] are in progress.
    #[error("too many handshakes in progress ({MAX_HANDSHAKES})")]
    Handshakes,
    /// [`MAX_VIEWERS`] are connected.
    #[error("the console serves its maximum of {MAX_VIEWERS} viewers")]
    Viewers,
    /// The address failed its password too often lately.
    #[error("too many failed passwords from this address: retry in {0:?}")]
    BackingOff(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// The admission bookkeeping of one console.
#[derive(Debug, Default)]
pub struct Gate {
    handshakes: usize,
    failures: HashMap<IpAddr, Failures>,
}

impl Gate {
    /// A connection from `from` arrived while `viewers` are served: may its handshake start?
    /// On `Ok` the handshake counts as in progress until [`Gate::finished`].
    pub fn start(&mut self, from: IpAddr, viewers: usize, now: Instant) -> Result<(), Refusal> {
        if self.handshakes >= MAX_HANDSHAKES {
            return Err(Refusal::Handshakes);
        }
        if viewers >= MAX_VIEWERS {
            return Err(Refusal::Viewers);
        }
        if let Some(f) = self.failures.get(&from) {
            let until = f.last + backoff(f.count);
            if until > now {
                return Err(Refusal::BackingOff(until - now));
            }
        }
        self.handshakes += 1;
        Ok(())
    }

    /// Handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// A handshake [`Gate::start`] allowed has ended; `wrong_password` if it failed on
    /// the password (a success forgets the address's failures).
    pub fn finished(&mut self, from: IpAddr, wrong_password: bool, now: Instant) {
        self.handshakes = self.handshakes.saturating_sub(1);
        if !wrong_password {
            self.failures.remove(&from);
            return;
        }
        self.failures
            .retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        if self.failures.len() >= MAX_ADDRESSES && !self.failures.contains_key(&from) {
            if let Some(oldest) = self.failures.iter().min_by_key(|(_, f)| f.last) {
                let oldest = *oldest.0;
                self.failures.remove(&oldest);
            }
        }
        let f = self.failures.entry(from).or_insert(Failures {
            count: 0,
            last: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
    }
}

/// How long an address with `failures` must wait after its last one.
fn backoff(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES + 1) {
        None => Duration::ZERO,
        Some(over) => FIRST_BACKOFF
            .checked_mul(1u32.checked_shl(over).unwrap_or(u32::MAX))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn failed_passwords_back_off_per_address_and_a_success_forgets_them() {
        let mut a = Gate::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            a.start(ip(1), 0, t0).unwrap();
            a.finished(ip(1), true, t0);
        }
        assert_eq!(a.start(ip(1), 0, t0), Ok(()), "three failures are free");
        a.finished(ip(1), true, t0);
        assert_eq!(
            a.start(ip(1), 0, t0),
            Err(Refusal::BackingOff(Duration::from_secs(1)))
        );
        assert_eq!(
            a.start(ip(2), 0, t0),
            Ok(()),
            "other addresses are not held"
        );
        a.finished(ip(2), false, t0);
        let t1 = t0 + Duration::from_secs(1);
        a.start(ip(1), 0, t1).unwrap();
        a.finished(ip(1), true, t1);
        assert_eq!(
            a.start(ip(1), 0, t1),
            Err(Refusal::BackingOff(Duration::from_secs(2))),
            "the wait doubles"
        );
        let t2 = t1 + Duration::from_secs(2);
        a.start(ip(1), 0, t2).unwrap();
        a.finished(ip(1), false, t2);
        assert_eq!(a.start(ip(1), 0, t2), Ok(()), "a success forgets");
    }

    #[test]
    fn the_wait_is_capped_and_counts_never_overflow() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(FREE_FAILURES), Duration::ZERO);
        assert_eq!(backoff(FREE_FAILURES + 1), FIRST_BACKOFF);
        assert_eq!(backoff(FREE_FAILURES + 6), Duration::from_secs(32));
        assert_eq!(backoff(FREE_FAILURES + 7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn handshakes_and_viewers_are_bounded() {
        let mut a = Gate::default();
        let now = Instant::now();
        for i in 0..MAX_HANDSHAKES {
            a.start(ip(u8::try_from(i).unwrap()), 0, now).unwrap();
        }
        assert_eq!(a.start(ip(200), 0, now), Err(Refusal::Handshakes));
        a.finished(ip(0), false, now);
        assert_eq!(a.start(ip(200), MAX_VIEWERS, now), Err(Refusal::Viewers));
        assert_eq!(a.start(ip(200), MAX_VIEWERS - 1, now), Ok(()));
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let mut a = Gate::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let from = IpAddr::from(i.to_be_bytes());
            a.start(from, 0, t0).unwrap();
            a.finished(from, true, t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(a.failures.len(), MAX_ADDRESSES);
        assert!(
            !a.failures.contains_key(&IpAddr::from(0u32.to_be_bytes())),
            "the oldest went first"
        );
    }
}
