//! The policy store: every named policy, the groups, and which policies are attached to whom.
//! The file format is described in the [module docs](super#the-store-file).

use super::document::{Budget, PolicyDocument, WrittenDocument, WRITING_CANNOT_FAIL};
use super::error::{PolicyError, Problem};
use super::pattern::{Pattern, Variables};
use super::read::{self, Json, Path};
use super::{
    evaluate, Action, Decision, Principal, Resource, MAX_ATTACHMENTS, MAX_NAME_LEN, MAX_POLICIES,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The keys of the file.
const FILE_KEYS: &[&str] = &["policies", "groups", "attach"];

/// The keys of `attach`.
const ATTACH_KEYS: &[&str] = &["users", "certs", "groups", "all"];

/// A named policy, shared with the [`PrincipalPolicies`] resolved from the store.
type Named = (Arc<str>, Arc<PolicyDocument>);

/// Every policy of the cluster and who it is attached to, at one version.
///
/// Built by [`PolicyStore::from_json`] (all or nothing), never changed afterwards: a policy
/// change is a new store with a higher version, which sessions notice through
/// [`PrincipalPolicies::version`]. Plain data, `Send + Sync`; share it behind an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStore {
    /// Given by the caller (the Raft log index that carried the file, say).
    version: u64,
    /// Sorted by name; the attachments below hold indexes into it.
    policies: Vec<Named>,
    /// Group name -> member user names, as in the file (sorted, no duplicates).
    groups: BTreeMap<Box<str>, Vec<Box<str>>>,
    /// `attach.users`, `attach.certs`, `attach.groups`, as in the file: key -> policy indexes.
    attach_users: BTreeMap<Box<str>, Vec<usize>>,
    attach_certs: BTreeMap<Box<str>, Vec<usize>>,
    attach_groups: BTreeMap<Box<str>, Vec<usize>>,
    /// `attach.all`.
    attach_all: Vec<usize>,
    /// Derived: user name -> policies attached to the user directly or through a group.
    by_user: HashMap<Box<str>, Vec<usize>>,
    /// Derived: certificate keys without wildcards -> policies.
    by_cert: HashMap<Box<str>, Vec<usize>>,
    /// Derived: certificate keys with `*` or `?` -> policies, in key order.
    by_cert_glob: Vec<(Pattern, Vec<usize>)>,
}

impl PolicyStore {
    /// Parses a store file (see the [module docs](super#the-store-file)) and gives it
    /// `version`. Fails, naming the place, on anything the format does not know, a policy or
    /// group that an attachment names but the file does not define, and a file over the limits
    /// ([`super::MAX_FILE_BYTES`] and the others).
    pub fn from_json(text: &str, version: u64) -> Result<PolicyStore, PolicyError> {
        let value = read::parse(text)?;
        Parser::default().parse(&value, version)
    }

    /// Writes the store file back: names and keys sorted, lists sorted and without duplicates,
    /// documents as [`PolicyDocument::to_json`] writes them. `from_json(&to_json(), version)`
    /// gives an equal store; the version is not part of the file.
    pub fn to_json(&self) -> String {
        let written = WrittenStore {
            policies: self
                .policies
                .iter()
                .map(|(name, doc)| (&**name, doc.written()))
                .collect(),
            groups: &self.groups,
            attach: WrittenAttach {
                users: self.names_by_key(&self.attach_users),
                groups: self.names_by_key(&self.attach_groups),
                certs: self.names_by_key(&self.attach_certs),
                all: self.names(&self.attach_all),
            },
        };
        serde_json::to_string(&written).expect(WRITING_CANNOT_FAIL)
    }

    /// The version the caller gave [`PolicyStore::from_json`].
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&PolicyDocument> {
        let i = self
            .policies
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()?;
        self.policies.get(i).map(|(_, doc)| &**doc)
    }

