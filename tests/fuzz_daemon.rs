//! Fuzzing the daemon's connection handler through its real socket: random
//! frames before and after a valid handshake. The daemon must answer with a
//! typed error or close, keep serving, and not leak fds.
//! `PROPTEST_CASES=5000 cargo test -p builddir-tests --test fuzz_daemon`
//! runs longer; CI runs the default 64 cases.

use std::io::Write;
use std::time::Duration;

use builddir_tests::wire::{closed, frame, hello, raw};
use builddir_tests::{eventually, require_root, Daemon};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn fuzz_handler_with_random_frames() {
    if !require_root("fuzz_handler_with_random_frames") {
        return;
    }
    let d = Daemon::start("fuzz");
    assert!(d.ctl(&["status"]).status.success());
    let before = d.fd_count();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let input = (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..96), 1..6),
    );
    runner
        .run(&input, |(handshake, raw_bytes, payloads)| {
            let mut s = raw(&d.socket);
            if handshake {
                let _ = hello(&mut s);
            }
            for p in &payloads {
                let bytes = if raw_bytes { p.clone() } else { frame(p) };
                if s.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            prop_assert!(closed(&mut s), "connection not closed after input ended");
            prop_assert!(
                d.ctl(&["status"]).status.success(),
                "daemon stopped serving:\n{}",
                d.log_text()
            );
            prop_assert!(
                eventually(Duration::from_secs(5), || d.fd_count() <= before),
                "fd leak: {} > {before}",
                d.fd_count()
            );
            Ok(())
        })
        .unwrap();
}
