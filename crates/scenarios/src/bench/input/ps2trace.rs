//! What QEMU's PS/2 keyboard queue did, replayed from a QEMU 7.2 trace (`-trace
//! ps2_put_keycode -trace ps2_read_data -trace ps2_keyboard_set_translation -trace
//! ps2_keyboard_event -D FILE`, the `log` backend: `name 0xDEVICE args`, prefixed with
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

use std::ffi::OsString;
use std::path::Path;

/// QEMU 7.2's `PS2_QUEUE_SIZE`.
pub const PS2_QUEUE_SIZE: u32 = 16;

/// The trace events the replay reads.
const TRACE_EVENTS: [&str; 4] = [
    "ps2_put_keycode",
    "ps2_read_data",
    "ps2_keyboard_set_translation",
    "ps2_keyboard_event",
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

/// The keyboard queue over a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ps2Tally {
    /// Key events QEMU's input layer handed the keyboard (`ps2_keyboard_event`).
    pub key_events: u64,
    /// Bytes put into the queue.
    pub queued: u64,
    /// Bytes that did not fit: dropped by QEMU.
    pub dropped: u64,
    /// The most bytes the queue held.
    pub max_depth: u32,
}

/// The replay with where its drops happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ps2Trace {
    /// The whole log.
    pub tally: Ps2Tally,
    /// Wall-clock time (seconds since the Unix epoch) of each dropped byte, when the log has
    /// timestamps.
    pub drop_times: Vec<f64>,
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

/// Replays the keyboard queue over a trace log.
pub fn tally(log: &str) -> Ps2Trace {
    let mut t = Ps2Tally::default();
    let mut drop_times = Vec::new();
    let mut keyboard: Option<&str> = None;
    let mut translate = false;
    let mut depth = 0u32;
    for line in log.lines() {
        let Some((time, name, mut words)) = split_line(line) else {
            continue;
        };
        let Some(device) = words.next() else {
            continue;
        };
        let started = keyboard.is_some();
        match name {
            "ps2_keyboard_set_translation" => {
                // `mode N`
                translate = words.nth(1).is_some_and(|m| m != "0");
            }
            "ps2_keyboard_event" => {
                keyboard = Some(device);
                t.key_events += 1;
            }
            "ps2_put_keycode" if started && keyboard == Some(device) => {
                // `keycode 0xNN`
                let code = words
                    .nth(1)
                    .and_then(|c| u8::from_str_radix(c.trim_start_matches("0x"), 16).ok());
                if translate && code == Some(0xf0) {
                    continue;
                }
                if depth >= PS2_QUEUE_SIZE {
                    t.dropped += 1;
                    drop_times.extend(time);
                } else {
                    depth += 1;
                    t.queued += 1;
                    t.max_depth = t.max_depth.max(depth);
                }
            }
            "ps2_read_data" if started && keyboard == Some(device) => {
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
    Ps2Trace {
        tally: t,
        drop_times,
    }
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
        log.push_str("ps2_read_data 0xk\nps2_read_data 0xm\n"); // the mouse's is not ours
        log.push_str("ps2_put_keycode 0xk keycode 0x1c\n");
        let t = tally(&log).tally;
        assert_eq!(
            t,
            Ps2Tally {
                key_events: 1,
                queued: 17,
                dropped: 2,
                max_depth: 16
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
             -trace ps2_keyboard_event -D /t/ps2.log -msg timestamp=on"
        );
    }

    #[test]
    fn untranslated_break_prefixes_take_a_byte() {
        let log = "ps2_keyboard_event 0xk\nps2_put_keycode 0xk keycode 0xf0\n";
        assert_eq!(tally(log).tally.queued, 1);
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
}
