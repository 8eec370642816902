//! The workloads: what the clients of a run do, each recorded as [`Op`]s on one clock.
//!
//! | workload | publishers | receivers | what it holds the broker to |
//! |---|---|---|---|
//! | `qos1-queue` | one per node, QoS 1 to `chaos/q` | one persistent subscriber per node, moving to a random node one time in three after a lost connection | lost, reordered, unexpected, two sessions |
//! | `qos2-exactly-once` | the same at QoS 2 | the same, QoS 2 | and duplicated |
//! | `takeover` | as `qos1-queue` | subscribers that reconnect to a random node every 1-3 s while still connected (the broker takes the old connection over) | as `qos1-queue` under constant takeovers |
//! | `retained` | one writer per topic `chaos/r/N`, retained QoS 1 | readers: a new clean subscription on a random node, reading the retained value | stale retained |
//! | `shared` | as `qos1-queue`, QoS 2 to `chaos/s` | one member per node of `$share/g/chaos/s`, persistent, recorded as the group | lost and duplicated for the group |
//! | `will` | will clients `will-N` (two per node) connecting to random nodes with a Last Will and ending each connection by a dropped socket, DISCONNECT 0x00 or 0x04 | one watcher per node on `chaos/w/#`, persistent, QoS 1 | wills published exactly when due, once |
//! | `qos1-and-retained` | `qos1-queue`'s and `retained`'s together (what a rolling restart must not lose) | both | both |

mod queue;
mod retained;
mod will;

use crate::history::{Nanos, Op};
use crate::rng::Rng;
use parking_lot::Mutex;
use roost_codec::{Protocol, ReasonCode};
use roost_testkit::{connect_packet, persistent_packet, RawClient};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use queue::TOPIC;

/// A workload by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Qos1Queue,
    Qos2ExactlyOnce,
    Takeover,
    Retained,
    Shared,
    Will,
    /// `Qos1Queue` and `Retained` at once.
    Qos1AndRetained,
}

