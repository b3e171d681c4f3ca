//! A read-mostly walk over a hostile tree, by fd: for sizes (`list
//! --size`, retention) and for handing a kept tree to its requester.
//!
//! Like the reaper it never follows a symlink or crosses a mount
//! (`openat2` beneath, via `rmtree::open_dir_beneath`) and never
//! opens a non-directory for I/O; entries are inspected with
//! `statx(AT_SYMLINK_NOFOLLOW)`. Depth is capped (each level holds one fd):
//! deeper subtrees are skipped and counted, never half-processed silently.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{fstat, statx, AtFlags, Dir, FileType, Stat, Statx, StatxFlags};
use rustix::io::Errno;

use crate::tree::remove::open_dir_beneath;

/// Directory levels held open at most.
pub const MAX_DEPTH: usize = 256;

/// What a walk saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalkReport {
    pub entries: u64,
    /// Allocated bytes; a file with n hard links counts 1/n of its blocks.
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Subtrees below [`MAX_DEPTH`], not visited.
    pub too_deep: u64,
}

impl WalkReport {
    pub fn fail(&mut self, what: &str, e: Errno) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e}"));
        }
    }
}

/// Called for every entry below the top.
pub trait Visitor {
    /// A non-directory `name` in `dir`, as `statx` saw it (not followed).
    fn entry(&mut self, _dir: BorrowedFd<'_>, _name: &CStr, _st: &Statx, _report: &mut WalkReport) {
    }
    /// A directory (the top included), opened by us.
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

/// Walks the directory `top` (not consumed beyond the walk).
pub fn walk(top: OwnedFd, visitor: &mut impl Visitor) -> WalkReport {
    let mut report = WalkReport::default();
    let mount_id = match statx(&top, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) {
        Ok(st) => st.stx_mnt_id,
        Err(e) => {
            report.fail("statx top", e);
            return report;
        }
    };
    let mut stack: Vec<Dir> = Vec::new();
    match enter(top, visitor, &mut report) {
        Some(d) => stack.push(d),
        None => return report,
    }
    loop {
        let depth = stack.len();
        let Some(dir) = stack.last_mut() else {
            break;
        };
        let entry = match dir.read() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) => {
                report.fail("getdents", e);
                stack.pop();
                continue;
            }
            Some(Ok(entry)) => entry,
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let name = name.to_owned();
        let dirfd = stack
            .last()
            .and_then(|d| d.fd().ok())
            .expect("rustix Dir has an fd");
        let st = match statx(dirfd, &name, AtFlags::SYMLINK_NOFOLLOW, STATX_WANT) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                report.fail("statx", e);
                continue;
            }
        };
        report.entries += 1;
        let nlink = u64::from(st.stx_nlink.max(1));
        if FileType::from_raw_mode(st.stx_mode.into()) != FileType::Directory {
            report.bytes += st.stx_blocks * 512 / nlink;
            visitor.entry(dirfd, &name, &st, &mut report);
            continue;
        }
        report.bytes += st.stx_blocks * 512;
        if depth >= MAX_DEPTH {
            report.too_deep += 1;
            continue;
        }
        match open_dir_beneath(dirfd, &name, mount_id) {
            Ok(fd) => {
                if let Some(d) = enter(fd, visitor, &mut report) {
                    stack.push(d);
                }
            }
            Err(Errno::NOENT) => {}
            Err(e) => report.fail("open directory", e),
        }
    }
    report
}

fn enter(fd: OwnedFd, visitor: &mut impl Visitor, report: &mut WalkReport) -> Option<Dir> {
    match fstat(&fd) {
        Ok(st) => visitor.dir(fd.as_fd(), &st, report),
        Err(e) => {
            report.fail("fstat", e);
            return None;
        }
    }
    match Dir::new(fd) {
        Ok(d) => Some(d),
        Err(e) => {
            report.fail("read directory", e);
            None
        }
    }
}
