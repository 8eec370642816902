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
//!  session:    ReceiveGate (`mqtt:Receive`) ─ made again for every session on each change
//!
//!  Neither exists while the node has no policies: a connection then holds no policy state.
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

/// Who a client is beyond its client id: its user name and its certificate's identity (for
/// the policy variables `${username}`, `${cert.cn}`, `${cert.serial}` and `attach` keys).
/// Made once per connection, only when there is something to hold, and shared by the
/// connection's info (the admin API) and its session (`mqtt:Receive` while it is offline).
/// A client with neither (anonymous, no certificate) has none: `Option<Arc<Who>>` is `None`.
#[derive(Debug)]
pub(crate) struct Who {
    pub(crate) username: Option<Box<str>>,
    cert_cn: Option<Box<str>>,
    cert_serial: Option<Box<str>>,
}

impl Who {
    /// `None` when the client has neither a user name nor a certificate.
    pub(crate) fn new(
        username: Option<String>,
        cert: Option<&roost_transport::PeerCert>,
    ) -> Option<Arc<Who>> {
        if username.is_none() && cert.is_none() {
            return None;
        }
        Some(Arc::new(Who {
            username: username.map(String::into_boxed_str),
            cert_cn: cert.and_then(|c| c.cn.as_deref()).map(Box::from),
            cert_serial: cert.map(|c| Box::from(c.serial.as_str())),
        }))
    }
}

/// The principal a policy is resolved for: `client_id` and what `who` holds.
pub(crate) fn principal<'a>(client_id: &'a str, who: Option<&'a Who>) -> Principal<'a> {
    Principal {
        client_id,
        username: who.and_then(|w| w.username.as_deref()),
        cert_cn: who.and_then(|w| w.cert_cn.as_deref()),
        cert_serial: who.and_then(|w| w.cert_serial.as_deref()),
    }
}

/// One connection's resolved policies and publish decisions. Nothing is allocated while the
/// node has no policies (the common case for a broker without them: issue 10, memory per
/// connection); the principal is passed in by the caller, who has it already.
#[derive(Debug)]
pub(crate) struct ConnPolicy {
    /// The node's policy generation resolved against; `u64::MAX` before the first check.
    generation: u64,
    /// `None`: no policies, everything is allowed.
    resolved: Option<Box<Resolved>>,
}

#[derive(Debug)]
struct Resolved {
    policies: PrincipalPolicies,
    publish: PublishDecisions,
}

impl ConnPolicy {
    pub(crate) fn new() -> ConnPolicy {
        ConnPolicy {
            generation: u64::MAX,
            resolved: None,
        }
    }

    /// Re-resolves when the node's policies changed since the last check.
    fn refresh(&mut self, node: &NodePolicies, who: &Principal<'_>) {
        let generation = node.generation();
        if generation == self.generation {
            return;
        }
        self.resolved = node.current().map(|s| {
            Box::new(Resolved {
                policies: s.for_principal(who),
                publish: PublishDecisions::new(),
            })
        });
        self.generation = generation;
    }

    /// The decision for `action` on `resource`; `Allow` when there are no policies.
    pub(crate) fn check(
        &mut self,
        node: &NodePolicies,
        who: &Principal<'_>,
        action: Action,
        resource: Resource<'_>,
    ) -> Decision {
        self.refresh(node, who);
        match &self.resolved {
            None => Decision::Allow,
            Some(r) => r.policies.check(action, resource),
        }
    }

    /// The decision for a PUBLISH to `topic` (and, if `retain`, for retaining it), cached.
    pub(crate) fn publish(
        &mut self,
        node: &NodePolicies,
        who: &Principal<'_>,
        topic: &str,
        retain: bool,
    ) -> Decision {
        self.refresh(node, who);
        let Some(r) = self.resolved.as_deref_mut() else {
            return Decision::Allow;
        };
        let d = r.publish.check(&r.policies, topic);
        if !d.is_allowed() || !retain {
            return d;
        }
        r.policies.check(Action::Retain, Resource::Topic(topic))
    }
}

/// `mqtt:Receive` for one session: checked for every message delivered to it (under the
/// session's lock), with the decisions for recent topics cached. Exists only while there are
/// policies; made again by the broker when they change (every session, once per change).
#[derive(Debug)]
pub(crate) struct ReceiveGate {
    resolved: PrincipalPolicies,
    cache: PublishDecisions,
}

impl ReceiveGate {
    /// The gate for `who` under `store`; `None` when there are no policies (everything may
    /// be received).
    pub(crate) fn resolve(
        store: Option<&PolicyStore>,
        who: &Principal<'_>,
    ) -> Option<Box<ReceiveGate>> {
        store.map(|s| {
            Box::new(ReceiveGate {
                resolved: s.for_principal(who),
                cache: PublishDecisions::new(),
            })
        })
    }

    /// Whether the client may receive a message on `topic`.
    pub(crate) fn allows(&mut self, topic: &str) -> bool {
        let p = &self.resolved;
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