impl Workload {
    /// Every workload, in the order `suite` runs them.
    pub const ALL: [Workload; 6] = [
        Workload::Qos1Queue,
        Workload::Qos2ExactlyOnce,
        Workload::Takeover,
        Workload::Retained,
        Workload::Shared,
        Workload::Will,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Qos1Queue => "qos1-queue",
            Workload::Qos2ExactlyOnce => "qos2-exactly-once",
            Workload::Takeover => "takeover",
            Workload::Retained => "retained",
            Workload::Shared => "shared",
            Workload::Will => "will",
            Workload::Qos1AndRetained => "qos1-and-retained",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Workload, String> {
        let named = Workload::ALL.into_iter().chain([Workload::Qos1AndRetained]);
        named.clone().find(|w| w.name() == s).ok_or_else(|| {
            let known: Vec<_> = named.map(|w| w.name()).collect();
            format!("unknown workload {s:?} (known: {})", known.join(", "))
        })
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When the clients stop: publishers (and writers, readers) first, receivers after the drain.
#[derive(Clone)]
pub struct Stops {
    pub publishers: Arc<AtomicBool>,
    pub receivers: Arc<AtomicBool>,
}

/// Starts the workload's clients on `rt`: receivers first, then (2 s later, so every publish is
/// owed to them) publishers.
pub fn spawn(
    w: Workload,
    rt: &tokio::runtime::Runtime,
    targets: &Targets,
    rec: &Recorder,
    stops: &Stops,
    rng: &mut Rng,
) -> Vec<tokio::task::JoinHandle<()>> {
    let nodes = targets.len();
    let mut tasks = Vec::new();
    match w {
        Workload::Qos1AndRetained => {
            tasks = spawn(Workload::Qos1Queue, rt, targets, rec, stops, rng);
            tasks.extend(spawn(Workload::Retained, rt, targets, rec, stops, rng));
            return tasks;
        }
        Workload::Retained => {
            for i in 1..=nodes {
                let r = Rng::new(rng.next_u64());
                tasks.push(rt.spawn(retained::reader(
                    i,
                    targets.clone(),
                    rec.clone(),
                    stops.clone(),
                    r,
                )));
            }
            for i in 1..=nodes {
                tasks.push(rt.spawn(retained::writer(
                    i,
                    targets.clone(),
                    rec.clone(),
                    stops.clone(),
                )));
            }
            return tasks;
        }
        Workload::Will => {
            // Watchers stay on their node: not on a spare that leaves and takes their
            // sessions with it.
            for i in 1..=targets.members {
                tasks.push(rt.spawn(will::watcher(
                    i,
                    targets.clone(),
                    rec.clone(),
                    stops.clone(),
                )));
            }
            std::thread::sleep(Duration::from_secs(2));
            for i in 1..=nodes * will::PER_NODE {
                let r = Rng::new(rng.next_u64());
                tasks.push(rt.spawn(will::will_client(
                    i,
                    targets.clone(),
                    rec.clone(),
                    stops.clone(),
                    r,
                )));
            }
            return tasks;
        }
        Workload::Qos1Queue | Workload::Qos2ExactlyOnce | Workload::Takeover | Workload::Shared => {
        }
    }
    let spec = queue::Spec::of(w);
    for i in 1..=nodes {
        let r = Rng::new(rng.next_u64());
        tasks.push(rt.spawn(queue::subscriber(
            spec,
            i,
            targets.clone(),
            rec.clone(),
            stops.clone(),
            r,
        )));
    }
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..=nodes {
        tasks.push(rt.spawn(queue::publisher(
            spec,
            i,
            targets.clone(),
            rec.clone(),
            stops.clone(),
        )));
    }
    tasks
}

/// Where the operations go, timed from the run's start.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> Nanos {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().push(op);
    }

    /// Everything recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// Where the clients find the nodes: each node's MQTT address now (by node id; the nemesis
/// updates it when a node moves) and name (what a Server Reference names), and how many nodes
/// are members from the start (the rest: spares, often not running).
#[derive(Clone)]
pub struct Targets {
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    names: Arc<Vec<String>>,
    /// Members from the start: nodes `1..=members`.
    pub members: usize,
}

impl Targets {
    /// `nodes`: each node's (name, MQTT address), node 1 first.
    pub fn new(nodes: Vec<(String, SocketAddr)>, members: usize) -> Targets {
        let (names, addrs) = nodes.into_iter().unzip();
        Targets {
            addrs: Arc::new(Mutex::new(addrs)),
            names: Arc::new(names),
            members,
        }
    }

    /// How many nodes there are, spares included.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Node `node`'s MQTT address now.
    pub fn addr(&self, node: usize) -> SocketAddr {
        self.addrs.lock()[node - 1]
    }

    /// Node `node` listens at `addr` from now on.
    pub fn moved(&self, node: usize, addr: SocketAddr) {
        self.addrs.lock()[node - 1] = addr;
    }

    /// The node a Server Reference (`NAME:PORT`: every node advertises its name) names, if
    /// any.
    pub fn named(&self, reference: &str) -> Option<usize> {
        let host = reference.rsplit_once(':').map_or(reference, |(h, _)| h);
        self.names.iter().position(|n| n == host).map(|i| i + 1)
    }

    /// Whether a client of home `home`, connected to `node`, should go home when it can: its
    /// home is a spare (it was not running when the client connected; once it runs, a Service
    /// sends new connections there too), and it is elsewhere. It goes after [`HOME_AFTER`],
    /// once its home is [`ready`](Self::ready).
    pub fn away_from_spare_home(&self, home: usize, node: usize) -> bool {
        node != home && home > self.members
    }

    /// Whether node `node` says 200 on `/readyz` within half a second: a Service sends
    /// clients only to ready pods.
    pub async fn ready(&self, node: usize) -> bool {
        let admin = SocketAddr::new(self.addr(node).ip(), crate::nodes::HTTP);
        let probe = roost_testkit::http_at(admin, "GET", "/readyz", None);
        matches!(
            tokio::time::timeout(Duration::from_millis(500), probe).await,
            Ok(Ok(r)) if r.status == 200
        )
    }

    /// Where a client whose connection `c` ended goes next: the node named by the Server
    /// Reference of the broker's DISCONNECT (0x9C Use another server, 0x9D Server moved),
    /// as an MQTT 5 client does; `None` when there was none.
    pub fn referred(&self, c: &RawClient) -> Option<usize> {
        let reference = c
            .broker_disconnect()?
            .properties
            .server_reference
            .as_deref()?;
        self.named(reference)
    }
}

/// How long a client whose home is a spare stays elsewhere before it tries its home again
/// ([`Targets::away_from_spare_home`]): the clients of the nodes a scale-up adds use them.
pub(crate) const HOME_AFTER: Duration = Duration::from_secs(2);

/// Why a client could not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoConnection {
    /// Nothing listens there (the node is stopped, starting, or moved): a Service would not
    /// route there either.
    Unreachable,
    /// Refused (a CONNACK failure code, no lease, no quorum) or no CONNACK in time.
    Refused,
}

/// Connects `client_id` (v5) to node `node` (1-based). Returns the client and whether a
/// session was present.
async fn connect(
    targets: &Targets,
    node: usize,
    client_id: &str,
    persistent: bool,
) -> Result<(RawClient, bool), NoConnection> {
    let addr = targets.addr(node);
    let open = tokio::time::timeout(Duration::from_secs(2), RawClient::open(addr, Protocol::V5));
    let mut c = match open.await {
        Ok(Ok(c)) => c,
        _ => return Err(NoConnection::Unreachable),
    };
    let packet = if persistent {
        persistent_packet(Protocol::V5, client_id)
    } else {
        connect_packet(Protocol::V5, client_id, true)
    };
    // A takeover from an unreachable owner waits for its lease: allow for it.
    let ack = tokio::time::timeout(Duration::from_secs(15), c.handshake(packet))
        .await
        .map_err(|_| NoConnection::Refused)?
        .map_err(|_| NoConnection::Refused)?;
    if ack.reason_code != ReasonCode::SUCCESS {
        return Err(NoConnection::Refused);
    }
    Ok((c, ack.session_present))
}

/// What one publishing client does: publish `NAME:SEQ` to `topic` through node `node` every
/// `every` until told to stop, recording each outcome (`ok` on success, 0x10 No matching
/// subscribers included; `failed` on a failure code; `unknown` when the connection broke
/// first). After a lost connection it goes where the broker's DISCONNECT referred it (a
/// draining node's 0x9C), else back to its node; where nothing listens (a node stopped or
/// moved) it tries the next node, as a Service routes only to running pods; a node that
/// refuses it (no lease, no quorum) it tries again. A client whose node is a spare goes back
/// to it from elsewhere once it is ready (asked every [`HOME_AFTER`]), so the nodes a
/// scale-up adds serve clients.
pub(crate) struct Publishing {
    pub(crate) name: String,
    pub(crate) node: usize,
    pub(crate) topic: String,
    pub(crate) qos: roost_codec::QoS,
    pub(crate) retain: bool,
    pub(crate) every: Duration,
}

/// Runs a [`Publishing`] client until `stop`.
pub(crate) async fn publish_until(
    p: Publishing,
    targets: Targets,
    rec: Recorder,
    stop: Arc<AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut seq = 0u64;
    // The home node first; see [`Publishing`] for where it goes when that fails.
    let mut node = p.node;
    let mut unreachable = 0;
    while !stop.load(Ordering::Acquire) {
        let mut c = match connect(&targets, node, &p.name, false).await {
            Ok((c, _)) => c,
            Err(NoConnection::Unreachable) => {
                node = node % targets.len() + 1;
                unreachable += 1;
                if unreachable % targets.len() == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
            Err(NoConnection::Refused) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        unreachable = 0;
        let from = rec.now();
        // When this client last asked whether its home is ready.
        let mut checked = from;
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            let payload = format!("{}:{seq}", p.name);
            let start = rec.now();
            let r = c
                .publish(&p.topic, payload.as_bytes(), p.qos, p.retain)
                .await;
            let outcome = match &r {
                Ok(rc) if !rc.is_error() => crate::history::Outcome::Ok,
                Ok(_) => crate::history::Outcome::Failed,
                Err(_) => crate::history::Outcome::Unknown,
            };
            rec.push(Op::Publish {
                client: p.name.clone(),
                node: node as u64,
                topic: p.topic.clone(),
                seq,
                qos: p.qos as u8,
                start,
                end: rec.now(),
                outcome,
                retain: p.retain,
            });
            if r.is_err() {
                break;
            }
            tokio::time::sleep(p.every).await;
            if targets.away_from_spare_home(p.node, node)
                && rec.now().saturating_sub(checked) > HOME_AFTER.as_nanos() as u64
            {
                checked = rec.now();
                if targets.ready(p.node).await {
                    let _ = c
                        .send(&roost_codec::Packet::Disconnect(Default::default()))
                        .await;
                    break;
                }
            }
        }
        rec.push(Op::Session {
            client: p.name.clone(),
            node: node as u64,
            from,
            until: Some(rec.now()),
        });
        node = targets.referred(&c).unwrap_or(p.node);
    }
}

/// What a receiver connection reads, and until when the broker served it: pings after every
/// idle second, and counts the connection live until the last packet the broker sent other
/// than the one that closed it (a paused node holds its connections open but serves nobody).
pub(crate) struct Liveness<'a> {
    rec: &'a Recorder,
    stop: &'a AtomicBool,
    last_heard: Instant,
    /// When the broker last served the connection.
    pub(crate) alive: Nanos,
}

impl<'a> Liveness<'a> {
    pub(crate) fn new(rec: &'a Recorder, stop: &'a AtomicBool, from: Nanos) -> Liveness<'a> {
        Liveness {
            rec,
            stop,
            last_heard: Instant::now(),
            alive: from,
        }
    }

    /// The next packet from the broker; `None` when the run stops (a DISCONNECT goes out),
    /// the broker closed the connection or sent DISCONNECT, or it broke.
    pub(crate) async fn next(&mut self, c: &mut RawClient) -> Option<roost_codec::Packet> {
        use roost_codec::Packet;
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Acquire) {
                let _ = c.send(&Packet::Disconnect(Default::default())).await;
                return None;
            }
            if self.last_heard.elapsed() > Duration::from_secs(1) {
                self.last_heard = Instant::now();
                if c.send(&Packet::PingReq).await.is_err() {
                    return None;
                }
            }
            match c.recv_within(Duration::from_millis(500)).await {
                Ok(Some(Packet::Disconnect(_))) | Ok(None) => return None,
                Ok(Some(p)) => {
                    self.last_heard = Instant::now();
                    self.alive = self.rec.now();
                    return Some(p);
                }
                Err(e) if e.to_string().starts_with("no packet within") => {}
                Err(_) => return None,
            }
        }
    }
}
