//! Reading policy text: `serde_json` parses it into a [`Json`] tree, then the walkers in
//! [`super::document`] and [`super::store`] read that tree with the helpers here, so every error
//! names where it is (`policies.device.Statement[2].Effect`, a [`Path`]) instead of a line and
//! column only.
//!
//! ```text
//!   text ──size check──▶ serde_json::from_str::<Json> ──▶ Json ──walkers──▶ PolicyStore
//!         (MAX_FILE_BYTES)  syntax, escapes, depth,          │   (object, string, array,
//!                           a key twice in one object        │    one_or_many, Path)
//! ```
//!
//! Why our own tree and not `serde_json::Value`: two guarantees `Value` does not give.
//!
//! - A key given twice in one object is an error: in an authorization file
//!   `{"Effect": "Deny", "Effect": "Allow"}` must not quietly mean "Allow", which is what
//!   `Value` (last one wins) would make of it. [`Json`]'s `Deserialize` refuses the second key.
//! - Objects keep the order of the file, so the walkers meet errors and limits
//!   ([`super::MAX_ATTACHMENTS`]) in the order a person reads the file. `serde_json::Map` sorts
//!   its keys unless some crate in the build enables `preserve_order`; the tree must not depend
//!   on that.
//!
//! Nesting is bounded by `serde_json`'s recursion limit (arrays and objects 127 deep; a policy
//! file needs 6), which also bounds the recursion of [`Json`]'s `Deserialize` and `Drop`.

use super::error::{PolicyError, Problem};
use super::MAX_FILE_BYTES;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// A parsed JSON value, as much of it as the walkers read: numbers and booleans are never valid
/// in a policy file, so only their kind is kept (for "expected ..., found a number").
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool,
    /// A number.
    Number,
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in file order, no key twice.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What this value is, for "expected ..., found ..." messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Number => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Parses policy text: at most [`MAX_FILE_BYTES`] (checked before parsing), then one JSON value
/// with nothing but whitespace around it. A syntax error, a key given twice in one object, or
/// nesting deeper than `serde_json`'s limit is a [`PolicyError::Json`] whose message ends with
/// the line and column.
pub(crate) fn parse(text: &str) -> Result<Json, PolicyError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            len: text.len(),
            max: MAX_FILE_BYTES,
        });
    }
    serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// Builds a [`Json`] from whatever `serde_json` reads; refuses a repeated key in an object.
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    /// An object. The second occurrence of a key fails at once, so `serde_json` reports the
    /// position just after it. A set rather than a scan of `entries` per key: an object may
    /// have thousands of keys (`attach.users`), and a hostile file many more.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries: Vec<(String, Json)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {key:?} in one object"
                )));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// One step of a [`Path`].
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    /// The start: what is being parsed ("policy file", "policy document").
    Root(&'static str),
    /// A key of an object.
    Key(&'a str),
    /// An element of an array.
    Index(usize),
}

/// Where in the file a value sits, built on the stack as the walkers descend and rendered to a
/// string only when an error is reported: `policies.device.Statement[2].Action[0]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    step: Step<'a>,
}

impl<'a> Path<'a> {
    /// The root; `what` names it when the error is about the root itself.
    pub(crate) fn root(what: &'static str) -> Path<'static> {
        Path {
            parent: None,
            step: Step::Root(what),
        }
    }

    /// The value under `key` of the object at this path.
    pub(crate) fn key<'b>(&'b self, key: &'b str) -> Path<'b> {
        Path {
            parent: Some(self),
            step: Step::Key(key),
        }
    }

    /// The element `index` of the array at this path.
    pub(crate) fn index<'b>(&'b self, index: usize) -> Path<'b> {
        Path {
            parent: Some(self),
            step: Step::Index(index),
        }
    }

    /// An error about the value at this path.
    pub(crate) fn error(&self, problem: Problem) -> PolicyError {
        PolicyError::Invalid {
            at: self.to_string(),
            problem,
        }
    }

    /// Writes the steps from the root down; the root's own name is left out.
    fn write_steps(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            parent.write_steps(f)?;
        }
        match self.step {
            Step::Root(_) => Ok(()),
            Step::Index(i) => write!(f, "[{i}]"),
            Step::Key(key) => {
                let plain = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                let first = matches!(self.parent.map(|p| p.step), Some(Step::Root(_)));
                match (plain, first) {
                    (true, true) => f.write_str(key),
                    (true, false) => write!(f, ".{key}"),
                    (false, _) => write!(f, "[{key:?}]"),
                }
            }
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.parent, self.step) {
            (None, Step::Root(what)) => f.write_str(what),
            _ => self.write_steps(f),
        }
    }
}

/// The entries of the object at `path`, or an error naming what was found instead.
pub(crate) fn object<'v>(
    value: &'v Json,
    path: &Path<'_>,
) -> Result<&'v [(String, Json)], PolicyError> {
    match value {
        Json::Object(entries) => Ok(entries),
        other => Err(path.error(Problem::WrongType {
            expected: "an object",
            found: other.type_name(),
        })),
    }
}

