//! A libvirt domain XML patched for dmore, and read back by the hook.
//!
//! What the patch changes, and nothing else:
//! - the domain's VNC display listens on a unix socket, `DIR/vnc.sock`
//!   (`<graphics type='vnc' socket='…'/>`), instead of TCP; its other attributes (`keymap`,
//!   `passwd`, …) and children other than `<listen>` stay;
//! - QEMU gets a QMP monitor of dmore's own, `DIR/qmp.sock`, and its VNC server
//!   `key-delay-ms=0` and `lock-key-sync=off`, through `<qemu:commandline>` (the `qemu` XML
//!   namespace is declared on `<domain>` if it is not yet). libvirt 9.0 has no attribute for
//!   either VNC option; QEMU's `-set vnc.default.OPTION=VALUE` reaches the options of the first
//!   `-vnc`, which is libvirt's own (it writes one `-vnc` per VNC display, before the
//!   command-line passthrough, and this patch allows one VNC display);
//! - the domain's first serial port is a unix chardev QEMU listens on, `DIR/serial.sock`
//!   (`<serial type='unix'><source mode='bind' path='…'/><target port='0'/></serial>`), in
//!   place of a `pty` one (libvirt's default) or added if there is none: the console's serial
//!   lane attaches there (`--serial-socket`). A first serial port of another kind (a file, a
//!   socket, TCP) was chosen by someone and stays: that domain's console has no serial lane. libvirt keeps `<console>` a copy of the first serial
//!   port, so `virsh console` is no longer where the serial console is: `dmore serial attach`
//!   on the console's `DIR/serial-attach.sock` is.
//!
//! Patching a patched domain changes nothing. What the patch cannot handle it refuses, with
//! the reason: no `<devices>`, several VNC displays, a `dbus-vmstate` object already there
//! (QEMU allows one per VM, and dmore's later state transfer needs it), a `qemu` prefix
//! bound to another namespace.

use crate::doc::{escape_attr, splice, Doc, DocError};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The namespace of libvirt's QEMU command-line passthrough.
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// File name of QEMU's VNC socket in a domain's directory.
pub const VNC_SOCKET: &str = "vnc.sock";
/// File name of QEMU's serial chardev socket in a domain's directory.
pub const SERIAL_SOCKET: &str = "serial.sock";
/// File name of dmore's QMP socket in a domain's directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// Where domain directories go unless told otherwise: `/run/dmore/DOMAIN`.
pub const RUN_DIR: &str = "/run/dmore";
/// A unix socket path's limit (`sun_path` is 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// What a domain's XML cannot be patched for.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The text is not a readable XML document.
    #[error(transparent)]
    Doc(#[from] DocError),
    /// The root element is not `<domain>`.
    #[error("the root element is <{0}>, not <domain>: give the output of `virsh dumpxml DOMAIN`")]
    NotADomain(String),
    /// No `<name>`, or one unusable in a path.
    #[error("the domain's <name> {0:?} cannot name a directory: give --domain-dir")]
    BadName(String),
    /// No `<devices>` element, or more than one.
    #[error(
        "the domain has {0} <devices> elements; dmore needs exactly one to put its VNC display in"
    )]
    Devices(usize),
    /// More than one VNC display.
    #[error("the domain has {0} VNC displays; dmore serves one: remove the others first")]
    SeveralVnc(usize),
    /// More than one `<qemu:commandline>`.
    #[error("the domain has {0} <qemu:commandline> elements; merge them into one first")]
    SeveralCommandlines(usize),
    /// The `qemu` prefix means something else here.
    #[error("the prefix 'qemu' is bound to {0:?} on <domain>, not to {QEMU_NS}")]
    QemuPrefixTaken(String),
    /// The domain already has a `dbus-vmstate` object.
    #[error(
        "the domain already has a dbus-vmstate object ({0:?}); QEMU allows one per VM and \
         dmore will need it to carry the console's state: not supported yet"
    )]
    DbusVmstate(String),
    /// A socket path would not fit a unix socket address.
    #[error("the socket path {0} is longer than a unix socket allows (107 bytes): choose a shorter --domain-dir")]
    PathTooLong(PathBuf),
    /// A path is not valid UTF-8 (it goes into XML).
    #[error("the path {0:?} is not UTF-8")]
    NotUtf8(PathBuf),
}

/// The unix sockets of a domain patched for dmore, all in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDir {
    dir: PathBuf,
}

