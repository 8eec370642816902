//! `[[listeners]]` and `[auth]`: MQTT listeners beside `mqtt.listen` (TLS, WebSocket, secure
//! WebSocket, more plain TCP) and how clients prove who they are. Issue 9; docs/security.md.
//!
//! ```toml
//! [[listeners]]
//! kind = "tls"                      # tcp | tls | ws | wss | quic
//! listen = "0.0.0.0:8883"
//! cert = "/etc/roost/tls/server.pem"
//! key = "/etc/roost/tls/server.key"
//! client_ca = "/etc/roost/tls/devices-ca.pem"   # ask for client certificates
//! client_auth = "required"          # none | optional | required (default: required with a CA)
//! cert_identity = "cn"              # the certificate's CN (or "san") becomes the username
//! require_client_id_match = true    # and the client id must equal it
//! allow_anonymous = false           # overrides mqtt.allow_anonymous for this listener
//! ```

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS (rustls).
    Tls,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// MQTT over QUIC (UDP; ALPN `mqtt`, one bidirectional stream, TLS 1.3).
    Quic,
}

impl ListenerKind {
    /// Whether the listener terminates TLS.
    pub fn tls(self) -> bool {
        matches!(
            self,
            ListenerKind::Tls | ListenerKind::Wss | ListenerKind::Quic
        )
    }

    /// Whether the listener binds a UDP port (QUIC) rather than a TCP one.
    pub fn udp(self) -> bool {
        self == ListenerKind::Quic
    }

    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Quic => "quic",
        }
    }
}

/// Whether a TLS listener asks clients for certificates: the configuration's copy of
/// `roost_transport::ClientAuth`. The copy is on purpose: roost-transport has no serde (it sits
/// below the configuration and carries only what a stream needs), and the spelling in
/// roost.toml is the configuration's to keep stable. `From` maps it, variant for variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// No client certificate is asked for.
    None,
    /// Asked for and verified when sent; clients without one authenticate otherwise.
    Optional,
    /// A handshake without a certificate signed by `client_ca` fails.
    Required,
}

/// Which part of a verified client certificate names the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertIdentity {
    /// The certificate authenticates the connection but does not name it: the CONNECT's
    /// username and password are checked as on any listener.
    None,
    /// The subject's common name becomes the username (the CONNECT's is ignored); a
    /// certificate without a CN is refused.
    #[default]
    Cn,
    /// The first subject alternative name (DNS, e-mail or URI) becomes the username.
    San,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub kind: ListenerKind,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Name in logs and in the `listener` label of metrics. Default `<kind>:<port>`.
    #[serde(default)]
    pub name: Option<String>,
    /// PEM certificate chain, leaf first (tls, wss, quic). Re-read on SIGHUP and
    /// `POST /api/v1/tls/reload`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (tls, wss, quic).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM bundle of the CAs that sign client certificates (tls, wss, quic). Setting it asks clients
    /// for certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (`required`, the default when `client_ca` is
    /// set), optional, or not asked for (`none`, the default without `client_ca`).
    #[serde(default)]
    pub client_auth: Option<ClientAuthMode>,
    /// What names a client that sent a certificate. Default `cn`.
    #[serde(default)]
    pub cert_identity: CertIdentity,
    /// A client authenticated by certificate must use its certificate identity as its client
    /// id (AWS IoT's "thing name = client id"); otherwise CONNACK 0x87 / 0x05. Default false.
    #[serde(default)]
    pub require_client_id_match: bool,
    /// WebSocket path (ws, wss). Default `/mqtt`.
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// Whether clients without credentials may connect here. Default: `mqtt.allow_anonymous`.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Most connections on this listener (the node's `mqtt.max_connections` applies as well).
    /// Default: no limit of its own.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer;
    /// the client address it carries is the one logged and shown (`GET /api/v1/clients`).
    /// A connection without one is refused (`roost_mqtt_handshake_failed_total{reason="proxy"}`).
    /// Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// CONNECTs this listener accepts per second (on average over `mqtt.rate_burst_secs`);
    /// beyond it CONNACK 0x9F Connection rate exceeded (v3.1.1: 0x03), counted
    /// `roost_mqtt_connections_rejected_total{reason="connect_rate"}`. 0: no limit. Default 0.
    #[serde(default)]
    pub max_connect_rate: u64,
    /// A TLS or WebSocket handshake that has not finished after this many seconds is dropped
    /// (counted: `roost_handshake_failed_total{reason="timeout"}`). 1 to 300. Default 10.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
}

fn default_ws_path() -> String {
    "/mqtt".to_owned()
}

fn default_handshake_timeout() -> u64 {
    10
}

