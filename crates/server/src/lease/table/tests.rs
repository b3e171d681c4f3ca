//! The table's transitions, in memory: no root, no filesystem.

use super::*;

fn peer(uid: u32) -> Peer {
    Peer {
        uid,
        gid: uid,
        pid: 1,
        command: String::new(),
        groups: Vec::new(),
    }
}

const LIMITS: Limits = Limits {
    max_leases: 3,
    max_leases_per_uid: 2,
};

fn live(table: &LeaseTable, uid: u32, conn: ConnId) -> LeaseId {
    let id = LeaseId::generate().unwrap();
    let slot = table.reserve(uid, LIMITS).expect("under the limits");
    slot.admit(LeaseRecord::new(id, peer(uid)), conn);
    id
}

#[test]
fn a_failed_release_puts_the_lease_back_on_its_connection() {
    let table = LeaseTable::default();
    let id = live(&table, 1000, 7);
    let claim = table.claim_live(id, End::Release).unwrap();
    assert_eq!(table.get(id).unwrap().state(), LeaseState::Reaping);
    assert!(table.held_by(7).is_empty());
    drop(claim); // the rename into trash failed
    assert_eq!(
        *table.get(id).unwrap().phase(),
        Phase::Live { conn: Some(7) }
    );
    assert_eq!(table.held_by(7), vec![id], "a later disconnect must end it");
}

#[test]
fn a_failed_keep_puts_the_lease_back_and_a_moved_one_stays_kept() {
    let table = LeaseTable::default();
    let id = live(&table, 1000, 7);
    drop(table.claim_live(id, End::Keep).unwrap());
    assert_eq!(table.held_by(7), vec![id]);
    let mut claim = table.claim_live(id, End::Keep).unwrap();
    claim.moved_to_kept();
    drop(claim); // the hand-over step panicked after the rename
    assert_eq!(*table.get(id).unwrap().phase(), Phase::Kept);
}

#[test]
fn a_lease_is_claimed_once() {
    let table = LeaseTable::default();
    let id = live(&table, 1000, 7);
    let first = table.claim_live(id, End::Release).unwrap();
    assert!(matches!(
        table.claim_live(id, End::Keep),
        Err(TransitionError::WrongPhase { .. })
    ));
    first.into_reaping("t".into());
    assert!(table.claim_live(id, End::Release).is_err());
    assert!(table.claim_kept(id).is_err());
    assert_eq!(table.reaped(id), Ok(0));
    assert_eq!(
        table.claim_live(id, End::Release).unwrap_err(),
        TransitionError::Unknown(id)
    );
}

#[test]
fn a_kept_tree_names_its_new_owner_and_is_removed_once() {
    let table = LeaseTable::default();
    let id = live(&table, 61_105, 7);
    let claim = table.claim_live(id, End::Keep).unwrap();
    claim.into_kept((1000, 1000), SystemTime::now(), Some(5));
    let r = table.get(id).unwrap();
    assert_eq!((r.owner_uid, r.state()), (1000, LeaseState::Kept));
    assert!(!r.concerns(61_105) || r.peer.uid == 61_105);
    let removing = table.claim_kept(id).unwrap();
    assert!(table.claim_kept(id).is_err());
    drop(removing);
    assert_eq!(*table.get(id).unwrap().phase(), Phase::Kept);
    table.claim_kept(id).unwrap().into_reaping("t".into());
    table.quarantined(id).unwrap();
    assert_eq!(table.get(id).unwrap().state(), LeaseState::Quarantined);
}

#[test]
fn places_under_the_limits_are_counted_when_reserved() {
    let table = LeaseTable::default();
    let a = table.reserve(1, LIMITS).unwrap();
    let b = table.reserve(1, LIMITS).unwrap();
    assert_eq!(
        table.reserve(1, LIMITS).unwrap_err(),
        LimitError::PerUid { max: 2, uid: 1 }
    );
    let c = table.reserve(2, LIMITS).unwrap();
    assert_eq!(
        table.reserve(3, LIMITS).unwrap_err(),
        LimitError::Total { max: 3 }
    );
    drop(c); // that allocation failed: its place is free again
    let c = table.reserve(3, LIMITS).unwrap();
    a.admit(LeaseRecord::new(LeaseId::generate().unwrap(), peer(1)), 1);
    drop(b);
    drop(c);
    assert_eq!(table.live_counts(1), (1, 1));
    assert!(table.reserve(1, LIMITS).is_ok());
}

#[test]
fn detached_leases_are_reclaimed_with_proof_only() {
    let table = LeaseTable::default();
    let id = LeaseId::generate().unwrap();
    table.restore(LeaseRecord::new(id, peer(1)), Restored::Live);
    assert_eq!(table.detached(), vec![id]);
    assert!(!table.attach(id, 3, |_| false));
    assert!(table.attach(id, 3, |_| true));
    assert!(!table.attach(id, 4, |_| true), "already attached");
    assert_eq!(table.held_by(3), vec![id]);
    assert_eq!(table.attach_resumed(&[id], 9), 0);
}

#[test]
fn a_held_tmpfs_keeps_its_lease_detaching_and_counted_until_it_is_gone() {
    let table = LeaseTable::default();
    let id = live(&table, 1000, 7);
    // Only a tree being deleted can turn detaching.
    assert!(matches!(
        table.detaching(id),
        Err(TransitionError::WrongPhase { .. })
    ));
    table
        .claim_live(id, End::Release)
        .unwrap()
        .into_reaping("t".into());
    table.detaching(id).unwrap();
    assert_eq!(table.get(id).unwrap().state(), LeaseState::Detaching);
    assert_eq!(table.state_counts(), [0, 0, 0, 0, 1]);
    // Still its user's place under the limits.
    assert_eq!(table.live_counts(1000), (1, 1));
    assert!(
        table.quarantined(id).is_err(),
        "its tree is deleted already"
    );
    assert!(table.detaching(id).is_err(), "detaching once");
    assert!(
        table.reaped(id).is_err(),
        "not gone while its tmpfs is mounted"
    );
    // Its tmpfs is unmounted: the rest of its tree is reaped, then it is gone.
    assert_eq!(table.tmpfs_gone(id), Ok("t".to_owned()));
    assert!(table.tmpfs_gone(id).is_err(), "once");
    assert_eq!(table.live_counts(1000), (1, 1));
    assert_eq!(table.reaped(id), Ok(0));
    assert_eq!(table.live_counts(1000), (0, 0));
}

#[test]
fn a_held_tmpfs_restored_at_start_is_detaching_and_counted_with_its_size() {
    let table = LeaseTable::default();
    let id = LeaseId::generate().unwrap();
    let mut record = LeaseRecord::new(id, peer(1000));
    record.limit_bytes = Some(8 << 20);
    table.restore(record, Restored::Detaching { trash: "t".into() });
    assert_eq!(table.state_counts(), [0, 0, 0, 0, 1]);
    assert_eq!(table.live_counts(1000), (1, 1));
    assert_eq!(table.limit_bytes_total(), 8 << 20);
    assert_eq!(table.get(id).unwrap().phase().trash_name(), Some("t"));
    assert_eq!(table.tmpfs_gone(id), Ok("t".to_owned()));
}
