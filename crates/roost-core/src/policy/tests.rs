//! Evaluation, attachment, store-file and cache tests. Glob and document-parsing edge cases
//! live beside their code in `pattern.rs` and `document.rs`.

#![allow(clippy::unwrap_used)]

use super::*;
use test_case::test_case;

/// A store with the one policy `p` (the given statements), attached to everyone.
fn store_of(statements: &str) -> PolicyStore {
    let text = format!(
        r#"{{"policies": {{"p": {{"Version": "2012-10-17", "Statement": [{statements}]}}}},
            "attach": {{"all": ["p"]}}}}"#
    );
    PolicyStore::from_json(&text, 1).unwrap()
}

fn full_principal() -> Principal<'static> {
    Principal {
        client_id: "dev-1",
        username: Some("alice"),
        cert_cn: Some("sensor-7"),
        cert_serial: Some("0a:1b"),
    }
}

const ALLOW_ALL_DENY_SECRET: &str = r#"
    {"Effect": "Allow", "Action": "mqtt:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "mqtt:*", "Resource": ["client/bad", "topic/secret/*", "topicfilter/secret/*"]}"#;

#[test_case(Action::Connect, Resource::Client("dev-1"), Decision::Allow; "connect allow")]
#[test_case(Action::Connect, Resource::Client("bad"), Decision::Deny; "connect deny")]
#[test_case(Action::Publish, Resource::Topic("a/b"), Decision::Allow; "publish allow")]
#[test_case(Action::Publish, Resource::Topic("secret/x"), Decision::Deny; "publish deny")]
#[test_case(Action::Subscribe, Resource::TopicFilter("a/#"), Decision::Allow; "subscribe allow")]
#[test_case(Action::Subscribe, Resource::TopicFilter("secret/+"), Decision::Deny; "subscribe deny")]
#[test_case(Action::Receive, Resource::Topic("a/b"), Decision::Allow; "receive allow")]
#[test_case(Action::Receive, Resource::Topic("secret/x"), Decision::Deny; "receive deny")]
#[test_case(Action::Retain, Resource::Topic("a/b"), Decision::Allow; "retain allow")]
#[test_case(Action::Retain, Resource::Topic("secret/x"), Decision::Deny; "retain deny")]
fn policy_each_action_allow_and_deny(action: Action, resource: Resource<'_>, want: Decision) {
    let store = store_of(ALLOW_ALL_DENY_SECRET);
    assert_eq!(store.check(&full_principal(), action, resource), want);
}

const ONE_EACH: &str = r#"
    {"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "client/c"},
    {"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/pub"},
    {"Effect": "Allow", "Action": "mqtt:Subscribe", "Resource": "topicfilter/sub"},
    {"Effect": "Allow", "Action": "mqtt:Receive", "Resource": "topic/recv"},
    {"Effect": "Allow", "Action": "mqtt:Retain", "Resource": "topic/ret"}"#;

#[test_case(Action::Connect, Resource::Client("c"), Decision::Allow; "connect")]
#[test_case(Action::Connect, Resource::Client("d"), Decision::NoMatch; "connect other client")]
#[test_case(Action::Publish, Resource::Topic("pub"), Decision::Allow; "publish")]
#[test_case(Action::Publish, Resource::Topic("ret"), Decision::NoMatch; "retain does not allow publish")]
#[test_case(Action::Subscribe, Resource::TopicFilter("sub"), Decision::Allow; "subscribe")]
#[test_case(Action::Subscribe, Resource::Topic("sub"), Decision::NoMatch; "topicfilter is not topic")]
#[test_case(Action::Receive, Resource::Topic("recv"), Decision::Allow; "receive")]
#[test_case(Action::Receive, Resource::Topic("pub"), Decision::NoMatch; "publish does not allow receive")]
#[test_case(Action::Retain, Resource::Topic("ret"), Decision::Allow; "retain")]
#[test_case(Action::Retain, Resource::Topic("pub"), Decision::NoMatch; "publish does not allow retain")]
fn policy_actions_are_separate(action: Action, resource: Resource<'_>, want: Decision) {
    let store = store_of(ONE_EACH);
    assert_eq!(store.check(&Principal::new("c"), action, resource), want);
}

#[test]
fn policy_no_statement_applies_is_no_match() {
    let store = store_of(r#"{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/a"}"#);
    let p = Principal::new("c");
    let d = store.check(&p, Action::Publish, Resource::Topic("b"));
    assert_eq!(d, Decision::NoMatch);
    assert!(!d.is_allowed());
    assert!(!Decision::Deny.is_allowed());
    assert!(Decision::Allow.is_allowed());
    // A principal with no policy at all.
    let empty = PolicyStore::from_json(r#"{"policies": {}}"#, 1).unwrap();
    assert_eq!(
        empty.check(&p, Action::Connect, Resource::Client("c")),
        Decision::NoMatch
    );
}

#[test_case("topic/u/${client_id}/x", "u/dev-1/x", true; "client id")]
#[test_case("topic/u/${iot:ClientId}/x", "u/dev-1/x", true; "aws client id")]
#[test_case("topic/u/${client_id}/x", "u/dev-2/x", false; "other client id")]
#[test_case("topic/u/${username}/x", "u/alice/x", true; "username")]
#[test_case("topic/u/${cert.cn}/x", "u/sensor-7/x", true; "cert cn")]
#[test_case("topic/u/${iot:Certificate.Subject.CommonName}/x", "u/sensor-7/x", true; "aws cert cn")]
#[test_case("topic/u/${cert.serial}/x", "u/0a:1b/x", true; "cert serial")]
#[test_case("topic/u/${iot:Certificate.SerialNumber}/x", "u/0a:1b/x", true; "aws cert serial")]
#[test_case("topic/${username}/${cert.cn}/*", "alice/sensor-7/a/b", true; "two variables and a star")]
fn policy_variables(resource: &str, topic: &str, allowed: bool) {
    let store = store_of(&format!(
        r#"{{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "{resource}"}}"#
    ));
    let d = store.check(&full_principal(), Action::Publish, Resource::Topic(topic));
    assert_eq!(d.is_allowed(), allowed, "{resource} vs {topic}: {d}");
}

#[test]
fn policy_substituted_wildcards_are_literal() {
    let store = store_of(
        r#"{"Effect": "Allow", "Action": ["mqtt:Connect", "mqtt:Publish"],
            "Resource": ["client/${client_id}", "topic/d/${client_id}/${username}"]}"#,
    );
    let sneaky = Principal {
        username: Some("?"),
        ..Principal::new("*")
    };
    let check = |action, resource| store.check(&sneaky, action, resource);
    assert_eq!(
        check(Action::Connect, Resource::Client("*")),
        Decision::Allow
    );
    assert_eq!(
        check(Action::Connect, Resource::Client("admin")),
        Decision::NoMatch
    );
    assert_eq!(
        check(Action::Publish, Resource::Topic("d/*/?")),
        Decision::Allow
    );
    assert_eq!(
        check(Action::Publish, Resource::Topic("d/other/x")),
        Decision::NoMatch
    );
    assert_eq!(
        check(Action::Publish, Resource::Topic("d/*/x")),
        Decision::NoMatch
    );
}

