//! Phase machines (in progress).
