//! `roost ctl`: the operator's client for a running cluster, over a member's admin HTTP API.
//!
//! ```text
//! roost ctl --http ADDR status [--json]          GET    /api/v1/cluster
//! roost ctl --http ADDR join ID@ADDR [--mqtt A]  POST   /api/v1/cluster/members
//! roost ctl --http ADDR leave ID                 DELETE /api/v1/cluster/members/{id}
//! roost ctl --ca FILE --http ADDR ...            the same over HTTPS
//! ```
//!
//! Any member will do: a follower forwards membership changes to the leader itself. Exit code 0
//! on success, 1 with one line on stderr otherwise ("cannot reach roost at ADDR: ..." when
//! nothing listens there, "roost at ADDR answered 409 Conflict: ..." when the node refused).
//!
//! A node whose admin API serves HTTPS (`http.tls_cert`) is reached with `--ca FILE`: the PEM
//! bundle of the CA that signs its certificate (a self-signed certificate is its own CA). The
//! connection is then TLS (1.3 or 1.2, rustls with the ring provider, as the node), and the
//! certificate must name the host given in `--http` (a DNS name or an IP address subject
//! alternative name); `--http` may then be written `https://host:port`.
//!
//! The admin token, when the node requires one (`http.token_file` / `ROOST_HTTP__TOKEN`), is
//! sent as `Authorization: Bearer`. It comes from `--token-file PATH` (or the variable
//! `ROOST_HTTP__TOKEN_FILE`), else from `ROOST_HTTP__TOKEN`: the same names the node reads, so
//! one environment serves both. There is no `--token` flag: a command line is visible to every
//! user of the machine (`ps`).
//!
//! The HTTP/1.1 client is hyper's own connection API (`hyper::client::conn::http1`) over a
//! tokio `TcpStream`, one request per connection (`Connection: close`), on a current-thread
//! runtime made for the call. Why hyper and not a client crate such as `ureq`: hyper 1,
//! hyper-util and http-body-util are already compiled into this binary for the admin server
//! (axum) and the cluster's gRPC client (tonic), so this client adds no crate and no build time
//! on a small machine; `ureq` would be a second HTTP implementation to build and keep up to date.
//! Why not hyper-util's pooled `legacy::Client`: ctl makes one request and exits, and connecting
//! ourselves keeps "nothing listens there" ([`HttpError::Unreachable`]) apart from "it answered
//! badly" ([`HttpError::Exchange`]) with the operating system's own words. `roost dev-cluster`
//! reuses [`http_request`] to poll `/readyz`. TLS is tokio-rustls, built for the node already.

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT,
};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// `roost ctl`: inspect and change a running cluster through any member's admin HTTP API.
#[derive(Args, Debug)]
pub(crate) struct CtlArgs {
    /// Admin HTTP address of any cluster member (`host:port`; an `http://` prefix is accepted,
    /// or `https://` with --ca).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: String,
    /// Talk HTTPS, trusting this PEM CA bundle: for a node whose admin API has
    /// http.tls_cert. Its certificate must name the host in --http.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Give up on the request after this many seconds. A join waits until the new node has
    /// caught up with the log and become a voter, so it can take a while on a large state.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout_secs: u64,
    /// File holding the node's admin token (surrounding whitespace ignored). Without it the
    /// token is taken from the variable ROOST_HTTP__TOKEN, if set.
    #[arg(long, value_name = "PATH", env = "ROOST_HTTP__TOKEN_FILE")]
    token_file: Option<PathBuf>,
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

/// The variable `roost ctl` (like the node) takes the admin token from.
const TOKEN_ENV: &str = "ROOST_HTTP__TOKEN";

/// The admin token to send: the contents of `token_file`, else `env_token` (the value of
/// [`TOKEN_ENV`]), else none. Surrounding whitespace is removed; an empty token is an error
/// rather than a request that is sure to be refused.
fn admin_token(
    token_file: Option<&std::path::Path>,
    env_token: Option<String>,
) -> Result<Option<String>, String> {
    let (token, from) = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
            (text, format!("--token-file {}", path.display()))
        }
        None => match env_token {
            Some(t) => (t, TOKEN_ENV.to_owned()),
            None => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("the admin token in {from} is empty"));
    }
    Ok(Some(token.to_owned()))
}

