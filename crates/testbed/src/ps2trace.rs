//! What QEMU's PS/2 keyboard queue and mouse did, replayed from a QEMU 7.2 trace (the events
//! of [`qemu_args`], the `log` backend: `name 0xDEVICE args`, prefixed with
//! `PID@SECONDS.MICROS:` under `-msg timestamp=on`, wall-clock time).
//!
//! QEMU 7.2 has no trace event on the queue-full path (`ps2_queue` in `hw/input/ps2.c`
//! returns silently when the 16-byte queue is full), so the queue is replayed by the same
//! rules: every `ps2_put_keycode` queues one byte (with the i8042's translation on, an `f0`
//! break prefix queues nothing and sets the next byte's high bit), and is dropped if 16 are
//! queued; every `ps2_read_data` of the keyboard takes one if any. Both run under QEMU's big
//! lock, so the log has them in the order they happened. The replay starts at the first
//! `ps2_keyboard_event` (the first key a viewer sent, the queue empty: the guest has read its
//! setup replies long before).
//!
//! The mouse never drops a byte: QEMU reports its state in a packet (`ps2_mouse_send_packet`)
//! only when the queue has room, so a left press and its release that reach QEMU
//! (`input_event_btn ... button left, down 1|0`) with no packet carrying the press between
//! them are one click the guest never sees; a release never reported before the next press
//! loses that press the same way. A packet carries the buttons as they are when it is sent,
//! which the replay follows from `input_event_btn` (traced before the mouse takes the event,
//! under the same lock). The packet's traced `bs` is no help: it is the packet's last byte,
//! which for the IntelliMouse Explorer mode Linux's `psmouse` sets holds the wheel and the
//! fourth and fifth buttons, never the left one.
//!
//! Each dropped byte comes with its evidence ([`Ps2Drop`]): how long the guest had read nothing
//! from the keyboard queue, how many key events QEMU got meanwhile, and whether the VM ran
//! all that time (`runstate_set`). [`attribute`] uses it to tell, for keys typed and keys a
//! guest reported, which QEMU's queue dropped because the guest did not run (not the
//! sender's fault when it kept its pacing) from what the sender lost.
//!
//! A QEMU started with `-incoming` logs no `ps2_keyboard_set_translation` (the i8042's mode,
//! its queues and the last reported buttons come with the migrated state): give its replay
//! the [`Ps2End`] of the QEMU it came from ([`replay`]); the replay takes translation on, as
//! every guest here runs it.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// QEMU 7.2's `PS2_QUEUE_SIZE`.
pub const PS2_QUEUE_SIZE: u32 = 16;

/// The trace events the replay reads.
const TRACE_EVENTS: [&str; 7] = [
    "ps2_put_keycode",
    "ps2_read_data",
    "ps2_keyboard_set_translation",
    "ps2_keyboard_event",
    "ps2_mouse_send_packet",
    "input_event_btn",
    "runstate_set",
];

/// QEMU's arguments to write the trace [`tally`] replays into `log`, with wall-clock
/// timestamps (drops are counted per stream).
pub fn qemu_args(log: &Path) -> Vec<OsString> {
    let mut args = Vec::new();
    for event in TRACE_EVENTS {
        args.extend(["-trace".into(), event.into()]);
    }
    args.extend(["-D".into(), log.as_os_str().to_owned()]);
    args.extend(["-msg".into(), "timestamp=on".into()]);
    args
}

/// The keyboard queue and the mouse over a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ps2Tally {
    /// Key events QEMU's input layer handed the keyboard (`ps2_keyboard_event`).
    pub key_events: u64,
    /// Bytes put into the queue.
    pub queued: u64,
    /// Bytes that did not fit: dropped by QEMU.
    pub dropped: u64,
    /// Of those, key presses: make codes (with translation, a byte not after an `f0` break
    /// prefix; an extended key's `e0` prefix is not counted). A key whose press QEMU dropped
    /// never reaches the guest.
    pub dropped_presses: u64,
    /// The most bytes the queue held.
    pub max_depth: u32,
    /// Left clicks QEMU never reported to the guest (the mouse queue had no room while the
    /// button was down, or up).
    pub lost_clicks: u64,
}

