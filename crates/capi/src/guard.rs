//! Nothing crosses the C boundary but a status: every entry point runs its
//! body under `catch_unwind`, and a panic (a bug) becomes
//! `BUILDDIR_ERR_INTERNAL` with a message, never an abort or output.
//!
//! Rust prints a panic's message from its panic hook before unwinding, so
//! the library wraps the hook once: a panic raised inside one of its calls
//! (flagged per thread) is silent; any other goes to the previous hook as
//! before. That wrapper is the library's only process-wide state.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::abi::builddir_status;
use crate::failure::Failure;

thread_local! {
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
}

fn quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CALL.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `body`, turning a panic into `BUILDDIR_ERR_INTERNAL`.
pub fn run(body: impl FnOnce() -> Result<(), Failure>) -> Result<(), Failure> {
    quiet_hook();
    let outer = IN_CALL.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(body));
    IN_CALL.with(|c| c.set(outer));
    result.unwrap_or_else(|_| {
        Err(Failure::new(
            builddir_status::BUILDDIR_ERR_INTERNAL,
            "internal error in libbuilddir (a bug, caught): the connection may be out of step; close it, connect again, and report this",
        ))
    })
}

/// Runs `body` for a call that cannot report failure (`builddir_close`):
/// a panic is swallowed silently.
pub fn quietly(body: impl FnOnce()) {
    quiet_hook();
    let outer = IN_CALL.with(|c| c.replace(true));
    let _ = catch_unwind(AssertUnwindSafe(body));
    IN_CALL.with(|c| c.set(outer));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_internal_and_later_calls_work() {
        let f = run(|| panic!("boom")).unwrap_err();
        assert_eq!(f.status, builddir_status::BUILDDIR_ERR_INTERNAL);
        assert!(f.message.contains("internal error in libbuilddir"));
        assert!(!IN_CALL.with(Cell::get), "flag left set after a panic");
        assert!(run(|| Ok(())).is_ok());
        quietly(|| panic!("also caught"));
    }
}
