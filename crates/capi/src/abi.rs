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

/// Declares `builddir_status` and its tables from one list, so that no
/// table can leave a variant out (`ALL` is built from the same list as the
/// enum itself).
macro_rules! statuses {
    ($( $variant:ident = $value:literal => $name:literal, )*) => {
        /// Every call's result. Values are fixed: new ones are only ever
        /// appended.
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(clippy::enum_variant_names)]
        pub enum builddir_status {
            $( $variant = $value, )*
        }

        impl builddir_status {
            /// Every status, in value order.
            pub const ALL: &'static [builddir_status] = &[ $( builddir_status::$variant, )* ];

            /// The C enumerator's name (for the header check).
            pub fn c_name(self) -> &'static str {
                match self {
                    $( builddir_status::$variant => stringify!($variant), )*
                }
            }

            /// The stable kebab-case name `builddir_status_str` returns,
            /// NUL terminated (a static string).
            pub fn name_nul(self) -> &'static str {
                match self {
                    $( builddir_status::$variant => concat!($name, "\0"), )*
                }
            }
        }
    };
}

statuses! {
    BUILDDIR_OK = 0 => "ok",
    BUILDDIR_ERR_INVALID_ARGUMENT = 1 => "invalid-argument",
    BUILDDIR_ERR_CONNECT = 2 => "connect",
    BUILDDIR_ERR_PROTOCOL = 3 => "protocol",
    BUILDDIR_ERR_IO = 4 => "io",
    BUILDDIR_ERR_PERMISSION_DENIED = 5 => "permission-denied",
    BUILDDIR_ERR_QUOTA_EXCEEDED = 6 => "quota-exceeded",
    BUILDDIR_ERR_NO_SPACE = 7 => "no-space",
    BUILDDIR_ERR_INVALID_NAME = 8 => "invalid-name",
    BUILDDIR_ERR_NOT_FOUND = 9 => "not-found",
    BUILDDIR_ERR_BUSY = 10 => "busy",
    BUILDDIR_ERR_INTERNAL = 11 => "internal",
    BUILDDIR_ERR_BAD_REQUEST = 12 => "bad-request",
}

impl builddir_status {
    /// The status with C value `v`, if there is one.
    pub fn from_c(v: c_int) -> Option<builddir_status> {
        builddir_status::ALL
            .iter()
            .copied()
            .find(|s| *s as c_int == v)
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
