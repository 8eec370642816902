//! Raft RPCs over gRPC: the client side openraft uses to reach peers ([`RaftNet`]) and the
//! server side that hands peers' RPCs to the local `Raft` ([`RaftService`]); and the
//! [`Dialer`] every client to a peer is made with (plaintext, or mutual TLS, see `crate::tls`).
//!
//! With TLS, the server binds each request to the caller's certificate: the candidate of a
//! vote or pre-vote, and the leader of an AppendEntries or InstallSnapshot (the node id in its
//! vote), must be the node the certificate names, or the call is refused (`PermissionDenied`)
//! before openraft sees it.
//!
//! Payloads are openraft's own serde types encoded with postcard inside a `RaftPayload`; a
//! response carries `Result<Response, RaftError>` so a remote Raft error comes back as
//! `RPCError::RemoteError`, and a transport failure as `Unreachable` (openraft backs off).
//!
//! Bytes: an AppendEntries whose encoding is over [`WireLimits::raft_payload`] is not sent; the
//! peer answers openraft with `PayloadTooLarge` and a hint of how many entries fit, and openraft
//! sends that many (for its next ten requests). One entry always fits: `Cluster::propose`
//! refuses a command over `max_message`. The gRPC limits on both sides are
//! [`WireLimits::raft_grpc`], so a request the peer sends is one the server decodes.

// openraft's RPCError is large, and the trait fixes the return type: boxing it is not an option.
#![allow(clippy::result_large_err)]

