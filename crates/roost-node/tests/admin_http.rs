//! Wire tests of the admin HTTP API, through the test kit's HTTP/1.1 client
//! (`roost_testkit::http`): health, readiness, Prometheus metrics, clients (list, show, kick),
//! subscriptions, stats, and the log-level endpoints (501 in-process: no log subscriber is
//! installed by `TestNode`).
#![allow(clippy::unwrap_used)]

use roost_codec::{Properties, Protocol, QoS, ReasonCode, SubscriptionOptions};
use roost_testkit::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_readiness() {
    let node = TestNode::start().await.unwrap();
    let r = http(&node, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = http(&node, "GET", "/readyz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let r = http(&node, "GET", "/nope", None).await;
    assert_eq!(r.status, 404);
}

/// Issue 11: `/readyz` says which condition is missing; `/healthz` (liveness) stays 200 as long
/// as the process answers.
#[tokio::test]
async fn readiness_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let own = free_port().unwrap();
    let mut config = roost_node::Config::default();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = dir.path().to_path_buf();
    config.node.sys_interval_secs = 0;
    config.cluster.node_id = 2;
    config.cluster.listen = format!("127.0.0.1:{own}").parse().unwrap();
    // Listed in the seeds, whose initialiser (node 1) never starts: it waits to be added.
    config.cluster.seeds = vec![
        format!("1@127.0.0.1:{}", free_port().unwrap()),
        format!("2@127.0.0.1:{own}"),
    ];
    let node = roost_node::Node::start(config, None).await.unwrap();
    let addr = node.http_addr().unwrap();
    let r = http_at(addr, "GET", "/readyz", None).await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "not ready: not a voting member of the cluster (yet)\n")
    );
    let r = http_at(addr, "GET", "/healthz", None).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert!(!node.is_ready());
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_count_received_messages() {
    let node = TestNode::start().await.unwrap();
    let r = http(&node, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        r.body.contains("roost_mqtt_messages_received_total"),
        "{}",
        r.body
    );

    let received = metric(&node, "roost_mqtt_messages_received_total").await;
    let accepted = metric(&node, "roost_mqtt_connections_accepted_total").await;
    let mut c = connect_clean(node.addr(), Protocol::V5, "m").await;
    for _ in 0..3 {
        c.publish("m/t", b"x", QoS::AtLeastOnce, false)
            .await
            .unwrap();
    }
    assert!(metric(&node, "roost_mqtt_messages_received_total").await - received >= 3.0);
    assert!(metric(&node, "roost_mqtt_connections_accepted_total").await - accepted >= 1.0);
}

fn find<'a>(list: &'a Value, client_id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == client_id)
        .unwrap_or_else(|| panic!("{client_id} not in {list}"))
}

