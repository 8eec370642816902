//! Node configuration: the typed settings one Roost node runs with, where they come from, and
//! the bounds they must satisfy before any port is bound (house style, convention 9).
//!
//! ```text
//!   roost.toml ──parse──▶ toml::Table ◀── ROOST_<SECTION>__<KEY> variables (merged, override)
//!                              │
//!                       deserialize (deny_unknown_fields, defaults for the rest)
//!                              │
//!                           Config ◀── CliOverrides (--mqtt, --http, --data-dir, --log-level)
//!                              │
//!                          validate() ──▶ Ok: start telemetry, bind listeners
//!                                     └─▶ Err(ConfigError): one line on stderr, exit 64
//! ```
//!
//! Precedence is file < environment < command line. Every key has a default, so an empty
//! file (or no file) is a working configuration that, like Mosquitto 2, only listens on
//! 127.0.0.1.
//!
//! Who calls it: the `roost` binary, once at start-up ([`Config::load`]), and
//! `roost check-config FILE` ([`Config::from_toml_str`]). Nothing here is async or shared
//! between tasks: the binary hands each subsystem the part of the [`Config`] it needs.
//!
//! Every value is checked twice. Its *type* is checked per key while layering, so an error
//! names the dotted key and the place it came from (`file roost.toml`,
//! `environment ROOST_MQTT__LISTEN`); its *bounds* are checked by [`Config::validate`], whose
//! error names the key and the bad value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// Largest packet MQTT can express: a 1-byte fixed header, a 4-byte Remaining Length and
/// 268,435,455 bytes of remaining length (MQTT 5.0 §2.1.4 / §3.1.2.11.4).
pub const MQTT_MAX_PACKET_SIZE: u32 = 268_435_460;
/// The most connection shards a node runs (`node.shards`).
pub const MAX_SHARDS: usize = 1024;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "ROOST_";

/// Separator between section and key in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of one node. Every section and field has a default, so any subset
/// of keys may be given.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: where the node keeps its state and how it reports about itself.
    pub node: NodeConfig,
    /// `[mqtt]`: the MQTT listener and the limits it enforces on clients.
    pub mqtt: MqttConfig,
    /// `[http]`: the admin HTTP listener (health, readiness, metrics).
    pub http: HttpConfig,
    /// `[log]`: what is logged and how it is formatted.
    pub log: LogConfig,
    /// `[cluster]`: this node's identity in the cluster and how it reaches its peers.
    pub cluster: ClusterSettings,
    /// `[auth]`: password file (and, later, token keys and policies).
    pub auth: AuthConfig,
    /// `[[listeners]]`: MQTT listeners beside `mqtt.listen` (TLS, WebSocket, more TCP).
    pub listeners: Vec<ListenerConfig>,
}

