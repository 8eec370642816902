//! Roost's inter-node protocol: the tonic/prost code generated from
//! `proto/roost/cluster/v1/cluster.proto` (see docs/rfcs/0002).
//!
//! # What is here
//!
//! [`v1`] holds everything generated for the protobuf package `roost.cluster.v1`:
//!
//! - the messages (`ForwardBatch`, `RaftPayload`, `StatusReply`, ...) as prost structs;
//! - for the `Raft` service: [`v1::raft_client::RaftClient`], and the
//!   [`v1::raft_server::Raft`] trait with its [`v1::raft_server::RaftServer`] wrapper;
//! - for the `Cluster` service: [`v1::cluster_client::ClusterClient`], and the
//!   [`v1::cluster_server::Cluster`] trait with its [`v1::cluster_server::ClusterServer`] wrapper.
//!
//! `build.rs` parses the `.proto` files with `protox`, a pure-Rust protobuf compiler, and hands
//! the resulting descriptor set to `tonic-prost-build`; building needs no `protoc` binary. The
//! generated file lands in `OUT_DIR` and is never checked in.
//!
//! # Version policy
//!
//! The package is `roost.cluster.v1`. Within v1 only wire-compatible changes are allowed: new
//! fields with new numbers, new RPCs, new messages; a removed field's number is `reserved`. A
//! change that breaks the wire (renumbering, changing a field's type, changing an RPC's shape)
//! goes into a new package, `roost.cluster.v2`, generated into a `v2` module here beside `v1`.
//!
//! # Who uses it
//!
//! Only `roost-cluster`. It converts between these types and Roost's own types at its edge:
//! no prost type travels past `roost-cluster` (roost-core, roost-node and the rest never see
//! them).
//!
//! # Transport security
//!
//! tonic is built without TLS: the cluster listener is meant for a trusted network between the
//! nodes. Exposing it beyond that needs TLS (a tonic `tls-*` feature) and an RFC first.

/// Generated code for the protobuf package `roost.cluster.v1`.
///
/// The lint allowances cover generated code only, which we do not edit; they are not for
/// hand-written code.
#[allow(
    missing_docs,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::unwrap_used
)]
pub mod v1 {
    tonic::include_proto!("roost.cluster.v1");
}
