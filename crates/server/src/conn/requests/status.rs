use builddir_proto::{Response, StatusReport, PROTOCOL_VERSION};
use std::sync::atomic::Ordering;

use super::{Reply, Session};
use crate::host::mount::flags_of;

impl Session {
    /// Counts are for everyone; per-user data (the last reap error names
    /// a lease and files in someone's tree) only for operators.
    pub(super) fn status(&mut self) -> Reply {
        let mut report = status_report(&self.daemon);
        if !self.is_operator() {
            report.last_reap_error = None;
        }
        (Response::Status(report), None)
    }
}

/// The daemon's status, also used for `STATUS=` notifications.
pub fn status_report(daemon: &crate::lease::table::Daemon) -> StatusReport {
    let root = &daemon.layout.root;
    let flags = flags_of(&root.fd).ok();
    let vfs = rustix::fs::fstatvfs(&root.fd).ok();
    let [live, kept, reaping, quarantined, detaching] = daemon.table.state_counts();
    let c = &daemon.counters;
    StatusReport {
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
        uptime_secs: daemon.started.elapsed().as_secs(),
        root: root.path.display().to_string(),
        backing: format!(
            "{} ({}); leases: {}",
            daemon.config.backing.as_str(),
            root.fstype,
            daemon.backend.describe(&root.fstype, &daemon.config)
        ),
        nosuid: flags.is_some_and(|f| f.nosuid),
        nodev: flags.is_some_and(|f| f.nodev),
        noexec: flags.is_some_and(|f| f.noexec),
        free_bytes: vfs.as_ref().map_or(0, |v| v.f_bavail * v.f_frsize),
        total_bytes: vfs.as_ref().map_or(0, |v| v.f_blocks * v.f_frsize),
        free_inodes: vfs.as_ref().map_or(0, |v| v.f_favail),
        connections: daemon.connection_count(),
        live,
        kept,
        reaping,
        quarantined,
        reaped_total: c.reaped_trees.load(Ordering::Relaxed),
        reap_errors: c.reap_errors.load(Ordering::Relaxed),
        last_reap_error: daemon
            .last_reap_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        detaching,
    }
}
