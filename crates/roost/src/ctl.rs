//! `roost ctl`: the operator's client for a running cluster, over a member's admin HTTP API.
//!
//! ```text
//! roost ctl --http ADDR status [--json]          GET    /api/v1/cluster
//! roost ctl --http ADDR join ID@ADDR [--mqtt A]  POST   /api/v1/cluster/members
//! roost ctl --http ADDR leave ID                 DELETE /api/v1/cluster/members/{id}
//! ```
//!
//! Any member will do: a follower forwards membership changes to the leader itself. Exit code 0
//! on success, 1 with one line on stderr otherwise ("cannot reach roost at ADDR: ..." when
//! nothing listens there, "roost at ADDR answered 409 Conflict: ..." when the node refused).
//!
//! The HTTP/1.1 client is a few dozen lines over a blocking `TcpStream` (one request per
//! connection, `Connection: close`) rather than a client crate: ctl makes one request and
//! exits, and `roost dev-cluster` reuses it to poll `/readyz`. It understands Content-Length,
//! chunked and read-to-close bodies, which is all hyper (the server side) sends.

use clap::{Args, Subcommand};
use serde::Deserialize;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `roost ctl`: inspect and change a running cluster through any member's admin HTTP API.
#[derive(Args, Debug)]
pub(crate) struct CtlArgs {
    /// Admin HTTP address of any cluster member (`host:port`; an `http://` prefix is accepted).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: String,
    /// Give up on the request after this many seconds. A join waits until the new node has
    /// caught up with the log and become a voter, so it can take a while on a large state.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Show the cluster as this member sees it: members (leader marked), their health and
    /// matched log index, route/session/retained counts, this node's Raft state and indexes.
    Status {
        /// Print the API's JSON unchanged, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Add a started, uninitialised node (`roost serve` with no `--seed`) as a voter.
    Join {
        /// The new node's id and cluster (gRPC) address, e.g. `4@127.0.0.1:7004`.
        #[arg(value_name = "ID@CLUSTER_ADDR")]
        member: MemberSpec,
        /// The new node's MQTT address, as recorded in the membership.
        #[arg(long, value_name = "ADDR")]
        mqtt: Option<String>,
    },
    /// Remove a node from the cluster.
    Leave {
        /// Id of the node to remove.
        #[arg(value_name = "ID")]
        node_id: u64,
    },
}

/// `ID@HOST:PORT`, the way members are named on the command line (`--seed`, `ctl join`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberSpec {
    pub(crate) node_id: u64,
    /// `host:port` as given (a name is allowed: the cluster may run behind DNS).
    pub(crate) addr: String,
}

impl FromStr for MemberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((id, addr)) = s.split_once('@') else {
            return Err(format!("{s:?} is not ID@HOST:PORT (e.g. 4@127.0.0.1:7004)"));
        };
        let node_id: u64 = id
            .parse()
            .map_err(|_| format!("{s:?}: node id {id:?} is not a non-negative integer"))?;
        validate_host_port(addr).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(MemberSpec {
            node_id,
            addr: addr.to_owned(),
        })
    }
}

/// Checks `host:port` (IPv6 in brackets) without resolving the name.
fn validate_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address {addr:?} has no port"));
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("address {addr:?} has no host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("IPv6 address {addr:?} must be written [addr]:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("address {addr:?} has an invalid port {port:?}")),
    }
}

