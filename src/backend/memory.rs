//! An in-memory backend for tests: series and query answers that the test sets, every query it
//! receives recorded (so a test asserts the exact PromQL), and failures or hangs on demand.
//!
//! It cannot evaluate PromQL: the pipeline's queries (`sum(rate(x{...}[2m])) by (pod)`) are
//! answered from a map from the exact query text to samples. Series lookups are evaluated, since
//! the relist's series selectors are only a name and label matchers.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;
use regex::Regex;

use super::{Error, ErrorKind, Labels, MetricsBackend, Result, Sample, SeriesList, SeriesShape};

/// How the backend answers the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// From its series and answers.
    #[default]
    Answer,
    /// Every call fails with an error of this kind.
    Fail(ErrorKind),
    /// Every call is recorded and then never completes, as a backend that accepted the
    /// connection and went silent.
    Hang,
}

/// A [`MetricsBackend`] whose content tests set.
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Series, with their name in `__name__`, and the time of their latest sample.
    series: Vec<Sample>,
    answers: HashMap<String, Vec<Sample>>,
    queries: Vec<String>,
    selectors: Vec<String>,
    behaviour: Behaviour,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A poisoned lock only means another test thread panicked; the state is still usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a series named `name` with `labels` whose latest sample is `value` at `at`.
    pub fn add_series<N: AsRef<str>, V: AsRef<str>>(
        &self,
        name: &str,
        labels: impl IntoIterator<Item = (N, V)>,
        value: f64,
        at: SystemTime,
    ) {
        let labels: Vec<(String, String)> = labels
            .into_iter()
            .map(|(n, v)| (n.as_ref().to_owned(), v.as_ref().to_owned()))
            .chain([("__name__".to_owned(), name.to_owned())])
            .collect();
        self.state().series.push(Sample {
            labels: labels.into_iter().collect(),
            timestamp: seconds(at),
            value,
        });
    }

    /// Sets the samples the query `promql` (exactly this text) answers.
    pub fn answer(&self, promql: &str, samples: Vec<Sample>) {
        self.state().answers.insert(promql.to_owned(), samples);
    }

    /// Sets how the next calls are answered.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state().behaviour = behaviour;
    }

    /// Every instant query received, in order.
    pub fn queries(&self) -> Vec<String> {
        self.state().queries.clone()
    }

    /// Every series selector received, in order.
    pub fn series_selectors(&self) -> Vec<String> {
        self.state().selectors.clone()
    }

    /// Records a call with `record` and says how to answer it (None: hang).
    fn begin(&self, record: impl FnOnce(&mut State)) -> Option<Behaviour> {
        let mut state = self.state();
        record(&mut state);
        match state.behaviour {
            Behaviour::Hang => None,
            behaviour => Some(behaviour),
        }
    }

    fn answer_query(&self, promql: &str) -> Result<Vec<Sample>> {
        // An unanswered query fails instead of returning no samples, so a test whose PromQL is not
        // what it expected fails loudly rather than passing on an empty answer.
        self.state().answers.get(promql).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Failed,
                "the in-memory backend has no answer for this query",
                format!("the in-memory backend has no answer for {promql:?}"),
            )
        })
    }

    fn list_series(&self, selector: &str, start: SystemTime, end: SystemTime) -> Result<SeriesList> {
        let matchers = parse_selector(selector).map_err(|reason| {
            Error::new(
                ErrorKind::Failed,
                "the backend rejected the series selector (bad_data)",
                format!("invalid series selector {selector:?}: {reason}"),
            )
        })?;
        let (start, end) = (seconds(start), seconds(end));
        let state = self.state();
        let matched: Vec<&Sample> = state
            .series
            .iter()
            .filter(|s| (start..=end).contains(&s.timestamp))
            .filter(|s| matchers.iter().all(|m| m.matches(&s.labels)))
            .collect();
        let shapes: BTreeSet<SeriesShape> = matched.iter().map(|s| shape(&s.labels)).collect();
        Ok(SeriesList {
            shapes: shapes.into_iter().collect(),
            series: matched.len(),
        })
    }
}

