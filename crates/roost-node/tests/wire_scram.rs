#![allow(clippy::unwrap_used)]
//! SCRAM-SHA-256 as MQTT 5 enhanced authentication (issue 9): CONNECT with the client-first
//! message, AUTH 0x18 both ways, CONNACK with the server's signature; wrong passwords, unknown
//! users and methods the node does not run are refused.

use bytes::Bytes;
use roost_codec::{Auth, Packet, Properties, Protocol, ReasonCode};
use roost_node::passwords::PasswordFile;
use roost_node::scram::{client, METHOD};
use roost_testkit::{connect_v5, RawClient, TestNode};

async fn node_with_users(dir: &std::path::Path) -> TestNode {
    let mut file = PasswordFile::new();
    file.set("sensor", b"correct horse").unwrap();
    file.set_scram("sensor", b"correct horse").unwrap();
    file.set("plain-only", b"battery").unwrap();
    let path = dir.join("passwords");
    file.save_atomically(&path).unwrap();
    TestNode::start_with(|c| {
        c.mqtt.allow_anonymous = false;
        c.auth.password_file = Some(path);
    })
    .await
    .unwrap()
}

/// Runs the exchange; returns the CONNACK's reason and properties.
async fn scram_connect(
    node: &TestNode,
    user: &str,
    password: &[u8],
) -> (ReasonCode, Properties, Option<Vec<u8>>, RawClient) {
    let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    let props = Properties {
        authentication_method: Some(METHOD.into()),
        authentication_data: Some(Bytes::from(format!("n,,{bare}"))),
        ..Properties::default()
    };
    c.send(&Packet::Connect(Box::new(connect_v5(
        "scram-client",
        true,
        props,
    ))))
    .await
    .unwrap();
    let first = match c.recv().await.unwrap() {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
            String::from_utf8(a.properties.authentication_data.unwrap().to_vec()).unwrap()
        }
        Some(Packet::ConnAck(ack)) => return (ack.reason_code, ack.properties, None, c),
        other => panic!("expected AUTH, got {other:?}"),
    };
    let (fin, expected) = client::client_final(password, &bare, &first).unwrap();
    c.send(&Packet::Auth(Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some(METHOD.into()),
            authentication_data: Some(Bytes::from(fin)),
            ..Properties::default()
        },
    }))
    .await
    .unwrap();
    match c.recv().await.unwrap() {
        Some(Packet::ConnAck(ack)) => (ack.reason_code, ack.properties, Some(expected), c),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn scram_sha_256_authenticates_without_sending_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path()).await;
    let (rc, props, expected, _client) = scram_connect(&node, "sensor", b"correct horse").await;
    assert_eq!(rc, ReasonCode::SUCCESS);
    assert_eq!(props.authentication_method.as_deref(), Some(METHOD));
    // The server proved it knows the credentials too.
    assert_eq!(
        props.authentication_data.map(|d| d.to_vec()),
        expected,
        "server-final message"
    );
    let clients = roost_testkit::admin::http(&node, "GET", "/api/v1/clients", None)
        .await
        .json();
    let me = &clients.as_array().unwrap()[0];
    assert_eq!(
        (me["username"].as_str(), me["auth"].as_str()),
        (Some("sensor"), Some("scram"))
    );
    node.stop().await;
}

#[tokio::test]
async fn wrong_passwords_unknown_users_and_other_methods_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path()).await;
    let (rc, _, _, _) = scram_connect(&node, "sensor", b"wrong").await;
    assert_eq!(rc, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // No SCRAM credentials, or no such user: the same answer, after the same exchange.
    let (rc, _, _, _) = scram_connect(&node, "plain-only", b"battery").await;
    assert_eq!(rc, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let (rc, _, _, _) = scram_connect(&node, "nobody", b"x").await;
    assert_eq!(rc, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // A method the node does not run.
    let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let props = Properties {
        authentication_method: Some("SCRAM-SHA-1".into()),
        ..Properties::default()
    };
    let ack = c.handshake(connect_v5("m", true, props)).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    // A malformed client-first message.
    let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let props = Properties {
        authentication_method: Some(METHOD.into()),
        authentication_data: Some(Bytes::from_static(b"p=tls-unique,,n=x,r=y")),
        ..Properties::default()
    };
    let ack = c.handshake(connect_v5("m", true, props)).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    node.stop().await;
}

/// A client in the middle of a SCRAM exchange (CONNECT read, AUTH challenge sent, the reply
/// not yet in) is still a socket the node owes an answer: it keeps its place among
/// `mqtt.max_pending_connections`, so a flood of half-finished exchanges is bounded like a
/// flood of half-sent CONNECTs. Before, the place was given back once the CONNECT was read.
#[tokio::test]
async fn a_client_mid_exchange_keeps_its_pending_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = PasswordFile::new();
    file.set("sensor", b"correct horse").unwrap();
    file.set_scram("sensor", b"correct horse").unwrap();
    let path = dir.path().join("passwords");
    file.save_atomically(&path).unwrap();
    let node = TestNode::start_with(|c| {
        c.mqtt.allow_anonymous = false;
        c.auth.password_file = Some(path);
        c.mqtt.max_pending_connections = 1;
        c.mqtt.connect_timeout_secs = 60;
    })
    .await
    .unwrap();
    let mut mid = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    let props = Properties {
        authentication_method: Some(METHOD.into()),
        authentication_data: Some(Bytes::from_static(
            b"n,,n=sensor,r=fyko+d2lbbFgONRv9qkxdawL",
        )),
        ..Properties::default()
    };
    mid.send(&Packet::Connect(Box::new(connect_v5("mid", true, props))))
        .await
        .unwrap();
    assert!(
        matches!(mid.recv().await.unwrap(), Some(Packet::Auth(_))),
        "expected the AUTH challenge"
    );
    // The only place is held by the exchange: the next socket is closed at accept.
    let mut next = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
    assert!(next.expect_closed().await.unwrap().is_empty());
    // The exchange ends (the client goes away): the place is free again.
    drop(mid);
    let mut served = false;
    for _ in 0..50 {
        let mut c = RawClient::open(node.addr(), Protocol::V5).await.unwrap();
        if let Ok(ack) = c
            .handshake(connect_v5("anon", true, Properties::default()))
            .await
        {
            // Anonymous is off: refused, but answered, so the socket had a place.
            assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "the place was not given back when the exchange ended"
    );
    node.stop().await;
}
