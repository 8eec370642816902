//! Why a policy file or document was rejected.
//!
//! Every error but a JSON syntax error says where it is, as a path into the file
//! (`policies.device.Statement[2].Action[1]`), and what is wrong there ([`Problem`]). The
//! operator reads the message; tests and callers can match on the [`Problem`].

use std::fmt::Write as _;

/// A policy file or document that cannot be loaded. Loading is all or nothing: a store with one
/// bad statement is not loaded at all, so a typo never silently widens or narrows access.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The text is longer than [`super::MAX_FILE_BYTES`]; checked before parsing.
    #[error("policy file is {len} bytes, the limit is {max}")]
    TooLarge {
        /// The length of the text in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text is not JSON, nests deeper than `serde_json`'s recursion limit (127 levels of
    /// arrays and objects), or gives one key twice in an object. The message is `serde_json`'s
    /// and ends with the line and column.
    #[error("policy file is not valid JSON: {0}")]
    Json(String),
    /// The JSON is well formed but something in it is not a valid policy.
    #[error("{at}: {problem}")]
    Invalid {
        /// Where: a path such as `policies.device.Statement[2].Effect`, or `policy file` /
        /// `policy document` for the top level.
        at: String,
        /// What.
        problem: Problem,
    },
}

impl PolicyError {
    /// The problem, if this is an [`PolicyError::Invalid`] error.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            PolicyError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// Where the problem is, if this is an [`PolicyError::Invalid`] error.
    pub fn at(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// What is wrong with one value of a policy file.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The value has the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the format wants here.
        expected: &'static str,
        /// What the file has.
        found: &'static str,
    },
    /// An object has a key the format does not know (a typo, or a feature Roost lacks).
    #[error("unknown key {key:?}, expected one of {}", list(expected))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The keys allowed here.
        expected: &'static [&'static str],
    },
    /// A required key is missing.
    #[error("missing key {key:?}")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A list that must name at least one thing is empty (`Statement`, `Action`, `Resource`).
    #[error("must not be an empty list")]
    EmptyList,
    /// An AWS IAM feature Roost does not evaluate. Refused rather than ignored: ignoring a
    /// `Condition` or a `NotResource` would grant more than its author meant.
    #[error("{key:?} is not supported (Roost evaluates Effect, Action and Resource only)")]
    Unsupported {
        /// The key as written.
        key: String,
    },
    /// `Version` is not `2012-10-17`.
    #[error("unsupported policy language version {version:?}, expected \"2012-10-17\"")]
    UnsupportedVersion {
        /// The version as written.
        version: String,
    },
    /// `Effect` is neither `Allow` nor `Deny`.
    #[error("unknown Effect {effect:?}, expected \"Allow\" or \"Deny\"")]
    UnknownEffect {
        /// The effect as written.
        effect: String,
    },
    /// An action that is not one of the MQTT actions.
    #[error(
        "unknown action {action:?}, expected mqtt:Connect, mqtt:Publish, mqtt:Subscribe, \
         mqtt:Receive, mqtt:Retain, mqtt:* or *"
    )]
    UnknownAction {
        /// The action as written.
        action: String,
    },
    /// A resource that is neither `*` nor `client/...`, `topic/...`, `topicfilter/...` (after
    /// an optional ARN prefix).
    #[error(
        "unknown resource {resource:?}, expected \"*\", \"client/...\", \"topic/...\" or \
         \"topicfilter/...\" (optionally after arn:aws:iot:<region>:<account>:)"
    )]
    UnknownResourceKind {
        /// The resource as written.
        resource: String,
    },
    /// A `${...}` variable Roost does not know.
    #[error(
        "unknown variable \"${{{name}}}\", expected ${{client_id}}, ${{username}}, ${{cert.cn}}, \
         ${{cert.serial}} (or their iot: names), or ${{*}}, ${{?}}, ${{$}}"
    )]
    UnknownVariable {
        /// The name between the braces.
        name: String,
    },
    /// `${` without a closing `}`.
    #[error("\"${{\" without a closing \"}}\"")]
    UnterminatedVariable,
    /// A variable where none can be substituted (a certificate attachment key).
    #[error("variable \"${{{name}}}\" is not allowed here")]
    VariableNotAllowed {
        /// The name between the braces.
        name: String,
    },
    /// An attachment names a policy the file does not define.
    #[error("policy {name:?} does not exist")]
    UnknownPolicy {
        /// The name as written.
        name: String,
    },
    /// An attachment names a group the file does not define.
    #[error("group {name:?} does not exist")]
    UnknownGroup {
        /// The name as written.
        name: String,
    },
    /// A policy or group name is empty.
    #[error("a name must not be empty")]
    EmptyName,
    /// A string is longer than its limit.
    #[error("{len} bytes long, the limit is {max}")]
    TooLong {
        /// The length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More of something than the file may hold.
    #[error("more than {max} {what}")]
    TooMany {
        /// What is counted ("statements in one document", ...).
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

/// `"a", "b", "c"`.
fn list(items: &[&str]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item:?}");
    }
    out
}
