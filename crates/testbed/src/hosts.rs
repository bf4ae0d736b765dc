//! Test hosts in network namespaces (task E writes this).
