//! voxgate's capacity control: whether this node may take a session and which Backend serves it.
//!
//! [`admission::SessionSlots`] is the node cap: one atomic reserve per session, released when the
//! owned [`admission::SessionSlot`] is dropped. [`picker::BackendPicker`] places a session on the
//! least-loaded eligible Backend of the caller's region, spilling over to configured regions only when
//! the region has none; the [`picker::BackendLease`] it hands out gives the session back on drop.
//! [`health::HealthTracker`] turns OPTIONS probe outcomes into up/down flips with hysteresis, and
//! [`trunk::TrunkTable`] maps a caller's source address to its trunk (and so its region) and an
//! outbound call to the trunk it leaves through.
//!
//! Nothing here does I/O, reads a clock or draws OS randomness: time comes in as `now`, randomness
//! from a seed, and probes are sent by the proxy, which reports their outcome. Every type is safe to
//! share between many tasks (state sits behind atomics or a `std::sync::Mutex` held for
//! microseconds). The cluster registry (embedded and Redis), node and region lifecycle and the
//! autoscale advisor are not built yet.

pub mod admission;
pub mod backend;
pub mod health;
pub mod picker;
pub mod trunk;

pub use admission::{SessionSlot, SessionSlots};
pub use backend::{BackendSpec, BackendStatus};
pub use health::{HealthConfig, HealthTracker};
pub use picker::{BackendLease, BackendPicker, PickError, Spillover};
pub use trunk::{Trunk, TrunkTable};
