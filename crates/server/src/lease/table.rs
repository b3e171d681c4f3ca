//! The lease table: every lease the daemon knows and the one place where a
//! lease changes state.
//!
//! ```text
//!            reserve ─► admit
//!                        │
//!   restored at start ─► Live ◄─────────────── (a failed step undoes the claim)
//!                        │ claim_live(Release)        │ claim_live(Keep)
//!                        ▼                            ▼
//!                    Releasing                     Keeping ── kept ──► Kept
//!                        │ into_reaping                                 │ claim_kept
//!                        ▼                                              ▼
//!                     Reaping ◄──────────────── into_reaping ──────  Removing
//!                      ▲ │ reaped   │ quarantined   │ detaching (tree deleted,
//!                      │ ▼          ▼               ▼  its tmpfs still held)
//!                      │(gone)  Quarantined      Detaching ◄── restored at start
//!                      │                            │
//!                      └────────── tmpfs_gone ──────┘ (unmounted: the rest
//!                                                      of its tree is reaped)
//! ```
//!
//! Every transition is a method here, taken under one lock, and checks the
//! state it leaves: so two enders racing (a release and a disconnect, a gc
//! and retention) act once, and a limit is checked and counted in the same
//! step. Outside this module, records are read as copies; nothing else can
//! change one. A claim ([`Claim`]) that is dropped before it completes (its
//! filesystem step failed, or the task panicked) puts the lease back
//! exactly as it was, connection included.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use builddir_proto::LeaseState;

use crate::host::identity::Peer;
use crate::lease::id::LeaseId;

pub use crate::lease::daemon::{ConnSlot, Counters, Daemon, ERROR_KINDS};

/// A connection, numbered by the accept loop (resumed ones first).
pub type ConnId = u64;

/// Where a lease is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Handed out. `conn` holds it; `None`: after a restart, waiting for
    /// its client to reclaim it (or for the grace period to end).
    Live { conn: Option<ConnId> },
    /// Claimed by one ender; its tree is moving to trash.
    Releasing { conn: Option<ConnId> },
    /// Claimed by one keeper; its tree is moving to the kept area and being
    /// handed to the requester.
    Keeping {
        conn: Option<ConnId>,
        /// The tree is in the kept area already (undo goes to `Kept`).
        moved: bool,
    },
    /// In the kept area, the requester's.
    Kept,
    /// A kept tree claimed for removal (gc, retention, remove).
    Removing,
    /// In trash as `trash`, being deleted.
    Reaping { trash: String },
    /// In trash as `trash`; deletion gave up, retried at the next start.
    Quarantined { trash: String },
    /// In trash as `trash`: the tree inside its tmpfs is deleted, but
    /// something still holds files in the tmpfs, which stays mounted there
    /// (and in use, up to its size) until a check finds it empty.
    Detaching { trash: String },
}

impl Phase {
    /// The state clients see.
    pub fn state(&self) -> LeaseState {
        match self {
            Phase::Live { .. } => LeaseState::Live,
            Phase::Keeping { .. } | Phase::Kept => LeaseState::Kept,
            Phase::Releasing { .. } | Phase::Removing | Phase::Reaping { .. } => {
                LeaseState::Reaping
            }
            Phase::Quarantined { .. } => LeaseState::Quarantined,
            Phase::Detaching { .. } => LeaseState::Detaching,
        }
    }

    /// A name for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Live { .. } => "live",
            Phase::Releasing { .. } => "being released",
            Phase::Keeping { .. } => "being kept",
            Phase::Kept => "kept",
            Phase::Removing => "being removed",
            Phase::Reaping { .. } => "being deleted",
            Phase::Quarantined { .. } => "quarantined",
            Phase::Detaching { .. } => "detaching (its tmpfs still held)",
        }
    }

    /// The trash entry holding the tree, if it is in trash.
    pub fn trash_name(&self) -> Option<&str> {
        match self {
            Phase::Reaping { trash }
            | Phase::Quarantined { trash }
            | Phase::Detaching { trash } => Some(trash),
            _ => None,
        }
    }
}