/// `[cluster]`: Raft membership and inter-node traffic (docs/rfcs/0002). A node with no seeds
/// is a cluster of one: its metadata (retained messages, sessions, routes) still goes through
/// its on-disk Raft log, so it survives restarts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster and never reused for another machine's data.
    /// At least 1. Default 1.
    pub node_id: u64,
    /// Take the node id from the host name instead of `node_id`: 1 + the ordinal after the
    /// last `-` of its first label, so the pods of a Kubernetes StatefulSet `roost-0`,
    /// `roost-1`, ... are nodes 1, 2, ... (ids start at 1, ordinals at 0). The host name is
    /// `HOSTNAME` from the environment, else `/proc/sys/kernel/hostname`, read once by
    /// [`Config::load`], which then sets `node_id` and clears this flag (the loaded config is
    /// what the node runs with); a host name without a `-<ordinal>` suffix stops the start
    /// naming this key. Exclusive with `node_id`: `node_id` must keep its default (1), since an
    /// explicit `node_id = 1` cannot be told from the default, it is replaced too. Flag
    /// `--node-id-from-hostname` (which conflicts with `--node-id`). Default false.
    pub node_id_from_hostname: bool,
    /// Address of the cluster gRPC listener (Raft, forwarding, takeover, membership). No
    /// authentication and no encryption until mutual TLS between nodes lands: whoever reaches
    /// it is trusted as a member (it can take over any session), so keep it on a private
    /// network. Default `127.0.0.1:7946`.
    pub listen: SocketAddr,
    /// Address peers use to reach this node, when it differs from `listen` (NAT, `0.0.0.0`):
    /// `HOST:PORT`, where HOST may be a DNS name (`roost-0.roost-headless:7946`); peers resolve
    /// it again on every (re)connect and never pin the address it had. Default: `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Initial members as `ID@HOST:PORT` (this node may be among them; HOST may be a DNS
    /// name, resolved again on every connection). The lowest id among the seeds and this node
    /// initialises the cluster with all of them as voters; a node whose data directory already
    /// holds Raft state ignores seeds and rejoins. A node that is not the lowest and is listed
    /// in the seeds is one of those initial members: it waits for the initialiser (or, when the
    /// cluster already exists, for `roost ctl join`). A node that is not listed asks the
    /// cluster to add it (the `Join` call to a seed, retried with backoff until it is a voter):
    /// how pods beyond the seeds of a StatefulSet join by themselves. Default: none.
    pub seeds: Vec<String>,
    /// Leader heartbeat interval. Milliseconds. Default 200.
    pub heartbeat_ms: u64,
    /// Minimum election timeout (the maximum is twice this); must exceed 2 × heartbeat.
    /// A follower stands for leader (after a pre-vote round) once it has not heard from its
    /// leader for the maximum plus a random part of (maximum − minimum) / 2: with the default
    /// a dead leader is replaced after about 1.0–1.3 s (docs/rfcs/0004). Milliseconds.
    /// Default 500.
    pub election_timeout_ms: u64,
    /// How long a publisher's PUBACK waits for peers to accept a forwarded message, and a
    /// takeover waits for the previous owner to hand the session over. After it the publisher
    /// hears a failure (v5 0x80; v3.1.1: the connection closes) and the wait is counted.
    /// Milliseconds. Default 5000.
    pub forward_timeout_ms: u64,
    /// How long a CONNECT, SUBSCRIBE or retained PUBLISH waits for its metadata change to
    /// commit; after it the client gets 0x88 Server unavailable (CONNACK) or 0x80 (SUBACK,
    /// PUBACK): a node cut off from the quorum answers instead of hanging. Milliseconds.
    /// Default 5000.
    pub commit_timeout_ms: u64,
    /// The session lease: a node serves MQTT clients only while a quorum has confirmed it
    /// within this time. A node cut off from the majority (or paused) for longer disconnects
    /// its clients (v5: DISCONNECT 0x9C Use another server) and refuses CONNECTs (0x88) until
    /// a quorum confirms it again; a node that claims a session whose previous owner cannot be
    /// reached waits this long plus an eighth before its CONNACK, so that two nodes never
    /// serve one client id (docs/architecture.md, "Session lease"). It is renewed every eighth
    /// of it; at least 4 × `election_timeout_ms`, so that an election does not end it.
    /// Milliseconds. Default 4000.
    pub session_lease_ms: u64,
    /// How long a graceful stop (SIGTERM) may take in a cluster: the node stops accepting,
    /// disconnects its clients (v5: DISCONNECT 0x8B), hands every persistent session, with
    /// its queued and in-flight messages, to another node, then removes its routes and exits
    /// (docs/architecture.md, "Graceful drain"). What is not handed on by then is lost with
    /// the process (counted, `roost_drain_sessions_total{outcome="left"}`). Keep it below
    /// the orchestrator's grace period (Kubernetes: `terminationGracePeriodSeconds`, 30 s by
    /// default). Milliseconds. Default 20000.
    pub drain_timeout_ms: u64,
    /// Mutual TLS between nodes (docs/security.md, "Between nodes"): this node's PEM
    /// certificate chain, which must carry the DNS name `roost-node-<node_id>`. With
    /// `tls_key` and `tls_ca`; all three or none. Default: none (plaintext, trusted network).
    pub tls_cert: Option<PathBuf>,
    /// This node's PEM private key (with `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA bundle: a peer without a certificate from it is refused, and a peer may
    /// only speak for the node its certificate names (with `tls_cert`).
    pub tls_ca: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: 1,
            node_id_from_hostname: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            seeds: Vec::new(),
            heartbeat_ms: 200,
            election_timeout_ms: 500,
            forward_timeout_ms: 5000,
            commit_timeout_ms: 5000,
            session_lease_ms: 4000,
            drain_timeout_ms: 20_000,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

/// Parses a seed `ID@HOST:PORT`.
pub fn parse_seed(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} is not of the form ID@HOST:PORT"))?;
    let id: u64 = id
        .parse()
        .map_err(|_| format!("{s:?}: node id {id:?} is not a number"))?;
    if id == 0 {
        return Err(format!("{s:?}: node ids start at 1"));
    }
    if !is_host_port(addr) {
        return Err(format!("{s:?}: {addr:?} is not HOST:PORT"));
    }
    Ok((id, addr.to_owned()))
}

