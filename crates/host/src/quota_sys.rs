//! The kernel interfaces project quotas need that neither std nor rustix
//! wraps: `quotactl_fd(2)` and the `FS_IOC_FS{GET,SET}XATTR` ioctls.
//!
//! One of the three modules of the workspace that opt back in to `unsafe`
//! (with `builddir_server::systemd::listen_fds` and `builddir_server::trim`). Every call passes a pointer to a
//! local `#[repr(C)]` value whose layout is the kernel's UAPI struct, sized
//! and checked at compile time below, and borrows the fd for the call only.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Getter, Setter};

/// `PRJQUOTA` from `<linux/quota.h>`.
const PRJQUOTA: libc::c_int = 2;
/// `Q_XGETQSTATV` = `XQM_CMD(8)` from `<linux/dqblk_xfs.h>`.
const Q_XGETQSTATV: libc::c_int = (('X' as libc::c_int) << 8) + 8;
/// `FS_QSTATV_VERSION1`: the only version of `fs_quota_statv`.
const FS_QSTATV_VERSION1: i8 = 1;
/// `FS_QUOTA_PDQ_ACCT` / `FS_QUOTA_PDQ_ENFD`: project usage is accounted /
/// project limits are enforced.
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
/// `FS_XFLAG_PROJINHERIT`: new entries in a directory take its project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// Quota block limits are in units of `QIF_DQBLKSIZE` (1 KiB).
pub const QUOTA_BLOCK: u64 = 1024;

/// `struct fs_qfilestatv` (`<linux/dqblk_xfs.h>`).
#[repr(C)]
#[derive(Default)]
struct FsQfilestatv {
    ino: u64,
    nblks: u64,
    nextents: u32,
    pad: u32,
}

/// `struct fs_quota_statv` (`<linux/dqblk_xfs.h>`).
#[repr(C)]
#[derive(Default)]
struct FsQuotaStatv {
    version: i8,
    pad1: u8,
    flags: u16,
    incoredqs: u32,
    uquota: FsQfilestatv,
    gquota: FsQfilestatv,
    pquota: FsQfilestatv,
    btimelimit: i32,
    itimelimit: i32,
    rtbtimelimit: i32,
    bwarnlimit: u16,
    iwarnlimit: u16,
    rtbwarnlimit: u16,
    pad3: u16,
    pad4: u32,
    pad2: [u64; 7],
}

/// `struct fsxattr` (`<linux/fs.h>`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

// The UAPI sizes; a mismatch would make the kernel read or write past our
// values, so it must not compile.
const _: () = assert!(std::mem::size_of::<FsQuotaStatv>() == 160);
const _: () = assert!(std::mem::size_of::<FsXattr>() == 28);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<libc::dqblk>() == 72);

const FS_IOC_FSGETXATTR: rustix::ioctl::Opcode = opcode::read::<FsXattr>(b'X', 31);
const FS_IOC_FSSETXATTR: rustix::ioctl::Opcode = opcode::write::<FsXattr>(b'X', 32);

/// `quotactl_fd(fd, QCMD(cmd, PRJQUOTA), id, addr)`.
///
/// # Safety
/// `addr` must point to a live, writable value of the type `cmd` reads
/// and writes.
unsafe fn quotactl_prj(
    fs: BorrowedFd<'_>,
    cmd: libc::c_int,
    id: u32,
    addr: *mut libc::c_void,
) -> Result<(), Errno> {
    // The kernel takes the command as an unsigned int: pass its bits, not
    // a sign-extended negative number.
    let qcmd = libc::QCMD(cmd, PRJQUOTA) as u32;
    // SAFETY: `fs` is a borrowed, open fd for the duration of the call;
    // the caller guarantees `addr`; the syscall takes exactly these four
    // arguments and returns 0 or -1 with errno.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fs.as_raw_fd() as libc::c_long,
            qcmd as libc::c_long,
            id as libc::c_long,
            addr,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO)
}

/// Returns true if and only if the kernel has `quotactl_fd` (Linux 5.14):
/// on a closed fd it fails with `EBADF`, where a missing call is `ENOSYS`.
pub fn quotactl_fd_exists() -> bool {
    // SAFETY: fd -1 is never open and `addr` is null: the kernel rejects
    // the call before it could touch memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            -1 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    rc == 0 || last_errno() != Errno::NOSYS
}