/// One lease the daemon knows about. Outside this module only copies
/// exist: changing a copy changes nothing.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub name: String,
    /// Who the tree belongs to: the build's owner while live, the requester
    /// once a kept tree is handed over.
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Who asked for it.
    pub peer: Peer,
    pub created: SystemTime,
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
    phase: Phase,
}

impl LeaseRecord {
    /// A record for lease `id` asked for by `peer`, owned by the peer,
    /// created now; the table decides its phase when it takes it.
    pub fn new(id: LeaseId, peer: Peer) -> LeaseRecord {
        LeaseRecord {
            id,
            name: String::new(),
            owner_uid: peer.uid,
            owner_gid: peer.gid,
            peer,
            created: SystemTime::now(),
            kept_at: None,
            size_bytes: None,
            secret: String::new(),
            limit_bytes: None,
            project_id: None,
            phase: Phase::Live { conn: None },
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The state clients see.
    pub fn state(&self) -> LeaseState {
        self.phase.state()
    }

    /// The connection holding a live lease.
    pub fn conn(&self) -> Option<ConnId> {
        match self.phase {
            Phase::Live { conn } => conn,
            _ => None,
        }
    }

    /// Returns true if and only if `uid` may see and act on this lease: its
    /// requester, or the tree's owner while it is not handed over yet.
    pub fn concerns(&self, uid: u32) -> bool {
        self.peer.uid == uid || self.owner_uid == uid
    }
}

/// A transition that does not apply to the lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("no lease {0}")]
    Unknown(LeaseId),
    #[error("lease {id} is {now}, not {wanted}")]
    WrongPhase {
        id: LeaseId,
        now: &'static str,
        wanted: &'static str,
    },
}

/// An allocation would pass a lease limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("max_leases = {max} reached; release leases or raise max_leases")]
    Total { max: usize },
    #[error("max_leases_per_uid = {max} reached for uid {uid}; release leases or raise max_leases_per_uid")]
    PerUid { max: usize, uid: u32 },
}

/// The lease-count limits (from the config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_leases: usize,
    pub max_leases_per_uid: usize,
}

/// How an ender wants a live lease to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Release,
    Keep,
}

/// What a restored lease is, by where its tree was found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    Live,
    Kept,
    Reaping {
        trash: String,
    },
    /// In trash, its record marked detaching: its tmpfs was held.
    Detaching {
        trash: String,
    },
}

#[derive(Debug, Default)]
struct Inner {
    leases: HashMap<LeaseId, LeaseRecord>,
    /// Allocations admitted against the limits, not in `leases` yet.
    pending_total: usize,
    pending_by_uid: HashMap<u32, usize>,
}

impl Inner {
    fn record(&mut self, id: LeaseId) -> Result<&mut LeaseRecord, TransitionError> {
        self.leases.get_mut(&id).ok_or(TransitionError::Unknown(id))
    }

    /// Leases that count against the lease limits, in total and of
    /// requester `uid`: live ones, and trees on their way out (releasing,
    /// being reaped, quarantined, a tmpfs still held) until they are really
    /// gone — else a user whose trees cannot be deleted, or whose processes
    /// hold a released tmpfs, could fill the disk or memory past every limit.
    /// Kept trees are bounded by retention instead.
    fn live_counts(&self, uid: u32) -> (usize, usize) {
        let live = self.leases.values().filter(|r| {
            matches!(
                r.phase,
                Phase::Live { .. }
                    | Phase::Releasing { .. }
                    | Phase::Reaping { .. }
                    | Phase::Quarantined { .. }
                    | Phase::Detaching { .. }
            )
        });
        live.fold((0, 0), |(all, mine), r| {
            (all + 1, mine + usize::from(r.peer.uid == uid))
        })
    }
}

fn wrong(id: LeaseId, now: &Phase, wanted: &'static str) -> TransitionError {
    TransitionError::WrongPhase {
        id,
        now: now.name(),
        wanted,
    }
}

