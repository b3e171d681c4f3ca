//! A read-mostly walk over a hostile tree, by fd: for sizes (`list
//! --size`, retention) and for handing a kept tree to its requester.
//!
//! The build user can change the tree while we walk it (it keeps its
//! directory fd after the lease ends, and inotify tells it where we are), so
//! the walk is bounded in everything it spends and says when it stopped:
//!
//! - like the reaper it never follows a symlink or crosses a mount
//!   (`openat2` beneath, via [`open_dir_beneath`]) and never opens a
//!   non-directory; entries are inspected with `statx(AT_SYMLINK_NOFOLLOW)`;
//! - no recursion: the stack is on the heap, and at most
//!   [`Limits::max_open_dirs`] directories are open. Older ancestors are
//!   closed and, on the way back up, reopened through `..`, checked against
//!   the device and inode recorded on the way down, and resumed where they
//!   were (`seekdir` to the offset of the last entry read);
//! - every directory entered is remembered by device and inode: meeting one
//!   again means the tree was rearranged under the walk (a subtree moved
//!   from where we had been to where we had not yet been), so the walk stops
//!   instead of counting — or handing over — the same inodes again and
//!   again;
//! - entries, bytes, depth and wall time are capped ([`Limits`]).
//!
//! A walk that stopped early ([`WalkReport::stopped`]) did not reach every
//! entry: its byte count is a lower bound, never a size, and a hand-over it
//! drove is not complete. Callers must check [`WalkReport::complete`].

use std::collections::HashSet;
use std::ffi::CStr;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{
    fstat, openat, statx, AtFlags, Dir, FileType, Mode, OFlags, Stat, Statx, StatxFlags,
};
use rustix::io::Errno;

use crate::tree::remove::open_dir_beneath;

/// Bounds on one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries (files, links, directories) looked at.
    pub max_entries: u64,
    /// Allocated bytes counted.
    pub max_bytes: u64,
    /// Directory levels below the top.
    pub max_depth: usize,
    /// Wall time.
    pub max_time: Duration,
    /// Directory descriptors held open at once.
    pub max_open_dirs: usize,
}

impl Default for Limits {
    /// Generous for real build trees (a Linux kernel build has ~100 000
    /// entries, a few dozen levels), small enough that one walk costs at
    /// most seconds of one thread, 16 fds and tens of MB of memory.
    fn default() -> Limits {
        Limits {
            max_entries: 2_000_000,
            max_bytes: u64::MAX,
            max_depth: 4096,
            max_time: Duration::from_secs(60),
            max_open_dirs: 16,
        }
    }
}

/// Why a walk stopped before reaching every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// [`Limits::max_entries`] reached.
    Entries,
    /// [`Limits::max_bytes`] reached.
    Bytes,
    /// A directory deeper than [`Limits::max_depth`].
    Depth,
    /// [`Limits::max_time`] passed.
    Time,
    /// A directory already entered was met again: the tree was rearranged
    /// under the walk.
    Revisit,
    /// An ancestor closed to respect the fd budget is not where the walk
    /// left it: the tree was rearranged under the walk.
    Moved,
    /// The top directory could not be opened or read.
    Top,
}

impl Stopped {
    /// Short and stable, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stopped::Entries => "entries",
            Stopped::Bytes => "bytes",
            Stopped::Depth => "depth",
            Stopped::Time => "time",
            Stopped::Revisit => "revisit",
            Stopped::Moved => "moved",
            Stopped::Top => "top",
        }
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stopped::Entries => "the tree has more entries than a walk may visit",
            Stopped::Bytes => "the tree holds more bytes than allowed",
            Stopped::Depth => "the tree is nested deeper than a walk may go",
            Stopped::Time => "the walk took longer than allowed",
            Stopped::Revisit => "the tree changed during the walk (a directory showed up twice)",
            Stopped::Moved => "the tree changed during the walk (a directory was moved)",
            Stopped::Top => "the tree's top directory could not be read",
        })
    }
}

