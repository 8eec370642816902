//! Authorization: AWS-IoT-style policy documents, the store that attaches them to principals,
//! and their evaluation.
//!
//! Pure, sans-IO code: the node parses a policy file into a [`PolicyStore`] (and replicates the
//! file through Raft as [`PolicyStore::to_json`]); at CONNECT it resolves once which policies
//! apply to the client ([`PolicyStore::for_principal`]); the session keeps the resulting
//! [`PrincipalPolicies`] and asks it about every CONNECT, SUBSCRIBE, PUBLISH and delivery.
//! Nothing here does I/O or keeps a clock, every type is plain data (`Send + Sync`), and
//! [`PrincipalPolicies::check`] allocates nothing: variables are read in place while matching.
//!
//! ```text
//!   policy file ──from_json(text, version)──▶ PolicyStore ──(Arc, replaced on change)
//!                                                │
//!   CONNECT ──Principal──▶ for_principal ──▶ PrincipalPolicies (kept by the session)
//!                                                │ check(action, resource) ──▶ Decision
//!     CONNECT      mqtt:Connect    Client(client id)
//!     SUBSCRIBE    mqtt:Subscribe  TopicFilter(filter as sent, `$share/g/` included)
//!     PUBLISH      mqtt:Publish    Topic(name)   ── through PublishDecisions (per session)
//!       + retain   mqtt:Retain     Topic(name)
//!     delivery     mqtt:Receive    Topic(name)
//! ```
//!
//! # The policy language
//!
//! A document is AWS IoT's JSON shape:
//!
//! ```json
//! {"Version": "2012-10-17", "Statement": [
//!   {"Effect": "Allow", "Action": ["mqtt:Connect"], "Resource": ["client/${client_id}"]},
//!   {"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/devices/${client_id}/*"},
//!   {"Effect": "Deny", "Action": "mqtt:*", "Resource": "topic/secret/*"}
//! ]}
//! ```
//!
//! - `Version` may be left out; if present it must be `"2012-10-17"`. `Statement` is a
//!   non-empty list. A statement has `Effect` (`"Allow"` or `"Deny"`, exactly), `Action` and
//!   `Resource` (each a string or a non-empty list of strings), and optionally `Sid` (kept,
//!   not used). Any other key is an error; `Condition`, `NotAction`, `NotResource`,
//!   `Principal` and `NotPrincipal` are refused by name rather than ignored, since ignoring
//!   them would grant more than their author meant.
//! - **Actions**: `mqtt:Connect`, `mqtt:Publish`, `mqtt:Subscribe`, `mqtt:Receive`,
//!   `mqtt:Retain`, and `mqtt:*` for all five. `iot:` is accepted as a synonym of `mqtt:` so
//!   that AWS policies can be pasted as they are, `RetainPublish` (AWS's name) as a synonym of
//!   `Retain`, and a bare `*` as all actions. Action names are ASCII case-insensitive, as in
//!   AWS IAM.
//! - **Resources**: `client/<client id>` (for `mqtt:Connect`), `topic/<topic name>` (for
//!   `mqtt:Publish`, `mqtt:Receive`, `mqtt:Retain`), `topicfilter/<topic filter>` (for
//!   `mqtt:Subscribe`), and `*` for every resource of every kind. An AWS ARN prefix
//!   `arn:aws:iot:<region>:<account>:` (partitions `aws`, `aws-cn`, `aws-us-gov`) is accepted
//!   and stripped; region and account are not checked, a Roost cluster being one account. A
//!   pattern only matches a request resource of its own kind.
//! - **Wildcards** in resources, as AWS IoT: `*` matches any run of characters, `/` included
//!   (`topic/devices/*` matches `devices/a/b/c`), `?` matches exactly one character. MQTT's
//!   `+` and `#` are **not** wildcards here, not even in `topicfilter/`: as in AWS IoT, the
//!   resource `topicfilter/a/+` matches only a SUBSCRIBE to exactly the filter `a/+`, not one
//!   to `a/b` or `a/#`. To allow subscribing to `a/b` and `a/c`, name them or use
//!   `topicfilter/a/*`. `${*}`, `${?}` and `${$}` are a literal `*`, `?` and `$`.
//! - **Variables** in resources are replaced by the principal's values before matching:
//!   `${client_id}` (or AWS's `${iot:ClientId}`), `${username}`, `${cert.cn}` (or
//!   `${iot:Certificate.Subject.CommonName}`), `${cert.serial}` (or
//!   `${iot:Certificate.SerialNumber}`). A substituted value is matched **literally**: a client
//!   id `a*` matches the two characters `a*`, it is never a wildcard. A resource whose variable
//!   the principal lacks (no user name, no certificate) matches nothing; note that this holds
//!   for `Deny` statements too, so a `Deny` on `topic/${username}/*` does not apply to
//!   anonymous clients. Any other `${...}` is a parse error.
//!
//! # Evaluation
//!
//! Over all documents attached to the principal: an applicable `Deny` statement wins
//! ([`Decision::Deny`]); otherwise an applicable `Allow` statement allows
//! ([`Decision::Allow`]); otherwise the request is denied implicitly ([`Decision::NoMatch`]).
//! A statement applies when its actions include the request's action and one of its resources
//! matches the request's resource. The order of statements and documents does not matter.
//! [`Decision::NoMatch`] and [`Decision::Deny`] both refuse; they differ for the log only.
//!
//! # The store file
//!
//! ```json
//! {
//!   "policies": {
//!     "device": {"Version": "2012-10-17", "Statement": [...]},
//!     "admin":  {"Statement": [{"Effect": "Allow", "Action": "mqtt:*", "Resource": "*"}]}
//!   },
//!   "groups": {"operators": ["alice", "bob"]},
//!   "attach": {
//!     "users":  {"carol": ["admin"]},
//!     "groups": {"operators": ["admin"]},
//!     "certs":  {"sensor-*": ["device"], "gateway-01": ["device", "admin"]},
//!     "all":    ["baseline"]
//!   }
//! }
//! ```
//!
//! - `policies` (required): policy name -> document. Names are non-empty.
//! - `groups` (optional): group name -> the user names (CONNECT user names) in it.
//! - `attach` (optional), every part optional:
//!   - `users`: CONNECT user name -> policies. Keys are exact.
//!   - `groups`: group -> policies, attached to every member. The group must be defined.
//!   - `certs`: certificate subject CN -> policies. Keys are **globs** (`*`, `?` as in
//!     resources, `${*}`-style escapes for literal characters, no variables), because fleets
//!     are named by pattern (`sensor-*`); every key that matches the CN applies.
//!   - `all`: policies attached to every principal, anonymous ones included.
//! - Every policy an attachment names must exist. Keys are case-sensitive. Unknown keys at
//!   any level, and a key given twice in one object, are errors.
//!
//! A principal gets the union of `all`, its user name's policies (direct and through groups)
//! and those of every certificate key its CN matches. The version of a store is not in the
//! file: the caller gives it to [`PolicyStore::from_json`] (the Raft log index that carried
//! the file, say). [`PolicyStore::to_json`] writes a normal form (keys and lists sorted) that
//! [`PolicyStore::from_json`] reads back to an equal store.
//!
//! # Limits
//!
//! A file may hold at most [`MAX_FILE_BYTES`] of text, [`MAX_POLICIES`] policies,
//! [`MAX_STATEMENTS_PER_DOCUMENT`] statements per document, [`MAX_RESOURCES`] resources in
//! all, [`MAX_ATTACHMENTS`] entries in `groups` and `attach` together (names, members, keys,
//! attached policies); a resource is at most
//! [`MAX_RESOURCE_LEN`] bytes, a name or attachment key at most [`MAX_NAME_LEN`]. Matching one
//! resource costs at most O(pattern length × resource length) (greedy glob with one backtrack
//! point, never exponential), so one check costs at most the sum of that over the principal's
//! resources, and [`PublishDecisions`] spares repeated PUBLISHes even that.
//!
//! # Example
//!
//! ```
//! use roost_core::policy::{Action, Decision, PolicyStore, Principal, Resource};
//!
//! let store = PolicyStore::from_json(r#"{
//!     "policies": {"device": {"Version": "2012-10-17", "Statement": [
//!         {"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "client/${client_id}"},
//!         {"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/devices/${client_id}/*"},
//!         {"Effect": "Deny", "Action": "mqtt:*", "Resource": "topic/devices/*/secret"}
//!     ]}},
//!     "attach": {"certs": {"sensor-*": ["device"]}}
//! }"#, 1)?;
//!
//! let principal = Principal { cert_cn: Some("sensor-7"), ..Principal::new("s7") };
//! let policies = store.for_principal(&principal);
//! assert_eq!(policies.check(Action::Connect, Resource::Client("s7")), Decision::Allow);
//! assert_eq!(policies.check(Action::Publish, Resource::Topic("devices/s7/temp")), Decision::Allow);
//! assert_eq!(policies.check(Action::Publish, Resource::Topic("devices/s7/secret")), Decision::Deny);
//! assert_eq!(policies.check(Action::Publish, Resource::Topic("devices/s8/temp")), Decision::NoMatch);
//! // No certificate: no policy is attached.
//! assert_eq!(store.check(&Principal::new("s7"), Action::Connect, Resource::Client("s7")), Decision::NoMatch);
//! # Ok::<(), roost_core::policy::PolicyError>(())
//! ```

