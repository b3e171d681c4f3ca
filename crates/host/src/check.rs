//! The host check that `builddird --check` and `builddir-ctl check` both
//! run: one list of findings, each a cause and its fix, printed in the same
//! words by both.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::config::{Backing, Config, LeaseBackend};
use crate::identity::Accounts;
use crate::mount;
use crate::policy::Policy;

/// One thing checked: what, whether it is fine, and if not, the fix.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, detail: String) -> Finding {
        Finding {
            check,
            ok: true,
            detail,
            fix: None,
        }
    }

    pub fn problem(check: &'static str, detail: String, fix: String) -> Finding {
        Finding {
            check,
            ok: false,
            detail,
            fix: Some(fix),
        }
    }

    /// A problem from an error whose message is "cause; fix" (or
    /// "cause — fix"), as every [`mount::MountError`] is.
    fn from_error(check: &'static str, e: &dyn std::fmt::Display, fallback_fix: &str) -> Finding {
        let text = e.to_string();
        let split = ["; ", " — "]
            .iter()
            .filter_map(|sep| text.find(sep).map(|at| (at, sep.len())))
            .min();
        match split {
            Some((at, len)) => {
                Finding::problem(check, text[..at].to_owned(), text[at + len..].to_owned())
            }
            None => Finding::problem(check, text, fallback_fix.to_owned()),
        }
    }

    /// The line both tools print for this finding.
    pub fn line(&self) -> String {
        match &self.fix {
            None => format!("ok    {:<8} {}", self.check, self.detail),
            Some(fix) => format!("FAIL  {:<8} {} — fix: {fix}", self.check, self.detail),
        }
    }
}

/// When the check runs: before the daemon starts (`builddird --check`: an
/// unmounted root is fine, the daemon mounts it) or on a host where it
/// should be serving (`builddir-ctl check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    BeforeStart,
    Serving,
}

/// Whether the names in `config` resolve (users and groups of the policy).
pub fn policy(config: &Config, config_path: &Path) -> Finding {
    match Policy::from_config(config, &Accounts::load()) {
        Ok(_) => Finding::ok("policy", "users and groups in the config resolve".into()),
        Err(e) => Finding::problem(
            "policy",
            e.to_string(),
            format!("fix the names in {}", config_path.display()),
        ),
    }
}

/// The root, its mount (flags, ownership, propagation: everything the
/// daemon verifies before `READY=1`) and whether its filesystem can give
/// leases size limits.
pub fn root(config: &Config, when: When) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = &config.root;
    let shown = root.display();
    if let Err(e) = mount::check_no_symlinks(root) {
        out.push(Finding::from_error(
            "root",
            &e,
            "set root to the real path in the config",
        ));
        return out;
    }
    match std::fs::metadata(root) {
        Err(e) if when == When::BeforeStart && e.kind() == std::io::ErrorKind::NotFound => {
            out.push(Finding::ok(
                "root",
                format!("{shown} does not exist yet; builddird creates it at start"),
            ));
            return out;
        }
        Err(e) => {
            out.push(Finding::problem(
                "root",
                format!("{shown}: {e}"),
                "start builddird once (it creates and mounts root), or create it: mkdir -m 0755"
                    .into(),
            ));
            return out;
        }
        Ok(m) if !m.is_dir() => {
            out.push(Finding::problem(
                "root",
                format!("{shown} is not a directory"),
                "point root at a directory".into(),
            ));
            return out;
        }
        Ok(m) if m.uid() != 0 => out.push(Finding::problem(
            "root",
            format!("{shown} is owned by uid {}", m.uid()),
            format!("chown root:root {shown}"),
        )),
        Ok(m) if m.mode() & 0o022 != 0 => out.push(Finding::problem(
            "root",
            format!(
                "{shown} has mode {:04o} (group/world-writable)",
                m.mode() & 0o7777
            ),
            format!("chmod go-w {shown}"),
        )),
        Ok(m) => out.push(Finding::ok(
            "root",
            format!(
                "{shown} is a root-owned directory, mode {:04o}",
                m.mode() & 0o7777
            ),
        )),
    }
    match mount::is_mount_point(root) {
        Ok(false) if config.backing != Backing::External && when == When::BeforeStart => {
            out.push(Finding::ok(
                "mount",
                format!(
                    "{shown} will be mounted ({}) at start",
                    config.backing.as_str()
                ),
            ));
            // A bind mount of root onto itself keeps its filesystem, which
            // can be probed now (a tmpfs to come cannot).
            if config.backing == Backing::Bind {
                match rustix::fs::open(root, crate::paths::DIR_OPEN, rustix::fs::Mode::empty()) {
                    Ok(fd) => out.push(acl(fd.as_fd(), root, &mount::fstype_of(&fd))),
                    Err(e) => out.push(Finding::problem(
                        "acl",
                        format!("cannot open {shown}: {e}"),
                        "run the check as root".into(),
                    )),
                }
            }
            return out;
        }
        Ok(false) if config.backing != Backing::External => {
            out.push(Finding::problem(
                "mount",
                format!("{shown} is not mounted yet"),
                "start builddird (it mounts root), or check its log: journalctl -u builddird"
                    .into(),
            ));
            return out;
        }
        Ok(false) => {
            out.push(Finding::problem(
                "mount",
                format!("{shown} is not a mount point (backing = \"external\")"),
                "mount it nosuid,nodev,exec (fstab or a .mount unit)".into(),
            ));
            return out;
        }
        Ok(true) => {}
        Err(e) => {
            out.push(Finding::from_error("mount", &e, "check the path"));
            return out;
        }
    }
    let verified = match mount::verify(root) {
        Ok(v) => v,
        Err(e) => {
            out.push(Finding::from_error("mount", &e, "run the check as root"));
            return out;
        }
    };
    out.push(Finding::ok(
        "mount",
        format!(
            "{shown} is a verified nosuid,nodev,exec mount ({}), root-owned, not group/world-writable, private propagation",
            verified.fstype
        ),
    ));
    out.push(acl(verified.fd.as_fd(), root, &verified.fstype));
    out.push(quota(config, &verified));
    out
}

