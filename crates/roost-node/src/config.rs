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
    /// Address of the cluster gRPC listener (Raft, forwarding, takeover). No authentication:
    /// keep it on a private network. Default `127.0.0.1:7946`.
    pub listen: SocketAddr,
    /// Address peers use to reach this node, when it differs from `listen` (NAT, `0.0.0.0`).
    /// Default: `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Initial members as `ID@HOST:PORT` (this node may be among them). The lowest id among
    /// the seeds and this node initialises the cluster; a node whose data directory already
    /// holds Raft state ignores seeds and rejoins. A node started with seeds that do not make
    /// it the lowest waits until a member adds it (`roost ctl join`). Default: none.
    pub seeds: Vec<String>,
    /// Leader heartbeat interval. Milliseconds. Default 200.
    pub heartbeat_ms: u64,
    /// Minimum election timeout (the maximum is twice this); must exceed 2 × heartbeat.
    /// Bounds how long a leader loss goes unnoticed. Milliseconds. Default 1000.
    pub election_timeout_ms: u64,
    /// How long a publisher's PUBACK waits for peers to accept a forwarded message, and a
    /// takeover waits for the previous owner to hand the session over. After it the publisher
    /// is acknowledged anyway (the peer gets the message when it reconnects) and the wait is
    /// counted. Milliseconds. Default 5000.
    pub forward_timeout_ms: u64,
    /// How long a CONNECT, SUBSCRIBE or retained PUBLISH waits for its metadata change to
    /// commit; after it the client gets 0x88 Server unavailable (CONNACK) or 0x80 (SUBACK,
    /// PUBACK): a node cut off from the quorum answers instead of hanging. Milliseconds.
    /// Default 5000.
    pub commit_timeout_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            seeds: Vec::new(),
            heartbeat_ms: 200,
            election_timeout_ms: 1000,
            forward_timeout_ms: 5000,
            commit_timeout_ms: 5000,
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
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(format!("{s:?}: {addr:?} is not HOST:PORT")),
    }
    Ok((id, addr.to_owned()))
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./roost-data"),
            sys_interval_secs: 10,
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
    /// Whether clients may connect without credentials. Default true, because authentication
    /// is not implemented yet; when it is, a client refused here gets CONNACK 0x87 Not
    /// authorized (v5) / 0x05 (v3.1.1).
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
    /// How long a publisher's connection waits for a connected subscriber whose queue is
    /// backing up (half of `max_queued_messages`) to drain, before it reads more from its
    /// socket. This is how a publisher faster than its subscribers is slowed down instead of
    /// having its QoS 1/2 messages dropped. After the wait the publisher goes on, and what no
    /// longer fits is dropped and counted. 0 disables waiting (drop at once). Milliseconds.
    pub backpressure_timeout_ms: u64,
}