/// Runs one `roost ctl` command; prints its result on stdout or one error line on stderr.
pub(crate) fn run(args: CtlArgs) -> ExitCode {
    match execute(&args) {
        Ok(out) => {
            // Ignore a closed stdout (`roost ctl status | head -1`) instead of panicking.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("roost ctl: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Performs the command and returns what to print.
fn execute(args: &CtlArgs) -> Result<String, String> {
    let addr = normalize_addr(&args.http)?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    match &args.command {
        CtlCommand::Status { json } => {
            let resp = call(&addr, "GET", "/api/v1/cluster", None, timeout)?;
            if *json {
                let mut text = String::from_utf8_lossy(&resp.body).into_owned();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                return Ok(text);
            }
            let status: ClusterStatus = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("unexpected answer from roost at {addr}: {e}"))?;
            Ok(render_status(&status))
        }
        CtlCommand::Join { member, mqtt } => {
            let body = join_body(member, mqtt.as_deref());
            call(
                &addr,
                "POST",
                "/api/v1/cluster/members",
                Some(body.as_bytes()),
                timeout,
            )?;
            Ok(format!(
                "node {} ({}) joined the cluster as a voter\n",
                member.node_id, member.addr
            ))
        }
        CtlCommand::Leave { node_id } => {
            let path = format!("/api/v1/cluster/members/{node_id}");
            call(&addr, "DELETE", &path, None, timeout)?;
            Ok(format!("node {node_id} left the cluster\n"))
        }
    }
}

/// The JSON body of `POST /api/v1/cluster/members`; `mqtt_addr` is left out when not given.
fn join_body(member: &MemberSpec, mqtt: Option<&str>) -> String {
    let mut body = serde_json::json!({
        "node_id": member.node_id,
        "cluster_addr": member.addr,
    });
    if let Some(m) = mqtt {
        body["mqtt_addr"] = serde_json::Value::String(m.to_owned());
    }
    body.to_string()
}

/// One request; any answer but 2xx becomes an error line naming the node and its reason.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let resp = http_request(addr, method, path, body, timeout).map_err(|e| e.to_string())?;
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    Err(format!(
        "roost at {addr} answered {} {}: {}",
        resp.status,
        resp.reason,
        error_text(&resp.body)
    ))
}

/// The `error` field of a JSON error body, else the body itself (trimmed, shortened).
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
}

/// `http://host:port/` -> `host:port`; https is refused (the admin listener speaks plain HTTP).
pub(crate) fn normalize_addr(addr: &str) -> Result<String, String> {
    let trimmed = addr.trim();
    if trimmed.starts_with("https://") {
        return Err(format!(
            "{addr:?}: https is not supported; the admin API is plain HTTP"
        ));
    }
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let bare = bare.trim_end_matches('/');
    validate_host_port(bare).map_err(|e| format!("--http {addr:?}: {e}"))?;
    Ok(bare.to_owned())
}

// ---- cluster status -----------------------------------------------------------------------

/// `GET /api/v1/cluster`. Fields the API may add later are ignored; missing optional ones are
/// shown as `-`.
#[derive(Deserialize, Debug)]
struct ClusterStatus {
    node_id: u64,
    leader_id: Option<u64>,
    #[serde(default)]
    term: Option<u64>,
    #[serde(default)]
    last_log_index: Option<u64>,
    #[serde(default)]
    applied_index: Option<u64>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    members: Vec<MemberStatus>,
    #[serde(default)]
    routes: Option<u64>,
    #[serde(default)]
    sessions: Option<u64>,
    #[serde(default)]
    retained: Option<u64>,
}

#[derive(Deserialize, Debug)]
struct MemberStatus {
    node_id: u64,
    #[serde(default)]
    cluster_addr: Option<String>,
    #[serde(default)]
    mqtt_addr: Option<String>,
    #[serde(default)]
    voter: Option<bool>,
    #[serde(default)]
    healthy: Option<bool>,
    #[serde(default)]
    matched_index: Option<u64>,
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}

