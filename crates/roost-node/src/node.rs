//! Starting and stopping one node: data directory, listeners, background tasks, graceful drain.
//!
//! ```text
//!  Node::start(config) ── validate ── lock data dir ── bind MQTT ── bind HTTP
//!        │                                  │
//!        ├─ accept loop ── spawn driver::serve per connection
//!        ├─ $SYS ticker
//!        └─ admin HTTP (axum; over TLS through https.rs when http.tls_cert is set)
//!  Node::shutdown() ── readyz 503 ── stop accepting ── DISCONNECT to every client (v5: 0x9C
//!                   + Server Reference to a live peer, else 0x8B) ── wait for drivers to flush
//!                   (bounded) ── drain: sessions handed on, routes removed (bounded) ── stop
//!                   tasks ── leader? hand Raft leadership over (bounded) ── stop Raft, HTTP
//! ```

use crate::broker::Broker;
use crate::config::Config;
use crate::hooks::NodeHooks;
use crate::http::{router, AdminState, Guard};
use crate::telemetry::LogHandle;
use roost_cluster::types::NodeId;
use roost_cluster::{Cluster, ClusterConfig};
use std::fs::File;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Why a node did not start. Each message names the setting or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (nothing was bound).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `ROOST_FAILPOINTS` does not parse (only a node built with the `testing` feature reads it).
    #[error("{0}")]
    Failpoints(String),
    /// The data directory could not be created or its lock file opened.
    #[error("cannot {what} {}: {source}", path.display())]
    DataDir {
        /// What was being done ("create node.data_dir", "open").
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "node.data_dir {} is in use by another roost process (lock {} held)",
        dir.display(),
        lock.display()
    )]
    DataDirLocked {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Its lock file.
        lock: std::path::PathBuf,
    },
    /// A listener could not be bound (or its address read).
    #[error("cannot bind {key} {addr}: {source}")]
    Bind {
        /// The setting (`mqtt.listen`, `http.listen`, `listeners[0].listen`).
        key: String,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A connection shard's runtime or thread could not be started (`node.shards`).
    #[error("cannot start the connection shards (node.shards): {0}")]
    Shards(std::io::Error),
    /// A seed in `cluster.seeds` is not `ID@HOST:PORT`.
    #[error("cluster.seeds: {0}")]
    Seed(String),
    /// The cluster layer did not start (boxed: it is large, and start-up errors are rare).
    #[error(transparent)]
    Cluster(#[from] Box<roost_cluster::StartError>),
}

/// How long shutdown waits for connections to flush and close.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader hand-off at shutdown is bounded by this many election timeouts (2 s by
/// default): one TimeoutNow round is milliseconds; when it fails, the voters' own election
/// (the lease, twice the timeout, plus jitter) ends within it.
const HAND_OFF_TIMEOUTS: u32 = 4;

/// A running node.
pub struct Node {
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    mqtt_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// Every MQTT listener's name and bound address, `mqtt.listen` first.
    listener_addrs: Vec<(String, SocketAddr)>,
    background: Vec<JoinHandle<()>>,
    /// The connection shards (`node.shards`); stopped last, and when the node is dropped.
    shards: Option<Arc<crate::shard::Shards>>,
    _data_lock: File,
}

impl Node {
    /// Validates the config, locks the data directory, binds the listeners and starts serving.
    /// Nothing is bound if the config is invalid.
    pub async fn start(config: Config, log: Option<LogHandle>) -> Result<Node, StartError> {
        config.validate()?;
        crate::failpoints::init().map_err(StartError::Failpoints)?;
        // Read before anything is bound or locked: a missing token file stops the start here.
        let admin_token = if config.http.enabled {
            config.http.admin_token()?
        } else {
            None
        };
        let auth = crate::auth::Auth::load(&config.auth).map_err(|e| {
            let (key, file) = match &e {
                crate::auth::AuthError::Jwt(j) => (j.key, &config.auth.jwt_key_file),
                _ => ("auth.password_file", &config.auth.password_file),
            };
            let value = file
                .as_ref()
                .map(|p| format!("{:?}", p.display().to_string()))
                .unwrap_or_default();
            StartError::Config(crate::config::ConfigError::Invalid {
                key: key.into(),
                value,
                reason: e.to_string(),
            })
        })?;
        let policies =
            crate::policy::NodePolicies::new(config.auth.policy_file.clone()).map_err(|e| {
                StartError::Config(crate::config::ConfigError::Invalid {
                    key: "auth.policy_file".into(),
                    value: format!("{:?}", e.path.display().to_string()),
                    reason: e.message,
                })
            })?;
        // TLS files are read before anything is bound: a bad one stops the start here.
        let main = crate::listener::Listener::main_config(
            config.mqtt.listen,
            config.mqtt.connect_timeout_secs,
        );
        let entries = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}]"), l));
        let mut listeners = Vec::with_capacity(config.listeners.len() + 1);
        for (key, l) in std::iter::once(("mqtt".to_owned(), &main)).chain(entries) {
            let built = crate::listener::Listener::from_config(
                &key,
                l,
                config.mqtt.allow_anonymous,
                config.mqtt.rate_burst_secs,
                config.mqtt.max_keep_alive,
            )
            .map_err(|e| {
                StartError::Config(crate::config::ConfigError::Invalid {
                    key: e.key,
                    value: format!("{:?}", l.display_name()),
                    reason: e.source.to_string(),
                })
            })?;
            listeners.push(Arc::new(built));
        }
        let admin_tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) if config.http.enabled => Some(Arc::new(
                crate::https::AdminTls::load(cert.clone(), key.clone())?,
            )),
            _ => None,
        };
        let data_lock = lock_data_dir(&config)?;
        let _ = crate::telemetry::prometheus();
        let config = Arc::new(config);

        let backlog = config.mqtt.listen_backlog;
        warn_if_backlog_capped(backlog);
        let (main, mqtt_addr) = bind("mqtt.listen".into(), config.mqtt.listen, backlog).await?;
        // (TCP socket, or none for QUIC whose endpoint the listener holds; bound address)
        let mut sockets = vec![(Some(main), mqtt_addr)];
        for (i, l) in config.listeners.iter().enumerate() {
            let key = format!("listeners[{i}].listen");
            if l.kind.udp() {
                let bound = listeners[i + 1]
                    .bind_quic(l.listen)
                    .map_err(|e| StartError::Bind {
                        key: key.clone(),
                        addr: l.listen,
                        source: std::io::Error::other(e),
                    })?;
                sockets.push((None, bound));
            } else {
                let (s, a) = bind(key, l.listen, backlog).await?;
                sockets.push((Some(s), a));
            }
        }
        let ready = Arc::new(AtomicBool::new(true));
        let (stop, stop_rx) = watch::channel(false);

        let mut background = Vec::new();
        let broker = start_broker(&config, mqtt_addr, auth, policies).await?;
        *broker.listeners.write() = listeners.clone();
        let cluster = Arc::clone(broker.cluster());
        background.push(tokio::spawn(purge_expired_retained(Arc::downgrade(
            &cluster,
        ))));
        let mut http_addr = None;
        if config.http.enabled {
            let (http, addr) = bind("http.listen".into(), config.http.listen, HTTP_BACKLOG).await?;
            http_addr = Some(addr);
            let app = router(
                AdminState {
                    broker: Arc::clone(&broker),
                    ready: Arc::clone(&ready),
                    log,
                },
                Arc::new(Guard::new(&config.http, admin_token)),
            );
            if let Some(tls) = admin_tls {
                let _ = broker.admin_tls.set(Arc::clone(&tls));
                background.push(tokio::spawn(crate::https::serve(
                    http,
                    app,
                    tls,
                    stop_rx.clone(),
                )));
            } else {
                let mut rx = stop_rx.clone();
                background.push(tokio::spawn(async move {
                    let serve = axum::serve(http, app).with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    });
                    if let Err(e) = serve.await {
                        warn!(error = %e, "admin HTTP listener failed");
                    }
                }));
            }
        }
        if config.node.sys_interval_secs > 0 {
            let interval = Duration::from_secs(config.node.sys_interval_secs);
            background.push(tokio::spawn(crate::sys::run(Arc::clone(&broker), interval)));
        }
        #[cfg(unix)]
        background.push(tokio::spawn(reload_on_sighup(Arc::downgrade(&broker))));
        let shards = match config.node.shards {
            0 => None,
            n => {
                let shards = Arc::new(
                    crate::shard::Shards::start(n, config.node.io).map_err(StartError::Shards)?,
                );
                let _ = broker.shards.set(Arc::downgrade(&shards));
                Some(shards)
            }
        };
        let mut accept_tasks = Vec::new();
        let mut listener_addrs = Vec::new();
        for ((socket, addr), l) in sockets.into_iter().zip(listeners) {
            info!(listener = %l.name, kind = l.kind.as_str(), %addr, "listening for MQTT clients");
            if l.allow_anonymous {
                let scope = if addr.ip().is_loopback() {
                    "from this machine only (loopback)"
                } else {
                    "from the network"
                };
                warn!(
                    listener = %l.name,
                    %addr,
                    "anonymous clients are allowed {scope}; set mqtt.allow_anonymous = false (or the listener's allow_anonymous) for production, docs/security.md"
                );
            }
            listener_addrs.push((l.name.clone(), addr));
            accept_tasks.push(crate::listener::spawn_accept(
                socket,
                l,
                Arc::clone(&broker),
                stop_rx.clone(),
                shards.clone(),
            ));
        }
        drop(stop_rx);
        info!(
            mqtt = %mqtt_addr,
            http = ?http_addr,
            https = broker.admin_tls.get().is_some(),
            cluster = cluster.advertise(),
            node_id = %cluster.node_id(),
            data_dir = %config.node.data_dir.display(),
            shards = shards.as_ref().map_or(0, |s| s.len()),
            "roost node started"
        );
        Ok(Node {
            cluster,
            broker,
            mqtt_addr,
            http_addr,
            ready,
            stop,
            accept_tasks,
            listener_addrs,
            background,
            shards,
            _data_lock: data_lock,
        })
    }

    /// The bound MQTT address (useful with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Every MQTT listener's name and bound address (`mqtt` first, then `[[listeners]]` in
    /// order).
    pub fn listener_addrs(&self) -> &[(String, SocketAddr)] {
        &self.listener_addrs
    }

    /// The bound admin HTTP address, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The cluster gRPC address peers use.
    pub fn cluster_addr(&self) -> &str {
        self.cluster.advertise()
    }

    /// What `/readyz` says: the node accepts clients (not draining) and the cluster layer is
    /// ready (`Cluster::readiness`: a voter, a live leader, the session lease held, caught up
    /// with the leader's commit).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.cluster.readiness().is_ok()
    }

    /// Waits (bounded) until [`Node::is_ready`]; false on timeout.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Number of connected MQTT clients.
    pub fn connection_count(&self) -> usize {
        self.broker.connections.load(Ordering::Acquire)
    }

    /// Sockets each connection shard runs, from accept to close (`node.shards`); empty when
    /// connections run on the shared runtime.
    pub fn shard_connections(&self) -> Vec<usize> {
        self.shards.as_ref().map_or_else(Vec::new, |s| s.live())
    }

    /// Graceful stop: not ready, no new connections, v5 clients get DISCONNECT 0x9C with a
    /// Server Reference naming a live peer (0x8B when there is none), wait for every
    /// connection to flush and close (bounded); in a cluster, hand every persistent session to
    /// another node and take this node's routes out (bounded by `cluster.drain_timeout_ms`,
    /// docs/architecture.md "Graceful drain"); then stop the background tasks and, if this node
    /// leads, hand Raft leadership to another voter (bounded by 4 election timeouts) before
    /// Raft stops.
    pub async fn shutdown(self) {
        info!("shutting down");
        let started = tokio::time::Instant::now();
        self.ready.store(false, Ordering::Release);
        self.broker.begin_drain();
        let _ = self.stop.send(true);
        for t in self.accept_tasks {
            let _ = t.await;
        }
        let sent = self.broker.send_clients_away().await;
        let drain_limit = Duration::from_millis(self.broker.config.cluster.drain_timeout_ms);
        let deadline = started + DRAIN_TIMEOUT.min(drain_limit);
        while self.broker.connections.load(Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    remaining = self.broker.connections.load(Ordering::Acquire),
                    "connections still open after drain timeout"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.broker.drain(started + drain_limit, &sent).await;
        for t in self.background {
            t.abort();
        }
        self.broker.close(DRAIN_TIMEOUT).await;
        // Nothing of this node proposes any more: if it leads, another voter takes over now
        // rather than an election timeout after Raft stops.
        let election = Duration::from_millis(self.broker.config.cluster.election_timeout_ms);
        self.cluster
            .hand_off_leadership(HAND_OFF_TIMEOUTS * election)
            .await;
        self.cluster.shutdown().await;
        if let Some(shards) = &self.shards {
            shards.stop().await;
        }
        info!("stopped");
    }
}

