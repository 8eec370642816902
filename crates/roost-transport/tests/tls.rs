#![allow(clippy::unwrap_used)]
//! The hand-driven TLS stream over real loopback sockets, against rustls' own client on a
//! blocking thread. Certificates are made here (rcgen), never checked in.

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use roost_transport::{ByteStream, ClientAuth, PeerCert, TlsAcceptor, TlsSettings, TlsStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
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
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf signed by `ca`: (cert PEM, key PEM, cert DER, key DER).
fn leaf(
    ca: &Ca,
    cn: &str,
    sans: &[&str],
    client: bool,
) -> (
    String,
    String,
    CertificateDer<'static>,
    PrivateKeyDer<'static>,
) {
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
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone(), key_der)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

struct Setup {
    _dir: tempdir::Dir,
    ca: Ca,
    acceptor: Arc<TlsAcceptor>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

mod tempdir {
    /// A directory removed on drop (no extra crate for it).
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn setup(client_auth: ClientAuth) -> Setup {
    let dir = std::env::temp_dir().join(format!(
        "roost-transport-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca("Test CA");
    let (cert, key, _, _) = leaf(&ca, "server", &["localhost"], false);
    let cert_path = write(&dir, "server.pem", &cert);
    let key_path = write(&dir, "server.key", &key);
    let ca_path = write(&dir, "ca.pem", &ca.pem);
    let acceptor = TlsAcceptor::new(TlsSettings {
        cert: cert_path.clone(),
        key: key_path.clone(),
        client_ca: (client_auth != ClientAuth::None).then_some(ca_path),
        client_auth,
    })
    .unwrap();
    Setup {
        _dir: tempdir::Dir(dir),
        ca,
        acceptor: Arc::new(acceptor),
        cert_path,
        key_path,
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

fn client_config(
    ca: &Ca,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Connects a blocking rustls client on a thread, runs `f` on the stream.
fn client<T: Send + 'static>(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    f: impl FnOnce(&mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>) -> T
        + Send
        + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        f(&mut s)
    })
}

async fn accept(l: &TcpListener, acceptor: &TlsAcceptor) -> io::Result<TlsStream> {
    let (tcp, _) = l.accept().await?;
    acceptor.accept(tcp).await
}

async fn read_exactly(s: &mut TlsStream, n: usize) -> Vec<u8> {
    let mut buf = BytesMut::new();
    while buf.len() < n {
        buf.reserve(4096);
        s.readable().await.unwrap();
        match s.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    buf.to_vec()
}

/// Writes all of `data`, waiting for the socket as the driver does.
async fn write_all(s: &mut TlsStream, data: &[u8]) -> usize {
    let mut off = 0;
    let mut would_block = 0;
    while off < data.len() || s.pending_output() {
        let r = if off < data.len() {
            s.try_write(&data[off..])
        } else {
            s.try_flush().map(|()| 0)
        };
        match r {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                would_block += 1;
                s.writable().await.unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    would_block
}

#[tokio::test]
async fn a_client_that_reads_slowly_gets_every_byte_and_buffers_stay_bounded() {
    let s = setup(ClientAuth::None);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let expect = data.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let c = client(addr, client_config(&s.ca, None), move |st| {
        st.write_all(b"ping").unwrap();
        st.flush().unwrap();
        // Do not read until the server has filled the socket and rustls' buffer.
        go_rx.recv().unwrap();
        let mut got = vec![0u8; expect.len()];
        st.read_exact(&mut got).unwrap();
        assert!(got == expect, "data differs");
    });
    let mut t = accept(&l, &s.acceptor).await.unwrap();
    assert_eq!(read_exactly(&mut t, 4).await, b"ping");
    // Fill until the transport says wait.
    let mut off = 0;
    loop {
        match t.try_write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(off < data.len(), "4 MB went out without the client reading");
    }
    assert!(t.pending_output(), "bytes wait in the transport");
    go_tx.send(()).unwrap();
    write_all(&mut t, &data[off..]).await;
    tokio::task::spawn_blocking(move || c.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn client_certificates_are_verified_and_name_the_client() {
    let s = setup(ClientAuth::Required);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();

    // From the CA: accepted, identity read.
    let (_, _, c, k) = leaf(&s.ca, "sensor-9", &["sensor-9.devices.example"], true);
    let h = client(addr, client_config(&s.ca, Some((c, k))), |st| {
        st.write_all(b"hi").unwrap();
        st.flush().unwrap();
    });
    let mut t = accept(&l, &s.acceptor).await.unwrap();
    assert_eq!(read_exactly(&mut t, 2).await, b"hi");
    let id: PeerCert = t.peer_cert().unwrap();
    assert_eq!(id.cn.as_deref(), Some("sensor-9"));
    assert_eq!(id.sans, vec!["sensor-9.devices.example".to_string()]);
    assert!(!id.serial.is_empty() && id.serial.chars().all(|c| c.is_ascii_hexdigit()));
    h.join().unwrap();

    // Without a certificate, or with one from another CA: the handshake fails.
    let other = ca("Other CA");
    let (_, _, c, k) = leaf(&other, "rogue", &[], true);
    for identity in [None, Some((c, k))] {
        let h = client(addr, client_config(&s.ca, identity), |st| {
            let _ = st.write_all(b"hi");
            let _ = st.flush();
            let mut b = [0u8; 1];
            let _ = st.read(&mut b);
        });
        let e = accept(&l, &s.acceptor).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        h.join().unwrap();
    }
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_keeps_the_old_on_a_bad_file() {
    let s = setup(ClientAuth::None);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = |cfg: Arc<rustls::ClientConfig>| {
        client(addr, cfg, |st| {
            st.write_all(b"x").unwrap();
            st.flush().unwrap();
            let der = st.conn.peer_certificates().unwrap()[0].clone();
            PeerCert::from_der(&der).unwrap().cn.unwrap()
        })
    };
    let h = served(client_config(&s.ca, None));
    let _t = accept(&l, &s.acceptor).await.unwrap();
    assert_eq!(h.join().unwrap(), "server");

    let (cert, key, _, _) = leaf(&s.ca, "server-renewed", &["localhost"], false);
    std::fs::write(&s.cert_path, cert).unwrap();
    std::fs::write(&s.key_path, key).unwrap();
    s.acceptor.reload().unwrap();
    let h = served(client_config(&s.ca, None));
    let _t = accept(&l, &s.acceptor).await.unwrap();
    assert_eq!(h.join().unwrap(), "server-renewed");

    std::fs::write(&s.key_path, "garbage").unwrap();
    let e = s.acceptor.reload().unwrap_err();
    assert!(e.to_string().contains("server.key"), "{e}");
    let h = served(client_config(&s.ca, None));
    let _t = accept(&l, &s.acceptor).await.unwrap();
    assert_eq!(h.join().unwrap(), "server-renewed");
}
