//! Deleting a tree that a hostile user controls, as root.
//!
//! The model is systemd's `rm_rf` and coreutils' fts (`FTS_PHYSICAL`), with
//! what their CVEs taught (CVE-2022-21658 in Rust's std, CVE-2021-3997 in
//! systemd-tmpfiles, CVE-2025-46415 in Nix):
//!
//! - Only descriptors, never paths: every step is `*at()` relative to a
//!   directory fd we opened ourselves; directories are opened with `openat2`
//!   and `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV|
//!   RESOLVE_NO_MAGICLINKS` (fallback: `O_NOFOLLOW` plus a mount-id check).
//! - Unlink first: a name is unlinked without being opened; only when the
//!   kernel says it is a non-empty directory do we open it — with
//!   `O_DIRECTORY`, which fails before any open side effect for FIFOs,
//!   devices or leased files. Nothing that is not a directory is ever opened,
//!   chmodded, chowned or truncated.
//! - Mount points are never crossed (by mount id, via `RESOLVE_NO_XDEV`):
//!   the subtree is reported and left in place.
//! - No recursion: the walk keeps its stack on the heap, and at most
//!   [`Limits::max_open_dirs`] directories open. Older ancestors are closed
//!   and reopened on the way back up through `..`, checked against the
//!   device and inode recorded on the way down. A mismatch means the tree
//!   was rearranged under us (an ancestor moved): the walk starts again
//!   from the top — which lives in the root-only trash, where the build
//!   cannot move it — keeping everything already deleted, at most
//!   [`Limits::max_restarts`] times. Only past that bound is the tree left
//!   in quarantine.
//! - A directory that is not empty after a full pass (a live writer) is
//!   rescanned at most [`Limits::max_refills`] times, then given up.
//! - Errors never stop the walk early (except the rearrangement above): the
//!   first is kept with its path, the rest are counted.
//!
//! Memory is bounded by the stack depth times the name lengths (names are
//! kept in one arena for the `rmdir` on the way back up); a directory with a
//! million entries is streamed, never read whole.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    fstat, openat, openat2, statx, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags,
    StatxFlags,
};
use rustix::io::Errno;

/// Bounds on one deletion.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Directory descriptors held open at once (the walk's fd budget).
    pub max_open_dirs: usize,
    /// Rescans of a directory that is still not empty after a full pass.
    pub max_refills: u32,
    /// Entries one pass over one directory may read. A writer that adds
    /// names as fast as we remove them would otherwise keep a pass from
    /// ever reaching its end; no real build makes a directory this large.
    pub max_pass_entries: u64,
    /// Fresh starts from the top after the tree was rearranged under the
    /// walk. Each start keeps what earlier ones deleted, so a tree whose
    /// builder stopped moving things is always finished; one that keeps
    /// moving ancestors faster than we can delete is quarantined.
    pub max_restarts: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_open_dirs: 32,
            max_refills: 8,
            max_pass_entries: 10_000_000,
            max_restarts: 64,
        }
    }
}

/// The outcome of deleting one tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Names removed (files, links, directories).
    pub removed: u64,
    /// Operations that failed.
    pub errors: u64,
    /// The first failure: `path: what failed: errno`.
    pub first_error: Option<String>,
    /// True if and only if the tree's top directory itself is gone.
    pub complete: bool,
    /// Mount points found (and not crossed).
    pub mount_points: u64,
    /// True if a directory kept refilling past the limit.
    pub refilling: bool,
    /// True if the walk stopped because the tree was rearranged under it
    /// more than [`Limits::max_restarts`] times.
    pub moved: bool,
    /// Fresh starts from the top after the tree was rearranged under it.
    pub restarts: u32,
}

static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the directory `name` in `dirfd` without following symlinks, magic
/// links or mount points, and without ever opening a non-directory.
pub(crate) fn open_dir_beneath(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    mount_id: u64,
) -> Result<OwnedFd, Errno> {
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_XDEV
            | ResolveFlags::NO_MAGICLINKS;
        match openat2(dirfd, name, DIR_FLAGS, Mode::empty(), resolve) {
            Err(Errno::NOSYS) => OPENAT2_MISSING.store(true, Ordering::Relaxed),
            other => return other,
        }
    }
    // Pre-5.6 kernels: `name` is one component (no `/`), so O_NOFOLLOW covers
    // symlinks; a mount point is caught by comparing mount ids after the open.
    let fd = openat(dirfd, name, DIR_FLAGS, Mode::empty())?;
    if mount_id_of(fd.as_fd())? != mount_id {
        return Err(Errno::XDEV);
    }
    Ok(fd)
}