/// The listen backlog of the admin HTTP listener: a few operators and scrapers.
const HTTP_BACKLOG: u32 = 128;

/// Binds a listener with a listen backlog of `backlog` (`mqtt.listen_backlog` for MQTT; tokio's
/// `TcpListener::bind` would give 128, which a connect burst overflows: the kernel drops the
/// SYNs beyond it and those clients wait a second for their retransmit). SO_REUSEADDR as
/// `TcpListener::bind` sets it. The error names the setting.
async fn bind(
    key: String,
    addr: SocketAddr,
    backlog: u32,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind {
        key: key.clone(),
        addr,
        source,
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(err)?;
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(backlog).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Warns when the kernel caps `mqtt.listen_backlog` (`net.core.somaxconn`, Linux).
fn warn_if_backlog_capped(backlog: u32) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
        return;
    };
    if let Ok(max) = text.trim().parse::<u32>() {
        if max < backlog {
            warn!(
                listen_backlog = backlog,
                somaxconn = max,
                "the kernel caps mqtt.listen_backlog at net.core.somaxconn; raise the sysctl \
                 for connect bursts"
            );
        }
    }
}

/// Creates the data directory and takes an exclusive lock on it, so two nodes never share one.
fn lock_data_dir(config: &Config) -> Result<File, StartError> {
    let dir = &config.node.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        what: "create node.data_dir",
        path: dir.clone(),
        source,
    })?;
    let path = dir.join("roost.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            what: "open",
            path: path.clone(),
            source,
        })?;
    file.try_lock().map_err(|_| StartError::DataDirLocked {
        dir: dir.clone(),
        lock: path,
    })?;
    Ok(file)
}

