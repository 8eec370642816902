//! The admin HTTP API over TLS (`http.tls_cert`, `http.tls_key`; issue 9): the same axum
//! [`Router`] as the plain listener, served by hyper's HTTP/1.1 connection over tokio-rustls.
//! `node.rs` starts [`serve`] instead of `axum::serve` when the two files are set; the listener
//! then speaks HTTPS only.
//!
//! ```text
//!  serve (one task): accept ── spawn per connection ──▶ TLS handshake (≤ HANDSHAKE_TIMEOUT)
//!    │ stop signal: stop accepting,                      └▶ hyper http1 ─▶ axum Router
//!    └ wait for connections in flight (≤ SHUTDOWN_GRACE)    stop signal: finish the request
//!                                                           in progress (≤ SHUTDOWN_GRACE)
//! ```
//!
//! Why not `axum::serve`: it serves plain sockets only. Why hyper's connection API and not a
//! crate such as axum-server: hyper, hyper-util and tokio-rustls are already compiled into the
//! node (axum, tonic), so this adds no crate.
//!
//! Certificates: [`AdminTls`] holds the current rustls configuration (TLS 1.3 and 1.2, ring
//! provider, ALPN `http/1.1`), built by the same `roost_transport::TlsSettings` as the MQTT TLS
//! listeners. [`AdminTls::reload`] (SIGHUP, `POST /api/v1/reload`, through
//! `Broker::reload_credentials`) swaps it: handshakes after it use the new files, connections
//! already open keep theirs, and a file that does not load keeps the old one in use.
//!
//! Bounds: a handshake that has not finished in [`HANDSHAKE_TIMEOUT`] is dropped, in its own
//! task, so a slow client never holds up the accept loop; hyper drops a connection that does
//! not send a request's headers within 30 s (its default header read timeout, which needs the
//! timer set below). As with the plain listener, the number of connections is not capped: the
//! admin port belongs on a private network.

use crate::config::ConfigError;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::RwLock;
use roost_transport::{ClientAuth, TlsConfigError, TlsSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Time allowed for a TLS handshake on the admin listener.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After the stop signal: how long a connection may take to finish the request in progress,
/// and how long [`serve`] waits for them all.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The admin listener's certificate: the files and the rustls configuration built from them.
pub(crate) struct AdminTls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl AdminTls {
    /// Reads `cert` and `key`. A file that does not load is a [`ConfigError::Invalid`] naming
    /// `http.tls_cert` or `http.tls_key` (the key file also when it does not fit the
    /// certificate).
    pub(crate) fn load(cert: PathBuf, key: PathBuf) -> Result<AdminTls, ConfigError> {
        let settings = TlsSettings {
            cert,
            key,
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let config = build(&settings).map_err(|e| config_error(&settings, e))?;
        Ok(AdminTls {
            settings,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the files. On error the old configuration stays in use; the message names the
    /// file.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let config = build(&self.settings).map_err(|e| e.to_string())?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// The configuration new handshakes use.
    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read())
    }
}

/// The MQTT listeners' rustls configuration (TLS 1.3 and 1.2, ring, no client certificates)
/// with ALPN `http/1.1`, the only protocol this listener speaks.
fn build(settings: &TlsSettings) -> Result<ServerConfig, TlsConfigError> {
    let mut config = settings.load()?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Names the setting a TLS error came from: the key file when the error is about it, else the
/// certificate.
fn config_error(settings: &TlsSettings, e: TlsConfigError) -> ConfigError {
    let (key, path, reason) = match e {
        TlsConfigError::File { path, what } => {
            let key = if path == settings.key {
                "http.tls_key"
            } else {
                "http.tls_cert"
            };
            (key, path, what)
        }
        TlsConfigError::Rustls(reason) => ("http.tls_cert", settings.cert.clone(), reason),
    };
    ConfigError::Invalid {
        key: key.into(),
        value: format!("{:?}", path.display().to_string()),
        reason,
    }
}

/// Serves `app` over TLS on `listener` until `stop` turns true (or its sender is dropped):
/// then stops accepting, and waits up to [`SHUTDOWN_GRACE`] for connections in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<AdminTls>,
    mut stop: watch::Receiver<bool>,
) {
    let connections = TaskTracker::new();
    loop {
        // Cancel safety: `accept` and `stopped` keep no partial state.
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                connections.spawn(serve_connection(
                    tcp,
                    peer,
                    tls.current(),
                    app.clone(),
                    stop.clone(),
                ));
            }
            // The client went away before we took its connection.
            Err(e) if is_connection_error(&e) => debug!(error = %e, "admin HTTPS accept"),
            // Out of file descriptors, say: wait a little instead of spinning.
            Err(e) => {
                warn!(error = %e, "admin HTTPS listener cannot accept; retrying in 1 s");
                tokio::select! {
                    () = stopped(&mut stop) => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        debug!("admin HTTPS connections still open after the grace period");
    }
}

/// Returns once `stop` turns true or its sender is gone (the node was dropped).
///
/// Cancel safety: keeps no state; awaiting it again sees the same value.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// One connection: the handshake (bounded), then HTTP/1.1 until the client closes or the stop
/// signal, after which the request in progress may finish (bounded) and the connection closes.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        () = stopped(&mut stop) => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "admin HTTPS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "admin HTTPS handshake timed out");
                return;
            }
        },
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    // Cancel safety: `stopped` keeps no state; the connection is polled again below.
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "admin HTTPS connection ended with an error");
    }
}
