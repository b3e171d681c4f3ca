//! Property: any interleaving of allocate, release, keep, disconnect, a
//! panicking request and a daemon restart, over a small table, leaves
//! every lease in exactly one state, the one its directory is in on disk,
//! the one a model of the requests predicts, and never more live leases
//! than the limits allow.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::support::{daemon, my_peer, quiet, TempRoot};
use crate::conn::requests::Session;
use crate::lease::id::LeaseId;
use crate::lease::table::{Daemon, Phase};
use builddir_proto::{ErrorKind, Request, Response};
use proptest::prelude::*;

const CONFIG: &str =
    "max_leases = 4\nmax_leases_per_uid = 3\nkept_max_count = 0\nkept_max_age_secs = 0\nreclaim_grace_secs = 3600\n";
const LIMIT: usize = 3; // one uid: the smaller limit
const CONNS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Allocate(usize),
    Release(usize, usize),
    Keep(usize, usize),
    Disconnect(usize),
    Panic(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CONNS).prop_map(Op::Allocate),
        2 => (0..CONNS, 0..4usize).prop_map(|(c, k)| Op::Release(c, k)),
        2 => (0..CONNS, 0..4usize).prop_map(|(c, k)| Op::Keep(c, k)),
        1 => (0..CONNS).prop_map(Op::Disconnect),
        1 => (0..CONNS).prop_map(Op::Panic),
        1 => Just(Op::Restart),
    ]
}

/// What the requests so far should have left.
#[derive(Debug, Default)]
struct Model {
    /// Live leases by the connection slot holding them (None: detached by
    /// a restart).
    live: BTreeMap<LeaseId, Option<usize>>,
    kept: BTreeSet<LeaseId>,
}

struct World {
    tmp: TempRoot,
    daemon: Arc<Daemon>,
    sessions: Vec<Session>,
    /// Leases each connection slot allocated, in order.
    allocated: Vec<Vec<LeaseId>>,
}

impl World {
    fn session(daemon: &Arc<Daemon>) -> Session {
        Session::new(daemon.clone(), my_peer(), daemon.next_conn_id())
    }

    fn new() -> World {
        let tmp = TempRoot::new("interleave");
        let daemon = daemon(&tmp, CONFIG);
        let sessions = (0..CONNS).map(|_| World::session(&daemon)).collect();
        World {
            tmp,
            daemon,
            sessions,
            allocated: vec![Vec::new(); CONNS],
        }
    }

    /// A new connection in slot `c`; the old one's Drop ran (or not).
    fn reconnect(&mut self, c: usize) -> Session {
        let fresh = World::session(&self.daemon);
        self.allocated[c].clear();
        std::mem::replace(&mut self.sessions[c], fresh)
    }
}

async fn apply(w: &mut World, m: &mut Model, op: &Op) {
    match *op {
        Op::Allocate(c) => {
            let (reply, _fd) = w.sessions[c]
                .handle(Request::Allocate {
                    name: format!("c{c}"),
                    owner: None,
                    limit: None,
                })
                .await;
            // As the connection loop does once the reply is sent.
            w.sessions[c].after_reply();
            match reply {
                Response::Allocated(a) => {
                    assert!(m.live.len() < LIMIT, "allocated past the limit");
                    let id = LeaseId::parse(&a.id).unwrap();
                    m.live.insert(id, Some(c));
                    w.allocated[c].push(id);
                }
                Response::Error(e) => {
                    assert_eq!(e.kind, ErrorKind::QuotaExceeded, "{e:?}");
                    assert!(m.live.len() >= LIMIT, "refused under the limit: {e:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        Op::Release(c, k) | Op::Keep(c, k) => {
            let Some(&id) = w.allocated[c].get(k) else {
                return;
            };
            let keep = matches!(op, Op::Keep(..));
            let (reply, _) = w.sessions[c]
                .handle(Request::Release {
                    id: id.to_string(),
                    keep,
                })
                .await;
            w.sessions[c].after_reply();
            let was_live = m.live.remove(&id).is_some();
            match reply {
                Response::Released(r) => {
                    assert!(was_live, "released a lease that was not live");
                    assert_eq!(r.kept_path.is_some(), keep);
                    if keep {
                        m.kept.insert(id);
                    }
                }
                Response::Error(e) => {
                    assert!(!was_live, "a live lease was not released: {e:?}");
                    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        Op::Disconnect(c) => {
            drop(w.reconnect(c));
            m.live.retain(|_, held| *held != Some(c));
        }
        Op::Panic(c) => {
            let session = w.reconnect(c);
            let task = tokio::spawn(async move {
                let _held = session;
                panic!("a request panicked");
            });
            assert!(task.await.unwrap_err().is_panic());
            m.live.retain(|_, held| *held != Some(c));
        }
        Op::Restart => {
            assert!(quiet(&w.daemon, &w.tmp).await, "reaps did not finish");
            // The process dies: no session's Drop runs.
            for s in std::mem::take(&mut w.sessions) {
                std::mem::forget(s);
            }
            w.daemon = daemon(&w.tmp, CONFIG);
            crate::lease::recover::recover(&w.daemon, Vec::new());
            w.sessions = (0..CONNS).map(|_| World::session(&w.daemon)).collect();
            w.allocated = vec![Vec::new(); CONNS];
            for held in m.live.values_mut() {
                *held = None;
            }
        }
    }
}

/// Every record in one settled state, the state its directory is in, the
/// state the model predicts; nothing on disk without a record.
async fn check(w: &World, m: &Model) {
    assert!(quiet(&w.daemon, &w.tmp).await, "reaps did not finish");
    let records = w.daemon.table.select(|_| true);
    let b: BTreeSet<String> = w.tmp.names("b").into_iter().collect();
    let kept: BTreeSet<String> = w.tmp.names("kept").into_iter().collect();
    let mut live_seen = BTreeSet::new();
    let mut kept_seen = BTreeSet::new();
    for r in &records {
        let name = r.id.to_string();
        match r.phase() {
            Phase::Live { .. } => {
                assert!(b.contains(&name) && !kept.contains(&name), "{r:?}");
                live_seen.insert(r.id);
            }
            Phase::Kept => {
                assert!(kept.contains(&name) && !b.contains(&name), "{r:?}");
                kept_seen.insert(r.id);
            }
            other => panic!("unsettled or quarantined: {other:?} {r:?}"),
        }
    }
    assert_eq!(
        b.len(),
        live_seen.len(),
        "a live tree without a record: {b:?}"
    );
    assert_eq!(kept.len(), kept_seen.len(), "a kept tree without a record");
    let model_live: BTreeSet<LeaseId> = m.live.keys().copied().collect();
    assert_eq!(live_seen, model_live);
    assert_eq!(kept_seen, m.kept);
    assert!(live_seen.len() <= LIMIT);
    let detached: BTreeSet<LeaseId> = w.daemon.table.detached().into_iter().collect();
    let model_detached: BTreeSet<LeaseId> = m
        .live
        .iter()
        .filter(|(_, held)| held.is_none())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(detached, model_detached);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_interleaving_leaves_each_lease_in_one_state_matching_the_disk(
        ops in proptest::collection::vec(op(), 1..24)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = World::new();
            let mut m = Model::default();
            for op in &ops {
                apply(&mut w, &mut m, op).await;
                check(&w, &m).await;
            }
        });
    }
}
