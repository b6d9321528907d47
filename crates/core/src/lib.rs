//! voxgate's shared vocabulary: identifiers (regions, nodes, sessions) and capacity arithmetic.
//!
//! Every other crate speaks these types. Nothing here does I/O, reads a clock or draws randomness:
//! callers pass values in.

pub mod capacity;
pub mod id;

pub use capacity::Capacity;
pub use id::{IdError, NodeId, RegionId, SessionId};
