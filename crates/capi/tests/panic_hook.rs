//! A Rust program that links the library (rlib) and makes its first call
//! from a destructor while a panic unwinds: the library must not touch the
//! panic hook then (`take_hook` panics while panicking, which aborts). Its
//! own test binary, so that this is the process's first library call.

#![allow(unsafe_code)]

use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use builddir::{builddir_set_timeout, builddir_status};

static STATUS: AtomicI32 = AtomicI32::new(-1);
static HOST_HOOK_RAN: AtomicBool = AtomicBool::new(false);

struct CallsOnDrop;

impl Drop for CallsOnDrop {
    fn drop(&mut self) {
        // SAFETY: NULL connection and error buffer are allowed.
        let s = unsafe { builddir_set_timeout(null_mut(), 0, null_mut(), 0) };
        STATUS.store(s as i32, Ordering::SeqCst);
    }
}

#[test]
fn first_call_during_unwinding_returns_and_the_host_hook_keeps_working() {
    std::panic::set_hook(Box::new(|_| HOST_HOOK_RAN.store(true, Ordering::SeqCst)));
    let r = std::panic::catch_unwind(|| {
        let _d = CallsOnDrop;
        panic!("host panic");
    });
    assert!(r.is_err());
    assert_eq!(
        STATUS.load(Ordering::SeqCst),
        builddir_status::BUILDDIR_ERR_INVALID_ARGUMENT as i32
    );
    // A later call installs the library's quiet wrapper; the host's own
    // panics still reach the host's hook.
    // SAFETY: as above.
    let _ = unsafe { builddir_set_timeout(null_mut(), 0, null_mut(), 0) };
    HOST_HOOK_RAN.store(false, Ordering::SeqCst);
    assert!(std::panic::catch_unwind(|| panic!("host panic after a library call")).is_err());
    assert!(HOST_HOOK_RAN.load(Ordering::SeqCst));
}
