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
use crate::config::{CertIdentity, ClientAuthMode, ListenerConfig, ListenerKind};
use metrics::counter;
use roost_transport::{ws, ClientAuth, PeerCert, TlsAcceptor, TlsSettings};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

pub(crate) const HANDSHAKE_FAILED: &str = "roost_mqtt_handshake_failed_total";

/// One listener's settings, shared by its connections.
#[derive(Debug)]
pub(crate) struct Listener {
    /// Name in logs and metric labels.
    pub(crate) name: String,
    pub(crate) kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    path: String,
    /// Clients without credentials may connect.
    pub(crate) allow_anonymous: bool,
    pub(crate) cert_identity: CertIdentity,
    pub(crate) require_client_id_match: bool,
    max_connections: Option<usize>,
    connections: AtomicUsize,
    handshake_timeout: Duration,
}

/// What a connection brings from its listener and transport to the driver.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) listener: Arc<Listener>,
    /// The verified client certificate's identity, if the client sent one.
    pub(crate) cert: Option<PeerCert>,
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
    pub(crate) fn main(allow_anonymous: bool, handshake_timeout: Duration) -> Listener {
        Listener {
            name: "mqtt".into(),
            kind: ListenerKind::Tcp,
            tls: None,
            path: String::new(),
            allow_anonymous,
            cert_identity: CertIdentity::None,
            require_client_id_match: false,
            max_connections: None,
            connections: AtomicUsize::new(0),
            handshake_timeout,
        }
    }

    /// A `[[listeners]]` entry (index `i`, for error messages); loads its certificate.
    pub(crate) fn from_config(
        i: usize,
        c: &ListenerConfig,
        default_anonymous: bool,
    ) -> Result<Listener, ListenerError> {
        let tls = match (c.kind.tls(), &c.cert, &c.key) {
            (true, Some(cert), Some(key)) => {
                let settings = TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: c.client_ca.clone(),
                    client_auth: match c.client_auth_mode() {
                        ClientAuthMode::None => ClientAuth::None,
                        ClientAuthMode::Optional => ClientAuth::Optional,
                        ClientAuthMode::Required => ClientAuth::Required,
                    },
                };
                Some(TlsAcceptor::new(settings).map_err(|source| ListenerError {
                    key: format!("listeners[{i}]"),
                    source,
                })?)
            }
            _ => None,
        };
        Ok(Listener {
            name: c.display_name(),
            kind: c.kind,
            tls,
            path: c.path.clone(),
            allow_anonymous: c.allow_anonymous.unwrap_or(default_anonymous),
            cert_identity: c.cert_identity,
            require_client_id_match: c.require_client_id_match,
            max_connections: c.max_connections,
            connections: AtomicUsize::new(0),
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs),
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

    /// Re-reads this listener's certificate files (TLS listeners only; others: `Ok(false)`).
    pub(crate) fn reload_tls(&self) -> Result<bool, roost_transport::TlsConfigError> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    fn handshake_failed(&self, reason: &'static str) {
        counter!(HANDSHAKE_FAILED, "listener" => self.name.clone(), "reason" => reason)
            .increment(1);
    }

    /// Runs the transport's handshake on an accepted socket and serves the connection.
    async fn serve(
        self: Arc<Self>,
        broker: Arc<Broker>,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: crate::driver::Pending,
    ) {
        let _ = tcp.set_nodelay(true);
        let limit = self.handshake_timeout;
        match (self.kind, &self.tls) {
            (ListenerKind::Tcp, _) => {
                let via = self.accepted(None);
                crate::driver::serve(broker, tcp, peer, via, pending).await
            }
            (ListenerKind::Ws, _) => {
                let Some(ws) = self.upgrade(tcp, peer, limit).await else {
                    return;
                };
                let via = self.accepted(None);
                crate::driver::serve(broker, ws, peer, via, pending).await
            }
            (ListenerKind::Tls | ListenerKind::Wss, Some(acceptor)) => {
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
            // Cannot happen: a TLS listener without its acceptor is not built.
            (ListenerKind::Tls | ListenerKind::Wss, None) => {}
        }
    }

    fn accepted(self: &Arc<Self>, cert: Option<PeerCert>) -> Arc<Accepted> {
        Arc::new(Accepted {
            listener: Arc::clone(self),
            cert,
        })
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

/// Accepts on `socket` until `stop`, spawning a task per connection.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = socket.accept() => match r {
                Ok((stream, peer)) => match crate::driver::Pending::admit(&broker) {
                    Some(pending) => {
                        let l = Arc::clone(&listener);
                        tokio::spawn(l.serve(Arc::clone(&broker), stream, peer, pending));
                    }
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
