//! One test per transition of the source and destination phase machines, and the illegal
//! pairs that guard the hand-over.

use migrate::phase::{
    destination_step, source_step, DestinationAction as DA, DestinationEvent as DE,
    DestinationState as DS, Link, PhaseError, Side, SourceAction as SA, SourceEvent as SE,
    SourceState as SS,
};
use migrate::protocol::{AbortReason, Message};

use Link::{Connected, Disconnected};

fn src(state: SS, event: SE) -> (SS, Vec<SA>) {
    source_step(state.clone(), event.clone())
        .unwrap_or_else(|r| panic!("{state} + {event:?} refused: {}", r.error))
}

fn dst(state: DS, event: DE) -> (DS, Vec<DA>) {
    destination_step(state.clone(), event.clone())
        .unwrap_or_else(|r| panic!("{state} + {event:?} refused: {}", r.error))
}

fn abort() -> Message {
    Message::Abort {
        reason: AbortReason::SourceResumed,
    }
}

#[test]
fn source_happy_path_hands_over_once() {
    let s = SS::Serving { peer: Disconnected };
    let (s, a) = src(s, SE::PeerConnected);
    assert_eq!((&s, a), (&SS::Serving { peer: Connected }, vec![]));
    let (s, a) = src(s, SE::MigrationStarted);
    assert_eq!((&s, a), (&SS::Precopying { peer: Connected }, vec![]));
    assert!(s.serves());
    let (s, a) = src(s, SE::StoppedForMigration);
    assert_eq!((&s, a), (&SS::Sent, vec![SA::Freeze, SA::SendSnapshot]));
    assert!(!s.serves());
    let (s, a) = src(s, SE::MigrationCompleted);
    assert_eq!(
        (&s, a),
        (&SS::Sent, vec![]),
        "completion alone releases nothing"
    );
    let (s, a) = src(s, SE::Received(Message::TakenOver { relay_to: None }));
    assert_eq!((&s, a), (&SS::Done, vec![SA::ReleaseCheckpoint, SA::Exit]));
    let err = source_step(s, SE::Resumed).unwrap_err();
    assert_eq!(err.state, SS::Done);
    assert_eq!(
        err.error,
        PhaseError::Finished {
            side: Side::Source,
            event: "Resumed"
        }
    );
}

#[test]
fn source_freezes_without_a_migration_event_and_without_a_peer() {
    // Events capability off: no MigrationStarted; no destination reachable yet.
    let (s, a) = src(SS::Serving { peer: Disconnected }, SE::StoppedForMigration);
    assert_eq!((&s, a), (&SS::Frozen, vec![SA::Freeze, SA::Connect]));
    let (s, a) = src(s, SE::PeerLost);
    assert_eq!((&s, a), (&SS::Frozen, vec![]));
    let (s, a) = src(s, SE::PeerConnected);
    assert_eq!((&s, a), (&SS::Sent, vec![SA::SendSnapshot]));
    // A migration nobody prepared (libvirt): the destination is looked for at its start.
    let (s, a) = src(SS::Serving { peer: Disconnected }, SE::MigrationStarted);
    assert_eq!(
        (&s, a),
        (&SS::Precopying { peer: Disconnected }, vec![SA::Connect])
    );
    let (s, a) = src(s, SE::PeerConnected);
    assert_eq!((&s, a), (&SS::Precopying { peer: Connected }, vec![]));
    // A missed STOP: completion seen while precopying still freezes.
    let (s, a) = src(SS::Precopying { peer: Connected }, SE::MigrationCompleted);
    assert_eq!((&s, a), (&SS::Sent, vec![SA::Freeze, SA::SendSnapshot]));
}

#[test]
fn source_keeps_its_checkpoint_through_losses_and_aborts() {
    let (s, a) = src(SS::Sent, SE::PeerLost);
    assert_eq!((&s, a), (&SS::Frozen, vec![SA::Connect]));
    let (s, a) = src(
        SS::Sent,
        SE::Received(Message::Abort {
            reason: AbortReason::DestinationFailed("x".into()),
        }),
    );
    assert_eq!((&s, a), (&SS::Frozen, vec![SA::Connect]));
    let (s, a) = src(SS::Sent, SE::Received(Message::ResendSnapshot));
    assert_eq!((&s, a), (&SS::Sent, vec![SA::SendSnapshot]));
    for e in [
        SE::Stopped,
        SE::StoppedForMigration,
        SE::MigrationCompleted,
        SE::MigrationFailed,
    ] {
        assert_eq!(src(SS::Frozen, e.clone()), (SS::Frozen, vec![]));
        assert_eq!(src(SS::Sent, e), (SS::Sent, vec![]));
    }
    assert!(!s.serves());
}

