#![allow(clippy::unwrap_used)]
//! MQTT over QUIC end to end (issue 9): a node with a `quic` listener, our own QUIC client
//! (`roost_transport::quic::connect`) speaking MQTT through the test kit's raw client, a TCP
//! client on the other side. Certificates are made here (`roost_testkit::pki`).

use roost_codec::{Protocol, QoS, ReasonCode};
use roost_node::config::{ClientAuthMode, ListenerConfig, ListenerKind};
use roost_testkit::pki::{PkiDir, Usage};
use roost_testkit::{connect_packet, RawClient, TestNode};
use std::net::SocketAddr;

fn pki() -> PkiDir {
    PkiDir::new("QUIC test CA")
}

/// (cert PEM, key PEM) of a client certificate for `cn`.
fn client_identity(pki: &PkiDir, cn: &str) -> (String, String) {
    let l = pki.ca.leaf(cn, &[], Usage::Client);
    (l.cert_pem, l.key_pem)
}

/// A QUIC listener named `quic` on `127.0.0.1:0` with a server certificate for localhost,
/// client certificates optional (checked against the test CA).
fn listener(pki: &PkiDir) -> ListenerConfig {
    let server = pki.write_leaf("server", "roost", &["localhost"], Usage::Server);
    let mut l = ListenerConfig::new(ListenerKind::Quic, "127.0.0.1:0".parse().unwrap());
    l.name = Some("quic".into());
    l.cert = Some(server.cert);
    l.key = Some(server.key);
    l.client_ca = Some(pki.write("ca.pem", &pki.ca.pem));
    l.client_auth = Some(ClientAuthMode::Optional);
    l
}

fn quic_addr(node: &TestNode) -> SocketAddr {
    node.node()
        .listener_addrs()
        .iter()
        .find(|(name, _)| name == "quic")
        .unwrap()
        .1
}

async fn quic_client(
    pki: &PkiDir,
    addr: SocketAddr,
    identity: Option<(String, String)>,
) -> (quinn::Endpoint, RawClient) {
    let tls = roost_transport::quic::client_tls_config(
        pki.ca.pem.as_bytes(),
        identity.as_ref().map(|(c, k)| (c.as_bytes(), k.as_bytes())),
    )
    .unwrap();
    let (endpoint, stream) = roost_transport::quic::connect(addr, "localhost", tls)
        .await
        .unwrap();
    (endpoint, RawClient::over(stream, Protocol::V5))
}

#[tokio::test]
async fn mqtt_over_quic_reaches_tcp_clients_and_back() {
    let pki = pki();
    let listener = listener(&pki);
    let node = TestNode::start_with(|c| c.listeners.push(listener))
        .await
        .unwrap();
    let addr = quic_addr(&node);

    let (_ep, mut q) = quic_client(&pki, addr, None).await;
    let ack = q
        .handshake(connect_packet(Protocol::V5, "over-quic", true))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (suback, _) = q.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(suback.reason_codes, [ReasonCode::GRANTED_QOS_1]);

    let mut t = RawClient::connect(node.addr(), Protocol::V5, "over-tcp", true)
        .await
        .unwrap()
        .0;
    t.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    // 300 kB: many QUIC packets and more than one flow-control window update.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        t.publish("q/big", &big, QoS::AtLeastOnce, false)
            .await
            .unwrap(),
        ReasonCode::SUCCESS
    );
    let p = q.next_publish().await.unwrap();
    assert_eq!((p.topic.as_str(), p.payload.as_ref()), ("q/big", &big[..]));
    assert_eq!(
        q.publish("t/back", b"from quic", QoS::AtLeastOnce, false)
            .await
            .unwrap(),
        ReasonCode::SUCCESS
    );
    let p = t.next_publish().await.unwrap();
    assert_eq!(p.payload.as_ref(), b"from quic");
    q.disconnect().await.unwrap();
    node.stop().await;
}

#[tokio::test]
async fn a_quic_client_certificate_names_the_client() {
    let pki = pki();
    let listener = listener(&pki);
    let node = TestNode::start_with(|c| c.listeners.push(listener))
        .await
        .unwrap();
    let (_ep, mut q) = quic_client(
        &pki,
        quic_addr(&node),
        Some(client_identity(&pki, "meter-17")),
    )
    .await;
    let ack = q
        .handshake(connect_packet(Protocol::V5, "meter-17", true))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let clients = roost_testkit::admin::http(&node, "GET", "/api/v1/clients", None)
        .await
        .json();
    let me = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "meter-17")
        .unwrap();
    assert_eq!(me["username"], "meter-17");
    assert_eq!(me["auth"], "certificate");
    assert_eq!(me["transport"], "quic");
    node.stop().await;
}
