//! Which lease backend runs, decided once at start and shown by `status`.
//!
//! `lease_backend = "project-quota"` fails closed: if the root filesystem
//! does not enforce project quotas the daemon does not start (one line with
//! the cause and the fix). With `"dir"` the same detection only informs:
//! `status` and size refusals say whether project quotas would work here.

pub mod project;
pub mod project_sys;

use std::os::fd::AsFd;

use crate::host::config::{Config, LeaseBackend};
use crate::host::layout::Layout;
use crate::host::mount::VerifiedRoot;
use project::ProjectIds;

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
pub enum LeaseMode {
    /// Plain directories; `quota` says why project quotas are unavailable
    /// (`None`: they would work).
    Dir { quota: Option<String> },
    /// One tmpfs per lease.
    Tmpfs,
    /// One project quota per lease, ids from this range.
    ProjectQuota(ProjectIds),
}

impl LeaseMode {
    /// Detects what the root supports; `Err` is the one-line refusal to
    /// start for a `project-quota` configuration the filesystem cannot do.
    pub fn decide(config: &Config, layout: &Layout) -> Result<LeaseMode, String> {
        let root = &layout.root;
        match config.lease_backend {
            LeaseBackend::Tmpfs => Ok(LeaseMode::Tmpfs),
            LeaseBackend::Dir => Ok(LeaseMode::Dir {
                quota: project::unavailable_reason(root.fd.as_fd(), &root.fstype),
            }),
            LeaseBackend::ProjectQuota => {
                require_project_quota(root)?;
                let range = config.project_id_range().map_err(|e| e.to_string())?;
                Ok(LeaseMode::ProjectQuota(ProjectIds::new(range)))
            }
        }
    }

    /// Returns true if and only if leases can be given a size limit.
    pub fn sized(&self) -> bool {
        !matches!(self, LeaseMode::Dir { .. })
    }

    /// What `status` and the start-up log say about leases.
    pub fn describe(&self, fstype: &str, c: &Config) -> String {
        let sizes = format!(
            "default {} bytes / {} inodes, at most {} / {}",
            c.lease_size_default, c.lease_inodes_default, c.lease_size_max, c.lease_inodes_max
        );
        match self {
            LeaseMode::Dir { quota: Some(why) } => format!(
                "dir (no per-build size limit; project quotas unavailable: {why})"
            ),
            LeaseMode::Dir { quota: None } => "dir (no per-build size limit; project quotas are available: set lease_backend = \"project-quota\")".to_owned(),
            LeaseMode::Tmpfs => format!("tmpfs (per-build size limits: {sizes})"),
            LeaseMode::ProjectQuota(ids) => format!(
                "project-quota (per-build size limits on {fstype}: {sizes}; project ids {}-{})",
                ids.range().start(),
                ids.range().end()
            ),
        }
    }

    /// The refusal of a size request when leases cannot be sized.
    pub fn unsized_refusal(&self) -> String {
        let why = match self {
            LeaseMode::Dir { quota: Some(why) } => format!("project quotas unavailable: {why}"),
            _ => "set lease_backend = \"project-quota\" or \"tmpfs\"".to_owned(),
        };
        format!(
            "per-build size limits need lease_backend = \"tmpfs\" or \"project-quota\"; this daemon runs lease_backend = \"dir\" ({why}); allocate without a limit or ask the operator"
        )
    }
}
