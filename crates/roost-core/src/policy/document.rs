//! One policy document: its statements, how they are parsed from JSON and written back, and how
//! one document votes on a request.

use super::error::{PolicyError, Problem};
use super::pattern::{Pattern, Variables};
use super::read::{self, Json, Path};
use super::{
    Action, Decision, Principal, Resource, MAX_RESOURCES, MAX_RESOURCE_LEN,
    MAX_STATEMENTS_PER_DOCUMENT,
};
use serde::Serialize;

/// The only policy language version there is (AWS IAM's current one).
const VERSION: &str = "2012-10-17";

/// The keys of a document.
const DOCUMENT_KEYS: &[&str] = &["Version", "Statement"];

/// The keys of a statement.
const STATEMENT_KEYS: &[&str] = &["Sid", "Effect", "Action", "Resource"];

/// IAM statement keys Roost refuses by name, with a clearer message than "unknown key".
const UNSUPPORTED_KEYS: &[&str] = &[
    "NotAction",
    "NotResource",
    "Condition",
    "Principal",
    "NotPrincipal",
];

/// How many resources a file may still add (shared by all documents of a store).
#[derive(Debug)]
pub(crate) struct Budget {
    resources_left: usize,
}

impl Budget {
    /// The budget of one file: [`MAX_RESOURCES`] resources.
    pub(crate) fn new() -> Budget {
        Budget {
            resources_left: MAX_RESOURCES,
        }
    }
}

/// A parsed AWS-IoT-style policy document: a list of statements, each allowing or denying some
/// MQTT actions on some resources. See the [module docs](super) for the language.
///
/// Immutable once parsed. [`PolicyDocument::to_json`] writes it back in a normal form (lists
/// always, keys as written) that parses to an equal document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    statements: Vec<Statement>,
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

impl Effect {
    fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "Allow",
            Effect::Deny => "Deny",
        }
    }
}

/// A set of [`Action`]s, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Actions(u8);

impl Actions {
    const ALL: Actions = Actions(0b1_1111);

    fn bit(action: Action) -> u8 {
        match action {
            Action::Connect => 1,
            Action::Publish => 1 << 1,
            Action::Subscribe => 1 << 2,
            Action::Receive => 1 << 3,
            Action::Retain => 1 << 4,
        }
    }

    fn contains(self, action: Action) -> bool {
        self.0 & Actions::bit(action) != 0
    }

    /// The actions an `Action` string names: `*`, or `mqtt:`/`iot:` then a name or `*`, both
    /// parts ASCII case-insensitive as in AWS IAM. `Retain` is also accepted as AWS's
    /// `RetainPublish`.
    fn parse(s: &str) -> Option<Actions> {
        if s == "*" {
            return Some(Actions::ALL);
        }
        let (prefix, name) = s.split_once(':')?;
        if !prefix.eq_ignore_ascii_case("mqtt") && !prefix.eq_ignore_ascii_case("iot") {
            return None;
        }
        if name == "*" {
            return Some(Actions::ALL);
        }
        let names: [(&str, Action); 6] = [
            ("Connect", Action::Connect),
            ("Publish", Action::Publish),
            ("Subscribe", Action::Subscribe),
            ("Receive", Action::Receive),
            ("Retain", Action::Retain),
            ("RetainPublish", Action::Retain),
        ];
        for (known, action) in names {
            if name.eq_ignore_ascii_case(known) {
                return Some(Actions(Actions::bit(action)));
            }
        }
        None
    }
}

/// The kind of resource a pattern applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `*`: every resource of every kind.
    Any,
    /// `client/...`.
    Client,
    /// `topic/...`.
    Topic,
    /// `topicfilter/...`.
    TopicFilter,
}

/// One entry of a statement's `Resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourcePattern {
    /// As written, ARN prefix included, for [`PolicyDocument::to_json`].
    written: Box<str>,
    kind: Kind,
    /// The part after `client/`, `topic/` or `topicfilter/` (unused for [`Kind::Any`]).
    pattern: Pattern,
}

impl ResourcePattern {
    fn parse(written: &str) -> Result<ResourcePattern, Problem> {
        if written.len() > MAX_RESOURCE_LEN {
            return Err(Problem::TooLong {
                len: written.len(),
                max: MAX_RESOURCE_LEN,
            });
        }
        let unknown = || Problem::UnknownResourceKind {
            resource: written.to_owned(),
        };
        let bare = strip_arn(written).ok_or_else(unknown)?;
        let (kind, rest) = if bare == "*" {
            (Kind::Any, "")
        } else {
            match bare.split_once('/') {
                Some(("client", rest)) => (Kind::Client, rest),
                Some(("topic", rest)) => (Kind::Topic, rest),
                Some(("topicfilter", rest)) => (Kind::TopicFilter, rest),
                _ => return Err(unknown()),
            }
        };
        Ok(ResourcePattern {
            written: written.into(),
            kind,
            pattern: Pattern::parse(rest, Variables::Allowed)?,
        })
    }

