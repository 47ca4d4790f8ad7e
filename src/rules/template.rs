//! The subset of Go's `text/template` that prometheus-adapter configurations use, with its `<<` `>>`
//! delimiters.
//!
//! prometheus-adapter executes `metricsQuery`, `containerQuery`, `nodeQuery` and `resources.template`
//! with Go's `text/template` and the delimiters `<<` and `>>`. The `gtmpl` crate implements
//! `text/template`, but its lexer hard-codes `{{` `}}`, and rewriting `<<`/`>>` into `{{`/`}}` before
//! parsing is wrong because PromQL uses braces itself: `x{<<.LabelMatchers>>}` would become
//! `x{{{.LabelMatchers}}}`, where an action opens at the first `{{` and reads `{.LabelMatchers`, and
//! a label value such as `a="{{"` would open an action. The `gotmpl` crate takes custom
//! delimiters, but it differs from Go on templates that configurations use (a missing key in
//! `index` gives `<no value>`, not `""`) and it loads unbalanced `<<end>>`/`<<if>>` without an error:
//! the comparison is in the README's development section. So this module lexes and parses
//! templates itself, with the delimiters as constants of its lexer, and supports what
//! configurations in the wild use:
//!
//! - text, `<<.Field>>`, `<<.A.B>>`, `<<.>>`, `<<$>>`, variables (`$x := pipeline`, `$x = pipeline`);
//! - `if` / `else if` / `else`, `with` / `else with`, `range` (one or two variables, `else`, `break`,
//!   `continue`), pipelines with `|` and parenthesized pipelines;
//! - the functions `index`, `len`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `and`, `or`, `not`, `print`,
//!   `println` and `printf` (verbs `%s`, `%d`, `%v`, `%q`, `%%`);
//! - string literals (`"..."` with Go escapes, raw `` `...` ``), integers, `true`, `false`, `nil`;
//! - trim markers `<<- ` and ` ->>`, comments `<</* ... */>>`.
//!
//! Everything else is a parse or execution error rather than silently different output: `define`,
//! `template`, `block`, the functions `html`, `js`, `urlquery`, `slice`, `call`, floating-point and
//! character constants, printf flags, widths and other verbs, and methods on data.
//!
//! Data follows Go's rules for the values prometheus-adapter passes: a field missing from a
//! [`Value::Struct`] is an error (Go cannot evaluate an unknown struct field), a key missing from a
//! [`Value::Map`] prints `<no value>`, and `index` of a missing key yields the empty string (the
//! zero value of the `map[string]string` prometheus-adapter uses).
//!
//! Errors give 1-based lines and byte columns within the template, and the action's text.

use std::{borrow::Cow, cmp::Ordering, collections::BTreeMap, fmt::Write as _};

use super::promql::go_quote;

const LEFT: &str = "<<";
const RIGHT: &str = ">>";
/// White space in Go's template lexer: what trim markers remove and what separates tokens.
const SPACES: [char; 4] = [' ', '\t', '\r', '\n'];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("template line {line}, column {column}: {message} (in `{action}`)")]
    Parse {
        line: usize,
        column: usize,
        action: String,
        message: String,
    },
    #[error("executing template line {line}, column {column} `{action}`: {message}")]
    Exec {
        line: usize,
        column: usize,
        action: String,
        message: String,
    },
    #[error("the template produced an empty query")]
    Empty,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Data for a template, shaped like the Go values prometheus-adapter passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// No value: a missing map key or `nil`. Prints as `<no value>` at the top of an action.
    Nil,
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Value>),
    /// A Go map: missing keys are [`Value::Nil`], ranges and prints go in key order.
    Map(BTreeMap<String, Value>),
    /// A Go struct: fields in declaration order; a missing field is an execution error.
    Struct(Vec<(String, Value)>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl Value {
    /// A list of strings, like Go's `[]string`.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::List(items.into_iter().map(|s| Self::Str(s.into())).collect())
    }

    /// Go's truthiness for `if`, `with`, `and`, `or` and `not`: false, 0, and empty or missing values
    /// are false.
    fn truth(&self) -> bool {
        match self {
            Self::Nil => false,
            Self::Str(s) => !s.is_empty(),
            Self::Int(i) => *i != 0,
            Self::Bool(b) => *b,
            Self::List(l) => !l.is_empty(),
            Self::Map(m) => !m.is_empty(),
            Self::Struct(_) => true,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Nil => "<nil>",
            Self::Str(_) => "string",
            Self::Int(_) => "int",
            Self::Bool(_) => "bool",
            Self::List(_) => "[]interface {}",
            Self::Map(_) => "map[string]interface {}",
            Self::Struct(_) => "struct",
        }
    }

    /// The field or map entry `name` of this value, without copying it.
    fn field(&self, name: &str) -> Result<&Value, String> {
        static NIL: Value = Value::Nil;
        match self {
            Self::Nil => Ok(&NIL),
            Self::Map(m) => Ok(m.get(name).unwrap_or(&NIL)),
            Self::Struct(fields) => fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| format!("can't evaluate field {name} in type struct")),
            other => Err(format!(
                "can't evaluate field {name} in type {}",
                other.type_name()
            )),
        }
    }
}

/// Formats like Go's `%v`.
fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Nil => out.push_str("<nil>"),
        Value::Str(s) => out.push_str(s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::List(items) => write_seq(out, "[", items.iter(), "]", write_value),
        Value::Map(map) => write_seq(out, "map[", map.iter(), "]", |out, (k, v)| {
            out.push_str(k);
            out.push(':');
            write_value(out, v);
        }),
        Value::Struct(fields) => write_seq(out, "{", fields.iter().map(|(_, v)| v), "}", write_value),
    }
}

fn write_seq<T>(
    out: &mut String,
    open: &str,
    items: impl Iterator<Item = T>,
    close: &str,
    mut each: impl FnMut(&mut String, T),
) {
    out.push_str(open);
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(' ');
        }
        each(out, item);
    }
    out.push_str(close);
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    nodes: Vec<Node>,
}

