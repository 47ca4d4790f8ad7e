//! Kubernetes label selectors in their string form: `app=web,tier in (a,b),!canary`.
//!
//! The HPA sends `labelSelector` and `metricLabelSelector` as strings in the grammar of Go's
//! `labels.Parse`. This module is hand-written because no Rust crate parses that grammar: kube-core
//! models selectors as structs and can print them, but has no parser for the string form. The lexer,
//! parser, validation and canonical `String()` follow apimachinery's `pkg/labels/selector.go`; error
//! texts follow Go's closely and always name the selector.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::Serialize;

/// Why a selector string was refused, or has no `LabelSelector` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("couldn't parse the selector string {selector:?}: {message}")]
    Parse { selector: String, message: String },
    #[error("the selector {selector:?} has no LabelSelector form: {message}")]
    NotALabelSelector { selector: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A requirement's operator (Go's `selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl Operator {
    /// The operator's name in Go (`selection.Operator`), as Go's error messages print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "=",
            Self::DoubleEquals => "==",
            Self::NotEquals => "!=",
            Self::In => "in",
            Self::NotIn => "notin",
            Self::Exists => "exists",
            Self::DoesNotExist => "!",
            Self::GreaterThan => "gt",
            Self::LessThan => "lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One comma-separated part of a selector. Values are sorted and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Go's `Requirement.Matches`: `!=` and `notin` match when the key is absent; `>` and `<` compare
    /// the label value as an integer and fail when it is none.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(Ok(have)), [want]) = (value.map(|v| v.parse::<i64>()), self.values.as_slice())
                else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::In => write!(f, "{} in ({values})", self.key),
            Operator::NotIn => write!(f, "{} notin ({values})", self.key),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                write!(f, "{}{}{values}", self.key, self.operator)
            }
            Operator::GreaterThan => write!(f, "{}>{values}", self.key),
            Operator::LessThan => write!(f, "{}<{values}", self.key),
        }
    }
}

/// A parsed selector: every requirement must match. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a selector string with Go's `labels.Parse` grammar. Requirements end up sorted by key.
    pub fn parse(s: &str) -> Result<Self> {
        let mut parser = Parser {
            items: lex(s),
            position: 0,
        };
        let mut requirements = parser.parse().map_err(|message| Error::Parse {
            selector: s.to_owned(),
            message,
        })?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// What Go's `metav1.ParseToLabelSelector` makes of this selector: `=` and `==` become
    /// `matchLabels` (the last value wins for a repeated key), `in`, `notin`, exists and does-not-exist
    /// become `matchExpressions`, and `!=`, `>` and `<` are refused.
    pub fn to_label_selector(&self) -> Result<LabelSelector> {
        let mut selector = LabelSelector::default();
        for requirement in &self.requirements {
            let operator = match requirement.operator {
                Operator::Equals | Operator::DoubleEquals => {
                    let value = requirement.values.first().cloned().unwrap_or_default();
                    selector.match_labels.insert(requirement.key.clone(), value);
                    continue;
                }
                Operator::In => LabelSelectorOperator::In,
                Operator::NotIn => LabelSelectorOperator::NotIn,
                Operator::Exists => LabelSelectorOperator::Exists,
                Operator::DoesNotExist => LabelSelectorOperator::DoesNotExist,
                op @ (Operator::GreaterThan | Operator::LessThan) => {
                    return Err(self.not_a_label_selector(format!(
                        "{:?} isn't supported in label selectors",
                        op.as_str()
                    )));
                }
                Operator::NotEquals => {
                    return Err(self
                        .not_a_label_selector(format!("{:?} is not a valid label selector operator", "!=")));
                }
            };
            selector.match_expressions.push(LabelSelectorRequirement {
                key: requirement.key.clone(),
                operator,
                values: requirement.values.clone(),
            });
        }
        Ok(selector)
    }

    fn not_a_label_selector(&self, message: String) -> Error {
        Error::NotALabelSelector {
            selector: self.to_string(),
            message,
        }
    }
}

impl fmt::Display for Selector {
    /// Go's canonical `String()`: requirements in key order, joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// Go's `metav1.LabelSelector`; serialising it gives the bytes Go's `encoding/json` writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One entry of `matchExpressions` (Go's `metav1.LabelSelectorRequirement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a `matchExpressions` entry (Go's `metav1.LabelSelectorOperator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    token: Token,
    literal: &'a str,
}

const END: Item<'static> = Item {
    token: Token::End,
    literal: "",
};

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits a selector into tokens, ending with [`Token::End`]. Like Go's lexer, an operator is the
/// longest run of symbols that forms one (`!=`, `==`), and an identifier runs to the next symbol or
/// whitespace. Go's lexer stops at a NUL byte; here NUL is an ordinary byte that fails validation.
fn lex(s: &str) -> Vec<Item<'_>> {
    let bytes = s.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        while bytes.get(pos).copied().is_some_and(is_whitespace) {
            pos += 1;
        }
        let Some(&first) = bytes.get(pos) else {
            items.push(END);
            return items;
        };
        let start = pos;
        let token = if is_special(first) {
            let (token, len) = match (bytes.get(pos..pos + 2), first) {
                (Some(b"!="), _) => (Token::NotEquals, 2),
                (Some(b"=="), _) => (Token::DoubleEquals, 2),
                (_, b'=') => (Token::Equals, 1),
                (_, b'!') => (Token::DoesNotExist, 1),
                (_, b'(') => (Token::OpenPar, 1),
                (_, b')') => (Token::ClosedPar, 1),
                (_, b',') => (Token::Comma, 1),
                (_, b'>') => (Token::GreaterThan, 1),
                _ => (Token::LessThan, 1),
            };
            pos += len;
            token
        } else {
            while bytes
                .get(pos)
                .is_some_and(|&b| !is_special(b) && !is_whitespace(b))
            {
                pos += 1;
            }
            match &s[start..pos] {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier,
            }
        };
        // Token boundaries sit next to ASCII bytes, so the slice is on character boundaries.
        items.push(Item {
            token,
            literal: &s[start..pos],
        });
    }
}

