//! The co-migration's steps against scripted consoles (real unix control sockets) and
//! scripted QEMU monitors.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use migrate::vm::MonitorError;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::*;

/// A console's control socket that logs each command line and answers from a table keyed
/// by the command's first word (`{"ok":true}` for anything not in it).
struct FakeConsole {
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeConsole {
    fn start(dir: &Path, name: &str, answers: &[(&str, Value)]) -> FakeConsole {
        FakeConsole::start_slow(dir, name, answers, None)
    }

    /// [`FakeConsole::start`], answering the command named `slow.0` only after `slow.1`.
    fn start_slow(
        dir: &Path,
        name: &str,
        answers: &[(&str, Value)],
        slow: Option<(&'static str, Duration)>,
    ) -> FakeConsole {
        let path = dir.join(name);
        let listener = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let answers: HashMap<String, String> = answers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let task_log = log.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (r, mut w) = sock.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_err() {
                    continue;
                }
                let line = line.trim().to_string();
                let word = line.split(' ').next().unwrap_or_default();
                let reply = answers
                    .get(word)
                    .cloned()
                    .unwrap_or_else(|| json!({"ok": true}).to_string());
                task_log.lock().unwrap().push(line.clone());
                if let Some((_, delay)) = slow.filter(|(w, _)| *w == word) {
                    tokio::time::sleep(delay).await;
                }
                let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
            }
        });
        FakeConsole { log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn version() -> (&'static str, Value) {
    (
        "version",
        json!({"ok": true, "control": "dmore-console", "version": 1}),
    )
}

fn dest_status() -> (&'static str, Value) {
    (
        "status",
        json!({"ok": true, "role": "destination", "phase": "Serving",
            "comigration": {"snapshot_bytes": 5000, "viewers_moved": 1,
                "frozen_at_us": 1_000_000, "taken_over_at_us": 1_040_000}}),
    )
}

/// A QEMU monitor: `query-migrate` answers from a list (the last repeats; `cancelled` once
/// `migrate_cancel` came), `query-status` says `running`, the command in `fail` fails, the
/// rest answer `{}`.
#[derive(Default)]
struct FakeQemu {
    log: RefCell<Vec<String>>,
    migrate: RefCell<VecDeque<Value>>,
    fail: Option<&'static str>,
}

impl FakeQemu {
    fn migrating(answers: Vec<Value>) -> FakeQemu {
        FakeQemu {
            migrate: RefCell::new(answers.into()),
            ..FakeQemu::default()
        }
    }
    fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

impl Monitor for FakeQemu {
    async fn execute(&self, command: &str, _args: Value) -> Result<Value, MonitorError> {
        self.log.borrow_mut().push(command.to_string());
        if self.fail == Some(command) {
            return Err(MonitorError::Qmp {
                class: "GenericError".into(),
                desc: "scripted".into(),
            });
        }
        let cancelled = self.log.borrow().iter().any(|c| c == "migrate_cancel");
        Ok(match command {
            "query-migrate" if cancelled => json!({"status": "cancelled"}),
            "query-migrate" => {
                let mut q = self.migrate.borrow_mut();
                match q.len() {
                    0 => json!({}),
                    1 => q.front().cloned().unwrap_or_default(),
                    _ => q.pop_front().unwrap_or_default(),
                }
            }
            "query-status" => json!({"status": "running", "running": true}),
            _ => json!({}),
        })
    }
}

fn plan(dir: &Path, hold: bool) -> Plan {
    Plan {
        source_qmp: dir.join("src-qmp.sock"),
        dest_qmp: dir.join("dst-qmp.sock"),
        incoming_uri: "tcp:10.213.1.12:4444".into(),
        source_console: dir.join("src.ctl"),
        dest_console: dir.join("dst.ctl"),
        dest_console_addr: "10.213.1.12:4700".parse().unwrap(),
        hold_switchover: hold,
        events: true,
        timeout: Duration::from_secs(3),
        quit_source: true,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs [`Steps::drive`] with the two fake QEMUs and returns its result and the progress heard.
async fn run_drive(
    plan: &Plan,
    src: &FakeQemu,
    dst: &FakeQemu,
) -> (Result<Timeline, OrchestrateError>, Vec<Progress>) {
    run_drive_until(plan, src, dst, std::future::pending()).await
}

/// [`run_drive`], interrupted when `interrupt` completes.
async fn run_drive_until(
    plan: &Plan,
    src: &FakeQemu,
    dst: &FakeQemu,
    interrupt: impl Future<Output = ()>,
) -> (Result<Timeline, OrchestrateError>, Vec<Progress>) {
    let heard = Mutex::new(Vec::new());
    let progress = Mutex::new(|p: &Progress| heard.lock().unwrap().push(p.clone()));
    let source = Console::new(Side::Source, &plan.source_console);
    let dest = Console::new(Side::Destination, &plan.dest_console);
    let steps = Steps {
        plan,
        source: &source,
        dest: &dest,
        progress: &progress,
    };
    let result = steps.drive(src, dst, &mut Interrupt::new(interrupt)).await;
    (result, heard.into_inner().unwrap())
}

#[test]
fn an_interrupt_during_precopy_cancels_and_tells_the_source_console() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let status = (
            "status",
            json!({"ok": true, "role": "source", "phase": "Serving", "viewers": 1}),
        );
        let source = FakeConsole::start(dir.path(), "src.ctl", &[status]);
        let dest = FakeConsole::start(dir.path(), "dst.ctl", &[]);
        let src = FakeQemu::migrating(vec![json!({"status": "active"})]);
        let dst = FakeQemu::default();
        let interrupt = tokio::time::sleep(Duration::from_millis(30));
        let (result, _) = run_drive_until(&plan, &src, &dst, interrupt).await;
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::Interrupted {
                    cancel_error: None,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("cancelled") && message.contains("Serving, 1 viewer(s)"),
            "{message}"
        );
        assert_eq!(
            source.log(),
            [
                "prepare 10.213.1.12:4700",
                "migration-started",
                "migration-ended",
                "status"
            ]
        );
        assert!(dest.log().is_empty(), "{:?}", dest.log());
        assert!(
            src.log().contains(&"migrate_cancel".to_owned()),
            "{:?}",
            src.log()
        );
    });
}

#[test]
fn an_interrupt_after_the_destination_runs_is_reported_and_the_move_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        // The takeover takes a while: the interrupt lands while it is waited for.
        let slow = Some(("wait", Duration::from_millis(300)));
        let dest = FakeConsole::start_slow(dir.path(), "dst.ctl", &[dest_status()], slow);
        let src = FakeQemu::migrating(vec![
            json!({"status": "active"}),
            json!({"status": "completed", "total-time": 240, "downtime": 7}),
        ]);
        let dst = FakeQemu::default();
        let dest_log = dest.log.clone();
        let interrupt = async move {
            while !dest_log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("wait"))
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let (result, heard) = run_drive_until(&plan, &src, &dst, interrupt).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(heard.contains(&Progress::TooLateToCancel), "{heard:?}");
        assert!(
            !src.log().contains(&"migrate_cancel".to_owned()),
            "{:?}",
            src.log()
        );
        assert_eq!(
            source.log(),
            ["prepare 10.213.1.12:4700", "migration-started"]
        );
        assert_eq!(dest.log(), ["wait Serving 3000", "status"]);
    });
}

