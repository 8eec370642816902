#![allow(clippy::unwrap_used)]
//! MQTT over QUIC: the server's `QuicStream` (through the `ByteStream` calls the driver makes)
//! against our own QUIC client, over real UDP sockets on 127.0.0.1. Certificates are made here
//! (rcgen), never checked in.

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use roost_transport::quic::{self, DEFAULT_IDLE_TIMEOUT};
use roost_transport::{ByteStream, ClientAuth, QuicError, QuicListener, QuicStream, TlsSettings};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every test is bounded: a hang is a failure, not a stuck CI run.
const LIMIT: Duration = Duration::from_secs(60);

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, sans: &[&str], client: bool) -> (String, String) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A directory removed on drop (no extra crate for it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

struct Setup {
    _dir: TempDir,
    ca: Ca,
    listener: QuicListener,
    addr: SocketAddr,
}

/// A listener on 127.0.0.1 (a free UDP port) with a server certificate for "localhost".
fn setup(client_auth: ClientAuth) -> Setup {
    let dir = std::env::temp_dir().join(format!(
        "roost-transport-quic-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca("Test CA");
    let (cert, key) = leaf(&ca, "server", &["localhost"], false);
    let settings = TlsSettings {
        cert: write(&dir, "server.pem", &cert),
        key: write(&dir, "server.key", &key),
        client_ca: (client_auth != ClientAuth::None).then(|| write(&dir, "ca.pem", &ca.pem)),
        client_auth,
    };
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        settings,
        DEFAULT_IDLE_TIMEOUT,
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    Setup {
        _dir: TempDir(dir),
        ca,
        listener,
        addr,
    }
}

/// The next connection's handshake, on the server.
async fn accept(l: &QuicListener) -> Result<QuicStream, QuicError> {
    l.accept().await.unwrap().handshake().await
}

/// Echoes everything until the client finishes its stream, through the calls the driver makes
/// (readable / try_read_buf, try_write / writable, pending_output / try_flush); returns how
/// often a write had to wait.
async fn echo(s: &mut QuicStream) -> usize {
    let mut buf = BytesMut::new();
    let mut would_block = 0;
    loop {
        s.readable().await.unwrap();
        if buf.capacity() - buf.len() == 0 {
            buf.reserve(16 * 1024);
        }
        match s.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("read: {e}"),
        }
        let mut off = 0;
        while off < buf.len() {
            match s.try_write(&buf[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    would_block += 1;
                    s.writable().await.unwrap();
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        buf.clear();
    }
    while s.pending_output() {
        match s.try_flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable().await.unwrap(),
            Err(e) => panic!("flush: {e}"),
        }
    }
    would_block
}

#[tokio::test]
async fn two_megabytes_echo_through_a_slow_reader_without_loss() {
    tokio::time::timeout(LIMIT, async {
        let Setup {
            _dir,
            ca,
            listener,
            addr,
        } = setup(ClientAuth::None);
        let server = tokio::spawn(async move {
            let mut t = accept(&listener).await.unwrap();
            let would_block = echo(&mut t).await;
            t.shutdown().await.unwrap();
            would_block
        });

        let tls = quic::client_tls_config(ca.pem.as_bytes(), None).unwrap();
        let (_endpoint, stream) = quic::connect(addr, "localhost", tls).await.unwrap();
        let (_conn, mut send, mut recv) = stream.into_split();
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            send.write_all(&sent).await.unwrap();
            send.finish().unwrap();
            send
        });
        // Read slowly: 4 KiB, then a pause, so the server's windows fill and it must wait.
        let mut got = Vec::with_capacity(data.len());
        let mut chunk = vec![0u8; 4096];
        while let Some(n) = recv.read(&mut chunk).await.unwrap() {
            got.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _send = writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "echoed bytes differ");
        let would_block = server.await.unwrap();
        assert!(
            would_block > 0,
            "the server's try_write never said WouldBlock"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_finished_stream_reads_as_end_of_stream_after_its_bytes() {
    tokio::time::timeout(LIMIT, async {
        let s = setup(ClientAuth::None);
        let tls = quic::client_tls_config(s.ca.pem.as_bytes(), None).unwrap();
        let client = tokio::spawn(async move {
            let (endpoint, mut c) = quic::connect(s.addr, "localhost", tls).await.unwrap();
            c.write_all(b"hello, broker").await.unwrap();
            c.shutdown().await.unwrap(); // finishes the send side
                                         // The server's answer, then its end of the stream.
            let mut answer = Vec::new();
            c.read_to_end(&mut answer).await.unwrap();
            endpoint.wait_idle().await;
            answer
        });
        let mut t = accept(&s.listener).await.unwrap();
        assert_eq!(t.remote_address().ip(), s.addr.ip());
        assert!(t.peer_cert().is_none());
        // A tiny buffer: a chunk is handed out over several reads. `readable()` is cancelled
        // often on the way (as a `select!` would): nothing may be lost.
        let mut got = Vec::new();
        let mut buf = BytesMut::with_capacity(3);
        loop {
            if tokio::time::timeout(Duration::from_micros(50), t.readable())
                .await
                .is_err()
            {
                continue;
            }
            match t.try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    got.extend_from_slice(&buf);
                    buf.clear();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(got, b"hello, broker");
        // The end stays the end.
        assert_eq!(t.try_read_buf(&mut buf).unwrap(), 0);
        assert_eq!(t.try_write(b"bye").unwrap(), 3);
        t.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), b"bye");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_offering_another_alpn_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let s = setup(ClientAuth::None);
        let mut tls = quic::client_tls_config(s.ca.pem.as_bytes(), None).unwrap();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let client = tokio::spawn(async move { quic::connect(s.addr, "localhost", tls).await });
        let e = accept(&s.listener).await.unwrap_err();
        assert_eq!(e.label(), "tls", "{e}");
        let e = client.await.unwrap().unwrap_err();
        // TLS alert 120, no_application_protocol (RFC 7301 §3.2).
        assert_eq!(e.label(), "tls", "{e}");
        assert!(e.to_string().contains("error 120"), "{e}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn client_certificates_name_the_client_and_are_required_when_configured() {
    tokio::time::timeout(LIMIT, async {
        let s = setup(ClientAuth::Required);

        // From the CA: accepted, identity read.
        let (cert, key) = leaf(&s.ca, "sensor-9", &["sensor-9.devices.example"], true);
        let tls =
            quic::client_tls_config(s.ca.pem.as_bytes(), Some((cert.as_bytes(), key.as_bytes())))
                .unwrap();
        let addr = s.addr;
        let client = tokio::spawn(async move {
            let (endpoint, mut c) = quic::connect(addr, "localhost", tls).await.unwrap();
            c.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            // The server closes after the check; the read only ends.
            let _ = c.read(&mut b).await;
            endpoint
        });
        let mut t = accept(&s.listener).await.unwrap();
        let id = t.peer_cert().unwrap();
        assert_eq!(id.cn.as_deref(), Some("sensor-9"));
        assert_eq!(id.sans, vec!["sensor-9.devices.example".to_string()]);
        t.shutdown().await.unwrap();
        client.await.unwrap();

        // Without a certificate: the server fails the handshake; the client cannot talk.
        let tls = quic::client_tls_config(s.ca.pem.as_bytes(), None).unwrap();
        let client = tokio::spawn(async move {
            let (_endpoint, mut c) = quic::connect(addr, "localhost", tls)
                .await
                .map_err(io::Error::other)?;
            // TLS 1.3: the client may think the handshake done before the server has checked.
            c.write_all(b"x").await?;
            let mut b = [0u8; 1];
            match c.read(&mut b).await? {
                0 => Err(io::Error::other("ended")),
                _ => Ok(()),
            }
        });
        let e = accept(&s.listener).await.unwrap_err();
        assert_eq!(e.label(), "tls", "{e}");
        assert!(
            client.await.unwrap().is_err(),
            "a client without a certificate got through"
        );
    })
    .await
    .unwrap();
}
