//! Resource patterns: AWS IoT globs with policy variables, and the matcher.
//!
//! A pattern is parsed once into tokens:
//!
//! ```text
//!   "devices/${client_id}/*/t?"
//!    Lit("devices/") Var(ClientId) Lit("/") Star Lit("/t") One
//! ```
//!
//! - `*` matches any run of characters, `/` included, possibly empty; `?` matches exactly one
//!   character (a Unicode scalar value, not a byte). Everything else is literal, MQTT's `+` and
//!   `#` included.
//! - `${client_id}`, `${username}`, `${cert.cn}`, `${cert.serial}` (and their AWS names, see
//!   [`Variable`]) are replaced by the principal's value at match time, and that value is
//!   matched **literally**: a client id `a*` is the two characters `a` and `*`, never a
//!   wildcard. If the principal has no value for a variable (no username, no certificate) the
//!   pattern matches nothing.
//! - `${*}`, `${?}` and `${$}` are AWS's escapes for a literal `*`, `?` and `$`.
//!
//! Substitution allocates nothing: the matcher walks the tokens with a cursor that reads the
//! variable's value in place. Matching is the classic greedy glob with one backtrack point (the
//! last `*` seen): when a literal fails after a `*`, the `*` absorbs one more character and the
//! match resumes from just after it. Earlier stars never need revisiting, so the worst case is
//! O(pattern × text) with no exponential blow-up (`*a*a*a*a*a*b` against 10,000 `a`s is about
//! 10^5 steps).

use super::error::Problem;
use super::Principal;

/// A policy variable, substituted from the [`Principal`] before matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variable {
    /// `${client_id}` or `${iot:ClientId}`: the MQTT client identifier.
    ClientId,
    /// `${username}`: the CONNECT user name.
    Username,
    /// `${cert.cn}` or `${iot:Certificate.Subject.CommonName}`: the client certificate's
    /// subject common name.
    CertCn,
    /// `${cert.serial}` or `${iot:Certificate.SerialNumber}`: the client certificate's serial
    /// number, as the transport renders it.
    CertSerial,
}

impl Variable {
    /// The variable a `${name}` stands for.
    fn from_name(name: &str) -> Option<Variable> {
        match name {
            "client_id" | "iot:ClientId" => Some(Variable::ClientId),
            "username" => Some(Variable::Username),
            "cert.cn" | "iot:Certificate.Subject.CommonName" => Some(Variable::CertCn),
            "cert.serial" | "iot:Certificate.SerialNumber" => Some(Variable::CertSerial),
            _ => None,
        }
    }

    /// The principal's value, if it has one.
    fn value<'p>(self, principal: &Principal<'p>) -> Option<&'p str> {
        match self {
            Variable::ClientId => Some(principal.client_id),
            Variable::Username => principal.username,
            Variable::CertCn => principal.cert_cn,
            Variable::CertSerial => principal.cert_serial,
        }
    }
}

/// One token of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Characters matched as they are (never empty).
    Lit(Box<str>),
    /// `*`: any run of characters.
    Star,
    /// `?`: one character.
    One,
    /// A variable, whose value is matched literally.
    Var(Variable),
}

/// Whether a pattern may contain variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variables {
    /// Resources: variables are substituted from the principal.
    Allowed,
    /// Certificate attachment keys: there is nothing to substitute yet.
    Refused,
}

/// A parsed glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Box<[Token]>,
}

