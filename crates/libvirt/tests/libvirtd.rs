//! Debian's libvirtd runs here, as root, with private directories, and accepts a domain
//! patched for dmore: the recipe the libvirt end-to-end tests build on.
//!
//! Bookworm's libvirt 9.0 has no per-driver daemons and reads its QEMU driver's configuration
//! and state from fixed paths (`/etc/libvirt`, `/run/libvirt`, `/var/{lib,log,cache}/libvirt`),
//! so the daemon runs in a mount namespace of its own (`unshare --mount`) with a temporary
//! directory bound over each; only the socket directory (`unix_sock_dir`) needs no bind.
//! `.ci/setup` installs the packages, the `libvirt-qemu` user the daemon looks up, and the
//! empty mount points.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// libvirtd (foreground, our child) and virtlogd (daemonized, by its pid file), stopped on drop.
struct Daemons {
    libvirtd: Child,
    virtlogd_pid: PathBuf,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let _ = self.libvirtd.kill();
        let _ = self.libvirtd.wait();
        if let Some(pid) = std::fs::read_to_string(&self.virtlogd_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn virsh(socket: &Path, args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(format!("qemu:///system?socket={}", socket.display()))
        .args(args)
        .output()
        .expect("running virsh (.ci/setup installs libvirt-clients)")
}

const DOMAIN: &str = "<domain type='qemu'>
  <name>dmore-t</name>
  <memory unit='KiB'>131072</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <graphics type='vnc' port='-1' autoport='yes' keymap='de'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video>
      <model type='vga'/>
    </video>
  </devices>
</domain>
";

#[test]
fn libvirtd_with_private_dirs_accepts_a_patched_domain() {
    if !nix::unistd::geteuid().is_root() {
        return testbed::skip::skip(
            "libvirtd",
            "needs root (a mount namespace, libvirtd as root)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for d in ["etc", "run", "lib", "log/qemu", "cache", "sock"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let sock_dir = t.join("sock");
    std::fs::write(
        t.join("etc/libvirtd.conf"),
        format!(
            "unix_sock_dir = \"{}\"\nunix_sock_rw_perms = \"0700\"\n\
             auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
            sock_dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        t.join("etc/qemu.conf"),
        "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\ncgroup_controllers = [ ]\n",
    )
    .unwrap();
    let binds: String = [
        ("etc", "/etc/libvirt"),
        ("run", "/run/libvirt"),
        ("lib", "/var/lib/libvirt"),
        ("log", "/var/log/libvirt"),
        ("cache", "/var/cache/libvirt"),
    ]
    .iter()
    .map(|(from, to)| format!("mount --bind {}/{from} {to} && ", t.display()))
    .collect();
    let log = std::fs::File::create(t.join("libvirtd.log")).unwrap();
    let libvirtd = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "{binds}virtlogd -d -p /run/libvirt/virtlogd.pid && \
             exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting unshare");
    let mut daemons = Daemons {
        libvirtd,
        virtlogd_pid: t.join("run/virtlogd.pid"),
    };

    // Ready when virsh gets an answer on the private socket.
    let socket = sock_dir.join("libvirt-sock");
    let started = Instant::now();
    let version = loop {
        if let Some(status) = daemons.libvirtd.try_wait().unwrap() {
            panic!(
                "libvirtd exited ({status}):\n{}",
                std::fs::read_to_string(t.join("libvirtd.log")).unwrap_or_default()
            );
        }
        let out = virsh(&socket, &["version"]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "libvirtd never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "libvirtd answered after {:?}:\n{version}",
        started.elapsed()
    );
    assert!(version.contains("Running hypervisor: QEMU"), "{version}");
    assert!(socket.starts_with(t), "the daemon's socket is private");

    // libvirt accepts the patched domain and gives QEMU dmore's options, -set after libvirt's
    // own -vnc so that they reach it.
    let dir = libvirt::DomainDir::new(t.join("dmore-t"));
    let patched = libvirt::patch_domain(DOMAIN, &dir).unwrap();
    let xml = t.join("dmore-t.xml");
    std::fs::write(&xml, &patched).unwrap();
    let argv = virsh(
        &socket,
        &["domxml-to-native", "qemu-argv", xml.to_str().unwrap()],
    );
    let argv = String::from_utf8_lossy(&argv.stdout);
    let at = |needle: &str| {
        argv.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in QEMU's command line:\n{argv}"))
    };
    let vnc = at(&format!("-vnc vnc=unix:{},", dir.vnc_socket().display()));
    at(&format!(
        "-qmp unix:{},server=on,wait=off",
        dir.qmp_socket().display()
    ));
    assert!(vnc < at("-set vnc.default.key-delay-ms=0"));
    assert!(vnc < at("-set vnc.default.lock-key-sync=off"));
    at("-k de");

    // Defined and printed back by libvirt, the domain is still patched: patching it changes
    // nothing.
    let define = virsh(&socket, &["define", xml.to_str().unwrap()]);
    assert!(
        define.status.success(),
        "{}",
        String::from_utf8_lossy(&define.stderr)
    );
    let dumped = virsh(&socket, &["dumpxml", "dmore-t"]);
    let dumped = String::from_utf8_lossy(&dumped.stdout).into_owned();
    println!("libvirt's dumpxml of the patched domain:\n{dumped}");
    assert_eq!(libvirt::patch_domain(&dumped, &dir).unwrap(), dumped);
    assert_eq!(
        libvirt::read_patched(&dumped).unwrap().map(|p| p.dir),
        Some(dir)
    );

    drop(daemons);
    assert!(!socket.exists() || virsh(&socket, &["version"]).status.code() != Some(0));
}
