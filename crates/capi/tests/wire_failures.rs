//! libbuilddir's C API against a fake daemon that fails on the wire: a late
//! reply is never taken for a later call's answer (the connection is out of
//! step after the failure), and a lease whose keep failed on the wire can
//! still be taken over by `builddir_reconnect` and ended after.

#![allow(unsafe_code)]

#[path = "../../client/tests/fake_daemon/mod.rs"]
mod fake_daemon;

use std::ffi::{c_char, CStr, CString};
use std::ptr::null_mut;
use std::time::Duration;

use builddir::*;
use builddir_proto::{Request, Response};
use fake_daemon::{FakeDaemon, Next};

struct Call {
    status: builddir_status,
    err: String,
}

fn err_text(buf: &[c_char]) -> String {
    // SAFETY: the library NUL-terminates what it writes; the buffer was
    // zeroed and its last byte is never written but as a NUL.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn connect(socket: &std::path::Path) -> *mut builddir_conn {
    let path = CString::new(socket.to_str().unwrap()).unwrap();
    let mut conn = null_mut();
    let mut err = [0 as c_char; 512];
    // SAFETY: valid string, out slot and error buffer.
    let s = unsafe { builddir_connect(path.as_ptr(), &mut conn, err.as_mut_ptr(), err.len()) };
    assert_eq!(s, builddir_status::BUILDDIR_OK, "{}", err_text(&err));
    conn
}

fn new_lease() -> Box<builddir_lease> {
    Box::new(builddir_lease {
        dir_fd: -1,
        uid: 0,
        gid: 0,
        id: [0; BUILDDIR_ID_MAX],
        path: [0; BUILDDIR_PATH_MAX],
    })
}

fn new_outcome() -> Box<builddir_outcome> {
    Box::new(builddir_outcome {
        kept_path: [0; BUILDDIR_PATH_MAX],
        limit_reached: 0,
    })
}

fn allocate(conn: *mut builddir_conn) -> Box<builddir_lease> {
    let mut lease = new_lease();
    let mut err = [0 as c_char; 512];
    // SAFETY: live connection, valid out struct and buffer.
    let s = unsafe {
        builddir_allocate(
            conn,
            c"job".as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            &mut *lease,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert_eq!(s, builddir_status::BUILDDIR_OK, "{}", err_text(&err));
    lease
}

fn keep(
    conn: *mut builddir_conn,
    lease: &mut builddir_lease,
    outcome: &mut builddir_outcome,
) -> Call {
    let mut err = [0 as c_char; 512];
    // SAFETY: live connection, valid structs and buffer.
    let status = unsafe { builddir_keep(conn, lease, outcome, err.as_mut_ptr(), err.len()) };
    Call {
        status,
        err: err_text(&err),
    }
}

#[test]
fn after_a_timeout_the_next_keep_fails_out_of_step_instead_of_taking_the_late_reply() {
    let d = FakeDaemon::start(1, |p, req| {
        match req {
            Request::Allocate { .. } => {
                let id = format!("id{}", p.n);
                p.allocated(&id)
            }
            Request::Release { id, keep } => {
                if id == "id1" {
                    std::thread::sleep(Duration::from_millis(400));
                }
                p.released(&id, keep)
            }
            _ => return Next::Hang,
        }
        Next::Continue
    });
    let conn = connect(&d.socket);
    let mut err = [0 as c_char; 512];
    // SAFETY: live connection, valid buffer.
    let s = unsafe { builddir_set_timeout(conn, 150, err.as_mut_ptr(), err.len()) };
    assert_eq!(s, builddir_status::BUILDDIR_OK);
    let mut a = allocate(conn);
    let mut b = allocate(conn);
    let mut outcome = new_outcome();
    let first = keep(conn, &mut a, &mut outcome);
    assert_eq!(
        first.status,
        builddir_status::BUILDDIR_ERR_IO,
        "{}",
        first.err
    );
    assert!(first.err.contains("did not answer"), "{}", first.err);
    assert!(
        !first.err.contains("gone"),
        "a timeout does not lose leases: {}",
        first.err
    );
    std::thread::sleep(Duration::from_millis(400));
    let second = keep(conn, &mut b, &mut outcome);
    assert_eq!(
        second.status,
        builddir_status::BUILDDIR_ERR_IO,
        "keep(b) after the timeout: {} kept_path={:?}",
        second.err,
        err_text(&outcome.kept_path)
    );
    assert_eq!(
        second.err,
        "the connection is out of step: close it and connect again"
    );
    assert_eq!(err_text(&outcome.kept_path), "");
    // SAFETY: from builddir_connect, closed once.
    unsafe { builddir_close(conn) };
}

#[test]
fn a_keep_that_fails_on_the_wire_can_be_reclaimed_by_reconnect_and_kept_after() {
    let d = FakeDaemon::start(2, |p, req| {
        match (p.connection, req) {
            (0, Request::Allocate { .. }) => p.allocated("id1"),
            // The daemon goes away before answering the keep.
            (0, Request::Release { .. }) => return Next::Hang,
            (1, Request::Reclaim { id, secret }) if secret == format!("secret-{id}") => {
                p.send(&Response::Reclaimed { id }, None)
            }
            (1, Request::Release { id, keep }) => p.released(&id, keep),
            _ => return Next::Hang,
        }
        Next::Continue
    });
    let conn = connect(&d.socket);
    let mut lease = allocate(conn);
    let mut outcome = new_outcome();
    let failed = keep(conn, &mut lease, &mut outcome);
    assert_eq!(
        failed.status,
        builddir_status::BUILDDIR_ERR_IO,
        "{}",
        failed.err
    );
    assert_eq!(lease.dir_fd, -1);
    let mut lost = 99u32;
    let mut err = [0 as c_char; 512];
    // SAFETY: live connection, valid out pointer and buffer.
    let s = unsafe { builddir_reconnect(conn, &mut lost, err.as_mut_ptr(), err.len()) };
    assert_eq!(s, builddir_status::BUILDDIR_OK, "{}", err_text(&err));
    assert_eq!(lost, 0, "the lease whose keep failed was not taken over");
    let again = keep(conn, &mut lease, &mut outcome);
    assert_eq!(again.status, builddir_status::BUILDDIR_OK, "{}", again.err);
    assert_eq!(err_text(&outcome.kept_path), "/kept/id1");
    // SAFETY: from builddir_connect, closed once.
    unsafe { builddir_close(conn) };
}