/// The human-readable `roost ctl status`.
fn render_status(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}: {}, term {}, log index {}, applied index {}",
        s.node_id,
        s.state.as_deref().unwrap_or("unknown state"),
        opt(&s.term),
        opt(&s.last_log_index),
        opt(&s.applied_index),
    );
    match s.leader_id {
        Some(l) => {
            let _ = writeln!(out, "leader: node {l}");
        }
        None => {
            let _ = writeln!(out, "leader: none known (election running or no quorum)");
        }
    }
    let _ = writeln!(
        out,
        "routes: {}, sessions: {}, retained messages: {}",
        opt(&s.routes),
        opt(&s.sessions),
        opt(&s.retained),
    );
    let _ = writeln!(out);

    let header = [
        "",
        "NODE",
        "CLUSTER ADDR",
        "MQTT ADDR",
        "ROLE",
        "HEALTH",
        "MATCHED",
    ];
    let mut rows: Vec<[String; 7]> = Vec::with_capacity(s.members.len());
    let mut members: Vec<&MemberStatus> = s.members.iter().collect();
    members.sort_by_key(|m| m.node_id);
    for m in members {
        let mark = if Some(m.node_id) == s.leader_id {
            "*"
        } else {
            ""
        };
        let role = match (Some(m.node_id) == s.leader_id, m.voter) {
            (true, _) => "leader",
            (false, Some(false)) => "learner",
            (false, _) => "voter",
        };
        let health = match m.healthy {
            Some(true) => "healthy",
            Some(false) => "down",
            None => "-",
        };
        rows.push([
            mark.to_owned(),
            m.node_id.to_string(),
            opt(&m.cluster_addr),
            opt(&m.mqtt_addr),
            role.to_owned(),
            health.to_owned(),
            opt(&m.matched_index),
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header_row = header.map(str::to_owned);
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if s.members.is_empty() {
        let _ = writeln!(out, "(no members: the node is not initialised yet)");
    }
    out
}

// ---- a minimal HTTP/1.1 client --------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) reason: String,
    /// Names lower-cased, in the order received.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    #[cfg(test)]
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response. The split lets callers tell "nothing listens there" (the
/// node is down, the address is wrong) from "it answered, but not in a way we understand".
#[derive(Debug)]
pub(crate) enum HttpError {
    /// No TCP connection could be made (refused, unresolvable, connect timeout).
    Unreachable { addr: String, reason: String },
    /// Connected, but the exchange failed: timeout, reset, or a malformed response.
    Exchange { addr: String, reason: String },
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Unreachable { addr, reason } => {
                write!(f, "cannot reach roost at {addr}: {reason}")
            }
            HttpError::Exchange { addr, reason } => {
                write!(f, "bad exchange with roost at {addr}: {reason}")
            }
        }
    }
}

/// Responses larger than this are refused: the admin API answers in kilobytes, and a runaway
/// body must not eat the operator's memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Sends one request to `addr` (`host:port`) and reads the whole response, all within
/// `timeout`. `body`, when given, is sent as `application/json`.
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let deadline = Instant::now() + timeout;
    let unreachable = |reason: String| HttpError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let exchange = |reason: String| HttpError::Exchange {
        addr: addr.to_owned(),
        reason,
    };

    let candidates: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last_err = format!("{addr} resolved to no address");
    let mut stream = None;
    for sa in candidates {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last_err = "connect timed out".to_owned();
            break;
        }
        match TcpStream::connect_timeout(&sa, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| unreachable(last_err))?;

    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: roost-ctl\r\n\
         Accept: application/json, text/plain\r\nConnection: close\r\n"
    );
    if let Some(b) = body {
        let _ = write!(
            request,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    } else if method != "GET" && method != "HEAD" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| exchange(e.to_string()))?;
    stream
        .write_all(&bytes)
        .map_err(|e| exchange(format!("sending the request: {e}")))?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(exchange(format!(
                "no complete response within {:.1}s",
                timeout.as_secs_f64()
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| exchange(e.to_string()))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(exchange(format!(
                    "no complete response within {:.1}s",
                    timeout.as_secs_f64()
                )));
            }
            Err(e) => return Err(exchange(format!("reading the response: {e}"))),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(exchange(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        let head_only = method == "HEAD";
        match parse_response(&buf, n == 0, head_only) {
            Ok(Some(resp)) => return Ok(resp),
            Ok(None) => {}
            Err(e) => return Err(exchange(e)),
        }
    }
}

/// Parses a response from `buf`. `Ok(None)`: incomplete, read more. `eof`: the peer closed the
/// connection, so a body without a length ends here and anything incomplete is an error.
/// Interim 1xx responses are skipped.
pub(crate) fn parse_response(
    buf: &[u8],
    eof: bool,
    head_only: bool,
) -> Result<Option<HttpResponse>, String> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        let Some(head_len) = find(rest, b"\r\n\r\n") else {
            if eof {
                return Err(if rest.is_empty() {
                    "connection closed without a response".to_owned()
                } else {
                    "connection closed inside the response headers".to_owned()
                });
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&rest[..head_len]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let (status, reason) = parse_status_line(status_line)?;
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("malformed header line {line:?}"));
            };
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let body_start = start + head_len + 4;
        if (100..200).contains(&status) && status != 101 {
            start = body_start;
            continue;
        }
        let body_bytes = &buf[body_start..];
        let header = |n: &str| {
            headers
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, v)| v.as_str())
        };
        let body = if head_only || status == 204 || status == 304 {
            Some(Vec::new())
        } else if header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            match decode_chunked(body_bytes)? {
                Some(b) => Some(b),
                None if eof => return Err("connection closed inside a chunked body".to_owned()),
                None => None,
            }
        } else if let Some(len) = header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("invalid Content-Length {len:?}"))?;
            if body_bytes.len() >= len {
                Some(body_bytes[..len].to_vec())
            } else if eof {
                return Err(format!(
                    "connection closed after {} of {len} body bytes",
                    body_bytes.len()
                ));
            } else {
                None
            }
        } else if eof {
            Some(body_bytes.to_vec())
        } else {
            None
        };
        return Ok(body.map(|body| HttpResponse {
            status,
            reason,
            headers,
            body,
        }));
    }
}