impl ListenerConfig {
    /// A listener of `kind` on `listen` with every other setting at its default.
    pub fn new(kind: ListenerKind, listen: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            kind,
            listen,
            name: None,
            cert: None,
            key: None,
            client_ca: None,
            client_auth: None,
            cert_identity: CertIdentity::default(),
            require_client_id_match: false,
            path: default_ws_path(),
            allow_anonymous: None,
            max_connections: None,
            max_connect_rate: 0,
            proxy_protocol: false,
            handshake_timeout_secs: default_handshake_timeout(),
        }
    }

    /// The name in logs and metrics.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.kind.as_str(), self.listen.port()))
    }

    /// Client certificates: as configured, else required when a CA bundle is given.
    pub fn client_auth_mode(&self) -> ClientAuthMode {
        match (self.client_auth, &self.client_ca) {
            (Some(mode), _) => mode,
            (None, Some(_)) => ClientAuthMode::Required,
            (None, None) => ClientAuthMode::None,
        }
    }

    /// Checks one entry; `i` is its index for the error's key (`listeners[i].cert`).
    pub(super) fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("listeners[{i}].{k}");
        let tls = self.kind.tls();
        if tls && self.cert.is_none() {
            return Err(invalid(
                key("cert"),
                "(missing)".into(),
                format!("is required for a {} listener", self.kind.as_str()),
            ));
        }
        if tls && self.key.is_none() {
            return Err(invalid(
                key("key"),
                "(missing)".into(),
                format!("is required for a {} listener", self.kind.as_str()),
            ));
        }
        for (name, set) in [
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("client_ca", self.client_ca.is_some()),
            ("client_auth", self.client_auth.is_some()),
        ] {
            if set && !tls {
                return Err(invalid(
                    key(name),
                    "(set)".into(),
                    format!(
                        "only applies to tls, wss and quic listeners, not {}",
                        self.kind.as_str()
                    ),
                ));
            }
        }
        if self.client_auth_mode() != ClientAuthMode::None && self.client_ca.is_none() {
            return Err(invalid(
                key("client_auth"),
                format!("{:?}", self.client_auth_mode()).to_lowercase(),
                "needs client_ca (the CAs that sign client certificates)",
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
            return Err(invalid(
                key("path"),
                format!("{:?}", self.path),
                "must start with '/' and contain no whitespace",
            ));
        }
        if !(1..=300).contains(&self.handshake_timeout_secs) {
            return Err(invalid(
                key("handshake_timeout_secs"),
                self.handshake_timeout_secs.to_string(),
                "must be between 1 and 300",
            ));
        }
        if self.proxy_protocol && self.kind.udp() {
            return Err(invalid(
                key("proxy_protocol"),
                "true".into(),
                "does not apply to quic listeners (the PROXY protocol is for TCP)",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(invalid(
                key("max_connections"),
                "0".into(),
                "must be at least 1",
            ));
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > 64 || name.contains(|c: char| c.is_control()) {
                return Err(invalid(
                    key("name"),
                    format!("{name:?}"),
                    "must be 1 to 64 printable characters",
                ));
            }
        }
        Ok(())
    }
}

/// `[auth]`: credentials and authorization policies.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Password file (`user:argon2 hash` lines, written by `roost passwd FILE USER`). When
    /// set, a client that sends a username must send that user's password (else CONNACK 0x86
    /// / 0x04). Re-read on SIGHUP. Default: none.
    pub password_file: Option<PathBuf>,
    /// Authorization policies (JSON, AWS IoT style; docs/security.md). The file seeds the
    /// cluster's replicated policies when the cluster has none yet, and is enforced by this
    /// node until they are replicated; after that the replicated version rules, changed through
    /// `PUT /api/v1/policies` or by editing this file and sending SIGHUP (the file is proposed
    /// again). Default: none (no policies: every authenticated client may do everything).
    pub policy_file: Option<PathBuf>,
    /// Key that verifies JSON Web Tokens sent as the CONNECT password: an HS256 secret (at
    /// least 32 bytes) or an RS256 / ES256 public key (PEM). A client whose password is a
    /// token is authenticated by it: signature, `exp` (required), `nbf`, and `aud`/`iss` when
    /// set below; the identity claim becomes the username, and the connection is closed when
    /// the token expires (v5: DISCONNECT 0x87). Default: none (no tokens).
    pub jwt_key_file: Option<PathBuf>,
    /// `HS256`, `RS256` or `ES256`. Default `HS256`.
    pub jwt_algorithm: String,
    /// The claim that names the client: it becomes the username (the CONNECT's own username
    /// is ignored). Default `sub`.
    pub jwt_identity_claim: String,
    /// Required `aud`, if set. Default: none (not checked).
    pub jwt_audience: Option<String>,
    /// Required `iss`, if set. Default: none (not checked).
    pub jwt_issuer: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password_file: None,
            policy_file: None,
            jwt_key_file: None,
            jwt_algorithm: "HS256".into(),
            jwt_identity_claim: "sub".into(),
            jwt_audience: None,
            jwt_issuer: None,
        }
    }
}

impl From<ClientAuthMode> for roost_transport::ClientAuth {
    fn from(m: ClientAuthMode) -> Self {
        match m {
            ClientAuthMode::None => roost_transport::ClientAuth::None,
            ClientAuthMode::Optional => roost_transport::ClientAuth::Optional,
            ClientAuthMode::Required => roost_transport::ClientAuth::Required,
        }
    }
}
