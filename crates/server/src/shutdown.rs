//! What happens to the mount when the daemon stops.
//!
//! Under systemd the mount stays: `systemctl restart` must not pull it from
//! under running builds (their leases wait in the fd store), and a stop
//! leaves it for the next start (the operator removes it with `umount`).
//! A daemon run by hand (Ctrl-C, SIGTERM) that made the mount itself takes
//! it down again when nothing depends on it: no live lease (whose client may
//! reclaim it from the next daemon), no held lease tmpfs (mounted in trash
//! for the next daemon to count) and, on a tmpfs, no kept or unfinished
//! tree (unmounting a tmpfs deletes them; a bind mount only hides the flags,
//! the trees stay in the directory). Anything left mounted is said in the
//! log, with the command that removes it.

use std::path::Path;

use crate::host::config::Backing;

/// What the daemon knows when it stops.
#[derive(Debug, Clone, Copy)]
pub struct AtStop {
    /// Socket-activated (systemd owns the socket and restarts us).
    pub activated: bool,
    /// The mount was made by this process (the root was no mount point).
    pub made_mount: bool,
    pub backing: Backing,
    /// Leases by state: live, kept, reaping, quarantined, detaching.
    pub counts: [u64; 5],
}

/// Leave the mount, or take it down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Unmount,
    /// Left mounted, and why (for the log line).
    Leave(String),
}

/// Decides what to do with the mount at stop.
pub fn decide(at: &AtStop) -> Decision {
    let [live, kept, reaping, quarantined, detaching] = at.counts;
    if at.activated {
        return Decision::Leave("started by systemd, so a restart finds it in place".into());
    }
    if !at.made_mount {
        return Decision::Leave("it was mounted before this daemon started".into());
    }
    if live > 0 {
        return Decision::Leave(format!(
            "{live} live lease(s) whose clients reclaim them when builddird starts again"
        ));
    }
    // A detaching lease's tmpfs is still held, mounted in trash: it stays
    // mounted (whatever the backing) for the next daemon to list, count
    // and unmount; a lazy unmount of the root would hide it.
    if detaching > 0 {
        return Decision::Leave(format!(
            "{detaching} tmpfs lease(s) still held by a process stay mounted in its trash until builddird starts again and unmounts them"
        ));
    }
    let trees = kept + reaping + quarantined;
    if at.backing == Backing::Tmpfs && trees > 0 {
        return Decision::Leave(format!(
            "its tmpfs holds {trees} kept or unfinished tree(s) that unmounting would delete"
        ));
    }
    Decision::Unmount
}

/// Carries out `decide` and logs what it did.
pub fn finish(root: &Path, at: &AtStop) {
    let root_s = root.display();
    let leave = |why: &str| {
        tracing::info!(
            root = %root_s,
            "{root_s} stays mounted ({why}); to remove it: umount {root_s}"
        );
    };
    match decide(at) {
        Decision::Leave(why) => leave(&why),
        Decision::Unmount => {
            match rustix::mount::unmount(root, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => {
                    tracing::info!(root = %root_s, "unmounted {root_s} (mounted by this daemon at start)")
                }
                Err(e) => leave(&format!("cannot unmount it: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(activated: bool, made_mount: bool, backing: Backing, counts: [u64; 5]) -> AtStop {
        AtStop {
            activated,
            made_mount,
            backing,
            counts,
        }
    }

    #[test]
    fn a_hand_run_daemon_takes_down_its_own_idle_mount() {
        assert_eq!(
            decide(&at(false, true, Backing::Bind, [0; 5])),
            Decision::Unmount
        );
        // A bind mount hides nothing: kept trees stay in the directory.
        assert_eq!(
            decide(&at(false, true, Backing::Bind, [0, 3, 1, 1, 0])),
            Decision::Unmount
        );
        assert_eq!(
            decide(&at(false, true, Backing::Tmpfs, [0; 5])),
            Decision::Unmount
        );
    }

    #[test]
    fn anything_that_depends_on_the_mount_keeps_it() {
        let leave = |a: AtStop| matches!(decide(&a), Decision::Leave(_));
        assert!(leave(at(true, true, Backing::Bind, [0; 5])));
        assert!(leave(at(false, false, Backing::Bind, [0; 5])));
        assert!(leave(at(false, true, Backing::Bind, [1, 0, 0, 0, 0])));
        assert!(leave(at(false, true, Backing::Tmpfs, [0, 1, 0, 0, 0])));
        assert!(leave(at(false, true, Backing::Tmpfs, [0, 0, 0, 1, 0])));
        // A held lease tmpfs is mounted below the root, whatever its backing.
        assert!(leave(at(false, true, Backing::Tmpfs, [0, 0, 0, 0, 1])));
        assert!(leave(at(false, true, Backing::Bind, [0, 0, 0, 0, 1])));
    }
}