#[test]
fn policy_unresolved_variable_matches_nothing() {
    let store = store_of(
        r#"{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": ["topic/u/${username}", "topic/c/${cert.cn}"]},
           {"Effect": "Deny", "Action": "mqtt:Publish", "Resource": "topic/open/${cert.serial}/*"},
           {"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/open/*"}"#,
    );
    let anonymous = Principal::new("c");
    let check = |topic| store.check(&anonymous, Action::Publish, Resource::Topic(topic));
    assert_eq!(check("u/"), Decision::NoMatch);
    assert_eq!(check("u/${username}"), Decision::NoMatch);
    assert_eq!(check("c/"), Decision::NoMatch);
    // The Deny needs a certificate serial too: it does not apply, the Allow does.
    assert_eq!(check("open//x"), Decision::Allow);
    let with_cert = Principal {
        cert_serial: Some("01"),
        ..anonymous
    };
    assert_eq!(
        store.check(&with_cert, Action::Publish, Resource::Topic("open/01/x")),
        Decision::Deny
    );
}

#[test]
fn policy_explicit_deny_in_one_document_overrides_allow_in_another() {
    let store = PolicyStore::from_json(
        r#"{"policies": {
              "allow": {"Statement": [{"Effect": "Allow", "Action": "mqtt:*", "Resource": "*"}]},
              "deny": {"Statement": [{"Effect": "Deny", "Action": "mqtt:Publish", "Resource": "topic/a/*"}]}
            },
            "attach": {"all": ["allow"], "users": {"alice": ["deny"]}}}"#,
        3,
    )
    .unwrap();
    let alice = Principal {
        username: Some("alice"),
        ..Principal::new("c")
    };
    let bob = Principal {
        username: Some("bob"),
        ..Principal::new("c")
    };
    let publish = |p: &Principal<'_>, t| store.check(p, Action::Publish, Resource::Topic(t));
    assert_eq!(publish(&alice, "a/b"), Decision::Deny);
    assert_eq!(publish(&alice, "b/b"), Decision::Allow);
    assert_eq!(publish(&bob, "a/b"), Decision::Allow);
    assert_eq!(
        store.check(&alice, Action::Receive, Resource::Topic("a/b")),
        Decision::Allow
    );
    // The document order does not matter: "deny" sorts after "allow", and still wins.
    let policies = store.for_principal(&alice);
    assert_eq!(
        policies.policy_names().collect::<Vec<_>>(),
        ["allow", "deny"]
    );
}

