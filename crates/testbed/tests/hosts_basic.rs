//! Test hosts: they reach each other, keep their addresses to themselves, and vanish on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use testbed::hosts::{Mode, Testbed};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn hosts_talk_over_the_bridge_and_are_removed_on_drop() -> anyhow::Result<()> {
    let bed = Testbed::create()?;
    println!("testbed mode: {}, run {}", bed.mode(), bed.run_id());
    let (a, client) = (bed.a().clone(), bed.client().clone());
    assert_ne!(a.runtime_dir(), client.runtime_dir());
    assert!(a.runtime_dir().is_dir() && bed.b().runtime_dir().is_dir());

    // A listens; the client connects to A's address from its own host.
    let port = a.free_port()?;
    let a_ip = a.ip();
    let listener = a.run(move || TcpListener::bind((a_ip, port)))??;
    let sender = client.run(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect((a_ip, port))?;
        s.write_all(b"hello from client")
    })?;
    sender?;
    let (mut conn, peer) = listener.accept()?;
    let mut got = String::new();
    conn.read_to_string(&mut got)?;
    assert_eq!(got, "hello from client");
    if bed.mode() == Mode::Namespaces {
        assert_eq!(
            peer.ip(),
            client.ip(),
            "the peer is the client host's address"
        );
    }

    // A command run in a host sees that host's address, and only there does it exist.
    let out = a
        .command("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    let inside = String::from_utf8_lossy(&out.stdout);
    assert!(inside.contains(&a.ip().to_string()), "{inside}");
    let namespaces = bed.namespaces();
    if bed.mode() == Mode::Namespaces {
        assert_eq!(namespaces.len(), 4, "{namespaces:?}");
        let root = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()?;
        let root = String::from_utf8_lossy(&root.stdout);
        assert!(
            !root.contains(&format!("10.213.{}.", bed.subnet())),
            "{root}"
        );
        assert!(namespaces.iter().all(|n| netns_exists(n)));
    }

    // Something left running inside a host does not keep the host alive after drop (on
    // loopback there is no "inside": only QEMUs named by pidfiles are killed).
    let sleeper = match bed.mode() {
        Mode::Namespaces => Some(bed.b().command("sleep").arg("1000").spawn()?),
        Mode::Loopback => None,
    };
    let run_dir = bed.run_dir().to_path_buf();
    drop(bed);
    assert!(!run_dir.exists(), "run dir removed");
    assert!(
        namespaces.iter().all(|n| !netns_exists(n)),
        "namespaces removed"
    );
    if let Some(mut sleeper) = sleeper {
        let status = sleeper.wait()?;
        assert!(!status.success(), "the sleeper was killed: {status}");
    }
    Ok(())
}

#[test]
fn loopback_fallback_gives_separate_dirs_and_ports() -> anyhow::Result<()> {
    let bed = Testbed::create_in_mode(Mode::Loopback)?;
    println!("testbed mode: {}", bed.mode());
    assert_eq!(bed.mode(), Mode::Loopback);
    assert!(bed.namespaces().is_empty());
    assert_eq!(bed.a().ip(), bed.b().ip());
    assert_ne!(bed.a().runtime_dir(), bed.b().runtime_dir());
    // A port A holds is never B's free port. (Binding a port `free_port` named a moment ago
    // races every other socket on the machine: CI saw EADDRINUSE once.)
    let l = TcpListener::bind((bed.a().ip(), 0))?;
    let b_port = bed.b().free_port()?;
    assert_ne!(l.local_addr()?.port(), b_port);
    let dir = bed.run_dir().to_path_buf();
    drop(bed);
    assert!(!dir.exists());
    Ok(())
}
