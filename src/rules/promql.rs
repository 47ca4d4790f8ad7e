//! PromQL text built from untrusted input: quoted strings, escaped regexes and label matchers.
//!
//! Object names and selector values come from requests, so every value goes through [`go_quote`]
//! (Go's `strconv.Quote`, which PromQL's string syntax accepts) and, inside regex matchers, through
//! [`regex_escape`] first. Label names come from the configuration or are checked here.

use std::{fmt::Write as _, sync::LazyLock};

use regex::Regex;

use crate::selector::{Operator, Requirement, Selector};

/// Why a metric label selector has no PromQL form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "the requirement on {key:?} uses the operator {op}, but PromQL label matchers compare strings and cannot \
         express numeric comparisons"
    )]
    UnsupportedOperator { key: String, op: Operator },
    #[error("{key:?} is not a Prometheus label name (letters, digits and '_', not starting with a digit)")]
    InvalidLabelName { key: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A regex no string matches (Go's own rendering of an empty character class).
const MATCH_NOTHING: &str = r"[^\x00-\x{10FFFF}]";

/// Go's `unicode.IsPrint` outside ASCII: letters, marks, numbers, punctuation and symbols. None only if
/// the pattern failed to compile, which it does not.
static PRINTABLE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\A[\p{L}\p{M}\p{N}\p{P}\p{S}]\z").ok());

fn is_print(c: char) -> bool {
    if c.is_ascii() {
        return matches!(c, ' '..='~');
    }
    match PRINTABLE.as_ref() {
        Some(printable) => printable.is_match(c.encode_utf8(&mut [0; 4])),
        None => !c.is_control() && !c.is_whitespace(),
    }
}

/// Go's `strconv.Quote`: a double-quoted string with Go escapes for quotes, backslashes and
/// unprintable characters; printable Unicode stays as it is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_print(c) => out.push(c),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// Go's `regexp.QuoteMeta`: a backslash before each of `\.+*?()|[]{}^$`, so the text matches itself
/// under RE2, which Prometheus uses.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A PromQL label matching operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// Equal: `=`.
    Eq,
    /// Not equal: `!=`.
    Ne,
    /// Matches a regex: `=~`.
    Re,
    /// Does not match a regex: `!~`.
    Nre,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Re => "=~",
            Self::Nre => "!~",
        }
    }
}

/// Renders `label<op>"value"` with the value quoted. The label name is trusted; callers check it.
pub fn matcher(label: &str, op: MatchOp, value: &str) -> String {
    format!("{label}{}{}", op.as_str(), go_quote(value))
}

/// A matcher for objects by name: `label="a"` for one name, `label=~"a|b"` (names regex-escaped) for
/// several. An empty list is a caller's bug; it yields a matcher that no series satisfies.
pub fn names_matcher(label: &str, names: &[String]) -> String {
    match names {
        [] => matcher(label, MatchOp::Re, MATCH_NOTHING),
        [name] => matcher(label, MatchOp::Eq, name),
        names => matcher(label, MatchOp::Re, &alternation(names)),
    }
}

fn alternation(values: &[String]) -> String {
    values
        .iter()
        .map(|v| regex_escape(v))
        .collect::<Vec<_>>()
        .join("|")
}

/// Whether `s` is a classic Prometheus label name, `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How a single-value `in` requirement becomes PromQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InRegex {
    /// `k in (a.b)` matches only `a.b` (the value is regex-escaped).
    #[default]
    Escaped,
    /// prometheus-adapter's passthrough: `k in (a.*)` becomes `k=~"a.*"`, a raw regex
    /// (`--metric-selector-regex-passthrough`; any caller can then send any regex).
    Passthrough,
}

/// One PromQL matcher per requirement of a `metricLabelSelector`, in key order, as prometheus-adapter
/// builds them, except that values inside regex matchers are escaped: `in (a.b)` matches only `a.b`,
/// where prometheus-adapter would pass the value through as a regex (see [`InRegex`]).
pub fn selector_matchers(sel: &Selector, in_regex: InRegex) -> Result<Vec<String>> {
    sel.requirements()
        .iter()
        .map(|r| requirement_matcher(r, in_regex))
        .collect()
}

