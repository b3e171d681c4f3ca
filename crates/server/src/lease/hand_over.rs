//! Handing a kept tree to the user who asked to keep it.
//!
//! The tree belongs to the build's owner, who may have filled it with
//! traps: hard links to root's files (CVE-2025-52993: chown through a hard
//! link to `/etc/shadow`), symlinks, setuid binaries. So:
//!
//! - every non-directory is pinned with `O_PATH|O_NOFOLLOW` (no I/O, no
//!   FIFO or lease side effects), checked on that fd, and changed through
//!   that fd — a name swapped after the check changes nothing;
//! - only inodes owned by the build's owner are touched: a hard link to a
//!   root-owned file keeps its owner;
//! - a multiply-linked file is not chowned to someone else (its other names
//!   may live outside the tree);
//! - setuid/setgid bits are cleared on every regular file the owner owns.
//!
//! All or nothing: the walk is bounded ([`crate::tree::walk::Limits`]) and
//! stops when the tree changes under it. A hand-over whose walk did not
//! reach every entry, or failed on one, is not a hand-over
//! ([`HandOver::refusal`]): the caller deletes the tree instead of answering
//! that it was kept, because an entry the walk never reached (a setuid
//! binary at depth 5000, a subtree moved behind the walk) would stay as the
//! build made it, inside a tree the requester trusts.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fstat, openat, AtFlags, FileType, Gid, Mode, OFlags, Stat,
    Statx, Uid, CWD,
};

use crate::tree::walk::{walk_within, Limits, Visitor, WalkReport};

/// The result of a hand-over.
#[derive(Debug, Default)]
pub struct HandOver {
    pub walk: WalkReport,
    pub chowned: u64,
    pub setid_cleared: u64,
    /// Entries left alone: owned by someone else, or multiply linked.
    pub skipped: u64,
}

impl HandOver {
    /// Why this hand-over does not count, if it does not: the walk stopped
    /// before reaching every entry, or an entry could not be handed over.
    /// File names in the text are escaped.
    pub fn refusal(&self) -> Option<String> {
        if let Some(stopped) = self.walk.stopped {
            return Some(format!(
                "{stopped} (stopped after {} entries)",
                self.walk.entries
            ));
        }
        if self.walk.errors > 0 {
            return Some(format!(
                "{} entries could not be handed over, the first: {}",
                self.walk.errors,
                self.walk
                    .first_error
                    .as_deref()
                    .unwrap_or("unknown")
                    .escape_debug()
            ));
        }
        None
    }
}

struct Chown {
    owner: u32,
    to_uid: u32,
    to_gid: u32,
    done: HandOver,
}

impl Chown {
    fn changes_owner(&self) -> bool {
        self.owner != self.to_uid
    }

    fn chown_fd(&mut self, fd: BorrowedFd<'_>, report: &mut WalkReport, empty_path: bool) {
        let (uid, gid) = (
            Some(Uid::from_raw(self.to_uid)),
            Some(Gid::from_raw(self.to_gid)),
        );
        let r = if empty_path {
            chownat(
                fd,
                c"",
                uid,
                gid,
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
        } else {
            fchown(fd, uid, gid)
        };
        match r {
            Ok(()) => self.done.chowned += 1,
            Err(e) => report.fail("chown", e),
        }
    }
}

impl Visitor for Chown {
    fn dir(&mut self, fd: BorrowedFd<'_>, st: &Stat, report: &mut WalkReport) {
        if st.st_uid != self.owner {
            self.done.skipped += 1;
            return;
        }
        if self.changes_owner() {
            self.chown_fd(fd, report, false);
        }
        if st.st_mode & 0o6000 != 0 {
            match fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o1777)) {
                Ok(()) => self.done.setid_cleared += 1,
                Err(e) => report.fail("chmod", e),
            }
        }
    }

    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, seen: &Statx, report: &mut WalkReport) {
        if seen.stx_uid != self.owner {
            self.done.skipped += 1;
            return;
        }
        let regular = FileType::from_raw_mode(seen.stx_mode.into()) == FileType::RegularFile;
        let needs_chmod = regular && u32::from(seen.stx_mode) & 0o6000 != 0;
        if !self.changes_owner() && !needs_chmod {
            return;
        }
        let pinned = match openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Gone since the readdir: nothing left to hand over.
            Err(rustix::io::Errno::NOENT) => return,
            Err(e) => return report.fail("open O_PATH", e),
        };
        let st = match fstat(&pinned) {
            Ok(st) => st,
            Err(e) => return report.fail("fstat", e),
        };
        // Checked on the pinned inode, not the name.
        if st.st_uid != self.owner {
            self.done.skipped += 1;
            return;
        }
        let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        if self.changes_owner() {
            if !FileType::from_raw_mode(st.st_mode).eq(&FileType::Directory) && st.st_nlink > 1 {
                self.done.skipped += 1;
            } else {
                self.chown_fd(pinned.as_fd(), report, true);
            }
        }
        if regular && st.st_mode & 0o6000 != 0 {
            // chmod through the magic link of the pinned fd: the same inode.
            let proc_path = format!("/proc/self/fd/{}", pinned.as_raw_fd());
            match chmodat(
                CWD,
                proc_path.as_str(),
                Mode::from_raw_mode(st.st_mode & 0o1777),
                AtFlags::empty(),
            ) {
                Ok(()) => self.done.setid_cleared += 1,
                Err(e) => report.fail("chmod", e),
            }
        }
    }
}

/// Makes the kept tree `build` (opened by the caller) the requester's:
/// chowns what `owner` owns to `to_uid:to_gid` (if different) and clears
/// setuid/setgid everywhere the owner owns.
pub fn hand_over(
    build: std::os::fd::OwnedFd,
    owner: u32,
    to_uid: u32,
    to_gid: u32,
    limits: Limits,
) -> HandOver {
    let mut chown = Chown {
        owner,
        to_uid,
        to_gid,
        done: HandOver::default(),
    };
    let report = walk_within(build, &mut chown, limits);
    let mut done = chown.done;
    done.walk = report;
    done
}

/// Bounds on one hand-over walk: the defaults, and no more bytes than the
/// kept area may hold in total (such a tree would be evicted at once).
pub fn limits(config: &crate::host::config::Config) -> Limits {
    Limits {
        max_bytes: match config.kept_max_bytes {
            0 => u64::MAX,
            n => n,
        },
        ..Limits::default()
    }
}

/// Opens `kept/<id>`, lets the requester alone traverse the root-owned
/// outer dir, and hands `build` over.
pub fn hand_over_kept(
    layout: &crate::host::layout::Layout,
    id: crate::lease::id::LeaseId,
    owner: u32,
    to_uid: u32,
    to_gid: u32,
    limits: Limits,
) -> Result<HandOver, rustix::io::Errno> {
    use crate::host::layout::{id_name, BUILD, DIR_OPEN};
    let outer = openat(
        &layout.kept,
        id_name(id).as_c_str(),
        DIR_OPEN,
        Mode::empty(),
    )?;
    // The daemon's own (a tree kept by an older daemon had the owner's
    // group).
    let st = fstat(&outer)?;
    let (uid, gid) = layout.owner;
    if (st.st_uid, st.st_gid) != (uid, gid) {
        fchown(&outer, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    crate::lease::outer::owner_only(outer.as_fd(), to_uid)?;
    let build = openat(&outer, BUILD, DIR_OPEN, Mode::empty())?;
    crate::failpoint::hit("keep:before-hand-over");
    Ok(hand_over(build, owner, to_uid, to_gid, limits))
}
