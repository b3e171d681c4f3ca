//! Walks over a tree that a build user controls: sizing it and removing it,
//! by file descriptor only.

pub mod empty;
pub mod remove;
pub mod walk;
