//! Mutual TLS on the cluster gRPC listener, end to end in one process: `Cluster`s with
//! `ClusterConfig::tls` on `127.0.0.1` ports, certificates made here (`roost_testkit::pki`) (a cluster CA
//! issuing `roost-node-<id>` certificates, and a second CA nobody trusts), and raw tonic
//! clients playing a peer.
//!
//! Covers: a TLS cluster forms, elects, replicates and forwards (with no call refused); the
//! handshake refuses a client without a certificate, with one from another CA, and plaintext;
//! a certificate binds its holder to its node id (TakeSession, Forward, Propose, Join,
//! RenewLease, Vote), counted in `roost_cluster_peer_identity_refused_total{rpc}`; bad files
//! stop the start with an error naming them.
//!
//! The metric is read from a Prometheus recorder installed for this test binary; the tests
//! that read it run one at a time ([`SERIAL`]).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::raft::VoteRequest;
use openraft::Vote;
use parking_lot::Mutex;
use roost_cluster::cluster::BoxFuture;
use roost_cluster::state::Event;
use roost_cluster::types::{Command, CommandResponse, NodeId};
use roost_cluster::{
    node_name, Cluster, ClusterConfig, ClusterTls, LocalNode, SessionTransfer, StartError, Target,
};
use roost_codec::QoS;
use roost_core::index::Matches;
use roost_core::message::{Message, PassThrough};
use roost_core::topic::{TopicLimits, TopicName};
use roost_core::ClientId;
use roost_proto::v1 as pb;
use roost_proto::v1::cluster_client::ClusterClient;
use roost_proto::v1::raft_client::RaftClient;
use roost_testkit::pki::{PkiDir, TestCa, Usage};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Upper bound for anything that needs an election or a few commits.
const SETTLE: Duration = Duration::from_secs(10);
/// The cluster's forward and commit timeouts.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The tests that read the refusal counter (process-wide) run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Prometheus recorder of this test binary, installed before any `Cluster` starts (the
/// cluster resolves its counters at start).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// `roost_cluster_peer_identity_refused_total{rpc}`, or the sum over every rpc (`None`).
fn refused(rpc: Option<&str>) -> u64 {
    let text = recorder().render();
    let mut sum = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("roost_cluster_peer_identity_refused_total{") else {
            continue;
        };
        if let Some(rpc) = rpc {
            if !rest.contains(&format!("rpc=\"{rpc}\"")) {
                continue;
            }
        }
        sum += line
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{line}: {e}")) as u64;
    }
    sum
}

/// A certificate for both ends of a TLS connection, signed by `ca`, with these DNS names:
/// (certificate PEM, key PEM).
fn issue(ca: &TestCa, sans: &[String]) -> (String, String) {
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let leaf = ca.leaf("roost test node", &sans, Usage::Both);
    (leaf.cert_pem, leaf.key_pem)
}

fn ca(name: &str) -> TestCa {
    TestCa::new(name)
}

/// The cluster CA, its certificate written to `ca.pem`; the nodes' files go beside it
/// ([`node_tls`]).
fn pki() -> PkiDir {
    let pki = PkiDir::new("roost test cluster CA");
    pki.write("ca.pem", &pki.ca.pem);
    pki
}

/// Node `id`'s files, its certificate naming `roost-node-<id>`.
fn node_tls(pki: &PkiDir, id: u64) -> ClusterTls {
    let name = node_name(NodeId::new(id));
    let files = pki.write_leaf(
        &format!("node-{id}"),
        "roost test node",
        &[&name],
        Usage::Both,
    );
    ClusterTls {
        cert: files.cert,
        key: files.key,
        ca: pki.path("ca.pem"),
    }
}

/// The node side of the cluster layer, recording what it is handed.
#[derive(Default)]
struct TestNode {
    delivered: Mutex<Vec<Arc<Message>>>,
    /// Every `take_session` call: (client id, requester).
    takes: Mutex<Vec<(ClientId, NodeId)>>,
}

