//! The gRPC `roost.cluster.v1.Cluster` service a node serves to its peers: `Propose` (a
//! follower's command, written through this node's Raft; a node that is not the leader answers
//! with the error and the leader it knows), `Forward` (batches of published messages, delivered
//! to local sessions only and acknowledged), `TakeSession`, `Join`, `Leave`, `Applied` (what
//! `Cluster::wait_replicated` asks), `RenewLease` (see `lease`) and `Status` (what `Cluster::status` probes).
//!
//! Who calls it: peers' `Cluster` through their `ClusterClient`; `Cluster::start` mounts it on
//! the node's gRPC server beside the Raft service.
//!
//! Concurrency: tonic runs each call in its own task; no call holds a lock across an await. Each
//! Forward stream gets a spawned task that reads batches, delivers them through
//! [`LocalNode::deliver`] (once per (origin, epoch, seq): a resend after a reconnect is only
//! acknowledged, see `dedup`) and sends acks on a bounded channel (64; when full the reader waits,
//! which pushes back on the peer's stream).
//!
//! Backpressure (issue 7 item 4): a QoS 1/2 message is acknowledged only once it is in the
//! local sessions. When delivering found a connected subscriber backing up, the task
//! acknowledges what it delivered so far and then waits for that subscriber's room (bounded by
//! the node's backpressure timeout) before it delivers the next message or reads the next
//! batch. The origin's publisher, whose PUBACK waits for these acknowledgements, slows down;
//! what the origin sends meanwhile waits in the stream's flow-control window and the
//! forwarder's bounded queue, not in a subscriber's queue where it would be dropped. One
//! backed-up subscriber holds the whole stream from that origin (head-of-line), as it holds a
//! local publisher.
//!
//! Delivery latency: each message of a batch [entered](roost_core::message::Entered::Forwarded)
//! this node when the batch was read off the stream (one clock reading per batch, before any
//! wait for the lease), which is where roost-node's `roost_delivery_latency_seconds
//! {path="forwarded"}` starts.
//!
//! Passed on (docs/rfcs/0006): a message that matched a session that just moved to another
//! node goes on to that node; it is acknowledged only once that node took it (up to the forward
//! timeout). Each stream has one passer task that hands these on ([`Delivered::passed_on`]'s
//! first step) one at a time, in the order they came, so a session gets them in order; the
//! wait for the answer runs on a task of its own (at most `MAX_PASSING` per stream), and the
//! stream goes on with the next message: two nodes passing messages to each other (a client
//! hopping back and forth) would otherwise each hold its stream waiting for the other's. One
//! the node did not take is left unacknowledged and counted: the origin's publisher hears a
//! failure when its own forward timeout runs out. Acknowledgements may so come out of order.
//!
//! The service holds the `Cluster` only weakly (a call after it is gone answers `unavailable`)
//! and watches `stop` itself, see the field.
//!
//! Who is calling (with cluster TLS, `crate::tls`): the node a request says it comes from must
//! be the node the caller's certificate names, or the call is refused `PermissionDenied`
//! (counted in `roost_cluster_peer_identity_refused_total{rpc}`): a Forward batch's
//! `origin_node` (the stream is ended), TakeSession's `requester`, RenewLease's `node_id`, and
//! the node a proposed command is written by ([`author`]). Join and Leave name the node to add
//! or remove, which is not the caller when an operator's `roost ctl join/leave` reaches the
//! leader through another member: they are taken from a current member, or from the named
//! node itself, and refused from any other certificate.

use super::dedup::Dedup;
use super::membership::server_state;
use super::{unix_ms, Answer, BoxFuture, Cluster, Delivered, LocalNode, Target};
use crate::convert;
use crate::error::ClusterError;
use crate::limits::WireLimits;
use crate::metrics::ClusterStats;
use crate::tls::{Caller, PeerAuth, Rpc};
use crate::types::{Command, NodeId, TypeConfig};
use openraft::Raft;
use parking_lot::Mutex;
use roost_core::message::Entered;
use roost_core::ClientId;
use roost_proto::v1 as pb;
use roost_proto::v1::cluster_server;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

/// Messages of one Forward stream whose pass-on (docs/rfcs/0006) may be waited for at once;
/// beyond it the stream waits for one to finish.
const MAX_PASSING: usize = 1024;