impl MetricsBackend for MemoryBackend {
    fn query<'a>(&'a self, promql: &'a str, _time: SystemTime) -> BoxFuture<'a, Result<Vec<Sample>>> {
        let behaviour = self.begin(|state| state.queries.push(promql.to_owned()));
        Box::pin(async move {
            match behaviour {
                None => std::future::pending().await,
                Some(Behaviour::Fail(kind)) => Err(failure(kind)),
                Some(_) => self.answer_query(promql),
            }
        })
    }

    fn series<'a>(
        &'a self,
        selector: &'a str,
        start: SystemTime,
        end: SystemTime,
    ) -> BoxFuture<'a, Result<SeriesList>> {
        let behaviour = self.begin(|state| state.selectors.push(selector.to_owned()));
        Box::pin(async move {
            match behaviour {
                None => std::future::pending().await,
                Some(Behaviour::Fail(kind)) => Err(failure(kind)),
                Some(_) => self.list_series(selector, start, end),
            }
        })
    }

    fn describe(&self) -> &str {
        "memory"
    }
}

/// The error a failing backend of `kind` returns; its detail says it was asked for.
fn failure(kind: ErrorKind) -> Error {
    let summary = match kind {
        ErrorKind::Timeout => "the backend did not answer in time",
        ErrorKind::Unreachable => "the backend is unreachable",
        ErrorKind::Unavailable { .. } => "the backend is unavailable",
        ErrorKind::Failed => "the backend failed the query",
    };
    Error::new(
        kind,
        summary,
        format!("the in-memory backend fails with {kind:?}, as the test asked"),
    )
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A series' name and sorted label names, as the Prometheus backend reports a listing.
fn shape(labels: &Labels) -> SeriesShape {
    SeriesShape {
        name: labels.get("__name__").unwrap_or_default().to_owned(),
        labels: labels
            .iter()
            .filter(|(name, _)| *name != "__name__")
            .map(|(name, _)| name.to_owned())
            .collect(),
    }
}

/// One label matcher of a series selector.
#[derive(Debug)]
struct Matcher {
    label: String,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Equal(String),
    NotEqual(String),
    /// Fully anchored, as PromQL anchors its regexes.
    Matches(Regex),
    NotMatches(Regex),
}

impl Matcher {
    /// A missing label matches as the empty string, as in PromQL.
    fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.label).unwrap_or_default())
    }

    fn matches_value(&self, value: &str) -> bool {
        match &self.op {
            Op::Equal(v) => value == v,
            Op::NotEqual(v) => value != v,
            Op::Matches(re) => re.is_match(value),
            Op::NotMatches(re) => !re.is_match(value),
        }
    }
}

/// Parses a series selector: `name`, `name{l="v", ...}` or `{l=~"re", ...}` with the operators
/// `=`, `!=`, `=~`, `!~` and PromQL's quoted strings. A hand-written parser because this backend
/// is library code (tests in tests/it use it) and promql-parser is only a dev-dependency; series
/// selectors are all the relist sends, so nothing more of PromQL is needed. Like Prometheus, a
/// selector whose every matcher matches the empty string is refused.
fn parse_selector(text: &str) -> std::result::Result<Vec<Matcher>, String> {
    let mut input = Input { rest: text.trim() };
    let mut matchers = Vec::new();
    let name = input.identifier(true);
    if !name.is_empty() {
        matchers.push(Matcher {
            label: "__name__".into(),
            op: Op::Equal(name.to_owned()),
        });
    }
    if input.eat("{") {
        while !input.eat("}") {
            matchers.push(input.matcher()?);
            if !input.eat(",") && !input.rest.trim_start().starts_with('}') {
                return Err(format!("expected ',' or '}}' at {:?}", input.rest));
            }
        }
    }
    if !input.rest.trim().is_empty() {
        return Err(format!("unexpected {:?}", input.rest));
    }
    if matchers.iter().all(|m| m.matches_value("")) {
        return Err(
            "the selector must contain at least one matcher that does not match the empty string".into(),
        );
    }
    Ok(matchers)
}

struct Input<'a> {
    rest: &'a str,
}