#[test_case("topic/a?c", "abc", true; "question mark")]
#[test_case("topic/a?c", "ac", false; "question mark needs a char")]
#[test_case("topic/a/??", "a/bc", true; "two question marks")]
#[test_case("topic/a/*", "a/b/c/d", true; "star spans levels")]
#[test_case("arn:aws:iot:eu-west-1:123456789012:topic/a/*", "a/b", true; "arn prefix")]
#[test_case("arn:aws:iot:*:*:topic/a", "a", true; "arn with wildcard region and account")]
#[test_case("arn:aws:iot:eu-west-1:123456789012:*", "anything", true; "arn star")]
fn policy_resource_patterns(resource: &str, topic: &str, allowed: bool) {
    let store = store_of(&format!(
        r#"{{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "{resource}"}}"#
    ));
    let d = store.check(
        &Principal::new("c"),
        Action::Publish,
        Resource::Topic(topic),
    );
    assert_eq!(d.is_allowed(), allowed, "{resource} vs {topic}: {d}");
}

#[test_case("iot:Connect", Action::Connect, Resource::Client("c"); "connect")]
#[test_case("iot:Publish", Action::Publish, Resource::Topic("t"); "publish")]
#[test_case("iot:Subscribe", Action::Subscribe, Resource::TopicFilter("t"); "subscribe")]
#[test_case("iot:Receive", Action::Receive, Resource::Topic("t"); "receive")]
#[test_case("iot:RetainPublish", Action::Retain, Resource::Topic("t"); "retain publish")]
#[test_case("iot:*", Action::Receive, Resource::Topic("t"); "iot star")]
fn policy_iot_synonyms(written: &str, action: Action, resource: Resource<'_>) {
    let store = store_of(&format!(
        r#"{{"Effect": "Allow", "Action": "{written}", "Resource": "*"}}"#
    ));
    assert_eq!(
        store.check(&Principal::new("c"), action, resource),
        Decision::Allow
    );
}

#[test_case("a/+", true; "exactly the filter")]
#[test_case("a/b", false; "a topic the filter would match")]
#[test_case("a/#", false; "a wider filter")]
#[test_case("a/+/c", false; "a longer filter")]
fn policy_topicfilter_plus_is_literal(filter: &str, allowed: bool) {
    let store = store_of(
        r#"{"Effect": "Allow", "Action": "mqtt:Subscribe", "Resource": ["topicfilter/a/+", "topicfilter/x/#"]}"#,
    );
    let p = Principal::new("c");
    let d = store.check(&p, Action::Subscribe, Resource::TopicFilter(filter));
    assert_eq!(d.is_allowed(), allowed, "{filter}: {d}");
    assert_eq!(
        store.check(&p, Action::Subscribe, Resource::TopicFilter("x/#")),
        Decision::Allow
    );
    assert_eq!(
        store.check(&p, Action::Subscribe, Resource::TopicFilter("x/y")),
        Decision::NoMatch
    );
}