impl LocalNode for TestNode {
    fn deliver(&self, msg: Arc<Message>, _target: Target<'_>) -> roost_cluster::Delivered {
        self.delivered.lock().push(msg);
        roost_cluster::Delivered::default()
    }

    fn take_session(
        &self,
        client_id: ClientId,
        _generation: u64,
        requester: NodeId,
    ) -> BoxFuture<Option<SessionTransfer>> {
        self.takes.lock().push((client_id, requester));
        Box::pin(async { None })
    }

    // Takes no sessions in: none is ever on its way here.
    fn sessions_pending(&self, _sessions: &[(ClientId, u64)]) -> Vec<usize> {
        Vec::new()
    }

    fn on_event(&self, _event: &Event) {}
}

struct Node {
    id: NodeId,
    cluster: Arc<Cluster>,
    local: Arc<TestNode>,
    addr: SocketAddr,
    _dir: TempDir,
}

fn config(id: u64, listen: SocketAddr, seeds: Vec<(NodeId, String)>, dir: &Path) -> ClusterConfig {
    ClusterConfig {
        node_id: NodeId::new(id),
        listen,
        advertise: listen.to_string(),
        mqtt_addr: format!("127.0.0.1:{}", 18830 + id),
        seeds,
        data_dir: dir.to_path_buf(),
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        forward_timeout: OP_TIMEOUT,
        commit_timeout: OP_TIMEOUT,
        max_packet_size: 1_048_576,
        session_lease: Duration::from_millis(1200),
        tls: None,
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], roost_testkit::free_port().unwrap()))
}

/// `n` nodes (ids 1..=n) seeded with each other, each with its certificate from `pki`.
async fn tls_cluster(pki: &PkiDir, n: u64) -> Vec<Node> {
    recorder();
    let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
    let seeds: Vec<(NodeId, String)> = (1..=n)
        .map(|id| (NodeId::new(id), addrs[id as usize - 1].to_string()))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=n {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(TestNode::default());
        let addr = addrs[id as usize - 1];
        let mut cfg = config(id, addr, seeds.clone(), dir.path());
        cfg.tls = Some(node_tls(pki, id));
        let cluster = Cluster::start(cfg, local.clone()).await.unwrap();
        nodes.push(Node {
            id: NodeId::new(id),
            cluster,
            local,
            addr,
            _dir: dir,
        });
    }
    nodes
}

