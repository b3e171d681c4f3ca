//! Facts about a builddird host, shared by the daemon and `builddir-ctl`:
//! the configuration, the access policy, user and group lookups, the mount
//! and its verification, whether the filesystem enforces project quotas,
//! whether the root can hold the leases' POSIX ACLs, the on-disk lease
//! record, and the host check both tools run (so
//! `builddird --check` and `builddir-ctl check` say the same thing in the
//! same words).

pub mod acl;
pub mod check;
pub mod config;
pub mod id;
pub mod identity;
pub mod mount;
pub mod paths;
pub mod policy;
pub mod quota;
pub mod quota_sys;
pub mod registry;

/// An error and its causes on one line, each cause once: errors that
/// already print their cause (`context: cause`) are not repeated.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