/// The replay with where its drops happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ps2Trace {
    /// The whole log.
    pub tally: Ps2Tally,
    /// Wall-clock time (seconds since the Unix epoch) of each dropped byte, when the log has
    /// timestamps.
    pub drop_times: Vec<f64>,
    /// Wall-clock time of the input event that lost each of [`Ps2Tally::lost_clicks`].
    pub lost_click_times: Vec<f64>,
    /// Key presses QEMU's input layer handed the keyboard (`ps2_keyboard_event ... down 1`).
    pub presses: u64,
    /// Which of those QEMU dropped (0-based, in the order QEMU got them).
    pub dropped_press_indices: Vec<u64>,
    /// The state the log ends in, for the replay of a QEMU this one migrated to.
    pub end: Ps2End,
    /// Every key event QEMU's input layer handed the keyboard (`ps2_keyboard_event`), in
    /// order: whether it was a press and whether a byte of it was dropped.
    pub key_events: Vec<KeyEvent>,
    /// Each dropped byte with its evidence, in order.
    pub drops: Vec<Ps2Drop>,
    /// Wall-clock times of the log's first and last lines.
    pub span: Option<(f64, f64)>,
}

/// One key event QEMU's keyboard got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEvent {
    /// A press (`down 1`).
    pub down: bool,
    /// A byte of it did not fit in the queue.
    pub dropped: bool,
}

/// A byte QEMU's keyboard queue dropped, with what the trace shows about why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ps2Drop {
    /// Wall-clock time (seconds since the Unix epoch), when the log has timestamps.
    pub time: Option<f64>,
    /// The key event it belonged to (index into [`Ps2Trace::key_events`]).
    pub event: usize,
    /// A key press's make code.
    pub press: bool,
    /// How long the guest had read nothing from the keyboard queue (since its last
    /// `ps2_read_data`, or the log's first line), seconds; `None` without timestamps.
    pub unread_for: Option<f64>,
    /// Key events QEMU got in that time, this one included.
    pub events_unread: u64,
    /// The VM ran (`runstate_set ... (running)`) all that time: the guest could have read.
    pub ran: bool,
}

/// The fastest a sender may hand QEMU key events by its documented pacing: a bucket of
/// `burst` events back to back, then one per `drain` (dmore's `journal::Config`:
/// `max_paced_per_batch`, `key_drain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Events that may go back to back.
    pub burst: u64,
    /// Time per further event.
    pub drain: Duration,
}

impl Pacing {
    /// The least time `events` key events take at this pacing.
    pub fn least_time(&self, events: u64) -> Duration {
        let spaced = u32::try_from(events.saturating_sub(self.burst)).unwrap_or(u32::MAX);
        self.drain.saturating_mul(spaced)
    }
}

impl Ps2Drop {
    /// Whether the trace proves the guest starved, not the sender: the VM ran, the guest read
    /// nothing from the queue for at least as long as `pacing` needs to hand QEMU the key
    /// events that came meanwhile. A sender keeping its pacing overflows the 16-byte queue
    /// only when the guest's vCPU does not run; a drop after less time means the events came
    /// faster than the pacing allows (or to a stopped VM), which no pacing forgives.
    pub fn guest_starved(&self, pacing: &Pacing) -> bool {
        let least = pacing.least_time(self.events_unread).as_secs_f64();
        self.ran && self.unread_for.is_some_and(|unread| unread >= least)
    }
}

impl fmt::Display for Ps2Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.press { "press" } else { "byte" };
        write!(f, "event {} ({what}", self.event)?;
        if let Some(t) = self.time {
            write!(f, " at {t:.6}")?;
        }
        match self.unread_for {
            Some(u) => write!(f, "): guest read nothing for {:.1} ms", u * 1e3)?,
            None => write!(f, "): no timestamps")?,
        }
        let ran = if self.ran {
            "ran"
        } else {
            "did not run throughout"
        };
        write!(
            f,
            ", {} key events came meanwhile, the VM {ran}",
            self.events_unread
        )
    }
}

