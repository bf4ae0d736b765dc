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
//! The mouse never drops a byte: QEMU reports its state in a packet (`ps2_mouse_send_packet`,
//! the left button in bit 0 of `bs`) only when the queue has room, so a left press and its
//! release that reach QEMU (`input_event_btn ... button left, down 1|0`) with no packet
//! carrying the press between them are one click the guest never sees; a release never
//! reported before the next press loses that press the same way.
//!
//! A QEMU started with `-incoming` logs no `ps2_keyboard_set_translation` (the i8042's mode,
//! its queues and the last reported buttons come with the migrated state): give its replay
//! the [`Ps2End`] of the QEMU it came from ([`replay`]); the replay takes translation on, as
//! every guest here runs it.

use std::ffi::OsString;
use std::path::Path;

/// QEMU 7.2's `PS2_QUEUE_SIZE`.
pub const PS2_QUEUE_SIZE: u32 = 16;

/// The trace events the replay reads.
const TRACE_EVENTS: [&str; 6] = [
    "ps2_put_keycode",
    "ps2_read_data",
    "ps2_keyboard_set_translation",
    "ps2_keyboard_event",
    "ps2_mouse_send_packet",
    "input_event_btn",
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
    /// Wall-clock times of the log's first and last lines.
    pub span: Option<(f64, f64)>,
}

/// What a QEMU hands the QEMU it migrates to, as far as the replay knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ps2End {
    /// Bytes in the keyboard queue.
    pub depth: u32,
    /// The left button as last reported to the guest.
    pub left_reported: bool,
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
    let mut breaking = false;
    let mut span: Option<(f64, f64)> = None;
    let mut presses = 0u64;
    let mut dropped_press_indices = Vec::new();
    for line in log.lines() {
        let Some((time, name, mut words)) = split_line(line) else {
            continue;
        };
        if let Some(time) = time {
            span = Some(span.map_or((time, time), |(first, _)| (first, time)));
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
                // `qcode N down D ...`
                if words.nth(3) == Some("1") {
                    presses += 1;
                }
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
                } else {
                    depth += 1;
                    t.queued += 1;
                    t.max_depth = t.max_depth.max(depth);
                }
            }
            "ps2_read_data" if started && keyboard == Some(device) => {
                depth = depth.saturating_sub(1);
            }
            "ps2_mouse_send_packet" if mouse == Some(device) => {
                // `x DX y DY z DZ bs 0xNN`
                let bs = words
                    .nth(7)
                    .and_then(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok());
                if let Some(bs) = bs {
                    left_reported = bs & 1 == 1;
                }
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
        },
        span,
    }
}

/// Replays the trace logs of a chain of QEMUs, each named by `N` (a QEMU's directory or its
/// log), in the order they ran: by their first timestamped line (logs without one, of QEMUs
/// that got no input, are left out). A QEMU started with `-incoming` (its log has no
/// `ps2_keyboard_set_translation`) starts where its source ended: the last replay to end
/// before its own begins.
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
            .filter_map(|(_, t)| t.span.map(|(_, last)| (last, t.end)))
            .filter(|(last, _)| *last <= begins)
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
             -D /t/ps2.log -msg timestamp=on"
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
            left_reported: false,
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
        let packet = |bs: &str| format!("ps2_mouse_send_packet 0xm x 0 y 0 z 0 bs {bs}\n");
        // Reported: press, packet with the button, release, packet without.
        let mut log = btn(1) + &packet("0x9") + &btn(0) + &packet("0x8");
        assert_eq!(tally(&log).tally.lost_clicks, 0);
        // A press and release while the queue had no room: one click lost.
        log += &(btn(1) + &btn(0) + &packet("0x8"));
        // A release never reported before the next press: that press is lost.
        log += &(btn(1) + &packet("0x9") + &btn(0) + &btn(1) + &packet("0x9"));
        let r = tally(&log);
        assert_eq!(r.tally.lost_clicks, 2);
        assert!(r.end.left_reported);
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
}
