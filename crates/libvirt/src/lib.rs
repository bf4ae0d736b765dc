//! dmore's libvirt glue, at the edge: a domain's XML patched for dmore ([`patch_domain`]) and
//! libvirt's QEMU hook that starts and stops a domain's console ([`hook`]).
//!
//! libvirt owns the VM and drives its migrations; dmore's console only follows, from a QMP
//! monitor of its own (never `migrate*`, `stop`, `cont` or capabilities: libvirt answers
//! `pre-switchover` itself). The console crate never imports this one.

#![warn(missing_docs)]

pub mod announce;
mod doc;
pub mod hook;
mod patch;

pub use doc::DocError;
pub use patch::{
    domain_name, patch_domain, read_patched, DomainDir, PatchError, Patched, QEMU_NS, QMP_SOCKET,
    RUN_DIR, SERIAL_SOCKET, VNC_SOCKET,
};
