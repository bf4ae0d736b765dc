//! `dmore libvirt hook` run as libvirt runs it (arguments, the domain's XML on stdin), in a
//! temporary directory, with a stand-in console that records its arguments: the hook starts
//! it detached (and returns while it runs), once, with the domain's sockets, and stops it.
//! Then, as root, a private libvirtd runs the installed hook for a real domain.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn hook(config: &Path, xml: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmore"))
        .args(["libvirt", "hook", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hook may exit without reading stdin (calls it ignores): a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(xml.as_bytes());
    // Returns only once stdout and stderr close: a console that kept them open would hang
    // here, as it would hang libvirtd.
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits until `done` holds; panics after a minute (a hang, not a timing assertion).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gave up waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the stand-in console's process group, whatever the test did.
struct Group(Option<i32>);
impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn running(pid: i32) -> bool {
    // Gone, or a zombie waiting for init (the hook that started it has exited).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn hook_starts_and_stops_the_domains_console() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("run/vm1");
    let args_file = tmp.path().join("console.args");
    let fake = tmp.path().join("fake-dmore");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {0}.tmp && mv {0}.tmp {0}\n\
             trap 'kill $!; exit 0' TERM\nsleep 600 & wait\n",
            args_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = tmp.path().join("libvirt.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "dmore": fake,
            "peer_key_file": "/etc/dmore/peer.key",
            "domains": { "vm1": { "listen": "127.0.0.1:5999", "insecure_no_auth": true,
                                  "incoming": "127.0.0.1:4700" } }
        })
        .to_string(),
    )
    .unwrap();
    let xml = libvirt::patch_domain(
        include_str!("../../../crates/libvirt/tests/data/vm1.xml"),
        &libvirt::DomainDir::new(&dir),
    )
    .unwrap();

    // Calls the hook ignores need neither the configuration nor the XML.
    hook(
        Path::new("/nonexistent.json"),
        "",
        &["vm1", "stopped", "end", "-"],
    );

    // Destination of a migration: migrate, prepare, start, started.
    let out = hook(&config, &xml, &["vm1", "migrate", "begin", "-"]);
    assert!(
        out.stdout.is_empty(),
        "a migrate hook's stdout would replace the domain's XML"
    );
    assert!(dir.join("incoming").exists());
    hook(&config, &xml, &["vm1", "prepare", "begin", "-"]);
    assert!(dir.is_dir());
    hook(&config, &xml, &["vm1", "start", "begin", "-"]);
    assert!(
        !dir.join("console.pid").exists(),
        "no console before QEMU has its sockets"
    );
    hook(&config, &xml, &["vm1", "started", "begin", "-"]);
    let pid: i32 = std::fs::read_to_string(dir.join("console.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _group = Group(Some(pid));
    wait_until("the console's arguments", || args_file.exists());
    let args = std::fs::read_to_string(&args_file).unwrap();
    let d = dir.display();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "console".to_owned(),
            "--vnc-socket".into(),
            format!("{d}/vnc.sock"),
            "--qmp-socket".into(),
            format!("{d}/qmp.sock"),
            "--keymap".into(),
            "de".into(),
            "--serial-socket".into(),
            format!("{d}/serial.sock"),
            "--serial-attach".into(),
            format!("{d}/serial-attach.sock"),
            "--listen".into(),
            "127.0.0.1:5999".into(),
            "--name".into(),
            "vm1".into(),
            "--control".into(),
            format!("{d}/console.ctl"),
            "--peer-key-file".into(),
            "/etc/dmore/peer.key".into(),
            "--incoming".into(),
            "127.0.0.1:4700".into(),
            "--insecure-no-auth".into(),
        ]
    );
    assert!(running(pid), "the console runs on after the hook returned");

    // A second `started` (or libvirtd's `reconnect`) finds it running.
    let again = hook(&config, &xml, &["vm1", "reconnect", "begin", "-"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!("already running: pid {pid}")));
    let dry = hook(&config, &xml, &["--dry-run", "vm1", "release", "end", "-"]);
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout),
        format!("stop console pid {pid}\n")
    );
    assert!(running(pid), "a dry run stops nothing");

    // release: the console is stopped, its pid file and the incoming mark go.
    hook(&config, &xml, &["vm1", "release", "end", "-"]);
    wait_until("the console to stop", || !running(pid));
    assert!(!dir.join("console.pid").exists() && !dir.join("incoming").exists());
    let dry = hook(&config, &xml, &["--dry-run", "vm1", "release", "end", "-"]);
    assert_eq!(String::from_utf8_lossy(&dry.stdout), "no console running\n");
}