fn mount_id_of(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    Ok(statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?.stx_mnt_id)
}

/// One directory on the walk's stack.
struct Frame {
    /// The open stream; `None` while evicted to respect the fd budget.
    dir: Option<Dir>,
    /// This directory's name in its parent: `names[name_start..name_end]`.
    name_start: usize,
    name_end: usize,
    dev: u64,
    ino: u64,
    refills: u32,
    /// Entries read in the current pass.
    pass_entries: u64,
    /// Something below could not be removed, so this directory cannot be.
    failed: bool,
}

/// The walk's state: the stack, the name arena and the report.
struct Walk<'p> {
    parent: BorrowedFd<'p>,
    limits: Limits,
    mount_id: u64,
    stack: Vec<Frame>,
    names: Vec<u8>,
    /// Frames `stack[first_open..]` are open; those below are evicted.
    first_open: usize,
    report: Report,
    /// Set when an ancestor was not where we left it: start over.
    restart: bool,
}

enum Step {
    Removed,
    Descend(OwnedFd),
    Failed,
}

/// Deletes the directory `name` in `parent` and everything below it.
///
/// `parent` must be a directory the attacker cannot write (the trash dir).
pub fn remove_tree(parent: BorrowedFd<'_>, name: &CStr, limits: Limits) -> Report {
    let mut walk = Walk {
        parent,
        limits,
        mount_id: 0,
        stack: Vec::new(),
        names: Vec::new(),
        first_open: 0,
        report: Report::default(),
        restart: false,
    };
    loop {
        walk.run(name);
        if !walk.restart {
            break;
        }
        walk.restart = false;
        walk.stack.clear();
        walk.names.clear();
        walk.first_open = 0;
        if walk.report.restarts >= walk.limits.max_restarts {
            walk.report.moved = true;
            walk.fail(
                Some(name),
                "moved during deletion too many times; stopped",
                Errno::STALE,
            );
            break;
        }
        walk.report.restarts += 1;
    }
    walk.report
}

