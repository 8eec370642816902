//! How a load-generator client reaches the broker: plain TCP, TLS over TCP, or QUIC
//! (`--transport tcp|tls|quic`, `--ca`, `--server-name`, on every scenario).
//!
//! ```text
//!  Common ── TransportArgs::dialer() (reads --ca once) ──▶ Dialer (cheap to clone, one per run)
//!  Client::connect ── Dialer::dial(addr) ──▶ Box<dyn Io>
//!     tcp:  TcpStream::connect, set_nodelay(true)                       (the stream itself)
//!     tls:  TcpStream as above, then tokio-rustls' handshake          (TlsStream<TcpStream>)
//!     quic: roost_transport::quic::connect: one quinn Endpoint (one UDP socket) per
//!           connection, handshake, first bidirectional stream          (QuicClientStream)
//! ```
//!
//! The client sees only tokio's `AsyncRead + AsyncWrite` ([`Io`]). For TCP that is the
//! `TcpStream` as before, behind one box: no extra buffer and no extra copy, one indirect call
//! per poll.
//!
//! TLS and QUIC use the same rustls client configuration, built by
//! `roost_transport::quic::client_tls_config` from the `--ca` PEM: TLS 1.3, the ring provider,
//! no client certificate. For TLS its ALPN list is emptied (MQTT over TLS needs none, and the
//! broker's TLS listener ignores one); QUIC keeps ALPN `mqtt`, which RFC 9001 requires.
//!
//! Why one QUIC endpoint per connection: `roost_transport::quic::connect` binds its own client
//! endpoint on every call and offers no way to pass one in, and this crate does not change that
//! one. It also makes every QUIC connection a separate UDP 4-tuple, as devices are. The
//! returned `Endpoint` handle is dropped at once: quinn 0.11's endpoint driver keeps running
//! while the endpoint has connections (`EndpointDriver::poll` stops only when no handle *and*
//! no connection is left), so the connection lives as long as its stream.
//!
//! The price is paid here, not in the broker: each endpoint is a UDP socket, a driver task and
//! quinn's receive buffer. 5,000 of them took this process to 6.2 GiB peak RSS and 41 s of
//! system CPU, and the QUIC ramp took 2 to 2.7 times as long as with one shared endpoint
//! (an experiment with quinn used directly; benches/results/2026-12-01-transports.md). Hence
//! the idle scenario's bound of 5,000 QUIC connections. A `connect` that takes an existing
//! endpoint in `roost_transport::quic` would let all clients share one.

use crate::target::UsageError;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// The byte stream a [`crate::client::Client`] runs MQTT over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TransportKind {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS over TCP (needs --ca).
    Tls,
    /// MQTT over QUIC, one bidirectional stream, ALPN "mqtt" (needs --ca).
    Quic,
}

impl TransportKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Quic => "quic",
        }
    }
}

/// Transport options every scenario takes (flattened into [`crate::Common`]).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TransportArgs {
    /// How to reach the broker: tcp, tls (MQTT over TLS) or quic (MQTT over QUIC, UDP). --host
    /// must name the matching listener.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub(crate) transport: TransportKind,
    /// PEM file of the CA(s) that sign the broker's certificate (tls and quic).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Name the broker's certificate must carry (tls and quic; SNI and verification).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub(crate) server_name: String,
}

impl TransportArgs {
    /// Checks the options and loads the CA: a [`Dialer`] for the whole run.
    pub(crate) fn dialer(&self) -> Result<Dialer> {
        let ca = match (self.transport, &self.ca) {
            (TransportKind::Tcp, None) => return Ok(Dialer::Tcp),
            (TransportKind::Tcp, Some(_)) => {
                return Err(
                    UsageError("--ca applies to --transport tls and quic, not tcp".into()).into(),
                )
            }
            (kind, None) => {
                return Err(UsageError(format!(
                    "--transport {} needs --ca FILE (the PEM CA that signs the broker's \
                     certificate)",
                    kind.name()
                ))
                .into())
            }
            (_, Some(ca)) => ca,
        };
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
        let mut config = roost_transport::quic::client_tls_config(&pem, None)
            .with_context(|| format!("--ca {}", ca.display()))?;
        let server_name = ServerName::try_from(self.server_name.clone()).map_err(|e| {
            UsageError(format!(
                "--server-name {:?} is not a DNS name or IP address: {e}",
                self.server_name
            ))
        })?;
        if self.transport == TransportKind::Tls {
            config.alpn_protocols.clear();
            return Ok(Dialer::Tls {
                connector: TlsConnector::from(Arc::new(config)),
                server_name,
            });
        }
        Ok(Dialer::Quic {
            config: Arc::new(config),
            server_name: Arc::from(self.server_name.as_str()),
        })
    }
}

/// Opens byte streams to the broker with one transport; cloned into every connection task.
#[derive(Clone)]
pub(crate) enum Dialer {
    Tcp,
    Tls {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
    Quic {
        /// quinn takes the configuration by value; each connection clones it (a few `Arc`s and
        /// the ALPN list).
        config: Arc<ClientConfig>,
        server_name: Arc<str>,
    },
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().name())
    }
}