#[test]
fn an_interrupt_before_migrate_starts_nothing_and_undoes_the_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[]);
        let src = FakeQemu::migrating(vec![json!({"status": "active"})]);
        let dst = FakeQemu::default();
        // Ready before the first step: the console still finishes the commands it was given.
        let (result, heard) = run_drive_until(&plan, &src, &dst, std::future::ready(())).await;
        assert!(matches!(result, Err(OrchestrateError::Interrupted { .. })));
        assert!(
            src.log().is_empty() && dst.log().is_empty(),
            "QEMU untouched"
        );
        assert!(heard.is_empty(), "{heard:?}");
        assert_eq!(
            source.log(),
            [
                "prepare 10.213.1.12:4700",
                "migration-started",
                "migration-ended",
                "status"
            ]
        );
    });
}

#[test]
fn a_plain_comigration_prepares_migrates_and_waits_for_the_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let dest = FakeConsole::start(dir.path(), "dst.ctl", &[dest_status()]);
        let src = FakeQemu::migrating(vec![
            json!({"status": "setup"}),
            json!({"status": "active", "ram": {"transferred": 100, "total": 1000, "remaining": 900}}),
            json!({"status": "device"}),
            json!({"status": "completed", "total-time": 240, "downtime": 7,
                "ram": {"transferred": 1000}}),
        ]);
        let dst = FakeQemu::default();
        let (result, heard) = run_drive(&plan, &src, &dst).await;
        let t = result.unwrap();
        assert_eq!(
            source.log(),
            ["prepare 10.213.1.12:4700", "migration-started"]
        );
        assert_eq!(dest.log(), ["wait Serving 3000", "status"]);
        assert_eq!(
            (t.vm_downtime_ms, t.qemu_total_ms, t.ram_transferred),
            (Some(7), Some(240), Some(1000))
        );
        assert_eq!(t.state_bytes, Some(5000));
        assert_eq!(t.viewers_moved, Some(1));
        assert_eq!(t.freeze_to_takeover, Some(Duration::from_millis(40)));
        assert!(!t.held_switchover);
        assert_eq!(
            heard,
            [
                Progress::Precopy {
                    transferred: 0,
                    total: 0,
                    remaining: 0
                },
                Progress::Precopy {
                    transferred: 100,
                    total: 1000,
                    remaining: 900
                },
                Progress::Switchover,
                Progress::WaitingForConsole,
            ]
        );
        assert!(!src.log().contains(&"migrate-continue".to_string()));
    });
}

