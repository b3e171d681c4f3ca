//! The daemon's shared state: configuration, layout, the lease table, the
//! backend and counters. One `Arc<Daemon>` is shared by every task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Instant, SystemTime};
use tokio::sync::Semaphore;

use builddir_proto::{ErrorKind, LeaseEntry};

use crate::backend::Backend;
use crate::host::config::Config;
use crate::host::layout::Layout;
use crate::host::policy::Policy;
use crate::lease::table::{LeaseRecord, LeaseTable, Limits};

/// Monotonic counters for `status` (and later metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub allocations: AtomicU64,
    pub releases: AtomicU64,
    pub refusals: AtomicU64,
    pub reaped_trees: AtomicU64,
    pub reaped_entries: AtomicU64,
    pub reap_errors: AtomicU64,
    pub connections: AtomicU64,
    pub refusals_by_kind: [AtomicU64; 9],
    pub reaped_bytes: AtomicU64,
    /// Sum of reap durations in microseconds.
    pub reap_micros: AtomicU64,
    /// Reaps that ended in quarantine.
    pub reap_quarantined: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal of `kind`.
    pub fn refused(&self, kind: ErrorKind) {
        Counters::bump(&self.refusals);
        Counters::bump(&self.refusals_by_kind[kind_index(kind)]);
    }
}

/// Every error kind, in the order `refusals_by_kind` counts them.
pub const ERROR_KINDS: [ErrorKind; 9] = [
    ErrorKind::PermissionDenied,
    ErrorKind::QuotaExceeded,
    ErrorKind::NoSpace,
    ErrorKind::InvalidName,
    ErrorKind::NotFound,
    ErrorKind::UnsupportedVersion,
    ErrorKind::Busy,
    ErrorKind::Internal,
    ErrorKind::BadRequest,
];

fn kind_index(kind: ErrorKind) -> usize {
    ERROR_KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is listed")
}

/// Wrong reclaims one uid may make per minute. A client reclaiming after
/// a restart gets it right the first time; a guesser gets 10 tries a minute
/// at a 64-bit secret.
pub const RECLAIM_FAILURES_PER_MINUTE: u32 = 10;

/// Everything the tasks share.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    pub layout: Layout,
    pub started: Instant,
    pub counters: Counters,
    /// Every lease; the only place a lease changes state.
    pub table: LeaseTable,
    conns_per_uid: Mutex<HashMap<u32, usize>>,
    pub last_reap_error: Mutex<Option<String>>,
    /// Bounds the number of trees deleted at once.
    pub reap_slots: Arc<Semaphore>,
    pub policy: Policy,
    /// The lease backend, decided at start.
    pub backend: Backend,
    /// The last connection id handed out.
    conn_ids: AtomicU64,
    /// Set when the daemon stops serving (SIGTERM): the connections still
    /// open are about to be dropped with the runtime, and their leases
    /// must survive for the next daemon, not be released.
    stopping: AtomicBool,
    /// When to give memory back after a burst of leases ends.
    pub trimmer: crate::trim::Trimmer,
    /// Failed reclaims per uid (rate limit and one log line per window).
    pub reclaim_failures: crate::conn::failures::FailureWindows,
    /// Places for size walks (a bounded pool with a per-uid share).
    pub walks: crate::lease::walks::WalkPool,
    /// Places for kept-tree hand-overs (one per uid, a global cap).
    pub hand_overs: crate::lease::hand_overs::HandOverPool,
    /// The total memory of tmpfs leases.
    pub tmpfs_budget: crate::backend::tmpfs_budget::TmpfsBudget,
    /// Record files made ahead of allocations.
    pub spares: crate::lease::registry::Spares,
}

