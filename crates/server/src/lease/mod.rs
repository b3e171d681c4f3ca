//! The lease lifecycle, and nothing else: the table of leases (the only
//! place a lease changes state: [`table`]), the daemon's shared state,
//! creating one, ending one (trash or hand-over), retention of kept trees,
//! the reaper and the check of held tmpfses, sizes, the on-disk registry
//! and recovery at start.

pub mod create;
pub mod daemon;
pub mod detaching;
pub mod end;
pub mod hand_over;
pub mod hand_overs;
pub mod id;
pub mod outer;
pub mod reaper;
pub mod recover;
pub mod registry;
pub mod retention;
pub mod size;
pub mod table;
pub mod trash;
pub mod walks;
