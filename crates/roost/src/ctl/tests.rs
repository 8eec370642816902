//! Unit tests of `roost ctl`: parsing `ID@ADDR` and the `--http` address, the join body, error
//! texts, status rendering, and whole requests against a one-shot server on `127.0.0.1:0` (or
//! nothing listening at all).

use super::*;

#[test]
fn member_spec_parses() {
    let cases: &[(&str, Option<(u64, &str)>)] = &[
        ("4@127.0.0.1:7004", Some((4, "127.0.0.1:7004"))),
        (
            "1@roost-1.roost.svc:7946",
            Some((1, "roost-1.roost.svc:7946")),
        ),
        ("12@[::1]:7001", Some((12, "[::1]:7001"))),
        ("4", None),
        ("@127.0.0.1:7004", None),
        ("x@127.0.0.1:7004", None),
        ("-1@127.0.0.1:7004", None),
        ("4@127.0.0.1", None),
        ("4@127.0.0.1:", None),
        ("4@127.0.0.1:0", None),
        ("4@127.0.0.1:70000", None),
        ("4@:7004", None),
        ("4@::1:7001", None),
    ];
    for (input, want) in cases {
        let got = input.parse::<MemberSpec>();
        match want {
            Some((id, addr)) => assert_eq!(
                got,
                Ok(MemberSpec {
                    node_id: *id,
                    addr: (*addr).to_owned()
                }),
                "{input}"
            ),
            None => assert!(got.is_err(), "{input} must be rejected, got {got:?}"),
        }
    }
}

#[test]
fn http_addr_normalisation() {
    assert_eq!(
        normalize_addr("http://127.0.0.1:8080/").as_deref(),
        Ok("127.0.0.1:8080")
    );
    assert_eq!(
        normalize_addr(" localhost:1983").as_deref(),
        Ok("localhost:1983")
    );
    assert!(normalize_addr("https://127.0.0.1:8080").is_err());
    assert!(normalize_addr("127.0.0.1").is_err());
}

#[test]
fn join_body_names_the_fields_of_the_api() {
    let m = MemberSpec {
        node_id: 4,
        addr: "127.0.0.1:7004".to_owned(),
    };
    let v: serde_json::Value =
        serde_json::from_str(&join_body(&m, Some("127.0.0.1:1887"))).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"node_id": 4, "cluster_addr": "127.0.0.1:7004",
                           "mqtt_addr": "127.0.0.1:1887"})
    );
    let v: serde_json::Value = serde_json::from_str(&join_body(&m, None)).expect("json");
    assert!(v.get("mqtt_addr").is_none());
}

#[test]
fn error_text_prefers_the_error_field() {
    assert_eq!(
        error_text(br#"{"error":"node 4 is unknown"}"#),
        "node 4 is unknown"
    );
    assert_eq!(error_text(b"  not ready\n"), "not ready");
    assert_eq!(error_text(b""), "(empty body)");
}

#[test]
fn status_rendering_marks_the_leader() {
    let s: ClusterStatus = serde_json::from_str(
        r#"{"node_id":2,"leader_id":1,"term":3,"last_log_index":42,"applied_index":41,
            "state":"Follower","routes":3,"sessions":2,"retained":1,"future_field":[1],
            "members":[
              {"node_id":2,"cluster_addr":"127.0.0.1:7002","mqtt_addr":"127.0.0.1:1884",
               "voter":true,"healthy":false,"matched_index":null},
              {"node_id":1,"cluster_addr":"127.0.0.1:7001","mqtt_addr":"127.0.0.1:1883",
               "voter":true,"healthy":true,"matched_index":42}]}"#,
    )
    .expect("status json");
    let text = render_status(&s);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "node 2: Follower, term 3, log index 42, applied index 41"
    );
    assert_eq!(lines[1], "leader: node 1");
    assert_eq!(lines[2], "routes: 3, sessions: 2, retained messages: 1");
    assert!(lines[4].contains("NODE") && lines[4].contains("MATCHED"));
    assert!(
        lines[5].starts_with('*'),
        "leader row first and marked: {text}"
    );
    assert!(lines[5].contains("127.0.0.1:7001") && lines[5].contains("leader"));
    assert!(lines[5].contains("healthy") && lines[5].trim_end().ends_with("42"));
    assert!(lines[6].contains("127.0.0.1:7002") && lines[6].contains("down"));
    assert!(lines[6].trim_end().ends_with('-'));
}

