//! One Roost node: the MQTT listener, one driver task per connection, routing between sessions,
//! configuration, `$SYS`, and the admin HTTP API.
//!
//! ```text
//!  listener (TCP | TLS | WebSocket) ─accept, handshake─▶ driver::serve (task per connection)
//!                            │ CONNECT ─▶ auth (password file, client certificate)
//!                            │ decode ─▶ Session::handle (roost-core, behind the SessionRef's lock)
//!                            │ PUBLISH ─▶ broker::Broker::publish ─▶ retained, route, forward
//!                            ◀─ wake ── other drivers' routing filled this session's outbox
//!  cluster ─▶ hooks (forwarded messages, hand-over, claims) ─▶ broker
//!  broker ─▶ routes (RouteTable: route changes reconciled until committed) ─▶ cluster
//!  axum ─▶ http (health, readiness, metrics, admin API)       sys ─▶ $SYS/ every interval
//! ```
//!
//! Modules depend one way: `node` wires `broker`, `hooks`, `http`, `sys`; `driver`, `hooks`,
//! `http` and `sys` use `broker`; `broker` uses `routes`, `metrics` and `config`, none of which
//! know the broker.
//!
//! Concurrency model: tokio multi-threaded runtime; the only tasks that await the network are
//! the drivers and the HTTP server. Shared state lives in [`broker`](crate::broker): see its docs
//! for the lock order and overflow policy.

mod auth;
mod broker;
pub mod config;
mod driver;
mod failpoints;
mod hooks;
mod http;
mod https;
mod jwt;
mod listener;
mod metrics;
mod node;
pub mod passwords;
mod policy;
mod routes;
pub mod scram;
mod shard;
mod sys;
pub mod telemetry;

pub use config::Config;
pub use node::{Node, StartError};

/// The current time as the core wants it (`std::time::Instant`), read through tokio's clock so
/// tests with `tokio::time::pause()` control message and session expiry too.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