/// What a QEMU hands the QEMU it migrates to, as far as the replay knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ps2End {
    /// Bytes in the keyboard queue.
    pub depth: u32,
    /// The left button as last reported to the guest.
    pub left_reported: bool,
    /// The left button as QEMU's input layer last set it (reported or not).
    pub left_down: bool,
}

impl Ps2Trace {
    /// Bytes dropped between `from` and `to` (seconds since the Unix epoch).
    pub fn dropped_between(&self, from: f64, to: f64) -> u64 {
        let n = self
            .drop_times
            .iter()
            .filter(|&&t| from <= t && t < to)
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// A log line's name (and timestamp, if any) and the rest.
fn split_line(line: &str) -> Option<(Option<f64>, &str, std::str::SplitWhitespace<'_>)> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let (time, name) = match first.split_once(':') {
        Some((prefix, name)) if prefix.contains('@') => (
            prefix.split_once('@').and_then(|(_, t)| t.parse().ok()),
            name,
        ),
        _ => (None, first),
    };
    Some((time, name, words))
}

/// The device a line names first: the keyboard's, from a key event or a keycode put; the
/// mouse's, from a packet.
fn devices(log: &str) -> (Option<&str>, Option<&str>) {
    let (mut keyboard, mut mouse) = (None, None);
    for line in log.lines() {
        let Some((_, name, mut words)) = split_line(line) else {
            continue;
        };
        match name {
            "ps2_keyboard_event" | "ps2_put_keycode" if keyboard.is_none() => {
                keyboard = words.next();
            }
            "ps2_mouse_send_packet" if mouse.is_none() => mouse = words.next(),
            _ => {}
        }
        if keyboard.is_some() && mouse.is_some() {
            break;
        }
    }
    (keyboard, mouse)
}

/// Replays a trace log of a QEMU that booted its guest.
pub fn tally(log: &str) -> Ps2Trace {
    replay(log, None)
}

/// Replays a trace log; `incoming`: the QEMU was started with `-incoming` and took over from
/// a QEMU whose replay ended in this state (module docs).
pub fn replay(log: &str, incoming: Option<Ps2End>) -> Ps2Trace {
    let mut t = Ps2Tally::default();
    let mut drop_times = Vec::new();
    let mut lost_click_times = Vec::new();
    let (keyboard, mouse) = devices(log);
    let mut started = incoming.is_some();
    let mut translate = incoming.is_some();
    let start = incoming.unwrap_or_default();
    let mut depth = start.depth;
    let mut left_reported = start.left_reported;
    let mut left_down = start.left_down;
    let mut breaking = false;
    let mut span: Option<(f64, f64)> = None;
    let mut presses = 0u64;
    let mut dropped_press_indices = Vec::new();
    let mut key_events: Vec<KeyEvent> = Vec::new();
    let mut drops = Vec::new();
    // The VM's run state as traced (a booted QEMU logs its start; an incoming one is not
    // running until its migration completes), and since the guest's last read of the queue:
    // its time, the key events since, and whether the VM ran all along.
    let mut running = false;
    let mut last_read: Option<f64> = None;
    let mut events_unread = 0u64;
    let mut ran_since_read = false;
    for line in log.lines() {
        let Some((time, name, mut words)) = split_line(line) else {
            continue;
        };
        if let Some(time) = time {
            span = Some(span.map_or((time, time), |(first, _)| (first, time)));
            last_read.get_or_insert(time);
        }
        if name == "runstate_set" {
            // `current_run_state N (OLD) new_state M (NEW)`
            running = words.nth(5) == Some("(running)");
            ran_since_read &= running;
            continue;
        }
        if name == "input_event_btn" {
            // `con N, button left, down D`
            let rest: Vec<&str> = words.collect();
            if rest.get(3) == Some(&"left,") {
                let down = rest.get(5) == Some(&"1");
                if down == left_reported {
                    // Pressed again before its release was reported, or released before its
                    // press was: the guest sees no new press.
                    t.lost_clicks += 1;
                    lost_click_times.extend(time);
                }
                left_down = down;
            }
            continue;
        }
        let Some(device) = words.next() else {
            continue;
        };
        match name {
            "ps2_keyboard_set_translation" => {
                // `mode N`
                translate = words.nth(1).is_some_and(|m| m != "0");
            }
            "ps2_keyboard_event" => {
                started = true;
                t.key_events += 1;
                events_unread += 1;
                // `qcode N down D ...`
                let down = words.nth(3) == Some("1");
                if down {
                    presses += 1;
                }
                key_events.push(KeyEvent {
                    down,
                    dropped: false,
                });
            }
            "ps2_put_keycode" if started && keyboard == Some(device) => {
                // `keycode 0xNN`
                let code = words
                    .nth(1)
                    .and_then(|c| u8::from_str_radix(c.trim_start_matches("0x"), 16).ok());
                if translate && code == Some(0xf0) {
                    breaking = true;
                    continue;
                }
                let press = translate && !std::mem::take(&mut breaking) && code != Some(0xe0);
                if depth >= PS2_QUEUE_SIZE {
                    t.dropped += 1;
                    if press {
                        t.dropped_presses += 1;
                        dropped_press_indices.push(presses.saturating_sub(1));
                    }
                    drop_times.extend(time);
                    if let Some(event) = key_events.last_mut() {
                        event.dropped = true;
                    }
                    drops.push(Ps2Drop {
                        time,
                        event: key_events.len().saturating_sub(1),
                        press,
                        unread_for: time.zip(last_read).map(|(now, read)| now - read),
                        events_unread,
                        ran: ran_since_read && running,
                    });
                } else {
                    depth += 1;
                    t.queued += 1;
                    t.max_depth = t.max_depth.max(depth);
                }
            }
            "ps2_read_data" if keyboard == Some(device) => {
                if started {
                    depth = depth.saturating_sub(1);
                }
                last_read = time.or(last_read);
                events_unread = 0;
                ran_since_read = running;
            }
            "ps2_mouse_send_packet" if mouse == Some(device) => {
                left_reported = left_down;
            }
            _ => {}
        }
    }
    Ps2Trace {
        tally: t,
        drop_times,
        lost_click_times,
        presses,
        dropped_press_indices,
        end: Ps2End {
            depth,
            left_reported,
            left_down,
        },
        key_events,
        drops,
        span,
    }
}

/// Replays the trace logs of a chain of QEMUs, each named by `N` (a QEMU's directory or its
/// log), in the order they ran: by their first timestamped line (logs without one, of QEMUs
/// that got no input, are left out). A QEMU started with `-incoming` (its log has no
/// `ps2_keyboard_set_translation`) starts where its source ended: the last replay to begin
/// before its own. (Not the last to end: a source logs its `postmigrate` after its
/// destination already runs.)
pub fn chain<N>(logs: impl IntoIterator<Item = (N, String)>) -> Vec<(N, Ps2Trace)> {
    let mut logs: Vec<(N, String, Ps2Trace)> = logs
        .into_iter()
        .map(|(name, log)| {
            let booted = tally(&log);
            (name, log, booted)
        })
        .filter(|(_, _, booted)| booted.span.is_some())
        .collect();
    let start = |t: &Ps2Trace| t.span.map_or(0.0, |(first, _)| first);
    logs.sort_by(|a, b| start(&a.2).total_cmp(&start(&b.2)));
    let mut traces: Vec<(N, Ps2Trace)> = Vec::new();
    for (name, log, booted) in logs {
        let incoming = !log.contains("ps2_keyboard_set_translation");
        let begins = start(&booted);
        let source = traces
            .iter()
            .filter_map(|(_, t)| t.span.map(|(first, _)| (first, t.end)))
            .filter(|(first, _)| *first < begins)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, end)| end);
        let trace = if incoming {
            replay(&log, Some(source.unwrap_or_default()))
        } else {
            booted
        };
        traces.push((name, trace));
    }
    traces
}

