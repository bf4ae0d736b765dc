//! The hook's announcement against stand-in consoles on loopback: it reaches the one serving
//! this VM among the peers, and says why when none answers.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use libvirt::announce::announce;
use migrate::protocol::{Codec, Config, Message, Role, VERSION_1};

const KEY: &[u8] = b"peer key";

/// A console's peer port: Hellos as `vm` with `versions`, then `Announced` for `Announce`
/// (unless `answer` is false). Serves one connection.
fn console(vm: &'static str, versions: Vec<u16>, answer: bool) -> SocketAddr {
    console_that(vm, versions, answer, false)
}

/// [`console`], greeting the connection with `TakenOver` after the Hellos if `arrived` (as a
/// console that arrived by a migration greets every peer) and answering `Announce` 50 ms
/// later (the time its fast lane takes to be confirmed under load).
fn console_that(vm: &'static str, versions: Vec<u16>, answer: bool, arrived: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let config = Config {
            versions,
            ..Config::new(Role::Destination, KEY, vm)
        };
        let mut codec = Codec::new(config, [3; 32]).unwrap();
        s.write_all(&codec.start().unwrap()).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            let Ok(n) = s.read(&mut buf) else { return };
            if n == 0 {
                return;
            }
            codec.feed(&buf[..n]);
            loop {
                match codec.poll_message() {
                    Ok(Some(Message::Hello(_))) if arrived => {
                        let _ = s.write_all(
                            &codec
                                .encode(&Message::TakenOver { relay_to: None })
                                .unwrap(),
                        );
                    }
                    Ok(Some(Message::Announce)) if answer => {
                        if arrived {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let _ = s.write_all(&codec.encode(&Message::Announced).unwrap());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    // Another VM or key: the console drops the connection.
                    Err(_) => return,
                }
            }
        }
    });
    addr
}

fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn the_console_serving_the_vm_answers_among_the_peers() {
    let other_vm = console("vm2", vec![1, 2], true);
    let ours = console("vm1", vec![1, 2], true);
    let peers = [closed_port(), other_vm, ours];
    let done = announce(&peers, KEY, "vm1", Duration::from_secs(3)).unwrap();
    assert_eq!(done.console, ours);
}

/// A console that arrived here by a migration greets the hook with `TakenOver` before it
/// answers: the hook waits for the answer (it once took the greeting for a refusal, returned
/// at once, and libvirt migrated while the console was still closing its fast lane).
#[test]
fn a_console_that_arrived_by_a_migration_is_announced_to() {
    let ours = console_that("vm1", vec![1, 2], true, true);
    let done = announce(&[ours], KEY, "vm1", Duration::from_secs(3)).unwrap();
    assert_eq!(done.console, ours);
    assert!(done.took >= Duration::from_millis(50), "{done:?}");
}

#[test]
fn no_answer_says_what_each_peer_did() {
    let old = console("vm1", vec![VERSION_1], true);
    let silent = console("vm1", vec![1, 2], false);
    let closed = closed_port();
    let failed = announce(
        &[closed, old, silent],
        KEY,
        "vm1",
        Duration::from_millis(500),
    )
    .unwrap_err();
    let why = |peer| {
        failed
            .iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, w)| w.clone())
            .unwrap()
    };
    assert!(why(closed).starts_with("connect"), "{failed:?}");
    assert!(why(old).contains("version 1 only"), "{failed:?}");
    assert!(why(silent).contains("no answer"), "{failed:?}");
}

#[test]
fn a_console_with_another_key_is_not_announced_to() {
    let ours = console("vm1", vec![1, 2], true);
    let failed = announce(&[ours], b"another key", "vm1", Duration::from_secs(2)).unwrap_err();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.contains("failed authentication"), "{failed:?}");
}