#[test]
fn source_thaws_when_its_vm_runs_again() {
    let (s, a) = src(SS::Sent, SE::Resumed);
    assert_eq!(
        (&s, a),
        (
            &SS::Thawing,
            vec![
                SA::SendAbort(AbortReason::SourceResumed),
                SA::Disconnect,
                SA::Thaw
            ]
        )
    );
    assert!(s.serves());
    let (s, a) = src(s, SE::Thawed);
    assert_eq!((&s, a), (&SS::Serving { peer: Disconnected }, vec![]));
    let (s, a) = src(SS::Frozen, SE::Resumed);
    assert_eq!((&s, a), (&SS::Thawing, vec![SA::Disconnect, SA::Thaw]));
}

#[test]
fn source_before_the_freeze_serves_through_failures_and_plain_stops() {
    let p = SS::Precopying { peer: Connected };
    assert_eq!(src(p.clone(), SE::Stopped), (p.clone(), vec![]));
    assert_eq!(src(p.clone(), SE::Resumed), (p.clone(), vec![]));
    assert_eq!(
        src(p.clone(), SE::Received(Message::ResendSnapshot)),
        (p.clone(), vec![])
    );
    assert_eq!(
        src(p.clone(), SE::MigrationFailed),
        (
            SS::Serving { peer: Disconnected },
            vec![SA::SendAbort(AbortReason::MigrationFailed), SA::Disconnect]
        )
    );
    assert_eq!(
        src(p.clone(), SE::PeerLost),
        (SS::Precopying { peer: Disconnected }, vec![SA::Connect])
    );
    assert_eq!(
        src(p, SE::Received(abort())),
        (SS::Precopying { peer: Disconnected }, vec![SA::Connect])
    );
    assert_eq!(
        src(SS::Precopying { peer: Disconnected }, SE::PeerConnected),
        (SS::Precopying { peer: Connected }, vec![])
    );
    let s = SS::Serving { peer: Connected };
    for e in [
        SE::Stopped,
        SE::Resumed,
        SE::MigrationFailed,
        SE::Received(abort()),
    ] {
        assert_eq!(src(s.clone(), e), (s.clone(), vec![]));
    }
}

#[test]
fn source_refuses_what_would_break_exactly_once() {
    let cases = [
        (
            SS::Serving { peer: Connected },
            SE::Received(Message::TakenOver { relay_to: None }),
        ),
        (
            SS::Precopying { peer: Connected },
            SE::Received(Message::TakenOver { relay_to: None }),
        ),
        (
            SS::Thawing,
            SE::Received(Message::TakenOver { relay_to: None }),
        ),
        (
            SS::Frozen,
            SE::Received(Message::TakenOver { relay_to: None }),
        ),
        (SS::Sent, SE::PeerConnected),
        (SS::Serving { peer: Connected }, SE::PeerConnected),
        (SS::Sent, SE::MigrationStarted),
        (SS::Thawing, SE::StoppedForMigration),
        (SS::Serving { peer: Connected }, SE::Thawed),
        (SS::Sent, SE::Received(Message::Snapshot { bytes: vec![] })),
        (SS::Precopying { peer: Connected }, SE::MigrationStarted),
    ];
    for (state, event) in cases {
        let r = source_step(state.clone(), event.clone()).unwrap_err();
        assert_eq!(r.state, state, "state given back");
        assert!(
            matches!(r.error, PhaseError::Illegal { side: Side::Source, phase, event: e }
                if phase == state.name() && e == event.name()),
            "{state} + {event:?}: {:?}",
            r.error
        );
    }
}

#[test]
fn destination_happy_path() {
    let (d, a) = dst(DS::Waiting, DE::PeerConnected);
    assert_eq!((&d, a), (&DS::Connected, vec![]));
    let (d, a) = dst(
        d,
        DE::Received(Message::Snapshot {
            bytes: b"snap".to_vec(),
        }),
    );
    assert_eq!(
        (&d, a),
        (
            &DS::Ready {
                snapshot: b"snap".to_vec(),
                peer: Connected
            },
            vec![]
        )
    );
    assert!(!d.serves());
    let (d, a) = dst(d, DE::Resumed);
    assert_eq!(
        (&d, a),
        (
            &DS::TakingOver { peer: Connected },
            vec![DA::Restore {
                snapshot: b"snap".to_vec()
            }]
        )
    );
    assert!(d.serves());
    let (d, a) = dst(d, DE::Restored);
    assert_eq!(
        (&d, a),
        (&DS::Serving { peer: Connected }, vec![DA::SendTakenOver])
    );
}