impl<'a> Input<'a> {
    fn eat(&mut self, token: &str) -> bool {
        let trimmed = self.rest.trim_start();
        match trimmed.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A metric name (which may hold `:`) or a label name; empty when there is none.
    fn identifier(&mut self, metric: bool) -> &'a str {
        self.rest = self.rest.trim_start();
        let valid = |(i, c): (usize, char)| {
            c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()) || (metric && c == ':')
        };
        let end = self
            .rest
            .char_indices()
            .find(|&(i, c)| !valid((i, c)))
            .map_or(self.rest.len(), |(i, _)| i);
        let (identifier, rest) = self.rest.split_at(end);
        self.rest = rest;
        identifier
    }

    fn matcher(&mut self) -> std::result::Result<Matcher, String> {
        let label = self.identifier(false);
        if label.is_empty() {
            return Err(format!("expected a label name at {:?}", self.rest));
        }
        // Two-character operators first: `=~` must not read as `=` followed by `~`.
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| self.eat(op))
            .ok_or_else(|| format!("expected a matching operator after {label:?}"))?;
        let value = self.string()?;
        let regex = |re: &str| Regex::new(&format!("^(?:{re})$")).map_err(|err| err.to_string());
        let op = match op {
            "=" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "=~" => Op::Matches(regex(&value)?),
            _ => Op::NotMatches(regex(&value)?),
        };
        Ok(Matcher {
            label: label.to_owned(),
            op,
        })
    }

    /// A PromQL string: double or single quotes with Go's escapes, or backquotes without any.
    fn string(&mut self) -> std::result::Result<String, String> {
        self.rest = self.rest.trim_start();
        let mut chars = self.rest.char_indices();
        let quote = match chars.next() {
            Some((_, q @ ('"' | '\'' | '`'))) => q,
            _ => return Err(format!("expected a quoted string at {:?}", self.rest)),
        };
        let mut value = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.rest = &self.rest[i + c.len_utf8()..];
                    return Ok(value);
                }
                '\\' if quote != '`' => value.push(unescape(&mut chars)?),
                c => value.push(c),
            }
        }
        Err("unterminated string".into())
    }
}

