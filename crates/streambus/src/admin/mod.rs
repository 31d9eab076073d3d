//! Operations on streams and groups: what an operator or a dashboard does, as
//! opposed to publishing and consuming.
//!
//! - [`monitor`]: a [`Monitor`](monitor::Monitor) snapshot of a stream, its
//!   groups and consumers (lag, pending, idle, delivery counts, consumer
//!   [`Status`](monitor::Status)), and the safe [`cleanup`](monitor::cleanup)
//!   of dead consumers, which never loses an entry.
//! - [`scaler`]: how many consumers a group should have: the reference
//!   package's rule and a throughput [`Advisor`](scaler::Advisor).
//! - [`dead_letter`]: the dead-letter stream of a stream: list, count,
//!   replay, purge.
//! - [`group`]: create, destroy and list consumer groups.
//! - [`preflight`]: server settings that weaken the guarantees (persistence,
//!   eviction), as warnings.
//!
//! Each is a set of functions over a [`Connection`](crate::Connection) from
//! [`Client::connect`](crate::Client::connect); none of them keeps state.

pub mod dead_letter;
pub mod group;
pub mod monitor;
pub mod preflight;
pub mod scaler;
