//! A graceful stop in a cluster (SIGTERM; a rolling restart's step): the node hands every
//! persistent session it holds, with its queued and in-flight messages, to another node, then
//! takes its routes out of the cluster, so nothing acknowledged dies with the process
//! (docs/architecture.md, "Graceful drain"; issue 8's `restart` finding).
//!
//! ```text
//!  draining: CONNECTs refused (0x8B) ─▶ clients told to go: v5 DISCONNECT 0x9C + Server
//!  Reference naming the peer their session goes to (0x8B when no peer with an address
//!  clients can use answers) ─▶ for each offline persistent session: ReturnSession(me,
//!  generation ─▶ that peer, else the next live one) ─▶ that peer applies it, takes the
//!  session (TakeSession; a tombstone stays here and passes on what still comes) ─▶ all gone?
//!  ─▶ wait until the new owners' routes are applied here and each new owner says it took its
//!  sessions in (`Cluster.Placed`) ─▶ remove this node's routes, wait
//!  until every reachable member applied that ─▶ a short grace for forwards already on the way
//!  ─▶ Node::shutdown goes on (leader hand-off, Raft stops)
//! ```
//!
//! Where clients are sent ([`Broker::send_clients_away`]): every connected client, persistent
//! session or not, is given one of the peers that answer `Status`, follow a leader and are not
//! draining (`Cluster::session_takers`), in turn, by the MQTT address that peer reports
//! (`mqtt.advertise`, else its bound listener). A v5 client gets DISCONNECT 0x9C Use another
//! server with that address as Server Reference (MQTT 5.0 §4.11; a clean-session client too:
//! any live node serves it, and naming one spreads the reconnects instead of leaving them to
//! the load balancer's luck); its persistent session is moved to that same peer, so a client
//! that follows the reference finds its session where it lands. A client that ignores the
//! reference and reconnects elsewhere is served anyway (the claim takes the session from
//! wherever it is). A peer whose address is empty, unspecified (`0.0.0.0`, a node without
//! `mqtt.advertise` that listens on all interfaces) or port 0 is never named; with no such
//! peer (a lone node, no live peer), v5 clients get 0x8B as before. v3.1.1 has no server
//! DISCONNECT: those clients see the connection close.
//!
//! The move is the registry's conditional `ReturnSession` (ignored unless this node still owns
//! the session at that generation): a client that reconnected elsewhere meanwhile wins, and
//! its node takes the session from here as any takeover does. Every step is bounded by
//! `cluster.drain_timeout_ms`; what is left at the end is counted
//! (`roost_drain_sessions_total{outcome="left"}`).

use super::registry::HandedOver;
use super::{Broker, Kick};
use crate::config::is_client_address;
use crate::routes::RouteCluster;
use roost_cluster::types::{Command, NodeId, NodeSet};
use roost_codec::ReasonCode;
use roost_core::ClientId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often the drain looks at what is left.
const POLL: Duration = Duration::from_millis(20);

/// Moves proposed at once (each is one Raft entry; the leader batches them).
const MOVES_IN_FLIGHT: usize = 64;

/// How long a peer has to say it can take sessions (see [`Cluster::session_takers`]); also
/// the most that telling the clients to go waits for it.
///
/// [`Cluster::session_takers`]: roost_cluster::Cluster::session_takers
const TAKERS_ASK: Duration = Duration::from_millis(500);

/// How often the list of peers that can take sessions is asked again.
const TAKERS_REFRESH: Duration = Duration::from_secs(1);

/// Route removals per proposal.
const ROUTES_PER_PROPOSAL: usize = 1_000;