impl Pattern {
    /// Parses `s`. Fails on an unknown or unterminated `${...}`, or on any variable when
    /// `variables` is [`Variables::Refused`] (the `${*}`-style escapes are always allowed).
    pub(crate) fn parse(s: &str, variables: Variables) -> Result<Pattern, Problem> {
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
            let token = match c {
                '*' => Token::Star,
                '?' => Token::One,
                '$' if rest.starts_with('{') => {
                    let Some(end) = rest.find('}') else {
                        return Err(Problem::UnterminatedVariable);
                    };
                    let name = &rest[1..end];
                    rest = &rest[end + 1..];
                    match name {
                        "*" | "?" | "$" => {
                            lit.push_str(name);
                            continue;
                        }
                        _ => {}
                    }
                    let Some(var) = Variable::from_name(name) else {
                        return Err(Problem::UnknownVariable {
                            name: name.to_owned(),
                        });
                    };
                    if variables == Variables::Refused {
                        return Err(Problem::VariableNotAllowed {
                            name: name.to_owned(),
                        });
                    }
                    Token::Var(var)
                }
                c => {
                    lit.push(c);
                    continue;
                }
            };
            if !lit.is_empty() {
                tokens.push(Token::Lit(std::mem::take(&mut lit).into()));
            }
            // `**` matches what `*` matches; one star keeps the backtracking cheap.
            if token == Token::Star && tokens.last() == Some(&Token::Star) {
                continue;
            }
            tokens.push(token);
        }
        if !lit.is_empty() {
            tokens.push(Token::Lit(lit.into()));
        }
        Ok(Pattern {
            tokens: tokens.into(),
        })
    }

    /// Whether the pattern contains no wildcard and no variable: it matches one string only.
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match &*self.tokens {
            [] => Some(""),
            [Token::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether `text` matches, variables taken from `principal`. False if the pattern uses a
    /// variable the principal has no value for.
    pub(crate) fn matches(&self, text: &str, principal: &Principal<'_>) -> bool {
        match &*self.tokens {
            [] => return text.is_empty(),
            [Token::Lit(s)] => return **s == *text,
            [Token::Star] => return true,
            _ => {}
        }
        for token in self.tokens.iter() {
            if let Token::Var(var) = token {
                if var.value(principal).is_none() {
                    return false;
                }
            }
        }
        Cursor {
            tokens: &self.tokens,
            principal,
        }
        .glob(text.as_bytes())
    }
}

/// A position in the pattern: a token and, inside a literal or a variable's value, a byte.
#[derive(Debug, Clone, Copy)]
struct Pos {
    token: usize,
    byte: usize,
}

/// What the pattern wants at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The pattern is used up.
    End,
    /// This byte, literally.
    Byte(u8),
    /// Any run of characters.
    Star,
    /// One character.
    One,
}

/// Walks a pattern's tokens with the principal's variables read in place.
struct Cursor<'p> {
    tokens: &'p [Token],
    principal: &'p Principal<'p>,
}

impl<'p> Cursor<'p> {
    /// The literal bytes of a literal or variable token; `None` for `*` and `?`.
    fn bytes(&self, token: &'p Token) -> Option<&'p [u8]> {
        match token {
            Token::Lit(s) => Some(s.as_bytes()),
            // Availability was checked before matching; a missing value reads as empty.
            Token::Var(var) => Some(var.value(self.principal).unwrap_or_default().as_bytes()),
            Token::Star | Token::One => None,
        }
    }

    /// Moves past used-up literal tokens (and empty variable values).
    fn settle(&self, mut pos: Pos) -> Pos {
        while let Some(token) = self.tokens.get(pos.token) {
            match self.bytes(token) {
                Some(bytes) if pos.byte >= bytes.len() => {
                    pos = Pos {
                        token: pos.token + 1,
                        byte: 0,
                    };
                }
                _ => break,
            }
        }
        pos
    }

    /// What the pattern wants at a settled position.
    fn want(&self, pos: Pos) -> Want {
        match self.tokens.get(pos.token) {
            None => Want::End,
            Some(Token::Star) => Want::Star,
            Some(Token::One) => Want::One,
            Some(token) => match self.bytes(token).and_then(|b| b.get(pos.byte)) {
                Some(&b) => Want::Byte(b),
                None => Want::End,
            },
        }
    }

    /// The settled position after the element at `pos`.
    fn next(&self, pos: Pos) -> Pos {
        let next = match self.tokens.get(pos.token) {
            Some(Token::Star | Token::One) => Pos {
                token: pos.token + 1,
                byte: 0,
            },
            _ => Pos {
                token: pos.token,
                byte: pos.byte + 1,
            },
        };
        self.settle(next)
    }

    /// Greedy glob with one backtrack point: O(pattern × text) in the worst case.
    ///
    /// `text` is valid UTF-8 and every position the loop rests on is a character boundary:
    /// literal bytes come from whole characters, `?` and a backtracking `*` step one whole
    /// character.
    fn glob(&self, text: &[u8]) -> bool {
        let mut p = self.settle(Pos { token: 0, byte: 0 });
        let mut t = 0;
        // The pattern position just after the last `*`, and the text position it resumes at.
        let mut star: Option<(Pos, usize)> = None;
        while let Some(&byte) = text.get(t) {
            match self.want(p) {
                Want::Star => {
                    p = self.next(p);
                    star = Some((p, t));
                    continue;
                }
                Want::One => {
                    p = self.next(p);
                    t += char_len(byte);
                    continue;
                }
                Want::Byte(b) if b == byte => {
                    p = self.next(p);
                    t += 1;
                    continue;
                }
                Want::Byte(_) | Want::End => {}
            }
            // Mismatch: let the last `*` absorb one more character, or fail.
            let Some((after_star, from)) = star else {
                return false;
            };
            let from = from + text.get(from).map_or(1, |&b| char_len(b));
            star = Some((after_star, from));
            p = after_star;
            t = from;
        }
        // The text is used up: only stars may remain.
        loop {
            match self.want(p) {
                Want::Star => p = self.next(p),
                Want::End => return true,
                Want::Byte(_) | Want::One => return false,
            }
        }
    }
}

/// The length of the UTF-8 character whose first byte is `first`.
fn char_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use test_case::test_case;

