//! Validated topic names and topic filters, and the matching rule between them.
//!
//! Owns the rules of MQTT 5.0 §4.7 (topic names and filters) and §4.8.2 (shared subscriptions),
//! which MQTT 3.1.1 §4.7 shares apart from `$share`. Everything that reaches the subscription
//! index ([`crate::index`]) or the retained store ([`crate::retained`]) has been validated here
//! first, so those tries can split on `/` without re-checking anything.
//!
//! Callers: the session validates the topic of every PUBLISH with [`TopicName::new`] and every
//! SUBSCRIBE / UNSUBSCRIBE entry with [`TopicFilter::new`]; a failure maps to the reason code the
//! client is sent with [`TopicError::reason_code`].
//!
//! Both types hold an `Arc<str>`, so cloning them into index entries, deliveries and retained
//! messages copies no bytes. They are plain values: no interior mutability, `Send + Sync`.
//!
//! ```text
//!   "$share/workers/sport/+/score"
//!    └─ share ─┘└group┘ └─ filter ─┘     filter() = "sport/+/score", share_group() = Some("workers")
//! ```

use roost_codec::ReasonCode;
use std::sync::Arc;

/// Limits applied when validating topic names and filters.
///
/// The defaults are the protocol's own bound on length (a UTF-8 string is at most 65,535 bytes,
/// MQTT 5.0 §1.5.4) and a level bound that keeps the recursive trie walks in [`crate::index`]
/// and [`crate::retained`] shallow: their recursion depth is at most `max_levels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Maximum number of `/`-separated levels (default 128).
    pub max_levels: usize,
    /// Maximum length in bytes of the whole string, `$share/group/` included (default 65,535).
    pub max_length: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_levels: 128,
            max_length: 65_535,
        }
    }
}

/// Whether a rejected string was meant as a topic name or a topic filter.
///
/// The same check (empty, too long, ...) fails with a different reason code for each: 0x90
/// (Topic Name invalid) for a PUBLISH, 0x8F (Topic Filter invalid) for a SUBSCRIBE, where 0x90 is
/// not even a legal SUBACK reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// A topic name (PUBLISH, will topic).
    Name,
    /// A topic filter (SUBSCRIBE, UNSUBSCRIBE).
    Filter,
}

impl std::fmt::Display for TopicKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicKind::Name => "topic name",
            TopicKind::Filter => "topic filter",
        })
    }
}

/// Why a topic name or filter was rejected. Each message cites the normative statement.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// The string is empty.
    #[error("[MQTT-4.7.3-1] {0} must be at least one character long")]
    Empty(TopicKind),
    /// A topic name contains `+` or `#`.
    #[error("[MQTT-3.3.2-2] topic name contains a wildcard character")]
    Wildcard,
    /// Longer than [`TopicLimits::max_length`].
    #[error("{kind} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Name or filter.
        kind: TopicKind,
        /// The length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// More levels than [`TopicLimits::max_levels`].
    #[error("{kind} has {levels} levels, the limit is {max}")]
    TooManyLevels {
        /// Name or filter.
        kind: TopicKind,
        /// The number of levels.
        levels: usize,
        /// The configured limit.
        max: usize,
    },
    /// A wildcard is misplaced in a topic filter; the message cites the clause.
    #[error("{0}")]
    InvalidFilter(&'static str),
    /// A malformed `$share/{ShareName}/{filter}`; the message cites the clause.
    #[error("{0}")]
    InvalidShare(&'static str),
    /// The string contains U+0000.
    #[error("[MQTT-4.7.3-2] {0} contains the null character U+0000")]
    NullChar(TopicKind),
}

impl TopicError {
    /// The v5 reason code the client is sent: 0x90 (Topic Name invalid) for a rejected name,
    /// 0x8F (Topic Filter invalid) for a rejected filter.
    pub fn reason_code(&self) -> ReasonCode {
        let kind = match self {
            TopicError::Empty(kind) | TopicError::NullChar(kind) => *kind,
            TopicError::TooLong { kind, .. } | TopicError::TooManyLevels { kind, .. } => *kind,
            TopicError::Wildcard => TopicKind::Name,
            TopicError::InvalidFilter(_) | TopicError::InvalidShare(_) => TopicKind::Filter,
        };
        match kind {
            TopicKind::Name => ReasonCode::TOPIC_NAME_INVALID,
            TopicKind::Filter => ReasonCode::TOPIC_FILTER_INVALID,
        }
    }
}

/// The prefix of a shared subscription (MQTT 5.0 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Checks what names and filters have in common: non-empty, no U+0000, length and level limits.
fn check_common(
    s: &str,
    levels_part: &str,
    kind: TopicKind,
    limits: &TopicLimits,
) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty(kind));
    }
    if s.len() > limits.max_length {
        return Err(TopicError::TooLong {
            kind,
            len: s.len(),
            max: limits.max_length,
        });
    }
    if s.contains('\0') {
        return Err(TopicError::NullChar(kind));
    }
    let levels = levels_part.bytes().filter(|b| *b == b'/').count() + 1;
    if levels > limits.max_levels {
        return Err(TopicError::TooManyLevels {
            kind,
            levels,
            max: limits.max_levels,
        });
    }
    Ok(())
}

