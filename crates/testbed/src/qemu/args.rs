//! QEMU's command line for a [`QemuConfig`](super::QemuConfig): pure, so it is unit-tested
//! without starting anything.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use super::{Accel, Paths, QemuConfig};

/// qboot: boots the guest in ~0.17 s under KVM where SeaBIOS takes ~5 s (DESIGN.md).
/// qboot, the firmware the tiny guest boots with under KVM (SeaBIOS takes ~5 s there).
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// What QEMU boots.
pub(crate) enum Boot<'a> {
    /// The tiny test guest's multiboot kernel, with the config's guest options.
    Tiny(&'a Path),
    /// The Linux guest: its kernel, initramfs, command line, firmware and devices
    /// ([`linux_guest::launch::LinuxOptions::qemu_args`]).
    Linux(Vec<OsString>),
}

/// The arguments after the QEMU binary.
pub(crate) fn qemu_args(
    cfg: &QemuConfig,
    accel: Accel,
    paths: &Paths,
    boot: &Boot<'_>,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    push("-machine");
    push("pc");
    push("-nodefaults");
    push("-no-reboot");
    push("-display");
    push("none");
    push("-vga");
    push("std");
    push("-m");
    push(&cfg.memory_mib.to_string());
    match accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            if matches!(boot, Boot::Tiny(_)) && Path::new(QBOOT).exists() {
                push("-bios");
                push(QBOOT);
            }
        }
        Accel::Tcg => {
            push("-accel");
            push("tcg");
        }
    }
    match boot {
        Boot::Tiny(kernel) => {
            a.push("-kernel".into());
            a.push(kernel.into());
            a.push("-append".into());
            a.push(cfg.guest.cmdline().into());
        }
        Boot::Linux(args) => a.extend(args.iter().cloned()),
    }
    // The harness connects to the report port's socket first; `wait=on` holds the guest until
    // then, so no line is lost. The serial console, for dmore's serial lane, holds nobody.
    a.push("-chardev".into());
    a.push(chardev_socket("ser", &paths.serial, true));
    if let Some(path) = &paths.serial_console {
        a.push("-chardev".into());
        a.push(chardev_socket("ser1", path, false));
    }
    // QEMU numbers the ports in order. The Linux guest serving its console on ttyS0 reports
    // on ttyS1, so its COM1 is there even without a console chardev (`null`).
    let console = paths.serial_console.as_ref().map(|_| "chardev:ser1");
    let ports = if cfg.linux.is_some_and(|l| l.console_on_com1()) {
        [Some(console.unwrap_or("null")), Some("chardev:ser")]
    } else {
        [Some("chardev:ser"), console]
    };
    for port in ports.into_iter().flatten() {
        a.push("-serial".into());
        a.push(port.into());
    }
    a.push("-qmp".into());
    a.push(unix_server(&paths.qmp));
    if let Some(qmp2) = &paths.qmp2 {
        a.push("-qmp".into());
        a.push(unix_server(qmp2));
    }
    a.push("-vnc".into());
    a.push(vnc_unix(&paths.vnc, cfg.key_delay_ms));
    if let Some(addr) = cfg.vnc_tcp {
        a.push("-vnc".into());
        a.push(vnc_tcp(addr, cfg.key_delay_ms).into());
    }
    if let Some(layout) = &cfg.keymap {
        a.push("-k".into());
        a.push(layout.into());
    }
    if cfg.incoming {
        a.push("-incoming".into());
        a.push("defer".into());
    }
    a.extend(cfg.extra_args.iter().cloned());
    a
}

fn chardev_socket(id: &str, path: &Path, wait: bool) -> OsString {
    let mut s = OsString::from(format!("socket,id={id},path="));
    s.push(path);
    s.push(if wait {
        ",server=on,wait=on"
    } else {
        ",server=on,wait=off"
    });
    s
}

fn unix_server(path: &Path) -> OsString {
    let mut s = OsString::from("unix:");
    s.push(path);
    s.push(",server=on,wait=off");
    s
}

fn vnc_unix(path: &Path, key_delay_ms: Option<u32>) -> OsString {
    let mut s = OsString::from("unix:");
    s.push(path);
    if let Some(ms) = key_delay_ms {
        s.push(format!(",key-delay-ms={ms}"));
    }
    s
}

