//! Raft RPCs over gRPC: the client side openraft uses to reach peers ([`RaftNet`]) and the
//! server side that hands peers' RPCs to the local `Raft` ([`RaftService`]).
//!
//! Payloads are openraft's own serde types encoded with postcard inside a `RaftPayload`; a
//! response carries `Result<Response, RaftError>` so a remote Raft error comes back as
//! `RPCError::RemoteError`, and a transport failure as `Unreachable` (openraft backs off).

// openraft's RPCError is large, and the trait fixes the return type: boxing it is not an option.
#![allow(clippy::result_large_err)]

use crate::types::{NodeId, NodeInfo, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// How long to wait for a TCP connection to a peer.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A lazily connecting gRPC channel to a peer's cluster listener.
pub(crate) fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Creates one [`RaftPeer`] per target for openraft.
#[derive(Clone, Default)]
pub(crate) struct RaftNet;

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> RaftPeer {
        RaftPeer {
            target,
            client: channel(&node.cluster_addr).ok().map(RaftClient::new),
            addr: node.cluster_addr.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct RaftPeer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
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
        let reply = c
            .append_entries(with_ttl(encode(&rpc)?, &option))
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

/// Serves peers' Raft RPCs.
pub(crate) struct RaftService {
    raft: Raft<TypeConfig>,
}

impl RaftService {
    pub(crate) fn new(raft: Raft<TypeConfig>) -> RaftService {
        RaftService { raft }
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
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
