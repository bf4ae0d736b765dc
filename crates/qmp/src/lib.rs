//! A QEMU Machine Protocol client (task D writes this).
#![warn(missing_docs)]