/// The string at `path`.
pub(crate) fn string<'v>(value: &'v Json, path: &Path<'_>) -> Result<&'v str, PolicyError> {
    match value {
        Json::String(s) => Ok(s),
        other => Err(path.error(Problem::WrongType {
            expected: "a string",
            found: other.type_name(),
        })),
    }
}

/// The elements of the array at `path`.
pub(crate) fn array<'v>(value: &'v Json, path: &Path<'_>) -> Result<&'v [Json], PolicyError> {
    match value {
        Json::Array(items) => Ok(items),
        other => Err(path.error(Problem::WrongType {
            expected: "an array",
            found: other.type_name(),
        })),
    }
}

/// Fails on the first key of `entries` that is not in `allowed`, listing the allowed ones.
pub(crate) fn only_keys(
    entries: &[(String, Json)],
    allowed: &'static [&'static str],
    path: &Path<'_>,
) -> Result<(), PolicyError> {
    for (key, _) in entries {
        if !allowed.contains(&key.as_str()) {
            return Err(path.error(Problem::UnknownKey {
                key: key.clone(),
                expected: allowed,
            }));
        }
    }
    Ok(())
}

/// The value under `key`, if present.
pub(crate) fn get<'v>(entries: &'v [(String, Json)], key: &str) -> Option<&'v Json> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A list of strings at `path`. Calls `each` with every string and its own path.
pub(crate) fn strings<'v>(
    value: &'v Json,
    path: &Path<'_>,
    mut each: impl FnMut(&'v str, &Path<'_>) -> Result<(), PolicyError>,
) -> Result<(), PolicyError> {
    for (i, item) in array(value, path)?.iter().enumerate() {
        let at = path.index(i);
        each(string(item, &at)?, &at)?;
    }
    Ok(())
}

/// A string or a list of strings at `path` (AWS policies allow both for `Action` and
/// `Resource`). Calls `each` with every string and its own path; an empty list is an error,
/// since a statement that names nothing is always a mistake.
pub(crate) fn one_or_many<'v>(
    value: &'v Json,
    path: &Path<'_>,
    mut each: impl FnMut(&'v str, &Path<'_>) -> Result<(), PolicyError>,
) -> Result<(), PolicyError> {
    match value {
        Json::String(s) => each(s, path),
        Json::Array(items) if items.is_empty() => Err(path.error(Problem::EmptyList)),
        Json::Array(_) => strings(value, path, each),
        other => Err(path.error(Problem::WrongType {
            expected: "a string or an array of strings",
            found: other.type_name(),
        })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn json_error(text: &str) -> String {
        match parse(text) {
            Err(PolicyError::Json(message)) => message,
            other => panic!("{text:?}: expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn policy_json_keeps_file_order_and_kinds() {
        let v = parse(r#" {"b": [1, -2.5e+3, true, null, {}, []], "a": "x"}"#).unwrap();
        assert_eq!(
            v,
            Json::Object(vec![
                (
                    "b".into(),
                    Json::Array(vec![
                        Json::Number,
                        Json::Number,
                        Json::Bool,
                        Json::Null,
                        Json::Object(vec![]),
                        Json::Array(vec![]),
                    ])
                ),
                ("a".into(), Json::String("x".into())),
            ])
        );
    }

    #[test]
    fn policy_json_rejects_duplicate_keys_at_any_depth() {
        let e = json_error(r#"{"Effect": "Deny", "Effect": "Allow"}"#);
        assert_eq!(
            e,
            "duplicate key \"Effect\" in one object at line 1 column 27"
        );
        let e = json_error("{\"a\": [{\"k\": 1},\n {\"é\": 1, \"é\": 2}]}");
        assert!(
            e.starts_with("duplicate key \"é\" in one object at line 2"),
            "{e}"
        );
        // The same key in two objects is fine.
        assert!(parse(r#"[{"k": 1}, {"k": 2, "l": {"k": 3}}]"#).is_ok());
    }

    #[test]
    fn policy_json_syntax_errors_carry_line_and_column() {
        assert_eq!(
            json_error("{\n  \"a\": tru}"),
            "expected ident at line 2 column 11"
        );
        assert!(json_error("{\"a\": 1,}").ends_with("at line 1 column 9"));
        assert!(json_error("{} {}").starts_with("trailing characters"));
    }

    #[test]
    fn policy_json_nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(json_error(&deep).starts_with("recursion limit exceeded"));
        // Far deeper than the stack would allow if the bound were missing.
        let very_deep = "[".repeat(1_000_000);
        assert!(json_error(&very_deep).starts_with("recursion limit exceeded"));
    }

    #[test]
    fn policy_paths_render_keys_and_indexes() {
        let root = Path::root("policy file");
        assert_eq!(root.to_string(), "policy file");
        let policies = root.key("policies");
        let doc = policies.key("my device");
        let stmts = doc.key("Statement");
        let stmt = stmts.index(2);
        let field = stmt.key("Effect");
        assert_eq!(
            field.to_string(),
            "policies[\"my device\"].Statement[2].Effect"
        );
    }
}