impl DomainDir {
    /// `dir` itself as the domain's directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DomainDir { dir: dir.into() }
    }

    /// `RUN_DIR/NAME` for domain `name`; refused if the name cannot be a directory name.
    pub fn under(run_dir: &Path, name: &str) -> Result<Self, PatchError> {
        let usable =
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0', '\n']);
        if !usable {
            return Err(PatchError::BadName(name.to_owned()));
        }
        Ok(DomainDir::new(run_dir.join(name)))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// QEMU's VNC socket.
    pub fn vnc_socket(&self) -> PathBuf {
        self.dir.join(VNC_SOCKET)
    }

    /// QEMU's serial chardev socket (the domain's first serial port).
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join(SERIAL_SOCKET)
    }

    /// dmore's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join(QMP_SOCKET)
    }

    fn socket_str(path: PathBuf) -> Result<String, PatchError> {
        let s = path
            .to_str()
            .ok_or_else(|| PatchError::NotUtf8(path.clone()))?;
        if s.len() > SUN_PATH_MAX {
            return Err(PatchError::PathTooLong(path));
        }
        Ok(s.to_owned())
    }

    /// The `-qmp` value for dmore's monitor.
    fn qmp_arg(&self) -> Result<String, PatchError> {
        Ok(format!(
            "unix:{},server=on,wait=off",
            Self::socket_str(self.qmp_socket())?
        ))
    }

    /// The QEMU arguments dmore adds, as (flag, value) pairs.
    fn args(&self) -> Result<[(&'static str, String); 3], PatchError> {
        Ok([
            ("-qmp", self.qmp_arg()?),
            ("-set", "vnc.default.key-delay-ms=0".to_owned()),
            ("-set", "vnc.default.lock-key-sync=off".to_owned()),
        ])
    }
}

/// The domain's `<name>`.
pub fn domain_name(xml: &str) -> Result<String, PatchError> {
    let doc = Doc::parse(xml)?;
    name_of(&doc)
}

fn name_of(doc: &Doc) -> Result<String, PatchError> {
    if doc.root().name != "domain" {
        return Err(PatchError::NotADomain(doc.root().name.clone()));
    }
    doc.children(0, "name")
        .next()
        .map(|i| doc.text_of(i))
        .ok_or_else(|| PatchError::BadName(String::new()))
}

/// Attributes of a VNC `<graphics>` that point it at a TCP listener (or at a socket).
const LISTENER_ATTRS: [&str; 6] = [
    "port",
    "autoport",
    "listen",
    "socket",
    "websocket",
    "websocketGenerated",
];

/// Returns `xml` patched for dmore with its sockets in `dir` (see the module doc).
pub fn patch_domain(xml: &str, dir: &DomainDir) -> Result<String, PatchError> {
    let doc = Doc::parse(xml)?;
    name_of(&doc)?;
    let vnc_socket = DomainDir::socket_str(dir.vnc_socket())?;
    let serial_socket = DomainDir::socket_str(dir.serial_socket())?;
    let args = dir.args()?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();

    // The namespace: dmore's elements use whatever prefix the document binds to it.
    let root = doc.root();
    let prefix = match root.attrs.iter().find_map(|(k, v)| {
        k.strip_prefix("xmlns:")
            .filter(|p| v == QEMU_NS && is_prefix(p))
    }) {
        Some(p) => p.to_owned(),
        None => {
            if let Some(other) = root.attr("xmlns:qemu") {
                return Err(PatchError::QemuPrefixTaken(other.to_owned()));
            }
            let close = if doc.text[root.start.clone()].ends_with("/>") {
                2
            } else {
                1
            };
            edits.push((
                root.start.end - close..root.start.end - close,
                format!(" xmlns:qemu='{QEMU_NS}'"),
            ));
            "qemu".to_owned()
        }
    };

    // The VNC display.
    let devices: Vec<usize> = doc.children(0, "devices").collect();
    let &[devices] = devices.as_slice() else {
        return Err(PatchError::Devices(devices.len()));
    };
    let vncs: Vec<usize> = doc
        .children(devices, "graphics")
        .filter(|&i| doc.elements[i].attr("type") == Some("vnc"))
        .collect();
    let mut appended = Vec::new();
    match vncs.as_slice() {
        [] => appended.push(format!(
            "<graphics type='vnc' socket='{}'/>",
            escape_attr(&vnc_socket)
        )),
        [g] => {
            if let Some(edit) = vnc_edit(&doc, *g, &vnc_socket) {
                edits.push(edit);
            }
        }
        more => return Err(PatchError::SeveralVnc(more.len())),
    }

    // The serial port.
    let serial = format!(
        "<serial type='unix'><source mode='bind' path='{}'/><target port='0'/></serial>",
        escape_attr(&serial_socket)
    );
    match doc.children(devices, "serial").next() {
        None => appended.push(serial),
        // libvirt's default; any other kind (a file, a socket, TCP) is someone's and stays.
        Some(s) if doc.elements[s].attr("type") == Some("pty") => {
            edits.push((doc.elements[s].span(), serial));
        }
        Some(_) => {}
    }
    if !appended.is_empty() {
        edits.push(doc.append_children(devices, &appended));
    }

    // dmore's QEMU arguments.
    let commandline = format!("{prefix}:commandline");
    let arg_name = format!("{prefix}:arg");
    let lines: Vec<usize> = doc.children(0, &commandline).collect();
    let present: Vec<String> = match lines.as_slice() {
        [] => Vec::new(),
        [c] => doc
            .children(*c, &arg_name)
            .filter_map(|i| doc.elements[i].attr("value").map(str::to_owned))
            .collect(),
        more => return Err(PatchError::SeveralCommandlines(more.len())),
    };
    if let Some(v) = present.iter().find(|v| v.contains("dbus-vmstate")) {
        return Err(PatchError::DbusVmstate(v.clone()));
    }
    let missing: Vec<&(&str, String)> = args
        .iter()
        .filter(|(flag, value)| !present.windows(2).any(|w| w[0] == *flag && w[1] == *value))
        .collect();
    if !missing.is_empty() {
        let new_args: Vec<String> = missing
            .iter()
            .flat_map(|(flag, value)| [*flag, value.as_str()])
            .map(|v| format!("<{arg_name} value='{}'/>", escape_attr(v)))
            .collect();
        edits.push(match lines.as_slice() {
            [c] => doc.append_children(*c, &new_args),
            _ => doc.append_element(0, &commandline, &new_args),
        });
    }
    Ok(splice(xml, edits))
}

