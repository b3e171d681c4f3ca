//! `libbuilddir`: the C library for builddird, on the runtime-free
//! [`builddir_client::blocking`] client.
//!
//! The C API is `include/builddir.h`. Its rules: no thread is ever started,
//! every descriptor the library creates or hands out is close-on-exec,
//! errors are a [`abi::builddir_status`] plus a one-line message in the
//! caller's buffer, nothing is printed, nothing aborts, no panic crosses
//! the boundary, and every pointer is checked. A connection is usable in
//! the process that made it (the parent after `fork()`); a child that uses
//! it gets `BUILDDIR_ERR_INVALID_ARGUMENT`.

pub mod abi;
pub mod api;
mod cbuf;
mod conn;
mod failure;
mod guard;

pub use abi::*;
pub use api::*;