/// One policy per way of attaching, each allowing publish to its own name.
const ATTACHMENTS: &str = r#"{
    "policies": {
        "everyone": {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/everyone"}]},
        "user":     {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/user"}]},
        "group":    {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/group"}]},
        "fleet":    {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/fleet"}]},
        "gateway":  {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/gateway"}]},
        "unused":   {"Statement": [{"Effect": "Allow", "Action": "mqtt:*", "Resource": "*"}]}
    },
    "groups": {"operators": ["bob", "alice", "bob"], "nobody": []},
    "attach": {
        "users":  {"alice": ["user"], "*": ["unused"]},
        "groups": {"operators": ["group"]},
        "certs":  {"sensor-*": ["fleet"], "gw-?": ["gateway"], "gw-1": ["fleet"]},
        "all":    ["everyone"]
    }
}"#;

#[test_case(None, None, &["everyone"]; "anonymous gets all")]
#[test_case(Some("alice"), None, &["everyone", "group", "user"]; "user and group")]
#[test_case(Some("bob"), None, &["everyone", "group"]; "group only")]
#[test_case(Some("carol"), None, &["everyone"]; "unknown user")]
#[test_case(Some("Alice"), None, &["everyone"]; "user names are case sensitive")]
#[test_case(Some("ali*"), None, &["everyone"]; "user keys are not globs")]
#[test_case(None, Some("sensor-42"), &["everyone", "fleet"]; "cert glob")]
#[test_case(None, Some("gw-2"), &["everyone", "gateway"]; "cert question mark")]
#[test_case(None, Some("gw-1"), &["everyone", "fleet", "gateway"]; "exact and glob cert keys")]
#[test_case(None, Some("gw-10"), &["everyone"]; "question mark is one char")]
#[test_case(Some("alice"), Some("sensor-1"), &["everyone", "fleet", "group", "user"]; "user and cert")]
fn policy_attachments(username: Option<&str>, cert_cn: Option<&str>, want: &[&str]) {
    let store = PolicyStore::from_json(ATTACHMENTS, 7).unwrap();
    let principal = Principal {
        username,
        cert_cn,
        ..Principal::new("c")
    };
    let policies = store.for_principal(&principal);
    assert_eq!(policies.version(), 7);
    assert_eq!(policies.policy_names().collect::<Vec<_>>(), want);
    for topic in ["everyone", "user", "group", "fleet", "gateway"] {
        let d = policies.check(Action::Publish, Resource::Topic(topic));
        assert_eq!(d.is_allowed(), want.contains(&topic), "{topic}: {d}");
        assert_eq!(
            store.check(&principal, Action::Publish, Resource::Topic(topic)),
            d
        );
    }
}

#[test]
fn policy_principal_policies_keep_the_principal() {
    let store = store_of(r#"{"Effect": "Allow", "Action": "*", "Resource": "*"}"#);
    let policies = store.for_principal(&full_principal());
    assert_eq!(policies.principal(), full_principal());
}

#[test]
fn policy_store_round_trips() {
    let store = PolicyStore::from_json(ATTACHMENTS, 7).unwrap();
    let written = store.to_json();
    let again = PolicyStore::from_json(&written, 7).unwrap();
    assert_eq!(again, store);
    assert_eq!(again.to_json(), written);
    assert_eq!(store.version(), 7);
    assert_eq!(
        store.policy_names().collect::<Vec<_>>(),
        ["everyone", "fleet", "gateway", "group", "unused", "user"]
    );
    assert!(store.policy("fleet").is_some());
    assert!(store.policy("nope").is_none());
    // Lists come back sorted and without duplicates.
    assert!(
        written.contains(r#""operators":["alice","bob"]"#),
        "{written}"
    );
    assert!(written.contains(r#""nobody":[]"#), "{written}");
    assert!(written.contains(r#""gw-1":["fleet"]"#), "{written}");
    // The order of the file does not change the store.
    let reordered = PolicyStore::from_json(
        &ATTACHMENTS.replace(
            r#""sensor-*": ["fleet"], "gw-?": ["gateway"], "gw-1": ["fleet"]"#,
            r#""gw-1": ["fleet"], "gw-?": ["gateway"], "sensor-*": ["fleet"]"#,
        ),
        7,
    )
    .unwrap();
    assert_eq!(reordered, store);
}

#[test]
fn policy_store_writes_a_normal_form() {
    let store = PolicyStore::from_json(
        r#"{"attach": {"all": ["p", "p"], "users": {"bob": ["p"], "al\"ice": ["p"]}},
            "groups": {"g": ["z", "a"]},
            "policies": {"p": {"Statement": [{"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "*"}]}}}"#,
        9,
    )
    .unwrap();
    assert_eq!(
        store.to_json(),
        concat!(
            r#"{"policies":{"p":{"Version":"2012-10-17","Statement":[{"Effect":"Allow","#,
            r#""Action":["mqtt:Connect"],"Resource":["*"]}]}},"groups":{"g":["a","z"]},"#,
            r#""attach":{"users":{"al\"ice":["p"],"bob":["p"]},"groups":{},"certs":{},"#,
            r#""all":["p"]}}"#,
        )
    );
}

#[test]
fn policy_store_cert_keys_that_are_one_literal_merge() {
    let store = PolicyStore::from_json(
        r#"{"policies": {
              "a": {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/a"}]},
              "b": {"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/b"}]}
            },
            "attach": {"certs": {"$x": ["a"], "${$}x": ["b"], "star${*}": ["a"]}}}"#,
        1,
    )
    .unwrap();
    let with_cn = |cn| Principal {
        cert_cn: Some(cn),
        ..Principal::new("c")
    };
    let names = |cn| {
        store
            .for_principal(&with_cn(cn))
            .policy_names()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("$x"), ["a", "b"]);
    assert_eq!(names("star*"), ["a"]);
    assert!(names("starry").is_empty());
}

#[test_case(
    r#"{"policies": {}, "attach": {"all": ["missing"]}}"#,
    "attach.all[0]",
    Problem::UnknownPolicy { name: "missing".into() };
    "unknown policy in all"
)]
#[test_case(
    r#"{"policies": {"p": {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}},
        "attach": {"users": {"alice": ["p", "q"]}}}"#,
    "attach.users.alice[1]",
    Problem::UnknownPolicy { name: "q".into() };
    "unknown policy for a user"
)]
#[test_case(
    r#"{"policies": {"p": {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}},
        "attach": {"groups": {"ops": ["p"]}}}"#,
    "attach.groups.ops",
    Problem::UnknownGroup { name: "ops".into() };
    "unknown group"
)]
#[test_case(
    r#"{"policies": {}, "attachments": {}}"#,
    "policy file",
    Problem::UnknownKey { key: "attachments".into(), expected: &["policies", "groups", "attach"] };
    "unknown top level key"
)]
#[test_case(
    r#"{"policies": {}, "attach": {"clients": {}}}"#,
    "attach",
    Problem::UnknownKey { key: "clients".into(), expected: &["users", "certs", "groups", "all"] };
    "unknown attach key"
)]
#[test_case(
    r#"{"groups": {}}"#,
    "policy file",
    Problem::MissingKey { key: "policies" };
    "missing policies"
)]
#[test_case(
    r#"{"policies": {"": {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}}}"#,
    "policies[\"\"]",
    Problem::EmptyName;
    "empty policy name"
)]
#[test_case(
    r#"{"policies": {"device": {"Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/${foo}"}]}}}"#,
    "policies.device.Statement[1].Resource",
    Problem::UnknownVariable { name: "foo".into() };
    "unknown variable in a stored policy"
)]
#[test_case(
    r#"{"policies": {"my device": {"Statement": [{"Effect": "Permit", "Action": "*", "Resource": "*"}]}}}"#,
    "policies[\"my device\"].Statement[0].Effect",
    Problem::UnknownEffect { effect: "Permit".into() };
    "unknown effect in a stored policy"
)]
#[test_case(
    r#"{"policies": {}, "attach": {"certs": {"sensor-${client_id}": []}}}"#,
    "attach.certs[\"sensor-${client_id}\"]",
    Problem::VariableNotAllowed { name: "client_id".into() };
    "variable in a cert key"
)]
#[test_case(
    r#"{"policies": {}, "groups": {"ops": ["alice", 7]}}"#,
    "groups.ops[1]",
    Problem::WrongType { expected: "a string", found: "a number" };
    "group member not a string"
)]
fn policy_store_parse_errors(text: &str, at: &str, problem: Problem) {
    let e = PolicyStore::from_json(text, 1).unwrap_err();
    assert_eq!(e.at(), Some(at), "{e}");
    assert_eq!(e.problem(), Some(&problem), "{e}");
}