/// What a walk saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalkReport {
    pub entries: u64,
    /// Allocated bytes; a file with n hard links counts 1/n of its blocks.
    /// A lower bound if the walk stopped early.
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Why the walk ended before reaching every entry; `None` if it did.
    pub stopped: Option<Stopped>,
    /// Most directories open at once (the walk's fd use).
    pub max_open: usize,
}

impl WalkReport {
    pub fn fail(&mut self, what: &str, e: Errno) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e}"));
        }
    }

    /// True if and only if the walk reached every entry (some may still
    /// have failed: see [`WalkReport::errors`]).
    pub fn complete(&self) -> bool {
        self.stopped.is_none()
    }

    /// The size, if and only if the walk reached every entry.
    pub fn size(&self) -> Option<u64> {
        self.complete().then_some(self.bytes)
    }
}

/// Called for every entry below the top.
pub trait Visitor {
    /// A non-directory `name` in `dir`, as `statx` saw it (not followed).
    fn entry(&mut self, _dir: BorrowedFd<'_>, _name: &CStr, _st: &Statx, _report: &mut WalkReport) {
    }
    /// A directory (the top included), opened by us, entered once.
    fn dir(&mut self, _fd: BorrowedFd<'_>, _st: &Stat, _report: &mut WalkReport) {}
}

/// Sizes only.
#[derive(Debug)]
pub struct JustSize;
impl Visitor for JustSize {}

const STATX_WANT: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::MODE)
    .union(StatxFlags::UID)
    .union(StatxFlags::GID)
    .union(StatxFlags::NLINK)
    .union(StatxFlags::BLOCKS)
    .union(StatxFlags::INO);

const DOTDOT_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One directory on the walk's stack.
struct Frame {
    /// The open stream; `None` while closed to respect the fd budget.
    dir: Option<Dir>,
    dev: u64,
    ino: u64,
    /// The position after the last entry read, to resume after a reopen.
    offset: i64,
}

struct Walk<'v, V: Visitor> {
    limits: Limits,
    deadline: Instant,
    mount_id: u64,
    stack: Vec<Frame>,
    /// Frames `stack[first_open..]` are open; those below are closed.
    first_open: usize,
    /// Every directory entered, by (device, inode).
    entered: HashSet<(u64, u64)>,
    visitor: &'v mut V,
    report: WalkReport,
}

/// Walks the directory `top` within the default [`Limits`].
pub fn walk(top: OwnedFd, visitor: &mut impl Visitor) -> WalkReport {
    walk_within(top, visitor, Limits::default())
}

/// Walks the directory `top` (consumed), calling `visitor` once per entry,
/// and stops at the first bound reached.
pub fn walk_within(top: OwnedFd, visitor: &mut impl Visitor, limits: Limits) -> WalkReport {
    let mut walk = Walk {
        limits,
        deadline: Instant::now() + limits.max_time,
        mount_id: 0,
        stack: Vec::new(),
        first_open: 0,
        entered: HashSet::new(),
        visitor,
        report: WalkReport::default(),
    };
    if let Err(stop) = walk.run(top) {
        walk.report.stopped = Some(stop);
    }
    walk.report
}