impl MqttConfig {
    /// What the node offers its clients, for the core's CONNECT negotiation and packet checks.
    pub(crate) fn server_policy(&self) -> roost_core::connect::ServerPolicy {
        roost_core::connect::ServerPolicy {
            allow_anonymous: self.allow_anonymous,
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
            backpressure_timeout_ms: 5_000,
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Whether the admin HTTP listener runs at all. Default true.
    pub enabled: bool,
    /// Address the admin HTTP listener binds. Default `127.0.0.1:8080`, because the admin API
    /// is unauthenticated: expose it only on a trusted network. Must not be the MQTT address.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// `[log]`: logging filter and format.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` `EnvFilter` directive list such as `info` or `info,roost_node=debug`.
    /// Validated by parsing it, and additionally every directive without `=` must be a level
    /// (`trace`, `debug`, `info`, `warn`, `error`, `off`): `EnvFilter` would accept a typo
    /// like `inof` as a target name and silently log almost nothing. Default `info`.
    pub level: String,
    /// Output format. Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
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
    /// Overrides `cluster.listen`.
    pub cluster: Option<SocketAddr>,
    /// Replaces `cluster.seeds` when not empty.
    pub seeds: Vec<String>,
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
        /// The dotted key, e.g. `mqtt.max_packet_size`.
        key: &'static str,
        /// The bad value, written as in TOML (strings quoted).
        value: String,
        /// The bound it breaks.
        reason: String,
    },
}

impl Config {
    /// Builds the configuration from the file (if any), then the `ROOST_<SECTION>__<KEY>`
    /// variables in `env`, then `cli`, and validates it. Precedence: file < environment < CLI.
    ///
    /// `env` is passed in so tests need not touch the process environment; the binary passes
    /// `std::env::vars()`. Variables starting with `ROOST_` but without `__` are ignored
    /// (they belong to other tools, e.g. `ROOST_BIN`); those with `__` must name a known
    /// key. A variable's value is read as a TOML value when that fits the key (`5000`,
    /// `false`) and as a plain string otherwise (`0.0.0.0:1883`, `debug`), so strings never
    /// need TOML quotes.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                parse_table(&text, &format!("file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        merge_env(&mut table, env)?;
        let mut config = deserialize_table(table, "merged configuration")?;
        cli.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document on its own (no environment, no CLI) and validates it. Used by
    /// `roost check-config FILE`; errors say `TOML input` as their origin.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let origin = "TOML input";
        let table = parse_table(s, origin)?;
        let config = deserialize_table(table, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every bound documented on the fields, plus that the MQTT and HTTP listeners do
    /// not collide. Returns the first violation, naming the dotted key and the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        if node.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "node.data_dir",
                format!("{:?}", node.data_dir.display().to_string()),
                "must not be empty",
            ));
        }

        let m = &self.mqtt;
        at_least("mqtt.max_connections", m.max_connections, 1)?;
        between(
            "mqtt.max_packet_size",
            m.max_packet_size,
            1,
            MQTT_MAX_PACKET_SIZE,
        )?;
        at_least("mqtt.receive_maximum", m.receive_maximum, 1)?;
        at_least("mqtt.max_inflight", m.max_inflight, 1)?;
        at_least("mqtt.max_queued_messages", m.max_queued_messages, 1)?;
        at_least("mqtt.max_queued_bytes", m.max_queued_bytes, 1)?;
        at_least("mqtt.max_topic_levels", m.max_topic_levels, 1)?;
        between("mqtt.max_topic_length", m.max_topic_length, 1, 65_535)?;
        between(
            "mqtt.max_client_id_length",
            m.max_client_id_length,
            23,
            65_535,
        )?;
        at_least("mqtt.max_keep_alive", m.max_keep_alive, 1)?;
        if let Some(keep_alive) = m.server_keep_alive {
            if keep_alive == 0 || keep_alive > m.max_keep_alive {
                return Err(invalid(
                    "mqtt.server_keep_alive",
                    keep_alive.to_string(),
                    format!(
                        "must be between 1 and mqtt.max_keep_alive ({})",
                        m.max_keep_alive
                    ),
                ));
            }
        }
        between("mqtt.max_qos", m.max_qos, 0, 2)?;
        at_least("mqtt.connect_timeout_secs", m.connect_timeout_secs, 1)?;

        if self.http.enabled && listeners_collide(self.http.listen, m.listen) {
            return Err(invalid(
                "http.listen",
                format!("\"{}\"", self.http.listen),
                format!(
                    "must not use the same port as mqtt.listen (\"{}\")",
                    m.listen
                ),
            ));
        }

        let c = &self.cluster;
        at_least("cluster.node_id", c.node_id, 1)?;
        for seed in &c.seeds {
            if let Err(reason) = parse_seed(seed) {
                return Err(invalid("cluster.seeds", format!("{seed:?}"), reason));
            }
        }
        at_least("cluster.heartbeat_ms", c.heartbeat_ms, 1)?;
        if c.election_timeout_ms <= 2 * c.heartbeat_ms {
            return Err(invalid(
                "cluster.election_timeout_ms",
                c.election_timeout_ms.to_string(),
                format!(
                    "must be more than twice cluster.heartbeat_ms ({})",
                    c.heartbeat_ms
                ),
            ));
        }
        at_least("cluster.forward_timeout_ms", c.forward_timeout_ms, 1)?;
        at_least("cluster.commit_timeout_ms", c.commit_timeout_ms, 1)?;
        if listeners_collide(c.listen, m.listen)
            || (self.http.enabled && listeners_collide(c.listen, self.http.listen))
        {
            return Err(invalid(
                "cluster.listen",
                format!("\"{}\"", c.listen),
                "must not use the same port as mqtt.listen or http.listen",
            ));
        }

        validate_log_level(&self.log.level)
    }

    /// The effective configuration as a TOML document (every key, defaults included), for
    /// printing what a node runs with. Parsing it back gives an equal [`Config`].
    pub fn to_toml_string(&self) -> String {
        // Serializing plain structs of numbers, strings and addresses cannot fail, except
        // for a `data_dir` that is not UTF-8; say so in the output rather than panic.
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }
}