mod cache;
mod document;
mod error;
mod pattern;
mod read;
mod store;
#[cfg(test)]
mod tests;

pub use cache::PublishDecisions;
pub use document::PolicyDocument;
pub use error::{PolicyError, Problem};
pub use store::{PolicyStore, PrincipalPolicies};

use std::fmt;

/// At most this many bytes of policy text (a store file or one document), checked before
/// parsing: 4 MiB holds the [`MAX_RESOURCES`] bound with room for long resources.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// At most this many policies in a store file.
pub const MAX_POLICIES: usize = 1_000;
/// At most this many statements in one document.
pub const MAX_STATEMENTS_PER_DOCUMENT: usize = 1_000;
/// At most this many `Resource` entries in a whole file (all statements of all documents):
/// the bound on what one check may have to match.
pub const MAX_RESOURCES: usize = 10_000;
/// At most this many bytes in one `Resource` string, ARN prefix included: bounds the
/// pattern side of the O(pattern × resource) match.
pub const MAX_RESOURCE_LEN: usize = 1_024;
/// At most this many bytes in a policy name, group name, group member or attachment key.
pub const MAX_NAME_LEN: usize = 1_024;
/// At most this many entries in `groups` and `attach` together: group names, group members,
/// attachment keys and the policy names in attachment lists. Bounds the memory of the lookup
/// tables and the certificate keys [`PolicyStore::for_principal`] matches a CN against.
pub const MAX_ATTACHMENTS: usize = 10_000;

