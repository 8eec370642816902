//! The admin HTTP listener: health, readiness, Prometheus metrics and a small JSON admin API.
//!
//! | method | path                        | what                                            |
//! |--------|-----------------------------|-------------------------------------------------|
//! | GET    | `/healthz`                  | 200 while the process runs                      |
//! | GET    | `/readyz`                   | 200 when serving (member, leader, caught up); 503 + why |
//! | GET    | `/metrics`                  | Prometheus text format                          |
//! | GET    | `/api/v1/stats`             | node counters (JSON)                            |
//! | GET    | `/api/v1/clients`           | sessions, connected or not                      |
//! | GET    | `/api/v1/clients/{id}`      | one session                                     |
//! | DELETE | `/api/v1/clients/{id}`      | disconnect it (v5: DISCONNECT 0x98)             |
//! | GET    | `/api/v1/subscriptions`     | every subscription                              |
//! | GET    | `/api/v1/log-level`         | current filter                                  |
//! | PUT    | `/api/v1/log-level`         | `{"level": "debug"}` changes it at run time     |
//! | GET    | `/api/v1/cluster`           | leader, term, log indexes, members and health   |
//! | POST   | `/api/v1/cluster/members`   | `{"node_id","cluster_addr","mqtt_addr"}`: join  |
//! | DELETE | `/api/v1/cluster/members/{id}` | remove a member                              |
//!
//! Who may call what ([`guard`], configured by `[http]`, see `HttpConfig`):
//!
//! ```text
//!  request ─▶ /healthz or /readyz? ─yes──────────────────────────────────────────▶ handler
//!                   │ no
//!  Host an IP literal, localhost or in allowed_hosts? ─no─▶ 403 (400: no Host on HTTP/1.1,
//!                   │ yes                                         two of them, malformed)
//!  token configured, and the path is not /metrics
//!  (or metrics_require_token is set)? ─no────────────────────────────────────────▶ handler
//!                   │ yes
//!  Authorization: Bearer <token> matches? ─no─▶ 401 + WWW-Authenticate: Bearer
//!                   │ yes
//!                   ▼
//!                handler
//! ```
//!
//! The `Host` check defeats DNS rebinding: a web page whose own name is made to resolve to
//! 127.0.0.1 still sends its own name as `Host`, so the operator's browser cannot be used to
//! join, remove or kick anything on a node listening on loopback. The probes stay open
//! because kubelet and load balancers send no credentials and pick their own `Host`. The
//! token is required by the config wherever the listener is not loopback. Refusals are
//! counted in `roost_http_requests_refused_total{reason}` and logged at DEBUG only (an
//! attacker could otherwise fill the log).

use crate::broker::{Broker, SessionRef};
use crate::config::{AdminToken, HttpConfig};
use crate::telemetry::LogHandle;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use axum::http::uri::Authority;
use axum::http::{StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use roost_codec::{ConnectVariant, Protocol, ReasonCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) broker: Arc<Broker>,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) log: Option<LogHandle>,
}

/// Who may call the API: built once at start from `[http]` and the token read then.
#[derive(Debug)]
pub(crate) struct Guard {
    /// `None`: no token configured (allowed only on loopback, see `Config::validate`).
    token: Option<AdminToken>,
    /// `http.allowed_hosts`, lower-cased; entries starting with `.` match a whole domain.
    allowed_hosts: Vec<String>,
    /// `http.metrics_require_token`.
    metrics_require_token: bool,
}

impl Guard {
    pub(crate) fn new(http: &HttpConfig, token: Option<AdminToken>) -> Guard {
        Guard {
            token,
            allowed_hosts: http
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            metrics_require_token: http.metrics_require_token,
        }
    }

    /// Whether `host` (the host part of `Host`, IPv6 in brackets) names this node: an IP
    /// literal, `localhost`, or an entry of `http.allowed_hosts`.
    fn host_allowed(&self, host: &str) -> bool {
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse::<Ipv6Addr>().is_ok();
        }
        if host.parse::<Ipv4Addr>().is_ok() {
            return true;
        }
        let name = host.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        if name == "localhost" {
            return true;
        }
        self.allowed_hosts
            .iter()
            .any(|allowed| match allowed.strip_prefix('.') {
                Some(domain) => name == domain || name.ends_with(allowed.as_str()),
                None => name == allowed,
            })
    }
}