#[test]
fn policy_store_error_message() {
    let e = PolicyStore::from_json(
        r#"{"policies": {"device": {"Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Allow", "Action": "*", "Resource": "topics/a"}]}}}"#,
        1,
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "policies.device.Statement[1].Resource: unknown resource \"topics/a\", expected \"*\", \
         \"client/...\", \"topic/...\" or \"topicfilter/...\" (optionally after \
         arn:aws:iot:<region>:<account>:)"
    );
    let e = PolicyStore::from_json(r#"{"policies": {}, "policies": {}}"#, 1).unwrap_err();
    assert!(e.to_string().contains("duplicate key \"policies\""), "{e}");
}

#[test]
fn policy_store_resource_limit_spans_documents() {
    let resources = vec!["\"*\""; MAX_RESOURCES / 2].join(",");
    let doc = format!(
        r#"{{"Statement": [{{"Effect": "Allow", "Action": "*", "Resource": [{resources}]}}]}}"#
    );
    let ok = format!(r#"{{"policies": {{"a": {doc}, "b": {doc}}}}}"#);
    assert!(PolicyStore::from_json(&ok, 1).is_ok());
    let too_many = format!(r#"{{"policies": {{"a": {doc}, "b": {doc}, "c": {doc}}}}}"#);
    let e = PolicyStore::from_json(&too_many, 1).unwrap_err();
    assert_eq!(e.at(), Some("policies.c.Statement[0].Resource[0]"), "{e}");
}

#[test]
fn policy_store_attachment_limit_counts_keys() {
    let keys: Vec<String> = (0..=MAX_ATTACHMENTS)
        .map(|i| format!(r#""k{i}-*": []"#))
        .collect();
    let text = format!(
        r#"{{"policies": {{}}, "attach": {{"certs": {{{}}}}}}}"#,
        keys.join(",")
    );
    let e = PolicyStore::from_json(&text, 1).unwrap_err();
    assert_eq!(
        e.at(),
        Some(format!("attach.certs[\"k{MAX_ATTACHMENTS}-*\"]").as_str()),
        "{e}"
    );
    assert!(matches!(e.problem(), Some(Problem::TooMany { .. })), "{e}");
}

#[test]
fn policy_cache_remembers_and_is_invalidated_by_version() {
    let v1 = store_of(r#"{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/a"}"#);
    let mut cache = PublishDecisions::new();
    let p = Principal::new("c");
    let policies = v1.for_principal(&p);
    assert_eq!(cache.check(&policies, "a"), Decision::Allow);
    assert_eq!(cache.check(&policies, "b"), Decision::NoMatch);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get(1, "a"), Some(Decision::Allow));
    assert_eq!(cache.get(2, "a"), None);

    // A policy change: the same topic is now denied, and the cache must not answer "allow".
    let text = r#"{"policies": {"p": {"Statement": [
        {"Effect": "Deny", "Action": "mqtt:Publish", "Resource": "topic/a"}]}},
        "attach": {"all": ["p"]}}"#;
    let v2 = PolicyStore::from_json(text, 2).unwrap();
    let policies = v2.for_principal(&p);
    assert_eq!(cache.check(&policies, "a"), Decision::Deny);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(2, "a"), Some(Decision::Deny));
    assert_eq!(cache.get(1, "a"), None);
}

