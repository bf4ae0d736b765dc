//! The domain XML patch: a golden file from a hand-written `virsh dumpxml`, refusals, and
//! properties over generated domains (idempotent, the rest kept line for line, readable back).

use libvirt::{patch_domain, read_patched, DomainDir, PatchError, Patched};
use proptest::prelude::*;
use std::path::Path;

const VM1: &str = include_str!("data/vm1.xml");
const VM1_PATCHED: &str = include_str!("data/vm1.patched.xml");

fn default_dir(xml: &str) -> DomainDir {
    DomainDir::under(
        Path::new(libvirt::RUN_DIR),
        &libvirt::domain_name(xml).unwrap(),
    )
    .unwrap()
}

#[test]
fn golden_dumpxml() {
    let dir = default_dir(VM1);
    assert_eq!(dir.path(), Path::new("/run/dmore/vm1"));
    let patched = patch_domain(VM1, &dir).unwrap();
    assert_eq!(patched, VM1_PATCHED);
    assert_eq!(
        patch_domain(&patched, &dir).unwrap(),
        patched,
        "patching twice = once"
    );
    assert_eq!(
        read_patched(&patched).unwrap(),
        Some(Patched {
            name: "vm1".into(),
            dir,
            keymap: Some("de".into()),
            serial_socket: Some("/run/dmore/vm1/serial.sock".into()),
        })
    );
    assert_eq!(
        read_patched(VM1).unwrap(),
        None,
        "an unpatched domain is not dmore's"
    );
}

/// What `virsh dumpxml` prints once the patched domain runs: libvirt adds a `<listen
/// type='socket'>` child, fills in the serial port's target and mirrors it in `<console>`, and
/// keeps the passthrough. Nothing to change.
#[test]
fn libvirts_own_rendering_of_a_patched_domain_is_left_alone() {
    let xml = "<domain type='qemu' id='1' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>t</name>
  <devices>
    <graphics type='vnc' socket='/run/dmore/t/vnc.sock'>
      <listen type='socket' socket='/run/dmore/t/vnc.sock'/>
    </graphics>
    <serial type='unix'>
      <source mode='bind' path='/run/dmore/t/serial.sock'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <console type='unix'>
      <source mode='bind' path='/run/dmore/t/serial.sock'/>
      <target type='serial' port='0'/>
      <alias name='serial0'/>
    </console>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:/run/dmore/t/qmp.sock,server=on,wait=off'/>
    <qemu:arg value='-set'/>
    <qemu:arg value='vnc.default.key-delay-ms=0'/>
    <qemu:arg value='-set'/>
    <qemu:arg value='vnc.default.lock-key-sync=off'/>
  </qemu:commandline>
</domain>
";
    assert_eq!(patch_domain(xml, &default_dir(xml)).unwrap(), xml);
}

#[test]
fn other_prefix_existing_args_and_no_display() {
    let xml = "<domain type='kvm' xmlns:q=\"http://libvirt.org/schemas/domain/qemu/1.0\">\n\
               \t<name>a&amp;b</name>\n\
               \t<devices>\n\
               \t\t<graphics type='spice' autoport='yes'/>\n\
               \t</devices>\n\
               \t<q:commandline>\n\
               \t\t<q:arg value='-no-hpet'/>\n\
               \t</q:commandline>\n\
               </domain>";
    let patched = patch_domain(xml, &DomainDir::new("/run/x")).unwrap();
    assert_eq!(
        patched,
        "<domain type='kvm' xmlns:q=\"http://libvirt.org/schemas/domain/qemu/1.0\">\n\
         \t<name>a&amp;b</name>\n\
         \t<devices>\n\
         \t\t<graphics type='spice' autoport='yes'/>\n\
         \t\t<graphics type='vnc' socket='/run/x/vnc.sock'/>\n\
         \t\t<serial type='unix'><source mode='bind' path='/run/x/serial.sock'/><target port='0'/></serial>\n\
         \t</devices>\n\
         \t<q:commandline>\n\
         \t\t<q:arg value='-no-hpet'/>\n\
         \t\t<q:arg value='-qmp'/>\n\
         \t\t<q:arg value='unix:/run/x/qmp.sock,server=on,wait=off'/>\n\
         \t\t<q:arg value='-set'/>\n\
         \t\t<q:arg value='vnc.default.key-delay-ms=0'/>\n\
         \t\t<q:arg value='-set'/>\n\
         \t\t<q:arg value='vnc.default.lock-key-sync=off'/>\n\
         \t</q:commandline>\n\
         </domain>"
    );
    let read = read_patched(&patched).unwrap().unwrap();
    assert_eq!((read.name.as_str(), read.keymap), ("a&b", None));
    assert_eq!(read.serial_socket, Some("/run/x/serial.sock".into()));
    // A name with a slash cannot be a directory; an explicit one can.
    assert!(matches!(
        DomainDir::under(Path::new("/run/dmore"), "a/b"),
        Err(PatchError::BadName(_))
    ));
}

