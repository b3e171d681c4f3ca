//! The whole daemon in-process, through its library seam ([`crate::run`]),
//! on a temporary directory of the test's own user: real sockets, real
//! directories, no root, no mount, no systemd. Unit tests (not a `tests/`
//! directory), so `cargo test -p builddir-server` never rebuilds the
//! `builddird` binary without the features the root suites need.

mod interleavings;
mod reclaim;
mod seam;
mod support;
