//! The broker's brain, sans-IO.
//!
//! Everything here is plain, deterministic code: no tokio, no sockets, no clock. Callers pass
//! `now` in and get actions back (house style, convention 1), so every behaviour can be tested by
//! feeding inputs and asserting the exact outputs.
//!
//! ```text
//!   roost-node driver ──packet, now──▶ session::Session ──actions──▶ driver (send / route / close)
//!   roost-node router ──topic──▶ index::SubscriptionIndex ──matches──▶ sessions' outbound queues
//!                     ──topic──▶ retained::RetainedStore
//! ```
//!
//! - [`ClientId`]: the client identifier, one type from CONNECT to the cluster registry.
//! - [`topic`]: validated topic names and filters (`$share` included) and matching.
//! - [`index`]: the subscription trie (`+`, `#`, `$`-topics, shared groups, overlap aggregation).
//! - [`retained`]: retained messages by topic.
//! - [`message`]: an application message as it travels inside the broker (payload shared).
//! - [`session`]: the per-client session state machine (QoS flows, packet ids, windows,
//!   offline queue, topic aliases, expiry).

mod client_id;
pub mod connect;
pub mod index;
pub mod message;
pub mod retained;
pub mod session;
pub mod topic;

pub use client_id::ClientId;
