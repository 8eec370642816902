//! Mutual TLS on the cluster gRPC listener, and which node a peer's certificate names
//! (docs/security.md, "Between nodes").
//!
//! ```text
//!  node 2 ──dials node 3: https://ADDR, verifies the server name roost-node-3──▶ node 3
//!         ◀──asks for a client certificate from the cluster CA (none, another CA: refused)
//!  node 3: the DNS name roost-node-<id> in node 2's certificate ─▶ Caller(2)
//!          each handler: the node id the request claims (vote candidate, forward origin,
//!          session requester, ...) == 2, or PermissionDenied (counted, logged)
//! ```
//!
//! The naming convention, in one place: node `<id>`'s certificate carries the DNS subject
//! alternative name `roost-node-<id>` ([`node_name`]) and no other `roost-node-` name. A node
//! dialling node `<id>` verifies that name as the server's; a node serving a call reads it
//! from the caller's certificate ([`node_from_name`]) to know which node is calling. Any CA
//! will do; every node trusts exactly the CA bundle in `ClusterTls::ca`.
//!
//! Who uses it: `Cluster::start` loads the files once (`TlsMaterial::load`) and configures
//! the server with them; `network::Dialer` makes the client channels; the Raft and Cluster
//! services hold a `PeerAuth` and ask it, in each handler that names the calling node,
//! whether the certificate agrees. Without TLS configured nothing is checked (plaintext, as
//! before).
//!
//! Concurrency: `TlsMaterial` is immutable and shared (`Arc`). `PeerAuth` is cloned into
//! both services; its counters are handles, its log limiter a leaf lock held for a clock read.

use crate::error::StartError;
use crate::metrics::PEER_IDENTITY_REFUSED;
use crate::types::NodeId;
use metrics::{counter, Counter};
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tracing::{debug, warn};
use x509_parser::extensions::GeneralName;

/// The DNS name prefix of a node's certificate: `roost-node-<id>`.
const NODE_NAME_PREFIX: &str = "roost-node-";

/// How long a TLS handshake between nodes may take, on either side. A connection that has not
/// finished it by then is closed (a stalled or hostile peer holds no accept slot for long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Mutual TLS between nodes (`ClusterConfig::tls`): PEM files, read once at
/// [`crate::Cluster::start`].
///
/// The certificate must carry the DNS name [`node_name`]`(node_id)` (and no other node's
/// name); it is both this node's server certificate and the client certificate it presents
/// to its peers. Every node must use certificates from a CA in `ca`, and `ca` is the only
/// thing trusted: a peer without such a certificate does not get past the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// This node's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA bundle: the certificates that issue the nodes' certificates.
    pub ca: PathBuf,
}

/// The DNS name node `id`'s certificate carries: `roost-node-<id>` (e.g. `roost-node-3`).
/// What a node verifies as the server name when it dials node `id`, and what a node serving a
/// call reads from the caller's certificate ([`node_from_name`]).
pub fn node_name(id: NodeId) -> String {
    format!("{NODE_NAME_PREFIX}{id}")
}

/// The node a certificate DNS name stands for: the inverse of [`node_name`]. Only the exact
/// form `roost-node-<id>` is read (decimal, no sign, no leading zero, `id` ≥ 1, lowercase);
/// anything else names no node.
pub fn node_from_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix(NODE_NAME_PREFIX)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().map(NodeId::new)
}

/// The node ids named by the DNS subject alternative names of a DER certificate, in order,
/// without repeats. Other names are ignored.
fn cert_nodes(der: &[u8]) -> Result<Vec<NodeId>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?;
    let mut nodes = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::DNSName(dns) = name {
            if let Some(id) = node_from_name(dns) {
                if !nodes.contains(&id) {
                    nodes.push(id);
                }
            }
        }
    }
    Ok(nodes)
}

/// The one node a certificate names; an error when it names none or several.
fn cert_node(der: &[u8]) -> Result<NodeId, String> {
    let nodes = cert_nodes(der)?;
    match nodes.as_slice() {
        [id] => Ok(*id),
        [] => Err(format!(
            "the certificate has no DNS name {NODE_NAME_PREFIX}<id>"
        )),
        more => Err(format!(
            "the certificate names several nodes ({})",
            names(more)
        )),
    }
}