    fn matches(&self, resource: Resource<'_>, principal: &Principal<'_>) -> bool {
        let text = match (self.kind, resource) {
            (Kind::Any, _) => return true,
            (Kind::Client, Resource::Client(s))
            | (Kind::Topic, Resource::Topic(s))
            | (Kind::TopicFilter, Resource::TopicFilter(s)) => s,
            _ => return false,
        };
        self.pattern.matches(text, principal)
    }
}

/// The resource without an `arn:<partition>:iot:<region>:<account>:` prefix. Region and account
/// are not checked (a Roost cluster is one "account"); the partition must be an AWS one. A
/// string that starts with `arn:` but is not such an ARN gives `None`.
fn strip_arn(resource: &str) -> Option<&str> {
    let Some(arn) = resource.strip_prefix("arn:") else {
        return Some(resource);
    };
    let mut parts = arn.splitn(5, ':');
    let partition = parts.next()?;
    let service = parts.next()?;
    let _region = parts.next()?;
    let _account = parts.next()?;
    let rest = parts.next()?;
    let aws = matches!(partition, "aws" | "aws-cn" | "aws-us-gov");
    (aws && service == "iot").then_some(rest)
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    /// The optional `Sid`, kept for `to_json` and for people reading the file.
    sid: Option<Box<str>>,
    effect: Effect,
    actions: Actions,
    /// The `Action` strings as written, for `to_json`.
    actions_written: Vec<Box<str>>,
    resources: Vec<ResourcePattern>,
}

/// What [`serde_json::to_string`] cannot fail on: the written forms below are structs, lists and
/// maps with string keys only.
pub(crate) const WRITING_CANNOT_FAIL: &str = "written policy JSON has only string keys";

/// A document as [`PolicyDocument::to_json`] writes it: `Version` then `Statement`, as AWS
/// writes them. Fields serialize in declaration order, whatever `serde_json`'s features.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WrittenDocument<'a> {
    version: &'static str,
    statement: Vec<WrittenStatement<'a>>,
}

/// A statement as written: `Sid` (if any), `Effect`, then `Action` and `Resource` as lists of
/// the strings as they were read.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct WrittenStatement<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    effect: &'static str,
    action: &'a [Box<str>],
    resource: Vec<&'a str>,
}

impl Statement {
    fn applies(&self, principal: &Principal<'_>, action: Action, resource: Resource<'_>) -> bool {
        self.actions.contains(action)
            && self
                .resources
                .iter()
                .any(|r| r.matches(resource, principal))
    }

    fn parse(value: &Json, at: &Path<'_>, budget: &mut Budget) -> Result<Statement, PolicyError> {
        let entries = read::object(value, at)?;
        for (key, _) in entries {
            if UNSUPPORTED_KEYS.contains(&key.as_str()) {
                return Err(at.key(key).error(Problem::Unsupported { key: key.clone() }));
            }
        }
        read::only_keys(entries, STATEMENT_KEYS, at)?;
        let required = |key: &'static str| {
            read::get(entries, key).ok_or_else(|| at.error(Problem::MissingKey { key }))
        };

        let sid = match read::get(entries, "Sid") {
            Some(v) => Some(read::string(v, &at.key("Sid"))?.into()),
            None => None,
        };

        let effect_at = at.key("Effect");
        let effect = match read::string(required("Effect")?, &effect_at)? {
            "Allow" => Effect::Allow,
            "Deny" => Effect::Deny,
            other => {
                return Err(effect_at.error(Problem::UnknownEffect {
                    effect: other.to_owned(),
                }))
            }
        };

        let mut actions = Actions::default();
        let mut actions_written = Vec::new();
        read::one_or_many(required("Action")?, &at.key("Action"), |s, at| {
            let parsed = Actions::parse(s).ok_or_else(|| {
                at.error(Problem::UnknownAction {
                    action: s.to_owned(),
                })
            })?;
            actions.0 |= parsed.0;
            actions_written.push(s.into());
            Ok(())
        })?;

