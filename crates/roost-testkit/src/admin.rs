//! The admin HTTP API from a test: [`http`] / [`http_at`] / [`http_with`] send one request and
//! read the whole answer, [`metric`] sums a Prometheus metric from `GET /metrics`.
//!
//! [`http`] sends the node's admin token (`Authorization: Bearer`) when it has one, so tests
//! of other features need not care; [`http_at`] sends none; [`http_with`] sends exactly the
//! headers the test gives (`Host` included, which otherwise is the address).
//!
//! The client is hyper's connection API (`hyper::client::conn::http1`) over a tokio
//! `TcpStream`, one request per connection (`Connection: close`), the same library `roost ctl`
//! uses: hyper is already compiled for the node's admin server (axum) and the cluster's gRPC
//! client (tonic), so the kit builds nothing more for it. It runs on the test's own runtime, so
//! it works under `start_paused` like the node it talks to. Every exchange is bounded by
//! [`HTTP_TIMEOUT`].

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::TestNode;

/// How long one HTTP exchange (connect, request, whole response) may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One admin HTTP response, its body as text.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The response headers (names are case-insensitive).
    pub headers: HeaderMap,
    /// The whole body, which must be UTF-8.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON; panics (failing the test) with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.body) {
            Ok(v) => v,
            Err(e) => panic!("not JSON ({e}): {:?}", self.body),
        }
    }

    /// The value of header `name` (any case), if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request to `node`'s admin API; panics (failing the test) if there is no complete
/// answer within [`HTTP_TIMEOUT`]. `body`, when given, is sent as `application/json`.
/// The node's admin token, if it has one, is sent as `Authorization: Bearer`.
pub async fn http(node: &TestNode, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    let addr = node.http_addr().expect("admin HTTP enabled");
    let auth = node.admin_token().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    match http_with(addr, method, path, body, &headers).await {
        Ok(r) => r,
        Err(e) => panic!("{method} {path} on {addr}: {e:#}"),
    }
}

/// Sends one request to the admin API at `addr` and reads the whole response, within
/// [`HTTP_TIMEOUT`]. `body`, when given, is sent as `application/json`. No credentials.
pub async fn http_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    http_with(addr, method, path, body, &[]).await
}

/// [`http_at`] with extra `headers` (name, value). A `host` among them replaces the default
/// `Host: <addr>`.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    tokio::time::timeout(HTTP_TIMEOUT, exchange(addr, method, path, body, headers))
        .await
        .map_err(|_| anyhow!("HTTP response not finished within {HTTP_TIMEOUT:?}"))?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes())?)
        .uri(path)
        .header(CONNECTION, "close");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        req = req.header(HOST, addr.to_string());
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(b) = body {
        req = req
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, b.len());
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(
        body.unwrap_or_default().as_bytes(),
    )))?;

    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends once the response is read and the server closes; a failure there also fails
    // `send_request` or the body, which is where it is reported.
    tokio::spawn(connection);
    let resp = sender
        .send_request(req)
        .await
        .context("sending the request")?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("reading the response")?
        .to_bytes();
    let body = String::from_utf8(bytes.to_vec()).context("response body is not UTF-8")?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// The sum of every sample of metric `name` (all label sets) in `GET /metrics`; 0 if absent.
/// The recorder is process-wide, shared by every node of a test binary, so compare before and
/// after values, never absolute ones.
pub async fn metric(node: &TestNode, name: &str) -> f64 {
    let r = http(node, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    sum_samples(&r.body, name)
}

/// The sum of the samples of `name` in a Prometheus text exposition.
fn sum_samples(exposition: &str, name: &str) -> f64 {
    let mut total = 0.0;
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().unwrap_or_default();
        total += value.parse::<f64>().unwrap_or(0.0);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn samples_of_every_label_set_are_summed_and_prefixes_are_not_matched() {
        let text = "# HELP roost_x_total x\n# TYPE roost_x_total counter\n\
                    roost_x_total{node=\"1\"} 2\nroost_x_total{node=\"2\"} 3.5\n\
                    roost_x_total_other 100\nroost_x_total 1\n";
        assert_eq!(sum_samples(text, "roost_x_total"), 6.5);
        assert_eq!(sum_samples(text, "roost_y_total"), 0.0);
    }
}
