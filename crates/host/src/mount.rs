//! The dedicated mount under `root`: set up idempotently, then verified on
//! the open directory fd so that what we check is what we serve.
//!
//! `mount --bind -o exec` is not enough on its own: the first bind ignores
//! per-mount flags, so the bind is followed by `MS_REMOUNT|MS_BIND` with
//! exactly `nosuid,nodev` (and not `noexec`).

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{fstatvfs, statx, AtFlags, Mode, OFlags, StatVfsMountFlags, StatxFlags, CWD};
use rustix::mount::{
    mount, mount_bind, mount_change, mount_remount, MountFlags, MountPropagationFlags,
};

use crate::config::Backing;

/// Why the root cannot be served. Every message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a symlink; set root to a path without symlinks (the real path is {real})")]
    Symlink { path: PathBuf, real: String },
    #[error("root {path} is not a directory; point root at a directory")]
    NotADirectory { path: PathBuf },
    #[error("root {path} is owned by uid {uid}, not root; run `chown root:root {path}`")]
    NotOwnedByRoot { path: PathBuf, uid: u32 },
    #[error(
        "root {path} has mode {mode:04o}, writable by group or others; run `chmod go-w {path}`"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("root {path} is not a mount point; use backing = \"bind\" or \"tmpfs\", or mount it yourself (nosuid,nodev,exec)")]
    NotAMountPoint { path: PathBuf },
    #[error("root {path} is mounted noexec; builds could not run what they build — remount it exec (mount -o remount,exec {path}) or use backing = \"bind\"")]
    Noexec { path: PathBuf },
    #[error(
        "root {path} is mounted without {flag}; remount it with `mount -o remount,{flag} {path}`"
    )]
    MissingFlag { path: PathBuf, flag: &'static str },
    #[error("root {path} has shared mount propagation; run `mount --make-private {path}`")]
    Shared { path: PathBuf },
    #[error(
        "{what} {path} failed: {source}; builddird needs CAP_SYS_ADMIN in the host mount namespace"
    )]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustix::io::Errno,
    },
}

/// The verified root, held open for the daemon's lifetime.
#[derive(Debug)]
pub struct VerifiedRoot {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub mount_id: u64,
    pub fstype: String,
}

/// The flags `fstatvfs` reports for a root, as the daemon shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountFlagsSeen {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

fn io_err<'p>(
    context: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> MountError + 'p {
    move |source| MountError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

/// Refuses a root that is, or lies below, a symlink.
pub fn check_no_symlinks(root: &Path) -> Result<(), MountError> {
    let mut prefix = PathBuf::new();
    for part in root.components() {
        prefix.push(part);
        match fs::symlink_metadata(&prefix) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let real = fs::canonicalize(&prefix)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("unresolvable: {e}"));
                return Err(MountError::Symlink { path: prefix, real });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot inspect", &prefix)(e)),
        }
    }
    Ok(())
}

/// Returns true if and only if `path` is the root of a mount (its mount id
/// differs from its parent's). Compared by mount id, not `st_dev`: a bind
/// mount of the same filesystem has the same device.
pub fn is_mount_point(path: &Path) -> Result<bool, MountError> {
    let here = mount_id_of(path)?;
    let parent = mount_id_of(&path.join(".."))?;
    Ok(here != parent)
}

fn mount_id_of(path: &Path) -> Result<u64, MountError> {
    let st = statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)
        .map_err(|e| io_err("cannot statx", path)(e.into()))?;
    Ok(st.stx_mnt_id)
}

/// Makes `root` the dedicated mount (idempotent: an existing mount point is
/// only remounted with the right flags).
pub fn prepare(root: &Path, backing: Backing, tmpfs_size: &str) -> Result<(), MountError> {
    check_no_symlinks(root)?;
    if !root.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(io_err("cannot create root", root))?;
    }
    check_no_symlinks(root)?;
    let mounted = is_mount_point(root)?;
    if backing == Backing::Bind && !mounted {
        // Refuse before mounting anything: a bind mount keeps the
        // directory's owner and mode, which verify() would reject anyway.
        check_owner_and_mode(
            root,
            &fs::metadata(root).map_err(io_err("cannot stat root", root))?,
        )?;
    }
    let mount_err = |what| {
        move |source| MountError::Mount {
            what,
            path: root.to_owned(),
            source,
        }
    };
    match backing {
        Backing::External => return Ok(()),
        Backing::Bind if !mounted => {
            mount_bind(root, root).map_err(mount_err("bind-mounting root onto itself"))?;
        }
        Backing::Tmpfs if !mounted => {
            let data = format!("mode=0755,size={tmpfs_size}");
            mount(
                "builddird",
                root,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                Some(
                    std::ffi::CString::new(data)
                        .expect("no NUL in size")
                        .as_c_str(),
                ),
            )
            .map_err(mount_err("mounting tmpfs on root"))?;
        }
        _ => {}
    }
    // Only the per-mount flags change here (MS_BIND with MS_REMOUNT), never
    // the filesystem's own options; leaving out MS_NOEXEC clears it.
    mount_remount(
        root,
        MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(mount_err("remounting root nosuid,nodev,exec"))?;
    mount_change(root, MountPropagationFlags::PRIVATE)
        .map_err(mount_err("making root's propagation private"))?;
    Ok(())
}

