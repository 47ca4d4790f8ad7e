//! One discovery rule (`rules` or `externalRules` entry), compiled once at load: its regexes, its
//! parsed `metricsQuery` and its label mapping. prometheus-adapter's `metricNamer` is the model.

use std::collections::BTreeMap;

use regex::Regex;

use super::{
    Error, Result,
    naming::{LabelMapping, ResourceMapping},
    promql, template,
};
use crate::{
    objects::{ResourceInfo, Resources},
    selector::Selector,
};

/// A filter on the series name (`seriesFilters`): every filter of a rule must pass.
#[derive(Debug, Clone)]
pub enum SeriesFilter {
    Is(Regex),
    IsNot(Regex),
}

impl SeriesFilter {
    fn passes(&self, name: &str) -> bool {
        match self {
            Self::Is(re) => re.is_match(name),
            Self::IsNot(re) => !re.is_match(name),
        }
    }
}

/// What a rule is made of, with regexes and the query template already compiled.
#[derive(Debug, Clone)]
pub struct RuleParams {
    /// The rule's index in its list, for messages (`rules[3]`).
    pub position: usize,
    /// The config line the rule starts on; 0 for built-in rules.
    pub line: u64,
    pub series_query: String,
    pub filters: Vec<SeriesFilter>,
    /// `name.matches`; None means `.*`.
    pub name_matches: Option<Regex>,
    /// `name.as`; None or empty means `$0` without capture groups, `$1` with exactly one.
    pub name_as: Option<String>,
    pub resources: ResourceMapping,
    /// External rules only: whether the request's namespace becomes a matcher.
    pub namespaced: bool,
    pub metrics_query: template::Template,
}

/// One discovery rule, ready to name series and render queries.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule's index in its list, for logs and messages (`rules[3]`).
    pub position: usize,
    /// The config line the rule starts on; 0 for built-in rules.
    pub line: u64,
    pub series_query: String,
    pub filters: Vec<SeriesFilter>,
    pub name_matches: Regex,
    pub name_as: String,
    pub resources: LabelMapping,
    /// External rules only: whether the request's namespace becomes a matcher.
    pub namespaced: bool,
    pub metrics_query: template::Template,
    /// How single-value `in` requirements of a metric selector become PromQL.
    pub in_regex: promql::InRegex,
}

/// What a request asks of one metric.
#[derive(Debug, Clone, Copy)]
pub struct QueryRequest<'a> {
    pub resource: &'a ResourceInfo,
    /// The namespace from the path; None for root-scoped requests.
    pub namespace: Option<&'a str>,
    /// The objects to select; None selects every object that has a series.
    pub names: Option<&'a [String]>,
    pub metric_selector: &'a Selector,
}

/// A rendered query and the labels that map its samples back to objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub promql: String,
    pub resource_label: String,
    /// Set when samples carry the object's namespace (namespaced resources).
    pub namespace_label: Option<String>,
}

impl CompiledRule {
    /// Compiles a rule, applying prometheus-adapter's defaults: `matches` defaults to `.*`, and an
    /// empty `as` means `$0` without capture groups, `$1` with exactly one.
    pub fn new(params: RuleParams) -> Result<Self> {
        let position = params.position;
        let name_matches = match params.name_matches {
            Some(re) => re,
            None => compile(position, ".*")?,
        };
        let name_as = match params.name_as.filter(|a| !a.is_empty()) {
            Some(name_as) => name_as,
            None => default_as(position, &name_matches)?,
        };
        let template = params.resources.template.clone().unwrap_or_default();
        let resources = LabelMapping::new(params.resources).map_err(|source| Error::Regex {
            rule: position,
            pattern: template,
            source: Box::new(source),
        })?;
        Ok(Self {
            position,
            line: params.line,
            series_query: params.series_query,
            filters: params.filters,
            name_matches,
            name_as,
            resources,
            namespaced: params.namespaced,
            metrics_query: params.metrics_query,
            in_regex: promql::InRegex::Escaped,
        })
    }

    /// The API metric name for a series name, or None when the rule does not take the series.
    pub fn metric_name(&self, series: &str) -> Option<String> {
        if !self.name_matches.is_match(series) || !self.filters.iter().all(|f| f.passes(series)) {
            return None;
        }
        let name = self
            .name_matches
            .replace_all(series, self.name_as.as_str())
            .into_owned();
        (!name.is_empty()).then_some(name)
    }

    /// The series label holding `resource`'s object names, or the error naming this rule.
    fn label_for(&self, resource: &ResourceInfo, resources: &Resources) -> Result<String> {
        self.resources
            .label_for_resource(resource, resources)
            .ok_or_else(|| Error::NoLabelForResource {
                rule: self.position,
                resource: resource.group_resource(),
            })
    }