/// Waits until every node knows the same leader; returns it.
async fn wait_for_leader(nodes: &[Node]) -> NodeId {
    let deadline = Instant::now() + SETTLE;
    loop {
        let leaders: Vec<_> = nodes.iter().map(|n| n.cluster.leadership().1).collect();
        if let Some(Some(l)) = leaders.first().copied() {
            if leaders.iter().all(|x| *x == Some(l)) && nodes.iter().all(|n| n.cluster.serving()) {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {SETTLE:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shutdown_all(nodes: &[Node]) {
    for n in nodes {
        n.cluster.shutdown().await;
    }
}

fn topic(s: &str) -> TopicName {
    TopicName::new(s, &TopicLimits::default()).unwrap()
}

fn routed_to(c: &Cluster, t: &str) -> Vec<NodeId> {
    let mut m = Matches::default();
    c.state().read().routes().matches(&topic(t), None, &mut m);
    m.direct.iter().map(|d| d.subscriber).collect()
}

fn message(t: &str, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: topic(t),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PassThrough::default(),
        expires_at: None,
        id: 0,
        publisher: Some(Arc::from("pub-1")),
        entered: None,
    })
}

/// A channel to node `server` at `addr`, trusting `trust` (PEM), presenting `identity`
/// (certificate PEM, key PEM) if any.
fn tls_channel(
    addr: SocketAddr,
    server: u64,
    trust: &str,
    identity: Option<&(String, String)>,
) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trust))
        .domain_name(node_name(NodeId::new(server)));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

async fn status(ch: Channel) -> Result<pb::StatusReply, tonic::Status> {
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(Duration::from_secs(2));
    ClusterClient::new(ch)
        .status(req)
        .await
        .map(|r| r.into_inner())
}

/// (a) Three nodes with mutual TLS elect a leader, replicate a follower's proposal to all,
/// forward a QoS 1 message and hand over a session; no call between them is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_elects_replicates_and_forwards() {
    let _serial = SERIAL.lock().await;
    let refused_before = refused(None);
    let pki = pki();
    let nodes = tls_cluster(&pki, 3).await;
    let leader = wait_for_leader(&nodes).await;
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();

    // A follower's proposal goes to the leader (Cluster.Propose over TLS, the command's
    // author is the caller) and is applied everywhere (AppendEntries over TLS).
    let (_, resp) = follower
        .cluster
        .propose(Command::UpdateRoutes {
            node: follower.id,
            add: vec!["sensors/#".into()],
            remove: vec![],
        })
        .await
        .unwrap();
    assert_eq!(resp, CommandResponse::Done);
    for n in &nodes {
        // The follower keeps its own direct route out of its route index (it never forwards
        // to itself): there, the replicated map shows it.
        eventually("the route is applied everywhere", || {
            if n.id == follower.id {
                n.cluster
                    .state()
                    .read()
                    .snapshot()
                    .routes
                    .get("sensors/#")
                    .is_some_and(|nodes| nodes.contains(&follower.id))
            } else {
                routed_to(&n.cluster, "sensors/a") == vec![follower.id]
            }
        })
        .await;
    }

    // Forwarding from node 1 to node 2 over TLS, acknowledged.
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let ack = n1
        .cluster
        .forward(n2.id, message("sensors/a", b"over tls"), true, vec![])
        .await
        .expect("a QoS 1 forward returns an ack receiver");
    tokio::time::timeout(OP_TIMEOUT, ack)
        .await
        .expect("acknowledged within the forward timeout")
        .expect("ack sender not dropped")
        .expect("the peer accepted it");
    let got = n2.local.delivered.lock().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, Bytes::from_static(b"over tls"));

    // TakeSession over TLS: node 3 asks node 2, and node 2 is told node 3 asked.
    let n3 = &nodes[2];
    let none = n3
        .cluster
        .take_session(n2.id, &ClientId::from("dev-1"), 1, true)
        .await
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(
        *n2.local.takes.lock(),
        vec![(ClientId::from("dev-1"), n3.id)]
    );

    // Every member is healthy (Status over TLS) and nothing was refused on the way.
    let status = n1.cluster.status().await;
    assert!(status.members.iter().all(|m| m.healthy), "{status:#?}");
    assert_eq!(
        refused(None),
        refused_before,
        "no call between members refused"
    );
    shutdown_all(&nodes).await;
}

/// (b) The handshake refuses a client without a certificate, one whose certificate comes
/// from another CA, and a plaintext client; a client with a cluster certificate gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_refuses_clients_without_a_cluster_certificate() {
    let pki = pki();
    let nodes = tls_cluster(&pki, 1).await;
    wait_for_leader(&nodes).await;
    let addr = nodes[0].addr;

    let member = issue(&pki.ca, &[node_name(NodeId::new(2))]);
    let ok = status(tls_channel(addr, 1, &pki.ca.pem, Some(&member)))
        .await
        .expect("a certificate from the cluster CA gets through");
    assert_eq!(ok.node_id, 1);

    let anonymous = status(tls_channel(addr, 1, &pki.ca.pem, None)).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");

    let other_ca = ca("somebody else's CA");
    let stranger = issue(&other_ca, &[node_name(NodeId::new(2))]);
    let foreign = status(tls_channel(addr, 1, &pki.ca.pem, Some(&stranger))).await;
    assert!(foreign.is_err(), "another CA's certificate: {foreign:?}");

    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let plain = status(plain).await;
    assert!(plain.is_err(), "plaintext: {plain:?}");

    // The client checks the server too: node 1 is not roost-node-2.
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.pem))
        .domain_name(node_name(NodeId::new(2)))
        .identity(Identity::from_pem(&member.0, &member.1));
    tls = tls.timeout(Duration::from_secs(2));
    let wrong_server = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let wrong_server = status(wrong_server).await;
    assert!(
        wrong_server.is_err(),
        "server name not verified: {wrong_server:?}"
    );
    shutdown_all(&nodes).await;
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied => s,
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

