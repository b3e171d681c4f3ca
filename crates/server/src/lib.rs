//! builddird: a root helper that owns a dedicated `nosuid,nodev,exec` mount,
//! creates one directory per build by file descriptor, hands the descriptor
//! to the unprivileged orchestrator over a Unix socket, and deletes the tree
//! safely when the build ends.
//!
//! The folders are the architecture; every import runs downward:
//!
//! ```text
//! conn/     accept loop, listener, peer credentials, one session per
//!           connection, one file per request (conn::requests)
//! lease/    the lifecycle: the table (every transition), create, end
//!           (release, keep), trash, hand-over, retention, reaper, registry,
//!           recovery at start, ids, the owner-only outer directory
//! backend/  how a lease's space is provided: plain dir, tmpfs, project quota
//! tree/     bounded walks over a user's tree: size walks, safe removal
//! host/     facts about this machine: the layout of the root here; config,
//!           policy, mount, identity re-exported from `builddir_host`
//!           (shared with `builddir-ctl check`)
//! systemd/  the hand-offs with PID 1: LISTEN_FDS, sd_notify, the fd store
//! ```
//!
//! Direction: `conn → lease → backend, tree → host`; `conn` and `lease` may
//! use `systemd`.

pub mod backend;
pub mod conn;
pub mod failpoint;
pub mod host;
#[cfg(test)]
mod in_process;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod systemd;
pub mod tree;
pub mod trim;

use std::future::Future;
use std::sync::Arc;

/// Serves `listener` for `daemon` until `shutdown` completes: every
/// connection, every request, every lease transition, in-process. The
/// binary calls it after verifying the mount and recovering the table;
/// tests call it with a temporary layout and a socket of their own.
///
/// On return the daemon is stopping: connections dropped from now on (with
/// the runtime) keep their leases for the next daemon.
pub async fn run(
    daemon: Arc<lease::table::Daemon>,
    listener: tokio::net::UnixListener,
    shutdown: impl Future<Output = ()>,
) {
    conn::accept::run(listener, daemon.clone(), shutdown).await;
    daemon.stop();
}
