//! SIP for voxgate, on rsip: bounded parsing and validation of messages, the RFC 3261 transaction
//! layer (with the RFC 6026 Accepted states), audio SDP offer/answer, digest authentication
//! (RFC 3261 22, RFC 8760) and the cheap look at a request the edge guard takes before parsing.
//!
//! Everything here is sans-I/O: no sockets, no tasks and no clock reads. Bytes and `now` go in
//! through `handle_*`; datagrams to send, events for the transaction user and the next deadline
//! come out through `poll_transmit`, `poll_event` and `poll_timeout`. Dialogs, B2BUA legs and
//! transports (sockets, TCP framing) live above this crate.

pub mod dialog;
pub mod digest;
pub mod message;
pub mod peek;
pub mod sdp;
pub mod timer;
pub mod transaction;
pub mod validate;

pub use message::{MAX_MESSAGE_SIZE, ParseError, parse};
pub use timer::TimerConfig;
pub use transaction::{Event, TransactionError, TransactionKey, Transactions, Transmit, Transport};