#[test]
fn one_line_document_and_vnc_with_children() {
    let xml = "<domain><name>n</name><devices><graphics type='vnc' port='-1' passwd='it&apos;s'><listen type='network' network='default'/><image compression='off'/></graphics><serial type='pty'/></devices></domain>";
    let patched = patch_domain(xml, &DomainDir::new("/d")).unwrap();
    assert_eq!(
        patched,
        "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>n</name><devices><graphics type='vnc' socket='/d/vnc.sock' passwd='it&apos;s'><image compression='off'/></graphics><serial type='unix'><source mode='bind' path='/d/serial.sock'/><target port='0'/></serial></devices><qemu:commandline><qemu:arg value='-qmp'/><qemu:arg value='unix:/d/qmp.sock,server=on,wait=off'/><qemu:arg value='-set'/><qemu:arg value='vnc.default.key-delay-ms=0'/><qemu:arg value='-set'/><qemu:arg value='vnc.default.lock-key-sync=off'/></qemu:commandline></domain>"
    );
    assert_eq!(
        patch_domain(&patched, &DomainDir::new("/d")).unwrap(),
        patched
    ); // A serial port someone chose (not libvirt's default pty) stays, and is not dmore's.
    let file = xml.replace(
        "<serial type='pty'/>",
        "<serial type='file'><source path='/l'/></serial>",
    );
    let patched = patch_domain(&file, &DomainDir::new("/d")).unwrap();
    assert!(patched.contains("<serial type='file'><source path='/l'/></serial></devices>"));
    assert!(!patched.contains("serial.sock"));
    assert_eq!(read_patched(&patched).unwrap().unwrap().serial_socket, None);
}

#[test]
fn refusals_name_the_cause() {
    let dir = DomainDir::new("/run/dmore/t");
    let refused = |xml: &str| patch_domain(xml, &dir).unwrap_err();
    assert!(matches!(
        refused("<domain><name>t</name></domain>"),
        PatchError::Devices(0)
    ));
    assert!(matches!(
        refused("<domain><name>t</name><devices><graphics type='vnc'/><graphics type='vnc'/></devices></domain>"),
        PatchError::SeveralVnc(2)
    ));
    assert!(matches!(
        refused("<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>t</name><devices/><qemu:commandline><qemu:arg value='-object'/><qemu:arg value='dbus-vmstate,id=dv,addr=unix:path=/b'/></qemu:commandline></domain>"),
        PatchError::DbusVmstate(_)
    ));
    assert!(matches!(
        refused("<domain xmlns:qemu='urn:other'><name>t</name><devices/></domain>"),
        PatchError::QemuPrefixTaken(_)
    ));
    assert!(matches!(
        refused("<network><name>t</name></network>"),
        PatchError::NotADomain(_)
    ));
    assert!(matches!(
        refused("<domain><name>t</name><devices></domain>"),
        PatchError::Doc(_)
    ));
    assert!(matches!(refused(""), PatchError::Doc(_)));
    // Found by fuzzing: a byte-order mark does not shift the edits.
    let bom = "\u{feff}<domain id='3'><name>t</name><devices/></domain>";
    let patched = patch_domain(bom, &dir).unwrap();
    assert!(
        patched.starts_with("\u{feff}<domain id='3' xmlns:qemu="),
        "{patched}"
    );
    assert_eq!(patch_domain(&patched, &dir).unwrap(), patched);
    let two = format!("\u{feff}{bom}");
    assert_eq!(
        patch_domain(&two, &dir).unwrap(),
        format!("\u{feff}{patched}")
    );
    // Found by fuzzing: a prefix that is no XML name is not used.
    let odd = "<domain xmlns:!q='http://libvirt.org/schemas/domain/qemu/1.0'><name>t</name><devices/></domain>";
    let patched = patch_domain(odd, &dir).unwrap();
    assert!(patched.contains("<qemu:commandline>"), "{patched}");
    assert_eq!(patch_domain(&patched, &dir).unwrap(), patched);
    // Found by fuzzing: a document cut short is refused, not patched as if its elements were
    // empty.
    assert!(matches!(
        refused("<domain><name>t</name><devices>"),
        PatchError::Doc(libvirt::DocError::Unclosed(e)) if e == "devices"
    ));
    let long = DomainDir::new(format!("/run/{}", "d".repeat(100)));
    assert!(matches!(
        patch_domain("<domain><name>t</name><devices/></domain>", &long),
        Err(PatchError::PathTooLong(_))
    ));
    // The message says what to do.
    assert!(PatchError::Devices(0).to_string().contains("<devices>"));
}