#[tokio::test]
async fn clients_lists_connected_and_offline_sessions() {
    let node = TestNode::start().await.unwrap();
    let _v5 = connect_clean(node.addr(), Protocol::V5, "c-v5").await;
    let _v3 = connect_clean(node.addr(), Protocol::V311, "c-v3").await;
    // An MQTT 3.1 client and a bridge (issue 9) say so too.
    let mut old = RawClient::open(node.addr(), Protocol::V311).await.unwrap();
    let variant = roost_codec::ConnectVariant {
        mqtt31: true,
        bridge: true,
    };
    let ack = old
        .handshake(roost_codec::Connect {
            variant,
            ..connect_packet(Protocol::V311, "c-31", true)
        })
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (off, _) = connect_persistent(node.addr(), Protocol::V5, "c-off").await;
    off.disconnect().await.unwrap();
    wait_connections(&node, 3).await;

    let r = http(&node, "GET", "/api/v1/clients", None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    let v5 = find(&list, "c-v5");
    assert_eq!(v5["connected"], true);
    assert_eq!(v5["protocol"], "5.0");
    assert_eq!(v5["keep_alive"], 60);
    assert!(v5["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let v3 = find(&list, "c-v3");
    assert_eq!(v3["connected"], true);
    assert_eq!(v3["protocol"], "3.1.1");
    assert_eq!(v3["bridge"], false);
    let old = find(&list, "c-31");
    assert_eq!(
        (&old["protocol"], &old["bridge"]),
        (&json!("3.1"), &json!(true))
    );
    let off = find(&list, "c-off");
    assert_eq!(off["connected"], false);
    assert_eq!(off["protocol"], Value::Null);
    assert_eq!(off["session_expiry_interval"], EXPIRY);

    let r = http(&node, "GET", "/api/v1/clients/c-v3", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["client_id"], "c-v3");
    let r = http(&node, "GET", "/api/v1/clients/nobody", None).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nobody"));
}

#[tokio::test]
async fn delete_client_disconnects_it_with_administrative_action() {
    let node = TestNode::start().await.unwrap();
    for protocol in BOTH {
        let id = format!("kick-{protocol:?}");
        let (mut c, _) = connect_persistent(node.addr(), protocol, &id).await;
        let r = http(&node, "DELETE", &format!("/api/v1/clients/{id}"), None).await;
        assert_eq!(r.status, 204, "{r:?}");
        assert!(r.body.is_empty());
        expect_disconnect(&mut c, ReasonCode::ADMINISTRATIVE_ACTION).await;
        wait_connections(&node, 0).await;
        // The session stays (expiry as usual); kicking it again: not connected.
        let r = http(&node, "DELETE", &format!("/api/v1/clients/{id}"), None).await;
        assert_eq!(r.status, 409, "{r:?}");
        let (_c, ack) = connect_persistent(node.addr(), protocol, &id).await;
        assert!(ack.session_present);
    }
    let r = http(&node, "DELETE", "/api/v1/clients/nobody", None).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn subscriptions_are_listed() {
    let node = TestNode::start().await.unwrap();
    let mut c = connect_clean(node.addr(), Protocol::V5, "s").await;
    let o = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: roost_codec::RetainHandling::SendIfNew,
    };
    let props = Properties {
        subscription_identifiers: vec![7],
        ..Properties::default()
    };
    c.subscribe_with("s/+", o, props).await.unwrap();
    c.subscribe("$share/g/s/t", QoS::ExactlyOnce).await.unwrap();

    let r = http(&node, "GET", "/api/v1/subscriptions", None).await;
    assert_eq!(r.status, 200);
    let list = r.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let plain = list.iter().find(|s| s["filter"] == "s/+").unwrap();
    assert_eq!(plain["client_id"], "s");
    assert_eq!(plain["qos"], 1);
    assert_eq!(plain["no_local"], true);
    assert_eq!(plain["retain_as_published"], true);
    assert_eq!(plain["retain_handling"], 1);
    assert_eq!(plain["identifier"], 7);
    let shared = list.iter().find(|s| s["filter"] == "$share/g/s/t").unwrap();
    assert_eq!(shared["qos"], 2);
    assert_eq!(shared["identifier"], Value::Null);
}

#[tokio::test]
async fn stats_reflect_the_node() {
    let node = TestNode::start().await.unwrap();
    let mut sub = connect_clean(node.addr(), Protocol::V5, "sub").await;
    sub.subscribe("st/#", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V311, "pub").await;
    publ.publish("st/a", b"1", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    publ.publish("st/b", b"2", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(collect(&mut sub, SILENCE).await.len(), 2);

    let r = http(&node, "GET", "/api/v1/stats", None).await;
    assert_eq!(r.status, 200);
    let s = r.json();
    // Per-node counters (not the process-wide Prometheus ones): exact.
    assert_eq!(s["connections"], 2, "{s}");
    assert_eq!(s["sessions"], 2);
    assert_eq!(s["subscriptions"], 1);
    assert_eq!(s["retained"], 1);
    assert_eq!(s["messages_received"], 2);
    assert_eq!(s["messages_sent"], 2);
    assert_eq!(s["messages_dropped"], 0);
    assert!(s["bytes_received"].as_u64().unwrap() > 0);
    assert!(s["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
}

/// One source per fact: every drop is counted once, and `$SYS`/stats and the Prometheus
/// registry read the same number (the registry is process-wide, so it is compared before and
/// after). A drop for a client's Maximum Packet Size used to be missing from the stats.
#[tokio::test]
async fn stats_and_metrics_read_the_same_counters() {
    let node = TestNode::start().await.unwrap();
    let too_large_before = metric(&node, "roost_session_too_large_dropped_total").await;
    let dollar_before = metric(&node, "roost_mqtt_publish_dropped_total").await;
    let props = Properties {
        maximum_packet_size: Some(100),
        ..Properties::default()
    };
    let (mut small, _) = connect_with(node.addr(), connect_v5("small", true, props)).await;
    small.subscribe("same/t", QoS::AtLeastOnce).await.unwrap();
    let mut publ = connect_clean(node.addr(), Protocol::V5, "pub").await;
    publ.publish("same/t", &[b'L'; 500], QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let reason = publ
        .publish("$SYS/forged", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(reason, ReasonCode::TOPIC_NAME_INVALID);
    small.expect_silence(SILENCE).await.unwrap();

    let s = http(&node, "GET", "/api/v1/stats", None).await.json();
    assert_eq!(s["messages_dropped"], 2, "{s}");
    assert_eq!(s["messages_received"], 2, "{s}");
    let too_large = metric(&node, "roost_session_too_large_dropped_total").await;
    let dollar = metric(&node, "roost_mqtt_publish_dropped_total").await;
    assert_eq!(too_large - too_large_before, 1.0);
    assert_eq!(dollar - dollar_before, 1.0);
}

#[tokio::test]
async fn log_level_is_unavailable_without_the_roost_subscriber() {
    let node = TestNode::start().await.unwrap();
    let r = http(&node, "GET", "/api/v1/log-level", None).await;
    assert_eq!(r.status, 501, "{r:?}");
    assert!(r.json()["error"].is_string());
    let r = http(
        &node,
        "PUT",
        "/api/v1/log-level",
        Some(r#"{"level":"debug"}"#),
    )
    .await;
    assert_eq!(r.status, 501, "{r:?}");
}

// ---- item 23 (issue 7): Host check against DNS rebinding, bearer token --------------------

const TOKEN: &str = "item23-test-token-0123456789abcdef";

fn with_token(config: &mut roost_node::Config) {
    config.http.token = Some(roost_node::config::AdminToken::new(TOKEN).unwrap());
}

/// One request with exactly these headers (no token unless given).
async fn call(node: &TestNode, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let body = (method == "POST").then_some(r#"{"node_id":9,"cluster_addr":"127.0.0.1:1"}"#);
    http_with(node.http_addr().unwrap(), method, path, body, headers)
        .await
        .unwrap()
}

/// The admin endpoints an attacker would want: the sessions list, kick, join, leave.
const ADMIN: [(&str, &str); 4] = [
    ("GET", "/api/v1/clients"),
    ("DELETE", "/api/v1/clients/victim"),
    ("POST", "/api/v1/cluster/members"),
    ("DELETE", "/api/v1/cluster/members/9"),
];

/// Raw bytes in, the status line out: for requests hyper's client would not send.
async fn raw_status(node: &TestNode, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.http_addr().unwrap())
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(HTTP_TIMEOUT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn item23_foreign_host_is_refused_and_ip_literals_and_localhost_accepted() {
    let node = TestNode::start().await.unwrap();
    let mut victim = connect_clean(node.addr(), Protocol::V5, "victim").await;
    // A page at evil.example rebound to 127.0.0.1 sends its own name as Host.
    for (method, path) in ADMIN.iter().copied().chain([("GET", "/metrics")]) {
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
        ] {
            let r = call(&node, method, path, &[("host", host)]).await;
            assert_eq!(r.status, 403, "{method} {path} Host {host}: {r:?}");
            assert!(r.json()["error"]
                .as_str()
                .unwrap()
                .contains("http.allowed_hosts"));
        }
    }
    victim.expect_silence(SILENCE).await.unwrap();
    // The probes stay open whatever the Host.
    for path in ["/healthz", "/readyz"] {
        let r = call(&node, "GET", path, &[("host", "evil.example")]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let port = node.http_addr().unwrap().port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        "10.1.2.3:8080".to_owned(),
        "[::1]".to_owned(),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
        format!("LocalHost:{port}"),
        "localhost.".to_owned(),
    ] {
        let r = call(&node, "GET", "/api/v1/clients", &[("host", &host)]).await;
        assert_eq!(r.status, 200, "Host {host}: {r:?}");
    }
}

#[tokio::test]
async fn item23_allowed_hosts_admit_names_and_domains() {
    let node = TestNode::start_with(|c| {
        c.http.allowed_hosts = vec!["roost-0.roost".to_owned(), ".svc.example".to_owned()];
    })
    .await
    .unwrap();
    for (host, status) in [
        ("roost-0.roost:8080", 200),
        ("ROOST-0.roost", 200),
        ("svc.example", 200),
        ("a.b.svc.example:80", 200),
        ("roost-1.roost", 403),
        ("evilsvc.example", 403),
    ] {
        let r = call(&node, "GET", "/api/v1/clients", &[("host", host)]).await;
        assert_eq!(r.status, status, "Host {host}: {r:?}");
    }
}

#[tokio::test]
async fn item23_missing_or_doubled_host_on_http11_is_400() {
    let node = TestNode::start().await.unwrap();
    let status = raw_status(
        &node,
        "GET /api/v1/clients HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let status = raw_status(
        &node,
        "GET /api/v1/clients HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    // An absolute-form target names the host, and wins over Host (RFC 9112 §3.2.2).
    let status = raw_status(
        &node,
        "GET http://evil.example/api/v1/clients HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // HTTP/1.0 has no Host requirement; a browser always sends one.
    let status = raw_status(&node, "GET /api/v1/clients HTTP/1.0\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
}

#[tokio::test]
async fn item23_token_required_on_admin_endpoints() {
    let node = TestNode::start_with(with_token).await.unwrap();
    let mut victim = connect_clean(node.addr(), Protocol::V5, "victim").await;
    let wrong = format!("Bearer {TOKEN}x");
    let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let basic = format!("Basic {TOKEN}");
    for (method, path) in ADMIN {
        let r = call(&node, method, path, &[]).await;
        assert_eq!(r.status, 401, "{method} {path} without a token: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="roost""#)
        );
        for auth in [wrong.as_str(), prefix.as_str(), "Bearer ", basic.as_str()] {
            let r = call(&node, method, path, &[("authorization", auth)]).await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {r:?}");
            assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        }
    }
    // Nothing happened: the victim is still connected, no member was added.
    victim.expect_silence(SILENCE).await.unwrap();
    let r = http(&node, "GET", "/api/v1/cluster", None).await;
    assert_eq!(r.json()["members"].as_array().unwrap().len(), 1, "{r:?}");

    // Right token (scheme in any case): the calls go through.
    let right = format!("bearer {TOKEN}");
    let r = call(
        &node,
        "GET",
        "/api/v1/clients",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()[0]["client_id"], "victim");
    let r = call(
        &node,
        "DELETE",
        "/api/v1/clients/victim",
        &[("authorization", &right)],
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    expect_disconnect(&mut victim, ReasonCode::ADMINISTRATIVE_ACTION).await;
    // Join and leave get past the guard: their handlers answer (node 0 is refused by the
    // join handler; node 9 is no member to remove).
    let r = http_with(
        node.http_addr().unwrap(),
        "POST",
        "/api/v1/cluster/members",
        Some(r#"{"node_id":0,"cluster_addr":"127.0.0.1:1"}"#),
        &[("authorization", &right)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "node ids start at 1");
    let r = call(
        &node,
        "DELETE",
        "/api/v1/cluster/members/9",
        &[("authorization", &right)],
    )
    .await;
    assert!(![401, 403].contains(&r.status), "{r:?}");
    // The token does not excuse a foreign Host.
    let r = call(
        &node,
        "GET",
        "/api/v1/clients",
        &[("authorization", &right), ("host", "evil.example")],
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    // Probes and (by default) metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = call(&node, "GET", path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
}

#[tokio::test]
async fn item23_metrics_can_require_the_token() {
    let node = TestNode::start_with(|c| {
        with_token(c);
        c.http.metrics_require_token = true;
    })
    .await
    .unwrap();
    let r = call(&node, "GET", "/metrics", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http(&node, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(&node, "GET", "/healthz", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn item23_token_file_is_read_at_start_and_a_missing_one_stops_it() {
    let dir = std::env::temp_dir().join(format!("roost-item23-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("admin-token");
    // `echo token > file` leaves a newline: ignored.
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let path = file.clone();
    let node = TestNode::start_with(move |c| c.http.token_file = Some(path))
        .await
        .unwrap();
    assert_eq!(node.admin_token(), Some(TOKEN));
    assert_eq!(call(&node, "GET", "/api/v1/clients", &[]).await.status, 401);
    assert_eq!(
        http(&node, "GET", "/api/v1/clients", None).await.status,
        200
    );

    let missing = dir.join("nope");
    let err = TestNode::start_with(move |c| c.http.token_file = Some(missing))
        .await
        .err()
        .expect("a missing token file stops the start");
    let text = format!("{err:#}");
    assert!(text.contains("http.token_file"), "{text}");
    assert!(text.contains("cannot read it"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