/// Paths open to anyone who reaches the port: the probes (see the module docs for why).
fn is_probe(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// The middleware in front of every route: the `Host` check, then the bearer token.
pub(crate) async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_probe(path) {
        return next.run(req).await;
    }
    let host = match request_host(&req) {
        Ok(Some(host)) => host,
        Ok(None) if req.version() <= Version::HTTP_10 => String::new(),
        Ok(None) => return refuse(StatusCode::BAD_REQUEST, "no_host", "missing Host header"),
        Err(why) => return refuse(StatusCode::BAD_REQUEST, "no_host", why),
    };
    if !host.is_empty() && !g.host_allowed(&host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "host",
            &format!(
                "Host {host:?} is not allowed; if this node is reached by that name, \
                 add it to http.allowed_hosts"
            ),
        );
    }
    let needs_token = path != "/metrics" || g.metrics_require_token;
    if let (true, Some(token)) = (needs_token, &g.token) {
        match bearer(&req) {
            Some(presented) if token.matches(presented) => {}
            Some(_) => return unauthorized(true),
            None => return unauthorized(false),
        }
    }
    next.run(req).await
}

/// The host the request is for, without port: from an absolute-form target
/// (`GET http://host/...`, which RFC 9112 §3.2.2 says wins over `Host`), else from the one
/// `Host` header. `Ok(None)`: no host given. `Err`: several `Host` headers or a malformed one.
fn request_host(req: &Request) -> Result<Option<String>, &'static str> {
    if let Some(authority) = req.uri().authority() {
        return Ok(Some(authority.host().to_owned()));
    }
    let mut values = req.headers().get_all(HOST).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(v), None) => v,
        (Some(_), Some(_)) => return Err("more than one Host header"),
    };
    let text = value.to_str().map_err(|_| "malformed Host header")?;
    if text.contains('@') {
        return Err("malformed Host header");
    }
    let authority: Authority = text.parse().map_err(|_| "malformed Host header")?;
    if authority.host().is_empty() {
        return Err("malformed Host header");
    }
    Ok(Some(authority.host().to_owned()))
}

/// The credentials of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110
/// §11.1), or `None` when the header is absent or uses another scheme.
fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(rest.trim_ascii())
}

fn refuse(status: StatusCode, reason: &'static str, message: &str) -> Response {
    metrics::counter!(crate::metrics::HTTP_REFUSED, "reason" => reason).increment(1);
    tracing::debug!(reason, message, "admin HTTP request refused");
    (status, Json(json!({ "error": message }))).into_response()
}

/// 401 with the challenge RFC 6750 §3 asks for; `invalid_token` when a token was sent.
fn unauthorized(token_sent: bool) -> Response {
    let (challenge, message) = if token_sent {
        (
            r#"Bearer realm="roost", error="invalid_token""#,
            "wrong admin token",
        )
    } else {
        (
            r#"Bearer realm="roost""#,
            "this node requires an admin token: Authorization: Bearer <token>",
        )
    };
    let mut resp = refuse(StatusCode::UNAUTHORIZED, "token", message);
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static(challenge),
    );
    resp
}

pub(crate) fn router(state: AdminState, guard_state: Arc<Guard>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{id}", get(client).delete(kick))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/log-level", get(get_log_level).put(put_log_level))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/reload", axum::routing::post(reload))
        .route(
            "/api/v1/policies",
            get(get_policies).put(put_policies).delete(delete_policies),
        )
        .route("/api/v1/cluster/members", axum::routing::post(cluster_join))
        .route(
            "/api/v1/cluster/members/{id}",
            axum::routing::delete(cluster_leave),
        )
        .layer(axum::middleware::from_fn_with_state(guard_state, guard))
        .with_state(state)
}