/// A validated topic name: non-empty, no wildcards, no U+0000, within [`TopicLimits`].
///
/// Cheap to clone (an `Arc<str>` inside). Ordered and hashed by the string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `s` as a topic name.
    pub fn new(s: &str, limits: &TopicLimits) -> Result<Self, TopicError> {
        check_common(s, s, TopicKind::Name, limits)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::Wildcard);
        }
        Ok(TopicName(Arc::from(s)))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for topics starting with `$` (`$SYS/...`): a filter starting with a wildcard does not
    /// match them ([MQTT-4.7.2-1]).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// The `/`-separated levels; empty levels included (`"/a/"` has three: `""`, `"a"`, `""`).
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated topic filter, optionally a shared subscription `$share/{group}/{filter}`.
///
/// Cheap to clone (an `Arc<str>` inside). Equality, hashing and ordering are those of the full
/// string, so `$share/g/a` and `a` are different filters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    /// The full string as the client sent it.
    full: Arc<str>,
    /// Byte offset of the filter part: 0 for a plain filter, past `$share/group/` otherwise.
    filter_start: usize,
}

impl TopicFilter {
    /// Validates `s` as a topic filter, splitting off `$share/{group}/` if present.
    pub fn new(s: &str, limits: &TopicLimits) -> Result<Self, TopicError> {
        let (filter_start, filter) = match s.strip_prefix(SHARE_PREFIX) {
            Some(rest) => {
                let Some((group, filter)) = rest.split_once('/') else {
                    return Err(TopicError::InvalidShare(
                        "[MQTT-4.8.2-2] the share name must be followed by '/' and a topic filter",
                    ));
                };
                if group.is_empty() {
                    return Err(TopicError::InvalidShare(
                        "[MQTT-4.8.2-1] the share name must be at least one character long",
                    ));
                }
                if group.contains(['+', '#']) {
                    return Err(TopicError::InvalidShare(
                        "[MQTT-4.8.2-2] the share name must not contain '+' or '#'",
                    ));
                }
                if filter.is_empty() {
                    return Err(TopicError::InvalidShare(
                        "[MQTT-4.8.2-2] the share name must be followed by a non-empty topic filter",
                    ));
                }
                (s.len() - filter.len(), filter)
            }
            None => (0, s),
        };
        check_common(s, filter, TopicKind::Filter, limits)?;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') {
                if level != "#" {
                    return Err(TopicError::InvalidFilter(
                        "[MQTT-4.7.1-1] '#' must occupy an entire level",
                    ));
                }
                if levels.peek().is_some() {
                    return Err(TopicError::InvalidFilter(
                        "[MQTT-4.7.1-1] '#' must be the last level of the filter",
                    ));
                }
            } else if level.contains('+') && level != "+" {
                return Err(TopicError::InvalidFilter(
                    "[MQTT-4.7.1-2] '+' must occupy an entire level",
                ));
            }
        }
        Ok(TopicFilter {
            full: Arc::from(s),
            filter_start,
        })
    }

    /// The full string, `$share/{group}/` included.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The share name of a shared subscription, `None` for a plain filter.
    pub fn share_group(&self) -> Option<&str> {
        if self.filter_start == 0 {
            return None;
        }
        // filter_start points past "$share/{group}/": the group sits between the two.
        self.full.get(SHARE_PREFIX.len()..self.filter_start - 1)
    }

    /// The filter part, without `$share/{group}/`.
    pub fn filter(&self) -> &str {
        self.full.get(self.filter_start..).unwrap_or_default()
    }

    /// True if the filter part contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// The filter part's `/`-separated levels.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.filter().split('/')
    }

    /// True if the filter part matches `topic` (MQTT 5.0 §4.7).
    ///
    /// `#` also matches the parent level (`sport/#` matches `sport`); a filter starting with
    /// `+` or `#` does not match a topic starting with `$` ([MQTT-4.7.2-1]).
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.filter(), topic.as_str())
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

