//! The QEMU launcher (task C writes this).
