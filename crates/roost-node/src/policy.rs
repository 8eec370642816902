//! Authorization: the node's copy of the cluster's policies (AWS-IoT-style JSON documents,
//! evaluated by `roost_core::policy`) and each connection's view of them. docs/security.md.
//!
//! ```text
//!  auth.policy_file ─seed─▶ NodePolicies ◀─ Event::PoliciesChanged ◀─ Raft (SetPolicies)
//!                               │                                     ▲
//!                               │ generation (atomic)                 │ PUT /api/v1/policies,
//!                               ▼                                     │ SIGHUP (the file again)
//!  connection: ConnPolicy (its principal's policies, a publish cache) ─ re-resolved when the
//!              generation moves: a change applies to connected clients without reconnecting
//! ```
//!
//! Where it is checked: CONNECT (`mqtt:Connect` on `client/<id>`, refused with 0x87 / 0x05),
//! each SUBSCRIBE filter (`mqtt:Subscribe` on `topicfilter/<filter>`, SUBACK 0x87 / 0x80), each
//! PUBLISH (`mqtt:Publish` on `topic/<name>`, and `mqtt:Retain` when it is retained; cached per
//! connection; v5 QoS 1/2 get 0x87, everything else is dropped and counted).
//!
//! With no policies at all (no file, none set through the API), every authenticated client may
//! do everything. Once there are policies, what no statement allows is denied.

use parking_lot::RwLock;
use roost_core::policy::{
    Action, Decision, PolicyStore, Principal, PrincipalPolicies, PublishDecisions, Resource,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{error, info};

/// The policies this node enforces.
#[derive(Debug)]
pub(crate) struct NodePolicies {
    current: RwLock<Option<Arc<PolicyStore>>>,
    /// Bumped on every change: connections compare it to re-resolve.
    generation: AtomicU64,
    /// The replicated version enforced (0: the seed from the file, or none).
    applied: AtomicU64,
    /// `auth.policy_file`, if configured.
    pub(crate) file: Option<PathBuf>,
}

/// A policy file that could not be used; the message names the file and the statement.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub(crate) struct PolicyFileError {
    pub(crate) path: PathBuf,
    pub(crate) message: String,
}

/// Reads a policy file and parses it (which validates it): its text, to replicate, and the
/// store it makes, to enforce.
pub(crate) fn read_policy_file(
    path: &std::path::Path,
) -> Result<(String, PolicyStore), PolicyFileError> {
    let err = |message: String| PolicyFileError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let store = PolicyStore::from_json(&text, 0).map_err(|e| err(e.to_string()))?;
    Ok((text, store))
}

/// Why policies were not replicated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProposePoliciesError {
    /// The document does not parse or validate (the admin API answers 400).
    #[error("{0}")]
    Invalid(String),
    /// Valid, but the cluster did not commit it (no leader, not a member: 503).
    #[error("not replicated: {0}")]
    NotReplicated(String),
}

impl NodePolicies {
    /// Loads `file` (if any) as the policies to enforce until the cluster's replicated ones
    /// are known: a node never serves clients unchecked while its seed is being replicated.
    pub(crate) fn new(file: Option<PathBuf>) -> Result<NodePolicies, PolicyFileError> {
        let current = match &file {
            Some(p) => Some(Arc::new(read_policy_file(p)?.1)),
            None => None,
        };
        Ok(NodePolicies {
            current: RwLock::new(current),
            generation: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            file,
        })
    }

    /// The store enforced now (`None`: no policies).
    pub(crate) fn current(&self) -> Option<Arc<PolicyStore>> {
        self.current.read().clone()
    }

    /// The replicated version enforced (0: none yet).
    pub(crate) fn version(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Takes the replicated policies (an applied `SetPolicies`, a snapshot, or the state at
    /// start). Version 0 (never set in this cluster) keeps the seed from the file.
    /// Returns whether what is enforced changed.
    pub(crate) fn apply(&self, p: &roost_cluster::state::Policies) -> bool {
        if p.version == 0 {
            return false;
        }
        let next = match &p.json {
            None => None,
            Some(json) => match PolicyStore::from_json(json, p.version) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    // Validated by the node that proposed it; only a node whose policy
                    // language is older could fail here. Keep what is enforced now.
                    error!(version = p.version, error = %e, "replicated policies do not load here; the previous ones stay in force");
                    return false;
                }
            },
        };
        {
            let mut cur = self.current.write();
            // Events can repeat (a snapshot installed, entries re-applied at start): only a
            // newer version replaces what is enforced.
            if p.version <= self.applied.load(Ordering::Acquire) {
                return false;
            }
            *cur = next;
            self.applied.store(p.version, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        info!(
            version = p.version,
            policies = p.json.is_some(),
            "authorization policies changed"
        );
        true
    }
}

/// Who a connection is, for policy variables (`${iot:ClientId}`, ...): one copy per
/// connection, shared by its [`ConnPolicy`] and its session's [`ReceiveGate`].
#[derive(Debug)]
pub(crate) struct PrincipalInfo {
    client_id: String,
    username: Option<String>,
    cert_cn: Option<String>,
    cert_serial: Option<String>,
}

impl PrincipalInfo {
    fn principal(&self) -> Principal<'_> {
        Principal {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            cert_cn: self.cert_cn.as_deref(),
            cert_serial: self.cert_serial.as_deref(),
        }
    }
}

/// One connection's principal and its resolved policies.
#[derive(Debug)]
pub(crate) struct ConnPolicy {
    who: Arc<PrincipalInfo>,
    generation: u64,
    resolved: Option<PrincipalPolicies>,
    publish: PublishDecisions,
    resolved_once: bool,
}

impl ConnPolicy {
    pub(crate) fn new(
        client_id: &str,
        username: Option<&str>,
        cert: Option<&roost_transport::PeerCert>,
    ) -> ConnPolicy {
        ConnPolicy {
            who: Arc::new(PrincipalInfo {
                client_id: client_id.to_owned(),
                username: username.map(str::to_owned),
                cert_cn: cert.and_then(|c| c.cn.clone()),
                cert_serial: cert.map(|c| c.serial.clone()),
            }),
            generation: 0,
            resolved: None,
            publish: PublishDecisions::new(),
            resolved_once: false,
        }
    }

