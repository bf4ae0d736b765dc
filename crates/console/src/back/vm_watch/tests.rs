use proptest::prelude::*;
use serde_json::json;

use super::*;
use Decision::{ClassifyStop, EventsOn, Journal, Tell};

/// The connect-time `query-status` was answered at this position.
const STATUS_SEQ: u64 = 10;

fn event(seq: u64, name: &str, data: serde_json::Value) -> qmp::Event {
    qmp::Event {
        seq: qmp::Seq(seq),
        name: name.to_owned(),
        data,
        timestamp: None,
    }
}

fn stop() -> qmp::Event {
    event(STATUS_SEQ + 1, "STOP", serde_json::Value::Null)
}

fn resume() -> qmp::Event {
    event(STATUS_SEQ + 1, "RESUME", serde_json::Value::Null)
}

fn migration(status: &str) -> qmp::Event {
    event(STATUS_SEQ + 1, "MIGRATION", json!({ "status": status }))
}

fn status(status: &str) -> qmp::StatusInfo {
    qmp::StatusInfo {
        running: status == "running",
        status: status.to_owned(),
    }
}

fn drain(watch: &mut VmWatch) -> Vec<Decision> {
    std::iter::from_fn(|| watch.poll_decision()).collect()
}

/// A running VM's watch, its attach decision taken.
fn watch() -> VmWatch {
    let mut watch = VmWatch::new(true, qmp::Seq(STATUS_SEQ));
    drain(&mut watch);
    watch
}

/// A watch in `phase`, its decisions taken.
fn watch_in(phase: Migration) -> VmWatch {
    let mut watch = watch();
    match phase {
        Migration::None => {}
        Migration::Announced => watch.handle_announced(true),
        Migration::Inferred => {
            watch.handle_event(&stop());
            watch.handle_stop_status(Some(&status("finish-migrate")));
        }
    }
    drain(&mut watch);
    assert_eq!(watch.migration, phase);
    watch
}

/// A migration starting, announced.
const STARTED: [Decision; 2] = [
    Journal(JournalCall::MigrationStarted),
    Tell(VmEvent::MigrationStarted),
];

/// A migration ending without moving the VM.
const ENDED: [Decision; 3] = [
    Journal(JournalCall::MigrationEnded),
    Tell(VmEvent::MigrationEnded),
    EventsOn,
];

/// A `RESUME` that ends no migration.
const RESUMED: [Decision; 3] = [
    EventsOn,
    Journal(JournalCall::VmResumed),
    Tell(VmEvent::Resumed),
];

#[test]
fn attach_turns_events_on_and_takes_the_connect_status() {
    for running in [false, true] {
        let mut watch = VmWatch::new(running, qmp::Seq(STATUS_SEQ));
        assert_eq!(watch.running(), running);
        assert_eq!(watch.migration, Migration::None);
        assert_eq!(drain(&mut watch), [EventsOn]);
    }
}

#[test]
fn stop_holds_input_and_asks_why() {
    let mut watch = watch();
    watch.handle_event(&stop());
    assert!(!watch.running());
    assert_eq!(
        drain(&mut watch),
        [
            Journal(JournalCall::VmStopped),
            Tell(VmEvent::Stopped),
            ClassifyStop
        ]
    );
    assert_eq!(watch.migration, Migration::None);
}

#[test]
fn resume_releases_input_and_turns_events_on() {
    let mut watch = VmWatch::new(false, qmp::Seq(STATUS_SEQ));
    drain(&mut watch);
    watch.handle_event(&resume());
    assert!(watch.running());
    assert_eq!(drain(&mut watch), RESUMED);
}

#[test]
fn run_state_events_older_than_the_connect_status_are_ignored() {
    let mut watch = watch();
    for name in ["STOP", "RESUME"] {
        watch.handle_event(&event(STATUS_SEQ - 1, name, serde_json::Value::Null));
        assert!(watch.running(), "{name}");
        assert_eq!(drain(&mut watch), [], "{name}");
    }
    // Not a run-state event: `query-status` says nothing about migrations.
    watch.handle_event(&event(
        STATUS_SEQ - 1,
        "MIGRATION",
        json!({ "status": "setup" }),
    ));
    assert_eq!(watch.migration, Migration::Announced);
}

