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

/// The listening socket systemd passed, if this process was socket
/// activated. Unsets `LISTEN_*` so children do not inherit them.
///
/// Refuses (rather than guesses) if more than one fd was passed or the fd is
/// not a listening `AF_UNIX` stream socket.
pub fn take_listener() -> io::Result<Option<UnixListener>> {
    let fds: Vec<_> = sd_notify::listen_fds_with_names()?.collect();
    // Called before any thread starts (see main), so this cannot race.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let Some(&(raw, _)) = fds.first() else {
        return Ok(None);
    };
    // SAFETY: `listen_fds_with_names` returned this number only because
    // LISTEN_PID names this process and LISTEN_FDS covers it: the service
    // manager opened it for us before exec, nothing else in this process
    // owns it, and the env vars were just unset so it is adopted once.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if fds.len() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("expected one socket from systemd, got {}; set ListenStream= once in builddird.socket", fds.len()),
        ));
    }
    check_listening_unix_stream(fd.as_fd())?;
    Ok(Some(UnixListener::from(fd)))
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
