//! Deleting everything below a directory that must itself stay: the root
//! of a lease's tmpfs, which cannot be removed while it is mounted (and is
//! emptied before it is unmounted; see `backend::tmpfs_held`).
//!
//! Each entry is unlinked, or, a directory, deleted by [`remove_tree`]
//! with the directory as its parent, so every rule and bound of the
//! reaper holds below it. Like any
//! parent given to `remove_tree`, the directory must be one the build
//! cannot write: the caller closes it first (root's, mode 0000). Nothing
//! can then be added, renamed or swapped in it, so one pass over it sees
//! every entry; the pass is bounded by [`Limits::max_pass_entries`] all
//! the same.

use std::os::fd::BorrowedFd;

use rustix::fs::{unlinkat, AtFlags, Dir, FileType};
use rustix::io::Errno;

use crate::tree::remove::{remove_tree, Limits, Report};

/// Deletes every entry of `dir`, not `dir` itself. `complete` in the
/// report: every entry is gone.
pub fn empty_dir(dir: BorrowedFd<'_>, limits: Limits) -> Report {
    let mut report = Report {
        complete: true,
        ..Report::default()
    };
    // `read_from` reads through a descriptor of its own (`openat(".")`).
    let mut entries = match Dir::read_from(dir) {
        Ok(d) => d,
        Err(e) => {
            failed(&mut report, format!("open for reading: {e}"));
            return report;
        }
    };
    let mut seen = 0u64;
    while let Some(entry) = entries.read() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failed(&mut report, format!("getdents: {e}"));
                break;
            }
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        seen += 1;
        if seen > limits.max_pass_entries {
            report.refilling = true;
            failed(&mut report, "too many entries for one pass".into());
            break;
        }
        // Unlink first, as the walk does: a non-directory is never opened,
        // and most entries take one system call.
        if entry.file_type() != FileType::Directory {
            match unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => {
                    report.removed += 1;
                    continue;
                }
                Err(Errno::NOENT) => continue,
                // A directory after all (EISDIR; EPERM on some filesystems).
                Err(Errno::ISDIR | Errno::PERM) => {}
                Err(e) => {
                    failed(
                        &mut report,
                        format!("{}: unlink: {e}", name.to_string_lossy()),
                    );
                    continue;
                }
            }
        }
        let one = remove_tree(dir, name, limits);
        report.complete &= one.complete;
        report.add_counts(&one);
    }
    report
}

fn failed(report: &mut Report, what: String) {
    report.errors += 1;
    report.complete = false;
    report.first_error.get_or_insert(what);
}

impl Report {
    /// Adds what `other` (a deletion of another part of the same tree)
    /// did and found; `complete` is the caller's to decide.
    pub fn add_counts(&mut self, other: &Report) {
        self.removed += other.removed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.mount_points += other.mount_points;
        self.refilling |= other.refilling;
        self.moved |= other.moved;
        self.restarts += other.restarts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::AsFd;

    #[test]
    fn empties_a_directory_and_leaves_it_in_place() {
        let top = std::env::temp_dir().join(format!("bd-empty-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        fs::create_dir_all(top.join("d/e/f")).unwrap();
        fs::write(top.join("d/e/f/file"), b"x").unwrap();
        fs::write(top.join("file"), b"y").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("link")).unwrap();
        let fd = rustix::fs::open(
            &top,
            crate::host::layout::DIR_OPEN,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let report = empty_dir(fd.as_fd(), Limits::default());
        assert!(report.complete, "{report:?}");
        assert_eq!(report.removed, 6, "{report:?}");
        assert_eq!(fs::read_dir(&top).unwrap().count(), 0);
        assert!(fs::metadata("/etc/passwd").is_ok());
        // Nothing to do is done at once.
        let again = empty_dir(fd.as_fd(), Limits::default());
        assert!(again.complete && again.removed == 0, "{again:?}");
        fs::remove_dir(&top).unwrap();
    }

    #[test]
    fn a_pass_is_bounded() {
        let top = std::env::temp_dir().join(format!("bd-empty-bound-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        fs::create_dir_all(&top).unwrap();
        for i in 0..5 {
            fs::write(top.join(format!("f{i}")), b"").unwrap();
        }
        let fd = rustix::fs::open(
            &top,
            crate::host::layout::DIR_OPEN,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let limits = Limits {
            max_pass_entries: 2,
            ..Limits::default()
        };
        let report = empty_dir(fd.as_fd(), limits);
        assert!(!report.complete && report.refilling, "{report:?}");
        assert_eq!(report.removed, 2, "{report:?}");
        fs::remove_dir_all(&top).unwrap();
    }
}
