//! Debian's libvirtd runs here, as root, with private directories (`testbed::libvirtd`), and
//! accepts a domain patched for dmore (its serial port a unix chardev): the recipe the libvirt end-to-end tests build on.

use testbed::libvirtd::Libvirtd;

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
    let daemon = Libvirtd::start(t).unwrap();
    let virsh = |args: &[&str]| daemon.virsh(args).expect("running virsh (.ci/setup)");
    let version = String::from_utf8_lossy(&virsh(&["version"]).stdout).into_owned();
    println!(
        "libvirtd answered after {:?}:\n{version}",
        daemon.started_in
    );
    assert!(version.contains("Running hypervisor: QEMU"), "{version}");
    let socket = daemon.socket();
    assert!(socket.starts_with(t), "the daemon's socket is private");

    // libvirt accepts the patched domain and gives QEMU dmore's options, -set after libvirt's
    // own -vnc so that they reach it.
    let dir = libvirt::DomainDir::new(t.join("dmore-t"));
    let patched = libvirt::patch_domain(DOMAIN, &dir).unwrap();
    let xml = t.join("dmore-t.xml");
    std::fs::write(&xml, &patched).unwrap();
    let argv = virsh(&["domxml-to-native", "qemu-argv", xml.to_str().unwrap()]);
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
    // The serial port: a chardev QEMU listens on in the domain's directory, the console's
    // --serial-socket.
    at(&format!(
        "path={},server=on,wait=off",
        dir.serial_socket().display()
    ));

    // Defined and printed back by libvirt, the domain is still patched: patching it changes
    // nothing.
    let define = virsh(&["define", xml.to_str().unwrap()]);
    assert!(
        define.status.success(),
        "{}",
        String::from_utf8_lossy(&define.stderr)
    );
    let dumped = virsh(&["dumpxml", "dmore-t"]);
    let dumped = String::from_utf8_lossy(&dumped.stdout).into_owned();
    println!("libvirt's dumpxml of the patched domain:\n{dumped}");
    assert_eq!(libvirt::patch_domain(&dumped, &dir).unwrap(), dumped);
    assert_eq!(
        libvirt::read_patched(&dumped)
            .unwrap()
            .and_then(|p| p.serial_socket),
        Some(dir.serial_socket())
    );
    assert_eq!(
        libvirt::read_patched(&dumped).unwrap().map(|p| p.dir),
        Some(dir)
    );

    drop(daemon);
    assert!(
        !socket.exists(),
        "libvirtd removes its socket when it stops"
    );
}