/// Replays the trace log QEMU is writing at `log` (QEMU flushes each line), as far as it goes.
pub fn read(log: &Path) -> std::io::Result<Ps2Trace> {
    Ok(tally(&std::fs::read_to_string(log)?))
}

/// Keys typed against the keys a guest reported, explained by a trace: see [`attribute`].
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    /// Key events typed (sent to the sender under test).
    pub typed: usize,
    /// Key events QEMU's keyboard got from it.
    pub qemu_got: usize,
    /// Key events the guest reported.
    pub reported: usize,
    /// Dropped by QEMU's queue while the guest starved ([`Ps2Drop::guest_starved`]): the
    /// typed event's index and the evidence.
    pub forgiven: Vec<(usize, Ps2Drop)>,
    /// Dropped by QEMU's queue, but the trace does not show the guest starved: the sender
    /// went faster than its pacing, or sent to a stopped VM.
    pub paced_too_fast: Vec<(usize, Ps2Drop)>,
    /// What the sender lost or changed, beyond the queue's drops (`None`: nothing).
    pub sender_lost: Option<String>,
}

impl Attribution {
    /// Every typed key arrived, or the trace proves QEMU's queue dropped it while the guest
    /// did not run and the sender kept its pacing.
    pub fn ok(&self) -> bool {
        self.paced_too_fast.is_empty() && self.sender_lost.is_none()
    }
}