/// Whether `addr` can be handed to an MQTT client as the address of a node (a Server Reference,
/// MQTT 5.0 §4.11): `HOST:PORT` whose host is not the unspecified address (`0.0.0.0`, `::`,
/// what a listener binds, not what a client can connect to) and whose port is not 0.
pub(crate) fn is_client_address(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    is_host_port(addr) && !unspecified && port != "0"
}

/// Whether `addr` is `HOST:PORT` with a non-empty host (an IP address or a DNS name, which is
/// resolved when connecting) and a numeric port.
pub(crate) fn is_host_port(addr: &str) -> bool {
    matches!(addr.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The node id a host name gives with `cluster.node_id_from_hostname`: 1 + the ordinal after
/// the last `-` of its first label (`roost-2` and `roost-2.roost-headless.ns.svc` give 3). The
/// error says what is wrong with the name.
pub fn node_id_from_hostname(hostname: &str) -> Result<u64, String> {
    let name = hostname.trim();
    let label = name.split('.').next().unwrap_or_default();
    let ordinal = label
        .rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!(
                "the host name {name:?} does not end in -<ordinal> (a StatefulSet pod name \
                 such as roost-0): set cluster.node_id instead"
            )
        })?;
    ordinal
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| format!("the ordinal of the host name {name:?} is too large"))
}

/// `[node]`: settings of the node itself rather than of one protocol.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Directory for persistent state (sessions, retained messages, later the cluster log).
    /// Relative paths are relative to the working directory. Must not be empty. Default
    /// `./roost-data`.
    pub data_dir: PathBuf,
    /// Seconds between publications of the `$SYS/...` broker statistics topics; `0` disables
    /// `$SYS` entirely. A bound exists because every publication fans out to every `$SYS`
    /// subscriber. Default 10.
    pub sys_interval_secs: u64,
    /// Connection shards: threads that each run one single-threaded runtime and the
    /// connections handed to it (docs/rfcs/0009-shards.md). `0` (the default) runs connections
    /// on the node's shared work-stealing runtime, which measured faster on the hardware we
    /// have (RFC 0009, "Numbers"). At most [`MAX_SHARDS`].
    pub shards: usize,
    /// How the shards' plain TCP connections read and write (docs/rfcs/0010-io-uring.md):
    /// `epoll` (the default: readiness through tokio's I/O driver) or `io_uring` (completion
    /// through tokio-uring; needs a build with the `io-uring` feature, Linux, and
    /// `node.shards >= 1`).
    pub io: NodeIo,
    /// Whether the process may use transparent huge pages (Linux). `false` (the default)
    /// turns them off for the process at start (`prctl(PR_SET_THP_DISABLE)`): the allocator
    /// asks for them on its regions, and the kernel then backs partly used 2 MiB regions
    /// whole: with 19,000 idle connections that measured about 10 MiB more RSS
    /// (docs/performance.md, "Transparent huge pages").
    pub transparent_huge_pages: bool,
    /// Whether the allocator gives freed memory back to the OS at once, and each runtime
    /// thread (not io_uring shards: no idle hook) collects its heap when it goes idle, at most
    /// once a second (docs/rfcs/0012-idle-allocator-housekeeping.md).
    /// `true` (the default): a node's RSS comes down after a connect storm or a burst of
    /// traffic even if nothing follows; with 19,000 idle connections that measured about
    /// 0.13 KiB less per connection, and no throughput or latency row worse. `false` keeps
    /// mimalloc's own behaviour (freed pages go back 10 ms later, and only when the thread
    /// that freed them allocates again). `MIMALLOC_PURGE_DELAY` in the environment overrides
    /// the delay either way.
    pub release_freed_memory: bool,
}

/// How connections on shards do their I/O (`node.io`, RFC 0010).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeIo {
    /// Readiness: tokio's epoll driver (every transport).
    #[default]
    Epoll,
    /// Completion: io_uring reads and writes for plain TCP connections (no PROXY header);
    /// TLS, WebSocket and PROXY-protocol listeners keep epoll on the same shard threads.
    IoUring,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./roost-data"),
            sys_interval_secs: 10,
            shards: 0,
            io: NodeIo::Epoll,
            transparent_huge_pages: false,
            release_freed_memory: true,
        }
    }
}