/// 200 `ready` when the node serves clients: not draining, and `Cluster::readiness` (a voter,
/// a live leader, the session lease, caught up with the leader's commit); else 503 with one
/// line saying which is missing, e.g. `not ready: draining`. A probe, so it stays cheap: no
/// Raft call, no I/O.
async fn readyz(State(s): State<AdminState>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n").into_response();
    }
    match s.broker.cluster().readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.broker.refresh_gauges();
    // `process_*` from /proc, which lists every open file descriptor: on a blocking thread.
    let _ = tokio::task::spawn_blocking(crate::telemetry::collect_process).await;
    match crate::telemetry::prometheus() {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response(),
    }
}

async fn stats(State(s): State<AdminState>) -> Json<Value> {
    Json(crate::sys::stats_json(&s.broker))
}

fn protocol_name(p: Protocol, variant: ConnectVariant) -> &'static str {
    match p {
        Protocol::V311 if variant.mqtt31 => "3.1",
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5.0",
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn describe(s: &SessionRef) -> Value {
    let v = s.view();
    let conn = v.conn.as_ref().map(|(_, info)| info);
    json!({
        "client_id": s.client_id().as_str(),
        "connected": conn.is_some(),
        "connection_id": v.conn.as_ref().map(|(id, _)| *id),
        "protocol": conn.map(|c| protocol_name(c.protocol, c.variant)),
        "bridge": conn.map(|c| c.variant.bridge),
        "peer": conn.map(|c| c.peer().to_string()),
        "username": conn.and_then(|c| c.username()),
        "auth": conn.map(|c| c.auth.as_str()),
        "listener": conn.map(|c| c.listener.name.as_str()),
        "transport": conn.map(|c| c.listener.kind.as_str()),
        "keep_alive": conn.map(|c| c.keep_alive),
        "connected_at": conn.map(|c| unix(c.connected_at.time())),
        "disconnected_at": v.disconnected_at.map(unix),
        "session_expiry_interval": v.expiry_interval,
        "subscriptions": v.subscriptions,
        "inflight": v.inflight,
        "queued": v.queued,
    })
}

async fn clients(State(s): State<AdminState>) -> Json<Value> {
    let mut list: Vec<Value> = s.broker.sessions().iter().map(describe).collect();
    list.sort_by(|a, b| a["client_id"].as_str().cmp(&b["client_id"].as_str()));
    Json(Value::Array(list))
}

async fn client(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    match s.broker.session(&id) {
        Some(sess) => Json(describe(&sess)).into_response(),
        None => not_found(&id),
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": format!("no session for client id {id:?}") })),
    )
        .into_response()
}

/// Disconnects a client (v5: DISCONNECT 0x98 Administrative action). Its session stays, subject
/// to its expiry interval, as after any other disconnect.
async fn kick(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    let Some(sess) = s.broker.session(&id) else {
        return not_found(&id);
    };
    match sess.conn() {
        Some(c) => {
            c.kick(ReasonCode::ADMINISTRATIVE_ACTION);
            tracing::info!(client_id = %id, "client disconnected by admin API");
            StatusCode::NO_CONTENT.into_response()
        }
        None => (
            StatusCode::CONFLICT,
            Json(json!({ "error": format!("client {id:?} is not connected") })),
        )
            .into_response(),
    }
}

async fn subscriptions(State(s): State<AdminState>) -> Json<Value> {
    let mut out = Vec::new();
    for sess in s.broker.sessions() {
        for (filter, sub) in sess.subscriptions() {
            out.push(json!({
                "client_id": sess.client_id().as_str(),
                "filter": filter.as_str(),
                "qos": sub.options.qos as u8,
                "no_local": sub.options.no_local,
                "retain_as_published": sub.options.retain_as_published,
                "retain_handling": sub.options.retain_handling as u8,
                "identifier": sub.identifier,
            }));
        }
    }
    Json(Value::Array(out))
}

async fn get_log_level(State(s): State<AdminState>) -> Response {
    match &s.log {
        Some(h) => Json(json!({ "level": h.current() })).into_response(),
        None => log_unavailable(),
    }
}

#[derive(Deserialize)]
struct LevelBody {
    level: String,
}

async fn put_log_level(State(s): State<AdminState>, Json(body): Json<LevelBody>) -> Response {
    let Some(h) = &s.log else {
        return log_unavailable();
    };
    match h.set(&body.level) {
        Ok(()) => {
            tracing::info!(level = %body.level, "log level changed");
            Json(json!({ "level": body.level })).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// `GET /api/v1/policies`: the replicated version and policy store (`null`: none), and the
/// version this node enforces.
async fn get_policies(State(s): State<AdminState>) -> Response {
    let replicated = s.broker.cluster().state().read().policies().clone();
    let policies: Value = match &replicated.json {
        Some(j) => serde_json::from_str(j).unwrap_or(Value::Null),
        None => Value::Null,
    };
    Json(json!({
        "version": replicated.version,
        "enforced_version": s.broker.policies.version(),
        "policies": policies,
    }))
    .into_response()
}

/// `PUT /api/v1/policies`: replaces the cluster's policies with the body (a policy store,
/// docs/security.md). 400 naming the statement when invalid; 503 when the change cannot be
/// committed; 200 with the new version once it is applied here.
async fn put_policies(State(s): State<AdminState>, body: String) -> Response {
    set_policies(&s, Some(body)).await
}

/// `DELETE /api/v1/policies`: removes every policy (authenticated clients may then do
/// everything).
async fn delete_policies(State(s): State<AdminState>) -> Response {
    set_policies(&s, None).await
}

async fn set_policies(s: &AdminState, json: Option<String>) -> Response {
    use crate::policy::ProposePoliciesError as E;
    match s.broker.propose_policies(json, None).await {
        Ok(version) => {
            tracing::info!(version, "policies changed through the admin API");
            Json(json!({ "version": version })).into_response()
        }
        Err(e) => {
            let status = match e {
                E::Invalid(_) => StatusCode::BAD_REQUEST,
                E::NotReplicated(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

/// `POST /api/v1/reload`: re-reads TLS certificates and the password file, as SIGHUP does.
/// 200 when everything reloaded, 500 with the failures otherwise (the old files stay in use).
async fn reload(State(s): State<AdminState>) -> Response {
    let report = s.broker.reload_credentials().await;
    let failed = report.iter().any(|(_, r)| r.is_err());
    let body: Vec<Value> = report
        .into_iter()
        .map(|(what, r)| match r {
            Ok(()) => json!({ "what": what, "reloaded": true }),
            Err(e) => json!({ "what": what, "reloaded": false, "error": e }),
        })
        .collect();
    let status = if failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (status, Json(Value::Array(body))).into_response()
}

fn log_unavailable() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        Json(json!({ "error": "this process did not install the roost log subscriber" })),
    )
        .into_response()
}

async fn cluster_status(State(s): State<AdminState>) -> Response {
    Json(s.broker.cluster().status().await).into_response()
}

#[derive(Deserialize)]
struct JoinBody {
    node_id: u64,
    cluster_addr: String,
    #[serde(default)]
    mqtt_addr: String,
}

/// Adds a node as a voter; the node forwards the change to the leader itself.
async fn cluster_join(State(s): State<AdminState>, Json(body): Json<JoinBody>) -> Response {
    let c = s.broker.cluster();
    if body.node_id == 0 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "node ids start at 1" })),
        )
            .into_response();
    }
    match c
        .join(
            roost_cluster::types::NodeId::new(body.node_id),
            body.cluster_addr,
            body.mqtt_addr,
        )
        .await
    {
        Ok(()) => {
            tracing::info!(node_id = body.node_id, "node joined the cluster");
            Json(json!({ "ok": true })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// Removes a member and forgets its routes and sessions.
async fn cluster_leave(State(s): State<AdminState>, Path(id): Path<u64>) -> Response {
    let c = s.broker.cluster();
    match c.leave(roost_cluster::types::NodeId::new(id)).await {
        Ok(()) => {
            tracing::info!(node_id = id, "node removed from the cluster");
            Json(json!({ "ok": true })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