/// (c) A client holding node 2's certificate is node 2: claiming to be node 3 in TakeSession,
/// Forward, Propose, RenewLease or Vote is refused and counted; claiming node 2 is accepted.
/// Join from a node that is not a member may only add itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_binds_its_holder_to_its_node_id() {
    let _serial = SERIAL.lock().await;
    let pki = pki();
    let nodes = tls_cluster(&pki, 1).await;
    wait_for_leader(&nodes).await;
    let n1 = &nodes[0];
    let two = issue(&pki.ca, &[node_name(NodeId::new(2))]);
    let ch = tls_channel(n1.addr, 1, &pki.ca.pem, Some(&two));
    let mut cluster = ClusterClient::new(ch.clone());
    let before = |rpc| refused(Some(rpc));

    // TakeSession.
    let b = before("take_session");
    let take = |requester| pb::TakeSessionRequest {
        client_id: "dev-1".into(),
        generation: 7,
        requester,
    };
    let s = denied(cluster.take_session(take(3)).await, "TakeSession as node 3");
    assert!(s.message().contains("node 2"), "{}", s.message());
    assert!(n1.local.takes.lock().is_empty(), "refused before the node");
    assert_eq!(refused(Some("take_session")), b + 1);
    let reply = cluster.take_session(take(2)).await.unwrap().into_inner();
    assert!(!reply.found);
    assert_eq!(
        *n1.local.takes.lock(),
        vec![(ClientId::from("dev-1"), NodeId::new(2))]
    );
    assert_eq!(
        refused(Some("take_session")),
        b + 1,
        "node 2 as node 2 passes"
    );

    // Forward: a batch whose origin is node 3 ends the stream; one from node 2 is delivered.
    let b = before("forward");
    let batch = |origin| pb::ForwardBatch {
        origin_node: origin,
        epoch: 0,
        messages: vec![pb::ForwardedMessage {
            seq: 1,
            message: Some(pb::Message {
                topic: "t".into(),
                payload: b"hello".to_vec(),
                qos: 1,
                ..Default::default()
            }),
            direct: true,
            ..Default::default()
        }],
    };
    let mut acks = cluster
        .forward(tokio_stream::iter(vec![batch(3)]))
        .await
        .unwrap()
        .into_inner();
    denied(
        acks.message().await.map(|m| m.map(|a| a.seqs)),
        "Forward as node 3",
    );
    assert!(n1.local.delivered.lock().is_empty());
    assert_eq!(refused(Some("forward")), b + 1);
    let mut acks = cluster
        .forward(tokio_stream::iter(vec![batch(2)]))
        .await
        .unwrap()
        .into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!(ack.seqs, vec![1]);
    assert_eq!(n1.local.delivered.lock().len(), 1);
    assert_eq!(refused(Some("forward")), b + 1);

    // Propose: a command written for node 3 is refused; for node 2 it commits.
    let b = before("propose");
    let propose = |node| pb::ProposeRequest {
        command: postcard::to_allocvec(&Command::UpdateRoutes {
            node: NodeId::new(node),
            add: vec!["x/#".into()],
            remove: vec![],
        })
        .unwrap(),
    };
    denied(cluster.propose(propose(3)).await, "Propose for node 3");
    assert_eq!(refused(Some("propose")), b + 1);
    let reply = cluster.propose(propose(2)).await.unwrap().into_inner();
    assert!(reply.error.is_empty(), "{}", reply.error);
    assert_eq!(refused(Some("propose")), b + 1);

    // RenewLease as node 3 (refused by the binding; as node 2 the leader refuses a
    // non-member, which the binding does not count).
    let b = before("renew_lease");
    denied(
        cluster.renew_lease(pb::LeaseRequest { node_id: 3 }).await,
        "RenewLease as node 3",
    );
    assert_eq!(refused(Some("renew_lease")), b + 1);
    denied(
        cluster.renew_lease(pb::LeaseRequest { node_id: 2 }).await,
        "RenewLease of a non-member",
    );
    assert_eq!(refused(Some("renew_lease")), b + 1);

    // Join: node 2 is not a member, so it may ask only to add itself.
    let b = before("join");
    denied(
        cluster
            .join(pb::JoinRequest {
                node_id: 3,
                cluster_addr: "127.0.0.1:1".into(),
                mqtt_addr: String::new(),
            })
            .await,
        "Join of node 3 by node 2",
    );
    assert_eq!(refused(Some("join")), b + 1);

    // Raft: a vote whose candidate is node 3.
    let b = before("vote");
    let vote = VoteRequest::new(Vote::new(1_000, NodeId::new(3)), None);
    let payload = pb::RaftPayload {
        data: postcard::to_allocvec(&vote).unwrap(),
    };
    denied(
        RaftClient::new(ch).vote(payload).await,
        "Vote for candidate 3",
    );
    assert_eq!(refused(Some("vote")), b + 1);
    assert_eq!(
        n1.cluster.leadership().1,
        Some(n1.id),
        "the leader is untouched"
    );

    // A cluster certificate that names no node is refused wherever a node is claimed.
    let nameless = issue(&pki.ca, &["roost.example".to_owned()]);
    let mut anon = ClusterClient::new(tls_channel(n1.addr, 1, &pki.ca.pem, Some(&nameless)));
    let b = before("take_session");
    let s = denied(
        anon.take_session(take(2)).await,
        "a certificate without a node",
    );
    assert!(s.message().contains("roost-node-"), "{}", s.message());
    assert_eq!(refused(Some("take_session")), b + 1);
    shutdown_all(&nodes).await;
}

