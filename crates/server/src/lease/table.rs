//! The daemon's shared state: configuration, layout, the lease table and
//! counters. One `Arc<Daemon>` is shared by every task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::{Instant, SystemTime};
use tokio::sync::Semaphore;

use builddir_proto::{ErrorKind, LeaseEntry, LeaseState};

use crate::backend::LeaseMode;
use crate::conn::peer::Peer;
use crate::host::config::Config;
use crate::host::layout::Layout;
use crate::host::policy::Policy;
use crate::lease::id::LeaseId;

/// One lease the daemon knows about.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub name: String,
    pub state: LeaseState,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub peer: Peer,
    /// The connection that holds a live lease (0: none).
    pub conn: u64,
    pub created: SystemTime,
    /// Name of the tree in trash while reaping or quarantined.
    pub trash_name: Option<String>,
    /// When it was kept (retention counts age from here).
    pub kept_at: Option<SystemTime>,
    /// Size of a kept tree, measured when kept.
    pub size_bytes: Option<u64>,
    /// The reclaim secret (live leases only).
    pub secret: String,
    /// The build's size limit (sized leases).
    pub limit_bytes: Option<u64>,
    /// The lease's project id (`project-quota` leases).
    pub project_id: Option<u32>,
}

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

/// Everything the tasks share.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    pub layout: Layout,
    pub started: Instant,
    pub counters: Counters,
    leases: Mutex<HashMap<LeaseId, LeaseRecord>>,
    conns_per_uid: Mutex<HashMap<u32, usize>>,
    pub last_reap_error: Mutex<Option<String>>,
    /// Bounds the number of trees deleted at once.
    pub reap_slots: Arc<Semaphore>,
    pub policy: Policy,
    /// The lease backend, decided at start.
    pub mode: LeaseMode,
    /// When to give memory back after a burst of leases ends.
    pub trimmer: crate::trim::Trimmer,
}

impl Daemon {
    pub fn new(config: Config, layout: Layout, policy: Policy, mode: LeaseMode) -> Daemon {
        let config_reap = config.reap_concurrency;
        Daemon {
            config,
            layout,
            started: Instant::now(),
            counters: Counters::default(),
            leases: Mutex::new(HashMap::new()),
            conns_per_uid: Mutex::new(HashMap::new()),
            last_reap_error: Mutex::new(None),
            reap_slots: Arc::new(Semaphore::new(config_reap)),
            policy,
            mode,
            trimmer: crate::trim::Trimmer::default(),
        }
    }

    /// The lease table. Held only for short, syscall-free sections.
    pub fn leases(&self) -> MutexGuard<'_, HashMap<LeaseId, LeaseRecord>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert/remove/field store), so recover.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes lease `id` out of the live state for exactly one caller: returns
    /// true if and only if it was live (it is now `next`, held by no
    /// connection). A release racing a disconnect thus acts once.
    pub fn claim_live(&self, id: LeaseId, next: LeaseState) -> bool {
        let mut leases = self.leases();
        match leases.get_mut(&id) {
            Some(r) if r.state == LeaseState::Live => {
                r.state = next;
                r.conn = 0;
                true
            }
            _ => false,
        }
    }

    /// Moves lease `id` from state `from` to `to` for exactly one caller.
    pub fn claim_state(&self, id: LeaseId, from: LeaseState, to: LeaseState) -> bool {
        match self.leases().get_mut(&id) {
            Some(r) if r.state == from => {
                r.state = to;
                true
            }
            _ => false,
        }
    }

    /// Puts a claimed lease back to live (its filesystem step failed).
    pub fn unclaim(&self, id: LeaseId) {
        if let Some(r) = self.leases().get_mut(&id) {
            r.state = LeaseState::Live;
        }
    }

    /// Counts live leases: (all, of `uid` as requester).
    pub fn live_counts(&self, uid: u32) -> (usize, usize) {
        let leases = self.leases();
        let live = leases.values().filter(|r| r.state == LeaseState::Live);
        live.fold((0, 0), |(all, mine), r| {
            (all + 1, mine + usize::from(r.peer.uid == uid))
        })
    }

    /// Counts leases by state: (live, kept, reaping, quarantined).
    pub fn state_counts(&self) -> [u64; 4] {
        let mut n = [0u64; 4];
        for r in self.leases().values() {
            n[match r.state {
                LeaseState::Live => 0,
                LeaseState::Kept => 1,
                LeaseState::Reaping => 2,
                LeaseState::Quarantined => 3,
            }] += 1;
        }
        n
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
        let path = match r.state {
            LeaseState::Kept => self.layout.kept_path(r.id),
            LeaseState::Live => self.layout.lease_path(r.id),
            LeaseState::Reaping | LeaseState::Quarantined => self
                .layout
                .root_path()
                .join(crate::host::layout::TRASH)
                .join(r.trash_name.as_deref().unwrap_or("")),
        };
        LeaseEntry {
            id: r.id.to_string(),
            name: r.name.clone(),
            state: r.state,
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
