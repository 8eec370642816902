//! MQTT listeners: `mqtt.listen` (plain TCP) and every `[[listeners]]` entry (TCP, TLS,
//! WebSocket, secure WebSocket). Each accepts TCP connections, runs its transport's handshake
//! under `handshake_timeout_secs`, and hands the byte stream to the one connection driver
//! (RFC 0007).
//!
//! ```text
//!  accept ─▶ Pending::admit (node-wide cap on sockets owing a CONNECT)
//!         ─▶ task: [TLS handshake] ─▶ [WebSocket upgrade] ─▶ driver::serve(stream, Accepted)
//! ```
//!
//! A handshake that fails or does not finish in time closes the socket and is counted:
//! `roost_mqtt_handshake_failed_total{listener, reason}`. The listener's settings that matter
//! after the handshake (anonymous access, certificate identity, its own connection cap) travel
//! with the connection in [`Accepted`].

use crate::broker::Broker;
use crate::config::{CertIdentity, ListenerConfig, ListenerKind};
use crate::shard::Shards;
use metrics::counter;
use roost_transport::{ws, PeerCert, TlsAcceptor, TlsSettings};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::either::Either;
use tracing::{debug, warn};

pub(crate) const HANDSHAKE_FAILED: &str = "roost_mqtt_handshake_failed_total";

/// One listener's settings, shared by its connections.
#[derive(Debug)]
pub(crate) struct Listener {
    /// Name in logs and metric labels.
    pub(crate) name: String,
    pub(crate) kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    /// QUIC: the files, the idle timeout, and the endpoint once bound.
    quic_settings: Option<TlsSettings>,
    quic_idle: Duration,
    quic: std::sync::OnceLock<roost_transport::QuicListener>,
    path: String,
    /// Clients without credentials may connect.
    pub(crate) allow_anonymous: bool,
    pub(crate) cert_identity: CertIdentity,
    pub(crate) require_client_id_match: bool,
    max_connections: Option<usize>,
    connections: AtomicUsize,
    handshake_timeout: Duration,
    /// Connections start with a PROXY protocol header.
    proxy_protocol: bool,
    /// CONNECTs per second (`max_connect_rate`; unlimited when its rate is 0).
    connect_rate: parking_lot::Mutex<roost_core::rate::TokenBucket>,
}

/// What a connection brings from its listener and transport to the driver. Held in the
/// connection's task itself, not behind a pointer: 16 B there against a 96 B allocation per
/// connection (issue 10, memory per connection).
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) listener: Arc<Listener>,
    /// The verified client certificate's identity, if the client sent one (boxed: most
    /// connections have none).
    pub(crate) cert: Option<Box<PeerCert>>,
}

/// A connection's place in its listener's `max_connections`, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Listener>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a listener could not be set up (its TLS files).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub(crate) struct ListenerError {
    pub(crate) key: String,
    pub(crate) source: roost_transport::TlsConfigError,
}

impl Listener {
    /// The plain TCP listener of `mqtt.listen`.
    /// The settings of the node's main listener (`mqtt.listen`, plain TCP, named "mqtt").
    pub(crate) fn main_config(
        listen: std::net::SocketAddr,
        connect_timeout_secs: u64,
    ) -> ListenerConfig {
        ListenerConfig {
            name: Some("mqtt".into()),
            cert_identity: CertIdentity::None,
            handshake_timeout_secs: connect_timeout_secs,
            ..ListenerConfig::new(ListenerKind::Tcp, listen)
        }
    }

