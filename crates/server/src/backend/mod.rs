//! How a lease's space is provided: one [`Backend`], decided once at start,
//! behind which `dir` (plain directories), `tmpfs` (one tmpfs per lease) and
//! `project` (one project quota per lease) differ. Creating, reaping and
//! listing a lease ask the backend; none of them branches on which it is.
//!
//! `lease_backend = "project-quota"` fails closed: if the root filesystem
//! does not enforce project quotas the daemon does not start (one line with
//! the cause and the fix). With `"dir"` nothing is detected at start;
//! `builddird --check` and `builddir-ctl check` say whether project quotas
//! would work on this root.

pub mod project;
/// The quota system calls (they live with the host facts).
pub use builddir_host::quota_sys as project_sys;
pub mod tmpfs;
pub mod tmpfs_budget;
pub mod tmpfs_held;

use std::collections::HashSet;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use builddir_proto::{ErrorKind, ErrorReply, SizeLimit};
use rustix::io::Errno;

use crate::host::config::{Config, LeaseBackend};
use crate::host::layout::Layout;
use crate::host::mount::VerifiedRoot;
use project::{AssignError, ProjectIds, Reservation};

/// `Err`: the one line saying why `root` cannot run
/// `lease_backend = "project-quota"`, and how to fix it.
pub fn require_project_quota(root: &VerifiedRoot) -> Result<(), String> {
    match project::unavailable_reason(root.fd.as_fd(), &root.fstype) {
        None => Ok(()),
        Some(why) => Err(format!(
            "lease_backend = \"project-quota\" but root {} cannot enforce project quotas: {why}; or use lease_backend = \"tmpfs\"",
            root.path.display()
        )),
    }
}

/// The lease backend this daemon runs.
#[derive(Debug)]
pub enum Backend {
    /// Plain directories on the root: no per-build size limit.
    Dir,
    /// One tmpfs per lease.
    Tmpfs,
    /// One project quota per lease, ids from this range.
    ProjectQuota(ProjectIds),
}

/// The name this type had before the backends were one type.
pub type LeaseMode = Backend;

/// How one lease's space is bounded, settled before its directories exist.
#[derive(Debug)]
pub enum Sizing {
    /// Not at all (a plain directory on the root).
    Unbounded,
    /// `build` is a fresh tmpfs of this size.
    Tmpfs(SizeLimit),
    /// `build` is in this project, whose limits are already set; the id
    /// stays reserved until [`Sizing::settle`] (or is freed on drop).
    Project(Reservation),
}

impl Sizing {
    /// Step after `outer/build` is made, before it is opened.
    pub fn mount_on(&self, outer: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
        match self {
            Sizing::Tmpfs(limit) => tmpfs::mount(outer, uid, gid, *limit),
            _ => Ok(()),
        }
    }

    /// Step on the opened `build`, while it is still root's and empty.
    pub fn mark_build(&self, build: BorrowedFd<'_>) -> Result<(), Errno> {
        match self {
            // From here on every inode created below it is charged to the
            // lease's project.
            Sizing::Project(r) => project_sys::set_project(build, r.id()),
            _ => Ok(()),
        }
    }

    /// The project id the lease holds, if any.
    pub fn project_id(&self) -> Option<u32> {
        match self {
            Sizing::Project(r) => Some(r.id()),
            _ => None,
        }
    }

    /// The lease is in the table, which holds what it reserved from now on.
    pub fn settle(self) {
        if let Sizing::Project(r) = self {
            r.settle();
        }
    }
}

impl Backend {
    /// The backend `config` asks for on this root; `Err` is the one-line
    /// refusal to start for a `project-quota` configuration the filesystem
    /// cannot do.
    pub fn decide(config: &Config, layout: &Layout) -> Result<Backend, String> {
        let root = &layout.root;
        match config.lease_backend {
            LeaseBackend::Tmpfs => Ok(Backend::Tmpfs),
            LeaseBackend::Dir => Ok(Backend::Dir),
            LeaseBackend::ProjectQuota => {
                require_project_quota(root)?;
                let range = config.project_id_range().map_err(|e| e.to_string())?;
                let fs = rustix::io::fcntl_dupfd_cloexec(&root.fd, 0)
                    .map_err(|e| format!("cannot duplicate the root's fd: {e}"))?;
                Ok(Backend::ProjectQuota(ProjectIds::new(range, fs)))
            }
        }
    }

    /// Returns true if and only if leases can be given a size limit.
    pub fn sized(&self) -> bool {
        !matches!(self, Backend::Dir)
    }