impl Template {
    /// Parses `text` with the delimiters `<<` and `>>`.
    pub fn parse(text: &str) -> Result<Self> {
        let items = lex(text)?;
        let mut parser = Parser {
            src: text,
            items,
            next: 0,
            open: 0,
            vars: vec!["$".to_owned()],
            range_depth: 0,
        };
        let (nodes, stop) = parser.parse_list()?;
        match stop {
            Stop::Eof => Ok(Self {
                source: text.to_owned(),
                nodes,
            }),
            Stop::End(pos) => Err(parse_error(
                text,
                pos,
                pos,
                "<<end>> without a matching <<if>>, <<range>> or <<with>>",
            )),
            Stop::Else(pos) => Err(parse_error(
                text,
                pos,
                pos,
                "<<else>> without a matching <<if>>, <<range>> or <<with>>",
            )),
        }
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Executes the template with `data` as `.` and `$`.
    pub fn render(&self, data: &Value) -> Result<String> {
        let mut exec = Exec {
            src: &self.source,
            vars: vec![("$".to_owned(), Cow::Borrowed(data))],
            out: String::new(),
        };
        exec.walk(&self.nodes, data)?;
        Ok(exec.out)
    }
}

/// The data prometheus-adapter's `metricsQuery` templates see (its `queryTemplateArgs`):
/// `.Series`, `.LabelMatchers` and `.GroupBy` comma-joined, `.GroupBySlice` as a list, and
/// `.LabelValuesByName` with each label's values `|`-joined.
pub fn metrics_query_args(
    series: &str,
    label_matchers: &[String],
    group_by: &[String],
    label_values_by_name: &BTreeMap<String, Vec<String>>,
) -> Value {
    let values = label_values_by_name
        .iter()
        .map(|(label, values)| (label.clone(), Value::Str(values.join("|"))))
        .collect();
    Value::Struct(vec![
        ("Series".into(), series.into()),
        ("LabelMatchers".into(), label_matchers.join(",").into()),
        ("LabelValuesByName".into(), Value::Map(values)),
        ("GroupBy".into(), group_by.join(",").into()),
        ("GroupBySlice".into(), Value::strings(group_by.iter().cloned())),
    ])
}

/// Renders a `metricsQuery`-style template as prometheus-adapter does; an empty result is an error
/// there too.
pub fn render_metrics_query(
    template: &Template,
    series: &str,
    label_matchers: &[String],
    group_by: &[String],
    label_values_by_name: &BTreeMap<String, Vec<String>>,
) -> Result<String> {
    let query = template.render(&metrics_query_args(
        series,
        label_matchers,
        group_by,
        label_values_by_name,
    ))?;
    if query.is_empty() {
        return Err(Error::Empty);
    }
    Ok(query)
}

fn line_column(src: &str, pos: usize) -> (usize, usize) {
    let before = src.get(..pos).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = pos - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The action starting at `open`, through its closing delimiter or to the end of the line.
fn action_text(src: &str, open: usize) -> String {
    let rest = src.get(open..).unwrap_or_default();
    let end = match (
        rest.get(LEFT.len()..).and_then(|r| r.find(RIGHT)),
        rest.find('\n'),
    ) {
        (Some(close), newline) if newline.is_none_or(|n| close + LEFT.len() < n) => {
            close + LEFT.len() + RIGHT.len()
        }
        (_, Some(newline)) => newline,
        (_, None) => rest.len(),
    };
    let text = rest.get(..end).unwrap_or(rest);
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}

fn parse_error(src: &str, open: usize, pos: usize, message: impl Into<String>) -> Error {
    let (line, column) = line_column(src, pos);
    Error::Parse {
        line,
        column,
        action: action_text(src, open),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    Open,
    Close,
    Ident(String),
    Keyword(Keyword),
    Field(String),
    Dot,
    Var(String),
    Str(String),
    Int(i64),
    Bool(bool),
    Nil,
    Pipe,
    LParen,
    RParen,
    Comma,
    Declare,
    Assign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    If,
    Else,
    End,
    Range,
    With,
    Break,
    Continue,
    Unsupported(&'static str),
}

#[derive(Debug, Clone)]
struct Item {
    tok: Tok,
    pos: usize,
    /// Whether white space separates this token from the previous one inside an action.
    spaced: bool,
}

fn is_space(c: char) -> bool {
    SPACES.contains(&c)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex(src: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut pos = 0;
    let mut trim_next = false;
    loop {
        let rest = src.get(pos..).unwrap_or_default();
        let Some(found) = rest.find(LEFT) else {
            push_text(&mut items, rest, pos, trim_next, false);
            return Ok(items);
        };
        let open = pos + found;
        let mut p = open + LEFT.len();
        let after = src.get(p..).unwrap_or_default();
        let left_trim = after.starts_with('-') && after[1..].starts_with(is_space);
        if left_trim {
            p += 2;
        }
        push_text(&mut items, &rest[..found], pos, trim_next, left_trim);
        if src[p..].starts_with("/*") {
            let Some(end) = src[p + 2..].find("*/") else {
                return Err(parse_error(src, open, open, "unclosed comment"));
            };
            let close = p + 2 + end + 2;
            let tail = &src[close..];
            (pos, trim_next) = if tail.starts_with(RIGHT) {
                (close + RIGHT.len(), false)
            } else if tail.starts_with(is_space) && tail[1..].starts_with('-') && tail[2..].starts_with(RIGHT)
            {
                (close + 2 + RIGHT.len(), true)
            } else {
                return Err(parse_error(
                    src,
                    open,
                    close,
                    "comment ends before closing delimiter",
                ));
            };
            continue;
        }
        items.push(Item {
            tok: Tok::Open,
            pos: open,
            spaced: false,
        });
        (pos, trim_next) = lex_action(src, open, p, &mut items)?;
    }
}

fn push_text(items: &mut Vec<Item>, text: &str, pos: usize, trim_start: bool, trim_end: bool) {
    let text = if trim_start {
        text.trim_start_matches(SPACES)
    } else {
        text
    };
    let text = if trim_end {
        text.trim_end_matches(SPACES)
    } else {
        text
    };
    if !text.is_empty() {
        items.push(Item {
            tok: Tok::Text(text.to_owned()),
            pos,
            spaced: false,
        });
    }
}

/// Lexes one action from `p` (after the left delimiter) through the right delimiter. Returns the
/// position after it and whether it carried a trim marker.
fn lex_action(src: &str, open: usize, mut p: usize, items: &mut Vec<Item>) -> Result<(usize, bool)> {
    // A lexing error shows the action up to and including the offending character.
    let err = |pos: usize, message: &str| {
        let mut error = parse_error(src, open, pos, message);
        if let Error::Parse { action, .. } = &mut error
            && pos > open
        {
            let end = src[pos..].chars().next().map_or(pos, |c| pos + c.len_utf8());
            *action = action_text(&src[..end], open);
        }
        error
    };
    loop {
        let rest = &src[p..];
        let trimmed = rest.trim_start_matches(SPACES);
        let spaced = trimmed.len() < rest.len();
        p += rest.len() - trimmed.len();
        let mut push = |tok, pos| {
            items.push(Item { tok, pos, spaced });
        };
        if spaced && trimmed.starts_with('-') && trimmed[1..].starts_with(RIGHT) {
            push(Tok::Close, p);
            return Ok((p + 1 + RIGHT.len(), true));
        }
        if trimmed.starts_with(RIGHT) {
            push(Tok::Close, p);
            return Ok((p + RIGHT.len(), false));
        }
        if trimmed.is_empty() {
            return Err(err(open, "unclosed action"));
        }
        let (tok, len) = lex_token(trimmed).map_err(|m| err(p, &m))?;
        push(tok, p);
        p += len;
    }
}

/// Lexes the token at the start of `s` (inside an action, after white space): the token and its
/// length in bytes, or why there is none.
fn lex_token(s: &str) -> Result<(Tok, usize), String> {
    let mut chars = s.chars();
    let c = chars.next().unwrap_or_default();
    let rest = chars.as_str();
    Ok(match c {
        '|' => (Tok::Pipe, 1),
        '(' => (Tok::LParen, 1),
        ')' => (Tok::RParen, 1),
        ',' => (Tok::Comma, 1),
        '=' => (Tok::Assign, 1),
        ':' if rest.starts_with('=') => (Tok::Declare, 2),
        '"' => {
            let (value, len) = unquote(rest)?;
            (Tok::Str(value), 1 + len)
        }
        '`' => {
            let end = rest.find('`').ok_or("unterminated raw quoted string")?;
            (Tok::Str(rest[..end].to_owned()), end + 2)
        }
        '$' => {
            let len = 1 + word_len(rest);
            (Tok::Var(s[..len].to_owned()), len)
        }
        '.' if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            return Err("floating-point constants are not supported".into());
        }
        '.' => match word_len(rest) {
            0 => (Tok::Dot, 1),
            len => (Tok::Field(rest[..len].to_owned()), 1 + len),
        },
        '+' | '-' | '0'..='9' => {
            let len = 1 + rest
                .find(|c: char| !(is_word(c) || c == '.'))
                .unwrap_or(rest.len());
            let text = &s[..len];
            let value = parse_int(text).map_err(|m| format!("{m}: {text}"))?;
            (Tok::Int(value), len)
        }
        '\'' => return Err("character constants are not supported".into()),
        c if c.is_alphabetic() || c == '_' => {
            let len = word_len(s);
            (word_token(&s[..len]), len)
        }
        c => return Err(format!("unexpected {c:?} in action")),
    })
}

/// A keyword, a boolean or `nil`, or else a function name.
fn word_token(word: &str) -> Tok {
    match word {
        "if" => Tok::Keyword(Keyword::If),
        "else" => Tok::Keyword(Keyword::Else),
        "end" => Tok::Keyword(Keyword::End),
        "range" => Tok::Keyword(Keyword::Range),
        "with" => Tok::Keyword(Keyword::With),
        "break" => Tok::Keyword(Keyword::Break),
        "continue" => Tok::Keyword(Keyword::Continue),
        "define" => Tok::Keyword(Keyword::Unsupported("define")),
        "template" => Tok::Keyword(Keyword::Unsupported("template")),
        "block" => Tok::Keyword(Keyword::Unsupported("block")),
        "true" => Tok::Bool(true),
        "false" => Tok::Bool(false),
        "nil" => Tok::Nil,
        _ => Tok::Ident(word.to_owned()),
    }
}

fn word_len(s: &str) -> usize {
    s.find(|c: char| !is_word(c)).unwrap_or(s.len())
}

/// Go's `strconv.ParseInt(text, 0, 64)`: decimal, `0x`, `0o`, `0b`, and a leading `0` for octal.
fn parse_int(text: &str) -> Result<i64, &'static str> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = digits.replace('_', "");
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(hex) = lower.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = lower.strip_prefix("0o") {
        (8, oct)
    } else if let Some(bin) = lower.strip_prefix("0b") {
        (2, bin)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if radix == 10 && body.contains(['.', 'e', 'i']) {
        return Err("floating-point and complex constants are not supported");
    }
    let magnitude = i128::from_str_radix(body, radix).map_err(|_| "bad number syntax")?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| "integer constant out of range")
}

/// Reads a Go interpreted string literal after its opening quote. Returns the value and the length
/// consumed, closing quote included.
fn unquote(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\n' => break,
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                let simple = match e {
                    'a' => Some('\x07'),
                    'b' => Some('\x08'),
                    'f' => Some('\x0c'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\x0b'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    continue;
                }
                let (len, radix) = match e {
                    'x' => (2, 16),
                    'u' => (4, 16),
                    'U' => (8, 16),
                    '0'..='7' => (2, 8),
                    _ => return Err(format!("unknown escape sequence \\{e}")),
                };
                let mut digits = String::new();
                if radix == 8 {
                    digits.push(e);
                }
                for _ in 0..len {
                    let Some((_, d)) = chars.next() else { break };
                    digits.push(d);
                }
                let code = u32::from_str_radix(&digits, radix)
                    .map_err(|_| format!("invalid escape sequence in {digits:?}"))?;
                if e == 'x' || radix == 8 {
                    // Go's \x and octal escapes are bytes; only ASCII ones make valid UTF-8 here.
                    if code > 0x7f {
                        return Err(format!("escape \\{digits} is not a valid UTF-8 character"));
                    }
                }
                let c = char::from_u32(code)
                    .ok_or_else(|| format!("escape value {code:#x} is not a character"))?;
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Err("unterminated quoted string".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Parser

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action {
        span: (usize, usize),
        pipe: Pipeline,
    },
    Branch {
        kind: BranchKind,
        span: (usize, usize),
        pipe: Pipeline,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        span: (usize, usize),
        pipe: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Break,
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchKind {
    If,
    With,
}

#[derive(Debug, Clone)]
struct Pipeline {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Operand>>,
}

#[derive(Debug, Clone)]
enum Operand {
    Func(Func),
    Dot,
    Nil,
    Literal(Value),
    Var(String),
    Pipe(Box<Pipeline>),
    Chain(Box<Operand>, Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Index,
    Len,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Not,
    Print,
    Println,
    Printf,
}

impl Func {
    const ALL: [(&'static str, Self); 14] = [
        ("index", Self::Index),
        ("len", Self::Len),
        ("eq", Self::Eq),
        ("ne", Self::Ne),
        ("lt", Self::Lt),
        ("le", Self::Le),
        ("gt", Self::Gt),
        ("ge", Self::Ge),
        ("and", Self::And),
        ("or", Self::Or),
        ("not", Self::Not),
        ("print", Self::Print),
        ("println", Self::Println),
        ("printf", Self::Printf),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(name, _)| name)
    }

    fn lookup(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }
}

enum Stop {
    Eof,
    /// `<<end>>` at the given position, consumed through its closing delimiter.
    End(usize),
    /// `<<else` at the given position; the rest of the action is still pending.
    Else(usize),
}

struct Parser<'a> {
    src: &'a str,
    items: Vec<Item>,
    next: usize,
    /// Where the current action opened, for error messages.
    open: usize,
    vars: Vec<String>,
    range_depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Item> {
        self.items.get(self.next)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|i| &i.tok)
    }

    fn bump(&mut self) -> Option<Item> {
        let item = self.items.get(self.next).cloned();
        self.next += 1;
        item
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> Error {
        parse_error(self.src, self.open, pos, message)
    }

    /// The position of the next token, or the end of the text.
    fn here(&self) -> usize {
        self.peek().map_or(self.src.len(), |i| i.pos)
    }

    fn describe(tok: Option<&Tok>) -> String {
        let Some(tok) = tok else {
            return "end of template".into();
        };
        match tok {
            Tok::Text(_) => "text".into(),
            Tok::Open => LEFT.into(),
            Tok::Close => RIGHT.into(),
            Tok::Ident(name) | Tok::Var(name) => format!("{name:?}"),
            Tok::Keyword(Keyword::Unsupported(name)) => format!("keyword {name:?}"),
            Tok::Keyword(k) => format!("keyword \"{}\"", format!("{k:?}").to_lowercase()),
            Tok::Field(name) => format!("\".{name}\""),
            Tok::Dot => "\".\"".into(),
            Tok::Str(s) => format!("string {}", go_quote(s)),
            Tok::Int(i) => format!("number {i}"),
            Tok::Bool(b) => format!("{b}"),
            Tok::Nil => "nil".into(),
            Tok::Pipe => "\"|\"".into(),
            Tok::LParen => "\"(\"".into(),
            Tok::RParen => "\")\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Declare => "\":=\"".into(),
            Tok::Assign => "\"=\"".into(),
        }
    }

    /// Consumes the closing delimiter and returns the position after it.
    fn expect_close(&mut self) -> Result<usize> {
        match self.peek_tok() {
            Some(Tok::Close) => {
                let pos = self.here();
                self.next += 1;
                Ok(pos + RIGHT.len())
            }
            other => {
                let message = format!("unexpected {} in action, expected {RIGHT}", Self::describe(other));
                Err(self.error(self.here(), message))
            }
        }
    }

    fn parse_list(&mut self) -> Result<(Vec<Node>, Stop)> {
        let mut nodes = Vec::new();
        while let Some(item) = self.bump() {
            let open = item.pos;
            match item.tok {
                Tok::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Tok::Open => self.open = open,
                _ => return Err(self.error(open, "unexpected token outside an action")),
            }
            match self.peek_tok() {
                Some(Tok::Keyword(Keyword::End)) => {
                    self.next += 1;
                    self.expect_close()?;
                    return Ok((nodes, Stop::End(open)));
                }
                Some(Tok::Keyword(Keyword::Else)) => {
                    self.next += 1;
                    return Ok((nodes, Stop::Else(open)));
                }
                Some(Tok::Keyword(Keyword::If)) => {
                    self.next += 1;
                    nodes.push(self.parse_branch(BranchKind::If, open)?);
                }
                Some(Tok::Keyword(Keyword::With)) => {
                    self.next += 1;
                    nodes.push(self.parse_branch(BranchKind::With, open)?);
                }
                Some(Tok::Keyword(Keyword::Range)) => {
                    self.next += 1;
                    nodes.push(self.parse_range(open)?);
                }
                Some(Tok::Keyword(k @ (Keyword::Break | Keyword::Continue))) => {
                    let k = *k;
                    if self.range_depth == 0 {
                        return Err(self.error(open, format!("<<{k:?}>> outside <<range>>").to_lowercase()));
                    }
                    self.next += 1;
                    self.expect_close()?;
                    nodes.push(if k == Keyword::Break {
                        Node::Break
                    } else {
                        Node::Continue
                    });
                }
                Some(Tok::Keyword(Keyword::Unsupported(name))) => {
                    let message = format!("<<{name}>> is not supported");
                    return Err(self.error(self.here(), message));
                }
                _ => {
                    let mark = self.vars.len();
                    let pipe = self.parse_pipeline(false, "command")?;
                    let end = self.expect_close()?;
                    self.declare(&pipe, mark);
                    nodes.push(Node::Action {
                        span: (open, end),
                        pipe,
                    });
                }
            }
        }
        Ok((nodes, Stop::Eof))
    }

    /// Makes a pipeline's declared variables visible from here on (Go declares them after the
    /// pipeline).
    fn declare(&mut self, pipe: &Pipeline, mark: usize) {
        self.vars.truncate(mark);
        if !pipe.assign {
            self.vars.extend(pipe.decl.iter().cloned());
        }
    }

    fn unclosed(&self, open: usize, what: &str) -> Error {
        parse_error(
            self.src,
            open,
            open,
            format!("unclosed <<{what}>>: missing <<end>>"),
        )
    }

    fn parse_branch(&mut self, kind: BranchKind, open: usize) -> Result<Node> {
        let name = if kind == BranchKind::If { "if" } else { "with" };
        let mark = self.vars.len();
        let pipe = self.parse_pipeline(false, name)?;
        let end = self.expect_close()?;
        self.declare(&pipe, mark);
        let scope = self.vars.len();
        let (then, stop) = self.parse_list()?;
        self.vars.truncate(scope);
        let otherwise = match stop {
            Stop::Eof => return Err(self.unclosed(open, name)),
            Stop::End(_) => Vec::new(),
            Stop::Else(else_open) => {
                let chained = match (kind, self.peek_tok()) {
                    (BranchKind::If, Some(Tok::Keyword(Keyword::If))) => true,
                    (BranchKind::With, Some(Tok::Keyword(Keyword::With))) => true,
                    (_, Some(Tok::Keyword(k @ (Keyword::If | Keyword::With)))) => {
                        let message = format!("<<else {k:?}>> is not allowed in <<{name}>>").to_lowercase();
                        return Err(self.error(self.here(), message));
                    }
                    _ => false,
                };
                if chained {
                    self.next += 1;
                    vec![self.parse_branch(kind, else_open)?]
                } else {
                    self.expect_close()?;
                    self.parse_else_list(open, name)?
                }
            }
        };
        self.vars.truncate(mark);
        Ok(Node::Branch {
            kind,
            span: (open, end),
            pipe,
            then,
            otherwise,
        })
    }

    fn parse_else_list(&mut self, open: usize, name: &str) -> Result<Vec<Node>> {
        let scope = self.vars.len();
        let (nodes, stop) = self.parse_list()?;
        self.vars.truncate(scope);
        match stop {
            Stop::End(_) => Ok(nodes),
            Stop::Else(pos) => Err(parse_error(
                self.src,
                pos,
                pos,
                format!("a second <<else>> in <<{name}>>"),
            )),
            Stop::Eof => Err(self.unclosed(open, name)),
        }
    }

    fn parse_range(&mut self, open: usize) -> Result<Node> {
        let mark = self.vars.len();
        let pipe = self.parse_pipeline(true, "range")?;
        let end = self.expect_close()?;
        self.declare(&pipe, mark);
        self.range_depth += 1;
        let body = self.parse_list();
        self.range_depth -= 1;
        let (body, stop) = body?;
        let otherwise = match stop {
            Stop::Eof => return Err(self.unclosed(open, "range")),
            Stop::End(_) => Vec::new(),
            Stop::Else(_) => {
                if let Some(Tok::Keyword(Keyword::If | Keyword::With)) = self.peek_tok() {
                    return Err(self.error(
                        self.here(),
                        "<<else if>> and <<else with>> are not allowed in <<range>>",
                    ));
                }
                self.expect_close()?;
                // As in Go, the range's variables stay declared in its else branch.
                self.parse_else_list(open, "range")?
            }
        };
        self.vars.truncate(mark);
        Ok(Node::Range {
            span: (open, end),
            pipe,
            body,
            otherwise,
        })
    }

    fn parse_pipeline(&mut self, in_range: bool, context: &str) -> Result<Pipeline> {
        let mut decl = Vec::new();
        let mut assign = false;
        if let Some(Tok::Var(first)) = self.peek_tok() {
            let first = first.clone();
            let after = self.items.get(self.next + 1).map(|i| &i.tok);
            match after {
                Some(Tok::Declare) => {
                    self.next += 2;
                    decl.push(first);
                }
                Some(Tok::Assign) => {
                    if !self.vars.contains(&first) {
                        return Err(self.error(self.here(), format!("undefined variable {first:?}")));
                    }
                    self.next += 2;
                    decl.push(first);
                    assign = true;
                }
                Some(Tok::Comma) if in_range => {
                    let second = self.items.get(self.next + 2).map(|i| &i.tok);
                    let declare = self.items.get(self.next + 3).map(|i| &i.tok);
                    match (second, declare) {
                        (Some(Tok::Var(second)), Some(Tok::Declare)) => {
                            decl.push(first);
                            decl.push(second.clone());
                            self.next += 4;
                        }
                        _ => return Err(self.error(self.here(), "expected `$a, $b :=` in range")),
                    }
                }
                _ => {}
            }
        }
        let mut cmds = Vec::new();
        loop {
            let stage = cmds.len();
            let cmd = self.parse_command()?;
            if stage > 0
                && matches!(
                    cmd.first(),
                    Some(Operand::Dot | Operand::Nil | Operand::Literal(_))
                )
            {
                let message = format!("non executable command in pipeline stage {}", stage + 1);
                return Err(self.error(self.here(), message));
            }
            cmds.push(cmd);
            match self.peek_tok() {
                Some(Tok::Pipe) => self.next += 1,
                _ => break,
            }
        }
        if cmds.iter().any(Vec::is_empty) {
            return Err(self.error(self.here(), format!("missing value for {context}")));
        }
        Ok(Pipeline { decl, assign, cmds })
    }

    fn parse_command(&mut self) -> Result<Vec<Operand>> {
        let mut operands = Vec::new();
        loop {
            match self.peek() {
                None
                | Some(Item {
                    tok: Tok::Close | Tok::Pipe | Tok::RParen,
                    ..
                }) => return Ok(operands),
                Some(item) if !operands.is_empty() && !item.spaced => {
                    let message = format!(
                        "unexpected {} in operand; missing space?",
                        Self::describe(Some(&item.tok))
                    );
                    return Err(self.error(item.pos, message));
                }
                Some(_) => operands.push(self.parse_operand()?),
            }
        }
    }

    fn parse_operand(&mut self) -> Result<Operand> {
        let pos = self.here();
        let Some(item) = self.bump() else {
            return Err(self.error(pos, "unclosed action"));
        };
        let term = match item.tok {
            Tok::Ident(name) => match Func::lookup(&name) {
                Some(f) => Operand::Func(f),
                None => return Err(self.error(pos, format!("function {name:?} not defined"))),
            },
            Tok::Dot => Operand::Dot,
            Tok::Nil => Operand::Nil,
            Tok::Bool(b) => Operand::Literal(Value::Bool(b)),
            Tok::Int(i) => Operand::Literal(Value::Int(i)),
            Tok::Str(s) => Operand::Literal(Value::Str(s)),
            Tok::Field(name) => Operand::Chain(Box::new(Operand::Dot), vec![name]),
            Tok::Var(name) => {
                if !self.vars.contains(&name) {
                    return Err(self.error(pos, format!("undefined variable {name:?}")));
                }
                Operand::Var(name)
            }
            Tok::LParen => {
                let mark = self.vars.len();
                let pipe = self.parse_pipeline(false, "parenthesized pipeline")?;
                if self.peek_tok() != Some(&Tok::RParen) {
                    return Err(self.error(self.here(), "unclosed left paren"));
                }
                self.next += 1;
                self.declare(&pipe, mark);
                Operand::Pipe(Box::new(pipe))
            }
            other => {
                let message = format!("unexpected {} in operand", Self::describe(Some(&other)));
                return Err(self.error(pos, message));
            }
        };
        let mut fields = Vec::new();
        while let Some(Item {
            tok: Tok::Field(name),
            spaced: false,
            ..
        }) = self.peek()
        {
            fields.push(name.clone());
            self.next += 1;
        }
        if fields.is_empty() {
            return Ok(term);
        }
        match term {
            Operand::Chain(base, mut first) => {
                first.extend(fields);
                Ok(Operand::Chain(base, first))
            }
            Operand::Var(_) | Operand::Pipe(_) => Ok(Operand::Chain(Box::new(term), fields)),
            _ => Err(self.error(pos, "unexpected . after term")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Execution

enum Flow {
    Normal,
    Break,
    Continue,
}

/// Variables hold copies, except `$`, which borrows the data: rendering does not copy the data
/// unless a template copies a part of it.
struct Exec<'a> {
    src: &'a str,
    vars: Vec<(String, Cow<'a, Value>)>,
    out: String,
}

impl<'a> Exec<'a> {
    fn error(&self, span: (usize, usize), message: impl Into<String>) -> Error {
        let (line, column) = line_column(self.src, span.0);
        Error::Exec {
            line,
            column,
            action: self.src.get(span.0..span.1).unwrap_or_default().to_owned(),
            message: message.into(),
        }
    }

    fn walk(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow> {
        for node in nodes {
            let flow = match node {
                Node::Text(text) => {
                    self.out.push_str(text);
                    Flow::Normal
                }
                Node::Action { span, pipe } => {
                    let value = self.pipeline(pipe, dot, *span)?;
                    if pipe.decl.is_empty() {
                        match value {
                            Value::Nil => self.out.push_str("<no value>"),
                            value => write_value(&mut self.out, &value),
                        }
                    }
                    Flow::Normal
                }
                Node::Branch {
                    kind,
                    span,
                    pipe,
                    then,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let value = self.pipeline(pipe, dot, *span)?;
                    let flow = match (value.truth(), kind) {
                        (true, BranchKind::If) => self.walk(then, dot),
                        (true, BranchKind::With) => self.walk(then, &value),
                        (false, _) => self.walk(otherwise, dot),
                    };
                    self.vars.truncate(mark);
                    flow?
                }
                Node::Range {
                    span,
                    pipe,
                    body,
                    otherwise,
                } => self.range(*span, pipe, body, otherwise, dot)?,
                Node::Break => Flow::Break,
                Node::Continue => Flow::Continue,
            };
            if !matches!(flow, Flow::Normal) {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    fn range(
        &mut self,
        span: (usize, usize),
        pipe: &Pipeline,
        body: &[Node],
        otherwise: &[Node],
        dot: &Value,
    ) -> Result<Flow> {
        let mark = self.vars.len();
        let value = self.commands(pipe, dot, span)?;
        let items: Vec<(Value, Value)> = match value.clone() {
            Value::Nil => Vec::new(),
            Value::List(items) => (0..).map(Value::Int).zip(items).collect(),
            Value::Map(map) => map.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
            Value::Int(n) => (0..n.max(0)).map(|i| (Value::Int(i), Value::Int(i))).collect(),
            other => return Err(self.error(span, format!("range can't iterate over {}", other.type_name()))),
        };
        if items.is_empty() {
            // Go declares the range's variables with the whole value before iterating.
            for name in pipe.decl.iter().filter(|_| !pipe.assign) {
                self.vars.push((name.clone(), Cow::Owned(value.clone())));
            }
            let flow = self.walk(otherwise, dot);
            self.vars.truncate(mark);
            return flow;
        }
        for (key, elem) in items {
            match pipe.decl.as_slice() {
                [] => {}
                [v] if pipe.assign => self.assign(v, elem.clone()),
                [v] => self.vars.push((v.clone(), Cow::Owned(elem.clone()))),
                [k, v, ..] => {
                    self.vars.push((k.clone(), Cow::Owned(key)));
                    self.vars.push((v.clone(), Cow::Owned(elem.clone())));
                }
            }
            let flow = self.walk(body, &elem);
            self.vars.truncate(mark);
            if let Flow::Break = flow? {
                break;
            }
        }
        Ok(Flow::Normal)
    }

    fn assign(&mut self, name: &str, value: Value) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            slot.1 = Cow::Owned(value);
        }
    }

    /// Runs a pipeline's commands and applies its declaration.
    fn pipeline(&mut self, pipe: &Pipeline, dot: &Value, span: (usize, usize)) -> Result<Value> {
        let value = self.commands(pipe, dot, span)?;
        for name in &pipe.decl {
            if pipe.assign {
                self.assign(name, value.clone());
            } else {
                self.vars.push((name.clone(), Cow::Owned(value.clone())));
            }
        }
        Ok(value)
    }

    fn commands(&mut self, pipe: &Pipeline, dot: &Value, span: (usize, usize)) -> Result<Value> {
        let mut last = None;
        for cmd in &pipe.cmds {
            last = Some(self.command(cmd, dot, last, span)?);
        }
        Ok(last.unwrap_or(Value::Nil))
    }

    fn command(
        &mut self,
        cmd: &[Operand],
        dot: &Value,
        piped: Option<Value>,
        span: (usize, usize),
    ) -> Result<Value> {
        match cmd {
            [Operand::Func(f), args @ ..] => self.call(*f, args, piped, dot, span),
            [Operand::Nil] if piped.is_none() => Err(self.error(span, "nil is not a command")),
            [operand] if piped.is_none() => self.operand(operand, dot, span),
            _ => Err(self.error(span, "can't give argument to non-function")),
        }
    }

    fn operand(&mut self, operand: &Operand, dot: &Value, span: (usize, usize)) -> Result<Value> {
        match operand {
            Operand::Func(f) => self.call(*f, &[], None, dot, span),
            Operand::Dot => Ok(dot.clone()),
            Operand::Nil => Ok(Value::Nil),
            Operand::Literal(v) => Ok(v.clone()),
            Operand::Var(name) => Ok(self.var(name).clone()),
            Operand::Pipe(pipe) => {
                let mark = self.vars.len();
                let value = self.pipeline(pipe, dot, span);
                if pipe.assign || pipe.decl.is_empty() {
                    self.vars.truncate(mark);
                }
                value
            }
            Operand::Chain(base, fields) => {
                // Fields of dot and of variables are looked up in place, so that `.Series` copies
                // one string rather than the whole data.
                let computed;
                let mut value = match &**base {
                    Operand::Dot => dot,
                    Operand::Var(name) => self.var(name),
                    other => {
                        computed = self.operand(other, dot, span)?;
                        &computed
                    }
                };
                for field in fields {
                    value = value.field(field).map_err(|m| self.error(span, m))?;
                }
                Ok(value.clone())
            }
        }
    }

    fn var(&self, name: &str) -> &Value {
        static NIL: Value = Value::Nil;
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map_or(&NIL, |(_, v)| v.as_ref())
    }

    fn call(
        &mut self,
        f: Func,
        args: &[Operand],
        piped: Option<Value>,
        dot: &Value,
        span: (usize, usize),
    ) -> Result<Value> {
        if matches!(f, Func::And | Func::Or) {
            return self.and_or(f, args, piped, dot, span);
        }
        let mut values = args
            .iter()
            .map(|a| self.operand(a, dot, span))
            .collect::<Result<Vec<_>>>()?;
        values.extend(piped);
        builtin(f, &values).map_err(|m| self.error(span, m))
    }

    /// `and` and `or` evaluate their arguments lazily, stopping at the first that decides.
    fn and_or(
        &mut self,
        f: Func,
        args: &[Operand],
        piped: Option<Value>,
        dot: &Value,
        span: (usize, usize),
    ) -> Result<Value> {
        if args.is_empty() && piped.is_none() {
            let message = format!("wrong number of args for {}: want at least 1 got 0", f.name());
            return Err(self.error(span, message));
        }
        let mut last = Value::Nil;
        for arg in args {
            last = self.operand(arg, dot, span)?;
            if last.truth() == (f == Func::Or) {
                return Ok(last);
            }
        }
        Ok(piped.unwrap_or(last))
    }
}

/// Calls a function other than `and` and `or` on its evaluated arguments.
fn builtin(f: Func, values: &[Value]) -> Result<Value, String> {
    let want = |n: usize| -> Result<(), String> {
        if values.len() == n {
            Ok(())
        } else {
            Err(format!(
                "wrong number of args for {}: want {n} got {}",
                f.name(),
                values.len()
            ))
        }
    };
    match f {
        Func::Index => index(values),
        Func::Len => {
            want(1)?;
            match &values[0] {
                Value::Str(s) => Ok(Value::Int(len_i64(s.len()))),
                Value::List(l) => Ok(Value::Int(len_i64(l.len()))),
                Value::Map(m) => Ok(Value::Int(len_i64(m.len()))),
                other => Err(format!("error calling len: len of type {}", other.type_name())),
            }
        }
        Func::Not => {
            want(1)?;
            Ok(Value::Bool(!values[0].truth()))
        }
        Func::Eq => eq(values),
        Func::Ne | Func::Lt | Func::Le | Func::Gt | Func::Ge => {
            want(2)?;
            ordered(f, &values[0], &values[1])
        }
        Func::Print => Ok(Value::Str(sprint(values))),
        Func::Println => Ok(Value::Str(sprintln(values))),
        Func::Printf => match values.split_first() {
            Some((Value::Str(format), args)) => sprintf(format, args).map(Value::Str),
            _ => Err("error calling printf: the first argument must be a format string".into()),
        },
        Func::And | Func::Or => Ok(Value::Nil),
    }
}

/// `index item i j ...`: a missing map key yields the zero value of prometheus-adapter's
/// `map[string]string`, the empty string.
fn index(values: &[Value]) -> Result<Value, String> {
    let Some((item, indices)) = values.split_first() else {
        return Err("wrong number of args for index: want at least 1 got 0".into());
    };
    let zero = Value::Str(String::new());
    let mut item = item;
    for index in indices {
        item = match (item, index) {
            (Value::Map(map), Value::Str(key)) => map.get(key).unwrap_or(&zero),
            (Value::List(list), Value::Int(i)) => usize::try_from(*i)
                .ok()
                .and_then(|i| list.get(i))
                .ok_or_else(|| format!("error calling index: index out of range: {i}"))?,
            (Value::Nil, _) => return Err("error calling index: index of untyped nil".into()),
            (item, index) => {
                return Err(format!(
                    "error calling index: cannot index {} with {}",
                    item.type_name(),
                    index.type_name()
                ));
            }
        };
    }
    Ok(item.clone())
}

/// `eq a b c ...`: whether `a` equals any of the others.
fn eq(values: &[Value]) -> Result<Value, String> {
    let Some((first, rest)) = values.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        return Err("error calling eq: missing argument for comparison".into());
    };
    for other in rest {
        if compare(first, other).map_err(|m| format!("error calling eq: {m}"))? == Some(Ordering::Equal) {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

/// `ne`, `lt`, `le`, `gt` and `ge`.
fn ordered(f: Func, a: &Value, b: &Value) -> Result<Value, String> {
    let name = f.name();
    let order = compare(a, b).map_err(|m| format!("error calling {name}: {m}"))?;
    let result = match (f, order) {
        (Func::Ne, order) => order != Some(Ordering::Equal),
        (_, None) => return Err(format!("error calling {name}: invalid type for comparison")),
        (Func::Lt, Some(o)) => o == Ordering::Less,
        (Func::Le, Some(o)) => o != Ordering::Greater,
        (Func::Gt, Some(o)) => o == Ordering::Greater,
        (_, Some(o)) => o != Ordering::Less,
    };
    Ok(Value::Bool(result))
}

/// Go's `fmt.Sprintln`: spaces between all operands and a final newline.
fn sprintln(values: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_value(&mut out, v);
    }
    out.push('\n');
    out
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Go's comparison of basic kinds: `None` means "unordered" (nil against a value, or booleans).
fn compare(a: &Value, b: &Value) -> Result<Option<Ordering>, String> {
    match (a, b) {
        (Value::Nil, Value::Nil) => Ok(Some(Ordering::Equal)),
        (Value::Nil, _) | (_, Value::Nil) => Ok(None),
        (Value::Str(a), Value::Str(b)) => Ok(Some(a.cmp(b))),
        (Value::Int(a), Value::Int(b)) => Ok(Some(a.cmp(b))),
        (Value::Bool(a), Value::Bool(b)) => Ok((a == b).then_some(Ordering::Equal)),
        (a @ (Value::List(_) | Value::Map(_) | Value::Struct(_)), _) => {
            Err(format!("non-comparable type {}", a.type_name()))
        }
        _ => Err("incompatible types for comparison".into()),
    }
}

/// Go's `fmt.Sprint`: spaces between operands when neither side is a string.
fn sprint(values: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 && !matches!(v, Value::Str(_)) && !matches!(values[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        write_value(&mut out, v);
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs `%s`, `%d`, `%v`, `%q` and `%%`, with Go's in-band reports of
/// missing, extra and mismatched arguments. Flags, widths and other verbs are errors.
fn sprintf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let verb = match chars.next() {
            Some('%') => {
                out.push('%');
                continue;
            }
            Some(v @ ('s' | 'd' | 'v' | 'q')) => v,
            Some(other) => {
                return Err(format!(
                    "printf: %{other} is not supported (only %s, %d, %v, %q and %%)"
                ));
            }
            None => {
                out.push_str("%!(NOVERB)");
                break;
            }
        };
        match args.next() {
            Some(arg) => format_verb(&mut out, verb, arg)?,
            None => {
                let _ = write!(out, "%!{verb}(MISSING)");
            }
        }
    }
    let extra: Vec<_> = args.collect();
    if !extra.is_empty() {
        out.push_str("%!(EXTRA ");
        for (i, arg) in extra.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(arg.type_name());
            out.push('=');
            write_value(&mut out, arg);
        }
        out.push(')');
    }
    Ok(out)
}

fn format_verb(out: &mut String, verb: char, v: &Value) -> Result<(), String> {
    match (verb, v) {
        ('v', _) => write_value(out, v),
        ('s', Value::Str(s)) => out.push_str(s),
        ('q', Value::Str(s)) => out.push_str(&go_quote(s)),
        ('d', Value::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        ('q', Value::Int(_)) => return Err("printf: %q of an integer is not supported".into()),
        (_, Value::List(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_verb(out, verb, item)?;
            }
            out.push(']');
        }
        (_, Value::Map(map)) => {
            out.push_str("map[");
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_verb(out, verb, &Value::Str(k.clone()))?;
                out.push(':');
                format_verb(out, verb, item)?;
            }
            out.push(']');
        }
        (_, Value::Nil) => {
            let _ = write!(out, "%!{verb}(<nil>)");
        }
        (_, v) => {
            let _ = write!(out, "%!{verb}({}=", v.type_name());
            write_value(out, v);
            out.push(')');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa_args() -> Value {
        let values = BTreeMap::from([
            ("namespace".to_owned(), vec!["somens".to_owned()]),
            ("pod".to_owned(), vec!["pod1".to_owned(), "pod2".to_owned()]),
        ]);
        metrics_query_args(
            "http_requests_total",
            &[
                r#"namespace="somens""#.to_owned(),
                r#"pod=~"pod1|pod2""#.to_owned(),
            ],
            &["pod".to_owned(), "container".to_owned()],
            &values,
        )
    }

    fn render(text: &str) -> String {
        Template::parse(text).unwrap().render(&pa_args()).unwrap()
    }

    fn parse_err(text: &str) -> String {
        Template::parse(text).unwrap_err().to_string()
    }

    fn exec_err(text: &str) -> String {
        Template::parse(text)
            .unwrap()
            .render(&pa_args())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn prometheus_adapter_default_queries() {
        assert_eq!(
            render(r#"sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[5m])) by (<<.GroupBy>>)"#),
            r#"sum(rate(http_requests_total{namespace="somens",pod=~"pod1|pod2",container!="POD"}[5m])) by (pod,container)"#
        );
        assert_eq!(
            render("sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"),
            r#"sum(http_requests_total{namespace="somens",pod=~"pod1|pod2"}) by (pod,container)"#
        );
        // The resource-metrics query from deploy/manifests/config-map.yaml, a block scalar.
        let query = "sum by (<<.GroupBy>>) (\n  irate (\n      container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!=\"\",pod!=\"\"}[4m]\n  )\n)\n";
        assert_eq!(
            render(query),
            "sum by (pod,container) (\n  irate (\n      container_cpu_usage_seconds_total{namespace=\"somens\",pod=~\"pod1|pod2\",container!=\"\",pod!=\"\"}[4m]\n  )\n)\n"
        );
    }

    #[test]
    fn fields_index_range_and_if() {
        assert_eq!(render(r#"<<index .LabelValuesByName "namespace">>"#), "somens");
        assert_eq!(render(r#"<<index .LabelValuesByName "pod">>"#), "pod1|pod2");
        assert_eq!(render(r#"[<<index .LabelValuesByName "missing">>]"#), "[]");
        assert_eq!(render("<<.LabelValuesByName.missing>>"), "<no value>");
        assert_eq!(render("<<.LabelValuesByName.pod>>"), "pod1|pod2");
        assert_eq!(render("<<.GroupBySlice>>"), "[pod container]");
        assert_eq!(render("<<index .GroupBySlice 1>>"), "container");
        assert_eq!(
            render("<<range $i, $l := .GroupBySlice>><<if $i>>,<<end>><<$l>><<end>>"),
            "pod,container"
        );
        assert_eq!(
            render("<<range .GroupBySlice>>[<<.>>]<<end>>"),
            "[pod][container]"
        );
        assert_eq!(
            render("<<range $l := .GroupBySlice>><<$l>>;<<end>>"),
            "pod;container;"
        );
        assert_eq!(
            render("<<range $k, $v := .LabelValuesByName>><<$k>>=<<$v>> <<end>>"),
            "namespace=somens pod=pod1|pod2 "
        );
        assert_eq!(
            render("<<range .LabelValuesByName.missing>>x<<else>>none<<end>>"),
            "none"
        );
        assert_eq!(
            render("<<range .GroupBySlice>><<if eq . \"pod\">><<continue>><<end>><<.>><<end>>"),
            "container"
        );
        assert_eq!(render("<<range .GroupBySlice>><<.>><<break>><<end>>"), "pod");
        assert_eq!(
            render("x{<<if .LabelMatchers>><<.LabelMatchers>>,<<end>>a=\"b\"}"),
            r#"x{namespace="somens",pod=~"pod1|pod2",a="b"}"#
        );
        assert_eq!(
            render("<<if .LabelValuesByName.nope>>a<<else if eq .GroupBy \"pod\">>b<<else>>c<<end>>"),
            "c"
        );
        assert_eq!(
            render("<<if not .GroupBy>>a<<else if eq .GroupBy \"pod,container\">>b<<else>>c<<end>>"),
            "b"
        );
        assert_eq!(render("<<with .GroupBy>>by (<<.>>)<<end>>"), "by (pod,container)");
        assert_eq!(
            render("<<with .LabelValuesByName.x>>y<<else with .Series>><<.>><<end>>"),
            "http_requests_total"
        );
        assert_eq!(
            render("<<$s := .Series>><<range .GroupBySlice>><<$s>>/<<.>> <<end>>"),
            "http_requests_total/pod http_requests_total/container "
        );
        assert_eq!(render("<<$x := 1>><<$x = 2>><<$x>>"), "2");
        assert_eq!(
            render("<<range .GroupBySlice>><<$.Series>><<end>>"),
            "http_requests_totalhttp_requests_total"
        );
        assert!(render("<<.>>").starts_with("{http_requests_total "));
    }

    /// Cases compared against Go 1.19's text/template with the same data.
    #[test]
    fn variable_scopes_as_in_go() {
        let cases = [
            (
                "<<range $i, $v := .LabelValuesByName.none>><<else>>[<<$i>>]<<end>>",
                "[<no value>]",
            ),
            (
                "<<if $x := .LabelValuesByName.none>>a<<else>>[<<$x>>]<<end>>",
                "[<no value>]",
            ),
            ("<<$x := .Series>><<if true>><<$x = \"b\">><<end>><<$x>>", "b"),
            (
                "<<$x := .Series>><<if true>><<$x := \"b\">><<$x>><<end>><<$x>>",
                "bhttp_requests_total",
            ),
            (
                "<<range $i, $e := .GroupBySlice>><<if eq $i 1>><<break>><<end>><<$e>><<end>>",
                "pod",
            ),
            ("<<1 | index .GroupBySlice>>", "container"),
            (
                "<<printf \"%v|%s|%q\" .GroupBySlice .LabelValuesByName .GroupBySlice>>",
                "[pod container]|map[namespace:somens pod:pod1|pod2]|[\"pod\" \"container\"]",
            ),
            ("<<print \"a\" .LabelValuesByName.nope>>", "a<nil>"),
            ("<<printf \"%s\" \"a\" \"b\" 3>>", "a%!(EXTRA string=b, int=3)"),
            (" <<- /* c */ ->> x", "x"),
        ];
        for (text, want) in cases {
            assert_eq!(render(text), want, "{text}");
        }
    }

    /// More cases compared against Go 1.19's text/template (prometheus-adapter v0.12.0 is built
    /// with Go 1.22.5, whose text/template behaves the same here): the ones where the `gotmpl`
    /// crate differs from Go, kept so that a change of engine cannot silently change them. See
    /// doc-template-comparison.md.
    #[test]
    fn cases_where_gotmpl_differs_from_go() {
        let cases = [
            // prometheus-adapter's own test "multiple GroupBySlice values with namespace disabled".
            (
                "<<index .LabelValuesByName \"namespaces\">> <<.GroupBySlice>>",
                " [pod container]",
            ),
            (
                "<<if eq (index .LabelValuesByName \"x\") \"\">>empty<<end>>",
                "empty",
            ),
            ("<<index .LabelValuesByName \"missing\" | len>>", "0"),
            (
                "<<printf \"%q\" .LabelValuesByName>>",
                "map[\"namespace\":\"somens\" \"pod\":\"pod1|pod2\"]",
            ),
            ("<<printf \"%s\" .GroupBySlice>>", "[pod container]"),
            ("a <<- /* note */>> b", "a b"),
            (
                "<<.>>",
                "{http_requests_total namespace=\"somens\",pod=~\"pod1|pod2\" \
                 map[namespace:somens pod:pod1|pod2] pod,container [pod container]}",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(render(text), want, "{text}");
        }
        for text in ["x<<range .GroupBySlice>>", "<<end>>", "<<if .Series>>x"] {
            assert!(Template::parse(text).is_err(), "{text}");
        }
        assert!(exec_err("<<.Missing.Deep>>").contains("can't evaluate field Missing"));
    }

    #[test]
    fn functions_and_pipelines() {
        assert_eq!(render("<<len .GroupBySlice>> <<.GroupBySlice | len>>"), "2 2");
        assert_eq!(
            render(r#"<<printf "%s{%s}" .Series .LabelMatchers>>"#),
            r#"http_requests_total{namespace="somens",pod=~"pod1|pod2"}"#
        );
        assert_eq!(render(r#"<<.Series | printf "%q">>"#), r#""http_requests_total""#);
        assert_eq!(
            render(r#"<<printf "%d %v %s %%" 3 .GroupBySlice true>>"#),
            "3 [pod container] %!s(bool=true) %"
        );
        assert_eq!(render(r#"<<printf "%s %s" "a">>"#), "a %!s(MISSING)");
        assert_eq!(render(r#"<<print "a" 1 2 "b">>"#), "a1 2b");
        assert_eq!(
            render("<<and .Series .GroupBy>>|<<or .LabelValuesByName.x \"\" 0>>|<<and 1 0 2>>"),
            "pod,container|0|0"
        );
        assert_eq!(
            render("<<if and (eq (len .GroupBySlice) 2) (ne .Series \"x\")>>yes<<end>>"),
            "yes"
        );
        assert_eq!(
            render(
                "<<if lt 1 2>>a<<end>><<if ge \"b\" \"a\">>b<<end>><<if eq .GroupBy \"x\" \"pod,container\">>c<<end>>"
            ),
            "abc"
        );
        assert_eq!(
            render(r#"<<"a\tb\x41\u00e9\101" | print>>|<<`raw\n`>>"#),
            "a\tbAéA|raw\\n"
        );
        assert_eq!(
            render("<<-1>> <<0x10>> <<017>> <<true>> <<print nil>>"),
            "-1 16 15 true <nil>"
        );
    }

    #[test]
    fn braces_trim_markers_and_comments() {
        assert_eq!(render(r#"{a="}}",b=~"{x}"} > 2 >"#), r#"{a="}}",b=~"{x}"} > 2 >"#);
        assert_eq!(render("a  \n <<- .GroupBy ->>  \n  b"), "apod,containerb");
        assert_eq!(render("a <<- /* note */>> b<</* x */ ->> c"), "a bc");
        assert_eq!(render("<<-3>>"), "-3");
        assert_eq!(render(r#"<<">>" >>x"#), ">>x");
    }

    #[test]
    fn parse_errors_say_where() {
        let e = parse_err("sum(<<.Series) by (x)");
        assert!(
            e.contains("unclosed action") && e.contains("column 5") && e.contains("<<.Series) by (x)"),
            "{e}"
        );
        let e = parse_err("sum(<<.Series>>{<<.LabelMatchers}) by (x)");
        assert!(
            e.contains("unexpected '}' in action") && e.contains("column 33:"),
            "{e}"
        );
        assert!(e.ends_with("(in `<<.LabelMatchers}`)"), "{e}");
        let e = parse_err("<<join .GroupBySlice \",\">>");
        assert!(
            e.contains(r#"function "join" not defined"#) && e.contains("column 3"),
            "{e}"
        );
        let e = parse_err("x\n<<end>>");
        assert!(
            e.contains("<<end>> without a matching") && e.contains("line 2, column 1"),
            "{e}"
        );
        let e = parse_err("<<if .A>>x");
        assert!(e.contains("unclosed <<if>>"), "{e}");
        assert!(parse_err("<<else>>").contains("<<else>> without"));
        assert!(parse_err("<<$x>>").contains(r#"undefined variable "$x""#));
        assert!(parse_err("<<if 1>><<$x := 1>><<end>><<$x>>").contains("undefined variable"));
        assert!(parse_err("<<break>>").contains("outside <<range>>"));
        assert!(parse_err(r#"<<"abc>>"#).contains("unterminated quoted string"));
        assert!(parse_err("<<1.5>>").contains("floating-point"));
        assert!(parse_err("<<define \"x\">><<end>>").contains("not supported"));
        assert!(parse_err("<<.A.B(>>").contains("missing space"));
        assert!(parse_err("<<.A | 1>>").contains("non executable command in pipeline stage 2"));
        assert!(parse_err("<</* x >>").contains("unclosed comment"));
        assert!(parse_err("<<(len .A>>").contains("unclosed left paren"));
        assert!(parse_err("<<range .A>><<else if .B>><<end>>").contains("not allowed in <<range>>"));
        assert!(parse_err("<<if .A>><<else>><<else>><<end>>").contains("second <<else>>"));
        assert!(parse_err("<<>>").contains("missing value"));
    }

    #[test]
    fn exec_errors_say_where() {
        let e = exec_err("sum(<<.Seriez>>)");
        assert!(
            e.contains("can't evaluate field Seriez") && e.contains("`<<.Seriez>>`"),
            "{e}"
        );
        assert!(exec_err("<<index .GroupBySlice 5>>").contains("index out of range: 5"));
        assert!(exec_err("<<len 1>>").contains("len of type int"));
        assert!(exec_err("<<eq .GroupBySlice 1>>").contains("non-comparable"));
        assert!(exec_err("<<eq 1 \"a\">>").contains("incompatible types"));
        assert!(exec_err("<<.Series 1>>").contains("non-function"));
        assert!(exec_err("<<range .Series>><<end>>").contains("range can't iterate over string"));
        assert!(exec_err("<<printf \"%5d\" 1>>").contains("not supported"));
        let empty = Template::parse("<<if .GroupBy>>x<<end>>").unwrap();
        assert_eq!(
            render_metrics_query(&empty, "s", &[], &[], &BTreeMap::new()),
            Err(Error::Empty)
        );
    }
}
