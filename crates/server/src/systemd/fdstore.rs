//! systemd's file descriptor store: each live lease's client connection is
//! kept there (`FDSTORE=1`, `FDNAME=lease-<id>`), so when the daemon
//! restarts the connection is handed back (`LISTEN_FDS`, `LISTEN_FDNAMES`)
//! instead of closing — the client never notices. The entry is dropped
//! (`FDSTOREREMOVE=1`) when the lease ends. A socket bound by hand is kept
//! as `listener` the same way.

use std::os::fd::BorrowedFd;

use sd_notify::NotifyState;

use crate::host::config::Config;
use crate::lease::id::LeaseId;

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

/// Stores `fd` under `name` (best effort: a store that is full or absent
/// costs only the seamless restart, which the reclaim path still covers).
pub fn store(config: &Config, fd: BorrowedFd<'_>, name: &str) {
    if !enabled(config) {
        return;
    }
    if let Err(e) =
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    {
        tracing::warn!(name, error = %e, "cannot store fd with systemd");
    }
}

/// Removes lease `id`'s connection from the store.
pub fn forget(config: &Config, id: LeaseId) {
    if !enabled(config) {
        return;
    }
    let name = name_of(id);
    let send = move || {
        if let Err(e) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(&name)])
        {
            tracing::warn!(name, error = %e, "cannot remove fd from systemd's store");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(send)),
        Err(_) => send(),
    }
}