    /// The size for a lease that asked for `asked`, with the config's
    /// defaults and caps applied; a refusal if it cannot be honoured.
    pub fn size(
        &self,
        asked: Option<SizeLimit>,
        c: &Config,
    ) -> Result<Option<SizeLimit>, ErrorReply> {
        if !self.sized() {
            return match asked {
                None => Ok(None),
                Some(_) => Err(ErrorReply::new(
                    ErrorKind::BadRequest,
                    self.unsized_refusal(),
                )),
            };
        }
        let asked = asked.unwrap_or(SizeLimit {
            bytes: 0,
            inodes: 0,
        });
        let bytes = if asked.bytes == 0 {
            c.lease_size_default
        } else {
            asked.bytes
        };
        let inodes = if asked.inodes == 0 {
            c.lease_inodes_default
        } else {
            asked.inodes
        };
        if bytes > c.lease_size_max {
            return Err(ErrorReply::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "a size of {bytes} bytes is above lease_size_max = {}; ask for less",
                    c.lease_size_max
                ),
            ));
        }
        if inodes > c.lease_inodes_max {
            return Err(ErrorReply::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "{inodes} inodes is above lease_inodes_max = {}; ask for fewer",
                    c.lease_inodes_max
                ),
            ));
        }
        Ok(Some(SizeLimit { bytes, inodes }))
    }

    /// Returns true if and only if [`Backend::prepare`] may block (many
    /// `quotactl` calls): the caller runs it on a blocking thread.
    pub fn prepare_blocks(&self) -> bool {
        matches!(self, Backend::ProjectQuota(_))
    }

    /// Settles how a lease of `limit` (from [`Backend::size`]) is bounded;
    /// `held` reads the project ids the lease table holds.
    pub fn prepare(
        &self,
        limit: Option<SizeLimit>,
        held: impl FnOnce() -> HashSet<u32>,
    ) -> Result<Sizing, ErrorReply> {
        match (self, limit) {
            (Backend::Dir, None) => Ok(Sizing::Unbounded),
            (Backend::Tmpfs, Some(limit)) => Ok(Sizing::Tmpfs(limit)),
            (Backend::ProjectQuota(ids), Some(limit)) => {
                match ids.assign(held, limit.bytes, limit.inodes) {
                    Ok(r) => Ok(Sizing::Project(r)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot give a lease a project quota");
                        let kind = match e {
                            AssignError::Exhausted { .. } => ErrorKind::QuotaExceeded,
                            _ => ErrorKind::Internal,
                        };
                        Err(ErrorReply::new(kind, e.to_string()))
                    }
                }
            }
            // `size` gives every sized backend a limit and refuses one on
            // `dir`; anything else is a bug, refused, not served.
            (Backend::Dir, Some(_)) | (Backend::Tmpfs | Backend::ProjectQuota(_), None) => {
                Err(ErrorReply::new(
                    ErrorKind::Internal,
                    "lease sizing does not match the lease backend; please report this",
                ))
            }
        }
    }

    /// Before `trash/<name>` (whose lease held `project`, if any) is
    /// walked: a lease tmpfs at its `build` is settled (emptied and
    /// unmounted, or kept mounted while something holds files in it:
    /// [`tmpfs_held`]), a full project is logged. The tmpfs is looked for
    /// whatever this daemon's backend: a lease from before a change of
    /// `lease_backend` still ends as it must.
    pub fn before_reap(
        &self,
        root: &Path,
        trash: BorrowedFd<'_>,
        name: &CStr,
        project: Option<u32>,
        owner: (u32, u32),
    ) -> tmpfs_held::Settled {
        if let (Backend::ProjectQuota(ids), Some(project)) = (self, project) {
            log_if_project_full(ids.fs(), project, name);
        }
        let ours = |id| crate::host::mount::mount_source_is(id, tmpfs::LEASE_TMPFS_SOURCE);
        tmpfs_held::settle(root, trash, name, owner, &ours, tmpfs_held::Pass::Reap)
    }

    /// After the reap of a tree whose lease held `project`: a project no
    /// other lease (`held_by_others`) holds gets its limits cleared.
    pub fn after_reap(
        &self,
        project: Option<u32>,
        complete: bool,
        held_by_others: impl Fn(u32) -> bool,
    ) {
        if let (Backend::ProjectQuota(ids), Some(project), true) = (self, project, complete) {
            ids.clear_after_reap(project, held_by_others);
        }
    }

    /// Bytes a lease holding `project` uses, if the backend knows without a
    /// walk (the kernel's project usage: what the limit is checked against).
    pub fn usage(&self, project: Option<u32>) -> Option<u64> {
        match (self, project) {
            (Backend::ProjectQuota(ids), Some(p)) => project::usage(ids.fs(), p).map(|u| u.bytes),
            _ => None,
        }
    }

    /// What `status` and the start-up log say about leases: one clause.
    pub fn describe(&self, fstype: &str, c: &Config) -> String {
        let sizes = format!(
            "default {} bytes / {} inodes, at most {} / {}",
            c.lease_size_default, c.lease_inodes_default, c.lease_size_max, c.lease_inodes_max
        );
        match self {
            Backend::Dir => "dir (no per-build size limit)".to_owned(),
            Backend::Tmpfs => format!("tmpfs (per-build size limits: {sizes})"),
            Backend::ProjectQuota(ids) => format!(
                "project-quota (per-build size limits on {fstype}: {sizes}; project ids {}-{})",
                ids.range().start(),
                ids.range().end()
            ),
        }
    }

    /// The refusal of a size request when leases cannot be sized.
    pub fn unsized_refusal(&self) -> String {
        "per-build size limits need lease_backend = \"tmpfs\" or \"project-quota\"; this daemon runs lease_backend = \"dir\"; allocate without a limit or ask the operator (`builddird --check` says whether this root can enforce project quotas)".to_owned()
    }
}

/// Logs that a `project-quota` lease used up its limit (its build saw
/// EDQUOT or ENOSPC), as the tmpfs backend does.
fn log_if_project_full(fs: BorrowedFd<'_>, project: u32, name: &CStr) {
    let Some(u) = project::usage(fs, project) else {
        return;
    };
    if project::at_limit(&u) {
        tracing::warn!(
            trash = %name.to_string_lossy(),
            project_id = project,
            used_bytes = u.bytes,
            used_inodes = u.inodes,
            limit_bytes = u.limit_bytes,
            limit_inodes = u.limit_inodes,
            "lease had reached its size limit (its build saw EDQUOT/ENOSPC)"
        );
    }
}