        let mut resources = Vec::new();
        read::one_or_many(required("Resource")?, &at.key("Resource"), |s, at| {
            if budget.resources_left == 0 {
                return Err(at.error(Problem::TooMany {
                    what: "resources in one file",
                    max: MAX_RESOURCES,
                }));
            }
            budget.resources_left -= 1;
            resources.push(ResourcePattern::parse(s).map_err(|p| at.error(p))?);
            Ok(())
        })?;

        Ok(Statement {
            sid,
            effect,
            actions,
            actions_written,
            resources,
        })
    }

    fn written(&self) -> WrittenStatement<'_> {
        WrittenStatement {
            sid: self.sid.as_deref(),
            effect: self.effect.as_str(),
            action: &self.actions_written,
            resource: self.resources.iter().map(|r| &*r.written).collect(),
        }
    }
}

impl PolicyDocument {
    /// Parses one document, AWS IoT's shape:
    /// `{"Version": "2012-10-17", "Statement": [{"Effect", "Action", "Resource"}, ...]}`.
    ///
    /// `Version` may be left out; if given it must be `2012-10-17`. Limits: the text is at most
    /// [`MAX_FILE_BYTES`](super::MAX_FILE_BYTES), at most [`MAX_STATEMENTS_PER_DOCUMENT`]
    /// statements and [`MAX_RESOURCES`] resources, each resource at most [`MAX_RESOURCE_LEN`]
    /// bytes.
    pub fn from_json(text: &str) -> Result<PolicyDocument, PolicyError> {
        let value = read::parse(text)?;
        PolicyDocument::parse(&value, &Path::root("policy document"), &mut Budget::new())
    }