#[test]
fn other_events_are_ignored() {
    let mut watch = watch_in(Migration::Announced);
    for e in [
        event(STATUS_SEQ + 1, "SHUTDOWN", serde_json::Value::Null),
        event(STATUS_SEQ + 1, "MIGRATION_PASS", json!({ "pass": 2 })),
        event(STATUS_SEQ + 1, "MIGRATION", serde_json::Value::Null),
        migration("none"),
        migration("cancelling"),
    ] {
        watch.handle_event(&e);
        assert_eq!(drain(&mut watch), [], "{e:?}");
        assert_eq!(watch.migration, Migration::Announced, "{e:?}");
        assert!(watch.running());
    }
}

#[test]
fn a_migration_event_starts_a_migration_once() {
    let mut watch = watch();
    watch.handle_event(&migration("setup"));
    assert_eq!(watch.migration, Migration::Announced);
    assert_eq!(drain(&mut watch), STARTED);
    for status in ["active", "pre-switchover", "device", "postcopy-active"] {
        watch.handle_event(&migration(status));
        assert_eq!(drain(&mut watch), [], "{status}");
        assert_eq!(watch.migration, Migration::Announced);
    }
}

#[test]
fn completed_ends_the_migration_from_any_phase() {
    for phase in [Migration::None, Migration::Announced, Migration::Inferred] {
        let mut watch = watch_in(phase);
        // An outgoing migration completes with its VM stopped.
        watch.handle_event(&stop());
        drain(&mut watch);
        watch.handle_event(&migration("completed"));
        assert_eq!(watch.migration, Migration::None, "{phase}");
        assert_eq!(
            drain(&mut watch),
            [
                Journal(JournalCall::MigrationEnded),
                Tell(VmEvent::MigrationCompleted),
                EventsOn
            ],
            "{phase}"
        );
    }
}

#[test]
fn an_incoming_postcopy_ending_while_the_vm_runs_moves_nothing() {
    // The destination's link attaches when its VM runs, in post-copy: its own QEMU then
    // reports the incoming migration's `postcopy-active` and `completed`.
    let mut watch = watch();
    for status in ["postcopy-active", "completed"] {
        watch.handle_event(&migration(status));
        assert_eq!(watch.migration, Migration::None, "{status}");
    }
    assert_eq!(drain(&mut watch), [EventsOn]);
    assert!(watch.running());
    // Had it heard the incoming migration start, its end reopens the fast lane, no more.
    let mut watch = watch_in(Migration::Announced);
    watch.handle_event(&migration("completed"));
    assert_eq!(watch.migration, Migration::None);
    assert_eq!(drain(&mut watch), ENDED);
}

#[test]
fn failed_or_cancelled_end_a_migration_under_way_only() {
    for status in ["failed", "cancelled"] {
        for phase in [Migration::Announced, Migration::Inferred] {
            let mut watch = watch_in(phase);
            watch.handle_event(&migration(status));
            assert_eq!(watch.migration, Migration::None);
            assert_eq!(drain(&mut watch), ENDED, "{status} in {phase}");
        }
        // Already ended (the source resumed, or the console said so, first).
        let mut watch = watch_in(Migration::None);
        watch.handle_event(&migration(status));
        assert_eq!(drain(&mut watch), [], "{status}");
    }
}

#[test]
fn a_migration_stop_infers_a_migration() {
    for answer in ["finish-migrate", "postmigrate"] {
        let mut watch = watch();
        watch.handle_event(&stop());
        drain(&mut watch);
        watch.handle_stop_status(Some(&status(answer)));
        assert_eq!(watch.migration, Migration::Inferred, "{answer}");
        assert_eq!(
            drain(&mut watch),
            [
                Journal(JournalCall::MigrationStarted),
                Tell(VmEvent::StoppedForMigration)
            ],
            "{answer}"
        );
    }
}

