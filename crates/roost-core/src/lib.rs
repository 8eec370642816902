//! The broker's brain, sans-IO.
//!
//! Everything here is plain, deterministic code: no tokio, no sockets, no clock. Callers pass
//! `now` in and get actions back (house style, convention 1), so every behaviour can be tested by
//! feeding inputs and asserting the exact outputs.
//!
//! ```text
//!   driver ──CONNECT──▶ connect::negotiate(policy) ──▶ Negotiated | Refusal (CONNACK)
//!          ──Negotiated, now──▶ Session::attach
//!          ──packet, now──▶ Session::handle ──▶ Handled: Done | Publish | Ack | Dropped |
//!                                               Subscribe | Unsubscribe | Close | ...
//!                                    outbox ──▶ take_outbox ──▶ prepare_publish ──▶ encode
//!          ──arm poll_timeout()──▶ fires ──▶ Session::handle_timeout(now) ──▶ Timeout
//!          ──close, will──▶ Session::detach(now) ──▶ will now / pending, expiry, orphans
//!   router ──topic──▶ index::SubscriptionIndex ──matches──▶ Session::deliver (outbound queues)
//!          ──topic──▶ retained::RetainedStore
//! ```
//!
//! The driver only reads, decodes, calls `handle`, acts on what it is told (route, commit a
//! subscription, close), encodes and writes, and arms the one timer `poll_timeout` names (quinn-
//! proto's `handle` / `poll_timeout` / `handle_timeout`; openraft's engine: events in, commands
//! out).
//!
//! - [`ClientId`]: the client identifier, one type from CONNECT to the cluster registry.
//! - [`connect`]: CONNECT negotiation against the node's [`connect::ServerPolicy`], and CONNACK.
//! - [`topic`]: validated topic names and filters (`$share` included) and matching.
//! - [`index`]: the subscription trie (`+`, `#`, `$`-topics, shared groups, overlap aggregation).
//! - [`rate`]: token buckets for rate limits.
//! - [`retained`]: retained messages by topic.
//! - [`message`]: an application message as it travels inside the broker (payload shared).
//! - [`policy`]: AWS-IoT-style authorization policies, their store and attachments, evaluation.
//! - [`session`]: the per-client session state machine (client packets, QoS flows, packet ids,
//!   windows, offline queue, topic aliases, keep-alive, will delay, expiry).

mod client_id;
pub mod connect;
pub mod index;
pub mod message;
pub mod policy;
pub mod rate;
pub mod retained;
pub mod session;
pub mod topic;

pub use client_id::ClientId;