    /// The names of all policies, sorted.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.policies.iter().map(|(name, _)| &**name)
    }

    /// Resolves, once, which policies apply to `principal`: `attach.all`, those attached to its
    /// user name directly or through its groups, and those whose certificate key matches its
    /// certificate CN. A session keeps the result for its checks and resolves again when
    /// [`PrincipalPolicies::version`] falls behind the store's.
    pub fn for_principal(&self, principal: &Principal<'_>) -> PrincipalPolicies {
        let mut indexes = self.attach_all.clone();
        if let Some(user) = principal.username {
            if let Some(attached) = self.by_user.get(user) {
                indexes.extend_from_slice(attached);
            }
        }
        if let Some(cn) = principal.cert_cn {
            if let Some(attached) = self.by_cert.get(cn) {
                indexes.extend_from_slice(attached);
            }
            for (key, attached) in &self.by_cert_glob {
                if key.matches(cn, principal) {
                    indexes.extend_from_slice(attached);
                }
            }
        }
        indexes.sort_unstable();
        indexes.dedup();
        PrincipalPolicies {
            version: self.version,
            policies: indexes
                .iter()
                .filter_map(|&i| self.policies.get(i).cloned())
                .collect(),
            client_id: principal.client_id.into(),
            username: principal.username.map(Into::into),
            cert_cn: principal.cert_cn.map(Into::into),
            cert_serial: principal.cert_serial.map(Into::into),
        }
    }

    /// Checks one request: resolves the principal's policies (as
    /// [`PolicyStore::for_principal`]) and evaluates them. For one-off checks such as CONNECT;
    /// a session keeps a [`PrincipalPolicies`] instead.
    pub fn check(
        &self,
        principal: &Principal<'_>,
        action: Action,
        resource: Resource<'_>,
    ) -> Decision {
        self.for_principal(principal).check(action, resource)
    }

    /// The names of the policies at `indexes`.
    fn names(&self, indexes: &[usize]) -> Vec<&str> {
        indexes
            .iter()
            .filter_map(|&i| self.policies.get(i))
            .map(|(name, _)| &**name)
            .collect()
    }

    /// Attachments as written: key -> policy names.
    fn names_by_key<'a>(
        &'a self,
        attached: &'a BTreeMap<Box<str>, Vec<usize>>,
    ) -> BTreeMap<&'a str, Vec<&'a str>> {
        attached
            .iter()
            .map(|(key, indexes)| (&**key, self.names(indexes)))
            .collect()
    }
}

/// The store file as [`PolicyStore::to_json`] writes it: `policies`, `groups`, `attach`, in
/// that order; maps are `BTreeMap`s, so their keys come out sorted.
#[derive(Debug, Serialize)]
struct WrittenStore<'a> {
    policies: BTreeMap<&'a str, WrittenDocument<'a>>,
    groups: &'a BTreeMap<Box<str>, Vec<Box<str>>>,
    attach: WrittenAttach<'a>,
}

/// `attach` as written: every part present, possibly empty.
#[derive(Debug, Serialize)]
struct WrittenAttach<'a> {
    users: BTreeMap<&'a str, Vec<&'a str>>,
    groups: BTreeMap<&'a str, Vec<&'a str>>,
    certs: BTreeMap<&'a str, Vec<&'a str>>,
    all: Vec<&'a str>,
}

/// The policies that apply to one principal, resolved by [`PolicyStore::for_principal`], with
/// the principal's variables. Owns everything (the documents are shared `Arc`s), so a session
/// keeps it for its lifetime; [`PrincipalPolicies::check`] walks no attachment.
#[derive(Debug, Clone)]
pub struct PrincipalPolicies {
    version: u64,
    /// Sorted by name.
    policies: Vec<Named>,
    client_id: Box<str>,
    username: Option<Box<str>>,
    cert_cn: Option<Box<str>>,
    cert_serial: Option<Box<str>>,
}