#[test]
fn policy_cache_is_bounded() {
    let mut cache = PublishDecisions::new();
    assert!(cache.is_empty());
    for i in 0..PublishDecisions::MAX_ENTRIES {
        cache.insert(1, &format!("t/{i}"), Decision::Allow);
    }
    assert_eq!(cache.len(), PublishDecisions::MAX_ENTRIES);
    // Full by count: the next insert starts over.
    cache.insert(1, "one more", Decision::Deny);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(1, "one more"), Some(Decision::Deny));
    assert_eq!(cache.get(1, "t/0"), None);

    // Full by bytes.
    cache.clear();
    let big = "x".repeat(PublishDecisions::MAX_BYTES / 2);
    cache.insert(1, &big, Decision::Allow);
    cache.insert(1, &format!("{big}y"), Decision::Allow);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.bytes(), big.len() + 1);
    assert!(cache.bytes() <= PublishDecisions::MAX_BYTES);

    // A topic over the byte bound is never cached; an entry is not counted twice.
    let huge = "x".repeat(PublishDecisions::MAX_BYTES + 1);
    cache.insert(1, &huge, Decision::Allow);
    assert_eq!(cache.get(1, &huge), None);
    let before = cache.bytes();
    cache.insert(1, &format!("{big}y"), Decision::Allow);
    assert_eq!(cache.bytes(), before);
}

