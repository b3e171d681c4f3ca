//! systemd's file descriptor store: each live lease's client connection is
//! kept there (`FDSTORE=1`, `FDNAME=lease-<id>`), so when the daemon
//! restarts the connection is handed back (`LISTEN_FDS`, `LISTEN_FDNAMES`)
//! instead of closing — the client never notices. The entry is dropped
//! (`FDSTOREREMOVE=1`) when the lease ends. A socket bound by hand is kept
//! as `listener` the same way.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock};

use sd_notify::NotifyState;

use crate::host::config::Config;
use builddir_host::id::LeaseId;

/// `FDNAME` of a stored lease connection.
pub fn name_of(id: LeaseId) -> String {
    format!("lease-{id}")
}

/// The lease a stored fd's name refers to.
pub fn lease_of(name: &str) -> Option<LeaseId> {
    name.strip_prefix("lease-").and_then(LeaseId::parse)
}

/// `FDNAME` of a socket bound by hand.
pub const LISTENER: &str = "listener";

/// Returns true if and only if fds should go to the store.
pub fn enabled(config: &Config) -> bool {
    config.fd_store && std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// One store operation, done in order by the store's own thread.
#[derive(Debug)]
enum Op {
    Store(OwnedFd, String),
    Remove(String),
}

/// The store's thread: `sd_notify` is a blocking `sendmsg`, kept off the
/// async workers; one thread in one order, so a lease's removal never
/// overtakes its store.
fn send(op: Op) {
    static QUEUE: OnceLock<Mutex<Sender<Op>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Op>();
        let spawned = std::thread::Builder::new()
            .name("builddird-fdstore".into())
            .spawn(move || rx.into_iter().for_each(perform));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the fd store thread; the store is not used");
        }
        Mutex::new(tx)
    });
    let sent = queue.lock().unwrap_or_else(|p| p.into_inner()).send(op);
    if let Err(std::sync::mpsc::SendError(op)) = sent {
        tracing::warn!(?op, "the fd store thread is gone; not stored");
    }
}

fn perform(op: Op) {
    crate::failpoint::hit("fdstore:send");
    match op {
        Op::Store(fd, name) => {
            if let Err(e) = sd_notify::notify_with_fds(
                &[NotifyState::FdStore, NotifyState::FdName(&name)],
                &[fd.as_fd()],
            ) {
                tracing::warn!(name, error = %e, "cannot store fd with systemd");
            }
        }
        Op::Remove(name) => {
            if let Err(e) =
                sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(&name)])
            {
                tracing::warn!(name, error = %e, "cannot remove fd from systemd's store");
            }
        }
    }
}

/// Stores `fd` under `name` (best effort: a store that is full or absent
/// costs only the seamless restart, which the reclaim path still covers).
/// Returns at once; a duplicate of `fd` travels to the store's thread.
pub fn store(config: &Config, fd: BorrowedFd<'_>, name: &str) {
    if !enabled(config) {
        return;
    }
    match rustix::io::fcntl_dupfd_cloexec(fd, 0) {
        Ok(dup) => send(Op::Store(dup, name.to_owned())),
        Err(e) => tracing::warn!(name, error = %e, "cannot store fd with systemd"),
    }
}

/// Removes lease `id`'s connection from the store.
pub fn forget(config: &Config, id: LeaseId) {
    if enabled(config) {
        send(Op::Remove(name_of(id)));
    }
}