impl Broker {
    /// A graceful stop begins: CONNECTs are refused with 0x8B from now on.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once a graceful stop began: CONNECTs are refused with 0x8B.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Tells every connected client to go (see the module docs: 0x9C with a Server Reference
    /// naming a live peer, else 0x8B); asks the peers for at most [`TAKERS_ASK`] first.
    /// Returns, per client sent to a peer, that peer: [`Broker::drain`] moves the client's
    /// session there.
    pub(crate) async fn send_clients_away(self: &Arc<Self>) -> HashMap<ClientId, NodeId> {
        let mut targets: Vec<(NodeId, Arc<str>)> = Vec::new();
        if self.cluster.has_peers() {
            for t in self.cluster.session_takers(TAKERS_ASK).await {
                if is_client_address(&t.mqtt_addr) {
                    targets.push((t.node, Arc::from(t.mqtt_addr)));
                } else {
                    debug!(peer = %t.node, mqtt_addr = t.mqtt_addr, "graceful stop: peer has no address clients can use (set its mqtt.advertise)");
                }
            }
        }
        let mut sent = HashMap::new();
        let mut told = 0usize;
        for s in self.sessions() {
            let Some(conn) = s.conn() else { continue };
            told += 1;
            if targets.is_empty() {
                conn.kick(ReasonCode::SERVER_SHUTTING_DOWN);
                continue;
            }
            let (node, addr) = &targets[sent.len() % targets.len()];
            conn.kick(Kick::UseAnotherServer(Arc::clone(addr)));
            sent.insert(s.client_id().clone(), *node);
        }
        info!(
            clients = told,
            redirected = sent.len(),
            peers = targets.len(),
            "graceful stop: clients told to go"
        );
        sent
    }

    /// Hands this node's sessions to the other nodes and takes its routes out of the cluster
    /// (see the module docs). `sent`: the peer each client was sent to
    /// ([`Broker::send_clients_away`]), where its session goes too while that peer can take
    /// it. Returns when that is done or at `deadline`. A lone node (no peers) only stops
    /// taking CONNECTs: its sessions stay in the registry for its restart.
    pub(crate) async fn drain(
        self: &Arc<Self>,
        deadline: Instant,
        sent: &HashMap<ClientId, NodeId>,
    ) {
        self.draining.store(true, Ordering::Release);
        if !self.cluster.has_peers() {
            return;
        }
        let handed = self.hand_on_sessions(deadline, sent).await;
        self.remove_own_routes(deadline).await;
        let left = self.sessions().iter().filter(|s| !s.is_ended()).count();
        self.metrics.drain_handed.increment(handed as u64);
        self.metrics.drain_left.increment(left as u64);
        if left > 0 {
            warn!(
                handed,
                left,
                "graceful stop: sessions not handed to another node are lost with this process"
            );
        } else {
            info!(handed, "graceful stop: sessions handed to other nodes");
        }
    }

