//! Adopting the listening socket that systemd passes (`LISTEN_FDS`).
//!
//! This is the crate's one `unsafe` opt-in: turning the inherited fd number
//! 3 into an owned descriptor is an assertion the compiler cannot check.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use rustix::net::sockopt::{socket_acceptconn, socket_type};
use rustix::net::{getsockname, SocketAddrAny, SocketType};

use builddir_host::id::LeaseId;

/// What systemd handed over at start.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The listening socket (from the `.socket` unit, or our own bound
    /// socket kept in the fd store as `listener`).
    pub listener: Option<UnixListener>,
    /// Lease connections kept in the fd store, by lease.
    pub leases: Vec<(LeaseId, OwnedFd)>,
}

/// Adopts the fds systemd passed (`LISTEN_FDS`, named by `LISTEN_FDNAMES`)
/// and unsets the variables so nothing adopts them twice. Exactly one
/// listening socket is accepted; fds named `lease-<id>` are lease
/// connections; anything else is closed.
pub fn take() -> io::Result<Inherited> {
    let fds: Vec<_> = sd_notify::listen_fds_with_names()?.collect();
    // Called before any thread starts (see main), so this cannot race.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let mut inherited = Inherited::default();
    let mut stored_listener = None;
    for (raw, name) in fds {
        // SAFETY: `listen_fds_with_names` returned this number only because
        // LISTEN_PID names this process and LISTEN_FDS covers it: the
        // service manager opened it for us before exec, nothing else in this
        // process owns it, and the variables were just unset so each number
        // is adopted once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(id) = crate::systemd::fdstore::lease_of(&name) {
            inherited.leases.push((id, fd));
        } else if check_listening_unix_stream(fd.as_fd()).is_ok() {
            if name == crate::systemd::fdstore::LISTENER {
                stored_listener = Some(UnixListener::from(fd));
            } else if inherited.listener.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "systemd passed more than one listening socket; set ListenStream= once in builddird.socket",
                ));
            } else {
                inherited.listener = Some(UnixListener::from(fd));
            }
        } else {
            tracing::warn!(name, "closing an unexpected fd passed by systemd");
        }
    }
    // A socket unit's socket wins over one we bound and stored ourselves.
    if inherited.listener.is_none() {
        inherited.listener = stored_listener;
    }
    Ok(inherited)
}

fn check_listening_unix_stream(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let bad = |what: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd 3 from systemd is not {what}; builddird.socket must use ListenStream= with a path"),
        ))
    };
    if socket_type(fd)? != SocketType::STREAM {
        return bad("a stream socket");
    }
    if !socket_acceptconn(fd)? {
        return bad("listening");
    }
    let addr: SocketAddrAny = getsockname(fd)?;
    if addr.address_family() != rustix::net::AddressFamily::UNIX {
        return bad("an AF_UNIX socket");
    }
    Ok(())
}
