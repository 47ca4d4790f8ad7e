//! prometheus-adapter's configuration file (`--config`): `rules`, `externalRules` and `resourceRules`,
//! with its field names and defaults, read strictly.
//!
//! prometheus-adapter reads the file with `yaml.UnmarshalStrict`, so an unknown or repeated key is a
//! start-up error; so it is here, and every error names the file, the line (and column when the YAML
//! parser knows it) and the key. On top of what prometheus-adapter checks when it starts (regexes,
//! `is`/`isNot`, `as` defaults, template syntax, `.Resource` in resource templates), this module
//! renders every query template for a sample request, so that a typo such as `<<.Seires>>` or an
//! empty query fails at start-up instead of on every request, and it checks that `seriesQuery` is set,
//! that override labels are Prometheus label names and that `window` is a Prometheus duration.
//!
//! A YAML null (`rules:` with nothing after it, as Helm charts render an empty list) reads as the
//! empty value, as Go's YAML decoder does.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use regex::Regex;
use serde_saphyr::Spanned;

pub use super::naming::GroupResource;
pub use super::resource::{ResourceRule, ResourceRules};
use super::{
    CompiledRule, ResourceMapping, RuleParams, RuleSet, SeriesFilter,
    naming::LabelMapping,
    template::{self, Template, Value},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the metrics discovery config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}{}: {message}", position(*.line, *.column))]
    Yaml {
        origin: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{origin}:{line}: {field}: {message}")]
    Invalid {
        origin: String,
        line: u64,
        /// The key, as a path: `rules[2].name.matches`.
        field: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `:line:column`, `:line` or nothing, as far as the position is known.
fn position(line: u64, column: u64) -> String {
    match (line, column) {
        (0, _) => String::new(),
        (line, 0) => format!(":{line}"),
        (line, column) => format!(":{line}:{column}"),
    }
}

/// The whole file, every rule compiled.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub rules: Vec<Arc<CompiledRule>>,
    pub external_rules: Vec<Arc<CompiledRule>>,
    pub resource_rules: Option<Arc<ResourceRules>>,
    /// Where the configuration came from, for messages.
    pub origin: String,
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and checks configuration text; `origin` names it in messages.
pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let raw: raw::Config = serde_saphyr::from_str(text).map_err(|e| yaml_error(origin, text, &e))?;
    let check = Checker { origin };
    let rules = check.rules("rules", raw.rules, RuleKind::Custom)?;
    let external_rules = check.rules("externalRules", raw.external_rules, RuleKind::External)?;
    let resource_rules = raw
        .resource_rules
        .map(|r| check.resource_rules(r).map(Arc::new))
        .transpose()?;
    Ok(Config {
        rules,
        external_rules,
        resource_rules,
        origin: origin.to_owned(),
    })
}

fn yaml_error(origin: &str, text: &str, e: &serde_saphyr::Error) -> Error {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let plain = e.render_with_options(serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
    });
    // The plain rendering ends with the location, which the message gives in front instead.
    let suffix = format!(" at line {line}, column {column}");
    let message = plain.strip_suffix(&suffix).unwrap_or(&plain);
    // Hints about serde-saphyr's API are for programmers, not for whoever edits the file.
    let message = [", set DuplicateKeyPolicy", "; use from_str_multiple"]
        .iter()
        .find_map(|hint| message.find(hint).map(|i| &message[..i]))
        .unwrap_or(message);
    // Type errors ("expected string scalar") do not say which key; the text does.
    let message = match key_near(text, line, column) {
        Some(key) if !message.contains(&key) && !message.starts_with("multiple YAML documents") => {
            format!("{key}: {message}")
        }
        _ => message.to_owned(),
    };
    Error::Yaml {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// The key whose value holds the position `line`:`column` (1-based, in characters): the last
/// `key:` before the column on that line, or else the key of the enclosing block.
fn key_near(text: &str, line: u64, column: u64) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let current = lines.get(index)?;
    let before: String = current
        .chars()
        .take(usize::try_from(column).ok()?.saturating_sub(1))
        .collect();
    // An error at a key itself ("duplicate mapping key") is about that key.
    let at: String = current.chars().skip(before.chars().count()).collect();
    if let Some(key) = leading_key(&at) {
        return Some(key);
    }
    if let Some(key) = last_key(&before) {
        return Some(key);
    }
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let item = |l: &str| l.trim_start().starts_with('-');
    lines[..index]
        .iter()
        .rev()
        .filter(|l| l.trim_end().ends_with(':'))
        .find(|l| indent(l) < indent(current) || (item(current) && !item(l) && indent(l) == indent(current)))
        .and_then(|l| last_key(l))
}

/// The key that `s` starts with, if `s` starts with `key:` followed by a space or the end.
fn leading_key(s: &str) -> Option<String> {
    let end = s.find(|c: char| !(c.is_alphanumeric() || "_-.\"'".contains(c)))?;
    let after = s[end..].strip_prefix(':')?;
    let key = s[..end].trim_matches(['"', '\'']);
    (after.chars().next().is_none_or(|c| c == ' ') && !key.is_empty()).then(|| key.to_owned())
}

/// The last `key` of `key: ` or a trailing `key:` in a line, without quotes or flow punctuation.
fn last_key(line: &str) -> Option<String> {
    let (colon, _) = line
        .char_indices()
        .rev()
        .find(|&(i, c)| c == ':' && line[i + 1..].chars().next().is_none_or(|n| n == ' '))?;
    let head = line[..colon].trim_end();
    let start = head.rfind([' ', '{', ',', '[']).map_or(0, |i| i + 1);
    let key = head[start..].trim_matches(['"', '\'']);
    (!key.is_empty()).then(|| key.to_owned())
}

impl Config {
    /// The rules, as the discovery loop and the request handlers take them.
    pub fn rule_set(&self) -> RuleSet {
        RuleSet {
            custom: self.rules.clone(),
            external: self.external_rules.clone(),
            resource: self.resource_rules.clone(),
        }
    }
}

/// A rule's `resources` section: the label mapping, and for external rules `namespaced`.
struct ResourcesSection {
    mapping: ResourceMapping,
    /// Whether external queries get the namespace matcher from the request path (default true).
    namespaced: bool,
}

impl Default for ResourcesSection {
    fn default() -> Self {
        Self {
            mapping: ResourceMapping::default(),
            namespaced: true,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Custom,
    External,
}

/// Turns the raw YAML into checked values, with the file and line in every error.
struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, line: u64, field: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            origin: self.origin.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn rules(
        &self,
        list: &str,
        raw: Option<Vec<Spanned<raw::Rule>>>,
        kind: RuleKind,
    ) -> Result<Vec<Arc<CompiledRule>>> {
        raw.unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, rule)| self.rule(&format!("{list}[{i}]"), i, rule, kind).map(Arc::new))
            .collect()
    }

    /// Checks one rule and compiles it; every regex and the template are compiled here, once.
    fn rule(
        &self,
        path: &str,
        position: usize,
        spanned: Spanned<raw::Rule>,
        kind: RuleKind,
    ) -> Result<CompiledRule> {
        let line = spanned.referenced.line();
        let raw = spanned.value;
        let series_query = match raw.series_query {
            Some(q) if !q.value.trim().is_empty() => q.value,
            q => {
                let line = q.map_or(line, |q| q.referenced.line());
                return Err(self.invalid(
                    line,
                    &format!("{path}.seriesQuery"),
                    "must be set to a series selector",
                ));
            }
        };
        let filters = self.series_filters(path, raw.series_filters.unwrap_or_default())?;
        let name_line = raw.name.as_ref().map_or(line, |n| n.referenced.line());
        let (name_matches, name_as) = match raw.name {
            Some(name) => {
                let matches = match name.value.matches.filter(|m| !m.value.is_empty()) {
                    Some(m) => {
                        Some(self.regex(m.referenced.line(), &format!("{path}.name.matches"), &m.value)?)
                    }
                    None => None,
                };
                (matches, name.value.as_)
            }
            None => (None, None),
        };
        let resources = self.resources(&format!("{path}.resources"), raw.resources)?;
        let sample = sample_request(kind, resources.namespaced);
        let metrics_query = self.query(line, &format!("{path}.metricsQuery"), raw.metrics_query, &sample)?;
        let params = RuleParams {
            position,
            line,
            series_query,
            filters,
            name_matches,
            name_as,
            resources: resources.mapping,
            namespaced: resources.namespaced,
            metrics_query,
        };
        // The regexes are compiled above, so what the rule engine can still reject is an `as` that
        // cannot default, or a label template whose regex does not compile.
        CompiledRule::new(params).map_err(|e| match e {
            super::Error::AmbiguousAs { .. } => {
                self.invalid(name_line, &format!("{path}.name.as"), e.to_string())
            }
            e => self.invalid(line, &format!("{path}.resources.template"), e.to_string()),
        })
    }

    /// `seriesFilters`: each exactly one of `is` and `isNot`, compiled.
    fn series_filters(&self, path: &str, raw: Vec<Spanned<raw::Filter>>) -> Result<Vec<SeriesFilter>> {
        let mut filters = Vec::new();
        for (i, filter) in raw.into_iter().enumerate() {
            let field = format!("{path}.seriesFilters[{i}]");
            let line = filter.referenced.line();
            let filter = match (nonempty(filter.value.is), nonempty(filter.value.is_not)) {
                (Some(is), None) => SeriesFilter::Is(self.regex(line, &field, &is)?),
                (None, Some(is_not)) => SeriesFilter::IsNot(self.regex(line, &field, &is_not)?),
                (Some(is), Some(is_not)) => {
                    let message = format!(
                        "has both `is` ({is:?}) and `isNot` ({is_not:?}); a filter takes exactly one"
                    );
                    return Err(self.invalid(line, &field, message));
                }
                (None, None) => {
                    return Err(self.invalid(line, &field, "needs an `is` or an `isNot` regular expression"));
                }
            };
            filters.push(filter);
        }
        Ok(filters)
    }

    fn regex(&self, line: u64, field: &str, pattern: &str) -> Result<Regex> {
        Regex::new(pattern).map_err(|e| {
            self.invalid(
                line,
                field,
                format!("invalid regular expression {pattern:?}: {e}"),
            )
        })
    }

    fn resources(&self, path: &str, raw: Option<Spanned<raw::Resources>>) -> Result<ResourcesSection> {
        let Some(raw) = raw else {
            return Ok(ResourcesSection::default());
        };
        let raw = raw.value;
        let mut overrides = BTreeMap::new();
        for (label, gr) in raw.overrides.unwrap_or_default() {
            let field = format!("{path}.overrides.{label}");
            let line = gr.referenced.line();
            if !super::promql::is_label_name(&label) {
                let message =
                    "is not a Prometheus label name (letters, digits and '_', not starting with a digit)";
                return Err(self.invalid(line, &field, message));
            }
            let resource = gr.value.resource.unwrap_or_default();
            if resource.is_empty() {
                return Err(self.invalid(line, &field, "needs a `resource`"));
            }
            let group = gr.value.group.unwrap_or_default();
            overrides.insert(label, GroupResource { group, resource });
        }
        let template = match raw.template {
            Some(t) if !t.value.is_empty() => {
                Some(self.resource_template(t.referenced.line(), path, &t.value)?)
            }
            _ => None,
        };
        Ok(ResourcesSection {
            mapping: ResourceMapping {
                overrides,
                template,
                template_ignores: Vec::new(),
            },
            namespaced: raw.namespaced.unwrap_or(true),
        })
    }

    /// Checks a label template and normalizes it by executing it with the placeholders themselves,
    /// which is also how prometheus-adapter turns it into a regex.
    fn resource_template(&self, line: u64, path: &str, text: &str) -> Result<String> {
        let field = format!("{path}.template");
        let parsed = Template::parse(text).map_err(|e| self.invalid(line, &field, e.to_string()))?;
        let placeholders = Value::Struct(vec![
            ("Group".into(), "<<.Group>>".into()),
            ("Resource".into(), "<<.Resource>>".into()),
        ]);
        let normalized = parsed
            .render(&placeholders)
            .map_err(|e| self.invalid(line, &field, e.to_string()))?;
        if !normalized.contains("<<.Resource>>") {
            return Err(self.invalid(line, &field, format!("{text:?} must contain <<.Resource>>")));
        }
        Ok(normalized)
    }

    /// Parses a query template and renders it for a sample request.
    fn query(
        &self,
        line: u64,
        field: &str,
        raw: Option<Spanned<String>>,
        sample: &Sample,
    ) -> Result<Template> {
        let (line, text) = raw.map_or((line, String::new()), |q| (q.referenced.line(), q.value));
        if text.trim().is_empty() {
            return Err(self.invalid(line, field, "must be set to a query template"));
        }
        let parsed = Template::parse(&text).map_err(|e| self.invalid(line, field, e.to_string()))?;
        template::render_metrics_query(
            &parsed,
            "sample_metric",
            &sample.matchers,
            &sample.group_by,
            &sample.values,
        )
        .map_err(|e| self.invalid(line, field, format!("{e} (for a sample request)")))?;
        Ok(parsed)
    }

    fn resource_rules(&self, spanned: Spanned<raw::ResourceRules>) -> Result<ResourceRules> {
        let line = spanned.referenced.line();
        let raw = spanned.value;
        let window = match raw.window {
            Some(w) => crate::duration::parse_prometheus(&w.value)
                .map_err(|e| self.invalid(w.referenced.line(), "resourceRules.window", e.to_string()))?,
            None => Duration::ZERO,
        };
        Ok(ResourceRules {
            cpu: self.resource_rule("cpu", line, raw.cpu)?,
            memory: self.resource_rule("memory", line, raw.memory)?,
            window,
            line,
        })
    }

    /// `resourceRules.cpu` or `resourceRules.memory`, compiled.
    fn resource_rule(
        &self,
        name: &'static str,
        parent_line: u64,
        raw: Option<Spanned<raw::ResourceRule>>,
    ) -> Result<ResourceRule> {
        let path = format!("resourceRules.{name}");
        let raw = raw.ok_or_else(|| {
            self.invalid(
                parent_line,
                &path,
                "is missing; resource metrics need both cpu and memory",
            )
        })?;
        let line = raw.referenced.line();
        let raw = raw.value;
        let resources_path = format!("{path}.resources");
        let resources = self.resources(&resources_path, raw.resources)?;
        let resources = LabelMapping::new(resources.mapping)
            .map_err(|e| self.invalid(line, &format!("{resources_path}.template"), e.to_string()))?;
        let container_label = raw.container_label.unwrap_or_default();
        let container = Sample::container(&container_label);
        let container_query = self.query(
            line,
            &format!("{path}.containerQuery"),
            raw.container_query,
            &container,
        )?;
        let node_query = self.query(
            line,
            &format!("{path}.nodeQuery"),
            raw.node_query,
            &Sample::node(),
        )?;
        Ok(ResourceRule {
            name,
            container_query,
            node_query,
            resources,
            container_label,
        })
    }
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Template data for a made-up request, to find templates that fail or render nothing.
struct Sample {
    matchers: Vec<String>,
    group_by: Vec<String>,
    values: BTreeMap<String, Vec<String>>,
}

impl Sample {
    fn new(pairs: &[(&str, &str)], group_by: &[&str]) -> Self {
        Self {
            matchers: pairs.iter().map(|(l, v)| format!("{l}=\"{v}\"")).collect(),
            group_by: group_by.iter().map(|s| (*s).to_owned()).collect(),
            values: pairs
                .iter()
                .map(|(l, v)| ((*l).to_owned(), vec![(*v).to_owned()]))
                .collect(),
        }
    }

    fn container(container_label: &str) -> Self {
        Self::new(
            &[("namespace", "default"), ("pod", "sample")],
            &["pod", container_label],
        )
    }

    fn node() -> Self {
        Self::new(&[("node", "sample")], &["node"])
    }
}

/// A custom request names objects and groups by their label; an external one has no group-by and
/// carries the namespace only when the rule is namespaced.
fn sample_request(kind: RuleKind, namespaced: bool) -> Sample {
    match (kind, namespaced) {
        (RuleKind::Custom, _) => Sample::new(&[("namespace", "default"), ("pod", "sample")], &["pod"]),
        (RuleKind::External, true) => Sample::new(&[("namespace", "default")], &[]),
        (RuleKind::External, false) => Sample::new(&[], &[]),
    }
}

/// The file as YAML, with prometheus-adapter's keys. Optional everywhere so that a YAML null reads
/// as the empty value; `Spanned` where a later check needs the line.
mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_saphyr::Spanned;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Config {
        pub rules: Option<Vec<Spanned<Rule>>>,
        pub external_rules: Option<Vec<Spanned<Rule>>>,
        pub resource_rules: Option<Spanned<ResourceRules>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Rule {
        pub series_query: Option<Spanned<String>>,
        pub series_filters: Option<Vec<Spanned<Filter>>>,
        pub resources: Option<Spanned<Resources>>,
        pub name: Option<Spanned<Name>>,
        pub metrics_query: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Filter {
        pub is: Option<String>,
        pub is_not: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Resources {
        pub overrides: Option<BTreeMap<String, Spanned<GroupResource>>>,
        pub template: Option<Spanned<String>>,
        pub namespaced: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct GroupResource {
        pub group: Option<String>,
        pub resource: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct Name {
        pub matches: Option<Spanned<String>>,
        #[serde(rename = "as")]
        pub as_: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct ResourceRules {
        pub cpu: Option<Spanned<ResourceRule>>,
        pub memory: Option<Spanned<ResourceRule>>,
        pub window: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(super) struct ResourceRule {
        pub container_query: Option<Spanned<String>>,
        pub node_query: Option<Spanned<String>>,
        pub resources: Option<Spanned<Resources>>,
        pub container_label: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::default_rules;

    fn err(text: &str) -> String {
        parse(text, "adapter.yaml").unwrap_err().to_string()
    }

    /// docs/config-walkthrough.md, final form.
    const WALKTHROUGH: &str = r#"rules:
- seriesQuery: 'http_requests_total{kubernetes_namespace!="",kubernetes_pod_name!=""}'
  resources:
    overrides:
      kubernetes_namespace: {resource: "namespace"}
      kubernetes_pod_name: {resource: "pod"}
  name:
    matches: "^(.*)_total"
    as: "${1}_per_second"
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
"#;

    #[test]
    fn config_walkthrough() {
        let config = parse(WALKTHROUGH, "adapter.yaml").unwrap();
        assert_eq!(config.rules.len(), 1);
        assert!(config.external_rules.is_empty() && config.resource_rules.is_none());
        let rule = &config.rules[0];
        assert_eq!(rule.line, 2);
        assert_eq!(
            rule.series_query,
            r#"http_requests_total{kubernetes_namespace!="",kubernetes_pod_name!=""}"#
        );
        assert_eq!(
            rule.resources.overrides["kubernetes_pod_name"],
            GroupResource {
                group: String::new(),
                resource: "pod".into()
            }
        );
        let rules = &config.rules;
        assert_eq!(
            rules[0].metric_name("http_requests_total").as_deref(),
            Some("http_requests_per_second")
        );
        assert_eq!(rules[0].metric_name("http_requests"), None);
        assert_eq!(
            rules[0].resources.overrides["kubernetes_namespace"],
            GroupResource::core("namespace")
        );
        let query = template::render_metrics_query(
            &rule.metrics_query,
            "http_requests_total",
            &[
                r#"kubernetes_namespace="somens""#.to_owned(),
                r#"kubernetes_pod_name=~"pod1|pod2""#.to_owned(),
            ],
            &["kubernetes_pod_name".to_owned()],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            query,
            r#"sum(rate(http_requests_total{kubernetes_namespace="somens",kubernetes_pod_name=~"pod1|pod2"}[2m])) by (kubernetes_pod_name)"#
        );
    }

    /// The prometheus-community Helm chart's rendering of `rules.default: true` (config-gen's six
    /// rules with a 5m window); toYaml folded two long `metricsQuery` lines into multi-line plain
    /// scalars.
    const DEFAULTS: &str = include_str!("../../tests/it/testdata/helm-default-rules.yaml");

    #[test]
    fn the_six_default_rules_match_the_built_in_ones() {
        let config = parse(DEFAULTS, "defaults.yaml").unwrap();
        let ours = &config.rules;
        let builtin = default_rules("5m").unwrap();
        assert_eq!(ours.len(), builtin.len());
        let series = [
            "http_requests_total",
            "process_cpu_seconds_total",
            "queue_depth",
            "container_cpu_usage_seconds_total",
            "container_network_receive_bytes_total",
            "container_memory_usage_bytes",
        ];
        for (i, (a, b)) in ours.iter().zip(&builtin).enumerate() {
            assert_eq!(a.series_query, b.series_query, "rule {i}");
            assert_eq!(a.metrics_query.source(), b.metrics_query.source(), "rule {i}");
            assert_eq!(a.name_as, b.name_as, "rule {i}");
            assert_eq!(a.resources.overrides, b.resources.overrides, "rule {i}");
            assert_eq!(a.resources.template(), b.resources.template(), "rule {i}");
            for s in series {
                assert_eq!(a.metric_name(s), b.metric_name(s), "rule {i}, series {s}");
            }
        }
    }

    #[test]
    fn external_rule_not_namespaced() {
        let text = r#"
externalRules:
- seriesQuery: '{__name__="queue_consumer_lag",name!=""}'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (name)
  resources:
    overrides: { namespace: {resource: "namespace"} }
- seriesQuery: '{__name__="queue_depth",name!=""}'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (name)
  resources:
    namespaced: false
"#;
        let config = parse(text, "adapter.yaml").unwrap();
        assert!(config.rules.is_empty());
        let [lag, depth] = &config.external_rules[..] else {
            panic!("two external rules expected");
        };
        assert!(lag.namespaced);
        assert!(!depth.namespaced);
        assert_eq!(depth.line, 7);
        let rules = &config.external_rules;
        assert_eq!(config.rule_set().external.len(), 2);
        assert_eq!(
            rules[1].metric_name("queue_depth").as_deref(),
            Some("queue_depth")
        );
        let query = template::render_metrics_query(
            &depth.metrics_query,
            "queue_depth",
            &[r#"name="my-sample-queue""#.to_owned()],
            &[],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(query, r#"sum(queue_depth{name="my-sample-queue"}) by (name)"#);
    }

    /// deploy/manifests/config-map.yaml, quoted keys and block scalars included.
    const RESOURCE_RULES: &str = r#""resourceRules":
  "cpu":
    "containerLabel": "container"
    "containerQuery": |
      sum by (<<.GroupBy>>) (
        irate (
            container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!="",pod!=""}[4m]
        )
      )
    "nodeQuery": |
      sum by (<<.GroupBy>>) (
        irate(
            node_cpu_usage_seconds_total{<<.LabelMatchers>>}[4m]
        )
      )
    "resources":
      "overrides":
        "namespace":
          "resource": "namespace"
        "node":
          "resource": "node"
        "pod":
          "resource": "pod"
  "memory":
    "containerLabel": "container"
    "containerQuery": |
      sum by (<<.GroupBy>>) (
        container_memory_working_set_bytes{<<.LabelMatchers>>,container!="",pod!=""}
      )
    "nodeQuery": |
      sum by (<<.GroupBy>>) (
        node_memory_working_set_bytes{<<.LabelMatchers>>}
      )
    "resources":
      "overrides":
        "node":
          "resource": "node"
        "namespace":
          "resource": "namespace"
        "pod":
          "resource": "pod"
  "window": "5m"
"#;

    #[test]
    fn resource_rules_from_the_shipped_manifest() {
        let config = parse(RESOURCE_RULES, "config.yaml").unwrap();
        let rr = config.resource_rules.unwrap();
        assert_eq!(rr.window, Duration::from_secs(300));
        assert_eq!(rr.cpu.container_label, "container");
        assert_eq!(rr.memory.resources.overrides["node"], GroupResource::core("node"));
        let query = template::render_metrics_query(
            &rr.memory.container_query,
            "",
            &[r#"namespace="ns""#.to_owned(), r#"pod=~"a|b""#.to_owned()],
            &["pod".to_owned(), "container".to_owned()],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            query,
            "sum by (pod,container) (\n  container_memory_working_set_bytes{namespace=\"ns\",pod=~\"a|b\",container!=\"\",pod!=\"\"}\n)\n"
        );
        let without_memory = RESOURCE_RULES.split("  \"memory\":").next().unwrap();
        let e = err(without_memory);
        assert!(
            e.contains("adapter.yaml:2: resourceRules.memory: is missing"),
            "{e}"
        );
    }

    #[test]
    fn nulls_empty_files_and_groups() {
        let config = parse("rules:\nexternalRules: ~\n", "adapter.yaml").unwrap();
        assert!(config.rules.is_empty() && config.external_rules.is_empty());
        assert!(parse("", "adapter.yaml").unwrap().rules.is_empty());
        let text = r#"rules:
- seriesQuery: 'kube_deployment_status_replicas'
  resources:
    template: "kube_<< .Group >>_<<- .Resource >>"
    overrides:
      exported_namespace: {resource: namespaces}
      deployment: {group: apps, resource: deployments}
  name: {as: "replicas"}
  metricsQuery: 'max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
"#;
        let config = parse(text, "adapter.yaml").unwrap();
        let rule = &config.rules[0];
        assert_eq!(rule.resources.template(), Some("kube_<<.Group>>_<<.Resource>>"));
        assert_eq!(
            rule.resources.overrides["deployment"].to_string(),
            "deployments.apps"
        );
        assert_eq!(
            rule.metric_name("kube_deployment_status_replicas").as_deref(),
            Some("replicas")
        );
    }

    #[test]
    fn yaml_errors_name_file_line_and_key() {
        let e = err("rulez: []\n");
        assert!(e.starts_with("adapter.yaml:1:1: unknown field `rulez`"), "{e}");
        let e = err(&WALKTHROUGH.replace("  metricsQuery:", "  seriesQeury: x\n  metricsQuery:"));
        assert!(
            e.starts_with("adapter.yaml:10:3: unknown field `seriesQeury`"),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("{resource: \"pod\"}", "{resource: \"pod\", grup: apps}"));
        assert!(e.starts_with("adapter.yaml:6:46: unknown field `grup`"), "{e}");
        let e = err(&WALKTHROUGH.replace("  name:", "  resources: {}\n  name:"));
        assert_eq!(e, "adapter.yaml:7:3: duplicate mapping key: resources");
        let e = err("rules:\n- seriesQuery: x\n  resources: {namespaced: 3}\n");
        assert_eq!(e, "adapter.yaml:3:27: namespaced: invalid boolean");
        let e = err("rules: {}\n");
        assert!(e.starts_with("adapter.yaml:1:8: rules: expected sequence"), "{e}");
        let e = err("rules:\n- seriesQuery: x\n  name: {matches: [a]}\n");
        assert_eq!(e, "adapter.yaml:3:19: matches: expected string scalar");
        let e = err("rules:\n- x\n");
        assert_eq!(e, "adapter.yaml:2:3: rules: expected mapping start");
        let e = err("rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      pod: pod\n");
        assert_eq!(e, "adapter.yaml:5:12: pod: expected mapping start");
        let e = err("---\nrules: []\n---\nrules: []\n");
        assert_eq!(e, "adapter.yaml:4:1: multiple YAML documents detected");
    }

    #[test]
    fn rule_errors_name_file_line_and_key() {
        let both = WALKTHROUGH.replace(
            "  name:",
            "  seriesFilters:\n  - is: a\n  - {is: a, isNot: b}\n  name:",
        );
        let e = err(&both);
        assert!(
            e.starts_with(
                "adapter.yaml:9: rules[0].seriesFilters[1]: has both `is` (\"a\") and `isNot` (\"b\")"
            ),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("  name:", "  seriesFilters: [{}]\n  name:"));
        assert!(
            e.starts_with("adapter.yaml:7: rules[0].seriesFilters[0]: needs an `is` or an `isNot`"),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("^(.*)_total", "^(.*_total"));
        assert!(
            e.starts_with("adapter.yaml:8: rules[0].name.matches: invalid regular expression"),
            "{e}"
        );
        let e = err(&WALKTHROUGH
            .replace("    as: \"${1}_per_second\"\n", "")
            .replace("^(.*)_total", "^(.*)_(total)"));
        assert!(e.starts_with("adapter.yaml:8: rules[0].name.as: "), "{e}");
        assert!(e.contains("capture groups"), "{e}");
        let e = err(&WALKTHROUGH.replace("<<.LabelMatchers>>}", "<<.LabelMatchers}"));
        assert!(
            e.starts_with("adapter.yaml:10: rules[0].metricsQuery: template line 1, column 38: unexpected"),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("<<.GroupBy>>", "<<join .GroupBySlice \",\">>"));
        assert!(
            e.contains("rules[0].metricsQuery") && e.contains(r#"function "join" not defined"#),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("<<.Series>>", "<<.Seires>>"));
        assert!(
            e.starts_with("adapter.yaml:10: rules[0].metricsQuery: executing template"),
            "{e}"
        );
        assert!(
            e.contains("can't evaluate field Seires") && e.contains("sample request"),
            "{e}"
        );
        let e = err(&WALKTHROUGH
            .replace("  metricsQuery: 'sum", "  metricsQuery: '<<if false>>sum")
            .replace("'\n", "<<end>>'\n"));
        assert!(
            e.contains("rules[0].metricsQuery: the template produced an empty query"),
            "{e}"
        );
        let e = err(&WALKTHROUGH
            .replace("  metricsQuery:", "  metricsQuery: \"\"\n  x:")
            .replace("  x: ", "#"));
        assert!(
            e.starts_with("adapter.yaml:10: rules[0].metricsQuery: must be set"),
            "{e}"
        );
        let e = err("rules:\n- metricsQuery: x\n");
        assert!(
            e.starts_with("adapter.yaml:2: rules[0].seriesQuery: must be set"),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("    overrides:", "    template: kube_<<.Group>>\n    overrides:"));
        assert!(
            e.starts_with("adapter.yaml:4: rules[0].resources.template: \"kube_<<.Group>>\" must contain"),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("kubernetes_pod_name: {", "kubernetes-pod: {"));
        assert!(
            e.starts_with("adapter.yaml:6: rules[0].resources.overrides.kubernetes-pod: is not a Prometheus"),
            "{e}"
        );
        let e = err(&WALKTHROUGH.replace("{resource: \"pod\"}", "{group: apps}"));
        assert!(
            e.contains("overrides.kubernetes_pod_name: needs a `resource`"),
            "{e}"
        );
        let e = err(&RESOURCE_RULES.replace("\"5m\"", "five"));
        assert!(
            e.starts_with("adapter.yaml:42: resourceRules.window: \"five\" is not a Prometheus duration"),
            "{e}"
        );
        let e = err(&format!(
            "{WALKTHROUGH}externalRules:\n- seriesQuery: x\n  metricsQuery: <<index .GroupBySlice 0>>\n"
        ));
        assert!(
            e.starts_with("adapter.yaml:13: externalRules[0].metricsQuery: executing"),
            "{e}"
        );
    }

    #[test]
    fn load_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, WALKTHROUGH).unwrap();
        assert_eq!(load(&path).unwrap().rules.len(), 1);
        std::fs::write(&path, "rulez: []\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:1:1: unknown field `rulez`", path.display())),
            "{e}"
        );
        let e = load(&dir.path().join("missing.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read the metrics discovery config"), "{e}");
    }
}
