//! TLS over TCP with rustls, driven by hand over the socket's readiness (RFC 0007, option 2).
//!
//! `rustls::ServerConnection` is a state machine without I/O: encrypted bytes go in with
//! `read_tls`, `process_new_packets` decrypts them, plaintext comes out of `reader()`; plaintext
//! goes in through `writer()` and encrypted bytes come out with `write_tls`. [`TlsStream`] feeds
//! it from the `TcpStream`'s non-blocking `try_read`/`try_write`, so rustls' own buffers are the
//! only ones a TLS connection has beyond a TCP one, and the driver above keeps its
//! no-buffer-when-idle property.
//!
//! Certificates: PEM files, re-read by [`TlsAcceptor::reload`] (SIGHUP, the admin API). A
//! reload that fails keeps the old certificate and says why; connections already open keep the
//! configuration they were accepted with.
//!
//! Client certificates ([`ClientAuth`]): verified against the configured CA bundle (chain,
//! validity period, key usage) during the handshake by rustls' WebPKI verifier; the broker reads
//! the identity from the verified leaf ([`PeerCert`]).

use crate::{read_into, ByteStream};
use bytes::BytesMut;
use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Encrypted bytes rustls may hold for the socket (`ServerConnection::set_buffer_limit`): the
/// driver encodes at most 64 KiB at a time and waits until it is written, so this bounds what a
/// client that does not read costs in TLS buffers too.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for and verified if sent; clients without one are accepted (and
    /// authenticate otherwise, or not at all).
    Optional,
    /// A handshake without a certificate from the CA bundle fails.
    Required,
}

/// Where a TLS listener's certificate, key and client CA bundle are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs that sign client certificates (required unless `client_auth` is
    /// [`ClientAuth::None`]).
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are asked for.
    pub client_auth: ClientAuth,
}

/// A TLS configuration that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("{0}")]
    Rustls(String),
}

fn file_error(path: &Path, what: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError::File {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl TlsSettings {
    /// Reads the files and builds the rustls configuration (TLS 1.3 and 1.2, ring provider).
    pub fn load(&self) -> Result<ServerConfig, TlsConfigError> {
        self.load_with(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    /// As [`TlsSettings::load`], TLS 1.3 only: what QUIC requires (RFC 9001 §4.2). Used by the
    /// QUIC listener (`quic.rs`), which adds its ALPN.
    pub fn load_tls13(&self) -> Result<ServerConfig, TlsConfigError> {
        self.load_with(&[&rustls::version::TLS13])
    }

    fn load_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<ServerConfig, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let builder = match (self.client_auth, &self.client_ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(TlsConfigError::Rustls(
                    "client certificates are asked for but no client CA bundle is set".into(),
                ))
            }
            (auth, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file_error(ca, format!("client CA bundle: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = load_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| file_error(&self.key, e))?;
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| file_error(&self.key, format!("does not fit the certificate: {e}")))?;
        // MQTT needs no ALPN on TLS listeners; clients that send one (AWS IoT's
        // "x-amzn-mqtt-ca", "mqtt") are accepted without it.
        config.alpn_protocols = Vec::new();
        Ok(config)
    }
}

/// Accepts TLS connections with the listener's current certificate.
pub struct TlsAcceptor {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads the certificate and key; the error names the file.
    pub fn new(settings: TlsSettings) -> Result<TlsAcceptor, TlsConfigError> {
        let config = settings.load()?;
        Ok(TlsAcceptor {
            settings,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the files. On error the old configuration stays in use. New handshakes use the
    /// new one; open connections keep theirs.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let config = self.settings.load()?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// The files this acceptor reads.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Runs the server side of the handshake over `tcp`. Not bounded in time: the caller wraps
    /// it in its handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let config = Arc::clone(&self.current.read());
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        let mut stream = TlsStream {
            tcp,
            conn,
            eof: false,
            plaintext: false,
        };
        stream.handshake().await?;
        Ok(stream)
    }
}

/// `TcpStream`'s non-blocking calls as `std::io::Read`/`Write`, for rustls' `read_tls` and
/// `write_tls`.
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The identity in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject's common name, if it has one (and it is UTF-8).
    pub cn: Option<String>,
    /// DNS names, e-mail addresses and URIs among the subject alternative names.
    pub sans: Vec<String>,
    /// The serial number, lower-case hex without separators.
    pub serial: String,
}

impl PeerCert {
    /// Reads the identity fields of a DER certificate (already verified by rustls).
    pub fn from_der(der: &[u8]) -> Option<PeerCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                use x509_parser::extensions::GeneralName;
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        sans.push((*s).to_owned())
                    }
                    _ => {}
                }
            }
        }
        let serial = cert
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Some(PeerCert {
            cn,
            sans,
            serial: if serial.is_empty() {
                "00".into()
            } else {
                serial
            },
        })
    }
}

/// A TLS connection after its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ServerConnection,
    /// The TCP stream reached EOF (rustls may still hold plaintext).
    eof: bool,
    /// rustls holds decrypted bytes not read yet: the stream is readable without the socket.
    plaintext: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("version", &self.conn.protocol_version())
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            self.flush_all().await?;
            if !self.conn.is_handshaking() {
                break;
            }
            match self.conn.read_tls(&mut TryIo(&self.tcp)) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ))
                }
                Ok(_) => {
                    if let Err(e) = self.process() {
                        // Send the alert that says why (best effort), then fail.
                        let _ = self.conn.write_tls(&mut TryIo(&self.tcp));
                        return Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.readable().await?,
                Err(e) => return Err(e),
            }
        }
        // TLS 1.3 session tickets follow the handshake.
        self.flush_all().await
    }

    /// Decrypts what was read; a TLS error is `InvalidData`.
    fn process(&mut self) -> io::Result<()> {
        let state = self
            .conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.plaintext = state.plaintext_bytes_to_read() > 0 || state.peer_has_closed();
        Ok(())
    }

    /// The verified client certificate's identity, if the client sent one.
    pub fn peer_cert(&self) -> Option<PeerCert> {
        let leaf = self.conn.peer_certificates()?.first()?;
        PeerCert::from_der(leaf)
    }

    /// The negotiated protocol version, e.g. "TLSv1_3".
    pub fn version(&self) -> Option<String> {
        self.conn.protocol_version().map(|v| format!("{v:?}"))
    }

    /// The underlying socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl ByteStream for TlsStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plaintext || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match read_into(buf, |b| self.conn.reader().read(b)) {
                Ok(n) => {
                    // `n == 0` is close_notify. A full buffer may have left more behind.
                    self.plaintext = n > 0 && buf.len() == buf.capacity();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.plaintext = false,
                // TCP closed without close_notify: most MQTT clients just close, treat it as
                // the end of the stream (MQTT frames its own packets, truncation is visible).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.conn.read_tls(&mut TryIo(&self.tcp)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.process() {
                let _ = self.try_flush();
                return Err(e);
            }
            // Key updates and alerts rustls wants to answer: out now if the socket has room,
            // else on the driver's next flush (pending_output).
            match self.try_flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn writable(&mut self) -> io::Result<()> {
        self.tcp.writable().await
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Earlier bytes first: rustls' buffer is bounded, and its limit is what the socket
        // did not take.
        self.try_flush()?;
        let n = self.conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.try_flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(n)
    }

    fn pending_output(&self) -> bool {
        self.conn.wants_write()
    }

    fn try_flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut TryIo(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let _ = self.flush_all().await;
        AsyncWriteExt::shutdown(&mut self.tcp).await
    }
}