/// A message of a Forward stream on its way to other nodes (see [`spawn_passer`]).
struct PassingOn {
    passed_on: BoxFuture<Answer>,
    seq: u64,
    qos: u32,
    /// One of the stream's `MAX_PASSING`, held until the answer is in.
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// The task that hands a Forward stream's passed-on messages on, one at a time in stream order
/// (so the forwarders, and a session still waiting for its attach, get them in that order),
/// and starts for each a task of its own that waits for the answer and acknowledges the
/// message to the origin, or refuses it. It ends when the stream's sender is dropped and the
/// queue is empty. The queue is bounded by the stream's `MAX_PASSING` permits.
fn spawn_passer(
    tx: mpsc::Sender<Result<pb::ForwardAck, Status>>,
    stats: Arc<ClusterStats>,
) -> mpsc::UnboundedSender<PassingOn> {
    let (passer, mut queue) = mpsc::unbounded_channel::<PassingOn>();
    tokio::spawn(async move {
        while let Some(p) = queue.recv().await {
            let answer = p.passed_on.await;
            let (tx, stats, seq, qos, permit) = (tx.clone(), stats.clone(), p.seq, p.qos, p.permit);
            tokio::spawn(async move {
                let accepted = answer.0.await;
                drop(permit);
                if qos == 0 {
                    return;
                }
                // Either way the origin hears of it: a refusal it did not hear of would leave
                // its stream waiting, and the origin would take this node for unreachable
                // (docs/rfcs/0005).
                let ack = if accepted {
                    pb::ForwardAck {
                        seqs: vec![seq],
                        ..Default::default()
                    }
                } else {
                    stats.received_not_accepted.increment(1);
                    pb::ForwardAck {
                        refused: vec![seq],
                        ..Default::default()
                    }
                };
                let _ = tx.send(Ok(ack)).await;
            });
        }
    });
    passer
}

/// While delivery waits for a congested local subscriber, how often an empty `ForwardAck` tells
/// the origin this node is alive (well under any forward timeout it may use).
const ALIVE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Serves peers' `Cluster.*` calls.
pub(super) struct ClusterService {
    pub(super) cluster: std::sync::Weak<Cluster>,
    pub(super) raft: Raft<TypeConfig>,
    pub(super) local: Arc<dyn LocalNode>,
    pub(super) stats: Arc<ClusterStats>,
    /// Byte bounds: a too large command is refused, a TakeSession reply is made to fit.
    pub(super) limits: WireLimits,
    /// What each origin's forward streams delivered, shared by all streams (a resend arrives
    /// on a new stream).
    pub(super) dedup: Arc<Mutex<Dedup>>,
    /// Set by [`Cluster::shutdown`]. The gRPC server's graceful shutdown waits for open streams
    /// instead of ending them, so each Forward stream watches this itself: a stopped node must
    /// not go on delivering and acknowledging, or the origin would never resend to its
    /// successor (a restart in the same process).
    pub(super) stop: watch::Receiver<bool>,
    /// This node's session lease: without it, forwarded messages wait (see `forward`).
    pub(super) lease: Arc<super::lease::Lease>,
    /// With TLS: binds the node a request claims to the caller's certificate (module docs).
    pub(super) auth: PeerAuth,
}

impl ClusterService {
    /// Join and Leave (module docs): from a current member, or from the node named itself.
    fn member_or_self(&self, rpc: Rpc, caller: Caller, named: NodeId) -> Result<(), Status> {
        let Some(cert) = caller.node() else {
            return Ok(());
        };
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&cert)
            .is_some();
        if cert == named || member {
            return Ok(());
        }
        Err(self.auth.refuse(
            rpc,
            "a node that is not a member may only add or remove itself",
            Some(cert),
            Some(named),
        ))
    }

    /// A membership change's outcome, with the leader as this node knows it.
    fn membership_reply(&self, result: Result<(), ClusterError>) -> Response<pb::MembershipReply> {
        Response::new(pb::MembershipReply {
            error: result.err().map(|e| e.to_string()).unwrap_or_default(),
            leader_id: self
                .raft
                .metrics()
                .borrow()
                .current_leader
                .map_or(0, NodeId::get),
        })
    }
}