/// Project quota state of the filesystem holding `fs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectState {
    /// The kernel tracks per-project usage.
    pub accounting: bool,
    /// The kernel enforces per-project limits.
    pub enforcing: bool,
}

/// `Q_XGETQSTATV`: whether project quotas are accounted and enforced.
pub fn project_state(fs: BorrowedFd<'_>) -> Result<ProjectState, Errno> {
    let mut statv = FsQuotaStatv {
        version: FS_QSTATV_VERSION1,
        ..FsQuotaStatv::default()
    };
    // SAFETY: `statv` is a live `fs_quota_statv`, the type Q_XGETQSTATV
    // fills; its version field is set as the kernel requires.
    unsafe { quotactl_prj(fs, Q_XGETQSTATV, 0, (&raw mut statv).cast())? };
    Ok(ProjectState {
        accounting: statv.flags & FS_QUOTA_PDQ_ACCT != 0,
        enforcing: statv.flags & FS_QUOTA_PDQ_ENFD != 0,
    })
}

/// One project's usage and limits, in bytes and inodes (0 = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectUsage {
    pub bytes: u64,
    pub inodes: u64,
    pub limit_bytes: u64,
    pub limit_inodes: u64,
}

/// `Q_GETQUOTA`: usage and limits of project `id`. A project the kernel
/// has never seen (XFS: `ENOENT`) uses nothing and has no limits.
pub fn project_usage(fs: BorrowedFd<'_>, id: u32) -> Result<ProjectUsage, Errno> {
    let mut q = zeroed_dqblk();
    // SAFETY: `q` is a live `if_dqblk` (libc's `dqblk` has its layout,
    // size asserted above), the type Q_GETQUOTA fills.
    match unsafe { quotactl_prj(fs, libc::Q_GETQUOTA, id, (&raw mut q).cast()) } {
        Ok(()) => Ok(ProjectUsage {
            bytes: q.dqb_curspace,
            inodes: q.dqb_curinodes,
            limit_bytes: q.dqb_bhardlimit.saturating_mul(QUOTA_BLOCK),
            limit_inodes: q.dqb_ihardlimit,
        }),
        Err(Errno::NOENT) => Ok(ProjectUsage::default()),
        Err(e) => Err(e),
    }
}

/// `Q_SETQUOTA`: hard limits of project `id` (bytes rounded up to whole
/// KiB; no soft limits, so no grace period to run out).
pub fn set_project_limits(
    fs: BorrowedFd<'_>,
    id: u32,
    bytes: u64,
    inodes: u64,
) -> Result<(), Errno> {
    let mut q = zeroed_dqblk();
    q.dqb_bhardlimit = bytes.div_ceil(QUOTA_BLOCK);
    q.dqb_ihardlimit = inodes;
    q.dqb_valid = libc::QIF_LIMITS;
    // SAFETY: `q` is a live `if_dqblk`, the type Q_SETQUOTA reads.
    unsafe { quotactl_prj(fs, libc::Q_SETQUOTA, id, (&raw mut q).cast()) }
}

fn zeroed_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}

/// Sets the project of `dir` to what it already is: changes nothing, and
/// fails exactly where the filesystem cannot set project ids.
pub fn reapply_project(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: FS_IOC_FSGETXATTR writes exactly one `struct fsxattr`, which
    // is what the opcode is built from and what `Getter` allocates.
    let attr = unsafe { ioctl(dir, Getter::<FS_IOC_FSGETXATTR, FsXattr>::new())? };
    // SAFETY: FS_IOC_FSSETXATTR reads exactly one `struct fsxattr`, the
    // type the opcode is built from.
    unsafe { ioctl(dir, Setter::<FS_IOC_FSSETXATTR, FsXattr>::new(attr)) }
}

/// Puts directory `dir` in project `id`, with inheritance: everything
/// created below it is charged to `id` too.
pub fn set_project(dir: BorrowedFd<'_>, id: u32) -> Result<(), Errno> {
    // SAFETY: as in `reapply_project`.
    let mut attr = unsafe { ioctl(dir, Getter::<FS_IOC_FSGETXATTR, FsXattr>::new())? };
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: as in `reapply_project`.
    unsafe { ioctl(dir, Setter::<FS_IOC_FSSETXATTR, FsXattr>::new(attr)) }
}