#[test]
fn status_rendering_without_leader_or_members() {
    let s: ClusterStatus =
        serde_json::from_str(r#"{"node_id":4,"leader_id":null,"state":"Learner"}"#)
            .expect("status json");
    let text = render_status(&s);
    assert!(text.contains("leader: none known"));
    assert!(text.contains("log index -"));
    assert!(text.contains("no members"));
}

#[test]
fn unreachable_address_says_so() {
    // Port 1 on loopback: nothing listens there in any sane test environment.
    let err = http_request(
        "127.0.0.1:1",
        "GET",
        "/readyz",
        None,
        None,
        Duration::from_secs(2),
    )
    .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(
        text.starts_with("cannot reach roost at 127.0.0.1:1: "),
        "{text}"
    );
}

#[test]
fn request_against_a_local_server() {
    use std::io::Read;
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.windows(7).any(|w| w == b"{\"x\":1}") {
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&chunk[..n]);
        }
        // Answer in two writes, chunked: the body is assembled across reads.
        s.write_all(b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("write");
        s.write_all(b"10\r\n{\"error\":\"busy\"}\r\n0\r\n\r\n")
            .expect("write");
        String::from_utf8(req).expect("utf8")
    });
    let resp = http_request(
        &addr,
        "POST",
        "/api/v1/cluster/members",
        Some(b"{\"x\":1}"),
        None,
        Duration::from_secs(5),
    )
    .expect("response");
    let req = server.join().expect("server thread").to_ascii_lowercase();
    assert!(
        req.starts_with("post /api/v1/cluster/members http/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains("\r\nconnection: close\r\n"), "{req}");
    assert!(req.contains("\r\ncontent-length: 7\r\n"), "{req}");
    assert!(
        req.contains("\r\ncontent-type: application/json\r\n"),
        "{req}"
    );
    assert_eq!((resp.status, resp.reason.as_str()), (409, "Conflict"));
    assert_eq!(error_text(&resp.body), "busy");
}

#[test]
fn refusal_names_the_node_status_and_reason() {
    use std::io::Read;
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&chunk[..n]);
        }
        s.write_all(
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 30\r\n\r\n{\"error\":\"node 4 is a member\"}",
        )
        .expect("write");
        String::from_utf8(req).expect("utf8")
    });
    let target = Target {
        addr: &addr,
        token: None,
        timeout: Duration::from_secs(5),
    };
    let err =
        call(&target, "DELETE", "/api/v1/cluster/members/4", None).expect_err("409 is an error");
    let req = server.join().expect("server thread").to_ascii_lowercase();
    assert!(
        req.starts_with("delete /api/v1/cluster/members/4 http/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains("\r\ncontent-length: 0\r\n"), "{req}");
    assert_eq!(
        err,
        format!("roost at {addr} answered 409 Conflict: node 4 is a member")
    );
}

/// A one-shot server on `127.0.0.1:0` that answers `response` and hands back the request.
fn one_shot(response: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
    use std::io::Read;
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        let mut chunk = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&chunk[..n]);
        }
        s.write_all(response).expect("write");
        String::from_utf8(req).expect("utf8")
    });
    (addr, server)
}

#[test]
fn item23_token_is_sent_as_bearer() {
    let (addr, server) = one_shot(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
    let target = Target {
        addr: &addr,
        token: Some("item23-token-0123456789"),
        timeout: Duration::from_secs(5),
    };
    call(&target, "GET", "/api/v1/cluster", None).expect("200");
    let req = server.join().expect("server thread");
    assert!(
        req.contains("\r\nauthorization: Bearer item23-token-0123456789\r\n"),
        "{req}"
    );

    // Without a token: no Authorization header, and a 401 says how to give one.
    let (addr, server) = one_shot(
        b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"roost\"\r\n\
          content-length: 17\r\n\r\n{\"error\":\"token\"}",
    );
    let target = Target {
        addr: &addr,
        token: None,
        timeout: Duration::from_secs(5),
    };
    let err = call(&target, "GET", "/api/v1/cluster", None).expect_err("401");
    let req = server.join().expect("server thread").to_ascii_lowercase();
    assert!(!req.contains("authorization"), "{req}");
    assert_eq!(
        err,
        format!(
            "roost at {addr} answered 401 Unauthorized: token \
             (pass --token-file or set ROOST_HTTP__TOKEN)"
        )
    );
}

#[test]
fn item23_token_from_file_else_environment() {
    let dir = std::env::temp_dir().join(format!("roost-ctl-item23-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("admin-token");
    std::fs::write(&file, "from-file-0123456789\n").expect("write");
    let env = || Some(" from-env-0123456789 ".to_owned());
    assert_eq!(
        admin_token(Some(&file), env()),
        Ok(Some("from-file-0123456789".to_owned()))
    );
    assert_eq!(
        admin_token(None, env()),
        Ok(Some("from-env-0123456789".to_owned()))
    );
    assert_eq!(admin_token(None, None), Ok(None));
    assert_eq!(
        admin_token(None, Some(" ".to_owned())),
        Err("the admin token in ROOST_HTTP__TOKEN is empty".to_owned())
    );
    let missing = dir.join("missing");
    let err = admin_token(Some(&missing), env()).expect_err("missing file");
    assert!(err.starts_with("cannot read --token-file "), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
