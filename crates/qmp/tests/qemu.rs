//! Against a real QEMU (bare, paused: `-S`, no guest needed).

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use qmp::{CloseReason, Command, Config, Connection, Error, Events, IdMode, InputEvent};
use serde_json::{json, Value};

/// A bare QEMU, killed and reaped on drop; its socket lives in a temp dir removed on drop.
struct Qemu {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Qemu {
    fn start() -> Qemu {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("qmp.sock");
        let child = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-display",
                "none",
                "-machine",
                "q35",
                "-m",
                "64",
                "-nodefaults",
                "-S",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start qemu-system-x86_64");
        Qemu {
            child,
            socket,
            _dir: dir,
        }
    }

    async fn connect_with(&self, config: Config) -> (Connection, Events) {
        // QEMU creates the socket shortly after start: retry until it answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Connection::connect_with(&self.socket, config).await {
                Ok(pair) => return pair,
                Err(Error::Connect { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("QMP connect: {e:?}"),
            }
        }
    }

    async fn connect(&self) -> (Connection, Events) {
        self.connect_with(Config::default()).await
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the next event, with a generous deadline so a bug fails instead of hanging.
async fn next_event(events: &mut Events) -> Option<qmp::Event> {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("event deadline")
}

#[tokio::test]
async fn handshake_and_query_status_on_paused_vm() {
    let qemu = Qemu::start();
    let (conn, _events) = qemu.connect().await;
    let (major, _, _) = conn.greeting().version;
    assert!(major >= 7, "{:?}", conn.greeting());
    let status = conn.client().query_status().await.unwrap();
    assert_eq!(
        (status.running, status.status.as_str()),
        (false, "prelaunch")
    );
    let migrate = conn.client().query_migrate().await.unwrap();
    assert_eq!(migrate.status, None, "no migration yet");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn stop_and_cont_events_come_before_their_replies() {
    for ids in [IdMode::Omit, IdMode::Numbered] {
        let qemu = Qemu::start();
        let (conn, mut events) = qemu
            .connect_with(Config {
                ids,
                ..Config::default()
            })
            .await;
        let client = conn.client();

        let cont = client.cont().await.unwrap();
        // Guarantee 2: the event is already in the channel when the reply resolved.
        let resume = events.try_recv().expect("RESUME already delivered");
        assert_eq!(resume.name, "RESUME");
        // Guarantee 1: its position is before the reply's.
        assert!(resume.seq < cont, "{resume:?} vs reply {cont}");
        assert!(client.query_status().await.unwrap().running);

        let stop = client.stop().await.unwrap();
        let stopped = events.try_recv().expect("STOP already delivered");
        assert_eq!(stopped.name, "STOP");
        assert!(
            resume.seq < stopped.seq && stopped.seq < stop,
            "{stopped:?} vs reply {stop}"
        );
        let status = client.query_status().await.unwrap();
        assert_eq!((status.running, status.status.as_str()), (false, "paused"));
        assert!(events.try_recv().is_none(), "no other events");
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn input_on_paused_vm_is_a_typed_vm_not_running_error() {
    let qemu = Qemu::start();
    let (conn, _events) = qemu.connect().await;
    let client = conn.client();
    let key = [InputEvent::qcode("a", true), InputEvent::qcode("a", false)];
    let err = client.input_send_event(&key).await.unwrap_err();
    assert!(err.is_vm_not_running(), "{err:?}");
    match &err {
        Error::Qmp {
            command, source, ..
        } => {
            assert_eq!(command, "input-send-event");
            assert_eq!(source.class, "GenericError");
        }
        other => panic!("{other:?}"),
    }
    client.cont().await.unwrap();
    client.input_send_event(&key).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn unknown_command_is_a_qmp_error_with_its_class() {
    let qemu = Qemu::start();
    let (conn, _events) = qemu.connect().await;
    let err = conn
        .client()
        .execute("no-such-command", Value::Null)
        .await
        .unwrap_err();
    let source = err.qmp_error().expect("QMP error");
    assert_eq!(source.class, "CommandNotFound");
    assert!(!err.is_vm_not_running());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_commands_get_their_own_replies() {
    for ids in [IdMode::Omit, IdMode::Numbered] {
        let qemu = Qemu::start();
        let (conn, _events) = qemu
            .connect_with(Config {
                ids,
                ..Config::default()
            })
            .await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let client = conn.client().clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    if (t + i) % 2 == 0 {
                        let v = client.execute("query-status", Value::Null).await.unwrap();
                        assert_eq!(v["status"], "prelaunch", "{v}");
                    } else {
                        let v = client.execute("query-version", Value::Null).await.unwrap();
                        assert!(v["qemu"]["major"].is_u64(), "{v}");
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }

        // A batch goes out in one write; a failing command does not stop the ones after it.
        let results = conn
            .client()
            .execute_batch(vec![
                Command::new("query-status", Value::Null),
                Command::new(
                    "input-send-event",
                    InputEvent::arguments(&[InputEvent::number(30, true)]),
                ),
                Command::new("query-name", json!({})),
            ])
            .await;
        assert_eq!(results.len(), 3);
        let [a, b, c] = &results[..] else {
            unreachable!()
        };
        let (a, c) = (a.as_ref().unwrap(), c.as_ref().unwrap());
        assert_eq!(a.value["status"], "prelaunch");
        assert!(b.as_ref().unwrap_err().is_vm_not_running());
        assert_eq!(c.value, json!({}));
        assert!(a.seq < c.seq);
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn quit_fails_pending_commands_as_closed_and_ends_events() {
    let mut qemu = Qemu::start();
    let (conn, mut events) = qemu.connect().await;
    // query-status is written with quit in one write: QEMU exits before answering it.
    let results = conn
        .client()
        .execute_batch(vec![
            Command::new("quit", Value::Null),
            Command::new("query-status", Value::Null),
        ])
        .await;
    match &results[..] {
        [quit, Err(Error::Closed {
            command,
            reason: CloseReason::Eof,
        })] => {
            assert!(
                quit.is_ok()
                    || matches!(
                        quit,
                        Err(Error::Closed {
                            reason: CloseReason::Eof,
                            ..
                        })
                    )
            );
            assert_eq!(command, "query-status");
        }
        other => panic!("{other:?}"),
    }
    // The event stream ends (after SHUTDOWN, if QEMU sent it before closing).
    while let Some(event) = next_event(&mut events).await {
        assert_eq!(event.name, "SHUTDOWN", "{event:?}");
    }
    // Commands after the close fail the same way.
    let err = conn.client().query_status().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Closed {
                reason: CloseReason::Eof,
                ..
            }
        ),
        "{err:?}"
    );
    conn.close().await.unwrap();
    let status = qemu.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn close_fails_waiting_commands_and_connect_reports_the_path() {
    let err = Connection::connect("/nonexistent/qmp.sock")
        .await
        .unwrap_err();
    match err {
        Error::Connect { path, .. } => assert_eq!(path, PathBuf::from("/nonexistent/qmp.sock")),
        other => panic!("{other:?}"),
    }
    let qemu = Qemu::start();
    let (conn, mut events) = qemu.connect().await;
    let client = conn.client().clone();
    conn.close().await.unwrap();
    let err = client.query_status().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Closed {
                reason: CloseReason::Shutdown,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(next_event(&mut events).await.is_none());
}

fn p50_p90(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: usize| {
        samples
            .get(samples.len() * q / 100)
            .copied()
            .unwrap_or_default()
    };
    (at(50), at(90))
}

/// Prints round-trip figures (no timed assertion: the machine is shared). Run with
/// `--nocapture` to see them.
#[tokio::test]
async fn measure_round_trips() {
    const N: usize = 200;
    for ids in [IdMode::Omit, IdMode::Numbered] {
        let qemu = Qemu::start();
        let (conn, _events) = qemu
            .connect_with(Config {
                ids,
                ..Config::default()
            })
            .await;
        let client = conn.client();
        let mut status = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            client.query_status().await.unwrap();
            status.push(t.elapsed());
        }
        client.cont().await.unwrap();
        let mut key = Vec::with_capacity(N);
        for i in 0..N {
            let t = Instant::now();
            client
                .input_send_event(&[InputEvent::qcode("a", i % 2 == 0)])
                .await
                .unwrap();
            key.push(t.elapsed());
        }
        let mut pair = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            client
                .input_send_event(&[InputEvent::qcode("a", true), InputEvent::qcode("a", false)])
                .await
                .unwrap();
            pair.push(t.elapsed());
        }
        let (s50, s90) = p50_p90(status);
        let (k50, k90) = p50_p90(key);
        let (p50, p90) = p50_p90(pair);
        eprintln!(
            "ids {ids:?}: query-status p50 {s50:?} p90 {s90:?}; input-send-event 1 key p50 {k50:?} p90 {k90:?}; down+up in one command p50 {p50:?} p90 {p90:?} ({N} each)"
        );
        conn.close().await.unwrap();
    }
}