impl CliOverrides {
    fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.mqtt {
            config.mqtt.listen = addr;
        }
        if let Some(addr) = self.http {
            config.http.listen = addr;
        }
        if let Some(dir) = &self.data_dir {
            config.node.data_dir = dir.clone();
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(id) = self.node_id {
            config.cluster.node_id = id;
        }
        if let Some(addr) = self.cluster {
            config.cluster.listen = addr;
        }
        if !self.seeds.is_empty() {
            config.cluster.seeds.clone_from(&self.seeds);
        }
    }
}

/// Parses a TOML document into a table and type-checks every entry, so that an error names
/// the dotted key and, for syntax errors, the line and column.
fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    let table = text.parse::<toml::Table>().map_err(|e| {
        let message = match e.span() {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!("line {line}, column {column}: {}", one_line(e.message()))
            }
            None => one_line(e.message()),
        };
        parse_error(origin, message)
    })?;
    for (section, value) in &table {
        match value {
            toml::Value::Table(entries) => {
                for (key, value) in entries {
                    check_entry(section, Some(key), value.clone())
                        .map_err(|message| parse_error(origin, message))?;
                }
                // An empty `[section]` is legal; check that the section itself exists.
                if entries.is_empty() {
                    check_entry(section, None, value.clone())
                        .map_err(|message| parse_error(origin, message))?;
                }
            }
            _ => check_entry(section, None, value.clone())
                .map_err(|message| parse_error(origin, message))?,
        }
    }
    Ok(table)
}

/// Type-checks one value by deserializing a [`Config`] that contains only it. Returns the
/// error message prefixed with the dotted key.
fn check_entry(section: &str, key: Option<&str>, value: toml::Value) -> Result<(), String> {
    // Show scalar values the way they were written (`"localhost"`, `-1`); tables are too long.
    let shown = match &value {
        toml::Value::Table(_) | toml::Value::Array(_) => String::new(),
        scalar => format!(" = {scalar}"),
    };
    let mut outer = toml::Table::new();
    let dotted = match key {
        Some(key) => {
            let mut inner = toml::Table::new();
            inner.insert(key.to_owned(), value);
            outer.insert(section.to_owned(), toml::Value::Table(inner));
            format!("{section}.{key}")
        }
        None => {
            outer.insert(section.to_owned(), value);
            section.to_owned()
        }
    };
    match outer.try_into::<Config>() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{dotted}{shown}: {}", one_line(e.message()))),
    }
}

/// Merges `ROOST_<SECTION>__<KEY>` variables into `table`, in name order so that the error
/// reported for several bad variables does not depend on the order of the environment.
fn merge_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
        })
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let origin = format!("environment {name}");
        let rest = name.strip_prefix(ENV_PREFIX).unwrap_or_default();
        let Some((section, key)) = rest.split_once(ENV_SEPARATOR) else {
            continue;
        };
        if section.is_empty() || key.is_empty() {
            return Err(parse_error(
                &origin,
                format!("expected a name of the form {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>"),
            ));
        }
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let value = env_value(&section, &key, &raw).map_err(|m| parse_error(&origin, m))?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(entries) => {
                entries.insert(key, value);
            }
            // Cannot happen: the file's sections were type-checked as tables.
            _ => {
                return Err(parse_error(
                    &origin,
                    format!("{section}: is not a table in the file"),
                ))
            }
        }
    }
    Ok(())
}