/// Where the parser is: keywords are operators after a key and plain identifiers among values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    items: Vec<Item<'a>>,
    position: usize,
}

type ParseResult<T> = std::result::Result<T, String>;

impl<'a> Parser<'a> {
    fn lookahead(&self, context: Context) -> (Token, &'a str) {
        let item = self.items.get(self.position).copied().unwrap_or(END);
        let token = match (context, item.token) {
            (Context::Values, Token::In | Token::NotIn) => Token::Identifier,
            (_, token) => token,
        };
        (token, item.literal)
    }

    fn consume(&mut self, context: Context) -> (Token, &'a str) {
        let item = self.lookahead(context);
        self.position = (self.position + 1).min(self.items.len());
        item
    }

    fn parse(&mut self) -> ParseResult<Vec<Requirement>> {
        let mut requirements = Vec::new();
        loop {
            match self.lookahead(Context::Values) {
                (Token::Identifier | Token::DoesNotExist, _) => {
                    let requirement = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(requirement);
                    match self.consume(Context::Values) {
                        (Token::End, _) => return Ok(requirements),
                        (Token::Comma, _) => match self.lookahead(Context::Values) {
                            (Token::Identifier | Token::DoesNotExist, _) => {}
                            (_, literal) => {
                                return Err(format!("found '{literal}', expected: identifier after ','"));
                            }
                        },
                        (_, literal) => {
                            return Err(format!("found '{literal}', expected: ',' or 'end of string'"));
                        }
                    }
                }
                (Token::End, _) => return Ok(requirements),
                (_, literal) => {
                    return Err(format!(
                        "found '{literal}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> ParseResult<Requirement> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(operator) = inferred {
            return new_requirement(key, operator, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        new_requirement(key, operator, values.into_iter().collect())
    }

    /// Reads `[!]key`; a key followed by `,` or the end is an exists requirement.
    fn parse_key_and_infer_operator(&mut self) -> ParseResult<(String, Option<Operator>)> {
        let mut operator = None;
        let mut item = self.consume(Context::Values);
        if item.0 == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            item = self.consume(Context::Values);
        }
        let (Token::Identifier, key) = item else {
            return Err(format!("found '{}', expected: identifier", item.1));
        };
        let errors = validate_key(key);
        if !errors.is_empty() {
            return Err(field_error("key", key, &errors));
        }
        if operator.is_none() && matches!(self.lookahead(Context::Values).0, Token::End | Token::Comma) {
            operator = Some(Operator::Exists);
        }
        Ok((key.to_owned(), operator))
    }

    fn parse_operator(&mut self) -> ParseResult<Operator> {
        Ok(match self.consume(Context::KeyAndOperator) {
            (Token::In, _) => Operator::In,
            (Token::Equals, _) => Operator::Equals,
            (Token::DoubleEquals, _) => Operator::DoubleEquals,
            (Token::GreaterThan, _) => Operator::GreaterThan,
            (Token::LessThan, _) => Operator::LessThan,
            (Token::NotIn, _) => Operator::NotIn,
            (Token::NotEquals, _) => Operator::NotEquals,
            (_, literal) => {
                return Err(format!(
                    "found '{literal}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        })
    }

    /// Reads `(a,b,...)`. As in Go, `()` and empty list entries stand for the empty value.
    fn parse_values(&mut self) -> ParseResult<BTreeSet<String>> {
        let (token, literal) = self.consume(Context::Values);
        if token != Token::OpenPar {
            return Err(format!("found '{literal}' expected: '('"));
        }
        match self.lookahead(Context::Values) {
            (Token::Identifier | Token::Comma, _) => {
                let values = self.parse_identifiers_list()?;
                self.consume(Context::Values);
                Ok(values)
            }
            (Token::ClosedPar, _) => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            (_, literal) => Err(format!("found '{literal}', expected: ',', ')' or identifier")),
        }
    }

    /// Reads list entries up to, but not including, the closing parenthesis.
    fn parse_identifiers_list(&mut self) -> ParseResult<BTreeSet<String>> {
        let mut values = BTreeSet::new();
        loop {
            match self.consume(Context::Values) {
                (Token::Identifier, literal) => {
                    values.insert(literal.to_owned());
                    match self.lookahead(Context::Values) {
                        (Token::Comma, _) => {}
                        (Token::ClosedPar, _) => return Ok(values),
                        (_, literal) => return Err(format!("found '{literal}', expected: ',' or ')'")),
                    }
                }
                (Token::Comma, _) => {
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    match self.lookahead(Context::Values).0 {
                        Token::ClosedPar => {
                            values.insert(String::new());
                            return Ok(values);
                        }
                        Token::Comma => {
                            self.consume(Context::Values);
                            values.insert(String::new());
                        }
                        _ => {}
                    }
                }
                (_, literal) => return Err(format!("found '{literal}', expected: ',', or identifier")),
            }
        }
    }

    /// Reads the value after `=`, `==`, `!=`, `>` or `<`; nothing there means the empty value.
    fn parse_exact_value(&mut self) -> ParseResult<BTreeSet<String>> {
        if matches!(self.lookahead(Context::Values).0, Token::End | Token::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.consume(Context::Values) {
            (Token::Identifier, literal) => Ok(BTreeSet::from([literal.to_owned()])),
            (_, literal) => Err(format!("found '{literal}', expected: identifier")),
        }
    }
}

/// Builds a requirement after Go's `NewRequirement` checks on the values (the parser checked the key).
fn new_requirement(key: String, operator: Operator, values: Vec<String>) -> ParseResult<Requirement> {
    let mut errors = Vec::new();
    if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
        for (i, value) in values.iter().enumerate() {
            if value.parse::<i64>().is_err() {
                let reason = "for 'Gt', 'Lt' operators, the value must be an integer".to_owned();
                errors.push(field_error(&format!("values[{i}]"), value, &[reason]));
            }
        }
    }
    for (i, value) in values.iter().enumerate() {
        let reasons = validate_value(value);
        if !reasons.is_empty() {
            errors.push(field_error(&format!("values[{i}][{key}]"), value, &reasons));
        }
    }
    match errors.as_slice() {
        [] => Ok(Requirement {
            key,
            operator,
            values,
        }),
        [error] => Err(error.clone()),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

/// Formats an error the way Go's `field.Invalid(...).Error()` does.
fn field_error(field: &str, value: &str, reasons: &[String]) -> String {
    format!("{field}: Invalid value: {value:?}: {}", reasons.join("; "))
}

const NAME_CHARS: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                          alphanumeric character";

/// Whether `s` matches `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, as a label name or non-empty value must.
fn is_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Whether `s` is a lowercase RFC 1123 subdomain: dot-separated labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_dns1123_subdomain(s: &str) -> bool {
    let is_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        bytes.first().is_some_and(is_alnum)
            && bytes.last().is_some_and(is_alnum)
            && bytes.iter().all(|b| is_alnum(b) || *b == b'-')
    })
}

/// Go's `validation.IsQualifiedName` checks `[prefix/]name` keys, with a DNS subdomain prefix.
fn validate_key(key: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                if prefix.len() > 253 {
                    errors.push("prefix part must be no more than 253 characters".to_owned());
                }
                if !is_dns1123_subdomain(prefix) {
                    errors.push(
                        "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                         characters, '-' or '.', and must start and end with an alphanumeric character"
                            .to_owned(),
                    );
                }
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {NAME_CHARS}, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errors.push("name part must be no more than 63 characters".to_owned());
    }
    if !is_name(name) {
        errors.push(format!("name part {NAME_CHARS}"));
    }
    errors
}

/// Go's `validation.IsValidLabelValue` checks a value.
fn validate_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_name(value) {
        errors.push(format!("a valid label must be an empty string or {NAME_CHARS}"));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error(s: &str) -> String {
        match Selector::parse(s) {
            Ok(selector) => panic!("{s:?} parsed as {selector:?}"),
            Err(Error::Parse { selector, message }) => {
                assert_eq!(selector, s);
                message
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn grammar() {
        use Operator::*;
        let table: &[(&str, &[Requirement])] = &[
            ("", &[]),
            ("   ", &[]),
            ("a=b", &[req("a", Equals, &["b"])]),
            ("a==b", &[req("a", DoubleEquals, &["b"])]),
            ("a!=b", &[req("a", NotEquals, &["b"])]),
            ("a in (y,x,y)", &[req("a", In, &["x", "y"])]),
            ("a notin (x)", &[req("a", NotIn, &["x"])]),
            ("a", &[req("a", Exists, &[])]),
            ("!a", &[req("a", DoesNotExist, &[])]),
            ("a>1", &[req("a", GreaterThan, &["1"])]),
            ("a<5", &[req("a", LessThan, &["5"])]),
            ("a>007", &[req("a", GreaterThan, &["007"])]),
            ("a=", &[req("a", Equals, &[""])]),
            ("a==", &[req("a", DoubleEquals, &[""])]),
            ("a in ()", &[req("a", In, &[""])]),
            ("a in (,b)", &[req("a", In, &["", "b"])]),
            ("a in (b,)", &[req("a", In, &["", "b"])]),
            ("a in (b,,c)", &[req("a", In, &["", "b", "c"])]),
            ("in in (in,notin)", &[req("in", In, &["in", "notin"])]),
            ("a=in", &[req("a", Equals, &["in"])]),
            (
                " \t\r\na \t= b ,\n c notin( x , y ) ",
                &[req("a", Equals, &["b"]), req("c", NotIn, &["x", "y"])],
            ),
            (
                "z=1,!y,x in (a),example.com/w-1.2_3=V.a_l-1,x",
                &[
                    req("example.com/w-1.2_3", Equals, &["V.a_l-1"]),
                    req("x", In, &["a"]),
                    req("x", Exists, &[]),
                    req("y", DoesNotExist, &[]),
                    req("z", Equals, &["1"]),
                ],
            ),
            ("a=b,a=c", &[req("a", Equals, &["b"]), req("a", Equals, &["c"])]),
        ];
        for &(input, want) in table {
            assert_eq!(parse(input).requirements(), want, "{input:?}");
        }
    }

    #[test]
    fn syntax_errors() {
        let table = [
            ("a=b,", "found '', expected: identifier after ','"),
            (",a", "found ',', expected: !, identifier, or 'end of string'"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a=b=c", "found '=', expected: ',' or 'end of string'"),
            ("!a=b", "found '=', expected: ',' or 'end of string'"),
            (
                "a b",
                "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            ),
            ("a in x", "unable to parse requirement: found 'x' expected: '('"),
            (
                "a in (",
                "unable to parse requirement: found '', expected: ',', ')' or identifier",
            ),
            (
                "a in (x",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            (
                "a in (x,",
                "unable to parse requirement: found '', expected: ',', or identifier",
            ),
            (
                "a in (x y)",
                "unable to parse requirement: found 'y', expected: ',' or ')'",
            ),
            (
                "a in (=)",
                "unable to parse requirement: found '=', expected: ',', ')' or identifier",
            ),
            (
                "a=(b)",
                "unable to parse requirement: found '(', expected: identifier",
            ),
            ("!", "unable to parse requirement: found '', expected: identifier"),
            (
                "!!a",
                "unable to parse requirement: found '!', expected: identifier",
            ),
            ("a,,b", "found ',', expected: identifier after ','"),
            ("=a", "found '=', expected: !, identifier, or 'end of string'"),
        ];
        for (input, want) in table {
            assert_eq!(error(input), want, "{input:?}");
        }
    }

    #[test]
    fn invalid_keys_and_values() {
        for (input, wants) in [
            (
                "Foo_=x",
                &[
                    "key: Invalid value: \"Foo_\"",
                    "name part must consist of alphanumeric",
                ][..],
            ),
            ("-a", &["name part must consist"]),
            ("a/b/c", &["a qualified name must consist"]),
            ("/a", &["prefix part must be non-empty"]),
            ("a/", &["name part must be non-empty"]),
            ("Example.com/a", &["prefix part a lowercase RFC 1123 subdomain"]),
            ("ex..com/a", &["prefix part a lowercase RFC 1123 subdomain"]),
            ("héllo=x", &["key: Invalid value: \"héllo\""]),
            ("a\0b=c", &["key: Invalid value"]),
            (
                "a=b_",
                &["values[0][a]: Invalid value: \"b_\": a valid label must be an empty string"],
            ),
            ("a in (x,y/z)", &["values[1][a]: Invalid value: \"y/z\""]),
            (
                "a>x",
                &["values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer"],
            ),
            (
                "a>1.5",
                &["values[0]: Invalid value: \"1.5\": for 'Gt', 'Lt' operators"],
            ),
            (
                "a>x_",
                &[
                    "[values[0]: Invalid value: \"x_\": for 'Gt'",
                    ", values[0][a]: Invalid value: \"x_\"",
                ],
            ),
            ("a<-1", &["values[0][a]: Invalid value: \"-1\""]),
            ("a>99999999999999999999", &["must be an integer"]),
        ] {
            let message = error(input);
            assert!(
                message.starts_with("unable to parse requirement: "),
                "{input:?}: {message}"
            );
            for want in wants {
                assert!(message.contains(want), "{input:?}: {message}");
            }
        }
        let long = "a".repeat(64);
        assert!(error(&long).contains("name part must be no more than 63 characters"));
        assert!(error(&format!("a={long}")).contains("must be no more than 63 characters"));
        let ok = "a".repeat(63);
        assert_eq!(
            parse(&format!("{}/{ok}={ok}", "b".repeat(253)))
                .requirements()
                .len(),
            1
        );
        assert!(
            error(&format!("{}/a", "b".repeat(254)))
                .contains("prefix part must be no more than 253 characters")
        );
    }

    #[test]
    fn errors_name_the_selector() {
        let err = Selector::parse("app in (a").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"couldn't parse the selector string "app in (a": unable to parse requirement: found '', expected: ',' or ')'"#
        );
    }

    #[test]
    fn matching() {
        let pod = labels(&[("app", "web"), ("tier", "front"), ("replicas", "3")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (db,web)", true),
            ("app in (db)", false),
            ("missing in (x)", false),
            ("app notin (db)", true),
            ("app notin (web)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("missing", false),
            ("!app", false),
            ("!missing", true),
            ("replicas>2", true),
            ("replicas>3", false),
            ("replicas<4", true),
            ("replicas<3", false),
            ("app>1", false),
            ("missing<1", false),
            ("missing=", false),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).matches(&pod), want, "{input:?}");
        }
        assert!(parse("a=").matches(&labels(&[("a", "")])));
        assert!(parse("a in ()").matches(&labels(&[("a", "")])));
        assert!(Selector::default().matches(&BTreeMap::new()));
    }

    #[test]
    fn display_is_go_canonical_and_round_trips() {
        let cases = [
            ("", ""),
            ("a=b", "a=b"),
            ("a == b", "a==b"),
            ("a!=b", "a!=b"),
            ("b, !a", "!a,b"),
            ("c in (z, y, y), a notin (x)", "a notin (x),c in (y,z)"),
            ("a>1,b<2", "a>1,b<2"),
            ("a=,b in (),c in (,x)", "a=,b in (),c in (,x)"),
            ("example.com/a=1", "example.com/a=1"),
        ];
        for (input, want) in cases {
            let selector = parse(input);
            assert_eq!(selector.to_string(), want, "{input:?}");
            assert_eq!(parse(&selector.to_string()), selector, "{input:?}");
        }
        assert!(parse("").is_empty());
        assert!(!parse("a").is_empty());
    }

    #[test]
    fn label_selector_json() {
        let json = |s: &str| serde_json::to_string(&parse(s).to_label_selector().unwrap()).unwrap();
        assert_eq!(json(""), "{}");
        assert_eq!(json("b=2,a==1"), r#"{"matchLabels":{"a":"1","b":"2"}}"#);
        assert_eq!(json("a=1,a=2"), r#"{"matchLabels":{"a":"2"}}"#);
        assert_eq!(
            json("z in (2,1),y notin (x),x,!w,v=1"),
            concat!(
                r#"{"matchLabels":{"v":"1"},"matchExpressions":["#,
                r#"{"key":"w","operator":"DoesNotExist"},{"key":"x","operator":"Exists"},"#,
                r#"{"key":"y","operator":"NotIn","values":["x"]},{"key":"z","operator":"In","values":["1","2"]}]}"#
            )
        );
        assert_eq!(
            json("a in ()"),
            r#"{"matchExpressions":[{"key":"a","operator":"In","values":[""]}]}"#
        );

        assert_eq!(json(""), "{}");

        for (input, want) in [
            ("a!=b", r#""!=" is not a valid label selector operator"#),
            ("a>1", r#""gt" isn't supported in label selectors"#),
            ("x=1,a<1", r#""lt" isn't supported in label selectors"#),
        ] {
            let err = parse(input).to_label_selector().unwrap_err();
            let Error::NotALabelSelector { selector, message } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(
                (selector.as_str(), message.as_str()),
                (parse(input).to_string().as_str(), want)
            );
            assert!(
                err.to_string()
                    .contains(&format!("{:?}", parse(input).to_string())),
                "{err}"
            );
        }
    }
}
