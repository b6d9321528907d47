//! voxgate's capacity control: whether this node may take a session and which Backend serves it.
//!
//! [`admission::SessionSlots`] is the node cap: one atomic reserve per session, released when the
//! owned [`admission::SessionSlot`] is dropped. [`picker::BackendPicker`] places a session on the
//! least-loaded eligible Backend of the caller's region, spilling over to configured regions only when
//! the region has none; the [`picker::BackendLease`] it hands out gives the session back on drop.
//! [`health::HealthTracker`] turns OPTIONS probe outcomes into up/down flips with hysteresis, and
//! [`trunk::TrunkTable`] maps a caller's source address to its trunk (and so its region) and an
//! outbound call to the trunk it leaves through. [`flood::SourceLimiter`] is the edge's
//! per-source request rate limit with a temporary ban (a `&mut` value: the proxy locks it).
//!
//! [`model`] describes regions and nodes with their operator lifecycle (enabled, disabled,
//! maintenance), hashed API keys and live [`model::NodeStatus`] reports. [`state::ClusterState`]
//! validates and applies operator [`state::Change`]s against the live [`state::Statuses`] (new
//! entities start disabled and in maintenance; deletion is refused while anything still depends on
//! them) and sums per-region capacity. Storing it (embedded file or Redis) is the proxy's job: the
//! registries do I/O, so they live in `voxgate-proxy`'s `registry` module, behind one trait.
//! [`advisor::Advisor`] turns a region's capacity samples into a recommended node count
//! (required = ceil(peak x 1.5 / per-node) + 1; up within a short window, down one node per long
//! window, so it never flaps).
//!
//! Nothing here does I/O, reads a clock or draws OS randomness: time comes in as `now`, randomness
//! from a seed, and probes are sent by the proxy, which reports their outcome. Every type is safe to
//! share between many tasks (state sits behind atomics or a `std::sync::Mutex` held for
//! microseconds).

pub mod admission;
pub mod advisor;
pub mod backend;
pub mod flood;
pub mod health;
pub mod model;
pub mod picker;
pub mod state;
pub mod trunk;

pub use admission::{SessionSlot, SessionSlots};
pub use advisor::{Action, Advice, Advisor, AdvisorConfig, Sample};
pub use backend::{BackendSpec, BackendStatus};
pub use health::{HealthConfig, HealthTracker};
pub use model::{
    AdminState, ApiKeyHash, Lifecycle, NewNode, Node, NodeKind, NodeStatus, Reasons, Region,
    RuntimeState,
};
pub use picker::{BackendLease, BackendPicker, PickError, Spillover};
pub use state::{
    AuditEntry, Change, ClusterError, ClusterState, ErrorCode, RegionCapacity, Statuses,
};
pub use trunk::{Trunk, TrunkDtmf, TrunkTable, TrunkTransfer};