impl Daemon {
    pub fn new(config: Config, layout: Layout, policy: Policy, backend: Backend) -> Daemon {
        let config_reap = config.reap_concurrency;
        let hand_overs = config.hand_over_concurrency;
        let tmpfs_total = config.tmpfs_leases_max_total;
        Daemon {
            config,
            layout,
            started: Instant::now(),
            counters: Counters::default(),
            table: LeaseTable::default(),
            conns_per_uid: Mutex::new(HashMap::new()),
            last_reap_error: Mutex::new(None),
            reap_slots: Arc::new(Semaphore::new(config_reap)),
            policy,
            backend,
            conn_ids: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            trimmer: crate::trim::Trimmer::default(),
            reclaim_failures: crate::conn::failures::FailureWindows::new(
                std::time::Duration::from_secs(60),
                RECLAIM_FAILURES_PER_MINUTE,
            ),
            walks: crate::lease::walks::WalkPool::default(),
            hand_overs: crate::lease::hand_overs::HandOverPool::new(hand_overs),
            tmpfs_budget: crate::backend::tmpfs_budget::TmpfsBudget::new(tmpfs_total),
            spares: crate::lease::registry::Spares::default(),
        }
    }

    /// The daemon stops serving: from now on a dropped session keeps its
    /// leases (the next daemon gets them back from the fd store, or their
    /// clients reclaim them).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A fresh connection id (resumed connections and accepted ones alike).
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One line for `systemctl status`.
    pub fn status_line(&self) -> String {
        let [live, kept, reaping, quarantined, detaching] = self.table.state_counts();
        format!(
            "{live} live, {kept} kept, {reaping} reaping, {quarantined} quarantined, {detaching} detaching, {} connections",
            self.connection_count()
        )
    }

    /// The lease-count limits of the config.
    pub fn limits(&self) -> Limits {
        Limits {
            max_leases: self.config.max_leases,
            max_leases_per_uid: self.config.max_leases_per_uid,
        }
    }

    /// Tries to take a connection slot for `uid`; `Err` names the limit hit.
    pub fn enter_connection(&self, uid: u32) -> Result<ConnSlot<'_>, String> {
        let mut per_uid = self.conns_per_uid.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = per_uid.values().sum();
        if total >= self.config.max_connections {
            return Err(format!(
                "max_connections = {} reached; retry later or raise max_connections",
                self.config.max_connections
            ));
        }
        let mine = per_uid.entry(uid).or_insert(0);
        if *mine >= self.config.max_connections_per_uid {
            return Err(format!(
                "max_connections_per_uid = {} reached for uid {uid}; close idle connections or raise the limit",
                self.config.max_connections_per_uid
            ));
        }
        *mine += 1;
        Ok(ConnSlot { daemon: self, uid })
    }

    pub fn connection_count(&self) -> u64 {
        let per_uid = self.conns_per_uid.lock().unwrap_or_else(|p| p.into_inner());
        per_uid.values().sum::<usize>() as u64
    }

    /// The row `list` shows for `r`.
    pub fn entry_of(&self, r: &LeaseRecord) -> LeaseEntry {
        use crate::lease::table::Phase;
        let path = match r.phase() {
            Phase::Kept | Phase::Keeping { moved: true, .. } | Phase::Removing => {
                self.layout.kept_path(r.id)
            }
            Phase::Live { .. } | Phase::Releasing { .. } | Phase::Keeping { .. } => {
                self.layout.lease_path(r.id)
            }
            // A detaching lease's tmpfs is still mounted there (emptied).
            Phase::Reaping { trash }
            | Phase::Quarantined { trash }
            | Phase::Detaching { trash } => self
                .layout
                .root_path()
                .join(crate::host::layout::TRASH)
                .join(trash),
        };
        LeaseEntry {
            id: r.id.to_string(),
            name: r.name.clone(),
            state: r.state(),
            owner_uid: r.owner_uid,
            owner_gid: r.owner_gid,
            peer_uid: r.peer.uid,
            peer_pid: r.peer.pid,
            peer_command: r.peer.command.clone(),
            created_unix: r
                .created
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            path: path.display().to_string(),
            size_bytes: None,
            limit_bytes: r.limit_bytes,
        }
    }
}

/// A held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnSlot<'d> {
    daemon: &'d Daemon,
    uid: u32,
}

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        let mut per_uid = self
            .daemon
            .conns_per_uid
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}