/// Whether `p` can be a namespace prefix (an XML name without a colon; ASCII suffices here).
fn is_prefix(p: &str) -> bool {
    let mut chars = p.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The socket path serial port `s` listens on, if it is a unix chardev QEMU binds.
fn serial_on<'d>(doc: &'d Doc, s: usize) -> Option<&'d str> {
    if doc.elements[s].attr("type") != Some("unix") {
        return None;
    }
    let source = &doc.elements[doc.children(s, "source").next()?];
    (source.attr("mode") == Some("bind"))
        .then(|| source.attr("path"))
        .flatten()
}

/// The edit that turns VNC display `g` into one on `socket`, or none if it already is.
fn vnc_edit(doc: &Doc, g: usize, socket: &str) -> Option<(Range<usize>, String)> {
    let el = &doc.elements[g];
    let listens: Vec<usize> = doc.children(g, "listen").collect();
    let done = el.attr("socket") == Some(socket)
        && LISTENER_ATTRS
            .iter()
            .all(|a| *a == "socket" || el.attr(a).is_none())
        && listens.iter().all(|&l| {
            let l = &doc.elements[l];
            l.attr("type") == Some("socket") && l.attr("socket").is_none_or(|s| s == socket)
        });
    if done {
        return None;
    }
    let mut tag = format!("<graphics type='vnc' socket='{}'", escape_attr(socket));
    for (k, v) in &el.attrs {
        if k != "type" && !LISTENER_ATTRS.contains(&k.as_str()) {
            tag.push_str(&format!(" {k}='{}'", escape_attr(v)));
        }
    }
    // The children stay as written, less the <listen> ones (the socket attribute is the listener).
    let removed: Vec<(Range<usize>, String)> = listens
        .iter()
        .map(|&l| (doc.line_span(l), String::new()))
        .collect();
    let inner = el.inner();
    let kept = splice(
        &doc.text[..inner.end],
        removed
            .into_iter()
            .filter(|(r, _)| r.start >= inner.start)
            .collect(),
    );
    let kept = &kept[inner.start..];
    let replacement = if kept.trim().is_empty() {
        format!("{tag}/>")
    } else {
        format!("{tag}>{kept}</graphics>")
    };
    Some((el.span(), replacement))
}

/// dmore's sockets in a domain's XML, as the hook reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    /// The domain's name.
    pub name: String,
    /// The directory holding both sockets.
    pub dir: DomainDir,
    /// The VNC display's `keymap`, for the console's `--keymap`.
    pub keymap: Option<String>,
    /// QEMU's serial chardev, for the console's `--serial-socket`: when the domain's first
    /// serial port is the unix socket the patch puts in the directory.
    pub serial_socket: Option<PathBuf>,
}

/// Reads dmore's sockets from a domain's XML: `None` when the domain is not patched for dmore
/// (no VNC display on a `vnc.sock` with dmore's `-qmp` on the `qmp.sock` beside it).
pub fn read_patched(xml: &str) -> Result<Option<Patched>, PatchError> {
    let doc = Doc::parse(xml)?;
    let name = name_of(&doc)?;
    let Some(devices) = doc.children(0, "devices").next() else {
        return Ok(None);
    };
    let Some(vnc) = doc
        .children(devices, "graphics")
        .map(|i| &doc.elements[i])
        .find(|e| e.attr("type") == Some("vnc"))
    else {
        return Ok(None);
    };
    let Some(dir) = vnc
        .attr("socket")
        .map(Path::new)
        .filter(|s| s.file_name().is_some_and(|f| f == VNC_SOCKET))
        .and_then(Path::parent)
        .map(DomainDir::new)
    else {
        return Ok(None);
    };
    let Ok(qmp) = dir.qmp_arg() else {
        return Ok(None);
    };
    let has_qmp = doc
        .elements
        .iter()
        .any(|e| e.name.ends_with(":arg") && e.attr("value") == Some(qmp.as_str()));
    let serial_socket = doc
        .children(devices, "serial")
        .next()
        .and_then(|s| serial_on(&doc, s))
        .map(PathBuf::from)
        .filter(|p| *p == dir.serial_socket());
    Ok(has_qmp.then(|| Patched {
        name,
        serial_socket,
        keymap: vnc.attr("keymap").map(str::to_owned),
        dir,
    }))
}