/// Starts this node's cluster layer (a cluster of one without seeds) and the broker on it.
/// Routes this node held before a restart are queued for removal: its sessions start empty,
/// apart from the persistent ones the registry restores.
async fn start_broker(
    config: &Arc<Config>,
    mqtt_addr: SocketAddr,
    auth: crate::auth::Auth,
    policies: crate::policy::NodePolicies,
) -> Result<Arc<Broker>, StartError> {
    let c = &config.cluster;
    let mut seeds = Vec::new();
    for s in &c.seeds {
        let (id, addr) = crate::config::parse_seed(s).map_err(StartError::Seed)?;
        seeds.push((NodeId::new(id), addr));
    }
    let cfg = ClusterConfig {
        node_id: NodeId::new(c.node_id),
        listen: c.listen,
        advertise: c.advertise.clone().unwrap_or_default(),
        // What clients can reach (a draining peer names it in a Server Reference), else the
        // bound address.
        mqtt_addr: config
            .mqtt
            .advertise
            .clone()
            .unwrap_or_else(|| mqtt_addr.to_string()),
        seeds,
        data_dir: config.node.data_dir.clone(),
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        election_timeout: Duration::from_millis(c.election_timeout_ms),
        forward_timeout: Duration::from_millis(c.forward_timeout_ms),
        commit_timeout: Duration::from_millis(c.commit_timeout_ms),
        max_packet_size: config.mqtt.max_packet_size,
        session_lease: Duration::from_millis(c.session_lease_ms),
        tls: match (&c.tls_cert, &c.tls_key, &c.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(roost_cluster::ClusterTls {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => None,
        },
    };
    let hooks = Arc::new(NodeHooks::default());
    let cluster = Cluster::start(cfg, Arc::clone(&hooks) as Arc<dyn roost_cluster::LocalNode>)
        .await
        .map_err(Box::new)?;
    let broker = Broker::new(Arc::clone(config), Arc::clone(&cluster), auth, policies);
    hooks.set_broker(&broker);
    // What the log already holds (events applied before the hooks had the broker are not
    // seen by it).
    let replicated = cluster.state().read().policies().clone();
    broker.policies.apply(&replicated);
    if replicated.version == 0 && broker.policies.file.is_some() {
        broker.spawn(seed_policies(Arc::downgrade(&broker)));
    }
    broker.restore_sessions();
    // Before clients connect: routes held from before a restart that no restored session
    // needs are removed, and from now on failed or lost route changes are repaired.
    broker.start_route_repairs();
    broker.start_lease_watch();
    Ok(broker)
}

/// How often the leader looks for retained messages whose expiry ran out.
const RETAINED_PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// On the leader: removes retained messages whose Message Expiry Interval ran out (they are
/// already filtered on read; this frees them). Each removal names the message it removes, so a
/// newer retained message published meanwhile is kept. Ends when the node is dropped.
async fn purge_expired_retained(cluster: std::sync::Weak<Cluster>) {
    let mut tick = tokio::time::interval(RETAINED_PURGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        if !cluster.is_leader() {
            continue;
        }
        let now = crate::broker::unix_millis();
        let expired = cluster.state().read().expired_retained(now, 1_000);
        for (topic, expires_at_unix_ms) in expired {
            let cmd = roost_cluster::types::Command::ExpireRetained {
                topic,
                expires_at_unix_ms,
            };
            if let Err(e) = cluster.propose(cmd).await {
                tracing::debug!(error = %e, "retained purge deferred");
                break;
            }
        }
    }
}

/// Re-reads TLS certificates and the password file on SIGHUP. A file that fails keeps the old
/// one in use and is logged (ERROR: the operator's change did not take).
#[cfg(unix)]
async fn reload_on_sighup(broker: std::sync::Weak<Broker>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: certificates reload only through the admin API");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        info!("SIGHUP: reloading certificates and credentials");
        broker.reload_credentials().await;
    }
}

/// Proposes `auth.policy_file` as the cluster's policies while the cluster has none (a new
/// cluster): retried until it commits, some node's seed commits first, or the node stops.
async fn seed_policies(broker: std::sync::Weak<Broker>) {
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        if b.cluster().state().read().policies().version > 0 {
            return;
        }
        match b.propose_policy_file().await {
            Ok(version) => {
                info!(version, "policy file replicated to the cluster");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "policy file not replicated yet; retrying"),
        }
        drop(b);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backlog reaches the kernel: a listener nobody accepts on queues about `backlog`
    /// completed connections (Linux: `backlog + 1`) and drops the SYNs of the rest, whose
    /// connects then wait for a retransmit.
    #[tokio::test]
    async fn a_listener_queues_its_backlog_and_no_more() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let (listener, addr) = bind("mqtt.listen".into(), addr, 4)
            .await
            .expect("bind on loopback");
        let mut queued = Vec::new();
        for _ in 0..12 {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
                queued.push(s);
            }
        }
        assert!(
            (4..=5).contains(&queued.len()),
            "{} of 12 connects completed against a backlog of 4",
            queued.len()
        );
        drop(listener);
    }
}