    /// A listener from its settings; loads its certificate. `key` names the entry in error
    /// messages (`listeners[2]`).
    pub(crate) fn from_config(
        entry: &str,
        c: &ListenerConfig,
        default_anonymous: bool,
        burst_secs: u64,
        max_keep_alive: u16,
    ) -> Result<Listener, ListenerError> {
        let mut quic_settings = None;
        let tls = match (c.kind.tls(), &c.cert, &c.key) {
            (true, Some(cert), Some(key)) => {
                let settings = TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: c.client_ca.clone(),
                    client_auth: c.client_auth_mode().into(),
                };
                let err = |source| ListenerError {
                    key: entry.to_owned(),
                    source,
                };
                if c.kind.udp() {
                    // Checked now (before anything is bound); the endpoint is made at bind.
                    settings.load_tls13().map_err(err)?;
                    quic_settings = Some(settings);
                    None
                } else {
                    Some(TlsAcceptor::new(settings).map_err(err)?)
                }
            }
            _ => None,
        };
        Ok(Listener {
            name: c.display_name(),
            kind: c.kind,
            tls,
            quic_settings,
            // Longer than any keep-alive a client is granted (1.5 x, [MQTT-3.1.2-24]) and
            // then some: QUIC must not close a connection MQTT still counts as alive.
            quic_idle: Duration::from_secs(u64::from(max_keep_alive) * 3 / 2 + 30),
            quic: std::sync::OnceLock::new(),
            path: c.path.clone(),
            allow_anonymous: c.allow_anonymous.unwrap_or(default_anonymous),
            cert_identity: c.cert_identity,
            require_client_id_match: c.require_client_id_match,
            max_connections: c.max_connections,
            connections: AtomicUsize::new(0),
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs),
            proxy_protocol: c.proxy_protocol,
            connect_rate: parking_lot::Mutex::new(roost_core::rate::TokenBucket::new(
                c.max_connect_rate,
                c.max_connect_rate.saturating_mul(burst_secs),
            )),
        })
    }

    /// Takes a place in this listener's `max_connections`; `None` when full.
    pub(crate) fn slot(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max_connections.unwrap_or(usize::MAX);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// Takes one CONNECT from this listener's connect rate; false when it is exhausted.
    pub(crate) fn connect_allowed(&self) -> bool {
        self.connect_rate.lock().take(1, crate::now())
    }

    /// Re-reads this listener's certificate files (TLS listeners only; others: `Ok(false)`).
    pub(crate) fn reload_tls(&self) -> Result<bool, String> {
        if let Some(q) = self.quic.get() {
            return q.reload().map(|()| true).map_err(|e| e.to_string());
        }
        match &self.tls {
            Some(t) => t.reload().map(|()| true).map_err(|e| e.to_string()),
            None => Ok(false),
        }
    }

    /// Binds this QUIC listener's UDP endpoint; returns the bound address.
    pub(crate) fn bind_quic(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        let Some(settings) = &self.quic_settings else {
            return Err("not a QUIC listener".into());
        };
        let q = roost_transport::QuicListener::bind(addr, settings.clone(), self.quic_idle)
            .map_err(|e| e.to_string())?;
        let bound = q.local_addr().map_err(|e| e.to_string())?;
        let _ = self.quic.set(q);
        Ok(bound)
    }

    /// Runs the QUIC handshake (TLS 1.3 and the first bidirectional stream) and serves the
    /// connection.
    async fn serve_quic(
        self: Arc<Self>,
        broker: Arc<Broker>,
        incoming: roost_transport::QuicIncoming,
        pending: crate::driver::Pending,
    ) {
        let peer = incoming.remote_address();
        let stream = match tokio::time::timeout(self.handshake_timeout, incoming.handshake()).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(listener = %self.name, %peer, error = %e, "QUIC handshake failed");
                self.handshake_failed(e.label());
                return;
            }
            Err(_) => {
                debug!(listener = %self.name, %peer, "QUIC handshake timed out");
                self.handshake_failed("timeout");
                return;
            }
        };
        let via = self.accepted(stream.peer_cert());
        crate::driver::serve(broker, stream, peer, via, pending).await
    }

    fn handshake_failed(&self, reason: &'static str) {
        counter!(HANDSHAKE_FAILED, "listener" => self.name.clone(), "reason" => reason)
            .increment(1);
    }

    /// MQTT straight over TCP: no transport handshake and no PROXY header before the CONNECT.
    fn plain_tcp(&self) -> bool {
        self.kind == ListenerKind::Tcp && !self.proxy_protocol
    }

    /// The task of an accepted TCP socket: the driver itself for plain MQTT over TCP (the
    /// common case), else [`serve`](Self::serve) boxed, with the transport's handshake first.
    /// A connection's task is as large as its future, so a plain TCP connection carries no
    /// state of this layer: not its own copies of the socket, the address and the pending
    /// place, which a future keeps for moved-from values too (issue 10, memory per
    /// connection).
    fn task(
        self: Arc<Self>,
        broker: Arc<Broker>,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: crate::driver::Pending,
    ) -> impl std::future::Future<Output = ()> {
        if self.plain_tcp() {
            let _ = tcp.set_nodelay(true);
            let via = self.accepted(None);
            Either::Left(crate::driver::serve(broker, tcp, peer, via, pending))
        } else {
            Either::Right(Box::pin(self.serve(broker, tcp, peer, pending)))
        }
    }

    /// Runs the transport's handshake on an accepted socket and serves the connection.
    ///
    /// Every connection's task is as large as this future's largest state, so everything but
    /// the plain-TCP path runs in a boxed future of its own (`serve_ws`, `serve_tls`): the
    /// handshakes and the drivers of TLS and WebSocket streams embed rustls and the frame
    /// decoder. Inline, a plain TCP connection carried a WSS connection's size for its whole
    /// life (issue 10, memory per connection; boxing only the calls was not enough, because a
    /// moved-from stream's slot stays in the state across later awaits).
    async fn serve(
        self: Arc<Self>,
        broker: Arc<Broker>,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: crate::driver::Pending,
    ) {
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        let mut peer = peer;
        let mut limit = self.handshake_timeout;
        if self.proxy_protocol {
            let started = tokio::time::Instant::now();
            let header = Box::pin(roost_transport::proxy::read_header(&mut tcp));
            match tokio::time::timeout(limit, header).await {
                Ok(Ok(Some(client))) => peer = client,
                Ok(Ok(None)) => {} // the balancer's own connection (health check)
                Ok(Err(e)) => {
                    debug!(listener = %self.name, %peer, error = %e, "PROXY header refused");
                    self.handshake_failed("proxy");
                    return;
                }
                Err(_) => {
                    debug!(listener = %self.name, %peer, "no PROXY header in time");
                    self.handshake_failed("timeout");
                    return;
                }
            }
            limit = limit.saturating_sub(started.elapsed());
        }
        match self.kind {
            ListenerKind::Tcp => {
                let via = self.accepted(None);
                crate::driver::serve(broker, tcp, peer, via, pending).await
            }
            // Boxed whole: see above.
            ListenerKind::Ws => Box::pin(self.serve_ws(broker, tcp, peer, pending, limit)).await,
            ListenerKind::Tls | ListenerKind::Wss => {
                Box::pin(self.serve_tls(broker, tcp, peer, pending, limit)).await
            }
            // QUIC connections come through `quic_accept_loop`.
            ListenerKind::Quic => {}
        }
    }

    /// WebSocket over TCP: the upgrade within `limit`, then the driver.
    async fn serve_ws(
        self: Arc<Self>,
        broker: Arc<Broker>,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: crate::driver::Pending,
        limit: Duration,
    ) {
        let Some(ws) = self.upgrade(tcp, peer, limit).await else {
            return;
        };
        let via = self.accepted(None);
        crate::driver::serve(broker, ws, peer, via, pending).await
    }

    /// TLS, or WebSocket over TLS: the TLS handshake (and the upgrade) within `limit`, then the
    /// driver.
    async fn serve_tls(
        self: Arc<Self>,
        broker: Arc<Broker>,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: crate::driver::Pending,
        limit: Duration,
    ) {
        // A TLS listener without its acceptor is not built.
        let Some(acceptor) = &self.tls else {
            return;
        };
        let started = tokio::time::Instant::now();
        let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                debug!(listener = %self.name, %peer, error = %e, "TLS handshake failed");
                self.handshake_failed(if e.kind() == std::io::ErrorKind::InvalidData {
                    "tls"
                } else {
                    "io"
                });
                return;
            }
            Err(_) => {
                debug!(listener = %self.name, %peer, "TLS handshake timed out");
                self.handshake_failed("timeout");
                return;
            }
        };
        let cert = tls.peer_cert();
        if self.kind == ListenerKind::Tls {
            let via = self.accepted(cert);
            return crate::driver::serve(broker, tls, peer, via, pending).await;
        }
        let left = limit.saturating_sub(started.elapsed());
        let Some(ws) = self.upgrade(tls, peer, left).await else {
            return;
        };
        let via = self.accepted(cert);
        crate::driver::serve(broker, ws, peer, via, pending).await
    }

    fn accepted(self: &Arc<Self>, cert: Option<PeerCert>) -> Accepted {
        Accepted {
            listener: Arc::clone(self),
            cert: cert.map(Box::new),
        }
    }

    /// The WebSocket opening handshake, bounded by `limit`.
    async fn upgrade<S: roost_transport::ByteStream>(
        &self,
        inner: S,
        peer: SocketAddr,
        limit: Duration,
    ) -> Option<roost_transport::WsStream<S>> {
        match tokio::time::timeout(limit, ws::accept(inner, &self.path)).await {
            Ok(Ok(ws)) => Some(ws),
            Ok(Err(e)) => {
                debug!(listener = %self.name, %peer, error = %e, "WebSocket handshake failed");
                self.handshake_failed(match e {
                    roost_transport::WsError::Io(_) => "io",
                    roost_transport::WsError::Refused { .. } => "ws",
                });
                None
            }
            Err(_) => {
                debug!(listener = %self.name, %peer, "WebSocket handshake timed out");
                self.handshake_failed("timeout");
                None
            }
        }
    }
}