/// QEMU 7.2 takes a TCP display as `host:display` (port 5900 + display), and a second `-vnc`
/// needs its own `id=`.
fn vnc_tcp(addr: SocketAddr, key_delay_ms: Option<u32>) -> String {
    let display = addr.port().saturating_sub(5900);
    let host = match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    let mut s = format!("{host}:{display},id=tcp");
    if let Some(ms) = key_delay_ms {
        s.push_str(&format!(",key-delay-ms={ms}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_guest::launch::{LinuxOptions, SerialConsole};
    use std::path::PathBuf;

    fn paths(dir: &str, qmp2: bool) -> Paths {
        Paths::new(Path::new(dir), qmp2, false)
    }

    fn joined(a: &[OsString]) -> String {
        a.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn kvm_uses_qboot_and_every_socket_lives_in_the_runtime_dir() {
        let mut cfg = QemuConfig::new("/run/x");
        cfg.extra_qmp = true;
        cfg.key_delay_ms = Some(0);
        cfg.vnc_tcp = Some("127.0.0.1:5901".parse().expect("address"));
        cfg.incoming = true;
        cfg.keymap = Some("de".into());
        let a = joined(&qemu_args(
            &cfg,
            Accel::Kvm,
            &paths("/run/x", true),
            &Boot::Tiny(&PathBuf::from("/k")),
        ));
        assert!(a.contains("-accel kvm"), "{a}");
        if Path::new(QBOOT).exists() {
            assert!(a.contains(&format!("-bios {QBOOT}")), "{a}");
        }
        assert!(a.contains("-m 128 "), "{a}");
        assert!(
            a.contains("-kernel /k -append dirty=0 rate=0 animate=0"),
            "{a}"
        );
        assert!(
            a.contains("-chardev socket,id=ser,path=/run/x/serial.sock,server=on,wait=on -serial chardev:ser"),
            "{a}"
        );
        assert!(
            a.contains("-qmp unix:/run/x/qmp.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(
            a.contains("-qmp unix:/run/x/qmp2.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(
            a.contains("-vnc unix:/run/x/vnc.sock,key-delay-ms=0"),
            "{a}"
        );
        assert!(a.contains("-vnc 127.0.0.1:1,id=tcp,key-delay-ms=0"), "{a}");
        assert!(a.ends_with("-k de -incoming defer"), "{a}");
    }

    #[test]
    fn tcg_has_no_bios_and_defaults_add_nothing() {
        let cfg = QemuConfig::new("/r");
        let a = joined(&qemu_args(
            &cfg,
            Accel::Tcg,
            &paths("/r", false),
            &Boot::Tiny(&PathBuf::from("/k")),
        ));
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(!a.contains("-bios"), "{a}");
        assert!(
            !a.contains("qmp2")
                && !a.contains("id=tcp")
                && !a.contains("incoming")
                && !a.contains(" -k "),
            "{a}"
        );
        assert!(!a.contains("key-delay-ms"), "{a}");
    }

    #[test]
    fn the_linux_guest_brings_its_own_boot_arguments_and_no_qboot() {
        let cfg = QemuConfig::new("/r");
        let boot = Boot::Linux(vec!["-kernel".into(), "/vmlinuz".into()]);
        let a = joined(&qemu_args(&cfg, Accel::Kvm, &paths("/r", false), &boot));
        assert!(a.contains("-accel kvm -kernel /vmlinuz -chardev"), "{a}");
        assert!(!a.contains("-bios") && !a.contains("-append"), "{a}");
    }

    #[test]
    fn the_linux_guests_serial_console_is_com1_and_its_reports_com2() {
        let boot = Boot::Linux(Vec::new());
        let serial = |serial, console| {
            let mut cfg = QemuConfig::new("/r");
            cfg.linux = Some(LinuxOptions {
                serial,
                ..LinuxOptions::default()
            });
            let a = joined(&qemu_args(
                &cfg,
                Accel::Tcg,
                &Paths::new(Path::new("/r"), false, console),
                &boot,
            ));
            let ports: Vec<String> = a
                .split(" -serial ")
                .skip(1)
                .map(|p| p.split(' ').next().unwrap_or_default().to_owned())
                .collect();
            ports.join(" ")
        };
        assert_eq!(
            serial(SerialConsole::Lines(20), true),
            "chardev:ser1 chardev:ser"
        );
        assert_eq!(serial(SerialConsole::Shell, false), "null chardev:ser");
        assert_eq!(
            serial(SerialConsole::None, true),
            "chardev:ser chardev:ser1"
        );
        assert_eq!(serial(SerialConsole::None, false), "chardev:ser");
    }

    #[test]
    fn ipv6_vnc_display() {
        assert_eq!(
            vnc_tcp("[::1]:5905".parse().expect("address"), None),
            "[::1]:5,id=tcp"
        );
    }
}