/// A generated domain: optional namespace declaration, a VNC display in one of several
/// shapes (or none), other devices, an existing passthrough, two indentation styles.
fn domain() -> impl Strategy<Value = String> {
    let vnc = prop_oneof![
        Just(String::new()),
        Just("<graphics type='vnc' port='5901' autoport='no' listen='0.0.0.0'/>".to_owned()),
        Just("<graphics type='vnc' port='-1' autoport='yes' keymap='fr'>\n<listen type='address' address='::'/>\n</graphics>".to_owned()),
        Just("<graphics type='vnc' socket='/elsewhere/v.sock' sharePolicy='force-shared'/>".to_owned()),
    ];
    let args = proptest::collection::vec(
        prop_oneof![
            Just("-no-hpet"),
            Just("-qmp"),
            Just("-set"),
            Just("vnc.default.key-delay-ms=0")
        ],
        0..4,
    );
    (
        any::<bool>(),
        vnc,
        any::<bool>(),
        proptest::option::of(args),
        prop_oneof![Just("  "), Just("\t")],
    )
        .prop_map(|(ns, vnc, spice, args, ind)| {
            let mut lines = vec![format!(
                "<domain type='kvm'{}>",
                if ns {
                    " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
                } else {
                    ""
                }
            )];
            lines.push(format!("{ind}<name>g</name>"));
            lines.push(format!("{ind}<!-- kept as written -->"));
            lines.push(format!("{ind}<devices>"));
            lines.push(format!(
                "{ind}{ind}<emulator>/usr/bin/qemu-system-x86_64</emulator>"
            ));
            if spice {
                lines.push(format!(
                    "{ind}{ind}<graphics type=\"spice\" autoport=\"yes\"/>"
                ));
            }
            for l in vnc.lines().filter(|l| !l.is_empty()) {
                let depth = if l.starts_with("<listen") { 3 } else { 2 };
                lines.push(format!("{}{l}", ind.repeat(depth)));
            }
            lines.push(format!("{ind}</devices>"));
            if let (true, Some(args)) = (ns, args) {
                lines.push(format!("{ind}<qemu:commandline>"));
                for a in args {
                    lines.push(format!("{ind}{ind}<qemu:arg value='{a}'/>"));
                }
                lines.push(format!("{ind}</qemu:commandline>"));
            }
            lines.push("</domain>".to_owned());
            lines.join("\n") + "\n"
        })
}

/// Whether `small`'s lines appear in `big`, in order.
fn lines_kept(small: &str, big: &str) -> bool {
    let mut big = big.lines();
    small.lines().all(|l| big.any(|b| b == l))
}

proptest! {
    #[test]
    fn patch_is_idempotent_keeps_the_rest_and_reads_back(xml in domain()) {
        let dir = DomainDir::new("/run/dmore/g");
        let once = patch_domain(&xml, &dir).unwrap();
        prop_assert_eq!(&patch_domain(&once, &dir).unwrap(), &once);
        let read = read_patched(&once).unwrap().unwrap();
        prop_assert_eq!(read.dir, dir);
        // Every line but the root's start tag and the VNC display's stays as it was.
        let rest: String = xml
            .lines()
            .skip(1)
            .filter(|l| !l.contains("type='vnc'") && !l.contains("<listen") && !l.contains("</graphics>"))
            .map(|l| format!("{l}\n"))
            .collect();
        prop_assert!(lines_kept(&rest, &once), "lost lines:\n{}\nin\n{}", rest, once);
        prop_assert_eq!(once.matches("type='vnc'").count(), 1);
        // dmore's arguments are added once, whatever stray ones were there.
        let delay = |s: &str| s.matches("vnc.default.key-delay-ms=0").count();
        prop_assert!((1..=delay(&xml) + 1).contains(&delay(&once)));
    }
}

/// `<devices/>` and `<qemu:commandline/>` are opened, not appended to from outside.
#[test]
fn empty_elements_are_opened() {
    let xml = "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n\
               \t<name>e</name>\n\
               \t<devices/>\n\
               \t<qemu:commandline/>\n\
               </domain>\n";
    let dir = DomainDir::new("/e");
    let patched = patch_domain(xml, &dir).unwrap();
    assert_eq!(
        patched,
        "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n\
         \t<name>e</name>\n\
         \t<devices>\n\
         \t\t<graphics type='vnc' socket='/e/vnc.sock'/>\n\
         \t\t<serial type='unix'><source mode='bind' path='/e/serial.sock'/><target port='0'/></serial>\n\
         \t</devices>\n\
         \t<qemu:commandline>\n\
         \t\t<qemu:arg value='-qmp'/>\n\
         \t\t<qemu:arg value='unix:/e/qmp.sock,server=on,wait=off'/>\n\
         \t\t<qemu:arg value='-set'/>\n\
         \t\t<qemu:arg value='vnc.default.key-delay-ms=0'/>\n\
         \t\t<qemu:arg value='-set'/>\n\
         \t\t<qemu:arg value='vnc.default.lock-key-sync=off'/>\n\
         \t</qemu:commandline>\n\
         </domain>\n"
    );
    assert_eq!(patch_domain(&patched, &dir).unwrap(), patched);
    let one_line = "<domain><name>e</name><devices /></domain>";
    let patched = patch_domain(one_line, &dir).unwrap();
    assert!(
        patched.contains(
            "<devices><graphics type='vnc' socket='/e/vnc.sock'/><serial type='unix'>\
             <source mode='bind' path='/e/serial.sock'/><target port='0'/></serial></devices>"
        ),
        "{patched}"
    );
    assert_eq!(patch_domain(&patched, &dir).unwrap(), patched);
}