type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ForwardAck, Status>> + Send>>;

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeReply>, Status> {
        let caller = self.auth.caller(Rpc::Propose, &request)?;
        let command = request.into_inner().command;
        // The proposer checked this already; a peer with a larger `max_packet_size` may not
        // have. The encoded bytes are the command's size: measured before decoding.
        if command.len() > self.limits.max_message {
            let too_large = crate::error::Refusal::TooLarge {
                size: command.len(),
                limit: self.limits.max_message,
            };
            return Err(Status::invalid_argument(too_large.to_string()));
        }
        let cmd: Command = postcard::from_bytes(&command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        if let Some(node) = author(&cmd) {
            self.auth.claims(Rpc::Propose, caller, Some(node))?;
        }
        let reply = match self.raft.client_write(cmd).await {
            Ok(r) => pb::ProposeReply {
                log_index: r.log_id.index,
                response: postcard::to_allocvec(&r.data)
                    .map_err(|e| Status::internal(e.to_string()))?,
                error: String::new(),
                leader_id: self
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .map_or(0, NodeId::get),
            },
            Err(e) => pb::ProposeReply {
                log_index: 0,
                response: Vec::new(),
                error: e.to_string(),
                leader_id: self
                    .raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .map_or(0, NodeId::get),
            },
        };
        Ok(Response::new(reply))
    }

    type ForwardStream = AckStream;

    async fn forward(
        &self,
        request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let caller = self.auth.caller(Rpc::Forward, &request)?;
        let auth = self.auth.clone();
        let mut stop = self.stop.clone();
        if *stop.borrow_and_update() {
            return Err(Status::unavailable("shutting down"));
        }
        let lease = Arc::clone(&self.lease);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let local = self.local.clone();
        let stats = self.stats.clone();
        let dedup = self.dedup.clone();
        let passing = Arc::new(tokio::sync::Semaphore::new(MAX_PASSING));
        let passer = spawn_passer(tx.clone(), stats.clone());
        tokio::spawn(async move {
            'stream: loop {
                // Cancel safety: `Streaming::message` keeps a partly read batch in `inbound`;
                // on stop the stream is dropped anyway and the origin resends what it lacks.
                let batch = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(batch)) => batch,
                        Ok(None) | Err(_) => break,
                    },
                    _ = stop.changed() => break,
                };
                // Where this batch's messages entered this node (their delivery latency).
                let entered = Entered::Forwarded(Instant::now().into_std());
                // The origin names itself in every batch (and keys what was delivered, see
                // `dedup`): it must be the node the caller's certificate names.
                let origin = NodeId::new(batch.origin_node);
                if let Err(refused) = auth.claims(Rpc::Forward, caller, Some(origin)) {
                    let _ = tx.send(Err(refused)).await;
                    break;
                }
                // Without its session lease this node may hold copies of sessions the
                // majority has given to other nodes (a claim it has not applied yet): a message
                // put there would be acknowledged and then dropped with the copy (issue 8's
                // chaos run, seed 2). So the batch waits, unacknowledged, until the lease is
                // back (by then the claims are applied): the origin's publishers hear a failure
                // if that takes longer than their forward timeout. The stream stays open, so a
                // node that is just starting (no lease for a few milliseconds) is not taken
                // for unreachable.
                if !lease.holds() {
                    stats.forward_held_no_lease.increment(1);
                    tokio::select! {
                        _ = lease.wait_held() => {}
                        _ = stop.changed() => break 'stream,
                    }
                }
                let now = Instant::now();
                let now_ms = unix_ms(SystemTime::now());
                let mut seqs = Vec::new();
                let mut stale = false;
                for fm in batch.messages {
                    let Some(m) = fm.message else {
                        stats.received_invalid.increment(1);
                        continue;
                    };
                    let qos = m.qos;
                    if fm.give_up_at_ms != 0 && now_ms > fm.give_up_at_ms {
                        // Its origin stopped waiting: its publisher heard a failure, and may
                        // have published newer messages since. Neither delivered nor
                        // acknowledged (nor remembered as delivered: a resend, which only a
                        // sender still waiting makes, is judged again). The batch's ack, empty
                        // if need be, still tells the origin this node is there.
                        stats.received_stale.increment(1);
                        stale = true;
                        continue;
                    }
                    let mut delivered = Delivered::default();
                    // A resend of what this node delivered before the stream broke (its ack was
                    // lost): acknowledged below, not delivered again. The lock is held for the
                    // check only.
                    let first = dedup
                        .lock()
                        .first_delivery(batch.origin_node, batch.epoch, fm.seq);
                    if !first {
                        stats.received_duplicate.increment(1);
                    } else {
                        let decoded =
                            convert::message_from_wire(m, now.into_std()).and_then(|mut msg| {
                                let to = fm.to.map(convert::addressed_from_wire).transpose()?;
                                msg.entered = Some(entered);
                                Ok((msg, to))
                            });
                        match decoded {
                            Ok((msg, to)) => {
                                stats.received.increment(1);
                                let shared =
                                    convert::shared_filters_from_wire(fm.shared_filters, &stats);
                                let target = match to {
                                    Some(a) => Target::Session(a),
                                    None => Target::Subscribers {
                                        direct: fm.direct,
                                        shared: &shared,
                                    },
                                };
                                delivered = local.deliver(Arc::new(msg), target);
                            }
                            Err(e) => {
                                stats.received_invalid.increment(1);
                                warn!(origin = batch.origin_node, error = %e, "dropping forwarded message");
                            }
                        }
                    }
                    if let Some(passed_on) = delivered.passed_on {
                        // Part of it goes on to the node a session moved to: handed on by the
                        // passer in stream order, acknowledged only once that node took it
                        // (module docs). Bounded: past `MAX_PASSING` the stream waits.
                        let Ok(permit) = Arc::clone(&passing).acquire_owned().await else {
                            break 'stream;
                        };
                        let passing_on = PassingOn {
                            passed_on,
                            seq: fm.seq,
                            qos,
                            permit,
                        };
                        if passer.send(passing_on).is_err() {
                            break 'stream;
                        }
                    } else if qos > 0 {
                        // Acknowledge even an undecodable QoS 1/2 message: it will never
                        // decode, and the origin must not resend it forever (it is counted).
                        seqs.push(fm.seq);
                    }
                    if let Some(space) = delivered.space {
                        // A local subscriber is backing up: acknowledge what is delivered,
                        // then wait for its room before delivering more (module docs).
                        // Cancel safety: on stop the rest of the batch is neither delivered
                        // nor acknowledged; the origin resends it to whoever serves next.
                        let done = std::mem::take(&mut seqs);
                        if !wait_alive(space, done, &tx, &mut stop).await {
                            break 'stream;
                        }
                    }
                }
                if (!seqs.is_empty() || stale)
                    && tx
                        .send(Ok(pb::ForwardAck {
                            seqs,
                            ..Default::default()
                        }))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn take_session(
        &self,
        request: Request<pb::TakeSessionRequest>,
    ) -> Result<Response<pb::TakeSessionReply>, Status> {
        let caller = self.auth.caller(Rpc::TakeSession, &request)?;
        let r = request.into_inner();
        self.auth
            .claims(Rpc::TakeSession, caller, Some(NodeId::new(r.requester)))?;
        let t = self
            .local
            .take_session(
                ClientId::from(r.client_id.clone()),
                r.generation,
                NodeId::new(r.requester),
            )
            .await;
        Ok(Response::new(match t {
            Some(t) => {
                let mut session = convert::transfer_to_wire(&t, Instant::now().into_std());
                // The reply is bounded like every other message between nodes: what does not
                // fit is left out (newest queued messages first) and counted, never sent as a
                // reply the requester would refuse whole.
                let messages = session.queued.len() + session.inflight.len();
                match convert::fit_transfer(&mut session, self.limits.session_transfer) {
                    Ok(0) => {}
                    Ok(dropped) => {
                        self.stats.transfer_dropped.increment(dropped as u64);
                        warn!(
                            client_id = %r.client_id,
                            dropped,
                            limit = self.limits.session_transfer,
                            "session over the transfer bound: newest messages left out"
                        );
                    }
                    Err(size) => {
                        self.stats.transfer_dropped.increment(messages as u64);
                        warn!(
                            client_id = %r.client_id,
                            size,
                            limit = self.limits.session_transfer,
                            "session over the transfer bound without its messages: not handed over"
                        );
                        return Err(Status::resource_exhausted(format!(
                            "session of {size} bytes is over the transfer bound of {}",
                            self.limits.session_transfer
                        )));
                    }
                }
                pb::TakeSessionReply {
                    found: true,
                    session: Some(session),
                }
            }
            None => pb::TakeSessionReply {
                found: false,
                session: None,
            },
        }))
    }

    async fn placed(
        &self,
        request: Request<pb::PlacedRequest>,
    ) -> Result<Response<pb::PlacedReply>, Status> {
        let sessions: Vec<(ClientId, u64)> = request
            .into_inner()
            .sessions
            .into_iter()
            .map(|s| (ClientId::from(s.client_id), s.generation))
            .collect();
        let pending = self
            .local
            .sessions_pending(&sessions)
            .into_iter()
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        Ok(Response::new(pb::PlacedReply { pending }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let caller = self.auth.caller(Rpc::Join, &request)?;
        let r = request.into_inner();
        self.member_or_self(Rpc::Join, caller, NodeId::new(r.node_id))?;
        let Some(c) = self.cluster.upgrade() else {
            return Err(Status::unavailable("shutting down"));
        };
        let result = c
            .join(NodeId::new(r.node_id), r.cluster_addr, r.mqtt_addr)
            .await;
        Ok(self.membership_reply(result))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let caller = self.auth.caller(Rpc::Leave, &request)?;
        let r = request.into_inner();
        self.member_or_self(Rpc::Leave, caller, NodeId::new(r.node_id))?;
        let Some(c) = self.cluster.upgrade() else {
            return Err(Status::unavailable("shutting down"));
        };
        let result = c.leave_local(NodeId::new(r.node_id)).await;
        Ok(self.membership_reply(result))
    }

    async fn applied(
        &self,
        request: Request<pb::AppliedRequest>,
    ) -> Result<Response<pb::AppliedReply>, Status> {
        let r = request.into_inner();
        let limit = Duration::from_millis(r.wait_ms.min(60_000));
        let _ = self
            .raft
            .wait(Some(limit))
            .applied_index_at_least(Some(r.min_index), "peer asked")
            .await;
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        Ok(Response::new(pb::AppliedReply {
            applied_index: applied,
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseReply>, Status> {
        let caller = self.auth.caller(Rpc::RenewLease, &request)?;
        let requester = NodeId::new(request.into_inner().node_id);
        self.auth.claims(Rpc::RenewLease, caller, Some(requester))?;
        let read_index = super::lease::answer(&self.raft, requester).await?;
        Ok(Response::new(pb::LeaseReply { read_index }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let Some(c) = self.cluster.upgrade() else {
            return Err(Status::unavailable("shutting down"));
        };
        let m = self.raft.metrics().borrow().clone();
        let (routes, sessions, retained) = {
            let s = c.state.read();
            let snap = s.snapshot();
            (
                snap.routes.values().map(|n| n.len() as u64).sum(),
                snap.sessions.len() as u64,
                snap.retained.len() as u64,
            )
        };
        Ok(Response::new(pb::StatusReply {
            node_id: c.cfg.node_id.get(),
            leader_id: m.current_leader.map(NodeId::get),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members: vec![pb::Member {
                node_id: c.cfg.node_id.get(),
                cluster_addr: c.cfg.advertise.clone(),
                mqtt_addr: c.cfg.mqtt_addr.clone(),
                voter: true,
                matched_index: None,
            }],
            routes,
            sessions,
            retained,
            state: server_state(m.state).to_owned(),
            draining: self.local.draining(),
        }))
    }
}

/// The node a command is written by, when it names one: its `node` is the proposer's own id
/// (roost-node proposes routes, session claims, releases, returns and subscriptions for
/// itself). `None` for commands any member may propose: retained messages, policies, and
/// `ForgetNode` (the node named there is the one that left, not the proposer).
fn author(cmd: &Command) -> Option<NodeId> {
    match cmd {
        Command::UpdateRoutes { node, .. }
        | Command::ClaimSession { node, .. }
        | Command::SetSubscriptions { node, .. }
        | Command::ReleaseSession { node, .. }
        | Command::ReturnSession { node, .. }
        | Command::UpdateSubscriptions { node, .. } => Some(*node),
        Command::SetRetained { .. }
        | Command::ExpireRetained { .. }
        | Command::ForgetNode { .. }
        | Command::SetPolicies { .. } => None,
    }
}

/// Sends the acknowledgements `done`, then waits for `wait`. The origin takes a peer that
/// acknowledges nothing for its forward timeout for unreachable: while waiting, an empty ack
/// every `ALIVE_EVERY` says this node is there, only slow. `false`: the stream is gone or the
/// node stops.
async fn wait_alive(
    mut wait: BoxFuture<()>,
    done: Vec<u64>,
    tx: &mpsc::Sender<Result<pb::ForwardAck, Status>>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let done = pb::ForwardAck {
        seqs: done,
        ..Default::default()
    };
    if !done.seqs.is_empty() && tx.send(Ok(done)).await.is_err() {
        return false;
    }
    let mut alive = tokio::time::interval_at(Instant::now() + ALIVE_EVERY, ALIVE_EVERY);
    loop {
        tokio::select! {
            _ = &mut wait => return true,
            _ = alive.tick() => {
                if tx.send(Ok(pb::ForwardAck::default())).await.is_err() {
                    return false;
                }
            }
            _ = stop.changed() => return false,
        }
    }
}