/// Every lease, behind one lock held only for short, syscall-free sections.
#[derive(Debug, Default)]
pub struct LeaseTable {
    inner: Mutex<Inner>,
}

impl LeaseTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every transition below is a check and a store with no call that
        // can panic in between, so a panic elsewhere while the lock was held
        // leaves nothing half-done: recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of lease `id`.
    pub fn get(&self, id: LeaseId) -> Option<LeaseRecord> {
        self.lock().leases.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies of the leases `keep` selects.
    pub fn select(&self, keep: impl Fn(&LeaseRecord) -> bool) -> Vec<LeaseRecord> {
        self.lock()
            .leases
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    /// Ids of the leases `keep` selects.
    pub fn ids(&self, keep: impl Fn(&LeaseRecord) -> bool) -> Vec<LeaseId> {
        self.lock()
            .leases
            .values()
            .filter(|r| keep(r))
            .map(|r| r.id)
            .collect()
    }

    /// Project ids held by any lease.
    pub fn project_ids(&self) -> HashSet<u32> {
        self.lock()
            .leases
            .values()
            .filter_map(|r| r.project_id)
            .collect()
    }

    /// Live leases: (all, of `uid` as requester).
    pub fn live_counts(&self, uid: u32) -> (usize, usize) {
        self.lock().live_counts(uid)
    }

    /// The sum of the size limits of every lease in the table, whatever
    /// its state (a tmpfs lease holds its memory until it is gone).
    pub fn limit_bytes_total(&self) -> u64 {
        self.lock()
            .leases
            .values()
            .filter_map(|r| r.limit_bytes)
            .fold(0u64, u64::saturating_add)
    }

    /// Leases by state: (live, kept, reaping, quarantined, detaching).
    pub fn state_counts(&self) -> [u64; 5] {
        let mut n = [0u64; 5];
        for r in self.lock().leases.values() {
            n[match r.state() {
                LeaseState::Live => 0,
                LeaseState::Kept => 1,
                LeaseState::Reaping => 2,
                LeaseState::Quarantined => 3,
                LeaseState::Detaching => 4,
            }] += 1;
        }
        n
    }

    /// Gives the map's spare capacity back (after a burst of leases).
    pub fn shrink_to_fit(&self) {
        self.lock().leases.shrink_to_fit();
    }

    /// Checks the limits for one more live lease of requester `uid` and
    /// counts it at once, so concurrent allocations cannot both pass the
    /// last free place. The place is held until the [`Slot`] is admitted
    /// or dropped.
    pub fn reserve(&self, uid: u32, limits: Limits) -> Result<Slot<'_>, LimitError> {
        let mut inner = self.lock();
        let (all, mine) = inner.live_counts(uid);
        let pending_mine = inner.pending_by_uid.get(&uid).copied().unwrap_or(0);
        if all + inner.pending_total >= limits.max_leases {
            return Err(LimitError::Total {
                max: limits.max_leases,
            });
        }
        if mine + pending_mine >= limits.max_leases_per_uid {
            return Err(LimitError::PerUid {
                max: limits.max_leases_per_uid,
                uid,
            });
        }
        inner.pending_total += 1;
        *inner.pending_by_uid.entry(uid).or_insert(0) += 1;
        Ok(Slot {
            table: self,
            uid,
            done: false,
        })
    }

    /// Puts a lease back after a restart, as found on disk.
    pub fn restore(&self, mut record: LeaseRecord, found: Restored) {
        record.phase = match found {
            Restored::Live => Phase::Live { conn: None },
            Restored::Kept => Phase::Kept,
            Restored::Reaping { trash } => Phase::Reaping { trash },
            Restored::Detaching { trash } => Phase::Detaching { trash },
        };
        self.lock().leases.insert(record.id, record);
    }

    /// Binds detached live leases `ids` to `conn` (a connection systemd
    /// handed back); returns how many it bound.
    pub fn attach_resumed(&self, ids: &[LeaseId], conn: ConnId) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for id in ids {
            if let Some(r) = inner.leases.get_mut(id) {
                if r.phase == (Phase::Live { conn: None }) {
                    r.phase = Phase::Live { conn: Some(conn) };
                    n += 1;
                }
            }
        }
        n
    }

    /// Reclaim: binds detached live lease `id` to `conn` if `proof` holds
    /// for its record (the secret matches). Returns true if it did.
    pub fn attach(&self, id: LeaseId, conn: ConnId, proof: impl Fn(&LeaseRecord) -> bool) -> bool {
        let mut inner = self.lock();
        match inner.leases.get_mut(&id) {
            Some(r) if r.phase == (Phase::Live { conn: None }) && proof(r) => {
                r.phase = Phase::Live { conn: Some(conn) };
                true
            }
            _ => false,
        }
    }

    /// Live leases held by `conn`.
    pub fn held_by(&self, conn: ConnId) -> Vec<LeaseId> {
        self.ids(|r| r.phase == (Phase::Live { conn: Some(conn) }))
    }

    /// Live leases no connection holds.
    pub fn detached(&self) -> Vec<LeaseId> {
        self.ids(|r| r.phase == (Phase::Live { conn: None }))
    }

    /// Takes live lease `id` for exactly one ender: a release racing a
    /// disconnect acts once. The claim must be completed
    /// ([`Claim::into_reaping`], [`Claim::into_kept`]); dropped, it puts
    /// the lease back as it was.
    pub fn claim_live(&self, id: LeaseId, end: End) -> Result<Claim<'_>, TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        let Phase::Live { conn } = r.phase else {
            return Err(wrong(id, &r.phase, "live"));
        };
        r.phase = match end {
            End::Release => Phase::Releasing { conn },
            End::Keep => Phase::Keeping { conn, moved: false },
        };
        Ok(Claim {
            table: self,
            id,
            record: r.clone(),
            done: false,
        })
    }

    /// Takes kept lease `id` for exactly one remover (gc, retention,
    /// remove). Dropped before [`Claim::into_reaping`], it is kept again.
    pub fn claim_kept(&self, id: LeaseId) -> Result<Claim<'_>, TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        if r.phase != Phase::Kept {
            return Err(wrong(id, &r.phase, "kept"));
        }
        r.phase = Phase::Removing;
        Ok(Claim {
            table: self,
            id,
            record: r.clone(),
            done: false,
        })
    }

    /// Records the measured size of kept tree `id`.
    pub fn measured(&self, id: LeaseId, bytes: u64) {
        if let Some(r) = self.lock().leases.get_mut(&id) {
            if r.phase == Phase::Kept {
                r.size_bytes = Some(bytes);
            }
        }
    }

    /// The reap of `id` finished: the lease is gone. Returns how many
    /// leases are left.
    pub fn reaped(&self, id: LeaseId) -> Result<usize, TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        if !matches!(r.phase, Phase::Reaping { .. }) {
            return Err(wrong(id, &r.phase, "being deleted"));
        }
        inner.leases.remove(&id);
        Ok(inner.leases.len())
    }

    /// The reap of `id` deleted the tree in its tmpfs, but something
    /// still holds files there: the tmpfs stays mounted and the lease
    /// (listed, counted) detaching until [`LeaseTable::tmpfs_gone`].
    pub fn detaching(&self, id: LeaseId) -> Result<(), TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        match &r.phase {
            Phase::Reaping { trash } => {
                r.phase = Phase::Detaching {
                    trash: trash.clone(),
                };
                Ok(())
            }
            other => Err(wrong(id, other, "being deleted")),
        }
    }

    /// The held tmpfs of detaching lease `id` is unmounted (it held
    /// nothing any more): the rest of its tree is reaped. Returns its
    /// trash name.
    pub fn tmpfs_gone(&self, id: LeaseId) -> Result<String, TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        match &r.phase {
            Phase::Detaching { trash } => {
                let trash = trash.clone();
                r.phase = Phase::Reaping {
                    trash: trash.clone(),
                };
                Ok(trash)
            }
            other => Err(wrong(id, other, "detaching")),
        }
    }

    /// An operator retries a quarantined tree: it is being reaped again.
    /// Returns its trash name.
    pub fn retry_reap(&self, id: LeaseId) -> Result<String, TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        match &r.phase {
            Phase::Quarantined { trash } => {
                let trash = trash.clone();
                r.phase = Phase::Reaping {
                    trash: trash.clone(),
                };
                Ok(trash)
            }
            other => Err(wrong(id, other, "quarantined")),
        }
    }

    /// The reap of `id` gave up: the tree stays in trash, quarantined.
    pub fn quarantined(&self, id: LeaseId) -> Result<(), TransitionError> {
        let mut inner = self.lock();
        let r = inner.record(id)?;
        match &r.phase {
            Phase::Reaping { trash } => {
                r.phase = Phase::Quarantined {
                    trash: trash.clone(),
                };
                Ok(())
            }
            other => Err(wrong(id, other, "being deleted")),
        }
    }
}