impl<V: Visitor> Walk<'_, V> {
    fn run(&mut self, top: OwnedFd) -> Result<(), Stopped> {
        self.mount_id = match statx(&top, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) {
            Ok(st) => st.stx_mnt_id,
            Err(e) => {
                self.report.fail("statx top", e);
                return Err(Stopped::Top);
            }
        };
        if !self.enter(top)? {
            return Err(Stopped::Top);
        }
        while let Some(frame) = self.stack.last_mut() {
            let dir = frame
                .dir
                .as_mut()
                .expect("the deepest frame is always open");
            let entry = match dir.read() {
                None => {
                    self.leave()?;
                    continue;
                }
                Some(Err(e)) => {
                    self.report.fail("getdents", e);
                    self.leave()?;
                    continue;
                }
                Some(Ok(entry)) => entry,
            };
            frame.offset = entry.offset();
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.visit(name)?;
        }
        Ok(())
    }

    /// Looks at one name in the deepest directory.
    fn visit(&mut self, name: &CStr) -> Result<(), Stopped> {
        if Instant::now() >= self.deadline {
            return Err(Stopped::Time);
        }
        self.report.entries += 1;
        if self.report.entries > self.limits.max_entries {
            return Err(Stopped::Entries);
        }
        let dirfd = deepest_fd(&self.stack);
        let st = match statx(dirfd, name, AtFlags::SYMLINK_NOFOLLOW, STATX_WANT) {
            Ok(st) => st,
            // Removed since the readdir (by its owner): nothing to count.
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => {
                self.report.fail("statx", e);
                return Ok(());
            }
        };
        let is_dir = FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory;
        let nlink = if is_dir {
            1
        } else {
            u64::from(st.stx_nlink.max(1))
        };
        self.report.bytes = self
            .report
            .bytes
            .saturating_add(st.stx_blocks.saturating_mul(512) / nlink);
        if self.report.bytes > self.limits.max_bytes {
            return Err(Stopped::Bytes);
        }
        if !is_dir {
            self.visitor.entry(dirfd, name, &st, &mut self.report);
            return Ok(());
        }
        if self.stack.len() > self.limits.max_depth {
            return Err(Stopped::Depth);
        }
        match open_dir_beneath(dirfd, name, self.mount_id) {
            Ok(fd) => {
                self.enter(fd)?;
            }
            Err(Errno::NOENT) => {}
            Err(Errno::XDEV) => self
                .report
                .fail("mount point inside the tree, not crossed", Errno::XDEV),
            Err(e) => self.report.fail("open directory", e),
        }
        Ok(())
    }

    /// Pushes the directory `fd` (unless it was entered before) and shows
    /// it to the visitor. Returns false if it could not be read.
    fn enter(&mut self, fd: OwnedFd) -> Result<bool, Stopped> {
        let st = match fstat(&fd) {
            Ok(st) => st,
            Err(e) => {
                self.report.fail("fstat", e);
                return Ok(false);
            }
        };
        if !self.entered.insert((st.st_dev, st.st_ino)) {
            return Err(Stopped::Revisit);
        }
        self.visitor.dir(fd.as_fd(), &st, &mut self.report);
        let dir = match Dir::new(fd) {
            Ok(d) => d,
            Err(e) => {
                self.report.fail("read directory", e);
                return Ok(false);
            }
        };
        self.stack.push(Frame {
            dir: Some(dir),
            dev: st.st_dev,
            ino: st.st_ino,
            offset: 0,
        });
        // Keep the fd budget: close the oldest open ancestor.
        if self.stack.len() - self.first_open > self.limits.max_open_dirs.max(2) {
            self.stack[self.first_open].dir = None;
            self.first_open += 1;
        }
        self.report.max_open = self.report.max_open.max(self.stack.len() - self.first_open);
        Ok(true)
    }

    /// The deepest directory was read to its end: go back to its parent,
    /// reopening the parent if it was closed.
    fn leave(&mut self) -> Result<(), Stopped> {
        let depth = self.stack.len();
        if depth >= 2 && self.stack[depth - 2].dir.is_none() {
            self.reopen_parent()?;
        }
        self.stack.pop();
        self.first_open = self.first_open.min(self.stack.len());
        Ok(())
    }

    /// Reopens the closed parent of the deepest frame through `..`, checks
    /// that it is still the directory we came from, and resumes reading it
    /// after the last entry read.
    fn reopen_parent(&mut self) -> Result<(), Stopped> {
        let depth = self.stack.len();
        let fd =
            openat(deepest_fd(&self.stack), c"..", DOTDOT_FLAGS, Mode::empty()).map_err(|e| {
                self.report.fail("reopen parent via ..", e);
                Stopped::Moved
            })?;
        let st = fstat(&fd).map_err(|e| {
            self.report.fail("fstat parent", e);
            Stopped::Moved
        })?;
        let parent = &self.stack[depth - 2];
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
            return Err(Stopped::Moved);
        }
        let offset = parent.offset;
        let mut dir = Dir::new(fd).map_err(|e| {
            self.report.fail("read directory", e);
            Stopped::Moved
        })?;
        dir.seek(offset).map_err(|e| {
            self.report.fail("seekdir", e);
            Stopped::Moved
        })?;
        self.stack[depth - 2].dir = Some(dir);
        self.first_open = depth - 2;
        Ok(())
    }
}

