//! The hook's decisions, purely: which action for which libvirt call, the console's command
//! line, and what a dry run of each call would do.

use libvirt::hook::{self, console_command, decide, Action, Call, HookConfig, Mode, RunAs};
use libvirt::{patch_domain, read_patched, DomainDir};
use std::ffi::OsString;
use std::path::Path;

#[test]
fn action_per_libvirt_call() {
    // Destination of a migration: migrate, prepare, start, started (all before the switchover).
    assert_eq!(decide("migrate", "begin"), Action::MarkIncoming);
    assert_eq!(decide("prepare", "begin"), Action::MakeDir);
    assert_eq!(
        decide("start", "begin"),
        Action::Nothing,
        "QEMU's sockets do not exist yet"
    );
    assert_eq!(decide("started", "begin"), Action::StartConsole);
    assert_eq!(decide("reconnect", "begin"), Action::StartConsole);
    // Source after a migration, or a destroyed domain: stopped, then release.
    assert_eq!(decide("stopped", "end"), Action::Nothing);
    assert_eq!(decide("release", "end"), Action::StopConsole);
    for (op, sub) in [
        ("restore", "begin"),
        ("attach", "begin"),
        ("prepare", "end"),
        ("release", "begin"),
        ("", ""),
    ] {
        assert_eq!(decide(op, sub), Action::Nothing, "{op} {sub}");
    }
}

const CONFIG: &str = r#"{
  "user": "nobody",
  "peer_key_file": "/etc/dmore/peer.key",
  "domains": {
    "vm1": { "listen": "10.0.0.50:5900", "password_file": "/etc/dmore/vm1.pw",
             "service_interface": "eth0", "incoming": "10.0.0.2:4700",
             "peers": ["10.0.0.2:4700", "10.0.0.3:4700", "10.0.0.4:4700"] },
    "plain": { "listen": "127.0.0.1:5901", "insecure_no_auth": true }
  }
}"#;

fn patched(name: &str) -> (String, libvirt::Patched) {
    let xml =
        include_str!("data/vm1.xml").replace("<name>vm1</name>", &format!("<name>{name}</name>"));
    let xml = patch_domain(&xml, &DomainDir::new(format!("/run/dmore/{name}"))).unwrap();
    let p = read_patched(&xml).unwrap().unwrap();
    (xml, p)
}

fn words(cmd: &[OsString]) -> Vec<&str> {
    cmd.iter().map(|a| a.to_str().unwrap()).collect()
}

#[test]
fn console_command_line() {
    let config: HookConfig = serde_json::from_str(CONFIG).unwrap();
    let (_, vm1) = patched("vm1");
    let run_as = Some(RunAs {
        uid: 65534,
        gid: 65534,
    });
    let dmore = Path::new("/usr/bin/dmore");
    let cmd = console_command(&config, &config.domains["vm1"], &vm1, dmore, run_as, true);
    assert_eq!(
        words(&cmd),
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--init-groups",
            "--inh-caps=+net_admin,+net_raw",
            "--ambient-caps=+net_admin,+net_raw",
            "--",
            "/usr/bin/dmore",
            "console",
            "--vnc-socket",
            "/run/dmore/vm1/vnc.sock",
            "--qmp-socket",
            "/run/dmore/vm1/qmp.sock",
            "--keymap",
            "de",
            "--serial-socket",
            "/run/dmore/vm1/serial.sock",
            "--serial-attach",
            "/run/dmore/vm1/serial-attach.sock",
            "--listen",
            "10.0.0.50:5900",
            "--name",
            "vm1",
            "--control",
            "/run/dmore/vm1/console.ctl",
            "--password-file",
            "/etc/dmore/vm1.pw",
            "--peer-key-file",
            "/etc/dmore/peer.key",
            "--service-interface",
            "eth0",
            "--incoming",
            "10.0.0.2:4700",
            "--peer",
            "10.0.0.3:4700",
            "--peer",
            "10.0.0.4:4700",
        ]
    );
    // Not arriving by migration: no --incoming; the peers all the same, never this host's own
    // `incoming` (this console's own listener, once it arrived elsewhere and came back).
    let cmd = console_command(&config, &config.domains["vm1"], &vm1, dmore, run_as, false);
    assert!(!words(&cmd).contains(&"--incoming"));
    assert!(words(&cmd).ends_with(&["--peer", "10.0.0.3:4700", "--peer", "10.0.0.4:4700"]));
    // As root, no service address: no setpriv, no capabilities asked for.
    let (_, plain) = patched("plain");
    let cmd = console_command(
        &config,
        &config.domains["plain"],
        &plain,
        dmore,
        None,
        false,
    );
    assert_eq!(words(&cmd)[..2], ["/usr/bin/dmore", "console"]);
    assert!(words(&cmd).ends_with(&[
        "--peer-key-file",
        "/etc/dmore/peer.key",
        "--insecure-no-auth"
    ]));
}

#[test]
fn dry_runs_per_call() {
    let mut config: HookConfig = serde_json::from_str(CONFIG).unwrap();
    config.user = None;
    let (xml, _) = patched("plain");
    let run = |object: &str, operation: &str, sub_operation: &str, xml: &str| {
        let call = Call {
            object,
            operation,
            sub_operation,
            xml,
        };
        hook::run(&config, &call, Path::new("/usr/bin/dmore"), Mode::DryRun)
    };
    assert_eq!(
        run("plain", "prepare", "begin", &xml).unwrap(),
        ["make directory /run/dmore/plain"]
    );
    assert_eq!(
        run("plain", "migrate", "begin", &xml).unwrap(),
        ["mark incoming /run/dmore/plain/incoming"]
    );
    let started = run("plain", "started", "begin", &xml).unwrap();
    assert_eq!(started.len(), 1);
    assert!(
        started[0].starts_with(
            "start console: /usr/bin/dmore console --vnc-socket /run/dmore/plain/vnc.sock"
        ),
        "{started:?}"
    );
    assert_eq!(
        run("plain", "release", "end", &xml).unwrap(),
        ["no console running"]
    );
    assert!(run("plain", "stopped", "end", &xml).unwrap().is_empty());
    // Left alone: a domain not patched, a domain not configured.
    let unpatched = include_str!("data/vm1.xml");
    assert!(run("vm1", "started", "begin", unpatched).unwrap()[0].contains("not patched"));
    let (other, _) = patched("other");
    assert!(run("other", "started", "begin", &other).unwrap()[0].contains("no entry"));
    // libvirt's first argument and the XML must agree.
    assert!(matches!(
        run("vm1", "started", "begin", &xml),
        Err(hook::HookError::WrongDomain { .. })
    ));
}

#[test]
fn config_is_strict_and_drop_in_execs_the_hook() {
    assert!(
        serde_json::from_str::<HookConfig>(r#"{"domain": {}}"#).is_err(),
        "a typo is an error"
    );
    let script = hook::drop_in(
        Path::new("/usr/local/bin/dmore"),
        Path::new("/etc/dmore/my config.json"),
    );
    assert_eq!(
        script.lines().last().unwrap(),
        "exec /usr/local/bin/dmore libvirt hook --config '/etc/dmore/my config.json' \"$@\""
    );
    assert!(script.starts_with("#!/bin/sh\n"));
}