/// A place under the lease limits, held for one allocation in flight.
#[derive(Debug)]
pub struct Slot<'t> {
    table: &'t LeaseTable,
    uid: u32,
    done: bool,
}

impl Slot<'_> {
    /// The allocation succeeded: `record` is live, held by `conn`. Returns
    /// how many leases the table holds now.
    pub fn admit(mut self, mut record: LeaseRecord, conn: ConnId) -> usize {
        let mut inner = self.table.lock();
        unpend(&mut inner, self.uid);
        self.done = true;
        record.phase = Phase::Live { conn: Some(conn) };
        inner.leases.insert(record.id, record);
        inner.leases.len()
    }
}

fn unpend(inner: &mut Inner, uid: u32) {
    inner.pending_total = inner.pending_total.saturating_sub(1);
    if let Some(n) = inner.pending_by_uid.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            inner.pending_by_uid.remove(&uid);
        }
    }
}

impl Drop for Slot<'_> {
    /// The allocation failed (or panicked): the place is free again.
    fn drop(&mut self) {
        if !self.done {
            unpend(&mut self.table.lock(), self.uid);
        }
    }
}

/// One ender's exclusive hold on a lease in transition.
#[derive(Debug)]
pub struct Claim<'t> {
    table: &'t LeaseTable,
    id: LeaseId,
    /// The record as it was when claimed.
    record: LeaseRecord,
    done: bool,
}

