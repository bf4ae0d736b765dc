//! Moving a console with its VM.
//!
//! This crate will hold the co-migration orchestrator (the source console freezes when its VM
//! stops for the switchover, the destination takes over when its VM runs, the source thaws if
//! its own VM runs again) and the hand-over of the viewers' connections. Today it holds the
//! second part's foundation: [`tcp`], which checkpoints an established TCP socket with Linux
//! `TCP_REPAIR` on one host and recreates it on another, so an unmodified viewer keeps its
//! connection while the service address moves with the VM.

#![warn(missing_docs)]

pub mod phase;
pub mod protocol;
pub mod tcp;
