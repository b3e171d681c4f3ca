//! The runtime-free client (`builddir_client::blocking`): one connection
//! holds many leases, ending one leaves the others, closing the connection
//! releases all, and after a daemon restart the caller reclaims explicitly.

use std::time::Duration;

use builddir_client::blocking::Client;
use builddir_client::{Error, LeaseState};
use builddir_tests::{eventually, require_root, Daemon};

#[test]
fn one_connection_holds_many_leases_and_closing_it_releases_them_all() {
    if !require_root("blocking_many_leases") {
        return;
    }
    let d = Daemon::start("blocking-many");
    let mut conn = Client::connect(&d.socket).unwrap();
    assert_eq!(
        conn.server_info().protocol_version,
        builddir_proto::PROTOCOL_VERSION
    );
    let dirs: Vec<_> = (0..3)
        .map(|i| conn.allocate_dir(&format!("job-{i}"), None, None).unwrap())
        .collect();
    for dir in &dirs {
        assert!(dir.path_matches_dir(), "{}", dir.path().display());
        let flags = rustix::io::fcntl_getfd(dir.dir()).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }
    let paths: Vec<_> = dirs.iter().map(|d| d.path().to_owned()).collect();
    let mut dirs = dirs.into_iter();
    let first = dirs.next().unwrap();
    let released = conn.release_dir(first).unwrap();
    assert_eq!(released.kept_path, None);
    assert!(!released.limit_reached);
    assert!(!paths[0].exists(), "released tree still at its path");
    assert!(
        paths[1].exists() && paths[2].exists(),
        "release ended others"
    );
    let live: Vec<_> = conn
        .list(false, false)
        .unwrap()
        .into_iter()
        .filter(|r| r.state == LeaseState::Live)
        .collect();
    assert_eq!(live.len(), 2, "{live:?}");
    let second = dirs.next().unwrap();
    let kept = conn.keep_dir(second).unwrap();
    assert!(std::path::Path::new(kept.kept_path.as_deref().unwrap()).exists());
    // The third is still held; dropping the connection releases it.
    drop(conn);
    assert!(
        eventually(Duration::from_secs(10), || !paths[2].exists()),
        "a lease outlived its connection"
    );
    drop(dirs);
}

#[test]
fn after_a_restart_the_caller_reclaims_its_leases_on_a_new_connection() {
    if !require_root("blocking_reclaim") {
        return;
    }
    let mut d = Daemon::start_with_config(
        "blocking-reclaim",
        "reclaim_grace_secs = 30\nfd_store = false\n",
    );
    let mut conn = Client::connect(&d.socket).unwrap();
    let a = conn.allocate_dir("a", None, None).unwrap();
    let b = conn.allocate_dir("b", None, None).unwrap();
    assert!(d.terminate().success());
    d.spawn();
    // No background task noticed: the old connection fails when used.
    match conn.status() {
        Err(Error::Proto(e)) => assert!(e.is_disconnect(), "{e}"),
        other => panic!("status on a connection to a stopped daemon: {other:?}"),
    }
    let mut conn = Client::connect(&d.socket).unwrap();
    conn.reclaim_dir(&a).unwrap();
    conn.reclaim_dir(&b).unwrap();
    assert!(a.path().exists() && b.path().exists());
    let (a_path, b_path) = (a.path().to_owned(), b.path().to_owned());
    conn.release_dir(a).unwrap();
    assert!(!a_path.exists());
    drop(conn);
    assert!(
        eventually(Duration::from_secs(10), || !b_path.exists()),
        "reclaimed lease outlived its new connection"
    );
}
