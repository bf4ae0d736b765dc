//! dmore's tiny test guest (task C writes this).
#![warn(missing_docs)]