/// The matching rule on already validated strings; the brute-force reference the tries are
/// tested against.
fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // '#' matches the rest, including nothing at all (the parent level).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) => {
                if f != t {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use test_case::test_case;

    fn name(s: &str) -> TopicName {
        TopicName::new(s, &TopicLimits::default()).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s, &TopicLimits::default()).unwrap()
    }

    // MQTT 5.0 §4.7.1.2 (multi-level wildcard).
    #[test_case("sport/tennis/player1/#", "sport/tennis/player1", true; "hash matches parent")]
    #[test_case("sport/tennis/player1/#", "sport/tennis/player1/ranking", true; "hash one level")]
    #[test_case("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true; "hash two levels")]
    #[test_case("sport/tennis/player1/#", "sport/tennis/player2", false; "hash sibling")]
    #[test_case("sport/#", "sport", true; "sport hash matches sport")]
    #[test_case("#", "sport/tennis", true; "hash alone")]
    #[test_case("#", "/", true; "hash matches slash")]
    // MQTT 5.0 §4.7.1.3 (single-level wildcard).
    #[test_case("sport/tennis/+", "sport/tennis/player1", true; "plus last level")]
    #[test_case("sport/tennis/+", "sport/tennis/player2", true; "plus last level 2")]
    #[test_case("sport/tennis/+", "sport/tennis/player1/ranking", false; "plus is one level")]
    #[test_case("sport/+", "sport", false; "plus needs a level")]
    #[test_case("sport/+", "sport/", true; "plus matches empty level")]
    #[test_case("+", "sport", true; "plus alone")]
    #[test_case("+/+", "/finance", true; "plus plus leading slash")]
    #[test_case("/+", "/finance", true; "slash plus")]
    #[test_case("+", "/finance", false; "plus alone not two levels")]
    #[test_case("+/tennis/#", "sport/tennis/player1", true; "plus then hash")]
    #[test_case("sport/+/player1", "sport/tennis/player1", true; "plus in middle")]
    // MQTT 5.0 §4.7.2 (topics beginning with $).
    #[test_case("#", "$SYS/broker/clients", false; "hash excludes dollar")]
    #[test_case("+/monitor/Clients", "$SYS/monitor/Clients", false; "plus excludes dollar")]
    #[test_case("$SYS/#", "$SYS/monitor/Clients", true; "dollar sys hash")]
    #[test_case("$SYS/monitor/+", "$SYS/monitor/Clients", true; "dollar sys plus")]
    #[test_case("$SYS/#", "$SYS", true; "dollar sys parent")]
    #[test_case("+/monitor/Clients", "a/monitor/Clients", true; "plus monitor plain")]
    #[test_case("a/+/#", "a/$x/y", true; "dollar only special at level 0")]
    // Literals: case-sensitive, empty levels are levels.
    #[test_case("sport/tennis", "sport/tennis", true; "literal")]
    #[test_case("sport/tennis", "Sport/tennis", false; "case sensitive")]
    #[test_case("sport/tennis", "sport/tennis/", false; "trailing slash is a level")]
    #[test_case("a//b", "a//b", true; "empty middle level")]
    #[test_case("a/+/b", "a//b", true; "plus matches empty middle level")]
    fn matching(f: &str, t: &str, expected: bool) {
        assert_eq!(filter(f).matches(&name(t)), expected, "{f} vs {t}");
        let shared = filter(&format!("$share/g/{f}"));
        assert_eq!(shared.matches(&name(t)), expected, "shared {f} vs {t}");
    }

    #[test_case("sport/tennis#", TopicError::InvalidFilter("[MQTT-4.7.1-1] '#' must occupy an entire level"); "hash glued")]
    #[test_case("sport/#/ranking", TopicError::InvalidFilter("[MQTT-4.7.1-1] '#' must be the last level of the filter"); "hash not last")]
    #[test_case("sport+", TopicError::InvalidFilter("[MQTT-4.7.1-2] '+' must occupy an entire level"); "plus glued")]
    #[test_case("sport/+tennis", TopicError::InvalidFilter("[MQTT-4.7.1-2] '+' must occupy an entire level"); "plus glued after")]
    #[test_case("##", TopicError::InvalidFilter("[MQTT-4.7.1-1] '#' must occupy an entire level"); "double hash")]
    #[test_case("$share/g", TopicError::InvalidShare("[MQTT-4.8.2-2] the share name must be followed by '/' and a topic filter"); "share without filter")]
    #[test_case("$share/g/", TopicError::InvalidShare("[MQTT-4.8.2-2] the share name must be followed by a non-empty topic filter"); "share empty filter")]
    #[test_case("$share//a", TopicError::InvalidShare("[MQTT-4.8.2-1] the share name must be at least one character long"); "share empty group")]
    #[test_case("$share/g+/a", TopicError::InvalidShare("[MQTT-4.8.2-2] the share name must not contain '+' or '#'"); "share plus in group")]
    #[test_case("$share/g#/a", TopicError::InvalidShare("[MQTT-4.8.2-2] the share name must not contain '+' or '#'"); "share hash in group")]
    #[test_case("$share/g/a#", TopicError::InvalidFilter("[MQTT-4.7.1-1] '#' must occupy an entire level"); "share invalid filter")]
    #[test_case("", TopicError::Empty(TopicKind::Filter); "empty")]
    #[test_case("a/\0", TopicError::NullChar(TopicKind::Filter); "null char")]
    fn invalid_filters(f: &str, expected: TopicError) {
        let err = TopicFilter::new(f, &TopicLimits::default()).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.reason_code(), ReasonCode::TOPIC_FILTER_INVALID);
    }

    #[test_case("", TopicError::Empty(TopicKind::Name); "empty")]
    #[test_case("sport/+", TopicError::Wildcard; "plus")]
    #[test_case("sport/#", TopicError::Wildcard; "hash")]
    #[test_case("sport#", TopicError::Wildcard; "glued hash")]
    #[test_case("a\0b", TopicError::NullChar(TopicKind::Name); "null char")]
    fn invalid_names(t: &str, expected: TopicError) {
        let err = TopicName::new(t, &TopicLimits::default()).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    }

    #[test_case("sport/tennis", None, "sport/tennis", false; "plain literal")]
    #[test_case("sport/+", None, "sport/+", true; "plain wildcard")]
    #[test_case("$share/g/sport/#", Some("g"), "sport/#", true; "shared wildcard")]
    #[test_case("$share/consumers/a", Some("consumers"), "a", false; "shared literal")]
    #[test_case("$share", None, "$share", false; "bare share word is a plain filter")]
    #[test_case("$SYS/#", None, "$SYS/#", true; "dollar filter")]
    fn filter_parts(s: &str, group: Option<&str>, part: &str, wildcards: bool) {
        let f = filter(s);
        assert_eq!(f.as_str(), s);
        assert_eq!(f.share_group(), group);
        assert_eq!(f.filter(), part);
        assert_eq!(f.has_wildcards(), wildcards);
    }

    #[test]
    fn limits() {
        let limits = TopicLimits {
            max_levels: 3,
            max_length: 16,
        };
        assert!(TopicName::new("a/b/c", &limits).is_ok());
        assert_eq!(
            TopicName::new("a/b/c/d", &limits),
            Err(TopicError::TooManyLevels {
                kind: TopicKind::Name,
                levels: 4,
                max: 3
            })
        );
        assert_eq!(
            TopicName::new("abcdefghijklmnopq", &limits),
            Err(TopicError::TooLong {
                kind: TopicKind::Name,
                len: 17,
                max: 16
            })
        );
        // Levels count the filter part only; length counts the whole string.
        assert!(TopicFilter::new("$share/g/+/#", &limits).is_ok());
        let err = TopicFilter::new("$share/g/a/b/c/d", &limits).unwrap_err();
        assert_eq!(err.reason_code(), ReasonCode::TOPIC_FILTER_INVALID);
        assert!(matches!(
            TopicFilter::new("a/b/c/d", &limits),
            Err(TopicError::TooManyLevels { levels: 4, .. })
        ));
    }

    #[test]
    fn name_accessors() {
        let t = name("$SYS/a//b");
        assert!(t.is_system());
        assert!(!name("sys").is_system());
        assert_eq!(t.levels().collect::<Vec<_>>(), ["$SYS", "a", "", "b"]);
        assert_eq!(t.to_string(), "$SYS/a//b");
        assert_eq!(filter("$share/g/x").to_string(), "$share/g/x");
        assert_ne!(filter("$share/g/x"), filter("x"));
    }
}