    /// Renders the `metricsQuery` of a custom rule for a request on `series`.
    pub fn query(&self, series: &str, req: QueryRequest<'_>, resources: &Resources) -> Result<Query> {
        let resource_label = self.label_for(req.resource, resources)?;
        let namespace_label = match (req.resource.namespaced, resources.namespaces()) {
            (true, Some(namespaces)) => Some(self.label_for(namespaces, resources)?),
            _ => None,
        };

        let mut matchers = promql::selector_matchers(req.metric_selector, self.in_regex)?;
        let mut group_by = vec![resource_label.clone()];
        if let Some(namespace_label) = &namespace_label {
            match req.namespace {
                Some(namespace) => {
                    matchers.push(promql::matcher(namespace_label, promql::MatchOp::Eq, namespace))
                }
                // A cluster-wide request for a namespaced resource keeps objects of different namespaces apart.
                None => group_by.push(namespace_label.clone()),
            }
        }
        matchers.push(match req.names {
            Some(names) => promql::names_matcher(&resource_label, names),
            None => promql::matcher(&resource_label, promql::MatchOp::Ne, ""),
        });

        let mut values_by_label = BTreeMap::new();
        if let (Some(label), Some(namespace)) = (&namespace_label, req.namespace) {
            values_by_label.insert(label.clone(), vec![template_value(namespace)]);
        }
        if let Some(names) = req.names {
            values_by_label.insert(
                resource_label.clone(),
                names.iter().map(|n| template_value(n)).collect(),
            );
        }
        let promql = self.render(series, &matchers, &group_by, &values_by_label)?;
        Ok(Query {
            promql,
            resource_label,
            namespace_label,
        })
    }

    /// Renders the `metricsQuery` of an external rule: the metric selector's matchers, then the
    /// namespace matcher unless the rule says `namespaced: false`. `.GroupBy` is empty and
    /// `.LabelValuesByName` holds each requirement's values `|`-joined, then the namespace, as in
    /// prometheus-adapter's `BuildExternal`.
    pub fn external_query(
        &self,
        series: &str,
        namespace: &str,
        metric_selector: &Selector,
        resources: &Resources,
    ) -> Result<String> {
        let mut matchers = promql::selector_matchers(metric_selector, self.in_regex)?;
        let mut values_by_label: BTreeMap<String, Vec<String>> = metric_selector
            .requirements()
            .iter()
            .map(|r| {
                (
                    r.key.clone(),
                    r.values.iter().map(|v| template_value(v)).collect(),
                )
            })
            .collect();
        if self.namespaced {
            let namespaces = resources.namespaces().ok_or_else(|| Error::NoLabelForResource {
                rule: self.position,
                resource: "namespaces".into(),
            })?;
            let label = self.label_for(namespaces, resources)?;
            matchers.push(promql::matcher(&label, promql::MatchOp::Eq, namespace));
            values_by_label.insert(label, vec![template_value(namespace)]);
        }
        self.render(series, &matchers, &[], &values_by_label)
    }

    /// Renders the `metricsQuery` with prometheus-adapter's data: `.Series`, `.LabelMatchers`,
    /// `.GroupBy`, `.GroupBySlice` and `.LabelValuesByName`.
    fn render(
        &self,
        series: &str,
        matchers: &[String],
        group_by: &[String],
        values_by_label: &BTreeMap<String, Vec<String>>,
    ) -> Result<String> {
        template::render_metrics_query(&self.metrics_query, series, matchers, group_by, values_by_label)
            .map_err(|err| Error::Template {
                rule: self.position,
                message: err.to_string(),
            })
    }
}

/// A request's value as `.LabelValuesByName` carries it: regex-escaped and string-escaped, since
/// templates place it inside `=~"..."` (prometheus-adapter passes values raw, which lets a request
/// widen the query).
pub(super) fn template_value(value: &str) -> String {
    let quoted = promql::go_quote(&promql::regex_escape(value));
    quoted[1..quoted.len() - 1].to_owned()
}

/// `$0` without capture groups, `$1` with exactly one; more need an explicit `as`.
fn default_as(rule: usize, matches: &Regex) -> Result<String> {
    match matches.captures_len() - 1 {
        0 => Ok("$0".to_owned()),
        1 => Ok("$1".to_owned()),
        groups => Err(Error::AmbiguousAs {
            rule,
            pattern: matches.as_str().to_owned(),
            groups,
        }),
    }
}

pub(super) fn compile(rule: usize, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|source| Error::Regex {
        rule,
        pattern: pattern.into(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::GroupResource;

    fn external(namespaced: bool, query: &str) -> CompiledRule {
        CompiledRule::new(RuleParams {
            position: 0,
            line: 0,
            series_query: "{}".into(),
            filters: vec![],
            name_matches: None,
            name_as: None,
            resources: ResourceMapping {
                overrides: BTreeMap::from([("namespace".into(), GroupResource::core("namespace"))]),
                ..ResourceMapping::default()
            },
            namespaced,
            metrics_query: template::Template::parse(query).unwrap(),
        })
        .unwrap()
    }

    /// prometheus-adapter's `BuildExternal`: every requirement's values `|`-joined (none for
    /// `exists`), then the namespace of a namespaced rule.
    #[test]
    fn external_label_values_by_name_come_from_the_selector() {
        let resources = Resources::default();
        let render = |namespaced, selector: &str| {
            external(namespaced, "<<.LabelValuesByName>>")
                .external_query("s", "default", &Selector::parse(selector).unwrap(), &resources)
                .unwrap()
        };
        assert_eq!(render(false, "foo in (bar,baz)"), "map[foo:bar|baz]");
        assert_eq!(
            render(true, "foo in (baz,bar),x!=y,e"),
            "map[e: foo:bar|baz namespace:default x:y]"
        );
        assert_eq!(render(true, "namespace=other"), "map[namespace:default]");
        let query = external(true, "<<.Series>>{<<.LabelMatchers>>}")
            .external_query(
                "s",
                "default",
                &Selector::parse("foo in (bar,baz)").unwrap(),
                &resources,
            )
            .unwrap();
        assert_eq!(query, r#"s{foo=~"bar|baz",namespace="default"}"#);
    }
}
