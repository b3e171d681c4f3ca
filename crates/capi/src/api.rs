//! The exported C functions (`include/builddir.h`). Each checks every
//! pointer, runs under `guard::run` (no panic crosses, nothing prints)
//! and leaves the work to `conn::Conn`.

// `#[no_mangle]` exports and raw pointers from C are this module's job;
// each dereference has a SAFETY comment naming the C caller's promise.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int};
use std::time::Duration;

use builddir_client::{Owner, SizeLimit};

use crate::abi::{
    builddir_lease, builddir_limits, builddir_outcome, builddir_owner, builddir_status,
    BUILDDIR_PATH_MAX,
};
use crate::cbuf::write_err;
use crate::cbuf::{read_buf, read_str, write_str};
use crate::conn::{Conn, Ending};
use crate::failure::Failure;
use crate::guard::{quietly, run};

/// The opaque connection handle C holds.
#[allow(non_camel_case_types)]
pub type builddir_conn = Conn;

/// The library version, NUL-terminated.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// Longest lease name read from C: longer is an invalid argument (the
/// daemon's own limit, 255 bytes, is checked after and is invalid-name).
const NAME_READ_MAX: usize = BUILDDIR_PATH_MAX - 1;

/// A call's status; a failure's message goes to `err`.
///
/// # Safety
/// `err` is NULL or points to `errlen` writable bytes.
unsafe fn report(result: Result<(), Failure>, err: *mut c_char, errlen: usize) -> builddir_status {
    match result {
        Ok(()) => builddir_status::BUILDDIR_OK,
        Err(f) => {
            // SAFETY: forwarded contract.
            unsafe { write_err(err, errlen, &f.message) };
            f.status
        }
    }
}

fn null(what: &str) -> Failure {
    Failure::invalid(format!("{what} is NULL; pass a valid pointer"))
}

/// The connection behind the handle C passed, or the invalid-argument
/// failure for NULL: every call that takes a `conn` checks it this way, at
/// the point of its contract where the handle is first needed.
///
/// # Safety
/// `conn` is NULL or from [`builddir_connect`], not closed, and used by no
/// other call while the reference lives (the C contract of every function
/// taking a `conn`).
unsafe fn live_conn<'a>(conn: *mut builddir_conn) -> Result<&'a mut Conn, Failure> {
    // SAFETY: NULL (then None) or a live, unshared connection (contract).
    unsafe { conn.as_mut() }.ok_or_else(|| null("conn"))
}

/// The library's version, a static string.
#[no_mangle]
pub extern "C" fn builddir_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// The stable name of a status (`"permission-denied"`), a static string;
/// `"unknown"` for a value that is not a status. Takes the C enum as an
/// `int` so that any value C passes is defined behaviour.
#[no_mangle]
pub extern "C" fn builddir_status_str(s: c_int) -> *const c_char {
    match builddir_status::from_c(s) {
        Some(s) => s.name_nul().as_ptr().cast(),
        None => c"unknown".as_ptr(),
    }
}

/// Connects and completes the handshake; `*out` is the connection.
///
/// # Safety
/// Pointers are NULL or valid as `builddir.h` describes: `socket_path` a
/// NUL-terminated string, `out` a writable pointer slot, `err` `errlen`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn builddir_connect(
    socket_path: *const c_char,
    out: *mut *mut builddir_conn,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    let result = run(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: `out` is non-null and writable (contract).
        unsafe { out.write(std::ptr::null_mut()) };
        let socket = if socket_path.is_null() {
            None
        } else {
            // SAFETY: non-null, NUL-terminated (contract); bounded.
            Some(unsafe { read_str(socket_path, BUILDDIR_PATH_MAX - 1, "socket_path") }?)
        };
        let conn = Box::new(Conn::connect(socket)?);
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(conn)) };
        Ok(())
    });
    // SAFETY: `err`/`errlen` per this function's contract.
    unsafe { report(result, err, errlen) }
}

