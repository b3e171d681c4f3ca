//! The C-visible types, laid out exactly as `include/builddir.h` declares
//! them (`tests/header.rs` compiles C against the header and fails on any
//! difference in sizes, offsets or values).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int};

/// Default socket path (`BUILDDIR_DEFAULT_SOCKET`).
pub const BUILDDIR_DEFAULT_SOCKET: &str = builddir_proto::DEFAULT_SOCKET;
/// Bytes of `builddir_lease.id`, NUL included.
pub const BUILDDIR_ID_MAX: usize = 64;
/// Bytes of the path buffers, NUL included.
pub const BUILDDIR_PATH_MAX: usize = 4096;

/// Every call's result. Values are fixed: new ones are only ever appended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum builddir_status {
    BUILDDIR_OK = 0,
    BUILDDIR_ERR_INVALID_ARGUMENT = 1,
    BUILDDIR_ERR_CONNECT = 2,
    BUILDDIR_ERR_PROTOCOL = 3,
    BUILDDIR_ERR_IO = 4,
    BUILDDIR_ERR_PERMISSION_DENIED = 5,
    BUILDDIR_ERR_QUOTA_EXCEEDED = 6,
    BUILDDIR_ERR_NO_SPACE = 7,
    BUILDDIR_ERR_INVALID_NAME = 8,
    BUILDDIR_ERR_NOT_FOUND = 9,
    BUILDDIR_ERR_BUSY = 10,
    BUILDDIR_ERR_INTERNAL = 11,
    BUILDDIR_ERR_BAD_REQUEST = 12,
}

impl builddir_status {
    /// Every status, in value order.
    pub const ALL: [builddir_status; 13] = [
        builddir_status::BUILDDIR_OK,
        builddir_status::BUILDDIR_ERR_INVALID_ARGUMENT,
        builddir_status::BUILDDIR_ERR_CONNECT,
        builddir_status::BUILDDIR_ERR_PROTOCOL,
        builddir_status::BUILDDIR_ERR_IO,
        builddir_status::BUILDDIR_ERR_PERMISSION_DENIED,
        builddir_status::BUILDDIR_ERR_QUOTA_EXCEEDED,
        builddir_status::BUILDDIR_ERR_NO_SPACE,
        builddir_status::BUILDDIR_ERR_INVALID_NAME,
        builddir_status::BUILDDIR_ERR_NOT_FOUND,
        builddir_status::BUILDDIR_ERR_BUSY,
        builddir_status::BUILDDIR_ERR_INTERNAL,
        builddir_status::BUILDDIR_ERR_BAD_REQUEST,
    ];

    /// The C enumerator's name (for the header check).
    pub fn c_name(self) -> &'static str {
        use builddir_status::*;
        match self {
            BUILDDIR_OK => "BUILDDIR_OK",
            BUILDDIR_ERR_INVALID_ARGUMENT => "BUILDDIR_ERR_INVALID_ARGUMENT",
            BUILDDIR_ERR_CONNECT => "BUILDDIR_ERR_CONNECT",
            BUILDDIR_ERR_PROTOCOL => "BUILDDIR_ERR_PROTOCOL",
            BUILDDIR_ERR_IO => "BUILDDIR_ERR_IO",
            BUILDDIR_ERR_PERMISSION_DENIED => "BUILDDIR_ERR_PERMISSION_DENIED",
            BUILDDIR_ERR_QUOTA_EXCEEDED => "BUILDDIR_ERR_QUOTA_EXCEEDED",
            BUILDDIR_ERR_NO_SPACE => "BUILDDIR_ERR_NO_SPACE",
            BUILDDIR_ERR_INVALID_NAME => "BUILDDIR_ERR_INVALID_NAME",
            BUILDDIR_ERR_NOT_FOUND => "BUILDDIR_ERR_NOT_FOUND",
            BUILDDIR_ERR_BUSY => "BUILDDIR_ERR_BUSY",
            BUILDDIR_ERR_INTERNAL => "BUILDDIR_ERR_INTERNAL",
            BUILDDIR_ERR_BAD_REQUEST => "BUILDDIR_ERR_BAD_REQUEST",
        }
    }

    /// The stable kebab-case name `builddir_status_str` returns, NUL
    /// terminated (a static string).
    pub fn name_nul(self) -> &'static str {
        use builddir_status::*;
        match self {
            BUILDDIR_OK => "ok\0",
            BUILDDIR_ERR_INVALID_ARGUMENT => "invalid-argument\0",
            BUILDDIR_ERR_CONNECT => "connect\0",
            BUILDDIR_ERR_PROTOCOL => "protocol\0",
            BUILDDIR_ERR_IO => "io\0",
            BUILDDIR_ERR_PERMISSION_DENIED => "permission-denied\0",
            BUILDDIR_ERR_QUOTA_EXCEEDED => "quota-exceeded\0",
            BUILDDIR_ERR_NO_SPACE => "no-space\0",
            BUILDDIR_ERR_INVALID_NAME => "invalid-name\0",
            BUILDDIR_ERR_NOT_FOUND => "not-found\0",
            BUILDDIR_ERR_BUSY => "busy\0",
            BUILDDIR_ERR_INTERNAL => "internal\0",
            BUILDDIR_ERR_BAD_REQUEST => "bad-request\0",
        }
    }

    /// The status with C value `v`, if there is one.
    pub fn from_c(v: c_int) -> Option<builddir_status> {
        usize::try_from(v)
            .ok()
            .and_then(|i| builddir_status::ALL.get(i).copied())
    }
}

/// Who should own a build directory.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct builddir_owner {
    pub uid: u32,
    pub gid: u32,
}

/// A build's size limits; 0 means the daemon's default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct builddir_limits {
    pub bytes: u64,
    pub inodes: u64,
}

/// A lease as the caller sees it.
#[repr(C)]
#[derive(Debug)]
pub struct builddir_lease {
    pub dir_fd: c_int,
    pub uid: u32,
    pub gid: u32,
    pub id: [c_char; BUILDDIR_ID_MAX],
    pub path: [c_char; BUILDDIR_PATH_MAX],
}

/// How a lease ended.
#[repr(C)]
#[derive(Debug)]
pub struct builddir_outcome {
    pub kept_path: [c_char; BUILDDIR_PATH_MAX],
    pub limit_reached: c_int,
}