#[test]
fn policy_glob_worst_case_in_a_check_returns() {
    let store = store_of(
        r#"{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/*a*a*a*a*a*b"}"#,
    );
    let topic = "a".repeat(10_000);
    assert_eq!(
        store.check(
            &Principal::new("c"),
            Action::Publish,
            Resource::Topic(&topic)
        ),
        Decision::NoMatch
    );
}

#[test]
fn policy_names_for_logs() {
    assert_eq!(Action::Retain.to_string(), "mqtt:Retain");
    assert_eq!(Decision::NoMatch.to_string(), "no_match");
    assert_eq!(Decision::Deny.as_str(), "deny");
}

proptest::proptest! {
    /// Any text, well formed or not, gives a store or an error, never a panic; a store that
    /// loads writes a normal form that loads back equal and writes the same again.
    #[test]
    fn policy_store_from_json_never_panics(
        text in r#"([\[\]{}":, ]|"policies"|"groups"|"attach"|"users"|"certs"|"all"|"p"|"g"|"a\*"|"Version"|"2012-10-17"|"Statement"|"Sid"|"Effect"|"Allow"|"Deny"|"Action"|"mqtt:\*"|"iot:Publish"|"Resource"|"\*"|"topic/\$\{client_id\}/\?"|"client/\$\{x"|"\\u00e9\\n"|é|1|-2.5e3|true|null){0,60}"#
    ) {
        if let Ok(store) = PolicyStore::from_json(&text, 1) {
            let written = store.to_json();
            let again = PolicyStore::from_json(&written, 1);
            proptest::prop_assert_eq!(again.as_ref(), Ok(&store));
            proptest::prop_assert_eq!(again.map(|s| s.to_json()), Ok(written));
        }
    }
}

#[test]
fn policy_store_rejects_duplicate_keys_at_every_level() {
    let statement = r#"{"Effect": "Allow", "Action": "*", "Resource": "*"}"#;
    let duplicated = [
        r#"{"policies": {}, "policies": {}}"#.to_owned(),
        format!(r#"{{"policies": {{"p": {{"Statement": [{statement}]}}, "p": {{"Statement": [{statement}]}}}}}}"#),
        format!(r#"{{"policies": {{"p": {{"Statement": [{statement}], "Statement": [{statement}]}}}}}}"#),
        r#"{"policies": {"p": {"Statement": [{"Effect": "Deny", "Effect": "Allow", "Action": "*", "Resource": "*"}]}}}"#.to_owned(),
        r#"{"policies": {}, "groups": {"g": [], "g": []}}"#.to_owned(),
        r#"{"policies": {}, "attach": {"users": {"u": [], "u": []}}}"#.to_owned(),
    ];
    for text in &duplicated {
        let e = PolicyStore::from_json(text, 1).unwrap_err();
        assert!(matches!(e, PolicyError::Json(_)), "{text}: {e}");
        assert!(e.to_string().contains("duplicate key"), "{text}: {e}");
    }
}

#[test]
fn policy_store_json_errors_carry_line_and_column() {
    let e = PolicyStore::from_json("{\"policies\": {\n  \"p\": [}", 1).unwrap_err();
    assert!(matches!(e, PolicyError::Json(_)), "{e}");
    assert!(e.to_string().ends_with("at line 2 column 9"), "{e}");
    let e = PolicyStore::from_json(&" ".repeat(MAX_FILE_BYTES + 1), 1).unwrap_err();
    assert!(matches!(e, PolicyError::TooLarge { .. }), "{e}");
}