#[test]
fn a_migration_stop_during_an_announced_migration_only_says_so() {
    let mut watch = watch_in(Migration::Announced);
    watch.handle_event(&stop());
    drain(&mut watch);
    watch.handle_stop_status(Some(&status("finish-migrate")));
    assert_eq!(watch.migration, Migration::Announced);
    assert_eq!(drain(&mut watch), [Tell(VmEvent::StoppedForMigration)]);
}

#[test]
fn any_other_stop_is_not_a_migration() {
    for answer in [Some(status("paused")), Some(status("shutdown")), None] {
        let mut watch = watch();
        watch.handle_event(&stop());
        drain(&mut watch);
        watch.handle_stop_status(answer.as_ref());
        assert_eq!(watch.migration, Migration::None, "{answer:?}");
        assert_eq!(drain(&mut watch), [], "{answer:?}");
        // So the next RESUME ends nothing.
        watch.handle_event(&resume());
        assert!(!drain(&mut watch).contains(&Tell(VmEvent::MigrationEnded)));
    }
}

#[test]
fn resume_after_a_migration_stop_ends_that_migration_first() {
    for phase in [Migration::Announced, Migration::Inferred] {
        let mut watch = watch_in(phase);
        watch.handle_event(&stop());
        watch.handle_stop_status(Some(&status("postmigrate")));
        drain(&mut watch);
        watch.handle_event(&resume());
        assert_eq!(watch.migration, Migration::None, "{phase}");
        assert_eq!(drain(&mut watch), [ENDED, RESUMED].concat(), "{phase}");
    }
}

#[test]
fn a_migration_stop_ends_at_most_one_migration() {
    let mut watch = watch_in(Migration::Inferred);
    // The migration failed after the switchover's stop, and said so before the RESUME.
    watch.handle_event(&migration("failed"));
    assert_eq!(drain(&mut watch), ENDED);
    watch.handle_event(&resume());
    assert_eq!(drain(&mut watch), RESUMED);
    // The stop was used up: a later migration is not ended by the next RESUME.
    watch.handle_announced(true);
    drain(&mut watch);
    watch.handle_event(&stop());
    watch.handle_event(&resume());
    assert_eq!(watch.migration, Migration::Announced);
    assert!(!drain(&mut watch).contains(&Journal(JournalCall::MigrationEnded)));
}

#[test]
fn a_resume_without_a_migration_stop_leaves_the_migration_running() {
    // A plain `stop` and `cont` during pre-copy.
    let mut watch = watch_in(Migration::Announced);
    watch.handle_event(&stop());
    watch.handle_stop_status(Some(&status("paused")));
    drain(&mut watch);
    watch.handle_event(&resume());
    assert_eq!(watch.migration, Migration::Announced);
    assert_eq!(drain(&mut watch), RESUMED);
}

#[test]
fn the_consoles_announcement_starts_once_and_ends_once() {
    let mut watch = watch();
    watch.handle_announced(true);
    assert_eq!(watch.migration, Migration::Announced);
    assert_eq!(drain(&mut watch), STARTED);
    watch.handle_announced(true);
    assert_eq!(drain(&mut watch), []);
    watch.handle_announced(false);
    assert_eq!(watch.migration, Migration::None);
    assert_eq!(drain(&mut watch), ENDED);
    watch.handle_announced(false);
    assert_eq!(drain(&mut watch), []);
}

#[test]
fn an_announcement_takes_over_an_inferred_migration() {
    for input in ["announce", "active"] {
        let mut watch = watch_in(Migration::Inferred);
        match input {
            "announce" => watch.handle_announced(true),
            _ => watch.handle_event(&migration(input)),
        }
        assert_eq!(watch.migration, Migration::Announced, "{input}");
        assert_eq!(drain(&mut watch), [], "{input}");
    }
    let mut watch = watch_in(Migration::Inferred);
    watch.handle_announced(false);
    assert_eq!(watch.migration, Migration::None);
    assert_eq!(drain(&mut watch), ENDED);
}

/// One input to the watch.
#[derive(Debug, Clone)]
enum Input {
    Event(qmp::Event),
    StopStatus(Option<qmp::StatusInfo>),
    Announced(bool),
}