/// Performs the command and returns what to print.
fn execute(args: &CtlArgs) -> Result<String, String> {
    let (addr, tls) = match &args.ca {
        Some(ca) => {
            let given = args.http.trim();
            let addr = normalize_addr(given.strip_prefix("https://").unwrap_or(given))?;
            (addr, Some(client_tls(ca)?))
        }
        None => (normalize_addr(&args.http)?, None),
    };
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let token = admin_token(args.token_file.as_deref(), std::env::var(TOKEN_ENV).ok())?;
    let target = Target {
        addr: &addr,
        token: token.as_deref(),
        timeout,
    };
    let call = |method: &str, path: &str, body: Option<&[u8]>| {
        call_over(&target, tls.clone(), method, path, body)
    };
    match &args.command {
        CtlCommand::Status { json } => {
            let resp = call("GET", "/api/v1/cluster", None)?;
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
            call("POST", "/api/v1/cluster/members", Some(body.as_bytes()))?;
            Ok(format!(
                "node {} ({}) joined the cluster as a voter\n",
                member.node_id, member.addr
            ))
        }
        CtlCommand::Leave { node_id } => {
            let path = format!("/api/v1/cluster/members/{node_id}");
            call("DELETE", &path, None)?;
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

/// The member a command talks to: its address, the token to send, the time allowed.
struct Target<'a> {
    addr: &'a str,
    token: Option<&'a str>,
    timeout: Duration,
}

/// [`call_over`] in plain HTTP, as the unit tests use it.
#[cfg(test)]
fn call(
    target: &Target<'_>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse, String> {
    call_over(target, None, method, path, body)
}

/// One request, over TLS when `tls` is given (`--ca`); any answer but 2xx becomes an error
/// line naming the node and its reason.
fn call_over(
    target: &Target<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse, String> {
    let addr = target.addr;
    let resp = send(addr, tls, method, path, body, target.token, target.timeout)
        .map_err(|e| e.to_string())?;
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    let hint = match (resp.status, target.token) {
        (401, None) => format!(" (pass --token-file or set {TOKEN_ENV})"),
        _ => String::new(),
    };
    Err(format!(
        "roost at {addr} answered {} {}: {}{hint}",
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

/// `http://host:port/` -> `host:port`; `https://` is refused (it needs `--ca`, which strips it
/// before calling this).
pub(crate) fn normalize_addr(addr: &str) -> Result<String, String> {
    let trimmed = addr.trim();
    if trimmed.starts_with("https://") {
        return Err(format!(
            "{addr:?}: https needs --ca FILE, the CA bundle that signs the node's admin certificate"
        ));
    }
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let bare = bare.trim_end_matches('/');
    validate_host_port(bare).map_err(|e| format!("--http {addr:?}: {e}"))?;
    Ok(bare.to_owned())
}

/// The TLS client configuration for `--ca FILE`: TLS 1.3 and 1.2, ring provider (as the node),
/// the CAs in the file as the only roots, ALPN `http/1.1`.
fn client_tls(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read --ca {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: not a usable CA certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--ca {}: no PEM certificate in the file",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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

// ---- the HTTP/1.1 client (hyper) ---------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// The reason phrase the server sent, else the canonical one for `status` (may be empty).
    pub(crate) reason: String,
    pub(crate) body: Bytes,
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
/// `timeout`. `body`, when given, is sent as `application/json`; `token`, when given, as
/// `Authorization: Bearer`. Blocking: it runs the exchange on a current-thread runtime of its
/// own, so call it from a plain thread, never from inside a tokio runtime.
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    send(addr, None, method, path, body, token, timeout)
}

/// [`http_request`], over TLS when `tls` is given (`--ca`).
fn send(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HttpError::Exchange {
            addr: addr.to_owned(),
            reason: format!("cannot start the I/O runtime: {e}"),
        })?;
    runtime.block_on(request(addr, tls, method, path, body, token, timeout))
}

/// [`http_request`]'s body: connect (names resolved, each address tried in turn), the TLS
/// handshake when `tls` is given, then the exchange, all bounded by one deadline.
async fn request(
    addr: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(HttpError::Unreachable {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(HttpError::Unreachable {
                addr: addr.to_owned(),
                reason: "connect timed out".to_owned(),
            })
        }
    };
    let done = match tls {
        None => {
            let exchange = exchange(stream, addr, method, path, body, token);
            tokio::time::timeout_at(deadline, exchange).await
        }
        Some(config) => {
            let tls = async {
                let name = server_name(addr)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {}", error_chain(&e)))?;
                exchange(stream, addr, method, path, body, token).await
            };
            tokio::time::timeout_at(deadline, tls).await
        }
    };
    let reason = match done {
        Ok(Ok(resp)) => return Ok(resp),
        Ok(Err(reason)) => reason,
        Err(_) => format!("no complete response within {:.1}s", timeout.as_secs_f64()),
    };
    Err(HttpError::Exchange {
        addr: addr.to_owned(),
        reason,
    })
}

/// The name the node's certificate must carry: the host of `addr` (`host:port`, IPv6 in
/// brackets), a DNS name or an IP address.
fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// One request on a connected stream (TCP, or TLS over it); the error is the reason for
/// [`HttpError::Exchange`].
async fn exchange(
    stream: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
) -> Result<HttpResponse, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| format!("invalid method {method:?}: {e}"))?;
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(HOST, addr)
        .header(USER_AGENT, "roost-ctl")
        .header(ACCEPT, "application/json, text/plain")
        .header(CONNECTION, "close");
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, b.len());
    } else if method != Method::GET && method != Method::HEAD {
        req = req.header(CONTENT_LENGTH, 0);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(|e| format!("invalid request: {e}"))?;

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_chain(&e))?;
    // The connection task ends once the response is read and the server closes; an error
    // there also fails `send_request` or the body below, which is where it is reported.
    tokio::spawn(connection);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("sending the request: {}", error_chain(&e)))?;
    let status = resp.status();
    let reason = match resp.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(r) => String::from_utf8_lossy(r.as_bytes()).into_owned(),
        None => status.canonical_reason().unwrap_or_default().to_owned(),
    };
    let body = match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"))
        }
        Err(e) => return Err(format!("reading the response: {}", error_chain(&*e))),
    };
    Ok(HttpResponse {
        status: status.as_u16(),
        reason,
        body,
    })
}

/// An error and its causes, `outer: inner: ...` (hyper keeps the OS error as the source).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