fn start_error(cfg: ClusterConfig) -> StartError {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(Cluster::start(cfg, Arc::new(TestNode::default()))) {
        Ok(_) => panic!("started with bad TLS files"),
        Err(e) => e,
    }
}

/// Bad TLS files stop the start, before the port is bound, with an error naming the file.
#[test]
fn bad_tls_files_are_a_start_error_naming_the_file() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let with = |tls: ClusterTls| {
        let mut cfg = config(1, listen, vec![], dir.path());
        cfg.tls = Some(tls);
        cfg
    };
    let good = node_tls(&pki, 1);
    let check = |tls: ClusterTls, path: &Path, says: &str| {
        let e = start_error(with(tls));
        match &e {
            StartError::Tls { path: p, .. } => assert_eq!(p, path, "{e}"),
            other => panic!("not a TLS error: {other}"),
        }
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(says), "{text}");
    };

    let missing = pki.path("missing.pem");
    check(
        ClusterTls {
            cert: missing.clone(),
            ..good.clone()
        },
        &missing,
        "cannot read",
    );
    let not_pem = pki.write("junk.pem", "not a certificate\n");
    check(
        ClusterTls {
            ca: not_pem.clone(),
            ..good.clone()
        },
        &not_pem,
        "no PEM certificate",
    );
    check(
        ClusterTls {
            key: not_pem.clone(),
            ..good.clone()
        },
        &not_pem,
        "no PEM private key",
    );
    // Node 2's certificate on node 1: its peers would not take it for node 1.
    let two = node_tls(&pki, 2);
    check(
        ClusterTls {
            cert: two.cert.clone(),
            key: two.key.clone(),
            ..good.clone()
        },
        &two.cert,
        "roost-node-1",
    );
    // Node 1's certificate with another key.
    check(
        ClusterTls {
            key: two.key.clone(),
            ..good.clone()
        },
        &two.key,
        "not usable",
    );
    // The port was never bound: a good configuration starts on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Cluster::start(with(good), Arc::new(TestNode::default()))
            .await
            .unwrap();
        c.shutdown().await;
    });
}