impl fmt::Display for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key events typed, QEMU's keyboard got {}, the guest reported {}; \
             QEMU's PS/2 queue dropped {} while the guest did not run (forgiven), {} faster \
             than the pacing or to a stopped VM",
            self.typed,
            self.qemu_got,
            self.reported,
            self.forgiven.len(),
            self.paced_too_fast.len()
        )?;
        if let Some(lost) = &self.sender_lost {
            write!(f, "; the sender: {lost}")?;
        }
        for (i, d) in &self.forgiven {
            write!(f, "\n  forgiven: typed #{i}, QEMU {d}")?;
        }
        for (i, d) in &self.paced_too_fast {
            write!(f, "\n  not forgiven: typed #{i}, QEMU {d}")?;
        }
        Ok(())
    }
}

/// Which of the key events `typed` the guest did not report (`reported`, each key event one
/// report) QEMU's keyboard queue dropped, and whether the trace forgives each; the rest the
/// sender lost. `since`: QEMU's key events before the first typed one (the length of
/// [`Ps2Trace::key_events`] before typing); the sender must have sent nothing else since.
///
/// The trace proves a drop only if QEMU got exactly the typed events (one key event per
/// typed one, in order) and the reports are exactly the typed events without those QEMU's
/// queue dropped; anything else is the sender's, and no drop is forgiven then.
pub fn attribute<K: PartialEq + fmt::Debug>(
    typed: &[K],
    reported: &[K],
    trace: &Ps2Trace,
    since: usize,
    pacing: &Pacing,
) -> Attribution {
    let got = trace.key_events.get(since..).unwrap_or_default();
    let mut a = Attribution {
        typed: typed.len(),
        qemu_got: got.len(),
        reported: reported.len(),
        forgiven: Vec::new(),
        paced_too_fast: Vec::new(),
        sender_lost: None,
    };
    let survived: Vec<&K> = typed
        .iter()
        .zip(got)
        .filter(|(_, e)| !e.dropped)
        .map(|(k, _)| k)
        .collect();
    if got.len() != typed.len() {
        a.sender_lost = Some(format!(
            "QEMU got {} key events of {} typed; {}",
            got.len(),
            typed.len(),
            first_difference(typed.iter(), reported)
        ));
        return a;
    }
    if survived.len() != reported.len() || survived.iter().zip(reported).any(|(s, r)| *s != r) {
        a.sender_lost = Some(format!(
            "the reports are not the typed keys QEMU's queue kept; {}",
            first_difference(survived.into_iter(), reported)
        ));
        return a;
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &trace.drops {
        let Some(i) = d.event.checked_sub(since) else {
            continue;
        };
        if !seen.insert(i) {
            continue; // another byte of the same key event
        }
        if d.guest_starved(pacing) {
            a.forgiven.push((i, *d));
        } else {
            a.paced_too_fast.push((i, *d));
        }
    }
    a
}

/// Where `reported` first departs from `want`, for a failure message.
fn first_difference<'a, K: PartialEq + fmt::Debug + 'a>(
    want: impl Iterator<Item = &'a K>,
    reported: &[K],
) -> String {
    let want: Vec<&K> = want.collect();
    let at = want
        .iter()
        .zip(reported)
        .position(|(w, r)| *w != r)
        .unwrap_or(want.len().min(reported.len()));
    format!(
        "first difference at report {at} of {} expected, {} reported: expected {:?}, reported {:?}",
        want.len(),
        reported.len(),
        want.get(at),
        reported.get(at)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_sixteen_bytes_drops_and_reads_make_room() {
        let mut log = String::from("ps2_keyboard_set_translation 0xk mode 1\n");
        log.push_str("ps2_read_data 0xk\n"); // before the first key: not counted
        log.push_str("ps2_keyboard_event 0xk qcode 1 down 1\n");
        for _ in 0..18 {
            log.push_str("ps2_put_keycode 0xk keycode 0x1c\n");
        }
        log.push_str("ps2_put_keycode 0xk keycode 0xf0\n"); // translated: no byte
        log.push_str("ps2_put_keycode 0xk keycode 0x1c\n"); // a release, dropped
        log.push_str("ps2_read_data 0xk\nps2_read_data 0xm\n"); // the mouse's is not ours
        log.push_str("ps2_put_keycode 0xk keycode 0x1c\n");
        let t = tally(&log).tally;
        assert_eq!(
            t,
            Ps2Tally {
                key_events: 1,
                queued: 17,
                dropped: 3,
                dropped_presses: 2,
                max_depth: 16,
                lost_clicks: 0,
            }
        );
    }

    #[test]
    fn qemu_traces_every_event_the_replay_reads_with_timestamps() {
        let args: Vec<String> = qemu_args(Path::new("/t/ps2.log"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-trace ps2_put_keycode -trace ps2_read_data -trace ps2_keyboard_set_translation \
             -trace ps2_keyboard_event -trace ps2_mouse_send_packet -trace input_event_btn \
             -trace runstate_set -D /t/ps2.log -msg timestamp=on"
        );
    }

    #[test]
    fn untranslated_break_prefixes_take_a_byte() {
        let log = "ps2_keyboard_set_translation 0xk mode 0\nps2_keyboard_event 0xk\n\
                   ps2_put_keycode 0xk keycode 0xf0\n";
        assert_eq!(tally(log).tally.queued, 1);
    }

    #[test]
    fn an_incoming_qemu_starts_from_where_its_source_ended() {
        // The source's queue was full when it stopped; translation comes with it.
        let source = Ps2End {
            depth: 16,
            ..Ps2End::default()
        };
        let mut log = String::from("ps2_read_data 0xk\n"); // the guest reads one migrated byte
        log.push_str("ps2_keyboard_event 0xk\nps2_put_keycode 0xk keycode 0x1c\n");
        log.push_str("ps2_put_keycode 0xk keycode 0xf0\nps2_put_keycode 0xk keycode 0x1c\n");
        let r = replay(&log, Some(source));
        assert_eq!(
            (r.tally.queued, r.tally.dropped, r.tally.dropped_presses),
            (1, 1, 0)
        );
        assert_eq!(r.end.depth, 16);
        assert_eq!(r.presses, 0, "a key event without `down 1` is no press");
        // Booted, the same log starts empty, untranslated until told.
        assert_eq!(tally(&log).tally.dropped, 0);
    }

    #[test]
    fn a_chain_runs_in_order_each_arrival_from_where_its_source_ended() {
        let mut source = String::from("1@10.0:ps2_keyboard_set_translation 0xk mode 1\n");
        source.push_str("1@10.1:ps2_keyboard_event 0xk qcode 30 down 1\n");
        for _ in 0..16 {
            source.push_str("1@10.2:ps2_put_keycode 0xk keycode 0x1c\n");
        }
        // Logged once its destination already runs.
        source.push_str(
            "1@11.5:runstate_set current_run_state 7 (finish-migrate) new_state 5 (postmigrate)\n",
        );
        // The destination's first key finds the source's 16 bytes still queued.
        let dest = "2@11.0:ps2_keyboard_event 0xk qcode 30 down 1\n\
                    2@11.0:ps2_put_keycode 0xk keycode 0x1c\n";
        let ran = chain([
            ("dest", dest.to_owned()),
            ("none", String::new()),
            ("src", source),
        ]);
        let names: Vec<&str> = ran.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["src", "dest"]);
        assert_eq!(ran[1].1.dropped_press_indices, [0]);
        assert_eq!(ran[1].1.drop_times, [11.0]);
    }

    #[test]
    fn a_dropped_press_is_named_by_its_place_among_the_presses() {
        let mut log = String::from("ps2_keyboard_set_translation 0xk mode 1\n");
        for _ in 0..9 {
            log.push_str("ps2_keyboard_event 0xk qcode 30 down 1\n");
            log.push_str("ps2_put_keycode 0xk keycode 0x1c\n");
            log.push_str("ps2_keyboard_event 0xk qcode 30 down 0\n");
            log.push_str("ps2_put_keycode 0xk keycode 0xf0\nps2_put_keycode 0xk keycode 0x1c\n");
        }
        // 16 bytes are the first 8 keys; the 9th key's press and release are dropped.
        let r = tally(&log);
        assert_eq!(r.presses, 9);
        assert_eq!(r.dropped_press_indices, [8]);
        assert_eq!(r.tally.dropped, 2);
    }

    #[test]
    fn a_click_with_no_packet_between_press_and_release_is_lost() {
        let btn = |down: u8| format!("input_event_btn con -1, button left, down {down}\n");
        // As an IntelliMouse Explorer traces them: `bs` is the last byte, no left button.
        let packet = "ps2_mouse_send_packet 0xm x 0 y 0 z 0 bs 0x0\n";
        // Reported: press, packet with the button, release, packet without.
        let mut log = btn(1) + packet + &btn(0) + packet;
        assert_eq!(tally(&log).tally.lost_clicks, 0);
        // A press and release while the queue had no room: one click lost.
        log += &(btn(1) + &btn(0) + packet);
        // A release never reported before the next press: that press is lost.
        log += &(btn(1) + packet + &btn(0) + &btn(1) + packet);
        let r = tally(&log);
        assert_eq!(r.tally.lost_clicks, 2);
        assert!(r.end.left_reported && r.end.left_down);
        // Another button's events are not the left's.
        let right = "input_event_btn con -1, button right, down 1\n";
        assert_eq!(tally(right).tally.lost_clicks, 0);
    }

    #[test]
    fn timestamped_lines_date_their_drops() {
        let mut log = String::from("9@100.5:ps2_keyboard_event 0xk\n");
        for i in 0..17 {
            log.push_str(&format!(
                "9@{}.0:ps2_put_keycode 0xk keycode 0x1c\n",
                101 + i
            ));
        }
        let t = tally(&log);
        assert_eq!(t.drop_times, [117.0]);
        assert_eq!(t.dropped_between(110.0, 118.0), 1);
        assert_eq!(t.dropped_between(100.0, 117.0), 0);
    }
    /// A running VM whose guest reads once at 10.000, then `keys` key presses (one byte
    /// each, no releases) `gap` seconds apart from 10.001.
    fn typed_into_a_silent_guest(keys: usize, gap: f64) -> String {
        let mut log = String::from(
            "1@9.0:runstate_set current_run_state 0 (prelaunch) new_state 9 (running)\n\
             1@9.0:ps2_keyboard_set_translation 0xk mode 1\n1@10.0:ps2_read_data 0xk\n",
        );
        for i in 0..keys {
            let t = 10.001 + gap * i as f64;
            log.push_str(&format!(
                "1@{t:.6}:ps2_keyboard_event 0xk qcode 30 down 1\n"
            ));
            log.push_str(&format!("1@{t:.6}:ps2_put_keycode 0xk keycode 0x1c\n"));
        }
        log
    }

    const PACING: Pacing = Pacing {
        burst: 1,
        drain: Duration::from_millis(2),
    };

    #[test]
    fn a_paced_key_dropped_while_the_guest_did_not_run_is_forgiven() {
        // 2.5 ms apart, slower than the 2 ms pacing: the 17th press finds the queue full
        // after 40 ms without a read.
        let trace = tally(&typed_into_a_silent_guest(17, 0.0025));
        let typed: Vec<usize> = (0..17).collect();
        let a = attribute(&typed, &typed[..16], &trace, 0, &PACING);
        assert!(a.ok(), "{a}");
        assert_eq!(a.forgiven.len(), 1);
        let (i, d) = a.forgiven[0];
        assert_eq!((i, d.event, d.events_unread, d.ran), (16, 16, 17, true));
        assert!((d.unread_for.unwrap_or_default() - 0.041).abs() < 1e-9);
    }

    #[test]
    fn a_key_dropped_after_a_burst_faster_than_the_pacing_is_not_forgiven() {
        let trace = tally(&typed_into_a_silent_guest(17, 0.0001));
        let typed: Vec<usize> = (0..17).collect();
        let a = attribute(&typed, &typed[..16], &trace, 0, &PACING);
        assert!(!a.ok());
        assert_eq!(a.paced_too_fast.len(), 1);
        assert!(a.forgiven.is_empty());
    }

    #[test]
    fn a_key_dropped_by_a_stopped_vm_is_not_forgiven() {
        // The VM paused after the last read: the guest could not read, the sender should
        // have held its keys.
        let mut log = String::from(
            "1@9.0:runstate_set current_run_state 0 (prelaunch) new_state 9 (running)\n\
             1@9.0:ps2_keyboard_set_translation 0xk mode 1\n1@10.0:ps2_read_data 0xk\n\
             1@10.0005:runstate_set current_run_state 9 (running) new_state 4 (paused)\n",
        );
        let keys = typed_into_a_silent_guest(17, 0.0025);
        log.extend(keys.lines().skip(3).map(|l| format!("{l}\n")));
        let trace = tally(&log);
        let typed: Vec<usize> = (0..17).collect();
        let a = attribute(&typed, &typed[..16], &trace, 0, &PACING);
        assert_eq!(a.paced_too_fast.len(), 1, "{a}");
        assert!(!a.paced_too_fast[0].1.ran);
    }

    #[test]
    fn keys_missing_beyond_the_queue_drops_are_the_senders() {
        let trace = tally(&typed_into_a_silent_guest(17, 0.0025));
        let typed: Vec<usize> = (0..18).collect();
        // 18 typed, QEMU got 17: one never reached QEMU.
        let a = attribute(&typed, &typed[..16], &trace, 0, &PACING);
        assert!(!a.ok());
        assert!(a
            .sender_lost
            .is_some_and(|l| l.contains("QEMU got 17 key events of 18")));
        // QEMU got all 17, dropped the last, but the guest also misses the 3rd.
        let typed: Vec<usize> = (0..17).collect();
        let reported: Vec<usize> = (0..16).filter(|&k| k != 2).collect();
        let a = attribute(&typed, &reported, &trace, 0, &PACING);
        assert!(a.sender_lost.is_some(), "{a}");
        assert!(
            a.forgiven.is_empty(),
            "no drop is forgiven when the sender lost keys too"
        );
        // Counted from `since`: the first 10 key events were someone else's.
        let a = attribute(&typed[..7], &typed[..6], &trace, 10, &PACING);
        assert!(a.ok(), "{a}");
        assert_eq!(a.forgiven[0].0, 6);
    }
}
