//! Types shared by the Raft layer: node records, the commands the state machine applies and
//! their responses, and openraft's type configuration.

use roost_codec::{QoS, RetainHandling, SubscriptionOptions};
use roost_core::index::Subscription;
use roost_core::topic::{TopicFilter, TopicLimits};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Cursor;

/// A node's id, chosen by the operator (`--node-id`), unique in the cluster, never reused for a
/// different machine's data.
///
/// `#[serde(transparent)]`: it is written exactly as the `u64` it wraps, so Raft logs and
/// snapshots (postcard) written before it was a newtype read back unchanged, and the admin API's
/// JSON keeps `"node_id": 2`. On the wire (`roost.cluster.v1`) it is a plain `uint64`, converted
/// with [`NodeId::new`] / [`NodeId::get`] at the edge.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(u64);

impl NodeId {
    /// Wraps an id (0 is not a valid member id; config validation rejects it).
    pub const fn new(id: u64) -> NodeId {
        NodeId(id)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<NodeId, Self::Err> {
        s.parse().map(NodeId)
    }
}

impl From<u64> for NodeId {
    fn from(id: u64) -> NodeId {
        NodeId(id)
    }
}

impl From<NodeId> for u64 {
    fn from(id: NodeId) -> u64 {
        id.0
    }
}

/// The nodes that have local subscribers for one filter (a route of the replicated route
/// table), in ascending order, without duplicates.
///
/// A sorted vector rather than a `BTreeSet`: a route usually names one node, and a `BTreeSet`
/// allocates a whole leaf (about 100 bytes) for it, once per filter in the cluster (issue 10).
/// Serialised as a sequence, as a `BTreeSet` is, so snapshots written before it decode
/// unchanged; decoding sorts and deduplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NodeSet(Vec<NodeId>);

impl NodeSet {
    /// No node.
    pub const fn new() -> NodeSet {
        NodeSet(Vec::new())
    }

    /// Adds `node`; true if it was not there.
    pub fn insert(&mut self, node: NodeId) -> bool {
        match self.0.binary_search(&node) {
            Ok(_) => false,
            Err(i) => {
                // A cluster has a handful of nodes: grow by one, no spare room.
                self.0.reserve_exact(1);
                self.0.insert(i, node);
                true
            }
        }
    }

    /// Removes `node`; true if it was there.
    pub fn remove(&mut self, node: &NodeId) -> bool {
        match self.0.binary_search(node) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// True if `node` is in the set.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.0.binary_search(node).is_ok()
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there is no node.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nodes in ascending order.
    pub fn iter(&self) -> std::slice::Iter<'_, NodeId> {
        self.0.iter()
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> NodeSet {
        let mut nodes: Vec<NodeId> = iter.into_iter().collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.shrink_to_fit();
        NodeSet(nodes)
    }
}

impl<'a> IntoIterator for &'a NodeSet {
    type Item = &'a NodeId;
    type IntoIter = std::slice::Iter<'a, NodeId>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodeSet, D::Error> {
        Vec::<NodeId>::deserialize(d).map(NodeSet::from_iter)
    }
}

/// What the cluster records about a member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of its cluster gRPC listener (`host:port`).
    pub cluster_addr: String,
    /// Address of its MQTT listener, for operators and client redirection.
    pub mqtt_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster={} mqtt={}", self.cluster_addr, self.mqtt_addr)
    }
}

/// A retained message as the replicated state holds it. Times are wall-clock (milliseconds
/// since the Unix epoch) because the entry is applied on other machines and after restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedMessage {
    /// Topic name.
    pub topic: String,
    /// Payload (postcard writes a `Vec<u8>` as a length and the raw bytes). Written and read
    /// as one byte string ([`payload_bytes`]): the same encoding, without serde's per-byte
    /// calls, which made a 900 KiB entry take longer to encode than a heartbeat interval.
    #[serde(with = "payload_bytes")]
    pub payload: Vec<u8>,
    /// QoS it was published with.
    pub qos: u8,
    /// Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data.
    pub correlation_data: Option<Vec<u8>>,
    /// User Properties.
    pub user_properties: Vec<(String, String)>,
    /// When the Message Expiry Interval ends, if set.
    pub expires_at_unix_ms: Option<u64>,
    /// Client id of the publisher.
    pub publisher: Option<String>,
}