/// Chooses how to read an environment value: as a TOML value when it parses as one and fits
/// the key (`5000`, `true`), else as a string (`0.0.0.0:1883`, `debug`, or `123` for a
/// string key). If neither fits, the error is the one for the reading the user most likely
/// meant: the TOML one when the value parsed as TOML.
fn env_value(section: &str, key: &str, raw: &str) -> Result<toml::Value, String> {
    let as_string = toml::Value::String(raw.to_owned());
    match toml::Value::deserialize(toml::de::ValueDeserializer::new(raw)) {
        Ok(parsed) => match check_entry(section, Some(key), parsed.clone()) {
            Ok(()) => Ok(parsed),
            Err(parsed_error) => match check_entry(section, Some(key), as_string.clone()) {
                Ok(()) => Ok(as_string),
                Err(_) => Err(parsed_error),
            },
        },
        Err(_) => check_entry(section, Some(key), as_string.clone()).map(|()| as_string),
    }
}

fn deserialize_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
    table
        .try_into::<Config>()
        .map_err(|e| parse_error(origin, one_line(e.message())))
}

fn parse_error(origin: &str, message: String) -> ConfigError {
    ConfigError::Parse {
        origin: origin.to_owned(),
        message,
    }
}

fn invalid(key: &'static str, value: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value,
        reason: reason.into(),
    }
}

fn at_least<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(
            key,
            value.to_string(),
            format!("must be at least {min}"),
        ));
    }
    Ok(())
}

fn between<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            value.to_string(),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Two listeners collide when they would bind the same port on overlapping addresses. Port 0
/// (an ephemeral port, used by tests) never collides.
fn listeners_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks log filter directives (also used by the runtime log-level API).
pub(crate) fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| invalid("log.level", format!("{level:?}"), reason);
    if level.trim().is_empty() {
        return Err(bad("must not be empty".to_owned()));
    }
    if let Err(e) = EnvFilter::builder().parse(level) {
        return Err(bad(format!(
            "not a valid tracing filter: {}",
            one_line(&e.to_string())
        )));
    }
    for directive in level.split(',') {
        let directive = directive.trim();
        if directive.contains('=') || directive.contains('[') {
            continue;
        }
        if directive.parse::<LevelFilter>().is_err() {
            return Err(bad(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                 to filter a target write `{directive}=<level>`"
            )));
        }
    }
    Ok(())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Error messages from toml/serde are usually one line; make sure, so that every