    /// Tells connected clients to go and moves every offline persistent session to a live
    /// peer (the one its client was `sent` to, if it is still live), until none is left here
    /// or `deadline`. Returns how many moves committed.
    async fn hand_on_sessions(
        self: &Arc<Self>,
        deadline: Instant,
        sent: &HashMap<ClientId, NodeId>,
    ) -> usize {
        // Client id → the generation its move was proposed for (asked once per generation).
        let mut asked: HashMap<ClientId, u64> = HashMap::new();
        let mut moves = tokio::task::JoinSet::new();
        let mut turn = 0usize;
        let mut handed = 0usize;
        let mut peers: Vec<NodeId> = Vec::new();
        let mut refresh_at = Instant::now();
        loop {
            while let Some(r) = moves.try_join_next() {
                if matches!(r, Ok(true)) {
                    handed += 1;
                }
            }
            let mut todo = Vec::new();
            // Sessions still to go: connected ones (told to leave) and offline ones to move.
            let mut left = 0usize;
            for s in self.sessions() {
                match s.drain_state() {
                    Some(DrainState::Connected(conn)) => {
                        left += 1;
                        // Already told by `send_clients_away` (the first kick wins), unless it
                        // attached since.
                        conn.kick(ReasonCode::SERVER_SHUTTING_DOWN);
                    }
                    Some(DrainState::Offline { generation }) => {
                        left += 1;
                        if asked.get(s.client_id()) != Some(&generation) {
                            todo.push((s.client_id().clone(), generation));
                        }
                    }
                    // Ended here, ends with its connection, or was never claimed.
                    None | Some(DrainState::Stays) => {}
                }
            }
            if left == 0 || Instant::now() >= deadline {
                break;
            }
            if !self.cluster.serving() {
                // No quorum (the rest of the cluster is gone or stopping too): nothing can
                // commit a move.
                warn!("graceful stop: no quorum to hand the sessions on");
                break;
            }
            if Instant::now() >= refresh_at {
                refresh_at = Instant::now() + TAKERS_REFRESH;
                let ask = TAKERS_ASK.min(deadline.saturating_duration_since(Instant::now()));
                peers = self
                    .cluster
                    .session_takers(ask)
                    .await
                    .into_iter()
                    .map(|t| t.node)
                    .collect();
            }
            if peers.is_empty() {
                warn!("graceful stop: no live peer to hand the sessions to");
                break;
            }
            for (client_id, generation) in todo {
                if moves.len() >= MOVES_IN_FLIGHT {
                    break;
                }
                let to = match sent.get(&client_id) {
                    Some(to) if peers.contains(to) => *to,
                    _ => {
                        let to = peers[turn % peers.len()];
                        turn += 1;
                        to
                    }
                };
                asked.insert(client_id.clone(), generation);
                let cluster = Arc::clone(&self.cluster);
                let me = cluster.node_id();
                moves.spawn(async move {
                    let cmd = Command::ReturnSession {
                        client_id: client_id.to_string(),
                        node: me,
                        generation,
                        to: Some(to),
                    };
                    match cluster.propose(cmd).await {
                        Ok((_, resp)) => {
                            debug!(client_id = %client_id, to = %to, ?resp, "session moved");
                            resp == roost_cluster::types::CommandResponse::Released(true)
                        }
                        Err(e) => {
                            debug!(client_id = %client_id, error = %e, "session move not committed");
                            false
                        }
                    }
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(POLL.min(left)).await;
        }
        moves.abort_all();
        while let Some(r) = moves.join_next().await {
            if matches!(r, Ok(true)) {
                handed += 1;
            }
        }
        handed
    }

    /// Takes this node's routes out of the cluster once the sessions that left are in place
    /// on their new owners (so a filter is never without a node for a moment): their filters
    /// routed to the new owner, and the new owner done taking each in (indexed there; see
    /// [`new_owners_hold`]). Then waits until every reachable member applied the removal,
    /// plus a short grace for forwards already on the way (those go on from the tombstones
    /// here). A publisher whose message reaches this node later hears a failure: it is never
    /// acknowledged for nobody.
    async fn remove_own_routes(self: &Arc<Self>, deadline: Instant) {
        let began = Instant::now();
        let mut asked = Asked::default();
        loop {
            let handed = self.handed_over();
            let covered = {
                let state = self.cluster.state().read();
                let routes = &state.snapshot().routes;
                new_owners_route(&handed, |f| routes.get(f))
            };
            let held = self.new_owners_hold(&handed, &mut asked, deadline).await;
            if covered && held {
                debug!(
                    sessions = handed.len(),
                    waited_ms = began.elapsed().as_millis() as u64,
                    "graceful stop: the new owners hold the sessions"
                );
                break;
            }
            if Instant::now() >= deadline {
                warn!("graceful stop: sessions not in place on their new owners by the drain's deadline; routes removed anyway");
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        // From here on nothing adds routes of this node again (no client can subscribe).
        self.routes.stop();
        if !self.cluster.serving() {
            // Nothing would commit; the next start of this node repairs its routes.
            return;
        }
        let mine: Vec<String> = self.cluster.committed_routes().into_iter().collect();
        for chunk in mine.chunks(ROUTES_PER_PROPOSAL) {
            let removal = self.cluster.update_routes(Vec::new(), chunk.to_vec());
            match tokio::time::timeout_at(deadline, removal).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "graceful stop: routes not removed (the next start repairs them)");
                    return;
                }
                Err(_) => return,
            }
        }
        if !mine.is_empty() {
            let grace = Duration::from_millis(self.config.cluster.heartbeat_ms * 2);
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(grace.min(left)).await;
        }
    }

    /// Whether every new owner of a session handed over from here (`handed`) is done taking
    /// it in, as it answers `Placed` (docs/rfcs/0006, "A drain's routes"). A new owner that
    /// already routes the filter (for subscribers of its own, or for a session handed to it a
    /// moment earlier) covers it in [`new_owners_route`] before it has indexed the session:
    /// a message published there after this node's routes are gone matched nothing for it
    /// (issue 10 CI at 69a33d0, one acknowledged message lost). Asks each new owner for what
    /// it has not confirmed yet; one that cannot answer (an older version, or no answer
    /// within the forward timeout: most likely down, and then taking nothing anyway) is
    /// judged by its routes alone from then on.
    async fn new_owners_hold(
        &self,
        handed: &[HandedOver],
        asked: &mut Asked,
        deadline: Instant,
    ) -> bool {
        let mut ask: HashMap<NodeId, Vec<(ClientId, u64)>> = HashMap::new();
        for h in handed {
            let key = (h.client_id.clone(), h.to.generation);
            if !asked.by_routes.contains(&h.to.node) && !asked.taken_in.contains(&key) {
                ask.entry(h.to.node).or_default().push(key);
            }
        }
        let mut held = true;
        for (peer, sessions) in ask {
            let answer =
                tokio::time::timeout_at(deadline, self.cluster.sessions_pending(peer, &sessions))
                    .await;
            match answer {
                Ok(Ok(Some(pending))) => {
                    held &= pending.is_empty();
                    let pending: HashSet<usize> = pending.into_iter().collect();
                    asked.taken_in.extend(
                        sessions
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| !pending.contains(i))
                            .map(|(_, s)| s),
                    );
                }
                Ok(Ok(None)) => {
                    debug!(peer = %peer, "graceful stop: peer cannot say which sessions it holds (older version): going by its routes");
                    asked.by_routes.insert(peer);
                }
                Ok(Err(e)) => {
                    warn!(peer = %peer, error = %e, "graceful stop: peer did not say which sessions it holds: going by its routes");
                    asked.by_routes.insert(peer);
                }
                Err(_) => return false,
            }
        }
        held
    }
}

/// What the new owners said so far (see [`Broker::new_owners_hold`]).
#[derive(Default)]
struct Asked {
    /// Hand-overs (client id, generation) their new owner has taken in.
    taken_in: HashSet<(ClientId, u64)>,
    /// Peers that cannot say (an older version, or no answer): their routes alone decide.
    by_routes: HashSet<NodeId>,
}

/// Whether every session that left (`moved`: new owner, its filters) has its filters routed to
/// its new owner. Another node's route for the same filter is not enough: it serves that
/// node's own subscribers, and a publisher's node that applied this node's route removal
/// before the new owner's route would send the message to them only (issue 8, chaos seed
/// 1202). A new owner that never routes them (it died meanwhile) holds the drain until its
/// deadline.
fn new_owners_route<'a>(
    moved: &[HandedOver],
    routes: impl Fn(&str) -> Option<&'a NodeSet>,
) -> bool {
    moved.iter().all(|h| {
        h.filters
            .iter()
            .all(|f| routes(f.as_str()).is_some_and(|nodes| nodes.contains(&h.to.node)))
    })
}