/// Opens `root` and checks, on the fd, everything the daemon relies on.
pub fn verify(root: &Path) -> Result<VerifiedRoot, MountError> {
    check_no_symlinks(root)?;
    let fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOTDIR => MountError::NotADirectory {
            path: root.to_owned(),
        },
        e => io_err("cannot open root", root)(e.into()),
    })?;
    let meta = fs::metadata(root).map_err(io_err("cannot stat root", root))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err("cannot stat root", root)(e.into()))?;
    if meta.ino() != st.st_ino {
        // The path moved between open and stat: refuse rather than guess.
        return Err(MountError::Io {
            context: "root changed while being verified",
            path: root.to_owned(),
            source: std::io::ErrorKind::Other.into(),
        });
    }
    check_owner_and_mode(root, &meta)?;
    if !is_mount_point(root)? {
        return Err(MountError::NotAMountPoint {
            path: root.to_owned(),
        });
    }
    let flags = flags_of(&fd).map_err(|e| io_err("cannot statvfs root", root)(e))?;
    if flags.noexec {
        return Err(MountError::Noexec {
            path: root.to_owned(),
        });
    }
    for (set, flag) in [(flags.nosuid, "nosuid"), (flags.nodev, "nodev")] {
        if !set {
            return Err(MountError::MissingFlag {
                path: root.to_owned(),
                flag,
            });
        }
    }
    let mount_id = statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .map_err(|e| io_err("cannot statx root", root)(e.into()))?
        .stx_mnt_id;
    let info =
        mountinfo_line(mount_id).map_err(io_err("cannot read /proc/self/mountinfo for", root))?;
    let (shared, fstype) = info
        .map(|line| parse_mountinfo(&line))
        .unwrap_or((false, String::new()));
    if shared {
        return Err(MountError::Shared {
            path: root.to_owned(),
        });
    }
    Ok(VerifiedRoot {
        path: root.to_owned(),
        fd,
        mount_id,
        fstype,
    })
}

fn check_owner_and_mode(root: &Path, meta: &fs::Metadata) -> Result<(), MountError> {
    if meta.uid() != 0 {
        return Err(MountError::NotOwnedByRoot {
            path: root.to_owned(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(MountError::Writable {
            path: root.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// The mount flags of the filesystem that `fd` lives on.
pub fn flags_of(fd: impl AsFd) -> std::io::Result<MountFlagsSeen> {
    let vfs = fstatvfs(fd)?;
    Ok(MountFlagsSeen {
        nosuid: vfs.f_flag.contains(StatVfsMountFlags::NOSUID),
        nodev: vfs.f_flag.contains(StatVfsMountFlags::NODEV),
        noexec: vfs.f_flag.contains(StatVfsMountFlags::NOEXEC),
    })
}

fn mountinfo_line(mount_id: u64) -> std::io::Result<Option<String>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let id = mount_id.to_string();
    Ok(text
        .lines()
        .find(|l| l.split(' ').next() == Some(id.as_str()))
        .map(str::to_owned))
}

/// The filesystem type of the mount that `fd` lives on ("" if unknown).
pub fn fstype_of(fd: impl AsFd) -> String {
    statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .ok()
        .and_then(|st| mountinfo_line(st.stx_mnt_id).ok().flatten())
        .map(|line| parse_mountinfo(&line).1)
        .unwrap_or_default()
}

/// Returns true if and only if mount `mount_id` has `source` as its
/// source (the field after the filesystem type in mountinfo).
pub fn mount_source_is(mount_id: u64, source: &str) -> bool {
    matches!(mountinfo_line(mount_id), Ok(Some(line)) if line
        .split(" - ")
        .nth(1)
        .and_then(|tail| tail.split(' ').nth(1))
        == Some(source))
}

/// The ids of every mount in this namespace whose source is `source`: one
/// read of mountinfo for many questions (see [`mount_source_is`]).
pub fn mount_ids_with_source(source: &str) -> std::io::Result<std::collections::HashSet<u64>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .and_then(|tail| tail.split(' ').nth(1))
                == Some(source)
        })
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect())
}

/// Returns (shared propagation?, filesystem type) of one mountinfo line.
fn parse_mountinfo(line: &str) -> (bool, String) {
    let mut fields = line.split(' ').skip(6);
    let mut shared = false;
    for f in fields.by_ref() {
        if f == "-" {
            break;
        }
        shared |= f.starts_with("shared:");
    }
    (shared, fields.next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_propagation_and_type() {
        let l = "36 35 98:0 / /var/lib/builddird rw,nosuid,nodev shared:7 - ext4 /dev/vda rw";
        assert_eq!(parse_mountinfo(l), (true, "ext4".into()));
        let l = "36 35 0:52 / /var/lib/builddird rw,nosuid,nodev - tmpfs builddird rw,size=10k";
        assert_eq!(parse_mountinfo(l), (false, "tmpfs".into()));
    }

    #[test]
    fn symlinked_parent_is_refused() {
        let dir = std::env::temp_dir().join(format!("bd-mount-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("real/root")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let err = check_no_symlinks(&dir.join("link/root")).unwrap_err();
        assert!(matches!(err, MountError::Symlink { .. }), "{err}");
        assert!(check_no_symlinks(&dir.join("real/root")).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
