//! One connection: accepting it, who is on the other end, its session, and
//! one file per request.

pub mod accept;
pub mod failures;
pub mod listener;
pub mod peer;
pub mod requests;
pub mod session;