    /// Re-resolves when the node's policies changed since the last check.
    fn refresh(&mut self, node: &NodePolicies) {
        let generation = node.generation();
        if self.resolved_once && generation == self.generation {
            return;
        }
        self.resolved = node
            .current()
            .map(|s| s.for_principal(&self.who.principal()));
        self.generation = generation;
        self.resolved_once = true;
    }

    /// The decision for `action` on `resource`; `Allow` when there are no policies.
    pub(crate) fn check(
        &mut self,
        node: &NodePolicies,
        action: Action,
        resource: Resource<'_>,
    ) -> Decision {
        self.refresh(node);
        match &self.resolved {
            None => Decision::Allow,
            Some(p) => p.check(action, resource),
        }
    }

    /// The session's `mqtt:Receive` gate for this client.
    pub(crate) fn receive_gate(&self, node: &NodePolicies) -> Box<ReceiveGate> {
        let mut g = Box::new(ReceiveGate {
            who: Arc::clone(&self.who),
            resolved: None,
            cache: PublishDecisions::new(),
        });
        g.refresh(node.current().as_deref());
        g
    }

    /// The decision for a PUBLISH to `topic` (and, if `retain`, for retaining it), cached.
    pub(crate) fn publish(&mut self, node: &NodePolicies, topic: &str, retain: bool) -> Decision {
        self.refresh(node);
        let Some(p) = &self.resolved else {
            return Decision::Allow;
        };
        let d = self.publish.check(p, topic);
        if !d.is_allowed() || !retain {
            return d;
        }
        p.check(Action::Retain, Resource::Topic(topic))
    }
}

/// `mqtt:Receive` for one session: checked for every message delivered to it (under the
/// session's lock), with the decisions for recent topics cached. Re-resolved by the broker
/// when the policies change (every session, once per change).
#[derive(Debug)]
pub(crate) struct ReceiveGate {
    who: Arc<PrincipalInfo>,
    /// `None`: no policies, everything may be received.
    resolved: Option<PrincipalPolicies>,
    cache: PublishDecisions,
}

impl ReceiveGate {
    /// Re-resolves against `store` (`None`: no policies).
    pub(crate) fn refresh(&mut self, store: Option<&PolicyStore>) {
        self.resolved = store.map(|s| s.for_principal(&self.who.principal()));
        self.cache.clear();
    }

    /// Whether the client may receive a message on `topic`.
    pub(crate) fn allows(&mut self, topic: &str) -> bool {
        let Some(p) = &self.resolved else {
            return true;
        };
        if let Some(d) = self.cache.get(p.version(), topic) {
            return d.is_allowed();
        }
        let d = p.check(Action::Receive, Resource::Topic(topic));
        self.cache.insert(p.version(), topic, d);
        d.is_allowed()
    }
}

impl crate::broker::Broker {
    /// Replicates `json` (validated here first: the one place a document from the admin API
    /// is checked) as the cluster's policies, or removes them (`None`). `if_version`: only if
    /// the cluster's version is still that one. Returns the version in force afterwards.
    pub(crate) async fn propose_policies(
        &self,
        json: Option<String>,
        if_version: Option<u64>,
    ) -> Result<u64, ProposePoliciesError> {
        if let Some(j) = &json {
            PolicyStore::from_json(j, 0)
                .map_err(|e| ProposePoliciesError::Invalid(e.to_string()))?;
        }
        self.replicate_policies(json, if_version)
            .await
            .map_err(ProposePoliciesError::NotReplicated)
    }

    /// Replicates a document validated already.
    async fn replicate_policies(
        &self,
        json: Option<String>,
        if_version: Option<u64>,
    ) -> Result<u64, String> {
        let cmd = roost_cluster::types::Command::SetPolicies { json, if_version };
        self.cluster()
            .propose(cmd)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.cluster().state().read().policies().version)
    }

    /// Proposes `auth.policy_file` as it is now on disk: unconditionally (SIGHUP, reload), or
    /// only into a cluster that has no policies yet (the seed at start).
    pub(crate) async fn propose_policy_file_if(
        &self,
        if_version: Option<u64>,
    ) -> Result<u64, String> {
        let Some(path) = &self.policies.file else {
            return Err("auth.policy_file is not set".into());
        };
        let (text, _) = read_policy_file(path).map_err(|e| e.to_string())?;
        self.replicate_policies(Some(text), if_version)
            .await
            .map_err(|e| format!("not replicated: {e}"))
    }

    /// The seed at start: only into a cluster without policies.
    pub(crate) async fn propose_policy_file(&self) -> Result<u64, String> {
        self.propose_policy_file_if(Some(0)).await
    }
}