/// [`ConfigError`] prints as exactly one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SAMPLE: &str = include_str!("../../../deploy/roost.toml");

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(
        file: &str,
        vars: &[(&str, &str)],
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "roost-config-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roost.toml");
        std::fs::write(&path, file).unwrap();
        let result = Config::load(Some(&path), env(vars), cli);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn err_string(result: Result<Config, ConfigError>) -> String {
        let e = result.unwrap_err();
        let s = e.to_string();
        assert!(!s.contains('\n'), "error spans several lines: {s}");
        s
    }

    #[test]
    fn defaults_validate() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(
            config.mqtt.listen,
            "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.mqtt.server_keep_alive, None);
        assert_eq!(Config::from_toml_str("").unwrap(), config);
        assert_eq!(
            Config::load(None, Vec::new(), &CliOverrides::default()).unwrap(),
            config
        );
    }

    #[test]
    fn sample_parses_and_validates() {
        let config = Config::from_toml_str(SAMPLE).unwrap();
        assert_eq!(
            config.mqtt.listen,
            "0.0.0.0:1883".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            config.http.listen,
            "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/roost"));
        assert!(config.mqtt.allow_anonymous);
    }

    #[test]
    fn sample_sets_every_key() {
        // The sample documents every key: it must mention each one the effective config has.
        let mut full = Config::default();
        full.mqtt.server_keep_alive = Some(60);
        let table: toml::Table = toml::from_str(&full.to_toml_string()).unwrap();
        for (section, entries) in &table {
            assert!(SAMPLE.contains(&format!("[{section}]")), "[{section}]");
            for key in entries.as_table().unwrap().keys() {
                assert!(
                    SAMPLE.contains(&format!("\n{key} ="))
                        || SAMPLE.contains(&format!("# {key} =")),
                    "sample does not document {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn to_toml_string_round_trips() {
        let mut config = Config::from_toml_str(SAMPLE).unwrap();
        config.mqtt.server_keep_alive = Some(30);
        config.mqtt.queue_drop = QueueDrop::Newest;
        config.log.format = LogFormat::Json;
        let text = config.to_toml_string();
        assert_eq!(Config::from_toml_str(&text).unwrap(), config);
        let defaults = Config::default().to_toml_string();
        assert!(!defaults.contains("server_keep_alive"));
        assert!(defaults.contains("queue_drop = \"oldest\""));
    }

    #[test]
    fn unknown_key_in_file_names_the_key() {
        let s = err_string(load_str(
            "[mqtt]\nlisen = \"0.0.0.0:1883\"\n",
            &[],
            &CliOverrides::default(),
        ));
        assert!(s.starts_with("invalid config in file "), "{s}");
        assert!(
            s.contains("roost.toml: mqtt.lisen = \"0.0.0.0:1883\": unknown field `lisen`"),
            "{s}"
        );

        let s = err_string(Config::from_toml_str("[mqt]\nlisten = \"0.0.0.0:1883\"\n"));
        assert!(
            s.starts_with(
                "invalid config in TOML input: mqt.listen = \"0.0.0.0:1883\": unknown field `mqt`"
            ),
            "{s}"
        );
        let s = err_string(Config::from_toml_str("[mqt]\n"));
        assert!(s.contains("mqt: unknown field `mqt`"), "{s}");
        let s = err_string(Config::from_toml_str("verbose = true\n"));
        assert!(s.contains("verbose = true: unknown field `verbose`"), "{s}");
    }

    #[test]
    fn wrong_type_in_file_names_the_key() {
        let s = err_string(Config::from_toml_str(
            "[mqtt]\nmax_connections = \"many\"\n",
        ));
        assert!(
            s.starts_with(
                "invalid config in TOML input: mqtt.max_connections = \"many\": invalid type"
            ),
            "{s}"
        );
        let s = err_string(Config::from_toml_str("[mqtt]\nreceive_maximum = 70000\n"));
        assert!(s.contains("mqtt.receive_maximum = 70000: "), "{s}");
        let s = err_string(Config::from_toml_str("[mqtt]\nlisten = \"localhost\"\n"));
        assert!(s.contains("mqtt.listen = \"localhost\": "), "{s}");
        let s = err_string(Config::from_toml_str("[mqtt]\nqueue_drop = \"random\"\n"));
        assert!(
            s.contains("mqtt.queue_drop = \"random\": unknown variant `random`"),
            "{s}"
        );
        let s = err_string(Config::from_toml_str("mqtt = 5\n"));
        assert!(s.contains("mqtt = 5: invalid type"), "{s}");
    }

    #[test]
    fn syntax_error_gives_line_and_column() {
        let s = err_string(Config::from_toml_str("[mqtt]\nmax_connections = = 5\n"));
        assert!(
            s.starts_with("invalid config in TOML input: line 2, column "),
            "{s}"
        );
    }

    #[test]
    fn bad_value_per_bound_names_the_key() {
        // (TOML to add under its section, dotted key, expected Display).
        let cases: &[(&str, &str)] = &[
            (
                "[node]\ndata_dir = \"\"",
                "invalid config: node.data_dir = \"\": must not be empty",
            ),
            (
                "[mqtt]\nmax_connections = 0",
                "invalid config: mqtt.max_connections = 0: must be at least 1",
            ),
            (
                "[mqtt]\nmax_packet_size = 0",
                "invalid config: mqtt.max_packet_size = 0: must be between 1 and 268435460",
            ),
            (
                "[mqtt]\nmax_packet_size = 268435461",
                "invalid config: mqtt.max_packet_size = 268435461: must be between 1 and 268435460",
            ),
            (
                "[mqtt]\nreceive_maximum = 0",
                "invalid config: mqtt.receive_maximum = 0: must be at least 1",
            ),
            (
                "[mqtt]\nmax_inflight = 0",
                "invalid config: mqtt.max_inflight = 0: must be at least 1",
            ),
            (
                "[mqtt]\nmax_queued_messages = 0",
                "invalid config: mqtt.max_queued_messages = 0: must be at least 1",
            ),
            (
                "[mqtt]\nmax_queued_bytes = 0",
                "invalid config: mqtt.max_queued_bytes = 0: must be at least 1",
            ),
            (
                "[mqtt]\nmax_topic_levels = 0",
                "invalid config: mqtt.max_topic_levels = 0: must be at least 1",
            ),
            (
                "[mqtt]\nmax_topic_length = 0",
                "invalid config: mqtt.max_topic_length = 0: must be between 1 and 65535",
            ),
            (
                "[mqtt]\nmax_topic_length = 65536",
                "invalid config: mqtt.max_topic_length = 65536: must be between 1 and 65535",
            ),
            (
                "[mqtt]\nmax_client_id_length = 22",
                "invalid config: mqtt.max_client_id_length = 22: must be between 23 and 65535",
            ),
            (
                "[mqtt]\nmax_client_id_length = 65536",
                "invalid config: mqtt.max_client_id_length = 65536: must be between 23 and 65535",
            ),
            (
                "[mqtt]\nmax_keep_alive = 0",
                "invalid config: mqtt.max_keep_alive = 0: must be at least 1",
            ),
            (
                "[mqtt]\nserver_keep_alive = 0",
                "invalid config: mqtt.server_keep_alive = 0: must be between 1 and mqtt.max_keep_alive (65535)",
            ),
            (
                "[mqtt]\nmax_keep_alive = 60\nserver_keep_alive = 61",
                "invalid config: mqtt.server_keep_alive = 61: must be between 1 and mqtt.max_keep_alive (60)",
            ),
            (
                "[mqtt]\nmax_qos = 3",
                "invalid config: mqtt.max_qos = 3: must be between 0 and 2",
            ),
            (
                "[mqtt]\nconnect_timeout_secs = 0",
                "invalid config: mqtt.connect_timeout_secs = 0: must be at least 1",
            ),
            (
                "[mqtt]\nlisten = \"0.0.0.0:1883\"\n[http]\nlisten = \"127.0.0.1:1883\"",
                "invalid config: http.listen = \"127.0.0.1:1883\": must not use the same port as mqtt.listen (\"0.0.0.0:1883\")",
            ),
            (
                "[log]\nlevel = \"\"",
                "invalid config: log.level = \"\": must not be empty",
            ),
        ];
        for (toml, expected) in cases {
            let e = Config::from_toml_str(toml).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{toml}: {e:?}");
            assert_eq!(e.to_string(), *expected, "{toml}");
        }
    }

    #[test]
    fn limits_at_their_bounds_are_accepted() {
        let toml = "[mqtt]\nmax_packet_size = 268435460\nmax_client_id_length = 23\n\
                    max_topic_length = 65535\nmax_qos = 0\nmax_keep_alive = 60\n\
                    server_keep_alive = 60\ntopic_alias_maximum = 0\n\
                    [node]\nsys_interval_secs = 0\n\
                    [http]\nenabled = false\nlisten = \"127.0.0.1:1883\"\n";
        Config::from_toml_str(toml).unwrap();
        // Ephemeral ports never collide (tests bind both listeners to port 0).
        Config::from_toml_str(
            "[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
    }

    #[test]
    fn env_overrides_file() {
        let file =
            "[mqtt]\nmax_connections = 10\nlisten = \"127.0.0.1:1000\"\n[log]\nlevel = \"warn\"\n";
        let config = load_str(
            file,
            &[
                ("ROOST_MQTT__MAX_CONNECTIONS", "5000"),
                ("ROOST_MQTT__LISTEN", "0.0.0.0:1883"),
                ("ROOST_MQTT__ALLOW_ANONYMOUS", "false"),
                ("ROOST_MQTT__QUEUE_DROP", "newest"),
                ("ROOST_MQTT__SERVER_KEEP_ALIVE", "30"),
                ("ROOST_LOG__LEVEL", "debug"),
                ("ROOST_NODE__DATA_DIR", "/var/lib/roost"),
                ("ROOST_HTTP__ENABLED", "false"),
                ("PATH", "/usr/bin"),
            ],
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(config.mqtt.max_connections, 5000);
        assert_eq!(
            config.mqtt.listen,
            "0.0.0.0:1883".parse::<SocketAddr>().unwrap()
        );
        assert!(!config.mqtt.allow_anonymous);
        assert_eq!(config.mqtt.queue_drop, QueueDrop::Newest);
        assert_eq!(config.mqtt.server_keep_alive, Some(30));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/roost"));
        assert!(!config.http.enabled);
    }

    #[test]
    fn env_values_that_look_like_toml_still_fit_string_keys() {
        let config = Config::load(
            None,
            env(&[
                ("ROOST_NODE__DATA_DIR", "123"),
                ("ROOST_LOG__LEVEL", "\"info,roost_node=trace\""),
                ("ROOST_LOG__FORMAT", "json"),
            ]),
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(config.node.data_dir, PathBuf::from("123"));
        assert_eq!(config.log.level, "info,roost_node=trace");
        assert_eq!(config.log.format, LogFormat::Json);

        // A log level that TOML reads as a number is still checked as a log level.
        let s = err_string(Config::load(
            None,
            env(&[("ROOST_LOG__LEVEL", "7")]),
            &CliOverrides::default(),
        ));
        assert!(s.starts_with("invalid config: log.level = \"7\": "), "{s}");
    }

    #[test]
    fn env_bad_value_names_the_variable_and_key() {
        let s = err_string(Config::load(
            None,
            env(&[("ROOST_MQTT__MAX_CONNECTIONS", "lots")]),
            &CliOverrides::default(),
        ));
        assert!(
            s.starts_with(
                "invalid config in environment ROOST_MQTT__MAX_CONNECTIONS: mqtt.max_connections = \"lots\": invalid type: string \"lots\""
            ),
            "{s}"
        );
        let s = err_string(Config::load(
            None,
            env(&[("ROOST_MQTT__RECEIVE_MAXIMUM", "70000")]),
            &CliOverrides::default(),
        ));
        assert!(
            s.starts_with(
                "invalid config in environment ROOST_MQTT__RECEIVE_MAXIMUM: mqtt.receive_maximum = 70000: "
            ),
            "{s}"
        );
        assert!(s.contains("70000"), "{s}");
        // Bounds are checked after layering, like values from the file.
        let s = err_string(Config::load(
            None,
            env(&[("ROOST_MQTT__MAX_QOS", "3")]),
            &CliOverrides::default(),
        ));
        assert_eq!(
            s,
            "invalid config: mqtt.max_qos = 3: must be between 0 and 2"
        );
    }

    #[test]
    fn cluster_settings_from_file_env_and_flags() {
        let config = load_str(
            "[cluster]\nnode_id = 2\nseeds = [\"1@10.0.0.1:7946\"]\n",
            &[("ROOST_CLUSTER__FORWARD_TIMEOUT_MS", "250")],
            &CliOverrides {
                seeds: vec!["3@h:1".into(), "4@h:2".into()],
                ..CliOverrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.cluster.node_id, 2);
        assert_eq!(config.cluster.forward_timeout_ms, 250);
        assert_eq!(config.cluster.seeds, ["3@h:1", "4@h:2"]);
        for (text, want) in [
            (
                "[cluster]\nseeds = [\"x@h:1\"]",
                "cluster.seeds = \"x@h:1\": \"x@h:1\": node id \"x\" is not a number",
            ),
            ("[cluster]\nnode_id = 0", "cluster.node_id = 0: must be at least 1"),
            (
                "[cluster]\nheartbeat_ms = 500",
                "cluster.election_timeout_ms = 1000: must be more than twice cluster.heartbeat_ms (500)",
            ),
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(
            parse_seed("2@127.0.0.1:7001").unwrap(),
            (2, "127.0.0.1:7001".into())
        );
        assert!(parse_seed("2@nohost").is_err());
        assert!(parse_seed("0@h:1").is_err());
    }

    #[test]
    fn cli_overrides_env() {
        let cli = CliOverrides {
            mqtt: Some("10.0.0.1:1884".parse().unwrap()),
            http: Some("10.0.0.1:9090".parse().unwrap()),
            data_dir: Some(PathBuf::from("/srv/roost")),
            log_level: Some("trace".to_owned()),
            ..CliOverrides::default()
        };
        let config = load_str(
            "[mqtt]\nlisten = \"127.0.0.1:1000\"\n",
            &[
                ("ROOST_MQTT__LISTEN", "0.0.0.0:1883"),
                ("ROOST_HTTP__LISTEN", "0.0.0.0:8080"),
                ("ROOST_NODE__DATA_DIR", "/var/lib/roost"),
                ("ROOST_LOG__LEVEL", "debug"),
            ],
            &cli,
        )
        .unwrap();
        assert_eq!(config.mqtt.listen, cli.mqtt.unwrap());
        assert_eq!(config.http.listen, cli.http.unwrap());
        assert_eq!(config.node.data_dir, PathBuf::from("/srv/roost"));
        assert_eq!(config.log.level, "trace");

        // CLI values are validated too.
        let cli = CliOverrides {
            log_level: Some("inof".to_owned()),
            ..CliOverrides::default()
        };
        let s = err_string(Config::load(None, Vec::new(), &cli));
        assert!(
            s.starts_with("invalid config: log.level = \"inof\": "),
            "{s}"
        );
    }

    #[test]
    fn unknown_env_variable_names_it() {
        let s = err_string(Config::load(
            None,
            env(&[("ROOST_MQTT__LISEN", "0.0.0.0:1883")]),
            &CliOverrides::default(),
        ));
        assert!(
            s.starts_with(
                "invalid config in environment ROOST_MQTT__LISEN: mqtt.lisen = \"0.0.0.0:1883\": unknown field `lisen`"
            ),
            "{s}"
        );
        let s = err_string(Config::load(
            None,
            env(&[("ROOST_X__Y", "1")]),
            &CliOverrides::default(),
        ));
        assert!(
            s.starts_with("invalid config in environment ROOST_X__Y: x.y = 1: unknown field `x`"),
            "{s}"
        );
        let s = err_string(Config::load(
            None,
            env(&[("ROOST___LISTEN", "1")]),
            &CliOverrides::default(),
        ));
        assert!(
            s.starts_with("invalid config in environment ROOST___LISTEN: expected a name"),
            "{s}"
        );
    }

    #[test]
    fn env_without_separator_is_ignored() {
        let config = Config::load(
            None,
            env(&[
                ("ROOST_BIN", "/usr/local/bin/roost"),
                ("ROOST_MQTT_LISTEN", "nonsense"),
                ("roost_mqtt__listen", "nonsense"),
            ]),
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn bad_log_level_rejected() {
        for level in ["info,roost=loud", "inof", "warn,,=", "[{"] {
            let toml = format!("[log]\nlevel = {level:?}\n");
            let e = Config::from_toml_str(&toml).unwrap_err();
            match &e {
                ConfigError::Invalid { key, value, .. } => {
                    assert_eq!(*key, "log.level");
                    assert_eq!(*value, format!("{level:?}"));
                }
                other => panic!("{level}: {other:?}"),
            }
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        for level in [
            "info",
            "warn,roost_node=debug",
            "roost_core[session]=trace",
            "OFF",
        ] {
            let toml = format!("[log]\nlevel = {level:?}\n");
            Config::from_toml_str(&toml).unwrap();
        }
    }

    #[test]
    fn read_error_names_the_path() {
        let path = Path::new("/nonexistent/roost.toml");
        let e = Config::load(Some(path), Vec::new(), &CliOverrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("cannot read config file /nonexistent/roost.toml: "),
            "{e}"
        );
    }
}