fn names(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|id| node_name(*id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// This node's certificate, key and the cluster CA, read and checked once at start.
pub(crate) struct TlsMaterial {
    identity: Identity,
    ca: Certificate,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads the three files and checks them: each holds PEM of the right kind, every
    /// certificate is X.509, the leaf names node `me` (and no other node), and rustls takes
    /// the key with the certificate for a server and a client. Any failure names the file.
    ///
    /// Reads with std: a few kilobytes, once, before the node serves anything.
    pub(crate) fn load(files: &ClusterTls, me: NodeId) -> Result<TlsMaterial, BadFile> {
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let ca_pem = read(&files.ca)?;

        let chain = certificates(&files.cert, &cert_pem)?;
        let Some(leaf) = chain.first() else {
            return Err(bad(&files.cert, "no PEM certificate in it"));
        };
        let leaf_nodes = cert_nodes(leaf).map_err(|r| bad(&files.cert, r))?;
        if leaf_nodes != [me] {
            let found = if leaf_nodes.is_empty() {
                "none".to_owned()
            } else {
                names(&leaf_nodes)
            };
            return Err(bad(
                &files.cert,
                format!(
                    "this node's certificate must carry the DNS name {} and no other \
                     {NODE_NAME_PREFIX}<id> name (found: {found})",
                    node_name(me)
                ),
            ));
        }
        PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(&files.key, format!("no PEM private key: {e}")))?;
        certificates(&files.ca, &ca_pem)?;

        let material = TlsMaterial {
            identity: Identity::from_pem(&cert_pem, &key_pem),
            ca: Certificate::from_pem(&ca_pem),
        };
        // Build both configurations once now, so a key that does not fit the certificate (or
        // that rustls does not take) stops the start instead of every handshake.
        let unusable = |e: &dyn std::error::Error| {
            bad(
                &files.key,
                format!(
                    "not usable with the certificate {}: {}",
                    files.cert.display(),
                    chain_text(e)
                ),
            )
        };
        tonic::transport::Server::builder()
            .tls_config(material.server_config())
            .map_err(|e| unusable(&e))?;
        Endpoint::from_static("https://127.0.0.1")
            .tls_config(material.client_config(me))
            .map_err(|e| unusable(&e))?;
        Ok(material)
    }

    /// The server side: this node's identity, and a client certificate from the cluster CA
    /// required of every caller.
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The client side when dialling node `target`: only the cluster CA trusted, the server
    /// must be [`node_name`]`(target)`, and this node's certificate is presented.
    pub(crate) fn client_config(&self, target: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_name(target))
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// An error with its sources (tonic's transport error says only "transport error" itself).
pub(crate) fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What is wrong with which TLS file: [`StartError::Tls`] (small, unlike `StartError`).
#[derive(Debug)]
pub(crate) struct BadFile {
    path: PathBuf,
    reason: String,
}

impl From<BadFile> for StartError {
    fn from(b: BadFile) -> StartError {
        StartError::Tls {
            path: b.path,
            reason: b.reason,
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> BadFile {
    BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BadFile> {
    std::fs::read(path).map_err(|e| bad(path, format!("cannot read it: {e}")))
}

/// The certificates of a PEM file (at least one, each X.509), other PEM sections skipped.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BadFile> {
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| bad(path, format!("invalid PEM: {e}")))?;
        x509_parser::parse_x509_certificate(&c)
            .map_err(|e| bad(path, format!("a certificate that is not X.509: {e}")))?;
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(bad(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The RPCs whose request names the calling node: the `rpc` label of
/// `roost_cluster_peer_identity_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    PreVote,
    TimeoutNow,
    Propose,
    Forward,
    TakeSession,
    Join,
    Leave,
    RenewLease,
}

impl Rpc {
    const ALL: [Rpc; 11] = [
        Rpc::AppendEntries,
        Rpc::Vote,
        Rpc::InstallSnapshot,
        Rpc::PreVote,
        Rpc::TimeoutNow,
        Rpc::Propose,
        Rpc::Forward,
        Rpc::TakeSession,
        Rpc::Join,
        Rpc::Leave,
        Rpc::RenewLease,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append_entries",
            Rpc::Vote => "vote",
            Rpc::InstallSnapshot => "install_snapshot",
            Rpc::PreVote => "pre_vote",
            Rpc::TimeoutNow => "timeout_now",
            Rpc::Propose => "propose",
            Rpc::Forward => "forward",
            Rpc::TakeSession => "take_session",
            Rpc::Join => "join",
            Rpc::Leave => "leave",
            Rpc::RenewLease => "renew_lease",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Who is calling, as its certificate says. `None` without TLS: nothing is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller(Option<NodeId>);

impl Caller {
    /// The node the caller's certificate names (`None` without TLS).
    pub(crate) fn node(self) -> Option<NodeId> {
        self.0
    }
}

/// Binds the node a request claims to be from to the node its TLS certificate names. Off
/// (every check passes) when the cluster runs without TLS.
///
/// Every refusal is counted in `roost_cluster_peer_identity_refused_total{rpc}` and answered
/// `PermissionDenied`; it is logged at WARN with both ids, at most once a second per RPC (a
/// misconfigured peer retries many times a second: the others are logged at DEBUG).
#[derive(Clone)]
pub(crate) struct PeerAuth {
    on: bool,
    refused: Arc<[Counter; Rpc::ALL.len()]>,
    /// When each RPC's last refusal was logged at WARN.
    warned: Arc<Mutex<[Option<Instant>; Rpc::ALL.len()]>>,
}

impl PeerAuth {
    /// Checks on (`tls`) or off.
    pub(crate) fn new(tls: bool) -> PeerAuth {
        PeerAuth {
            on: tls,
            refused: Arc::new(
                Rpc::ALL.map(|r| counter!(PEER_IDENTITY_REFUSED, "rpc" => r.label())),
            ),
            warned: Arc::new(Mutex::new([None; Rpc::ALL.len()])),
        }
    }

    /// The node the caller's certificate names. Refused when TLS is on and the certificate
    /// names no node, or several (the handshake already refused any certificate not from the
    /// cluster CA).
    pub(crate) fn caller<T>(&self, rpc: Rpc, req: &Request<T>) -> Result<Caller, Status> {
        if !self.on {
            return Ok(Caller(None));
        }
        let certs = req.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(self.refuse(rpc, "no client certificate", None, None));
        };
        match cert_node(leaf) {
            Ok(id) => Ok(Caller(Some(id))),
            Err(reason) => Err(self.refuse(rpc, &reason, None, None)),
        }
    }

    /// Passes when `claimed`, the node the request says it comes from, is the caller's (or
    /// TLS is off). `None`: the request names no node where it must.
    pub(crate) fn claims(
        &self,
        rpc: Rpc,
        caller: Caller,
        claimed: Option<NodeId>,
    ) -> Result<(), Status> {
        let Some(cert) = caller.0 else {
            return Ok(());
        };
        if claimed == Some(cert) {
            return Ok(());
        }
        Err(self.refuse(
            rpc,
            "the request claims another node than its certificate names",
            Some(cert),
            claimed,
        ))
    }

    /// Counts and logs a refusal; the status to answer.
    pub(crate) fn refuse(
        &self,
        rpc: Rpc,
        reason: &str,
        cert: Option<NodeId>,
        claimed: Option<NodeId>,
    ) -> Status {
        self.refused[rpc.index()].increment(1);
        let now = Instant::now();
        let loud = {
            let mut warned = self.warned.lock();
            let last = &mut warned[rpc.index()];
            let loud = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
            if loud {
                *last = Some(now);
            }
            loud
        };
        let cert_s = cert.map_or_else(|| "-".to_owned(), |c| c.to_string());
        let claimed_s = claimed.map_or_else(|| "-".to_owned(), |c| c.to_string());
        if loud {
            warn!(
                rpc = rpc.label(),
                certificate_node = %cert_s,
                claimed_node = %claimed_s,
                reason,
                "cluster call refused: the caller's certificate does not bind it to that node"
            );
        } else {
            debug!(
                rpc = rpc.label(),
                certificate_node = %cert_s,
                claimed_node = %claimed_s,
                reason,
                "cluster call refused: the caller's certificate does not bind it to that node"
            );
        }
        let detail = match (cert, claimed) {
            (Some(c), Some(n)) => format!(" (certificate: node {c}, request: node {n})"),
            (Some(c), None) => format!(" (certificate: node {c}, the request names none)"),
            _ => String::new(),
        };
        Status::permission_denied(format!("{}: {reason}{detail}", rpc.label()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_names_round_trip() {
        for id in [1, 3, 42, u64::MAX] {
            let name = node_name(NodeId::new(id));
            assert_eq!(node_from_name(&name), Some(NodeId::new(id)), "{name}");
        }
        assert_eq!(node_name(NodeId::new(3)), "roost-node-3");
    }

    #[test]
    fn only_the_exact_form_names_a_node() {
        for name in [
            "roost-node-",
            "roost-node-0",
            "roost-node-03",
            "roost-node-+3",
            "roost-node--3",
            "roost-node-3a",
            "roost-node-3.example",
            "ROOST-NODE-3",
            "roost-node-18446744073709551616",
            "node-3",
            "x.roost-node-3",
        ] {
            assert_eq!(node_from_name(name), None, "{name}");
        }
    }

    #[test]
    fn without_tls_nothing_is_checked() {
        let auth = PeerAuth::new(false);
        let req = Request::new(());
        let caller = auth.caller(Rpc::Vote, &req).unwrap();
        assert_eq!(caller.node(), None);
        auth.claims(Rpc::Vote, caller, Some(NodeId::new(7)))
            .unwrap();
        auth.claims(Rpc::Vote, caller, None).unwrap();
    }

    #[test]
    fn with_tls_a_call_without_a_certificate_is_refused() {
        let auth = PeerAuth::new(true);
        let s = auth.caller(Rpc::Forward, &Request::new(())).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_claim_must_be_the_certificates_node() {
        let auth = PeerAuth::new(true);
        let two = Caller(Some(NodeId::new(2)));
        auth.claims(Rpc::TakeSession, two, Some(NodeId::new(2)))
            .unwrap();
        let s = auth
            .claims(Rpc::TakeSession, two, Some(NodeId::new(3)))
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("node 2"), "{}", s.message());
        assert!(s.message().contains("node 3"), "{}", s.message());
        let s = auth.claims(Rpc::Vote, two, None).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }
}