impl PrincipalPolicies {
    /// The version of the store these were resolved from. A session whose version is behind
    /// the store's resolves again.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The names of the policies that apply, sorted (for logs and the admin API).
    pub fn policy_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.policies.iter().map(|(name, _)| &**name)
    }

    /// The principal these were resolved for.
    pub fn principal(&self) -> Principal<'_> {
        Principal {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            cert_cn: self.cert_cn.as_deref(),
            cert_serial: self.cert_serial.as_deref(),
        }
    }

    /// Evaluates one request: explicit `Deny` in any policy wins, else any `Allow`, else
    /// [`Decision::NoMatch`].
    pub fn check(&self, action: Action, resource: Resource<'_>) -> Decision {
        let docs = self.policies.iter().map(|(_, doc)| &**doc);
        evaluate(docs, &self.principal(), action, resource)
    }
}

/// The state of one parse: the count of `groups` and `attach` entries against
/// [`MAX_ATTACHMENTS`].
#[derive(Debug, Default)]
struct Parser {
    attachments: usize,
}

impl Parser {
    fn parse(&mut self, value: &Json, version: u64) -> Result<PolicyStore, PolicyError> {
        let root = Path::root("policy file");
        let entries = read::object(value, &root)?;
        read::only_keys(entries, FILE_KEYS, &root)?;

        let policies_at = root.key("policies");
        let policies = read::get(entries, "policies")
            .ok_or_else(|| root.error(Problem::MissingKey { key: "policies" }))?;
        let policies = read::object(policies, &policies_at)?;
        if policies.len() > MAX_POLICIES {
            return Err(policies_at.error(Problem::TooMany {
                what: "policies",
                max: MAX_POLICIES,
            }));
        }
        let mut budget = Budget::new();
        let mut by_name: BTreeMap<&str, PolicyDocument> = BTreeMap::new();
        for (name, doc) in policies {
            let at = policies_at.key(name);
            check_name(name, &at)?;
            by_name.insert(name, PolicyDocument::parse(doc, &at, &mut budget)?);
        }
        let policies: Vec<Named> = by_name
            .into_iter()
            .map(|(name, doc)| (Arc::from(name), Arc::new(doc)))
            .collect();

        let mut groups: BTreeMap<Box<str>, Vec<Box<str>>> = BTreeMap::new();
        if let Some(value) = read::get(entries, "groups") {
            let groups_at = root.key("groups");
            for (name, members) in read::object(value, &groups_at)? {
                let at = groups_at.key(name);
                self.count(&at)?;
                check_name(name, &at)?;
                let mut list: Vec<Box<str>> = Vec::new();
                read::strings(members, &at, |member, at| {
                    self.count(at)?;
                    check_len(member, at)?;
                    list.push(member.into());
                    Ok(())
                })?;
                list.sort_unstable();
                list.dedup();
                groups.insert(name.as_str().into(), list);
            }
        }

        let mut store = PolicyStore {
            version,
            policies,
            groups,
            attach_users: BTreeMap::new(),
            attach_certs: BTreeMap::new(),
            attach_groups: BTreeMap::new(),
            attach_all: Vec::new(),
            by_user: HashMap::new(),
            by_cert: HashMap::new(),
            by_cert_glob: Vec::new(),
        };
        if let Some(attach) = read::get(entries, "attach") {
            self.attachments(attach, &root.key("attach"), &mut store)?;
        }
        derive_user_lookup(&mut store);
        Ok(store)
    }