    /// Writes the document as JSON: `Action` and `Resource` always as lists, every string as
    /// it was written (ARN prefixes and `iot:` names included).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.written()).expect(WRITING_CANNOT_FAIL)
    }

    /// This document's vote on one request, alone: [`Decision::Deny`] if a `Deny` statement
    /// applies, else [`Decision::Allow`] if an `Allow` statement does, else
    /// [`Decision::NoMatch`].
    pub fn evaluate(
        &self,
        principal: &Principal<'_>,
        action: Action,
        resource: Resource<'_>,
    ) -> Decision {
        let mut allowed = false;
        if self.denies(principal, action, resource, &mut allowed) {
            Decision::Deny
        } else if allowed {
            Decision::Allow
        } else {
            Decision::NoMatch
        }
    }

    /// True if a `Deny` statement applies; sets `allowed` if an `Allow` statement does. Once
    /// `allowed` is set, `Allow` statements are no longer matched: only a `Deny` can change the
    /// outcome, which is what lets [`super::evaluate`] chain documents cheaply.
    pub(crate) fn denies(
        &self,
        principal: &Principal<'_>,
        action: Action,
        resource: Resource<'_>,
        allowed: &mut bool,
    ) -> bool {
        for statement in &self.statements {
            match statement.effect {
                Effect::Deny => {
                    if statement.applies(principal, action, resource) {
                        return true;
                    }
                }
                Effect::Allow => {
                    if !*allowed && statement.applies(principal, action, resource) {
                        *allowed = true;
                    }
                }
            }
        }
        false
    }

    /// Parses the document at `at`, charging its resources to `budget`.
    pub(crate) fn parse(
        value: &Json,
        at: &Path<'_>,
        budget: &mut Budget,
    ) -> Result<PolicyDocument, PolicyError> {
        let entries = read::object(value, at)?;
        read::only_keys(entries, DOCUMENT_KEYS, at)?;
        if let Some(version) = read::get(entries, "Version") {
            let at = at.key("Version");
            let version = read::string(version, &at)?;
            if version != VERSION {
                return Err(at.error(Problem::UnsupportedVersion {
                    version: version.to_owned(),
                }));
            }
        }
        let statements_at = at.key("Statement");
        let statements = read::get(entries, "Statement")
            .ok_or_else(|| at.error(Problem::MissingKey { key: "Statement" }))?;
        let items = read::array(statements, &statements_at)?;
        if items.is_empty() {
            return Err(statements_at.error(Problem::EmptyList));
        }
        if items.len() > MAX_STATEMENTS_PER_DOCUMENT {
            return Err(statements_at.error(Problem::TooMany {
                what: "statements in one document",
                max: MAX_STATEMENTS_PER_DOCUMENT,
            }));
        }
        let mut parsed = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            parsed.push(Statement::parse(item, &statements_at.index(i), budget)?);
        }
        Ok(PolicyDocument { statements: parsed })
    }

    /// The document in its written form, for [`PolicyDocument::to_json`] and the store's.
    pub(crate) fn written(&self) -> WrittenDocument<'_> {
        WrittenDocument {
            version: VERSION,
            statement: self.statements.iter().map(Statement::written).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::policy::MAX_FILE_BYTES;
    use test_case::test_case;

    fn doc(text: &str) -> PolicyDocument {
        PolicyDocument::from_json(text).unwrap()
    }

    fn err(text: &str) -> PolicyError {
        PolicyDocument::from_json(text).unwrap_err()
    }

    #[test_case("mqtt:Connect", 1; "connect")]
    #[test_case("iot:Connect", 1; "iot synonym")]
    #[test_case("MQTT:publish", 1 << 1; "case insensitive")]
    #[test_case("iot:Subscribe", 1 << 2; "subscribe")]
    #[test_case("mqtt:Receive", 1 << 3; "receive")]
    #[test_case("mqtt:Retain", 1 << 4; "retain")]
    #[test_case("iot:RetainPublish", 1 << 4; "aws retain name")]
    #[test_case("mqtt:*", 0b1_1111; "mqtt star")]
    #[test_case("iot:*", 0b1_1111; "iot star")]
    #[test_case("*", 0b1_1111; "bare star")]
    fn policy_action_names(written: &str, bits: u8) {
        assert_eq!(Actions::parse(written), Some(Actions(bits)));
    }

    #[test_case("mqtt:Pub*"; "partial wildcard")]
    #[test_case("iot:GetThingShadow"; "not mqtt")]
    #[test_case("s3:Publish"; "other service")]
    #[test_case("Publish"; "no prefix")]
    fn policy_action_names_unknown(written: &str) {
        assert_eq!(Actions::parse(written), None);
    }

    #[test_case("topic/a", Some("topic/a"); "no arn")]
    #[test_case("arn:aws:iot:eu-west-1:123456789012:topic/a", Some("topic/a"); "arn")]
    #[test_case("arn:aws:iot:*:*:client/x", Some("client/x"); "arn with wildcards")]
    #[test_case("arn:aws-cn:iot:cn-north-1:1:*", Some("*"); "china partition star")]
    #[test_case("arn:aws:s3:::bucket/x", None; "other service")]
    #[test_case("arn:aws:iot:eu-west-1:topic/a", None; "too few parts")]
    #[test_case("arn:other:iot:r:a:topic/a", None; "unknown partition")]
    fn policy_arn_prefix(written: &str, bare: Option<&str>) {
        assert_eq!(strip_arn(written), bare);
    }

    #[test]
    fn policy_document_round_trips() {
        let text = r#"{"Version": "2012-10-17", "Statement": [
            {"Sid": "conn", "Effect": "Allow", "Action": "iot:Connect",
             "Resource": "arn:aws:iot:eu-west-1:123456789012:client/${iot:ClientId}"},
            {"Effect": "Deny", "Action": ["mqtt:Publish", "mqtt:Retain"],
             "Resource": ["topic/secret/*", "topicfilter/a/+"]}
        ]}"#;
        let d = doc(text);
        let written = d.to_json();
        assert_eq!(doc(&written), d);
        assert_eq!(
            written,
            concat!(
                r#"{"Version":"2012-10-17","Statement":["#,
                r#"{"Sid":"conn","Effect":"Allow","Action":["iot:Connect"],"#,
                r#""Resource":["arn:aws:iot:eu-west-1:123456789012:client/${iot:ClientId}"]},"#,
                r#"{"Effect":"Deny","Action":["mqtt:Publish","mqtt:Retain"],"#,
                r#""Resource":["topic/secret/*","topicfilter/a/+"]}]}"#,
            )
        );
    }

    #[test]
    fn policy_document_version_is_optional() {
        let d = doc(r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}"#);
        let p = Principal::new("c");
        assert_eq!(
            d.evaluate(&p, Action::Connect, Resource::Client("c")),
            Decision::Allow
        );
    }

    #[test_case(
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "*"},
            {"Effect": "Alow", "Action": "mqtt:Connect", "Resource": "*"}]}"#,
        "Statement[1].Effect",
        Problem::UnknownEffect { effect: "Alow".into() };
        "unknown effect"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": ["mqtt:Connect", "mqtt:Pubish"], "Resource": "*"}]}"#,
        "Statement[0].Action[1]",
        Problem::UnknownAction { action: "mqtt:Pubish".into() };
        "unknown action in a list"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topics/a"}]}"#,
        "Statement[0].Resource",
        Problem::UnknownResourceKind { resource: "topics/a".into() };
        "unknown resource kind"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": ["topic/a", "topic/${foo}"]}]}"#,
        "Statement[0].Resource[1]",
        Problem::UnknownVariable { name: "foo".into() };
        "unknown variable"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": "mqtt:Publish", "Resource": "topic/${client_id"}]}"#,
        "Statement[0].Resource",
        Problem::UnterminatedVariable;
        "unterminated variable"
    )]
    #[test_case(
        r#"{"Statement": []}"#,
        "Statement",
        Problem::EmptyList;
        "empty statement list"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}"#,
        "Statement[0].Action",
        Problem::EmptyList;
        "empty action list"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": "*"}]}"#,
        "Statement[0]",
        Problem::MissingKey { key: "Resource" };
        "missing resource"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}]}"#,
        "Statement[0].Condition",
        Problem::Unsupported { key: "Condition".into() };
        "condition unsupported"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Efect": "Deny"}]}"#,
        "Statement[0]",
        Problem::UnknownKey { key: "Efect".into(), expected: STATEMENT_KEYS };
        "unknown statement key"
    )]
    #[test_case(
        r#"{"Version": "2012-10-17", "Statements": []}"#,
        "policy document",
        Problem::UnknownKey { key: "Statements".into(), expected: DOCUMENT_KEYS };
        "unknown top level key"
    )]
    #[test_case(
        r#"{"Version": "2008-10-17", "Statement": []}"#,
        "Version",
        Problem::UnsupportedVersion { version: "2008-10-17".into() };
        "old version"
    )]
    #[test_case(
        r#"{"Statement": [{"Effect": "Allow", "Action": 5, "Resource": "*"}]}"#,
        "Statement[0].Action",
        Problem::WrongType { expected: "a string or an array of strings", found: "a number" };
        "action of wrong type"
    )]
    #[test_case(
        r#"{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}"#,
        "Statement",
        Problem::WrongType { expected: "an array", found: "an object" };
        "statement not a list"
    )]
    fn policy_document_parse_errors(text: &str, at: &str, problem: Problem) {
        let e = err(text);
        assert_eq!(e.at(), Some(at), "{e}");
        assert_eq!(e.problem(), Some(&problem), "{e}");
    }

    #[test]
    fn policy_document_error_messages_name_statement_and_field() {
        let e = err(r#"{"Statement": [
            {"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": "mqtt:Conect", "Resource": "*"}]}"#);
        assert_eq!(
            e.to_string(),
            "Statement[2].Action: unknown action \"mqtt:Conect\", expected mqtt:Connect, \
             mqtt:Publish, mqtt:Subscribe, mqtt:Receive, mqtt:Retain, mqtt:* or *"
        );
        let e = err(
            r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}], "Id": "x"}"#,
        );
        assert_eq!(
            e.to_string(),
            "policy document: unknown key \"Id\", expected one of \"Version\", \"Statement\""
        );
        let e = err("{\"Statement\": [");
        assert!(matches!(e, PolicyError::Json(_)), "{e}");
    }

    #[test]
    fn policy_document_limits() {
        let statement = r#"{"Effect": "Allow", "Action": "*", "Resource": "*"}"#;
        let many = vec![statement; MAX_STATEMENTS_PER_DOCUMENT + 1].join(",");
        let e = err(&format!(r#"{{"Statement": [{many}]}}"#));
        assert_eq!(
            e.problem(),
            Some(&Problem::TooMany {
                what: "statements in one document",
                max: MAX_STATEMENTS_PER_DOCUMENT
            })
        );

        let resources = vec!["\"*\""; MAX_RESOURCES + 1].join(",");
        let e = err(&format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Action": "*", "Resource": [{resources}]}}]}}"#
        ));
        assert_eq!(
            e.at(),
            Some(format!("Statement[0].Resource[{MAX_RESOURCES}]").as_str())
        );

        let long = format!("topic/{}", "a".repeat(MAX_RESOURCE_LEN));
        let e = err(&format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Action": "*", "Resource": "{long}"}}]}}"#
        ));
        assert_eq!(
            e.problem(),
            Some(&Problem::TooLong {
                len: MAX_RESOURCE_LEN + 6,
                max: MAX_RESOURCE_LEN
            })
        );

        let e = err(&" ".repeat(MAX_FILE_BYTES + 1));
        assert_eq!(
            e,
            PolicyError::TooLarge {
                len: MAX_FILE_BYTES + 1,
                max: MAX_FILE_BYTES
            }
        );
    }
}