/// The deepest directory on the stack, which is always open.
fn deepest_fd(stack: &[Frame]) -> BorrowedFd<'_> {
    stack
        .last()
        .and_then(|f| f.dir.as_ref())
        .and_then(|d| d.fd().ok())
        .expect("the deepest frame is always open")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::mkdirat;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("bd-walk-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
        fn open(&self) -> OwnedFd {
            rustix::fs::open(&self.0, DOTDOT_FLAGS, Mode::empty()).unwrap()
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Builds `levels` nested directories named `name` under `at`, by fd.
    fn chain(at: BorrowedFd<'_>, name: &str, levels: usize) -> OwnedFd {
        let mut fd = openat(at, c".", DOTDOT_FLAGS, Mode::empty()).unwrap();
        for _ in 0..levels {
            mkdirat(&fd, name, Mode::RWXU).unwrap();
            fd = openat(&fd, name, DOTDOT_FLAGS, Mode::empty()).unwrap();
        }
        fd
    }

    #[test]
    fn counts_every_entry_and_does_not_follow_symlinks() {
        let s = Scratch::new("count");
        fs::create_dir_all(s.0.join("a/b")).unwrap();
        fs::write(s.0.join("a/b/f"), vec![1u8; 10_000]).unwrap();
        symlink("/", s.0.join("a/root")).unwrap();
        symlink("..", s.0.join("a/b/up")).unwrap();
        let r = walk(s.open(), &mut JustSize);
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.entries, 5, "{r:?}");
        assert!(r.bytes >= 10_000, "{r:?}");
        assert_eq!(r.size(), Some(r.bytes));
    }

    #[test]
    fn deep_tree_within_a_tiny_fd_budget_is_complete() {
        let s = Scratch::new("deep");
        let top = s.open();
        drop(chain(top.as_fd(), "d", 300));
        // A sibling at every few levels, read after the reopen through `..`.
        let mut fd = openat(&top, c".", DOTDOT_FLAGS, Mode::empty()).unwrap();
        for level in 0..300 {
            if level % 7 == 0 {
                mkdirat(&fd, "zz-sibling", Mode::RWXU).unwrap();
            }
            fd = openat(&fd, "d", DOTDOT_FLAGS, Mode::empty()).unwrap();
        }
        drop(fd);
        let limits = Limits {
            max_open_dirs: 3,
            ..Limits::default()
        };
        let r = walk_within(top, &mut JustSize, limits);
        assert!(r.complete(), "{r:?}");
        assert_eq!(r.entries, 300 + 300_u64.div_ceil(7), "{r:?}");
        assert!(r.max_open <= 3, "{r:?}");
    }

    #[test]
    fn too_deep_stops_and_says_so() {
        let s = Scratch::new("toodeep");
        let top = s.open();
        drop(chain(top.as_fd(), "d", 50));
        let limits = Limits {
            max_depth: 20,
            ..Limits::default()
        };
        let r = walk_within(top, &mut JustSize, limits);
        assert_eq!(r.stopped, Some(Stopped::Depth), "{r:?}");
        assert_eq!(r.size(), None);
    }

    #[test]
    fn entry_and_byte_caps_stop_the_walk() {
        let s = Scratch::new("caps");
        for i in 0..100 {
            fs::write(s.0.join(format!("f{i}")), vec![0u8; 8192]).unwrap();
        }
        let r = walk_within(
            s.open(),
            &mut JustSize,
            Limits {
                max_entries: 10,
                ..Limits::default()
            },
        );
        assert_eq!(r.stopped, Some(Stopped::Entries), "{r:?}");
        assert_eq!(r.entries, 11);
        let r = walk_within(
            s.open(),
            &mut JustSize,
            Limits {
                max_bytes: 100_000,
                ..Limits::default()
            },
        );
        assert_eq!(r.stopped, Some(Stopped::Bytes), "{r:?}");
        assert!(r.entries < 100, "{r:?}");
    }

    /// Moves the subtree `first/sub` to `last/sub` the moment the walk
    /// enters it: the walk then meets it again under `last`, and must stop.
    struct MoveOnEnter {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
        moved: bool,
    }
    impl Visitor for MoveOnEnter {
        fn dir(&mut self, _fd: BorrowedFd<'_>, st: &Stat, _report: &mut WalkReport) {
            if !self.moved && st.st_ino == self.ino {
                fs::rename(&self.from, &self.to).unwrap();
                self.moved = true;
            }
        }
    }

    #[test]
    fn a_subtree_moved_ahead_of_the_walk_stops_it_as_a_revisit() {
        let s = Scratch::new("revisit");
        for i in 0..4 {
            fs::create_dir(s.0.join(format!("d{i}"))).unwrap();
        }
        // Readdir order is the filesystem's: the walk goes where it says.
        let order: Vec<PathBuf> = fs::read_dir(&s.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let (first, last) = (&order[0], &order[order.len() - 1]);
        fs::create_dir_all(first.join("sub/x/y")).unwrap();
        let mut v = MoveOnEnter {
            from: first.join("sub/x"),
            to: last.join("x"),
            ino: std::os::unix::fs::MetadataExt::ino(&fs::metadata(first.join("sub/x")).unwrap()),
            moved: false,
        };
        let r = walk(s.open(), &mut v);
        assert!(v.moved, "the visitor never moved the subtree: {r:?}");
        assert_eq!(r.stopped, Some(Stopped::Revisit), "{r:?}");
        assert_eq!(r.size(), None);
    }

    #[test]
    fn an_ancestor_moved_while_closed_stops_the_walk() {
        let s = Scratch::new("moved");
        let top = s.open();
        fs::create_dir_all(s.0.join("p1")).unwrap();
        fs::create_dir_all(s.0.join("p2")).unwrap();
        let p1 = openat(&top, c"p1", DOTDOT_FLAGS, Mode::empty()).unwrap();
        drop(chain(p1.as_fd(), "d", 10));

        /// Moves `p1/d` to `p2/d` when the walk is deep inside it.
        struct MoveDeep {
            top: PathBuf,
            seen: usize,
        }
        impl Visitor for MoveDeep {
            fn dir(&mut self, _fd: BorrowedFd<'_>, _st: &Stat, _r: &mut WalkReport) {
                self.seen += 1;
                let from = self.top.join("p1/d");
                if self.seen == 8 && from.exists() {
                    fs::rename(from, self.top.join("p2/d")).unwrap();
                }
            }
        }
        let mut v = MoveDeep {
            top: s.0.clone(),
            seen: 0,
        };
        let limits = Limits {
            max_open_dirs: 2,
            ..Limits::default()
        };
        let r = walk_within(top, &mut v, limits);
        assert!(!r.complete(), "{r:?}");
        assert!(
            matches!(r.stopped, Some(Stopped::Moved | Stopped::Revisit)),
            "{r:?}"
        );
    }

    #[test]
    fn time_cap_stops_the_walk() {
        let s = Scratch::new("time");
        fs::write(s.0.join("f"), b"x").unwrap();
        let r = walk_within(
            s.open(),
            &mut JustSize,
            Limits {
                max_time: Duration::ZERO,
                ..Limits::default()
            },
        );
        assert_eq!(r.stopped, Some(Stopped::Time), "{r:?}");
    }
}