/// `[mqtt]`: the MQTT listener and every per-client limit. Each limit bounds the memory or
/// work one client (or all clients together) can make the node spend; several are also
/// announced to v5 clients in CONNACK properties.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Address the MQTT (TCP) listener binds. Default `127.0.0.1:1883`: like Mosquitto 2, a
    /// node without configuration is reachable only from the local machine; set `0.0.0.0:1883`
    /// to serve the network.
    pub listen: SocketAddr,
    /// Address MQTT clients use to reach this node, when it differs from `listen` (`0.0.0.0`,
    /// NAT, Kubernetes: the pod's DNS name, `roost-0.roost-headless.mqtt.svc.cluster.local:1883`):
    /// `HOST:PORT`, HOST an IP address or a DNS name, not `0.0.0.0`/`::`, PORT not 0. Recorded in
    /// the cluster membership as this node's MQTT address (`roost ctl status`), and what a
    /// draining peer names in the Server Reference of the DISCONNECT 0x9C it sends its v5
    /// clients (docs/architecture.md, "Graceful drain"). Default: the bound `listen` address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Whether clients may connect without credentials (no username, no client certificate)
    /// on `mqtt.listen` and on every `[[listeners]]` entry that does not set its own. A client
    /// refused for it gets CONNACK 0x87 Not authorized (v5) / 0x05 (v3.1.1). Default true, for
    /// trying Roost out on loopback: the node logs a warning per listener that allows it. The
    /// sample production config (deploy/roost.toml) sets false. docs/security.md.
    pub allow_anonymous: bool,
    /// Most concurrent client connections on this node. Bounds file descriptors and
    /// per-connection memory; a client beyond it gets CONNACK 0x97 Quota exceeded (v5) or
    /// 0x03 Server unavailable (v3.1.1) and is disconnected. At least 1. Default 100,000.
    pub max_connections: usize,
    /// Largest packet accepted from a client, in bytes (fixed header included). Bounds the
    /// buffer one packet can make us allocate; announced as Maximum Packet Size in a v5
    /// CONNACK, and a larger packet closes the connection with 0x95 Packet too large.
    /// 1..=268,435,460 (the MQTT maximum). Default 1,048,576 (1 MiB).
    pub max_packet_size: u32,
    /// Receive Maximum we announce to v5 clients: how many QoS 1/2 PUBLISHes a client may have
    /// unacknowledged towards us. Bounds the inbound QoS 2 state kept per session; exceeding
    /// it is a protocol error (0x93 Receive Maximum exceeded). 1..=65535. Default 32.
    pub receive_maximum: u16,
    /// Most QoS 1/2 messages in flight from us to one client, before the client's own Receive
    /// Maximum is applied (the smaller of the two wins). Bounds per-session retransmission
    /// state and how far a slow client can fall behind before messages queue. At least 1.
    /// Default 32.
    pub max_inflight: u16,
    /// Most messages queued for one session: the offline queue of a persistent session plus
    /// messages waiting for the in-flight window. Bounds memory a slow or absent client can
    /// pin; when full, [`MqttConfig::queue_drop`] decides which message is dropped (and the
    /// drop is counted). At least 1. Default 1000.
    pub max_queued_messages: usize,
    /// Most payload bytes queued for one session (same queue as `max_queued_messages`; the
    /// first limit reached applies). Not required to be at least `max_packet_size`: a message
    /// larger than this limit is simply never queued. At least 1. Default 16 MiB.
    pub max_queued_bytes: usize,
    /// Which message is dropped when a session queue is full: `oldest` keeps the freshest
    /// data (telemetry), `newest` keeps arrival order intact (commands). Default `oldest`.
    pub queue_drop: QueueDrop,
    /// Most `/`-separated levels in a topic name or filter. Bounds the depth of the
    /// subscription index and the work of matching one publish. At least 1. Default 128.
    pub max_topic_levels: usize,
    /// Longest topic name or filter, in bytes. MQTT strings cannot exceed 65,535 bytes
    /// (§1.5.4); a lower value bounds index memory per subscription. 1..=65535. Default 65535.
    pub max_topic_length: usize,
    /// Longest client identifier accepted, in bytes; longer ones get CONNACK 0x85 Client
    /// Identifier not valid (v5) / 0x02 (v3.1.1). At least 23 because servers must accept
    /// 1..=23 bytes ([MQTT-3.1.3-5]); at most 65535 (an MQTT string). Default 256.
    pub max_client_id_length: usize,
    /// Topic Alias Maximum we announce to v5 clients: how many client-to-server topic aliases
    /// one connection may define. Bounds the per-connection alias table; 0 disables aliases.
    /// Default 64.
    pub topic_alias_maximum: u16,
    /// Keep-alive imposed on every client, in seconds. Absent (the default): the client's
    /// requested keep-alive is used, capped by `max_keep_alive`. Set: v5 clients are told this
    /// value via Server Keep Alive. v3.1.1 has no way to tell a client, so v3.1.1 clients are
    /// held to the keep-alive they asked for (holding them to a shorter one would disconnect
    /// well-behaved clients). Lets an operator detect dead v5 connections on their own
    /// schedule. 1..=`max_keep_alive`; there is no way to
    /// write "absent" except by leaving the key out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_keep_alive: Option<u16>,
    /// Largest keep-alive a client may ask for, in seconds. A client asking more, or 0 (no
    /// keep-alive at all), gets this value via Server Keep Alive (v5). Bounds how long a dead
    /// connection keeps its session and slot. 1..=65535. Default 65535.
    pub max_keep_alive: u16,
    /// Largest Session Expiry Interval accepted, in seconds; larger requests are lowered to it
    /// and v5 clients are told via the CONNACK property. Also the expiry given to v3.1.1
    /// clean-session=0 sessions. Bounds how long an absent client's session and queue stay in
    /// memory. Default `u32::MAX` (4294967295: never expires, no cap).
    pub max_session_expiry_interval: u32,
    /// Whether retained messages are supported (v5 Retain Available). When false, a PUBLISH
    /// with RETAIN=1 is refused with 0x9A Retain not supported. Default true.
    pub retain_available: bool,
    /// Whether subscriptions may use `+` and `#` (v5 Wildcard Subscription Available). When
    /// false, such a SUBSCRIBE gets 0xA2. Default true.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are supported (v5 Shared Subscription
    /// Available). When false, such a SUBSCRIBE gets 0x9E. Default true.
    pub shared_subscriptions: bool,
    /// Whether v5 Subscription Identifiers are supported (v5 Subscription Identifiers
    /// Available). When false, a SUBSCRIBE carrying one gets 0xA1. Default true.
    pub subscription_identifiers: bool,
    /// Highest QoS the node grants (v5 Maximum QoS). Subscriptions are downgraded to it; a v5
    /// PUBLISH above it is refused with 0x9B QoS not supported. 0..=2. Default 2.
    pub max_qos: u8,
    /// Seconds allowed between TCP accept and a complete CONNECT packet; then the socket is
    /// closed. Bounds how long an idle or malicious connection holds a slot. At least 1.
    /// Default 10.
    pub connect_timeout_secs: u64,
    /// Sockets accepted that have not yet sent a complete CONNECT, at most. One more is closed
    /// at accept and counted (`roost_mqtt_connections_rejected_total{reason="pending_limit"}`).
    /// Counted apart from `max_connections` so a client at that limit still hears 0x97 and a
    /// takeover is still admitted; open sockets never exceed `max_connections` plus this.
    /// At least 1. Default 1000.
    pub max_pending_connections: usize,
    /// The listen backlog of every MQTT TCP listener (`mqtt.listen` and the TCP, TLS and
    /// WebSocket `listeners`): connections the kernel completes and queues before the node
    /// accepts them. A connect burst beyond it has its SYNs dropped, and those clients wait
    /// for their retransmit (a second or more). The kernel caps it at `net.core.somaxconn`;
    /// the node warns at start when it does. 1 to 65535. Default 4096.
    pub listen_backlog: u32,
    /// Seconds a connected client may take no bytes from a write before it is disconnected
    /// (`roost_mqtt_disconnects_total{reason="write_timeout"}`): a client that stops reading
    /// frees its connection, and a takeover or kick ends a blocked write at once anyway.
    /// At least 1. Default 30.
    pub write_timeout_secs: u64,
    /// Milliseconds a connection may go without traffic (nothing read, written, queued or
    /// waited for) before its task parks: it frees its read/write loop (about 650 B) and waits
    /// small, on the socket, its wake-up and its keep-alive only, until the next packet,
    /// delivery or kick (docs/rfcs/0011). A parked connection behaves exactly as an active
    /// one; waking costs one allocation. Right after the CONNACK the first check comes after
    /// 100 ms (or this, if less), doubling up to this: a client quiet after its handshake
    /// parks within a few hundred milliseconds. 0: never park. Default 1000.
    pub park_after_ms: u64,
    /// Subscriptions one session may hold (each is indexed, routed and, for a persistent
    /// session, replicated). A SUBSCRIBE entry for a new filter beyond it gets 0x97 Quota
    /// exceeded (v3.1.1: 0x80). At least 1. Default 10000.
    pub max_subscriptions_per_client: usize,
    /// Retained messages the cluster holds, at most (checked by the node a retained PUBLISH
    /// arrives at, against its view of the replicated store). A retained QoS 1/2 PUBLISH for
    /// a new topic beyond it is refused: v5 0x97 Quota exceeded, v3.1.1 closed
    /// unacknowledged; QoS 0 is delivered but not retained. Counted as
    /// `roost_mqtt_publish_dropped_total{reason="retain_quota"}`. At least 1. Default 1000000.
    pub max_retained_messages: usize,
    /// Payload bytes of all retained messages, at most (as `max_retained_messages`).
    /// At least `max_packet_size`. Default 1073741824 (1 GiB).
    pub max_retained_bytes: usize,
    /// Bytes all not-yet-CONNECTed sockets together may buffer while a CONNECT arrives (a
    /// CONNECT may be up to `max_packet_size`). A socket whose partial CONNECT would take the
    /// total past it is closed and counted (`reason="pending_bytes"`). At least
    /// `max_packet_size` and 65536. Default 67108864 (64 MiB).
    pub pending_connect_bytes: usize,
    /// How long a publisher's connection waits for a connected subscriber whose queue is
    /// backing up (half of `max_queued_messages`) to drain, before it reads more from its
    /// socket. This is how a publisher faster than its subscribers is slowed down instead of
    /// having its QoS 1/2 messages dropped. After the wait the publisher goes on, and what no
    /// longer fits is dropped and counted. 0 disables waiting (drop at once). Milliseconds.
    pub backpressure_timeout_ms: u64,
    /// PUBLISH packets one connection may send per second, on average over
    /// `rate_burst_secs`. A connection over it is disconnected with 0x96 Message rate too high
    /// (v3.1.1: closed); the PUBLISH that passed it is neither routed nor acknowledged (the
    /// client sends it again after reconnecting), counted in
    /// `roost_mqtt_rate_limited_total{limit="messages"}`. 0: no limit. Default 0.
    pub max_publish_rate: u64,
    /// Payload bytes of PUBLISH one connection may send per second, as `max_publish_rate`
    /// (`limit="bytes"`). 0: no limit. Default 0.
    pub max_publish_bytes_rate: u64,
    /// How many seconds' worth of `max_publish_rate`, `max_publish_bytes_rate` and a listener's
    /// `max_connect_rate` may come at once (the token buckets' size). 1 to 3600. Default 5.
    pub rate_burst_secs: u64,
}