/// Serde for a payload as one byte string. postcard writes a byte string exactly as it writes
/// a `Vec<u8>` (a varint length, then the bytes), and serde_json writes both as an array of
/// numbers, so entries and snapshots written before read back unchanged; reading accepts
/// either form.
mod payload_bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

/// A subscription of a persistent session as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// Topic filter (`$share/g/f` included).
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling (0..=2).
    pub retain_handling: u8,
    /// Subscription identifier.
    pub identifier: Option<u32>,
}

impl StoredSubscription {
    /// A session's subscription as the registry keeps it.
    pub fn new(filter: &TopicFilter, sub: &Subscription) -> StoredSubscription {
        StoredSubscription {
            filter: filter.as_str().to_owned(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling as u8,
            identifier: sub.identifier,
        }
    }

    /// Back to a subscription; `None` if the stored values are not valid (they were checked
    /// when stored, so only a corrupted entry gives `None`).
    pub fn to_subscription(&self) -> Option<(TopicFilter, Subscription)> {
        let limits = TopicLimits {
            max_levels: usize::MAX,
            max_length: 65_535,
        };
        Some((
            TopicFilter::new(&self.filter, &limits).ok()?,
            Subscription {
                options: SubscriptionOptions {
                    qos: QoS::from_u8(self.qos)?,
                    no_local: self.no_local,
                    retain_as_published: self.retain_as_published,
                    retain_handling: RetainHandling::from_u8(self.retain_handling)?,
                },
                identifier: self.identifier,
            },
        ))
    }
}

/// A change to the replicated metadata (docs/rfcs/0002). Applied identically on every node.
///
/// Client ids and filters stay `String` here on purpose: these entries are the on-disk Raft log
/// and snapshot format (postcard), and a `String` is what every existing log holds. The typed
/// API (`ClientId`, `TopicFilter`) is converted to and from them at [`crate::Cluster`]'s and
/// [`crate::state::ClusterState`]'s edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `node` gained its first local subscriber for each filter in `add` and lost its last for
    /// each in `remove`. Filters are full strings (`$share/g/f` included).
    UpdateRoutes {
        /// The node whose routes change.
        node: NodeId,
        /// Filters it now has subscribers for.
        add: Vec<String>,
        /// Filters it no longer has subscribers for.
        remove: Vec<String>,
    },
    /// `node` now owns `client_id`'s session; the generation is bumped (the fence).
    ClaimSession {
        /// Client id.
        client_id: String,
        /// The new owner.
        node: NodeId,
        /// Clean start: the stored subscriptions of the previous session are dropped.
        #[serde(default)]
        clean: bool,
        /// Session expiry interval in seconds (kept so a restarted owner can restore it).
        #[serde(default)]
        expiry_interval: u32,
    },
    /// The subscriptions of a persistent session, replaced whole. Ignored unless `node` and
    /// `generation` still own the session. Kept so the session's subscriptions survive a
    /// restart of its node, or the loss of it.
    SetSubscriptions {
        /// Client id.
        client_id: String,
        /// The owner writing them.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// Every subscription of the session.
        subscriptions: Vec<StoredSubscription>,
        /// The session expiry interval, when it changed since the claim (a v5 DISCONNECT may
        /// change it).
        #[serde(default)]
        expiry_interval: Option<u32>,
    },
    /// The session ended on `node` (expired, or clean disconnect with expiry 0). Ignored unless
    /// `node` and `generation` still match: a stale release never removes a newer owner.
    ReleaseSession {
        /// Client id.
        client_id: String,
        /// Who releases.
        node: NodeId,
        /// The generation it owned.
        generation: u64,
    },
    /// Stores (`Some`) or clears (`None`) the retained message of a topic.
    SetRetained {
        /// Topic name.
        topic: String,
        /// The message, `None` to clear.
        message: Option<RetainedMessage>,
    },
    /// Removes the retained message of `topic` if it is still the one that expires at
    /// `expires_at_unix_ms` (a newer retained message on the topic is kept). Proposed by the
    /// leader for retained messages whose Message Expiry Interval ran out.
    ExpireRetained {
        /// Topic name.
        topic: String,
        /// The expiry of the message to remove.
        expires_at_unix_ms: u64,
    },
    /// A node left the cluster: forget its routes and the sessions it owned.
    ForgetNode {
        /// The node that left.
        node: NodeId,
    },
    /// A claim `node` gave up waiting for (its client heard CONNACK 0x88) committed anyway,
    /// and `node` built no session for it: it hands the client back to `to`, the owner its
    /// claim replaced, which keeps its session (a claim at a new generation, with the same
    /// event as a claim), or releases it (`to` is `None`: nobody owned it, or the owner it
    /// replaced is not known). Ignored unless `node` and `generation` still own the session,
    /// so a later claim is never undone. Appended last: entries logged before it read back.
    ///
    /// Also the move of a graceful stop: a draining node hands each session it owns to a
    /// peer (`node` the draining node, `to` the peer), which takes the session from it
    /// (docs/architecture.md, "Graceful drain").
    ReturnSession {
        /// Client id.
        client_id: String,
        /// The node whose late claim is withdrawn.
        node: NodeId,
        /// The generation that claim got.
        generation: u64,
        /// The owner to hand the session back to.
        to: Option<NodeId>,
    },
    /// Replaces the cluster's authorization policies (a policy store in JSON, validated by
    /// the proposing node; docs/security.md), or removes them (`None`: no policies, every
    /// authenticated client may do everything). Every node enforces what it applied; the
    /// version is the count of `SetPolicies` applied. Appended last: entries logged before it
    /// read back.
    SetPolicies {
        /// The policy store, as JSON.
        json: Option<String>,
        /// Applied only if the current version is this one (`Some(0)`: only if never set, as
        /// a node seeding its policy file proposes); `None`: unconditionally.
        if_version: Option<u64>,
    },
    /// A change to a persistent session's stored subscriptions (a SUBSCRIBE or UNSUBSCRIBE):
    /// the entries in `remove` go, those in `add` are set (replacing one with the same
    /// filter). Ignored unless `node` at `generation` still owns the session. A delta, so the
    /// log grows with what changed, not with the session's whole list per SUBSCRIBE.
    UpdateSubscriptions {
        /// Client id.
        client_id: String,
        /// The owner writing them.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// Subscriptions added or changed.
        add: Vec<StoredSubscription>,
        /// Filters unsubscribed.
        remove: Vec<String>,
    },
}

