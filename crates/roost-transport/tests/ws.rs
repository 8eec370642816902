#![allow(clippy::unwrap_used)]
//! WebSocket framing over real loopback sockets: a client written by hand (so every frame is
//! exactly what the test says) against `ws::accept` + `WsStream`.

use bytes::BytesMut;
use roost_transport::{ws, ByteStream, WsError, WsStream};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(path: &str, protocol: Option<&str>) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// A client frame: masked, as RFC 6455 requires of clients (unless `masked` is false).
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

/// Reads the HTTP answer (up to the blank line).
async fn read_answer(c: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if c.read(&mut b).await.unwrap() == 0 {
            break;
        }
        buf.push(b[0]);
    }
    String::from_utf8(buf).unwrap()
}

async fn read_some(s: &mut WsStream<TcpStream>, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    while buf.len() < want {
        buf.reserve(4096);
        s.readable().await?;
        match s.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        s.try_flush().ok();
    }
    Ok(buf.to_vec())
}

async fn upgraded(protocol: Option<&str>) -> (TcpStream, WsStream<TcpStream>, String) {
    let (mut c, s) = pair().await;
    c.write_all(upgrade_request("/mqtt", protocol).as_bytes())
        .await
        .unwrap();
    let server = tokio::spawn(ws::accept(s, "/mqtt"));
    let answer = read_answer(&mut c).await;
    let ws = server.await.unwrap().unwrap();
    (c, ws, answer)
}

#[tokio::test]
async fn the_handshake_answers_with_the_rfc_accept_key_and_the_mqtt_subprotocol() {
    let (_c, _ws, answer) = upgraded(Some("mqttv3.1, mqtt")).await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    // The example of RFC 6455 §1.3.
    assert!(
        answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("Sec-WebSocket-Protocol: mqtt\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_packet_split_over_frames_and_frames_split_over_reads_arrive_as_one_stream() {
    let (mut c, mut ws, _) = upgraded(Some("mqtt")).await;
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    // A fragmented message (binary + continuation), a ping between its fragments (control
    // frames may come in between), then a 64-bit-length frame; written a few bytes at a time.
    let mut wire = frame(false, 0x2, &data[..10], true);
    wire.extend(frame(true, 0x9, b"hi", true));
    wire.extend(frame(true, 0x0, &data[10..300], true));
    wire.extend(frame(true, 0x2, &data[300..], true));
    let writer = tokio::spawn(async move {
        for chunk in wire.chunks(7) {
            c.write_all(chunk).await.unwrap();
        }
        c
    });
    let got = read_some(&mut ws, data.len()).await.unwrap();
    assert_eq!(got, data);
    let mut c = writer.await.unwrap();
    // The ping was answered with a pong carrying its payload (server frames are unmasked).
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0x8a, 2, b'h', b'i']);
}

#[tokio::test]
async fn bytes_written_go_out_in_binary_frames() {
    let (mut c, mut ws, _) = upgraded(Some("mqtt")).await;
    let payload = vec![7u8; 300];
    assert_eq!(ws.try_write(&payload).unwrap(), 300);
    while ws.pending_output() {
        ws.writable().await.unwrap();
        let _ = ws.try_flush();
    }
    let mut head = [0u8; 4];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(head, [0x82, 126, 1, 44]);
    let mut body = vec![0u8; 300];
    c.read_exact(&mut body).await.unwrap();
    assert_eq!(body, payload);
}

#[tokio::test]
async fn a_text_frame_closes_with_1003_and_an_unmasked_frame_with_1002() {
    for (f, code) in [
        (frame(true, 0x1, b"{}", true), 1003u16),
        (frame(true, 0x2, b"\x10", false), 1002),
        (frame(true, 0x0, b"x", true), 1002), // continuation without a message
    ] {
        let (mut c, mut ws, _) = upgraded(Some("mqtt")).await;
        c.write_all(&f).await.unwrap();
        let e = read_some(&mut ws, 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        ws.try_flush().unwrap();
        let mut close = [0u8; 4];
        c.read_exact(&mut close).await.unwrap();
        assert_eq!(close[..2], [0x88, 2]);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), code);
    }
}

#[tokio::test]
async fn a_close_frame_is_answered_and_ends_the_stream() {
    let (mut c, mut ws, _) = upgraded(None).await;
    let mut wire = frame(true, 0x2, b"abc", true);
    wire.extend(frame(true, 0x8, &1000u16.to_be_bytes(), true));
    c.write_all(&wire).await.unwrap();
    assert_eq!(read_some(&mut ws, 3).await.unwrap(), b"abc");
    // Then end of stream.
    let mut buf = BytesMut::with_capacity(64);
    tokio::time::timeout(Duration::from_secs(5), ws.readable())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ws.try_read_buf(&mut buf).unwrap(), 0);
    ws.try_flush().unwrap();
    let mut close = [0u8; 4];
    c.read_exact(&mut close).await.unwrap();
    assert_eq!(close, [0x88, 2, 0x03, 0xe8]);
}

#[tokio::test]
async fn requests_that_are_not_mqtt_upgrades_get_an_http_error() {
    for (req, status) in [
        (upgrade_request("/other", Some("mqtt")), 404u16),
        (upgrade_request("/mqtt", Some("chat")), 400),
        (
            "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            426, // a plain GET, no upgrade
        ),
        (
            "POST /mqtt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_string(),
            405,
        ),
    ] {
        let (mut c, s) = pair().await;
        c.write_all(req.as_bytes()).await.unwrap();
        let e = ws::accept(s, "/mqtt").await.unwrap_err();
        assert!(
            matches!(e, WsError::Refused { status: s, .. } if s == status),
            "{req}: {e}"
        );
        let answer = read_answer(&mut c).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn an_endless_request_is_refused_at_the_size_limit() {
    let (mut c, s) = pair().await;
    let server = tokio::spawn(ws::accept(s, "/mqtt"));
    let mut req = b"GET /mqtt HTTP/1.1\r\n".to_vec();
    while req.len() <= ws::MAX_HANDSHAKE_BYTES {
        req.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let _ = c.write_all(&req).await;
    let e = server.await.unwrap().unwrap_err();
    assert!(matches!(e, WsError::Refused { status: 431, .. }), "{e}");
}