impl MqttConfig {
    /// What the node offers its clients, for the core's CONNECT negotiation and packet checks.
    pub(crate) fn server_policy(&self) -> roost_core::connect::ServerPolicy {
        roost_core::connect::ServerPolicy {
            auth_methods: Vec::new(),
            max_client_id_length: self.max_client_id_length,
            max_qos: roost_codec::QoS::from_u8(self.max_qos)
                .unwrap_or(roost_codec::QoS::ExactlyOnce),
            retain_available: self.retain_available,
            wildcard_subscriptions: self.wildcard_subscriptions,
            subscription_identifiers: self.subscription_identifiers,
            shared_subscriptions: self.shared_subscriptions,
            max_packet_size: self.max_packet_size,
            receive_maximum: self.receive_maximum,
            topic_alias_maximum: self.topic_alias_maximum,
            max_keep_alive: self.max_keep_alive,
            server_keep_alive: self.server_keep_alive,
            max_session_expiry_interval: self.max_session_expiry_interval,
            max_subscriptions: self.max_subscriptions_per_client,
            topic: roost_core::topic::TopicLimits {
                max_levels: self.max_topic_levels,
                max_length: self.max_topic_length,
            },
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            advertise: None,
            allow_anonymous: true,
            max_connections: 100_000,
            max_packet_size: 1_048_576,
            receive_maximum: 32,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_drop: QueueDrop::Oldest,
            max_topic_levels: 128,
            max_topic_length: 65_535,
            max_client_id_length: 256,
            topic_alias_maximum: 64,
            server_keep_alive: None,
            max_keep_alive: 65_535,
            max_session_expiry_interval: u32::MAX,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_qos: 2,
            connect_timeout_secs: 10,
            max_pending_connections: 1000,
            listen_backlog: 4096,
            write_timeout_secs: 30,
            park_after_ms: 1000,
            max_subscriptions_per_client: 10_000,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            pending_connect_bytes: 64 * 1024 * 1024,
            backpressure_timeout_ms: 5_000,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            rate_burst_secs: 5,
        }
    }
}

