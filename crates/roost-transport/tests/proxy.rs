#![allow(clippy::unwrap_used)]
//! PROXY protocol headers on real sockets: the address is read, and exactly the header is
//! consumed (what follows stays for the next layer).

use roost_transport::proxy::{read_header, ProxyError};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn serve(bytes: Vec<u8>, split: bool) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        if split {
            for chunk in bytes.chunks(5) {
                c.write_all(chunk).await.unwrap();
                c.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        } else {
            c.write_all(&bytes).await.unwrap();
        }
        c.shutdown().await.unwrap();
        c
    });
    let (mut s, _) = l.accept().await.unwrap();
    let r = read_header(&mut s).await;
    let mut rest = Vec::new();
    if r.is_ok() {
        s.read_to_end(&mut rest).await.unwrap();
    }
    drop(client.await.unwrap());
    (r, rest)
}

#[tokio::test]
async fn a_v1_header_gives_the_client_address_and_leaves_the_rest() {
    for split in [false, true] {
        let mut b = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n".to_vec();
        b.extend_from_slice(b"\x10\x0cMQTT");
        let (r, rest) = serve(b, split).await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(rest, b"\x10\x0cMQTT");
    }
    let (r, _) = serve(
        b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8883\r\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(r.unwrap(), Some("[2001:db8::1]:4000".parse().unwrap()));
    let (r, _) = serve(b"PROXY UNKNOWN\r\n".to_vec(), false).await;
    assert_eq!(r.unwrap(), None);
}

#[tokio::test]
async fn a_v2_header_gives_the_client_address_and_leaves_the_rest() {
    let addrs: (SocketAddr, SocketAddr) = (
        "198.51.100.9:40000".parse().unwrap(),
        "10.0.0.1:8883".parse().unwrap(),
    );
    let mut b = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addrs,
    )
    .build()
    .unwrap();
    b.extend_from_slice(b"\x16\x03\x01 tls hello");
    let (r, rest) = serve(b, true).await;
    assert_eq!(r.unwrap(), Some(addrs.0));
    assert_eq!(rest, b"\x16\x03\x01 tls hello");
}

#[tokio::test]
async fn a_connection_without_a_header_is_refused() {
    let (r, _) = serve(
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00".to_vec(),
        false,
    )
    .await;
    assert!(matches!(r, Err(ProxyError::Invalid(_))), "{r:?}");
    let (r, _) = serve(b"PROXY TCP4 not an address\r\n".to_vec(), false).await;
    assert!(matches!(r, Err(ProxyError::Invalid(_))), "{r:?}");
}