    fn anon(client_id: &str) -> Principal<'_> {
        Principal::new(client_id)
    }

    fn glob(pattern: &str, text: &str) -> bool {
        Pattern::parse(pattern, Variables::Allowed)
            .unwrap()
            .matches(text, &anon("c1"))
    }

    #[test_case("a/b", "a/b", true; "literal")]
    #[test_case("a/b", "a/bc", false; "literal is whole")]
    #[test_case("", "", true; "empty matches empty")]
    #[test_case("", "a", false; "empty matches only empty")]
    #[test_case("*", "", true; "star matches empty")]
    #[test_case("*", "a/b/c", true; "star matches all")]
    #[test_case("a/*", "a/b/c", true; "star crosses slashes")]
    #[test_case("a/*", "a", false; "star after slash needs the slash")]
    #[test_case("a/*/c", "a/x/y/c", true; "star in the middle")]
    #[test_case("a/*/c", "a/x/y/d", false; "star in the middle no match")]
    #[test_case("*/c", "c", false; "leading star needs the slash")]
    #[test_case("a**b", "ab", true; "double star")]
    #[test_case("a?c", "abc", true; "one char")]
    #[test_case("a?c", "ac", false; "one char is not zero")]
    #[test_case("a?c", "abbc", false; "one char is not two")]
    #[test_case("a?c", "aéc", true; "one char is a unicode char")]
    #[test_case("?", "é", true; "one multibyte char")]
    #[test_case("??", "é", false; "two do not fit one multibyte char")]
    #[test_case("*é", "aaé", true; "star then multibyte")]
    #[test_case("*?", "é", true; "star then one")]
    #[test_case("a/+", "a/+", true; "plus is literal")]
    #[test_case("a/+", "a/b", false; "plus is not a wildcard")]
    #[test_case("a/#", "a/#", true; "hash is literal")]
    #[test_case("a/#", "a/b/c", false; "hash is not a wildcard")]
    #[test_case("$aws/things", "$aws/things", true; "dollar without brace is literal")]
    #[test_case("a${*}", "a*", true; "escaped star is literal")]
    #[test_case("a${*}", "ab", false; "escaped star is not a wildcard")]
    #[test_case("a${?}", "a?", true; "escaped question mark")]
    #[test_case("${$}{x}", "${x}", true; "escaped dollar")]
    #[test_case("*ab*ab", "xxabyyabab", true; "backtrack to last star")]
    #[test_case("*a*b*c", "cba", false; "order matters")]
    fn policy_glob(pattern: &str, text: &str, expected: bool) {
        assert_eq!(glob(pattern, text), expected, "{pattern:?} vs {text:?}");
    }

    #[test]
    fn policy_glob_substituted_values_are_literal() {
        let p = Pattern::parse("devices/${client_id}/x", Variables::Allowed).unwrap();
        assert!(p.matches("devices/a*/x", &anon("a*")));
        assert!(!p.matches("devices/abc/x", &anon("a*")));
        assert!(!p.matches("devices/ab/x", &anon("a?")));
        let p = Pattern::parse("${client_id}*", Variables::Allowed).unwrap();
        assert!(p.matches("a*", &anon("a*")));
        assert!(p.matches("a*bc", &anon("a*")));
        assert!(!p.matches("abc", &anon("a*")));
    }

    #[test]
    fn policy_glob_unavailable_variable_matches_nothing() {
        let p = Pattern::parse("u/${username}/*", Variables::Allowed).unwrap();
        assert!(!p.matches("u//x", &anon("c1")));
        let mut alice = anon("c1");
        alice.username = Some("alice");
        assert!(p.matches("u/alice/x", &alice));
        // An empty value is a value.
        alice.username = Some("");
        assert!(p.matches("u//x", &alice));
    }

    #[test]
    fn policy_glob_all_variables() {
        let p = Pattern::parse(
            "${iot:ClientId}/${username}/${cert.cn}/${iot:Certificate.Subject.CommonName}/${cert.serial}/${iot:Certificate.SerialNumber}",
            Variables::Allowed,
        )
        .unwrap();
        let full = Principal {
            client_id: "c",
            username: Some("u"),
            cert_cn: Some("cn"),
            cert_serial: Some("01:ff"),
        };
        assert!(p.matches("c/u/cn/cn/01:ff/01:ff", &full));
        let no_cert = Principal {
            cert_cn: None,
            cert_serial: None,
            ..full
        };
        assert!(!p.matches("c/u/cn/cn/01:ff/01:ff", &no_cert));
    }

    #[test_case("a/${foo}", Problem::UnknownVariable { name: "foo".into() }; "unknown")]
    #[test_case("a/${}", Problem::UnknownVariable { name: "".into() }; "empty name")]
    #[test_case("a/${client_id", Problem::UnterminatedVariable; "unterminated")]
    fn policy_glob_bad_variables(pattern: &str, problem: Problem) {
        assert_eq!(Pattern::parse(pattern, Variables::Allowed), Err(problem));
    }

    #[test]
    fn policy_glob_variables_refused_where_there_is_nothing_to_substitute() {
        assert_eq!(
            Pattern::parse("sensor-${client_id}", Variables::Refused),
            Err(Problem::VariableNotAllowed {
                name: "client_id".into()
            })
        );
        assert!(Pattern::parse("sensor-${*}", Variables::Refused).is_ok());
    }

    #[test]
    fn policy_glob_worst_case_is_not_exponential() {
        let text = "a".repeat(10_000);
        assert!(!glob("*a*a*a*a*a*b", &text));
        assert!(glob("*a*a*a*a*a*a", &text));
        assert!(!glob("*?*?*?*?*?*b", &text));
        let p = Pattern::parse("*${client_id}*${client_id}*b", Variables::Allowed).unwrap();
        assert!(!p.matches(&text, &anon("aaaa")));
    }

    /// A token of the reference matcher: variables already substituted, character by
    /// character, as [`Ref::Lit`].
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ref {
        Star,
        One,
        Lit(char),
    }

    /// The obvious exponential matcher: the reference for the real one.
    fn naive(pattern: &[Ref], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((Ref::Star, rest)) => (0..=text.len()).any(|i| naive(rest, &text[i..])),
            Some((Ref::One, rest)) => !text.is_empty() && naive(rest, &text[1..]),
            Some((Ref::Lit(c), rest)) => text.first() == Some(c) && naive(rest, &text[1..]),
        }
    }

    fn reference(written: &str) -> impl Iterator<Item = Ref> + '_ {
        written.chars().map(|c| match c {
            '*' => Ref::Star,
            '?' => Ref::One,
            c => Ref::Lit(c),
        })
    }

    proptest::proptest! {
        #[test]
        fn policy_glob_agrees_with_the_naive_matcher(
            head in "[ab/*?é]{0,8}",
            with_variable in proptest::bool::ANY,
            tail in "[ab*?]{0,3}",
            client_id in "[ab*?é]{0,3}",
            text in "[ab/*?é]{0,10}",
        ) {
            let mut written = head.clone();
            let mut expected: Vec<Ref> = reference(&head).collect();
            if with_variable {
                written.push_str("${client_id}");
                expected.extend(client_id.chars().map(Ref::Lit));
            }
            written.push_str(&tail);
            expected.extend(reference(&tail));

            let pattern = Pattern::parse(&written, Variables::Allowed).unwrap();
            let text_chars: Vec<char> = text.chars().collect();
            proptest::prop_assert_eq!(
                pattern.matches(&text, &anon(&client_id)),
                naive(&expected, &text_chars),
                "{:?} (client id {:?}) vs {:?}", written, client_id, text
            );
        }
    }

    #[test]
    fn policy_glob_literal_shortcuts() {
        let p = Pattern::parse("a/b", Variables::Allowed).unwrap();
        assert_eq!(p.as_literal(), Some("a/b"));
        let p = Pattern::parse("**", Variables::Allowed).unwrap();
        assert_eq!(p.tokens.len(), 1);
        assert_eq!(p.as_literal(), None);
        let p = Pattern::parse("a${*}", Variables::Allowed).unwrap();
        assert_eq!(p.as_literal(), Some("a*"));
    }
}