/// Which message a full session queue gives up (`mqtt.queue_drop`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueDrop {
    /// Drop the oldest queued message to make room for the new one.
    #[default]
    Oldest,
    /// Drop the new message and keep the queue as it is.
    Newest,
}

/// `[http]`: the admin HTTP listener (health, readiness, Prometheus metrics, admin API).
///
/// Who may use it (the checks themselves are in the node's `http` module):
///
/// - `/healthz` and `/readyz` are always open: probes (kubelet, load balancers) carry no secret
///   and choose their own `Host`, and the answer is one bit.
/// - Every other path must name this node in `Host` (an IP literal, `localhost`, or a name in
///   [`HttpConfig::allowed_hosts`]), else 403: a web page that rebinds its own DNS name to
///   127.0.0.1 cannot reach the API through the operator's browser.
/// - With a token configured ([`HttpConfig::token`] or [`HttpConfig::token_file`]), every
///   admin path, and `/metrics` when [`HttpConfig::metrics_require_token`], needs
///   `Authorization: Bearer <token>`, else 401.
///
/// A listener on a non-loopback address must have a token: [`Config::validate`] refuses it
/// otherwise, naming `http.token_file`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Whether the admin HTTP listener runs at all. Default true.
    pub enabled: bool,
    /// Address the admin HTTP listener binds. Default `127.0.0.1:8080`. Any address that is
    /// not loopback requires a token (`token_file` or `token`). Must not be the MQTT address.
    pub listen: SocketAddr,
    /// File holding the admin API bearer token (surrounding whitespace, such as the newline
    /// `echo` adds, is ignored). Read once at start; a missing, unreadable or empty file
    /// stops the start naming this key. Use the same token on every node so that `roost ctl`
    /// works against any member. Exclusive with `token`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The admin API bearer token itself, for environments that hand secrets over as variables
    /// (`ROOST_HTTP__TOKEN`). Prefer `token_file` in a file on disk. At least
    /// [`MIN_TOKEN_LENGTH`] characters, visible ASCII without spaces. Never printed:
    /// [`Config::to_toml_string`] leaves it out and `Debug` shows `<redacted>`. Exclusive with
    /// `token_file`. Default: none.
    #[serde(skip_serializing)]
    pub token: Option<AdminToken>,
    /// Host names, besides IP literals and `localhost`, that clients may put in the `Host`
    /// header (no port; case-insensitive). An entry starting with `.` allows that domain and
    /// every name under it (`.roost.svc.cluster.local`). Needed when the API is reached by a
    /// DNS name, e.g. `roost ctl --http roost-0.roost:8080`. Default: none.
    pub allowed_hosts: Vec<String>,
    /// Whether `/metrics` needs the token too (when one is configured). Default false: metrics
    /// hold counts, not client data, and most Prometheus set-ups scrape without credentials;
    /// set it when even counts must stay private (Prometheus: `authorization.credentials_file`).
    pub metrics_require_token: bool,
    /// PEM certificate chain (leaf first) for serving the admin API over HTTPS (TLS 1.3 and
    /// 1.2, rustls with the ring provider, ALPN `http/1.1`): with it the listener speaks
    /// HTTPS only. With `tls_key`; both or neither. Read at start (a file that does not load
    /// stops the start naming this key) and again on SIGHUP or `POST /api/v1/reload`.
    /// Default: none (plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
            token: None,
            allowed_hosts: Vec::new(),
            metrics_require_token: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Shortest admin token accepted: 16 characters. `openssl rand -hex 32` gives 64.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// The admin API bearer token. Its `Debug` does not show it, so a logged [`Config`] leaks