    /// Parses `attach` into `store`.
    fn attachments(
        &mut self,
        value: &Json,
        at: &Path<'_>,
        store: &mut PolicyStore,
    ) -> Result<(), PolicyError> {
        let entries = read::object(value, at)?;
        read::only_keys(entries, ATTACH_KEYS, at)?;
        // In key order, so that the store does not depend on the order of the file.
        let mut cert_patterns: BTreeMap<&str, (Pattern, Vec<usize>)> = BTreeMap::new();
        for (kind, value) in entries {
            let kind_at = at.key(kind);
            if kind == "all" {
                store.attach_all = self.policy_list(value, &kind_at, &store.policies)?;
                continue;
            }
            let mut attached = BTreeMap::new();
            for (key, list) in read::object(value, &kind_at)? {
                let key_at = kind_at.key(key);
                self.count(&key_at)?;
                check_len(key, &key_at)?;
                if kind == "groups" && !store.groups.contains_key(key.as_str()) {
                    return Err(key_at.error(Problem::UnknownGroup { name: key.clone() }));
                }
                let indexes = self.policy_list(list, &key_at, &store.policies)?;
                if kind == "certs" {
                    let pattern =
                        Pattern::parse(key, Variables::Refused).map_err(|p| key_at.error(p))?;
                    cert_patterns.insert(key.as_str(), (pattern, indexes.clone()));
                }
                attached.insert(key.as_str().into(), indexes);
            }
            match kind.as_str() {
                "users" => store.attach_users = attached,
                "certs" => store.attach_certs = attached,
                _ => store.attach_groups = attached,
            }
        }
        for (pattern, indexes) in cert_patterns.into_values() {
            match pattern.as_literal() {
                // `${$}x` and `$x` are one literal: merge their policies.
                Some(literal) => {
                    let merged = store.by_cert.entry(literal.into()).or_default();
                    merged.extend_from_slice(&indexes);
                    merged.sort_unstable();
                    merged.dedup();
                }
                None => store.by_cert_glob.push((pattern, indexes)),
            }
        }
        Ok(())
    }

    /// A list of policy names -> their indexes, sorted, without duplicates.
    fn policy_list(
        &mut self,
        value: &Json,
        at: &Path<'_>,
        policies: &[Named],
    ) -> Result<Vec<usize>, PolicyError> {
        let mut indexes = Vec::new();
        read::strings(value, at, |name, at| {
            self.count(at)?;
            let i = policies
                .binary_search_by(|(n, _)| (**n).cmp(name))
                .map_err(|_| {
                    at.error(Problem::UnknownPolicy {
                        name: name.to_owned(),
                    })
                })?;
            indexes.push(i);
            Ok(())
        })?;
        indexes.sort_unstable();
        indexes.dedup();
        Ok(indexes)
    }

    /// Counts one group name, group member, attachment key or attached policy name against
    /// [`MAX_ATTACHMENTS`].
    fn count(&mut self, at: &Path<'_>) -> Result<(), PolicyError> {
        self.attachments += 1;
        if self.attachments > MAX_ATTACHMENTS {
            return Err(at.error(Problem::TooMany {
                what: "entries in groups and attach (names, members, keys, policies)",
                max: MAX_ATTACHMENTS,
            }));
        }
        Ok(())
    }
}

/// Fills [`PolicyStore::by_user`]: each user's direct attachments and its groups'.
fn derive_user_lookup(store: &mut PolicyStore) {
    for (user, indexes) in &store.attach_users {
        store
            .by_user
            .entry(user.clone())
            .or_default()
            .extend_from_slice(indexes);
    }
    for (group, indexes) in &store.attach_groups {
        for member in store.groups.get(group).into_iter().flatten() {
            store
                .by_user
                .entry(member.clone())
                .or_default()
                .extend_from_slice(indexes);
        }
    }
    for indexes in store.by_user.values_mut() {
        indexes.sort_unstable();
        indexes.dedup();
    }
}

/// A policy or group name: not empty, at most [`MAX_NAME_LEN`] bytes.
fn check_name(name: &str, at: &Path<'_>) -> Result<(), PolicyError> {
    if name.is_empty() {
        return Err(at.error(Problem::EmptyName));
    }
    check_len(name, at)
}

/// A name or key of at most [`MAX_NAME_LEN`] bytes.
fn check_len(name: &str, at: &Path<'_>) -> Result<(), PolicyError> {
    if name.len() > MAX_NAME_LEN {
        return Err(at.error(Problem::TooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        }));
    }
    Ok(())
}