fn parse_status_line(line: &str) -> Result<(u16, String), String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default().trim().to_owned();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {line:?}"));
    }
    match code.parse::<u16>() {
        Ok(c) if (100..600).contains(&c) && code.len() == 3 => Ok((c, reason)),
        _ => Err(format!("invalid status code in {line:?}")),
    }
}

/// Decodes a complete chunked body; `Ok(None)` while the last chunk or the trailers are
/// missing.
fn decode_chunked(mut buf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(buf, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[..line_end]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("invalid chunk size {size_text:?}"))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            // Trailers (ignored), then an empty line.
            loop {
                let Some(end) = find(buf, b"\r\n") else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some(out));
                }
                buf = &buf[end + 2..];
            }
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_owned());
        }
        out.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> HttpResponse {
        match parse_response(raw.as_bytes(), false, false) {
            Ok(Some(r)) => r,
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn content_length_body() {
        let r = complete(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{\"ok\":true}");
    }

    #[test]
    fn content_length_ignores_bytes_after_the_body() {
        let r = complete("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nno\nXX");
        assert_eq!((r.status, r.reason.as_str()), (503, "Service Unavailable"));
        assert_eq!(r.body, b"no\n");
    }

    #[test]
    fn incomplete_is_none_until_eof_then_error() {
        for partial in [
            "",
            "HTTP/1.1 200 OK\r\nContent-Le",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        ] {
            assert_eq!(
                parse_response(partial.as_bytes(), false, false),
                Ok(None),
                "{partial:?}"
            );
            assert!(
                parse_response(partial.as_bytes(), true, false).is_err(),
                "{partial:?} at eof must be an error"
            );
        }
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let r = complete(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             4;name=x\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n",
        );
        assert_eq!(r.body, b"{\"a\":1}");
        let r = complete(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
        );
        assert_eq!(r.body, b"0123456789");
    }

    #[test]
    fn bad_chunks_are_errors() {
        let bad_size = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad_size.as_bytes(), false, false).is_err());
        let no_crlf = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n";
        assert!(parse_response(no_crlf.as_bytes(), false, false).is_err());
    }

    #[test]
    fn body_without_length_runs_to_eof() {
        let raw = "HTTP/1.0 200 OK\r\n\r\nready\n";
        assert_eq!(parse_response(raw.as_bytes(), false, false), Ok(None));
        let r = parse_response(raw.as_bytes(), true, false)
            .expect("parses")
            .expect("complete");
        assert_eq!(r.body, b"ready\n");
    }

    #[test]
    fn interim_100_continue_is_skipped() {
        let r = complete(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hi");
    }

    #[test]
    fn no_body_statuses_and_head() {
        let r = complete("HTTP/1.1 204 No Content\r\n\r\n");
        assert!(r.body.is_empty());
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, true)
            .expect("parses")
            .expect("complete");
        assert!(r.body.is_empty());
    }

    #[test]
    fn malformed_heads_are_errors() {
        for raw in [
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(
                parse_response(raw.as_bytes(), false, false).is_err(),
                "{raw:?}"
            );
        }
    }

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
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut chunk = [0u8; 1024];
            while find(&req, b"{\"x\":1}").is_none() {
                let n = s.read(&mut chunk).expect("read");
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&chunk[..n]);
            }
            // Answer in two writes, chunked, to exercise incremental parsing.
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
            Duration::from_secs(5),
        )
        .expect("response");
        let req = server.join().expect("server thread");
        assert!(req.starts_with("POST /api/v1/cluster/members HTTP/1.1\r\n"));
        assert!(req.contains("Connection: close\r\n"));
        assert!(req.contains("Content-Length: 7\r\n"));
        assert_eq!(resp.status, 409);
        assert_eq!(error_text(&resp.body), "busy");
    }
}
