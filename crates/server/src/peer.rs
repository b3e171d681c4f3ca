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
}

impl Peer {
    /// Reads `SO_PEERCRED` of `stream`.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        let command = if pid == 0 {
            String::new()
        } else {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_default()
        };
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            command,
        })
    }

    /// Returns true if and only if this peer may act on every lease.
    pub fn is_operator(&self) -> bool {
        self.uid == 0
    }
}