/// One escape sequence after a backslash, as Go's `strconv.Quote` writes them.
fn unescape(chars: &mut std::str::CharIndices<'_>) -> std::result::Result<char, String> {
    let hex = |chars: &mut std::str::CharIndices<'_>, digits: usize| -> std::result::Result<char, String> {
        let text: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
        u32::from_str_radix(&text, 16)
            .ok()
            .and_then(char::from_u32)
            .filter(|_| text.len() == digits)
            .ok_or_else(|| format!("invalid escape digits {text:?}"))
    };
    match chars.next().map(|(_, c)| c) {
        Some('n') => Ok('\n'),
        Some('t') => Ok('\t'),
        Some('r') => Ok('\r'),
        Some('a') => Ok('\u{7}'),
        Some('b') => Ok('\u{8}'),
        Some('f') => Ok('\u{c}'),
        Some('v') => Ok('\u{b}'),
        Some(c @ ('\\' | '"' | '\'')) => Ok(c),
        Some('x') => hex(chars, 2),
        Some('u') => hex(chars, 4),
        Some('U') => hex(chars, 8),
        other => Err(format!("unsupported escape {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn backend_with_series(now: SystemTime) -> MemoryBackend {
        let backend = MemoryBackend::new();
        let old = now - Duration::from_secs(3600);
        backend.add_series(
            "http_requests_total",
            [("namespace", "a"), ("pod", "p1")],
            1.0,
            now,
        );
        backend.add_series(
            "http_requests_total",
            [("pod", "p2"), ("namespace", "b")],
            2.0,
            now,
        );
        backend.add_series("http_requests_total", [("namespace", "c")], 3.0, now);
        backend.add_series("queue_depth", [("namespace", "a"), ("queue", "q")], 4.0, now);
        backend.add_series("stale_total", [("namespace", "a")], 5.0, old);
        backend
    }

    fn names(list: &SeriesList) -> Vec<(&str, Vec<&str>)> {
        list.shapes
            .iter()
            .map(|s| (s.name.as_str(), s.labels.iter().map(String::as_str).collect()))
            .collect()
    }

    #[tokio::test]
    async fn series_selectors_match_like_promql() {
        let now = SystemTime::now();
        let backend = backend_with_series(now);
        let window = now - Duration::from_secs(600);
        let list = |selector: &'static str| {
            let backend = &backend;
            async move { backend.series(selector, window, now).await.unwrap() }
        };
        let all_pods = list(r#"http_requests_total{namespace!="",pod!=""}"#).await;
        assert_eq!(all_pods.series, 2);
        assert_eq!(
            names(&all_pods),
            [("http_requests_total", vec!["namespace", "pod"])]
        );
        let regex = list(r#"{__name__=~"^http_.*|queue_depth", namespace=~"a|c"}"#).await;
        assert_eq!(regex.series, 3);
        assert_eq!(
            names(&regex),
            [
                ("http_requests_total", vec!["namespace"]),
                ("http_requests_total", vec!["namespace", "pod"]),
                ("queue_depth", vec!["namespace", "queue"]),
            ]
        );
        // Anchored: `p` alone matches no pod; `!~` keeps the rest; a missing label is "".
        assert_eq!(
            list(r#"{__name__="http_requests_total",pod=~"p"}"#).await.series,
            0
        );
        assert_eq!(list(r#"http_requests_total{pod!~"p1",}"#).await.series, 2);
        assert_eq!(list(r#"http_requests_total{pod=""}"#).await.series, 1);
        // Quotes and escapes as rules render them.
        assert_eq!(list(r#"queue_depth{queue='q',namespace=`a`}"#).await.series, 1);
        assert_eq!(list(r#"queue_depth{queue="\x71"}"#).await.series, 1);
        // Series without samples in the window are not listed.
        assert_eq!(list("stale_total").await.series, 0);
        let all_time = backend.series("stale_total", UNIX_EPOCH, now).await.unwrap();
        assert_eq!(all_time.series, 1);
        assert_eq!(backend.series_selectors().len(), 9);
    }

    #[tokio::test]
    async fn invalid_selectors_fail_as_prometheus_refuses_them() {
        let backend = backend_with_series(SystemTime::now());
        for selector in [
            "",
            r#"{pod=~".*"}"#,
            r#"x{pod="a""#,
            r#"x{pod~"a"}"#,
            r#"x{pod="a"} y"#,
            r#"x{pod=~"("}"#,
            "sum(x)",
        ] {
            let err = backend
                .series(selector, UNIX_EPOCH, SystemTime::now())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Failed, "{selector:?}");
        }
    }

    #[tokio::test]
    async fn queries_are_answered_from_the_map_and_recorded() {
        let backend = MemoryBackend::new();
        let promql = r#"sum(rate(http_requests_total{namespace="a"}[2m])) by (pod)"#;
        let sample = Sample {
            labels: [("pod", "p1")].into_iter().collect(),
            timestamp: 1_700_000_000.0,
            value: 0.5,
        };
        backend.answer(promql, vec![sample.clone()]);
        assert_eq!(backend.query(promql, SystemTime::now()).await.unwrap(), [sample]);
        let err = backend.query("sum(other)", SystemTime::now()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(err.to_string().contains("sum(other)"));
        assert!(!err.summary().contains("sum(other)"));
        assert_eq!(backend.queries(), [promql, "sum(other)"]);
    }

    #[tokio::test]
    async fn failures_of_each_kind_and_recovery() {
        let backend = MemoryBackend::new();
        backend.answer("up", Vec::new());
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Unreachable,
            ErrorKind::Unavailable {
                retry_after: Duration::from_secs(7),
            },
            ErrorKind::Failed,
        ] {
            backend.set_behaviour(Behaviour::Fail(kind));
            let err = backend.query("up", SystemTime::now()).await.unwrap_err();
            assert_eq!(err.kind(), kind);
            let err = backend
                .series("up", UNIX_EPOCH, SystemTime::now())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), kind);
        }
        backend.set_behaviour(Behaviour::Answer);
        assert!(backend.query("up", SystemTime::now()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_hanging_backend_records_the_call_and_never_answers() {
        let backend = MemoryBackend::new();
        backend.answer("up", Vec::new());
        backend.set_behaviour(Behaviour::Hang);
        let call = backend.query("up", SystemTime::now());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .is_err()
        );
        assert_eq!(backend.queries(), ["up"]);
        backend.set_behaviour(Behaviour::Answer);
        assert!(backend.query("up", SystemTime::now()).await.is_ok());
    }
}