/// nothing; compare it with [`AdminToken::matches`], which takes the same time however many
/// leading characters of a guess are right.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    /// Checks a token's shape: at least [`MIN_TOKEN_LENGTH`] characters, all visible ASCII
    /// (it travels in an HTTP header). The error says what is wrong, never the token.
    pub fn new(token: impl Into<String>) -> Result<AdminToken, String> {
        let token = token.into();
        if token.len() < MIN_TOKEN_LENGTH {
            return Err(format!(
                "the token must be at least {MIN_TOKEN_LENGTH} characters long (got {})",
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be visible ASCII without spaces (it travels in an HTTP header)"
                    .to_owned(),
            );
        }
        Ok(AdminToken(token))
    }

    /// The token, for a client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. The time taken depends on the length of this token
    /// only, not on where `presented` first differs, so the token cannot be guessed one
    /// character at a time by timing answers.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = u8::from(expected.len() != presented.len());
        for (i, e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// `log.level` when nothing sets it.
pub const DEFAULT_LOG_LEVEL: &str = "info,openraft=warn";

/// `[log]`: logging filter and format.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` `EnvFilter` directive list such as `info` or `info,roost_node=debug`.
    /// Validated by parsing it, and additionally every directive without `=` must be a level
    /// (`trace`, `debug`, `info`, `warn`, `error`, `off`): `EnvFilter` would accept a typo
    /// like `inof` as a target name and silently log almost nothing. Default
    /// `info,openraft=warn`: Roost's own events at info, and from the Raft library only what
    /// needs attention (its info level prints engine internals at every start); raise it with
    /// `info,openraft=info` when debugging consensus.
    pub level: String,
    /// Output format. Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format (`log.format`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Values given on the command line; they override the file and the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliOverrides {
    /// Overrides `mqtt.listen`.
    pub mqtt: Option<SocketAddr>,
    /// Overrides `http.listen`.
    pub http: Option<SocketAddr>,
    /// Overrides `node.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// Overrides `log.level`.
    pub log_level: Option<String>,
    /// Overrides `cluster.node_id`.
    pub node_id: Option<u64>,
    /// Sets `cluster.node_id_from_hostname` when true (`--node-id-from-hostname`).
    pub node_id_from_hostname: bool,
    /// Overrides `cluster.listen`.
    pub cluster: Option<SocketAddr>,
    /// Replaces `cluster.seeds` when not empty.
    pub seeds: Vec<String>,
    /// Adds a TLS listener (`--mqtts`) with the `--tls-*` files.
    pub mqtts: Option<SocketAddr>,
    /// Adds a WebSocket listener (`--ws`), path `/mqtt`.
    pub ws: Option<SocketAddr>,
    /// Adds a secure WebSocket listener (`--wss`) with the `--tls-*` files.
    pub wss: Option<SocketAddr>,
    /// Adds a QUIC listener (`--quic`, UDP) with the `--tls-*` files.
    pub quic: Option<SocketAddr>,
    /// Certificate chain of the listeners added by `--mqtts`, `--wss` and `--quic`.
    pub tls_cert: Option<PathBuf>,
    /// Private key of the listeners added by `--mqtts` and `--wss`.
    pub tls_key: Option<PathBuf>,
    /// CA bundle for client certificates on the listeners added by `--mqtts` and `--wss`
    /// (certificates are then required).
    pub tls_client_ca: Option<PathBuf>,
    /// Overrides `auth.password_file`.
    pub passwords: Option<PathBuf>,
}

/// Why a configuration could not be loaded. Each variant displays as one line, suitable to
/// print before exiting with code 64.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// A value is not valid TOML, names an unknown key, or has the wrong type.
    #[error("invalid config in {origin}: {message}")]
    Parse {
        /// Where the value came from: `file roost.toml`, `environment ROOST_MQTT__LISTEN`,
        /// or `TOML input` (for [`Config::from_toml_str`]).
        origin: String,
        /// What is wrong, starting with the dotted key when one is known, e.g.
        /// ``mqtt.lisen: unknown field `lisen`, expected one of ...``.
        message: String,
    },
    /// A value has the right type but is outside its bounds.
    #[error("invalid config: {key} = {value}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `mqtt.max_packet_size` or `listeners[0].cert`.
        key: String,
        /// The bad value, written as in TOML (strings quoted).
        value: String,
        /// The bound it breaks.
        reason: String,
    },
}

mod listeners;
mod load;
#[cfg(test)]
mod tests;

pub use listeners::{AuthConfig, CertIdentity, ClientAuthMode, ListenerConfig, ListenerKind};
use load::invalid;
pub(crate) use load::validate_log_level;