/// Allocates a lease on `conn`.
///
/// # Safety
/// `conn` is NULL or from [`builddir_connect`] and not closed; the other
/// pointers are NULL or valid for their types (`name` NUL-terminated, `out`
/// writable, `err` `errlen` writable bytes).
#[no_mangle]
pub unsafe extern "C" fn builddir_allocate(
    conn: *mut builddir_conn,
    name: *const c_char,
    owner: *const builddir_owner,
    limits: *const builddir_limits,
    out: *mut builddir_lease,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    let result = run(|| {
        if out.is_null() {
            return Err(null("out (the lease to fill)"));
        }
        // SAFETY: non-null and writable (contract).
        let out = unsafe { &mut *out };
        out.dir_fd = -1;
        out.uid = 0;
        out.gid = 0;
        out.id[0] = 0;
        out.path[0] = 0;
        // SAFETY: NULL or a live connection from builddir_connect (contract).
        let conn = unsafe { live_conn(conn) }?;
        let name = if name.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated (contract); bounded.
            unsafe { read_str(name, NAME_READ_MAX, "name") }?
        };
        // SAFETY: NULL or a valid struct (contract).
        let owner = unsafe { owner.as_ref() }.map(|o| Owner {
            uid: o.uid,
            gid: o.gid,
        });
        // SAFETY: NULL or a valid struct (contract).
        let limit = unsafe { limits.as_ref() }
            .filter(|l| l.bytes != 0 || l.inodes != 0)
            .map(|l| SizeLimit {
                bytes: l.bytes,
                inodes: l.inodes,
            });
        let granted = conn.allocate(&name, owner, limit)?;
        // Conn::allocate checked that both fit.
        let _ = write_str(&mut out.id, &granted.id);
        let _ = write_str(&mut out.path, &granted.path);
        out.uid = granted.uid;
        out.gid = granted.gid;
        out.dir_fd = granted.fd;
        Ok(())
    });
    // SAFETY: `err`/`errlen` per this function's contract.
    unsafe { report(result, err, errlen) }
}

/// Ends `lease`, keeping the tree or not.
///
/// # Safety
/// As for [`builddir_allocate`]; `lease` NULL or a valid struct, `outcome`
/// NULL or writable.
unsafe fn end(
    conn: *mut builddir_conn,
    lease: *mut builddir_lease,
    outcome: *mut builddir_outcome,
    ending: Ending,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    let result = run(|| {
        // SAFETY: NULL or writable (contract).
        let outcome = unsafe { outcome.as_mut() };
        let mut outcome = outcome;
        if let Some(o) = outcome.as_mut() {
            o.kept_path[0] = 0;
            o.limit_reached = 0;
        }
        // SAFETY: NULL or a valid, writable struct (contract).
        let Some(lease) = (unsafe { lease.as_mut() }) else {
            return Err(null("lease"));
        };
        // The caller's copy of the number is void from here on, whatever
        // happens; the descriptor itself is ours to close (Conn::end).
        lease.dir_fd = -1;
        // SAFETY: NULL or a live connection from builddir_connect (contract).
        let conn = unsafe { live_conn(conn) }?;
        let id = read_buf(&lease.id, "lease->id")?;
        let released = conn.end(&id, ending)?;
        if let Some(o) = outcome.as_mut() {
            o.limit_reached = c_int::from(released.limit_reached);
            if let Some(path) = &released.kept_path {
                if write_str(&mut o.kept_path, path).is_err() {
                    return Err(Failure::new(
                            builddir_status::BUILDDIR_ERR_PROTOCOL,
                            format!("lease {id} was kept at a path too long for the outcome ({} bytes); see `builddir-ctl list`", path.len()),
                        ));
                }
            }
        }
        Ok(())
    });
    // SAFETY: `err`/`errlen` per this function's contract.
    unsafe { report(result, err, errlen) }
}