fn requirement_matcher(requirement: &Requirement, in_regex: InRegex) -> Result<String> {
    let key = requirement.key.as_str();
    if !is_label_name(key) {
        return Err(Error::InvalidLabelName { key: key.to_owned() });
    }
    Ok(match (requirement.operator, requirement.values.as_slice()) {
        (Operator::Equals | Operator::DoubleEquals, [value]) => matcher(key, MatchOp::Eq, value),
        (Operator::NotEquals, [value]) => matcher(key, MatchOp::Ne, value),
        (Operator::In, [value]) if in_regex == InRegex::Passthrough => matcher(key, MatchOp::Re, value),
        (Operator::Equals | Operator::DoubleEquals | Operator::In, values) => {
            matcher(key, MatchOp::Re, &alternation(values))
        }
        (Operator::NotEquals | Operator::NotIn, values) => matcher(key, MatchOp::Nre, &alternation(values)),
        (Operator::Exists, _) => matcher(key, MatchOp::Ne, ""),
        (Operator::DoesNotExist, _) => matcher(key, MatchOp::Eq, ""),
        (op @ (Operator::GreaterThan | Operator::LessThan), _) => {
            return Err(Error::UnsupportedOperator {
                key: key.to_owned(),
                op,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn matchers(selector: &str) -> Result<Vec<String>> {
        selector_matchers(&Selector::parse(selector).unwrap(), InRegex::Escaped)
    }

    #[test]
    fn single_value_in_passthrough_is_opt_in() {
        let selector = Selector::parse("path in (a.b)").unwrap();
        let escaped = selector_matchers(&selector, InRegex::Escaped).unwrap();
        let raw = selector_matchers(&selector, InRegex::Passthrough).unwrap();
        assert_ne!(escaped, raw);
        assert_eq!(raw, [r#"path=~"a.b""#]);
        assert_eq!(escaped, [r#"path=~"a\\.b""#]);
    }

    #[test]
    fn quotes_like_go() {
        let table = [
            ("", r#""""#),
            ("plain", r#""plain""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"back\slash", r#""back\\slash""#),
            ("\n\t\r\x07\x08\x0c\x0b", r#""\n\t\r\a\b\f\v""#),
            ("\x00\x01\x1f\x7f", r#""\x00\x01\x1f\x7f""#),
            ("héllo 世界 🎉 e\u{301}", "\"héllo 世界 🎉 e\u{301}\""),
            (
                "\u{a0}\u{85}\u{200b}\u{2028}\u{feff}\u{e000}",
                r#""\u00a0\u0085\u200b\u2028\ufeff\ue000""#,
            ),
            ("\u{f0000}\u{e0001}", r#""\U000f0000\U000e0001""#),
            (r#"a"} or vector(1) or {b=""#, r#""a\"} or vector(1) or {b=\"""#),
        ];
        for (input, want) in table {
            assert_eq!(go_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn escapes_regex_metacharacters_like_go() {
        assert_eq!(regex_escape(r"\.+*?()|[]{}^$"), r"\\\.\+\*\?\(\)\|\[\]\{\}\^\$");
        assert_eq!(regex_escape("a-b_c#d&e~f/g é"), "a-b_c#d&e~f/g é");
        assert_eq!(regex_escape("web-1.prod"), r"web-1\.prod");
        let escaped = regex_escape("a.b|c*(d)");
        assert!(
            Regex::new(&format!("^(?:{escaped})$"))
                .unwrap()
                .is_match("a.b|c*(d)")
        );
        assert!(
            !Regex::new(&format!("^(?:{escaped})$"))
                .unwrap()
                .is_match("axb|c*(d)")
        );
    }

    #[test]
    fn matchers_quote_values() {
        assert_eq!(matcher("pod", MatchOp::Eq, "web-1"), r#"pod="web-1""#);
        assert_eq!(matcher("pod", MatchOp::Ne, ""), r#"pod!="""#);
        assert_eq!(matcher("pod", MatchOp::Re, r"a\.b"), r#"pod=~"a\\.b""#);
        assert_eq!(matcher("pod", MatchOp::Nre, "x"), r#"pod!~"x""#);
        assert_eq!(matcher("pod", MatchOp::Eq, r#"x",y="z"#), r#"pod="x\",y=\"z""#);
    }

    #[test]
    fn names_matchers() {
        assert_eq!(names_matcher("pod", &names(&["web-1"])), r#"pod="web-1""#);
        assert_eq!(names_matcher("pod", &names(&["a.1", "b"])), r#"pod=~"a\\.1|b""#);
        assert_eq!(
            names_matcher("pod", &names(&["a\"b", r"c\d", "(e)", "ü"])),
            r#"pod=~"a\"b|c\\\\d|\\(e\\)|ü""#
        );
        assert_eq!(names_matcher("pod", &[]), r#"pod=~"[^\\x00-\\x{10FFFF}]""#);
        let nothing = Regex::new(&format!("^(?:{MATCH_NOTHING})$")).unwrap();
        for s in ["", "a", "\0", "\u{10ffff}", "[^"] {
            assert!(!nothing.is_match(s), "{s:?}");
        }
    }

    #[test]
    fn selector_requirements_become_matchers() {
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            ("code=500", &[r#"code="500""#]),
            ("code==500", &[r#"code="500""#]),
            ("code!=500", &[r#"code!="500""#]),
            ("code=", &[r#"code="""#]),
            ("verb in (GET)", &[r#"verb=~"GET""#]),
            ("verb in (POST,GET)", &[r#"verb=~"GET|POST""#]),
            ("verb notin (GET)", &[r#"verb!~"GET""#]),
            ("verb notin (GET,PUT)", &[r#"verb!~"GET|PUT""#]),
            ("version in (1.0,2.x)", &[r#"version=~"1\\.0|2\\.x""#]),
            ("version=1.0", &[r#"version="1.0""#]),
            ("verb in ()", &[r#"verb=~"""#]),
            ("verb in (,GET)", &[r#"verb=~"|GET""#]),
            ("handler", &[r#"handler!="""#]),
            ("!handler", &[r#"handler="""#]),
            ("z=1,a=2,m in (x)", &[r#"a="2""#, r#"m=~"x""#, r#"z="1""#]),
            ("x_y=1,X9=2", &[r#"X9="2""#, r#"x_y="1""#]),
        ];
        for &(selector, want) in table {
            assert_eq!(matchers(selector).unwrap(), want, "{selector:?}");
        }
    }

    #[test]
    fn refuses_what_promql_cannot_express() {
        for (selector, op) in [
            ("code>400", Operator::GreaterThan),
            ("code<400", Operator::LessThan),
        ] {
            let err = matchers(selector).unwrap_err();
            assert_eq!(
                err,
                Error::UnsupportedOperator {
                    key: "code".into(),
                    op
                }
            );
            assert!(err.to_string().contains("numeric comparisons"), "{err}");
        }
        for key in ["app.kubernetes.io/name", "a-b", "a.b", "1abc"] {
            let err = matchers(&format!("{key}=x")).unwrap_err();
            assert_eq!(err, Error::InvalidLabelName { key: key.into() });
        }
    }
}
