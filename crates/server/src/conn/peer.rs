//! Who is on the other end of a connection, from the kernel (`SO_PEERCRED`),
//! never from anything the client says.

use tokio::net::UnixStream;

/// Credentials captured when the connection was accepted (the type is
/// shared with `builddir-ctl`'s policy check).
pub use builddir_host::identity::Peer;

/// Reads `SO_PEERCRED` of `stream`; with `want_groups`, also the peer's
/// supplementary groups (a `/proc` read, so only when policy uses groups).
pub fn of(stream: &UnixStream, want_groups: bool) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    let command = if pid == 0 { String::new() } else { comm(pid) };
    let groups = if want_groups {
        crate::host::identity::supplementary_groups(pid, cred.uid()).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        command,
        groups,
    })
}

/// `/proc/PID/comm` (at most 16 bytes): one open, one read, one close, on
/// every connection's path, so no `statx` or second read as `std::fs` does.
fn comm(pid: u32) -> String {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let Ok(fd) = openat(
        CWD,
        format!("/proc/{pid}/comm").as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return String::new();
    };
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&fd, &mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}