#[test]
fn install_hook_writes_a_drop_in() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dmore"))
        .args(["libvirt", "install-hook", "--hooks-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = tmp.path().join("qemu.d/dmore");
    let script = std::fs::read_to_string(&path).unwrap();
    assert!(
        script.contains(" libvirt hook --config /etc/dmore/libvirt.json \"$@\""),
        "{script}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
}

/// libvirt itself runs the installed hook: a patched domain started by a private libvirtd gets
/// its console (attached to QEMU, serving viewers), and destroying the domain stops it.
#[test]
fn libvirt_starts_and_stops_the_console_through_the_hook() {
    if !nix::unistd::geteuid().is_root() {
        return testbed::skip::skip("libvirt hook", "needs root (libvirtd in a mount namespace)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = root.join("dmore.json");
    let dir = root.join("dmore/e2e");
    std::fs::write(
        &config,
        r#"{"domains": {"dmore-e2e": {"listen": "127.0.0.1:0", "insecure_no_auth": true}}}"#,
    )
    .unwrap();
    // Installed before libvirtd starts: it looks for hooks only then.
    let install = Command::new(env!("CARGO_BIN_EXE_dmore"))
        .args(["libvirt", "install-hook", "--hooks-dir"])
        .arg(root.join("etc/hooks"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(install.status.success());
    let daemon = testbed::libvirtd::Libvirtd::start(root).unwrap();
    let domain = format!(
        "<domain type='qemu'>
  <name>dmore-e2e</name>
  <memory unit='KiB'>131072</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{}</kernel>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <video>
      <model type='vga'/>
    </video>
  </devices>
</domain>
",
        guest::kernel_path().display()
    );
    let xml = root.join("e2e.xml");
    let patched = libvirt::patch_domain(&domain, &libvirt::DomainDir::new(&dir)).unwrap();
    std::fs::write(&xml, patched).unwrap();
    let virsh = |args: &[&str]| {
        let out = daemon.virsh(args).unwrap();
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    virsh(&["create", xml.to_str().unwrap()]);

    // The hook returned before libvirt went on; the console it started attaches to QEMU.
    let pid: i32 = std::fs::read_to_string(dir.join("console.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _group = Group(Some(pid));
    let log = dir.join("console.log");
    let mut listen = None;
    wait_until("the console to listen", || {
        listen = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("dmore console: listening on ")
                    .map(str::to_owned)
            });
        listen.is_some() || !running(pid)
    });
    let listen = listen.unwrap_or_else(|| {
        panic!(
            "console exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let mut viewer = std::net::TcpStream::connect(listen.trim()).unwrap();
    let mut hello = [0u8; 12];
    std::io::Read::read_exact(&mut viewer, &mut hello).unwrap();
    assert_eq!(&hello, b"RFB 003.008\n");
    drop(viewer);
    let status = {
        let mut ctl = std::os::unix::net::UnixStream::connect(dir.join("console.ctl")).unwrap();
        ctl.write_all(b"status\n").unwrap();
        ctl.shutdown(std::net::Shutdown::Write).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut ctl, &mut s).unwrap();
        s
    };
    let status: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(status["vm_running"], true, "{status}");

    // Destroyed: libvirt's release runs the hook, and the console is gone.
    virsh(&["destroy", "dmore-e2e"]);
    wait_until("the console to stop", || !running(pid));
    assert!(
        !dir.join("console.pid").exists(),
        "release removed the pid file"
    );
    drop(daemon);
}