#[test]
fn holding_the_switchover_continues_only_once_the_destination_console_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), true);
    rt().block_on(async {
        let _source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let dest = FakeConsole::start(dir.path(), "dst.ctl", &[dest_status()]);
        let src = FakeQemu::migrating(vec![
            json!({"status": "active"}),
            json!({"status": "pre-switchover"}),
            json!({"status": "device"}),
            json!({"status": "completed", "downtime": 30}),
        ]);
        let dst = FakeQemu::default();
        let (result, heard) = run_drive(&plan, &src, &dst).await;
        let t = result.unwrap();
        assert!(t.held_switchover);
        let switchovers = heard.iter().filter(|p| **p == Progress::Switchover).count();
        assert_eq!(switchovers, 1, "{heard:?}");
        assert_eq!(
            dest.log(),
            ["wait Ready 3000", "wait Serving 3000", "status"]
        );
        let log = src.log();
        assert!(log.contains(&"migrate-continue".to_string()), "{log:?}");
        assert!(!log.contains(&"migrate_cancel".to_string()), "{log:?}");
    });
}

#[test]
fn a_destination_console_not_ready_at_the_hold_cancels_and_the_source_keeps_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), true);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let refused = json!({"ok": false, "error": "timeout", "phase": "Connected"});
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[("wait", refused)]);
        let src = FakeQemu::migrating(vec![
            json!({"status": "pre-switchover"}),
            json!({"status": "cancelled"}),
        ]);
        let dst = FakeQemu::default();
        let (result, _) = run_drive(&plan, &src, &dst).await;
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::NotReady {
                    cancel_error: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("stay on the source"), "{err}");
        let log = src.log();
        assert!(log.contains(&"migrate_cancel".to_string()), "{log:?}");
        assert!(!log.contains(&"migrate-continue".to_string()), "{log:?}");
        assert_eq!(source.log().last().unwrap(), "migration-ended");
    });
}

#[test]
fn a_failed_qemu_migration_ends_the_console_migration_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let dest = FakeConsole::start(dir.path(), "dst.ctl", &[]);
        let src = FakeQemu::migrating(vec![
            json!({"status": "active"}),
            json!({"status": "failed", "error-desc": "Connection refused"}),
        ]);
        let dst = FakeQemu::default();
        let (result, _) = run_drive(&plan, &src, &dst).await;
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::Migration {
                    vm_on_source: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("stay on the source"), "{err}");
        assert_eq!(
            source.log(),
            [
                "prepare 10.213.1.12:4700",
                "migration-started",
                "migration-ended"
            ]
        );
        assert!(dest.log().is_empty(), "{:?}", dest.log());
    });
}

#[test]
fn a_refused_migrate_command_also_leaves_everything_on_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[]);
        let src = FakeQemu::default();
        let dst = FakeQemu {
            fail: Some("migrate-incoming"),
            ..FakeQemu::default()
        };
        let (result, _) = run_drive(&plan, &src, &dst).await;
        assert!(matches!(
            result,
            Err(OrchestrateError::Migration {
                vm_on_source: true,
                ..
            })
        ));
        assert!(!src.log().contains(&"migrate".to_string()));
        assert_eq!(source.log().last().unwrap(), "migration-ended");
    });
}