/// Accepts on `socket` until `stop`, spawning a task per connection: on a shard when the node
/// runs shards (`hand_off`), else on this runtime.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
    shards: Option<Arc<Shards>>,
) {
    loop {
        tokio::select! {
            r = socket.accept() => match r {
                Ok((stream, peer)) => match crate::driver::Pending::admit(&broker) {
                    Some(pending) => match &shards {
                        Some(shards) => hand_off(shards, &listener, &broker, stream, peer, pending),
                        None => {
                            let l = Arc::clone(&listener);
                            tokio::spawn(l.task(Arc::clone(&broker), stream, peer, pending));
                        }
                    },
                    None => {
                        // Too many sockets still owe their CONNECT: close this one at once.
                        drop(stream);
                        crate::metrics::rejected("pending_limit");
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = %listener.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// One accepted socket to a shard. tokio registered it with this runtime's I/O driver;
/// `into_std` takes it out again and the shard registers it with its own: two `epoll_ctl` more
/// per connection than accepting where it runs. Accepting by readiness with the standard
/// library would save them, but tokio's API for that (`AsyncFd::register`) is `unsafe`, which
/// the workspace forbids; one SO_REUSEPORT listener per shard would too (RFC 0009 says why
/// not yet).
fn hand_off(
    shards: &Shards,
    listener: &Arc<Listener>,
    broker: &Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    pending: crate::driver::Pending,
) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            debug!(listener = %listener.name, %peer, error = %e, "cannot hand an accepted socket to a shard");
            return;
        }
    };
    let l = Arc::clone(listener);
    let broker = Arc::clone(broker);
    // io_uring (RFC 0010) for plain TCP without a PROXY header; the other transports and the
    // PROXY header reader are written against tokio's TcpStream and keep epoll on the shard.
    #[cfg(all(target_os = "linux", feature = "io-uring"))]
    if shards.uring() && l.plain_tcp() {
        shards.spawn_uring(stream, move |stream| {
            let via = l.accepted(None);
            crate::driver::serve(broker, stream, peer, via, pending)
        });
        return;
    }
    shards.spawn_tcp(stream, move |stream| l.task(broker, stream, peer, pending));
}

/// Accepts QUIC connections on `listener`'s endpoint until `stop`.
pub(crate) async fn quic_accept_loop(
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(endpoint) = listener.quic.get() else {
        return;
    };
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                match crate::driver::Pending::admit(&broker) {
                    Some(pending) => {
                        let l = Arc::clone(&listener);
                        tokio::spawn(l.serve_quic(Arc::clone(&broker), incoming, pending));
                    }
                    None => {
                        incoming.refuse();
                        crate::metrics::rejected("pending_limit");
                    }
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Starts the accept loop that fits the listener's kind.
pub(crate) fn spawn_accept(
    socket: Option<TcpListener>,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    shards: Option<Arc<Shards>>,
) -> JoinHandle<()> {
    match socket {
        Some(s) => tokio::spawn(accept_loop(s, listener, broker, stop, shards)),
        None => tokio::spawn(quic_accept_loop(listener, broker, stop)),
    }
}