impl Claim<'_> {
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The record as it was when claimed.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// The tree is in trash as `trash`: the lease is being deleted.
    pub fn into_reaping(mut self, trash: String) {
        self.done = true;
        if let Some(r) = self.table.lock().leases.get_mut(&self.id) {
            r.phase = Phase::Reaping { trash };
        }
    }

    /// A keep's tree reached the kept area; from here a failed hand-over
    /// leaves it kept (not live).
    pub fn moved_to_kept(&mut self) {
        if let Some(r) = self.table.lock().leases.get_mut(&self.id) {
            if let Phase::Keeping { conn, .. } = r.phase {
                r.phase = Phase::Keeping { conn, moved: true };
            }
        }
    }

    /// The keep is done: the tree is kept, owned by `owner` (the requester
    /// once handed over), since `kept_at`, `size` bytes if measured.
    pub fn into_kept(mut self, owner: (u32, u32), kept_at: SystemTime, size: Option<u64>) {
        self.done = true;
        if let Some(r) = self.table.lock().leases.get_mut(&self.id) {
            r.phase = Phase::Kept;
            (r.owner_uid, r.owner_gid) = owner;
            r.kept_at = Some(kept_at);
            r.size_bytes = size;
        }
    }
}

impl Drop for Claim<'_> {
    /// Not completed: the lease goes back to where it was, bound to the
    /// same connection, so a later disconnect still ends it.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(r) = self.table.lock().leases.get_mut(&self.id) {
            r.phase = match r.phase {
                Phase::Releasing { conn } | Phase::Keeping { conn, moved: false } => {
                    Phase::Live { conn }
                }
                Phase::Keeping { moved: true, .. } | Phase::Removing => Phase::Kept,
                ref other => other.clone(),
            };
        }
    }
}

#[cfg(test)]
mod tests;