#[test]
fn a_console_that_does_not_take_over_is_reported_without_ending_the_source_migration() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[]);
        let refused = json!({"ok": false, "error": "timeout", "phase": "TakingOver"});
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[("wait", refused)]);
        let src = FakeQemu::migrating(vec![json!({"status": "completed", "downtime": 3})]);
        let dst = FakeQemu::default();
        let (result, heard) = run_drive(&plan, &src, &dst).await;
        assert_eq!(
            heard[heard.len() - 2..],
            [Progress::Switchover, Progress::WaitingForConsole],
            "a switchover no poll saw is still reported"
        );
        let err = result.unwrap_err();
        assert!(matches!(err, OrchestrateError::Takeover { .. }), "{err:?}");
        assert!(err.to_string().contains("runs on the destination"), "{err}");
        assert!(!source.log().contains(&"migration-ended".to_string()));
        assert_eq!(heard.last(), Some(&Progress::WaitingForConsole));
    });
}

#[test]
fn comigrate_refuses_a_console_of_another_version_before_touching_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let source = FakeConsole::start(dir.path(), "src.ctl", &[version()]);
        let old = json!({"ok": true, "control": "dmore-console", "version": 0});
        let dest = FakeConsole::start(dir.path(), "dst.ctl", &[("version", old)]);
        let err = comigrate(&plan, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::ConsoleVersion {
                    side: Side::Destination,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(source.log(), ["version", "status"]);
        assert_eq!(dest.log(), ["version"]);
    });
}

#[test]
fn comigrate_refuses_a_destination_console_in_the_source_role() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let src_status = ("status", json!({"ok": true, "role": "source"}));
        let _source = FakeConsole::start(dir.path(), "src.ctl", &[version(), src_status.clone()]);
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[version(), src_status]);
        let err = comigrate(&plan, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::ConsoleRole {
                    side: Side::Destination,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("--incoming"), "{err}");
    });
}

#[test]
fn comigrate_refuses_a_source_console_busy_with_another_migration() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let busy = (
            "status",
            json!({"ok": true, "role": "source", "phase": "Precopying"}),
        );
        let idle = (
            "status",
            json!({"ok": true, "role": "destination", "phase": "Waiting"}),
        );
        let source = FakeConsole::start(dir.path(), "src.ctl", &[version(), busy]);
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[version(), idle]);
        let err = comigrate(&plan, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::Busy {
                    side: Side::Source,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("one migration of a VM at a time"),
            "{err}"
        );
        assert_eq!(
            source.log(),
            ["version", "status"],
            "nothing else was asked"
        );
    });
}

#[test]
fn comigrate_names_a_missing_qmp_socket() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), false);
    rt().block_on(async {
        let _source = FakeConsole::start(dir.path(), "src.ctl", &[version()]);
        let _dest = FakeConsole::start(dir.path(), "dst.ctl", &[version()]);
        let err = comigrate(&plan, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                &err,
                OrchestrateError::QmpConnect {
                    side: Side::Source,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("main monitor"), "{err}");
    });
}

#[test]
fn plan_checks_catch_mixed_up_arguments() {
    let dir = Path::new("/run/vm1");
    assert!(plan(dir, false).check().is_ok());
    type Spoil = fn(&mut Plan);
    let cases: [(&str, Spoil); 6] = [
        ("QMP sockets are both", |p| {
            p.dest_qmp = p.source_qmp.clone()
        }),
        ("consoles are both", |p| {
            p.dest_console = p.source_console.clone()
        }),
        ("not TRANSPORT:ADDRESS", |p| {
            p.incoming_uri = "10.0.0.2".into()
        }),
        ("IP and port", |p| {
            p.dest_console_addr = "0.0.0.0:4700".parse().unwrap()
        }),
        ("IP and port", |p| {
            p.dest_console_addr = "10.0.0.2:0".parse().unwrap()
        }),
        ("more than zero", |p| p.timeout = Duration::ZERO),
    ];
    for (says, spoil) in cases {
        let mut p = plan(dir, false);
        spoil(&mut p);
        let err = p.check().unwrap_err().to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
}
