#![allow(clippy::unwrap_used)]
//! The admin HTTP API over TLS (issue 9: `http.tls_cert`, `http.tls_key`): a node serving
//! HTTPS answers `/healthz` through a real TLS client (tokio-rustls, trusting a CA made here with
//! `roost_testkit::pki`) and refuses plain HTTP; `POST /api/v1/reload` picks up a new certificate and keeps the
//! old one when the new files do not load; a bad file stops the start naming its key; a stop
//! closes idle connections.

use roost_node::{Config, Node};
use roost_testkit::pki::{PkiDir, Usage};
use roost_testkit::{http_with, TestNode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The node's certificate and key in the test's [`PkiDir`].
const CERT: &str = "admin.pem";
const KEY: &str = "admin.key";

fn pki() -> PkiDir {
    PkiDir::new("admin HTTPS test CA")
}

/// Writes a new server certificate (SAN localhost) to [`CERT`] / [`KEY`]; returns its DER, to
/// recognise it in a handshake.
fn write_server_cert(pki: &PkiDir) -> CertificateDer<'static> {
    let files = pki.write_leaf("admin", "roost admin", &["localhost"], Usage::Server);
    CertificateDer::from(files.leaf.der)
}

/// A TLS client trusting the test CA, offering ALPN `http/1.1`.
fn client(pki: &PkiDir) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca.der.clone())).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn start(pki: &PkiDir) -> TestNode {
    let (cert, key) = (pki.path(CERT), pki.path(KEY));
    TestNode::start_with(|c| {
        c.http.tls_cert = Some(cert);
        c.http.tls_key = Some(key);
    })
    .await
    .unwrap()
}

async fn connect(pki: &PkiDir, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    client(pki).connect(name, tcp).await.unwrap()
}

/// One request on a new HTTPS connection (`Connection: close`); the status line and the body.
async fn request(pki: &PkiDir, addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut tls = connect(pki, addr).await;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    // A peer that closes without close_notify is an UnexpectedEof; what came before is whole.
    if let Ok(Err(e)) = &read {
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
    assert!(read.is_ok(), "no complete response within 10 s");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, body.to_owned())
}

/// The certificate the node presents in a new handshake.
async fn served_cert(pki: &PkiDir, addr: SocketAddr) -> CertificateDer<'static> {
    let tls = connect(pki, addr).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn healthz_over_https_and_plain_http_is_refused() {
    let pki = pki();
    write_server_cert(&pki);
    let node = start(&pki).await;
    let addr = node.http_addr().unwrap();

    let (status, body) = request(&pki, addr, "GET", "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, _) = request(&pki, addr, "GET", "/readyz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let tls = connect(&pki, addr).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // Plain HTTP on the same port gets no HTTP answer.
    let plain = http_with(addr, "GET", "/healthz", None, &[]).await;
    assert!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status)
    );
    // And the listener goes on serving HTTPS.
    let (status, _) = request(&pki, addr, "GET", "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn reload_picks_up_a_new_certificate() {
    let pki = pki();
    let first = write_server_cert(&pki);
    let node = start(&pki).await;
    let addr = node.http_addr().unwrap();
    assert_eq!(served_cert(&pki, addr).await, first);

    // A connection opened before the reload keeps working after it.
    let mut old = connect(&pki, addr).await;

    let second = write_server_cert(&pki);
    assert_ne!(first, second);
    let (status, body) = request(&pki, addr, "POST", "/api/v1/reload").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.contains(r#""what":"http.tls_cert""#) && body.contains(r#""reloaded":true"#),
        "{body}"
    );
    assert_eq!(served_cert(&pki, addr).await, second);

    old.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = old.read_to_end(&mut raw).await;
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200 OK"),
        "{raw:?}"
    );

    // A key that does not load: 500 naming the file, and the second certificate stays.
    pki.write(KEY, "not a key");
    let (status, body) = request(&pki, addr, "POST", "/api/v1/reload").await;
    assert!(status.starts_with("HTTP/1.1 500"), "{status} {body}");
    assert!(
        body.contains("http.tls_cert") && body.contains("admin.key"),
        "{body}"
    );
    assert_eq!(served_cert(&pki, addr).await, second);
}

#[tokio::test]
async fn bad_files_stop_the_start_naming_the_key() {
    let pki = pki();
    write_server_cert(&pki);
    let dir = tempfile::tempdir().unwrap();
    let config = |cert: PathBuf, key: PathBuf| {
        let mut c = Config::default();
        c.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.cluster.listen = "127.0.0.1:0".parse().unwrap();
        c.node.data_dir = dir.path().to_path_buf();
        c.http.tls_cert = Some(cert);
        c.http.tls_key = Some(key);
        c
    };

    let missing = pki.path("missing.pem");
    let e = Node::start(config(missing, pki.path(KEY)), None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("invalid config: http.tls_cert = "), "{e}");
    assert!(e.contains("missing.pem"), "{e}");

    let bad_key = pki.write("bad.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n");
    let e = Node::start(config(pki.path(CERT), bad_key), None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("invalid config: http.tls_key = "), "{e}");
    assert!(e.contains("bad.key"), "{e}");

    // A key that is not the certificate's.
    // A valid key, but not the certificate's.
    let unrelated = pki.ca.leaf("other", &[], Usage::Server).key_pem;
    let other = pki.write("other.key", unrelated);
    let e = Node::start(config(pki.path(CERT), other), None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("invalid config: http.tls_key = "), "{e}");
}

#[tokio::test]
async fn stop_closes_idle_connections_and_stops_accepting() {
    let pki = pki();
    write_server_cert(&pki);
    let node = start(&pki).await;
    let addr = node.http_addr().unwrap();

    // A keep-alive connection, idle after one request.
    let mut idle = connect(&pki, addr).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));

    tokio::time::timeout(Duration::from_secs(30), node.stop())
        .await
        .unwrap();
    // The idle connection is closed (EOF, or an error for a close without close_notify) ...
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // ... and nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}