use crate::election::{Election, PreVoteRequest, TimeoutNowRequest};
use crate::limits::WireLimits;
use crate::tls::{PeerAuth, Rpc, TlsMaterial};
use crate::types::{NodeId, NodeInfo, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use roost_proto::v1::raft_client::RaftClient;
use roost_proto::v1::raft_server;
use roost_proto::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::debug;

/// How long to wait for a TCP connection to a peer.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes the channels to peers' cluster listeners: `http://` without TLS; with it `https://`,
/// trusting only the cluster CA, presenting this node's certificate, and verifying that the
/// peer is the node dialled (its certificate names `roost-node-<target>`).
#[derive(Clone, Debug)]
pub(crate) struct Dialer {
    tls: Option<Arc<TlsMaterial>>,
}

impl Dialer {
    pub(crate) fn new(tls: Option<Arc<TlsMaterial>>) -> Dialer {
        Dialer { tls }
    }

    /// A lazily connecting gRPC channel to node `target`'s cluster listener at `addr`.
    ///
    /// `addr` is `HOST:PORT` as the membership records it, and HOST may be a DNS name (a
    /// StatefulSet pod's `roost-1.roost-headless:7946`): it is looked up again on every
    /// (re)connect and never pinned to the IP it had. What this rests on, read in tonic 0.14.9
    /// and hyper-util 0.1.21 (re-check on an upgrade of either):
    /// - `Endpoint::connect_lazy` keeps the URI, not an address: the channel is a `Reconnect`
    ///   (tonic `transport/channel/service/reconnect.rs`) over the endpoint's `HttpConnector`.
    /// - `Reconnect` in `Idle` calls the connector with the URI for a new connection. It goes
    ///   back to `Idle` when the connection fails (`poll_ready` error: reset, HTTP/2 keep-alive
    ///   timeout, below) and after a failed connect (the error goes to the one request that
    ///   was waiting; a lazy channel then tries again on the next request).
    /// - `HttpConnector::call` (hyper-util `client/legacy/connect/http.rs`, `call_async`)
    ///   resolves the host with its `GaiResolver` (getaddrinfo on a blocking thread, no cache
    ///   of its own) on every call, and tries each address it returns in turn.
    ///
    /// So a peer whose pod came back on another IP is reached at the new one on the first
    /// connect after the old connection broke: at once on a reset, within the keep-alive
    /// interval plus timeout (10 s) when the old address just went silent. The only cache is
    /// the system resolver's (Kubernetes DNS answers for pods with a TTL of a few seconds).
    /// `cluster_inproc.rs` (`self_join_...`) runs members named by host name through a restart.
    pub(crate) fn channel(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client_config(target))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// Creates one [`RaftPeer`] per target for openraft.
#[derive(Clone)]
pub(crate) struct RaftNet {
    limits: WireLimits,
    dialer: Dialer,
}

impl RaftNet {
    pub(crate) fn new(limits: WireLimits, dialer: Dialer) -> RaftNet {
        RaftNet { limits, dialer }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> RaftPeer {
        let grpc = self.limits.raft_grpc();
        RaftPeer {
            target,
            client: self
                .dialer
                .channel(target, &node.cluster_addr)
                .ok()
                .map(|c| {
                    RaftClient::new(c)
                        .max_decoding_message_size(grpc)
                        .max_encoding_message_size(grpc)
                }),
            addr: node.cluster_addr.clone(),
            limits: self.limits,
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct RaftPeer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    limits: WireLimits,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl RaftPeer {
    fn client<E: std::error::Error>(&self) -> Result<RaftClient<Channel>, RpcErr<E>> {
        match &self.client {
            Some(c) => Ok(c.clone()),
            None => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("bad peer address {:?}", self.addr),
                ),
            ))),
        }
    }
}

fn encode<T: Serialize, E: std::error::Error>(v: &T) -> Result<RaftPayload, RpcErr<E>> {
    postcard::to_allocvec(v)
        .map(|data| RaftPayload { data })
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn decode_reply<T, E>(target: NodeId, reply: RaftPayload) -> Result<T, RpcErr<E>>
where
    T: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let r: Result<T, RaftError<NodeId, E>> =
        postcard::from_bytes(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

fn transport<E: std::error::Error>(s: Status) -> RpcErr<E> {
    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded {
        RPCError::Unreachable(Unreachable::new(&s))
    } else {
        RPCError::Network(NetworkError::new(&s))
    }
}

fn with_ttl<T>(msg: T, option: &RPCOption) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(option.hard_ttl());
    r
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        let payload = encode(&rpc)?;
        if payload.data.len() > self.limits.raft_payload && rpc.entries.len() > 1 {
            let fit = entries_that_fit(&rpc, payload.data.len(), self.limits.raft_payload);
            debug!(
                peer = %self.target,
                bytes = payload.data.len(),
                entries = rpc.entries.len(),
                fit,
                "append entries over the byte bound: split"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        let reply = c
            .append_entries(with_ttl(payload, &option))
            .await
            .map_err(transport)?;
        decode_reply(self.target, reply.into_inner())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut c = self.client()?;
        let reply = c
            .install_snapshot(with_ttl(encode(&rpc)?, &option))
            .await
            .map_err(transport)?;
        decode_reply(self.target, reply.into_inner())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let mut c = self.client()?;
        let reply = c
            .vote(with_ttl(encode(&rpc)?, &option))
            .await
            .map_err(transport)?;
        decode_reply(self.target, reply.into_inner())
    }
}

/// How many of `rpc`'s first entries fit in `limit` bytes once encoded (at least 1), given that
/// all of them take `total` bytes.
fn entries_that_fit(rpc: &AppendEntriesRequest<TypeConfig>, total: usize, limit: usize) -> u64 {
    let sizes: Vec<usize> = rpc
        .entries
        .iter()
        .map(|e| postcard::experimental::serialized_size(e).unwrap_or(usize::MAX))
        .collect();
    let entries: usize = sizes.iter().fold(0, |a, b| a.saturating_add(*b));
    // Everything but the entries: the vote, log ids, the length prefix.
    let mut used = total.saturating_sub(entries);
    let mut fit = 0u64;
    for size in sizes {
        used = used.saturating_add(size);
        if used > limit {
            break;
        }
        fit += 1;
    }
    fit.max(1)
}

/// Serves peers' Raft RPCs, and their pre-votes ([`Election::answer`]).
pub(crate) struct RaftService {
    raft: Raft<TypeConfig>,
    election: Arc<Election>,
    /// With TLS: the node a request's vote names must be the caller's (module docs).
    auth: PeerAuth,
}

impl RaftService {
    pub(crate) fn new(
        raft: Raft<TypeConfig>,
        election: Arc<Election>,
        auth: PeerAuth,
    ) -> RaftService {
        RaftService {
            raft,
            election,
            auth,
        }
    }

    /// Decodes a request sent by the node `sender` names in it; refuses it (counted under
    /// `rpc`) when that is not the node the caller's certificate names.
    fn decode_from<T: DeserializeOwned>(
        &self,
        rpc: Rpc,
        req: Request<RaftPayload>,
        sender: impl FnOnce(&T) -> Option<NodeId>,
    ) -> Result<T, Status> {
        let caller = self.auth.caller(rpc, &req)?;
        let v: T = decode_request(req)?;
        self.auth.claims(rpc, caller, sender(&v))?;
        Ok(v)
    }
}

fn decode_request<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    postcard::to_allocvec(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        // The leader sends it: its id is in its vote.
        let rpc: AppendEntriesRequest<TypeConfig> = self.decode_from(
            Rpc::AppendEntries,
            request,
            |r: &AppendEntriesRequest<_>| r.vote.leader_id.voted_for(),
        )?;
        let leader_commit = rpc.leader_commit.map(|l| l.index);
        let r = self.raft.append_entries(rpc).await;
        // Accepted (the sender is this node's committed leader), whatever the log said.
        if matches!(
            r,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.election.leader_heard();
            if let Some(index) = leader_commit {
                self.election.leader_committed(index);
            }
        }
        reply(&r)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        // The candidate sends it, voting for itself.
        let rpc: VoteRequest<NodeId> =
            self.decode_from(Rpc::Vote, request, |r: &VoteRequest<NodeId>| {
                r.vote.leader_id.voted_for()
            })?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.decode_from(
            Rpc::InstallSnapshot,
            request,
            |r: &InstallSnapshotRequest<_>| r.vote.leader_id.voted_for(),
        )?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: PreVoteRequest =
            self.decode_from(Rpc::PreVote, request, |r: &PreVoteRequest| {
                Some(r.candidate)
            })?;
        reply(&self.election.answer(&rpc).await)
    }

    async fn timeout_now(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        // The leader that hands over sends it, naming itself.
        let rpc: TimeoutNowRequest =
            self.decode_from(Rpc::TimeoutNow, request, |r: &TimeoutNowRequest| {
                Some(r.leader)
            })?;
        reply(&self.election.answer_timeout_now(&rpc).await)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::Command;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    fn entry(index: u64, payload: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, NodeId::new(1)), index),
            payload: EntryPayload::Normal(Command::UpdateRoutes {
                node: NodeId::new(1),
                add: vec!["x".repeat(payload)],
                remove: vec![],
            }),
        }
    }

    fn request(payloads: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, NodeId::new(1)),
            prev_log_id: None,
            leader_commit: None,
            entries: payloads
                .iter()
                .enumerate()
                .map(|(i, p)| entry(i as u64 + 1, *p))
                .collect(),
        }
    }

    #[test]
    fn entries_that_fit_counts_a_prefix_and_never_zero() {
        let rpc = request(&[1000, 1000, 1000, 1000]);
        let total = postcard::to_allocvec(&rpc).unwrap().len();
        let one = postcard::experimental::serialized_size(&rpc.entries[0]).unwrap();
        let fixed = total - 4 * one;
        assert_eq!(entries_that_fit(&rpc, total, total), 4);
        assert_eq!(entries_that_fit(&rpc, total, fixed + 3 * one), 3);
        assert_eq!(entries_that_fit(&rpc, total, fixed + 3 * one - 1), 2);
        assert_eq!(entries_that_fit(&rpc, total, fixed + one), 1);
        // Not even one fits: still one (`propose` keeps single entries under the limit).
        assert_eq!(entries_that_fit(&rpc, total, 10), 1);
    }
}