/// Ends the lease keeping its tree; the kept path goes to `outcome`.
///
/// # Safety
/// See [`builddir_allocate`].
#[no_mangle]
pub unsafe extern "C" fn builddir_keep(
    conn: *mut builddir_conn,
    lease: *mut builddir_lease,
    outcome: *mut builddir_outcome,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    // SAFETY: forwarded contract.
    unsafe { end(conn, lease, outcome, Ending::Keep, err, errlen) }
}

/// Ends the lease keeping its tree for `owner` instead of the caller.
///
/// # Safety
/// See [`builddir_allocate`]; `owner` NULL or a valid struct.
#[no_mangle]
pub unsafe extern "C" fn builddir_keep_for(
    conn: *mut builddir_conn,
    lease: *mut builddir_lease,
    owner: *const builddir_owner,
    outcome: *mut builddir_outcome,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    // SAFETY: NULL or a valid struct (contract).
    let owner = unsafe { owner.as_ref() }.map(|o| Owner {
        uid: o.uid,
        gid: o.gid,
    });
    let Some(owner) = owner else {
        // The lease is left as it is: nothing was asked of the daemon.
        // SAFETY: `err`/`errlen` per this function's contract.
        return unsafe { report(Err(null("owner")), err, errlen) };
    };
    // SAFETY: forwarded contract.
    unsafe { end(conn, lease, outcome, Ending::KeepFor(owner), err, errlen) }
}

/// Ends the lease; the daemon deletes the tree in the background.
///
/// # Safety
/// See [`builddir_allocate`].
#[no_mangle]
pub unsafe extern "C" fn builddir_release(
    conn: *mut builddir_conn,
    lease: *mut builddir_lease,
    outcome: *mut builddir_outcome,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    // SAFETY: forwarded contract.
    unsafe { end(conn, lease, outcome, Ending::Release, err, errlen) }
}

/// Closes the connection (the daemon releases its leases). NULL: no-op.
///
/// # Safety
/// `conn` is NULL or from [`builddir_connect`], not closed before.
#[no_mangle]
pub unsafe extern "C" fn builddir_close(conn: *mut builddir_conn) {
    if conn.is_null() {
        return;
    }
    quietly(|| {
        // SAFETY: from Box::into_raw in builddir_connect, closed once
        // (contract).
        drop(unsafe { Box::from_raw(conn) });
    });
}

/// Bounds each later call's wait for the daemon to `timeout_ms`
/// milliseconds (0: no bound, the default). A call that runs out fails with
/// `BUILDDIR_ERR_IO` and the connection is unusable after it: close it.
///
/// # Safety
/// See [`builddir_allocate`].
#[no_mangle]
pub unsafe extern "C" fn builddir_set_timeout(
    conn: *mut builddir_conn,
    timeout_ms: u32,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    let result = run(|| {
        // SAFETY: NULL or a live connection from builddir_connect (contract).
        let conn = unsafe { live_conn(conn) }?;
        let t = (timeout_ms != 0).then(|| Duration::from_millis(timeout_ms.into()));
        conn.set_timeout(t)
    });
    // SAFETY: `err`/`errlen` per this function's contract.
    unsafe { report(result, err, errlen) }
}

/// Connects again to the same socket and takes over the connection's
/// leases (after a daemon restart without the fd store); `*lost` (if not
/// NULL) is how many the daemon no longer had.
///
/// # Safety
/// See [`builddir_allocate`]; `lost` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn builddir_reconnect(
    conn: *mut builddir_conn,
    lost: *mut u32,
    err: *mut c_char,
    errlen: usize,
) -> builddir_status {
    let result = run(|| {
        // SAFETY: NULL or writable (contract).
        let mut lost = unsafe { lost.as_mut() };
        if let Some(n) = lost.as_mut() {
            **n = 0;
        }
        // SAFETY: NULL or a live connection from builddir_connect (contract).
        let conn = unsafe { live_conn(conn) }?;
        let n = conn.reconnect()?;
        if let Some(l) = lost {
            *l = n;
        }
        Ok(())
    });
    // SAFETY: `err`/`errlen` per this function's contract.
    unsafe { report(result, err, errlen) }
}