impl Dialer {
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Dialer::Tcp => TransportKind::Tcp,
            Dialer::Tls { .. } => TransportKind::Tls,
            Dialer::Quic { .. } => TransportKind::Quic,
        }
    }

    /// Connects to `addr` and completes the transport's handshake (TCP: none; TLS: the TLS
    /// handshake; QUIC: the QUIC handshake and opening the stream). Not bounded in time: the
    /// caller bounds it together with CONNECT/CONNACK.
    pub(crate) async fn dial(&self, addr: SocketAddr) -> Result<Box<dyn Io>> {
        match self {
            Dialer::Tcp => Ok(Box::new(tcp(addr).await?)),
            Dialer::Tls {
                connector,
                server_name,
            } => {
                let tcp = tcp(addr).await?;
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {addr} failed"))?;
                Ok(Box::new(tls))
            }
            Dialer::Quic {
                config,
                server_name,
            } => {
                let (_endpoint, stream) =
                    roost_transport::quic::connect(addr, server_name, ClientConfig::clone(config))
                        .await
                        .with_context(|| format!("QUIC connection to {addr} failed"))?;
                Ok(Box::new(stream))
            }
        }
    }
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A node with TLS and QUIC listeners and certificates made for the test (rcgen), for the
/// tests of this crate.
#[cfg(test)]
pub(crate) mod test_node {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use roost_node::config::{ListenerConfig, ListenerKind};
    use roost_testkit::TestNode;

    /// A running node, its TLS and QUIC addresses, and the CA file that signs its certificate.
    pub(crate) struct SecureNode {
        pub(crate) node: TestNode,
        pub(crate) tls: SocketAddr,
        pub(crate) quic: SocketAddr,
        pub(crate) dir: tempfile::TempDir,
    }

    impl SecureNode {
        pub(crate) async fn start() -> Result<SecureNode> {
            let dir = tempfile::tempdir()?;
            let mut ca = CertificateParams::new(Vec::<String>::new())?;
            ca.distinguished_name
                .push(DnType::CommonName, "loadgen test CA");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca.self_signed(&ca_key)?;
            let issuer = Issuer::new(ca, ca_key);
            let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
            leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate()?;
            let cert = leaf.signed_by(&key, &issuer)?;
            let d = dir.path();
            std::fs::write(d.join("ca.pem"), ca_cert.pem())?;
            std::fs::write(d.join("server.pem"), cert.pem())?;
            std::fs::write(d.join("server.key"), key.serialize_pem())?;
            let listener = |kind, name: &str| {
                let mut l = ListenerConfig::new(kind, SocketAddr::from(([127, 0, 0, 1], 0)));
                l.name = Some(name.to_owned());
                l.cert = Some(d.join("server.pem"));
                l.key = Some(d.join("server.key"));
                l
            };
            let tls = listener(ListenerKind::Tls, "tls");
            let quic = listener(ListenerKind::Quic, "quic");
            let node = TestNode::start_with(|c| c.listeners.extend([tls, quic])).await?;
            let addr = |name: &str| {
                node.node()
                    .listener_addrs()
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, a)| *a)
                    .with_context(|| format!("no {name} listener"))
            };
            let (tls, quic) = (addr("tls")?, addr("quic")?);
            Ok(SecureNode {
                node,
                tls,
                quic,
                dir,
            })
        }

        /// The transport options a scenario would get for `kind` against this node.
        pub(crate) fn args(&self, kind: TransportKind) -> TransportArgs {
            TransportArgs {
                transport: kind,
                ca: (kind != TransportKind::Tcp).then(|| self.dir.path().join("ca.pem")),
                server_name: "localhost".to_owned(),
            }
        }

        /// The address of `kind`'s listener.
        pub(crate) fn addr(&self, kind: TransportKind) -> SocketAddr {
            match kind {
                TransportKind::Tcp => self.node.addr(),
                TransportKind::Tls => self.tls,
                TransportKind::Quic => self.quic,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(transport: TransportKind, ca: Option<&str>) -> TransportArgs {
        TransportArgs {
            transport,
            ca: ca.map(PathBuf::from),
            server_name: "localhost".to_owned(),
        }
    }

    fn usage_error(r: Result<Dialer>) -> String {
        let e = r.expect_err("refused");
        match e.downcast_ref::<UsageError>() {
            Some(u) => u.0.clone(),
            None => panic!("not a usage error: {e:#}"),
        }
    }

    #[test]
    fn tcp_needs_no_ca_and_takes_none() {
        assert_eq!(
            args(TransportKind::Tcp, None)
                .dialer()
                .expect("tcp dialer")
                .kind(),
            TransportKind::Tcp
        );
        let e = usage_error(args(TransportKind::Tcp, Some("ca.pem")).dialer());
        assert!(e.contains("not tcp"), "{e}");
    }

    #[test]
    fn tls_and_quic_need_a_ca() {
        for kind in [TransportKind::Tls, TransportKind::Quic] {
            let e = usage_error(args(kind, None).dialer());
            assert!(e.contains("needs --ca"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_wrong_server_name_fails_the_tls_and_quic_handshakes() -> Result<()> {
        let node = test_node::SecureNode::start().await?;
        for kind in [TransportKind::Tls, TransportKind::Quic] {
            let mut a = node.args(kind);
            a.server_name = "not-the-broker.example".to_owned();
            let Err(e) = a.dialer()?.dial(node.addr(kind)).await else {
                panic!("{} accepted a certificate for another name", kind.name());
            };
            assert!(format!("{e:#}").contains("failed"), "{e:#}");
        }
        node.node.stop().await;
        Ok(())
    }
}