/// What applying a [`Command`] returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Nothing to report (also the response to membership entries).
    #[default]
    Done,
    /// Answer to [`Command::ClaimSession`].
    Claimed {
        /// The generation the claimant now owns.
        generation: u64,
        /// The owner and generation before this claim, if any.
        previous: Option<(NodeId, u64)>,
    },
    /// Answer to [`Command::ReleaseSession`]: whether it removed the entry.
    Released(bool),
}

openraft::declare_raft_types!(
    /// openraft's type configuration for Roost.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A `NodeSet` is written as the `BTreeSet` it replaced, and reads one back (snapshots).
    #[test]
    fn node_set_encodes_as_a_btreeset() {
        use std::collections::BTreeSet;
        let old = BTreeSet::from([NodeId::new(3), NodeId::new(1)]);
        let bytes = postcard::to_allocvec(&old).unwrap();
        let set: NodeSet = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            set.iter().copied().collect::<Vec<_>>(),
            [NodeId::new(1), NodeId::new(3)]
        );
        assert_eq!(postcard::to_allocvec(&set).unwrap(), bytes);
        // Out of order or repeated on the wire: sorted and deduplicated.
        let bytes = postcard::to_allocvec(&Vec::from([5u64, 2, 5])).unwrap();
        let set: NodeSet = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(set, [2, 5].into_iter().map(NodeId::new).collect());
    }

    #[test]
    fn node_set_insert_remove() {
        let mut set = NodeSet::new();
        assert!(set.insert(NodeId::new(2)));
        assert_eq!(set.0.capacity(), 1);
        assert!(set.insert(NodeId::new(1)));
        assert!(!set.insert(NodeId::new(2)));
        assert_eq!(set.iter().map(|n| n.get()).collect::<Vec<_>>(), [1, 2]);
        assert!(set.contains(&NodeId::new(1)) && !set.contains(&NodeId::new(3)));
        assert!(set.remove(&NodeId::new(1)));
        assert!(!set.remove(&NodeId::new(1)));
        assert_eq!(set.len(), 1);
        assert!(set.remove(&NodeId::new(2)));
        assert!(set.is_empty());
    }

    #[test]
    fn retained_payload_encodes_exactly_like_the_vec_it_was() {
        #[derive(Serialize)]
        struct Old {
            topic: String,
            payload: Vec<u8>,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct New {
            topic: String,
            #[serde(with = "payload_bytes")]
            payload: Vec<u8>,
        }
        for payload in [vec![], vec![0u8, 1, 255], vec![7u8; 300]] {
            let old = Old {
                topic: "t".into(),
                payload: payload.clone(),
            };
            let new = New {
                topic: "t".into(),
                payload,
            };
            let bytes = postcard::to_allocvec(&old).unwrap();
            assert_eq!(postcard::to_allocvec(&new).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<New>(&bytes).unwrap(), new);
            let json = serde_json::to_string(&old).unwrap();
            assert_eq!(serde_json::to_string(&new).unwrap(), json);
            assert_eq!(serde_json::from_str::<New>(&json).unwrap(), new);
        }
    }

    #[test]
    fn node_id_serializes_exactly_like_the_u64_it_replaced() {
        for raw in [0u64, 1, 7, 300, u64::MAX] {
            let id = NodeId::new(raw);
            assert_eq!(
                postcard::to_allocvec(&id).unwrap(),
                postcard::to_allocvec(&raw).unwrap()
            );
            assert_eq!(
                serde_json::to_string(&id).unwrap(),
                serde_json::to_string(&raw).unwrap()
            );
            let back: NodeId = postcard::from_bytes(&postcard::to_allocvec(&raw).unwrap()).unwrap();
            assert_eq!(back, id);
            let back: NodeId = serde_json::from_str(&raw.to_string()).unwrap();
            assert_eq!(back, id);
            assert_eq!(id.to_string(), raw.to_string());
            assert_eq!(raw.to_string().parse::<NodeId>().unwrap(), id);
        }
        // Inside a logged command, too: a ClaimSession written with `node: u64` reads back.
        #[derive(Serialize)]
        enum OldCommand {
            #[allow(dead_code)]
            UpdateRoutes {
                node: u64,
                add: Vec<String>,
                remove: Vec<String>,
            },
            ClaimSession {
                client_id: String,
                node: u64,
                clean: bool,
                expiry_interval: u32,
            },
        }
        let old = postcard::to_allocvec(&OldCommand::ClaimSession {
            client_id: "c".into(),
            node: 3,
            clean: true,
            expiry_interval: 60,
        })
        .unwrap();
        let new = Command::ClaimSession {
            client_id: "c".into(),
            node: NodeId::new(3),
            clean: true,
            expiry_interval: 60,
        };
        assert_eq!(postcard::to_allocvec(&new).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Command>(&old).unwrap(), new);
    }
}
