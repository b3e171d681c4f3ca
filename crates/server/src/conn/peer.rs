//! Who is on the other end of a connection, from the kernel (`SO_PEERCRED`),
//! never from anything the client says.

use tokio::net::UnixStream;

/// Credentials captured when the connection was accepted.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// 0 if the kernel did not report one (peer in another pid namespace).
    pub pid: u32,
    /// `/proc/PID/comm` at connect time; informational only.
    pub command: String,
    /// Supplementary groups at connect time (empty if unknown).
    pub groups: Vec<u32>,
}

impl Peer {
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

    /// Returns true if and only if `gid` is the peer's primary or one of
    /// its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
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