/// Whether the root's filesystem holds the POSIX ACL every lease's outer
/// directory gets: the probe the daemon runs before it serves (an ACL on a
/// scratch directory made in `dir` and removed at once), so the check and
/// the daemon's refusal say the same thing in the same words.
fn acl(dir: std::os::fd::BorrowedFd<'_>, root: &Path, fstype: &str) -> Finding {
    match crate::acl::probe(dir, root, fstype) {
        Ok(()) => Finding::ok(
            "acl",
            format!(
                "{} holds POSIX ACLs ({fstype}), as every lease's directory needs",
                root.display()
            ),
        ),
        Err(e) => Finding::from_error("acl", &e, "run the check as root"),
    }
}

/// Whether the root's filesystem enforces project quotas, as the lease
/// backend needs (a problem only when `lease_backend = "project-quota"`).
fn quota(config: &Config, root: &mount::VerifiedRoot) -> Finding {
    let why = crate::quota::unavailable_reason(root.fd.as_fd(), &root.fstype);
    let shown = root.path.display();
    match (config.lease_backend, why) {
        (LeaseBackend::ProjectQuota, None) => Finding::ok(
            "quota",
            format!("{shown} enforces project quotas (lease_backend = \"project-quota\")"),
        ),
        (LeaseBackend::ProjectQuota, Some(why)) => Finding::problem(
            "quota",
            format!(
                "lease_backend = \"project-quota\" but root {shown} cannot enforce project quotas: {why}"
            ),
            "make the filesystem enforce project quotas as said, or use lease_backend = \"tmpfs\""
                .into(),
        ),
        (backend, None) => Finding::ok(
            "quota",
            format!(
                "lease_backend = \"{}\"; project quotas are available on {shown} (lease_backend = \"project-quota\" gives per-build size limits)",
                backend.as_str()
            ),
        ),
        (backend, Some(why)) => Finding::ok(
            "quota",
            format!(
                "lease_backend = \"{}\"; project quotas unavailable: {why}",
                backend.as_str()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_splits_into_its_cause_and_its_fix() {
        let e = mount::MountError::Shared { path: "/r".into() };
        let f = Finding::from_error("mount", &e, "unused");
        assert!(!f.ok);
        assert_eq!(f.detail, "root /r has shared mount propagation");
        assert_eq!(f.fix.as_deref(), Some("run `mount --make-private /r`"));
        assert_eq!(
            f.line(),
            "FAIL  mount    root /r has shared mount propagation — fix: run `mount --make-private /r`"
        );
        let plain = Finding::from_error("root", &"no such thing", "create it");
        assert_eq!(plain.fix.as_deref(), Some("create it"));
    }
}
