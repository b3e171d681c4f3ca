//! The daemon in-process through its library seam (`crate::run`):
//! real sockets, real directories, no root.

use std::time::Duration;

use super::support::{daemon, eventually, me, my_peer, quiet, TempRoot};
use crate::conn::requests::Session;
use crate::lease::end::spawn_grace_expiry;
use crate::lease::id::LeaseId;
use crate::lease::registry::LeaseMeta;
use crate::lease::table::{LeaseRecord, Restored};
use builddir_proto::{ErrorKind, Request, Response};

const NO_RETENTION: &str = "kept_max_count = 0\nkept_max_age_secs = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_allocates_releases_and_disconnects_through_run() {
    let tmp = TempRoot::new("seam-run");
    let d = daemon(&tmp, NO_RETENTION);
    let listener = tokio::net::UnixListener::bind(tmp.socket()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::run(d.clone(), listener, async {
        let _ = stopped.await;
    }));

    let lease = builddir_client::Client::connect(tmp.socket())
        .await
        .unwrap()
        .allocate("seam")
        .await
        .unwrap();
    assert!(lease.path().is_dir() && lease.path_matches_dir());
    assert_eq!(lease.owner(), me());
    assert_eq!(d.table.live_counts(me().0), (1, 1));
    lease.release().await.unwrap();
    assert!(quiet(&d, &tmp).await);
    assert!(d.table.is_empty() && tmp.names("b").is_empty());

    // A client that goes away without a word loses its lease.
    let lease = builddir_client::Client::connect(tmp.socket())
        .await
        .unwrap()
        .allocate("dropped")
        .await
        .unwrap();
    let path = lease.path().to_owned();
    drop(lease);
    assert!(eventually(|| d.table.is_empty() && !path.exists()).await);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("run returns on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_still_releases_what_the_connection_held() {
    let tmp = TempRoot::new("seam-panic");
    let d = daemon(&tmp, NO_RETENTION);
    let conn = d.next_conn_id();
    let mut session = Session::new(d.clone(), my_peer(), conn);
    let task = tokio::spawn(async move {
        let (reply, fd) = session
            .handle(Request::Allocate {
                name: "held".into(),
                owner: None,
                limit: None,
            })
            .await;
        assert!(matches!(reply, Response::Allocated(_)) && fd.is_some());
        panic!("a request handler panicked");
        #[allow(unreachable_code)]
        drop(session);
    });
    assert!(task.await.unwrap_err().is_panic());
    assert!(d.table.held_by(conn).is_empty());
    assert!(quiet(&d, &tmp).await);
    assert!(d.table.is_empty(), "{:?}", d.table.select(|_| true));
    assert!(tmp.names("b").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_connection_that_cannot_be_served_leaves_its_leases_reclaimable_until_the_grace_ends(
) {
    let tmp = TempRoot::new("seam-resume");
    let d = daemon(
        &tmp,
        "max_connections_per_uid = 1\nreclaim_grace_secs = 1\n",
    );
    // A lease found on disk at start, its connection handed back by systemd.
    let (uid, gid) = me();
    let new = crate::lease::create::allocate(
        &d.layout,
        LeaseId::generate().unwrap(),
        uid,
        gid,
        &crate::backend::Sizing::Unbounded,
        &d.spares,
        |id| LeaseMeta {
            id: id.to_string(),
            name: "running".into(),
            owner_uid: uid,
            owner_gid: gid,
            peer_uid: uid,
            peer_gid: gid,
            peer_pid: 1,
            peer_command: String::new(),
            created_unix: 0,
            secret: "s".into(),
            limit_bytes: None,
            project_id: None,
            kept_unix: None,
            hand_over: None,
            detaching: false,
        },
    )
    .unwrap();
    d.table
        .restore(LeaseRecord::new(new.id, my_peer()), Restored::Live);
    // The uid's only connection slot is taken: the stored one is refused.
    let slot = d.enter_connection(uid).unwrap();
    let (stored, _client) = tokio::net::UnixStream::pair().unwrap();
    let conn = d.next_conn_id();
    crate::conn::session::resume(d.clone(), stored, conn, vec![new.id]).await;
    assert!(d.table.held_by(conn).is_empty());
    assert_eq!(
        d.table.detached(),
        vec![new.id],
        "the lease must stay reclaimable, not bound to a connection that is not served"
    );
    drop(slot);
    spawn_grace_expiry(d.clone());
    assert!(quiet(&d, &tmp).await && eventually(|| d.table.is_empty()).await);
    assert!(tmp.names("b").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_under_concurrent_allocations_in_process() {
    let tmp = TempRoot::new("seam-limits");
    let d = daemon(&tmp, "max_leases = 5\nmax_leases_per_uid = 5\n");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut s = Session::new(d.clone(), my_peer(), d.next_conn_id());
                let (reply, _fd) = s
                    .handle(Request::Allocate {
                        name: "race".into(),
                        owner: None,
                        limit: None,
                    })
                    .await;
                let ok = matches!(reply, Response::Allocated(_));
                if let Response::Error(e) = &reply {
                    assert_eq!(e.kind, ErrorKind::QuotaExceeded, "{e:?}");
                }
                // Hold the lease (the session) until every task is done.
                (ok, s)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    let granted = held.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(granted, 5, "max_leases = 5");
    assert_eq!(d.table.live_counts(me().0), (5, 5));
    drop(held);
    assert!(quiet(&d, &tmp).await && d.table.is_empty());
}

#[test]
fn a_stopping_daemon_keeps_the_leases_of_connections_still_open() {
    let tmp = TempRoot::new("seam-stop");
    let d = daemon(&tmp, NO_RETENTION);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let lease = rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(tmp.socket()).unwrap();
        let server = tokio::spawn(crate::run(d.clone(), listener, async {
            let _ = stopped.await;
        }));
        let lease = builddir_client::Client::connect(tmp.socket())
            .await
            .unwrap()
            .allocate("still-building")
            .await
            .unwrap();
        stop.send(()).unwrap();
        server.await.unwrap();
        lease
    });
    // SIGTERM's path: the runtime goes, and with it every session task.
    drop(rt);
    assert!(d.is_stopping());
    assert_eq!(d.table.live_counts(me().0), (1, 1));
    assert!(
        lease.path().is_dir(),
        "a restart must not end a running build"
    );
    std::mem::forget(lease); // its runtime is gone
}
