//! Logs through `tracing`: to journald (every field a journal field, e.g.
//! `LEASE_ID`, `UID`) when `JOURNAL_STREAM` says stderr is the journal,
//! else human-readable lines on stderr.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is an `EnvFilter` directive
/// (`info`, `debug`, `builddir_server=trace`); `RUST_LOG` overrides it.
/// Returns true if and only if logs go to journald.
pub fn init(level: &str) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry
                .with(
                    journald
                        .with_syslog_identifier("builddird".into())
                        // Fields as LEASE_ID, UID, … (not F_LEASE_ID).
                        .with_field_prefix(None),
                )
                .init();
            return true;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    false
}

/// An error and its causes on one line, each cause once: errors that
/// already print their cause (`context: cause`) are not repeated.
pub fn one_line(e: &anyhow::Error) -> String {
    builddir_host::one_line(e.as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = anyhow::Error::new(io)
            .context("recvmsg: reset")
            .context("releasing the lease");
        assert_eq!(super::one_line(&e), "releasing the lease: recvmsg: reset");
    }
}