impl Walk<'_> {
    /// Counts a failure; the first one is kept with its path.
    fn fail(&mut self, child: Option<&CStr>, what: &str, e: Errno) {
        self.report.errors += 1;
        if self.report.first_error.is_none() {
            self.report.first_error = Some(format!("{}: {what}: {e}", self.path_of(child)));
        }
    }

    fn name(&self, i: usize) -> &CStr {
        let f = &self.stack[i];
        CStr::from_bytes_with_nul(&self.names[f.name_start..f.name_end])
            .expect("arena holds C strings")
    }

    /// `top/…/child` for messages, truncated at the front if very deep.
    fn path_of(&self, child: Option<&CStr>) -> String {
        let mut parts: Vec<String> = (0..self.stack.len())
            .map(|i| self.name(i).to_string_lossy().into_owned())
            .collect();
        if let Some(c) = child {
            parts.push(c.to_string_lossy().into_owned());
        }
        let path = parts.join("/");
        if path.len() > 512 {
            let cut = path.len() - 500;
            let cut = (cut..path.len())
                .find(|&i| path.is_char_boundary(i))
                .unwrap_or(cut);
            format!("…{}", &path[cut..])
        } else {
            path
        }
    }

    fn push(&mut self, fd: OwnedFd, name: &CStr) -> Result<(), Errno> {
        let st = fstat(&fd)?;
        let name_start = self.names.len();
        self.names.extend_from_slice(name.to_bytes_with_nul());
        self.stack.push(Frame {
            dir: Some(Dir::new(fd)?),
            name_start,
            name_end: self.names.len(),
            dev: st.st_dev,
            ino: st.st_ino,
            refills: 0,
            pass_entries: 0,
            failed: false,
        });
        // Keep the fd budget: close the oldest open ancestor (never the top).
        if self.stack.len() - self.first_open > self.limits.max_open_dirs.max(2) {
            self.stack[self.first_open].dir = None;
            self.first_open += 1;
        }
        Ok(())
    }

    fn pop(&mut self) {
        let f = self.stack.pop().expect("pop on a non-empty stack");
        self.names.truncate(f.name_start);
        if self.first_open > self.stack.len() {
            self.first_open = self.stack.len();
        }
        if f.failed {
            if let Some(parent) = self.stack.last_mut() {
                parent.failed = true;
            }
        }
    }

    fn run(&mut self, top: &CStr) {
        let parent = self.parent;
        match open_dir_beneath(parent, top, 0).or_else(|e| match e {
            // The first open has no mount id to compare against yet.
            Errno::XDEV if OPENAT2_MISSING.load(Ordering::Relaxed) => {
                openat(parent, top, DIR_FLAGS, Mode::empty())
            }
            e => Err(e),
        }) {
            Ok(fd) => {
                match mount_id_of(fd.as_fd()) {
                    Ok(id) => self.mount_id = id,
                    Err(e) => return self.fail(Some(top), "statx", e),
                }
                if let Err(e) = self.push(fd, top) {
                    return self.fail(Some(top), "fstat", e);
                }
            }
            Err(Errno::NOENT) => {
                self.report.complete = true;
                return;
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                // Not a directory (never the case for our own trash entries,
                // but removing it without opening it is always safe).
                match unlinkat(parent, top, AtFlags::empty()) {
                    Ok(()) => {
                        self.report.removed += 1;
                        self.report.complete = true;
                    }
                    Err(e) => self.fail(Some(top), "unlink", e),
                }
                return;
            }
            Err(e) => return self.fail(Some(top), "open", e),
        }

        while !self.stack.is_empty() {
            let entry = {
                let top = self.stack.last_mut().expect("non-empty");
                let dir = top.dir.as_mut().expect("the top frame is always open");
                dir.read()
            };
            match entry {
                Some(Ok(entry)) => {
                    let name = entry.file_name();
                    if name == c"." || name == c".." {
                        continue;
                    }
                    let top = self.stack.last_mut().expect("non-empty");
                    top.pass_entries += 1;
                    if top.pass_entries > self.limits.max_pass_entries {
                        self.report.refilling = true;
                        self.fail(
                            None,
                            "keeps refilling (pass entry limit reached)",
                            Errno::NOTEMPTY,
                        );
                        self.stack.last_mut().expect("non-empty").failed = true;
                        if !self.finish_dir() {
                            return;
                        }
                        continue;
                    }
                    let name = name.to_owned();
                    match self.remove_entry(&name, entry.file_type()) {
                        Step::Removed => {}
                        Step::Failed => self.stack.last_mut().expect("non-empty").failed = true,
                        Step::Descend(fd) => {
                            if let Err(e) = self.push(fd, &name) {
                                self.fail(Some(&name), "fstat", e);
                                self.stack.last_mut().expect("non-empty").failed = true;
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    self.fail(None, "getdents", e);
                    self.stack.last_mut().expect("non-empty").failed = true;
                    if !self.finish_dir() {
                        return;
                    }
                }
                None => {
                    if !self.finish_dir() {
                        return;
                    }
                }
            }
        }
    }

    /// Removes one name in the top directory, unlinking before anything else.
    fn remove_entry(&mut self, name: &CStr, ty: FileType) -> Step {
        let dirfd = self.top_fd();
        if ty != FileType::Directory {
            match unlinkat(dirfd, name, AtFlags::empty()) {
                Ok(()) => {
                    self.report.removed += 1;
                    if self.report.removed == 8 {
                        crate::failpoint::hit("reap:mid-walk");
                    }
                    return Step::Removed;
                }
                Err(Errno::NOENT) => return Step::Removed,
                // Linux says EISDIR for unlink(2) of a directory (EPERM on
                // some filesystems): handle it as the directory it is.
                Err(Errno::ISDIR | Errno::PERM) => {}
                Err(e) => {
                    self.fail(Some(name), "unlink", e);
                    return Step::Failed;
                }
            }
        }
        match unlinkat(dirfd, name, AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.report.removed += 1;
                return Step::Removed;
            }
            Err(Errno::NOENT) => return Step::Removed,
            Err(Errno::NOTEMPTY | Errno::EXIST) => {}
            Err(Errno::NOTDIR) => return self.unlink_non_dir(name),
            Err(Errno::BUSY) => {
                self.report.mount_points += 1;
                self.fail(Some(name), "is a mount point, not crossed", Errno::BUSY);
                return Step::Failed;
            }
            Err(e) => {
                self.fail(Some(name), "rmdir", e);
                return Step::Failed;
            }
        }
        match open_dir_beneath(dirfd, name, self.mount_id) {
            Ok(fd) => Step::Descend(fd),
            Err(Errno::NOENT) => Step::Removed,
            // Swapped for a symlink or a file since the rmdir: unlink that.
            Err(Errno::LOOP | Errno::NOTDIR) => self.unlink_non_dir(name),
            Err(Errno::XDEV) => {
                self.report.mount_points += 1;
                self.fail(Some(name), "is a mount point, not crossed", Errno::XDEV);
                Step::Failed
            }
            Err(e) => {
                self.fail(Some(name), "open directory", e);
                Step::Failed
            }
        }
    }

    fn unlink_non_dir(&mut self, name: &CStr) -> Step {
        match unlinkat(self.top_fd(), name, AtFlags::empty()) {
            Ok(()) => {
                self.report.removed += 1;
                Step::Removed
            }
            Err(Errno::NOENT) => Step::Removed,
            Err(e) => {
                self.fail(Some(name), "unlink", e);
                Step::Failed
            }
        }
    }

    fn top_fd(&self) -> BorrowedFd<'_> {
        let dir = self
            .stack
            .last()
            .and_then(|f| f.dir.as_ref())
            .expect("top is open");
        dir.fd().expect("rustix Dir always has an fd")
    }

    /// The top directory was read to the end: remove it from its parent, or
    /// rescan it if it refilled. Returns false if the walk must stop.
    fn finish_dir(&mut self) -> bool {
        let depth = self.stack.len();
        if depth >= 2 && self.stack[depth - 2].dir.is_none() && !self.reopen_parent() {
            return false;
        }
        let top = &self.stack[depth - 1];
        if top.failed {
            self.pop();
            return true;
        }
        let parent_fd = if depth >= 2 {
            self.stack[depth - 2]
                .dir
                .as_ref()
                .and_then(|d| d.fd().ok())
                .expect("parent reopened")
        } else {
            self.parent
        };
        match unlinkat(parent_fd, self.name(depth - 1), AtFlags::REMOVEDIR) {
            Ok(()) => {
                self.report.removed += 1;
                if depth == 1 {
                    self.report.complete = true;
                }
                self.pop();
            }
            Err(Errno::NOTEMPTY | Errno::EXIST) => {
                let limit = self.limits.max_refills;
                let top = self.stack.last_mut().expect("non-empty");
                top.refills += 1;
                if top.refills > limit {
                    self.report.refilling = true;
                    self.fail(
                        None,
                        "keeps refilling (rescan limit reached)",
                        Errno::NOTEMPTY,
                    );
                    self.stack.last_mut().expect("non-empty").failed = true;
                    self.pop();
                } else {
                    top.pass_entries = 0;
                    top.dir.as_mut().expect("top is open").rewind();
                }
            }
            Err(Errno::NOENT) => self.pop(),
            Err(e) => {
                let busy = e == Errno::BUSY;
                self.report.mount_points += u64::from(busy);
                self.fail(None, "rmdir", e);
                self.stack.last_mut().expect("non-empty").failed = true;
                self.pop();
            }
        }
        true
    }

    /// Reopens the evicted parent of the top frame through `..`, checking
    /// that it is still the directory we came from.
    fn reopen_parent(&mut self) -> bool {
        let depth = self.stack.len();
        let result = openat(self.top_fd(), c"..", DIR_FLAGS, Mode::empty())
            .and_then(|fd| Ok((fstat(&fd)?, fd)));
        let parent = &self.stack[depth - 2];
        match result {
            Ok((st, fd)) if st.st_dev == parent.dev && st.st_ino == parent.ino => {
                match Dir::new(fd) {
                    Ok(dir) => {
                        self.stack[depth - 2].dir = Some(dir);
                        self.stack[depth - 2].pass_entries = 0;
                        self.first_open = depth - 2;
                        true
                    }
                    Err(e) => {
                        self.fail(None, "reopen parent", e);
                        false
                    }
                }
            }
            // Moved (or removed) under us: start again from the top.
            Ok(_) | Err(Errno::NOENT | Errno::STALE) => {
                self.restart = true;
                false
            }
            Err(e) => {
                self.fail(None, "reopen parent via ..", e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("bd-rmtree-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(p.join("trash")).unwrap();
            Scratch(p)
        }
        fn trash(&self) -> OwnedFd {
            rustix::fs::open(self.0.join("trash"), DIR_FLAGS, Mode::empty()).unwrap()
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn removes_a_mixed_tree_without_following_symlinks() {
        let s = Scratch::new("mixed");
        let outside = s.0.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"canary").unwrap();
        let t = s.0.join("trash/t");
        fs::create_dir_all(t.join("a/b/c")).unwrap();
        fs::write(t.join("a/b/c/f"), b"x").unwrap();
        symlink(&outside, t.join("a/link")).unwrap();
        symlink("../../..", t.join("a/b/up")).unwrap();
        fs::set_permissions(t.join("a/b"), fs::Permissions::from_mode(0o000)).unwrap();
        let r = remove_tree(s.trash().as_fd(), c"t", Limits::default());
        assert!(r.complete, "{r:?}");
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(!t.exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"canary");
    }

    #[test]
    fn deep_tree_with_tiny_fd_budget() {
        let s = Scratch::new("deep");
        let trash = s.trash();
        // Build 300 levels by fd (the path would exceed PATH_MAX quickly).
        rustix::fs::mkdirat(&trash, "t", Mode::RWXU).unwrap();
        let mut fd = openat(&trash, "t", DIR_FLAGS, Mode::empty()).unwrap();
        let long = "d".repeat(200);
        for _ in 0..300 {
            rustix::fs::mkdirat(&fd, long.as_str(), Mode::RWXU).unwrap();
            fd = openat(&fd, long.as_str(), DIR_FLAGS, Mode::empty()).unwrap();
        }
        drop(fd);
        let limits = Limits {
            max_open_dirs: 3,
            max_refills: 2,
            ..Limits::default()
        };
        let r = remove_tree(trash.as_fd(), c"t", limits);
        assert!(r.complete, "{r:?}");
        assert_eq!(r.removed, 301);
    }

    /// Builds `t/pN/m/<40 levels>` and `t/qN` for N in 0..movers, then
    /// deletes `t` with a 3-fd budget while threads rename each `m` between
    /// its `p` and its `q` in a tight loop: the deletion must still finish.
    #[test]
    fn ancestors_moved_during_the_reap_do_not_stop_it() {
        let s = Scratch::new("moving");
        let trash = s.trash();
        let t = s.0.join("trash/t");
        let movers = 8;
        for n in 0..movers {
            fs::create_dir_all(t.join(format!("q{n}"))).unwrap();
            let mut deep = t.join(format!("p{n}/m"));
            for _ in 0..40 {
                deep.push("d");
            }
            fs::create_dir_all(&deep).unwrap();
            fs::write(deep.join("f"), b"x").unwrap();
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..movers)
            .map(|n| {
                let p =
                    openat(&trash, format!("t/p{n}").as_str(), DIR_FLAGS, Mode::empty()).unwrap();
                let q =
                    openat(&trash, format!("t/q{n}").as_str(), DIR_FLAGS, Mode::empty()).unwrap();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut moves = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if rustix::fs::renameat(&p, "m", &q, "m").is_ok() {
                            moves += 1;
                        }
                        if rustix::fs::renameat(&q, "m", &p, "m").is_ok() {
                            moves += 1;
                        }
                    }
                    moves
                })
            })
            .collect();
        let limits = Limits {
            max_open_dirs: 3,
            ..Limits::default()
        };
        let r = remove_tree(trash.as_fd(), c"t", limits);
        stop.store(true, Ordering::Relaxed);
        let moves: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(moves > 0, "the movers never moved anything");
        assert!(r.complete, "{r:?}");
        assert!(!r.moved, "{r:?}");
        assert!(!t.exists());
    }

    #[test]
    fn missing_top_is_complete() {
        let s = Scratch::new("missing");
        let r = remove_tree(s.trash().as_fd(), c"nope", Limits::default());
        assert!(r.complete);
        assert_eq!(r.removed, 0);
    }

    #[test]
    fn fifo_is_removed_without_being_opened() {
        let s = Scratch::new("fifo");
        let t = s.0.join("trash/t");
        fs::create_dir(&t).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.join("fifo"),
            FileType::Fifo,
            Mode::RUSR | Mode::WUSR,
            0,
        )
        .unwrap();
        // Opening the FIFO for reading would block forever with no writer.
        let r = remove_tree(s.trash().as_fd(), c"t", Limits::default());
        assert!(r.complete, "{r:?}");
    }
}
