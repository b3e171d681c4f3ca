//! Reclaim after a restart: only the lease's requester (or root) may take a
//! lease over, whatever secret it shows. In-process, without root.

use super::support::{daemon, my_peer, TempRoot};
use crate::conn::requests::Session;
use crate::lease::id::LeaseId;
use crate::lease::table::{LeaseRecord, Restored};
use builddir_proto::{ErrorKind, Request, Response};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_requester_may_reclaim_even_with_the_right_secret() {
    let tmp = TempRoot::new("reclaim-requester");
    let d = daemon(&tmp, "");
    // A lease awaiting reclaim (its connection did not survive a restart).
    let id = LeaseId::generate().unwrap();
    let mut record = LeaseRecord::new(id, my_peer());
    record.secret = "the-right-secret".into();
    d.table.restore(record, Restored::Live);
    let reclaim = Request::Reclaim {
        id: id.to_string(),
        secret: "the-right-secret".into(),
    };
    // Another uid (not root) with the right secret: refused, and the
    // answer does not confirm the lease exists.
    let mut stranger_peer = my_peer();
    stranger_peer.uid = stranger_peer.uid.wrapping_add(1).max(1);
    let mut stranger = Session::new(d.clone(), stranger_peer, d.next_conn_id());
    match stranger.handle(reclaim.clone()).await.0 {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::NotFound, "{}", e.message),
        other => panic!("a stranger reclaimed the lease: {other:?}"),
    }
    assert_eq!(
        d.table.detached(),
        vec![id],
        "still waiting for its requester"
    );
    // The requester with the same secret: reclaimed.
    let mut owner = Session::new(d.clone(), my_peer(), d.next_conn_id());
    assert!(
        matches!(owner.handle(reclaim).await.0, Response::Reclaimed { .. }),
        "the requester could not reclaim"
    );
    assert!(d.table.detached().is_empty());
}
