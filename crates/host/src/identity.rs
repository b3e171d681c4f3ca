//! User and group names from `/etc/passwd` and `/etc/group`, read directly
//! (no NSS: the daemon must not load modules or talk to directory services).
//! Used only to resolve names in the configuration and to find a peer's
//! supplementary groups.

use std::collections::HashMap;

/// The local account databases.
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    users: HashMap<String, (u32, u32)>,
    groups: HashMap<String, u32>,
}

impl Accounts {
    /// Reads `/etc/passwd` and `/etc/group`; a missing file is empty.
    pub fn load() -> Accounts {
        Accounts::parse(
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            &std::fs::read_to_string("/etc/group").unwrap_or_default(),
        )
    }

    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((
                    f.first()?.to_string(),
                    (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?),
                ))
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect();
        Accounts { users, groups }
    }

    /// A user name or a numeric uid.
    pub fn uid(&self, name: &str) -> Option<u32> {
        name.parse()
            .ok()
            .or_else(|| self.users.get(name).map(|u| u.0))
    }

    /// A group name or a numeric gid.
    pub fn gid(&self, name: &str) -> Option<u32> {
        name.parse().ok().or_else(|| self.groups.get(name).copied())
    }
}

/// The groups of process `pid` (`Groups:` in `/proc/PID/status`), if its
/// `Uid:` line still shows `uid` — so a pid reused since connect cannot lend
/// its groups. `None` when unknown.
pub fn supplementary_groups(pid: u32, uid: u32) -> Option<Vec<u32>> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let real_uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    if real_uid != uid {
        return None;
    }
    let groups = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        groups
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        let a = Accounts::parse(
            "root:x:0:0::/root:/bin/sh\nnix:x:999:998::/:/bin/false\n",
            "nixbld:x:30000:\nwheel:x:10:alice\n",
        );
        assert_eq!(a.uid("nix"), Some(999));
        assert_eq!(a.uid("1234"), Some(1234));
        assert_eq!(a.uid("nobody-here"), None);
        assert_eq!(a.gid("nixbld"), Some(30000));
        assert_eq!(a.gid("wheel"), Some(10));
    }

    #[test]
    fn own_groups_are_readable() {
        let me = std::process::id();
        let uid = rustix::process::getuid().as_raw();
        assert!(supplementary_groups(me, uid).is_some());
        assert!(supplementary_groups(me, uid.wrapping_add(1)).is_none());
    }
}

/// Who is on the other end of a connection, from the kernel
/// (`SO_PEERCRED`), never from anything the client says.
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
    /// Returns true if and only if `gid` is the peer's primary or one of
    /// its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}