#[test]
fn destination_fetches_when_its_vm_runs_first() {
    // A restarted destination console: its VM already runs.
    let (d, a) = dst(DS::Waiting, DE::Resumed);
    assert_eq!((&d, a), (&DS::Fetching { peer: Disconnected }, vec![]));
    let (d, a) = dst(d, DE::PeerConnected);
    assert_eq!(
        (&d, a),
        (&DS::Fetching { peer: Connected }, vec![DA::RequestSnapshot])
    );
    let (d, a) = dst(d, DE::Received(Message::Snapshot { bytes: vec![5] }));
    assert_eq!(
        (&d, a),
        (
            &DS::TakingOver { peer: Connected },
            vec![DA::Restore { snapshot: vec![5] }]
        )
    );
    // Connected when the VM runs: ask at once.
    let (d, a) = dst(DS::Connected, DE::Resumed);
    assert_eq!(
        (&d, a),
        (&DS::Fetching { peer: Connected }, vec![DA::RequestSnapshot])
    );
}

#[test]
fn destination_restores_once_and_acknowledges_again() {
    let t = DS::TakingOver { peer: Connected };
    assert_eq!(
        dst(t.clone(), DE::Received(Message::Snapshot { bytes: vec![] })),
        (t, vec![])
    );
    let (d, a) = dst(DS::TakingOver { peer: Disconnected }, DE::Restored);
    assert_eq!(
        (&d, a),
        (&DS::Serving { peer: Disconnected }, vec![]),
        "no one to tell yet"
    );
    let (d, a) = dst(d, DE::PeerConnected);
    assert_eq!(
        (&d, a),
        (&DS::Serving { peer: Connected }, vec![DA::SendTakenOver])
    );
    let (_, a) = dst(d, DE::Received(Message::Snapshot { bytes: vec![] }));
    assert_eq!(a, vec![DA::SendTakenOver]);
}

#[test]
fn destination_keeps_its_snapshot_over_a_loss_and_drops_it_on_abort() {
    let r = DS::Ready {
        snapshot: vec![1],
        peer: Connected,
    };
    let (d, _) = dst(r.clone(), DE::PeerLost);
    assert_eq!(
        d,
        DS::Ready {
            snapshot: vec![1],
            peer: Disconnected
        }
    );
    let (d, _) = dst(d, DE::PeerConnected);
    let (d, _) = dst(d, DE::Received(Message::Snapshot { bytes: vec![2] }));
    assert_eq!(
        d,
        DS::Ready {
            snapshot: vec![2],
            peer: Connected
        }
    );
    assert_eq!(
        dst(r, DE::Received(abort())),
        (DS::Waiting, vec![DA::Discard])
    );
    assert_eq!(
        dst(DS::Connected, DE::Received(abort())),
        (DS::Waiting, vec![DA::Discard])
    );
    assert_eq!(dst(DS::Connected, DE::PeerLost), (DS::Waiting, vec![]));
}

#[test]
fn destination_refuses_an_abort_once_its_vm_runs() {
    // The source says its VM runs while ours does: QEMU forbids it; never restore or drop.
    for state in [
        DS::Fetching { peer: Connected },
        DS::TakingOver { peer: Connected },
        DS::Serving { peer: Connected },
    ] {
        let r = destination_step(state.clone(), DE::Received(abort())).unwrap_err();
        assert_eq!(r.state, state);
        assert!(matches!(
            r.error,
            PhaseError::Illegal {
                side: Side::Destination,
                ..
            }
        ));
    }
    for (state, event) in [
        (
            DS::Waiting,
            DE::Received(Message::Snapshot { bytes: vec![] }),
        ),
        (
            DS::Connected,
            DE::Received(Message::TakenOver { relay_to: None }),
        ),
        (DS::Connected, DE::PeerConnected),
        (
            DS::Serving { peer: Connected },
            DE::Received(Message::ResendSnapshot),
        ),
        (
            DS::Ready {
                snapshot: vec![],
                peer: Connected,
            },
            DE::Restored,
        ),
        (
            DS::Ready {
                snapshot: vec![],
                peer: Disconnected,
            },
            DE::Received(Message::Snapshot { bytes: vec![] }),
        ),
    ] {
        let r = destination_step(state.clone(), event).unwrap_err();
        assert_eq!(r.state, state, "state given back");
    }
}

#[test]
fn phases_display_their_names() {
    assert_eq!(SS::Frozen.to_string(), "Frozen");
    assert_eq!(
        DS::Ready {
            snapshot: vec![],
            peer: Connected
        }
        .to_string(),
        "Ready"
    );
    let e = source_step(SS::Sent, SE::PeerConnected).unwrap_err().error;
    assert_eq!(
        e.to_string(),
        "source console: PeerConnected is illegal in phase Sent"
    );
}