/// What a graceful stop must do about one session (see [`super::SessionRef::drain_state`]).
pub(crate) enum DrainState {
    /// A client is still connected: tell it to go first.
    Connected(Arc<super::ConnCtl>),
    /// Offline, persistent, owned by this node at `generation`: to be moved.
    Offline { generation: u64 },
    /// Nothing to move: it ends with its connection, or was never claimed.
    Stays,
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_core::topic::{TopicFilter, TopicLimits};

    fn filter(f: &str) -> TopicFilter {
        TopicFilter::new(f, &TopicLimits::default()).expect("a valid filter")
    }

    /// A session handed over to node `to`, its tombstone holding `filters`.
    fn went(to: u64, filters: &[&str]) -> HandedOver {
        HandedOver {
            client_id: ClientId::from("c"),
            to: super::super::session::Moved {
                node: NodeId::new(to),
                generation: 1,
            },
            filters: filters.iter().map(|f| filter(f)).collect(),
        }
    }

    /// Issue 8, chaos seed 1202: the stopping node 1 saw node 2's route for the filter (node 2's
    /// own subscribers) and took its own away before node 3, where the session went, routed
    /// it.
    #[test]
    fn a_route_of_another_node_does_not_cover_a_session_that_went_elsewhere() {
        let n = NodeId::new;
        let routes = std::collections::BTreeMap::from([
            ("a".to_owned(), NodeSet::from_iter([n(1), n(2)])),
            ("b".to_owned(), NodeSet::from_iter([n(3)])),
        ]);
        let lookup = |f: &str| routes.get(f);
        assert!(!new_owners_route(&[went(3, &["a"])], lookup));
        assert!(!new_owners_route(&[went(3, &["c"])], lookup));
        assert!(new_owners_route(&[went(2, &["a"])], lookup));
        assert!(new_owners_route(
            &[went(3, &["b"]), went(2, &["a"])],
            lookup
        ));
        assert!(!new_owners_route(&[went(3, &["b", "a"])], lookup));
        assert!(new_owners_route(&[], lookup));
    }
}