/// An MQTT action a policy allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Connect with a client id ([`Resource::Client`]).
    Connect,
    /// Publish to a topic ([`Resource::Topic`]).
    Publish,
    /// Subscribe to a topic filter ([`Resource::TopicFilter`]).
    Subscribe,
    /// Be sent a message published to a topic ([`Resource::Topic`]).
    Receive,
    /// Publish a retained message to a topic ([`Resource::Topic`]); checked in addition to
    /// [`Action::Publish`].
    Retain,
}

impl Action {
    /// The action's name in a policy: `mqtt:Connect`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "mqtt:Connect",
            Action::Publish => "mqtt:Publish",
            Action::Subscribe => "mqtt:Subscribe",
            Action::Receive => "mqtt:Receive",
            Action::Retain => "mqtt:Retain",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request acts on. A policy resource `client/...`, `topic/...` or `topicfilter/...`
/// matches only the variant of its kind; `*` matches all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource<'a> {
    /// A client id, as in CONNECT (matched by `client/...`).
    Client(&'a str),
    /// A topic name, as in PUBLISH (matched by `topic/...`).
    Topic(&'a str),
    /// A topic filter as sent in SUBSCRIBE, `$share/{group}/` included (matched by
    /// `topicfilter/...`; `+` and `#` are plain characters there).
    TopicFilter(&'a str),
}

/// Who is asking: the values policy variables are replaced with, and what attachments are
/// resolved by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Principal<'a> {
    /// The client id (`${client_id}`), the assigned one if the server assigned it.
    pub client_id: &'a str,
    /// The CONNECT user name (`${username}`; `attach.users`, `groups`), if one was given.
    pub username: Option<&'a str>,
    /// The client certificate's subject common name (`${cert.cn}`; `attach.certs`), if the
    /// client presented a certificate.
    pub cert_cn: Option<&'a str>,
    /// The client certificate's serial number as the transport renders it (`${cert.serial}`).
    pub cert_serial: Option<&'a str>,
}

impl<'a> Principal<'a> {
    /// A principal with a client id only: no user name, no certificate.
    pub fn new(client_id: &'a str) -> Principal<'a> {
        Principal {
            client_id,
            username: None,
            cert_cn: None,
            cert_serial: None,
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// An `Allow` statement applies and no `Deny` statement does.
    Allow,
    /// A `Deny` statement applies (explicit deny).
    Deny,
    /// No statement applies: refused (implicit deny).
    NoMatch,
}

impl Decision {
    /// Whether the request may go ahead: only [`Decision::Allow`].
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }

    /// A short name for logs and metrics labels: `allow`, `deny`, `no_match`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::NoMatch => "no_match",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Evaluates a request against several documents: explicit deny wins, then any allow, else
/// no match. Stops at the first applicable `Deny`.
fn evaluate<'d>(
    documents: impl IntoIterator<Item = &'d PolicyDocument>,
    principal: &Principal<'_>,
    action: Action,
    resource: Resource<'_>,
) -> Decision {
    let mut allowed = false;
    for document in documents {
        if document.denies(principal, action, resource, &mut allowed) {
            return Decision::Deny;
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::NoMatch
    }
}