fn input() -> impl Strategy<Value = Input> {
    let run_state = (
        prop_oneof![Just("STOP"), Just("RESUME"), Just("SHUTDOWN")],
        STATUS_SEQ - 2..STATUS_SEQ + 3,
    )
        .prop_map(|(name, seq)| Input::Event(event(seq, name, serde_json::Value::Null)));
    let migration = prop_oneof![
        Just(MigrationStatus::None),
        Just(MigrationStatus::Setup),
        Just(MigrationStatus::Active),
        Just(MigrationStatus::PreSwitchover),
        Just(MigrationStatus::Device),
        Just(MigrationStatus::Completed),
        Just(MigrationStatus::Failed),
        Just(MigrationStatus::Cancelling),
        Just(MigrationStatus::Cancelled),
        Just(MigrationStatus::Other("postcopy-active".to_owned())),
    ]
    .prop_map(|s| Input::Event(migration(s.name())));
    let answers = [
        "running",
        "paused",
        "finish-migrate",
        "postmigrate",
        "inmigrate",
    ];
    let stop_status = proptest::option::of(proptest::sample::select(answers.to_vec()))
        .prop_map(|s| Input::StopStatus(s.map(status)));
    prop_oneof![
        run_state,
        migration,
        stop_status,
        any::<bool>().prop_map(Input::Announced)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever QEMU and the console say, in any order: the journal, told only through the
    /// decisions, always believes what the watch believes (the VM runs; a migration is under
    /// way); it never hears of a migration starting twice without an end between; and every
    /// end of a migration turns `events` back on.
    #[test]
    fn the_journal_always_agrees_with_the_watch(
        running in any::<bool>(),
        inputs in proptest::collection::vec(input(), 0..40),
    ) {
        let mut watch = VmWatch::new(running, qmp::Seq(STATUS_SEQ));
        prop_assert_eq!(drain(&mut watch), [EventsOn]);
        let (mut journal_running, mut journal_migrating) = (running, false);
        for input in inputs {
            match &input {
                Input::Event(e) => watch.handle_event(e),
                Input::StopStatus(s) => watch.handle_stop_status(s.as_ref()),
                Input::Announced(m) => watch.handle_announced(*m),
            }
            let decisions = drain(&mut watch);
            for (i, decision) in decisions.iter().enumerate() {
                match decision {
                    Journal(JournalCall::VmStopped) => journal_running = false,
                    Journal(JournalCall::VmResumed) => journal_running = true,
                    Journal(JournalCall::MigrationStarted) => {
                        prop_assert!(!journal_migrating, "started twice: {:?}", input);
                        journal_migrating = true;
                    }
                    Journal(JournalCall::MigrationEnded) => {
                        journal_migrating = false;
                        prop_assert!(decisions[i..].contains(&EventsOn), "{:?}", input);
                    }
                    Tell(_) | ClassifyStop | EventsOn => {}
                }
            }
            prop_assert_eq!(watch.running(), journal_running, "{:?}", input);
            prop_assert_eq!(watch.migration != Migration::None, journal_migrating, "{:?}", input);
        }
    }
}

#[test]
fn an_announcement_qemu_never_followed_ends_when_it_expires() {
    let mut watch = watch_in(Migration::Announced);
    watch.handle_announcement_expired();
    assert_eq!(drain(&mut watch), ENDED);
    assert_eq!(watch.migration, Migration::None);
}

#[test]
fn an_announcement_expiring_changes_nothing_once_qemu_migrates() {
    let mut watch = watch_in(Migration::Announced);
    watch.handle_event(&migration("setup"));
    assert_eq!(drain(&mut watch), [], "already under way");
    watch.handle_announcement_expired();
    assert_eq!(drain(&mut watch), [], "QEMU's events end it, not the timer");
    assert_eq!(watch.migration, Migration::Announced);
    // Its end, then a new announcement that QEMU does not follow.
    watch.handle_event(&migration("cancelled"));
    assert_eq!(drain(&mut watch), ENDED);
    watch.handle_announced(true);
    assert_eq!(drain(&mut watch), STARTED);
    watch.handle_announcement_expired();
    assert_eq!(drain(&mut watch), ENDED);
}
