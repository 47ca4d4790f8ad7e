//! Discovery rules: which Prometheus series become which API metrics, for which resources, and the
//! PromQL a request runs. The rule model is prometheus-adapter's (`seriesQuery`, `seriesFilters`,
//! `resources`, `name`, `metricsQuery`); the built-in rules are its config-gen defaults.

pub mod config;
mod discovery;
pub mod promql;
pub mod template;

use std::collections::BTreeMap;

use regex::Regex;

pub use discovery::{Discovery, ExternalEntry, MetricEntry, RuleSummary};

use crate::{
    objects::{ResourceInfo, Resources},
    selector::Selector,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid regular expression {pattern:?} in rule {rule}: {source}")]
    Regex {
        rule: usize,
        pattern: String,
        source: Box<regex::Error>,
    },
    #[error(
        "rule {rule}: name.matches {pattern:?} has {groups} capture groups, so name.as must say which to use"
    )]
    AmbiguousAs {
        rule: usize,
        pattern: String,
        groups: usize,
    },
    #[error("rule {rule} maps no series label to {resource}, so it cannot select {resource} in PromQL")]
    NoLabelForResource { rule: usize, resource: String },
    #[error(transparent)]
    Selector(#[from] promql::Error),
    #[error("metricsQuery of rule {rule}: {message}")]
    Template { rule: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// How series labels relate to Kubernetes resources (`resources` in a rule).
#[derive(Debug, Clone, Default)]
pub struct ResourceMapping {
    /// Label name → resource as written in the config (`pod` → `pods`).
    pub overrides: BTreeMap<String, String>,
    /// A `<<.Resource>>`/`<<.Group>>` pattern that turns a label name into a resource and back.
    pub template: Option<String>,
    /// External rules only: whether the request's namespace becomes a matcher (None means yes).
    pub namespaced: Option<bool>,
    /// Labels the template does not turn into resources (overrides still map them). Only the
    /// built-in rules set it; prometheus-adapter's file format has no such field.
    pub template_ignores: Vec<String>,
}

/// Labels Prometheus (`job`, `instance`), prometheus-operator (`endpoint`, `container`: the scraped
/// port and container) and its external labels (`prometheus`, `prometheus_replica`) put on every
/// series they scrape. They name scrape targets, not objects, yet `<<.Resource>>` would read `job`
/// as batch Jobs and `prometheus` as prometheus-operator's Prometheus objects: every metric would be
/// advertised for them, and serving one needs a watch RBAC rarely grants.
pub const SCRAPE_LABELS: &[&str] = &[
    "job",
    "instance",
    "endpoint",
    "container",
    "prometheus",
    "prometheus_replica",
];

/// Every rule of a configuration: custom metrics rules and external metrics rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub custom: Vec<Rule>,
    pub external: Vec<Rule>,
    /// `resourceRules`: serve `metrics.k8s.io` from Prometheus when present.
    pub resource: Option<ResourceRuleSet>,
}

/// `resourceRules` with their label mappings prepared once, at load.
#[derive(Debug, Clone)]
pub struct ResourceRuleSet {
    pub config: config::ResourceRules,
    /// Which labels name namespaces, pods and nodes in the cpu and memory queries.
    pub cpu: Rule,
    pub memory: Rule,
}

impl ResourceRuleSet {
    pub fn new(config: config::ResourceRules) -> Result<Self> {
        let mapping = |rule: &config::ResourceRule| {
            Rule::new(
                0,
                "",
                vec![],
                None,
                None,
                rule.resources.mapping(),
                rule.container_query.source(),
            )
        };
        Ok(Self {
            cpu: mapping(&config.cpu)?,
            memory: mapping(&config.memory)?,
            config,
        })
    }
}

impl RuleSet {
    /// Each distinct `seriesQuery` with the custom and external rules that share it, so it is
    /// listed once per relist.
    pub fn series_queries(&self) -> std::collections::BTreeMap<&str, (Vec<usize>, Vec<usize>)> {
        let mut queries: std::collections::BTreeMap<&str, (Vec<usize>, Vec<usize>)> = Default::default();
        for (index, rule) in self.custom.iter().enumerate() {
            queries
                .entry(rule.series_query.as_str())
                .or_default()
                .0
                .push(index);
        }
        for (index, rule) in self.external.iter().enumerate() {
            queries
                .entry(rule.series_query.as_str())
                .or_default()
                .1
                .push(index);
        }
        queries
    }
}

/// Mistakes in a rule set that load but cannot work, as sentences for the log.
pub fn lint(set: &RuleSet) -> Vec<String> {
    let mut warnings = Vec::new();
    for (index, rule) in set.custom.iter().enumerate() {
        let query = rule.metrics_query.source();
        // The answer is matched back to objects through the resource label, so the query must
        // keep it (prometheus-adapter issue #194 and many like it).
        if !query.contains("GroupBy") {
            warnings.push(format!(
                "rules[{index}]: metricsQuery {query:?} never uses .GroupBy or .GroupBySlice, so its results lose the \
                 resource label and no object will match; aggregate with `by (<<.GroupBy>>)`"
            ));
        }
        if !query.contains("LabelMatchers") {
            warnings.push(format!(
                "rules[{index}]: metricsQuery {query:?} never uses .LabelMatchers, so it ignores the request's namespace and objects"
            ));
        }
    }
    warnings
}

/// One discovery rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub series_query: String,
    pub filters: Vec<SeriesFilter>,
    pub name_matches: Regex,
    pub name_as: String,
    pub resources: ResourceMapping,
    pub metrics_query: template::Template,
    /// How single-value `in` requirements of a metric selector become PromQL.
    pub in_regex: promql::InRegex,
    template_regex: Option<Regex>,
}

impl Rule {
    /// Builds a rule, applying prometheus-adapter's defaults: `matches` defaults to `.*`, and an empty
    /// `as` means `$0` without capture groups, `$1` with exactly one.
    pub fn new(
        index: usize,
        series_query: &str,
        filters: Vec<SeriesFilter>,
        name_matches: Option<&str>,
        name_as: Option<&str>,
        resources: ResourceMapping,
        metrics_query: &str,
    ) -> Result<Self> {
        let pattern = name_matches.filter(|m| !m.is_empty()).unwrap_or(".*");
        let name_matches = compile(index, pattern)?;
        let name_as = match name_as.filter(|a| !a.is_empty()) {
            Some(name_as) => name_as.to_owned(),
            None => match name_matches.captures_len() - 1 {
                0 => "$0".to_owned(),
                1 => "$1".to_owned(),
                groups => {
                    return Err(Error::AmbiguousAs {
                        rule: index,
                        pattern: pattern.into(),
                        groups,
                    });
                }
            },
        };
        let template_regex = match &resources.template {
            Some(template) => Some(compile(index, &template_to_regex(template))?),
            None => None,
        };
        Ok(Self {
            series_query: series_query.to_owned(),
            filters,
            name_matches,
            name_as,
            resources,
            metrics_query: template::Template::parse(metrics_query).map_err(|err| Error::Template {
                rule: index,
                message: err.to_string(),
            })?,
            in_regex: promql::InRegex::Escaped,
            template_regex,
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

    /// The resource a series label names under this rule, if any.
    pub fn resource_for_label<'r>(&self, label: &str, resources: &'r Resources) -> Option<&'r ResourceInfo> {
        if let Some(resource) = self.resources.overrides.get(label) {
            return resources.resolve(resource);
        }
        if self.resources.template_ignores.iter().any(|l| l == label) {
            return None;
        }
        let captures = self.template_regex.as_ref()?.captures(label)?;
        let resource = captures.name("resource")?.as_str();
        match captures.name("group") {
            Some(group) => resources.resolve(&format!("{resource}.{}", group.as_str())),
            None => resources.for_label(resource),
        }
    }

    /// The series label that holds the names of `resource`'s objects under this rule.
    pub fn label_for_resource(&self, resource: &ResourceInfo, resources: &Resources) -> Option<String> {
        let by_override = self
            .resources
            .overrides
            .iter()
            .find(|(_, r)| resources.resolve(r).is_some_and(|r| r == resource))
            .map(|(label, _)| label.clone());
        by_override.or_else(|| {
            let template = self.resources.template.as_ref()?;
            let group = resource.group.replace(['.', '-'], "_");
            let label = template
                .replace("<<.Resource>>", &resource.singular)
                .replace("<<.Group>>", &group);
            (!self.resources.template_ignores.contains(&label)).then_some(label)
        })
    }
}

fn compile(rule: usize, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|source| Error::Regex {
        rule,
        pattern: pattern.into(),
        source: Box::new(source),
    })
}

/// Turns a resource template into an anchored regex with `resource` and `group` captures.
fn template_to_regex(template: &str) -> String {
    let escaped = regex::escape(template);
    let escaped = escaped.replace(&regex::escape("<<.Resource>>"), "(?P<resource>.+?)");
    let escaped = escaped.replace(&regex::escape("<<.Group>>"), "(?P<group>.+?)");
    format!("^{escaped}$")
}

/// prometheus-adapter's six default rules (its `config-gen`), with the given rate window, except
/// that the [`SCRAPE_LABELS`] name no resource.
pub fn default_rules(rate_interval: &str) -> Result<Vec<Rule>> {
    const CONTAINER_SERIES: &str = r#"{__name__=~"^container_.*",container!="POD",namespace!="",pod!=""}"#;
    const OTHER_SERIES: &str = r#"{namespace!="",__name__!~"^container_.*"}"#;
    let container_rate = format!(
        "sum(rate(<<.Series>>{{<<.LabelMatchers>>,container!=\"POD\"}}[{rate_interval}])) by (<<.GroupBy>>)"
    );
    let container_gauge = "sum(<<.Series>>{<<.LabelMatchers>>,container!=\"POD\"}) by (<<.GroupBy>>)";
    let rate = format!("sum(rate(<<.Series>>{{<<.LabelMatchers>>}}[{rate_interval}])) by (<<.GroupBy>>)");
    let gauge = "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)";
    let container_labels = ResourceMapping {
        overrides: BTreeMap::from([
            ("namespace".into(), "namespace".into()),
            ("pod".into(), "pod".into()),
        ]),
        ..ResourceMapping::default()
    };
    // Unlike prometheus-adapter's config-gen, the labels every scrape adds name no resource.
    let any_resource = ResourceMapping {
        template: Some("<<.Resource>>".into()),
        template_ignores: SCRAPE_LABELS.iter().map(|l| (*l).to_owned()).collect(),
        ..ResourceMapping::default()
    };
    let is_not = |i, p| compile(i, p).map(SeriesFilter::IsNot);
    Ok(vec![
        Rule::new(
            0,
            CONTAINER_SERIES,
            vec![],
            Some("^container_(.*)_seconds_total$"),
            None,
            container_labels.clone(),
            &container_rate,
        )?,
        Rule::new(
            1,
            CONTAINER_SERIES,
            vec![is_not(1, "^container_.*_seconds_total$")?],
            Some("^container_(.*)_total$"),
            None,
            container_labels.clone(),
            &container_rate,
        )?,
        Rule::new(
            2,
            CONTAINER_SERIES,
            vec![is_not(2, "^container_.*_total$")?],
            Some("^container_(.*)$"),
            None,
            container_labels,
            container_gauge,
        )?,
        Rule::new(
            3,
            OTHER_SERIES,
            vec![is_not(3, ".*_total$")?],
            None,
            None,
            any_resource.clone(),
            gauge,
        )?,
        Rule::new(
            4,
            OTHER_SERIES,
            vec![is_not(4, ".*_seconds_total")?],
            Some("^(.*)_total$"),
            None,
            any_resource.clone(),
            &rate,
        )?,
        Rule::new(
            5,
            OTHER_SERIES,
            vec![],
            Some("^(.*)_seconds_total$"),
            None,
            any_resource,
            &rate,
        )?,
    ])
}

/// Renders an external rule's `metricsQuery`: the metric selector's matchers, then the namespace
/// matcher unless the rule says `namespaced: false`; `.GroupBy` is empty, as in prometheus-adapter.
pub fn build_external_query(
    rule: &Rule,
    index: usize,
    series: &str,
    namespace: &str,
    metric_selector: &Selector,
    resources: &Resources,
) -> Result<String> {
    let mut matchers = promql::selector_matchers(metric_selector, rule.in_regex)?;
    if rule.resources.namespaced.unwrap_or(true) {
        let no_label = || Error::NoLabelForResource {
            rule: index,
            resource: "namespaces".into(),
        };
        let namespaces = resources.namespaces().ok_or_else(no_label)?;
        let label = rule
            .label_for_resource(namespaces, resources)
            .ok_or_else(no_label)?;
        matchers.push(promql::matcher(&label, promql::MatchOp::Eq, namespace));
    }
    let values_by_label = BTreeMap::new();
    render(rule, index, series, &matchers, &[], &values_by_label)
}

/// Renders a rule's `metricsQuery` with prometheus-adapter's data: `.Series`, `.LabelMatchers`,
/// `.GroupBy`, `.GroupBySlice` and `.LabelValuesByName`.
fn render(
    rule: &Rule,
    index: usize,
    series: &str,
    matchers: &[String],
    group_by: &[String],
    values_by_label: &BTreeMap<String, Vec<String>>,
) -> Result<String> {
    template::render_metrics_query(&rule.metrics_query, series, matchers, group_by, values_by_label).map_err(
        |err| Error::Template {
            rule: index,
            message: err.to_string(),
        },
    )
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

/// Renders the rule's `metricsQuery` for a request.
pub fn build_query(
    rule: &Rule,
    index: usize,
    series: &str,
    req: QueryRequest<'_>,
    resources: &Resources,
) -> Result<Query> {
    let no_label = |resource: &ResourceInfo| Error::NoLabelForResource {
        rule: index,
        resource: resource.group_resource(),
    };
    let resource_label = rule
        .label_for_resource(req.resource, resources)
        .ok_or_else(|| no_label(req.resource))?;
    let namespace_label = match (req.resource.namespaced, resources.namespaces()) {
        (true, Some(namespaces)) => Some(
            rule.label_for_resource(namespaces, resources)
                .ok_or_else(|| no_label(namespaces))?,
        ),
        _ => None,
    };

    let mut matchers = promql::selector_matchers(req.metric_selector, rule.in_regex)?;
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

    // `.LabelValuesByName`: values regex-escaped and string-escaped, since templates place them
    // inside `=~"..."` (prometheus-adapter passes them raw).
    let escape = |value: &str| {
        let quoted = promql::go_quote(&promql::regex_escape(value));
        quoted[1..quoted.len() - 1].to_owned()
    };
    let mut values_by_label = BTreeMap::new();
    if let (Some(label), Some(namespace)) = (&namespace_label, req.namespace) {
        values_by_label.insert(label.clone(), vec![escape(namespace)]);
    }
    if let Some(names) = req.names {
        values_by_label.insert(resource_label.clone(), names.iter().map(|n| escape(n)).collect());
    }
    let promql = render(rule, index, series, &matchers, &group_by, &values_by_label)?;
    Ok(Query {
        promql,
        resource_label,
        namespace_label,
    })
}

#[cfg(test)]
mod injection_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules that name `series`, among those whose seriesQuery returns it (container_*
    /// series only reach rules 0-2, everything else only rules 3-5).
    fn name(rules: &[Rule], series: &str) -> Vec<(usize, String)> {
        let reachable = if series.starts_with("container_") {
            0..3
        } else {
            3..6
        };
        rules[reachable.clone()]
            .iter()
            .zip(reachable)
            .filter_map(|(r, i)| r.metric_name(series).map(|n| (i, n)))
            .collect()
    }

    #[test]
    fn default_naming_matches_prometheus_adapter() {
        let rules = default_rules("2m").unwrap();
        assert_eq!(
            name(&rules, "http_requests_total"),
            [(4, "http_requests".to_owned())]
        );
        assert_eq!(
            name(&rules, "process_cpu_seconds_total"),
            [(5, "process_cpu".to_owned())]
        );
        assert_eq!(name(&rules, "queue_depth"), [(3, "queue_depth".to_owned())]);
        assert_eq!(
            name(&rules, "container_cpu_usage_seconds_total"),
            [(0, "cpu_usage".to_owned())]
        );
        assert_eq!(
            name(&rules, "container_network_receive_bytes_total"),
            [(1, "network_receive_bytes".to_owned())]
        );
        assert_eq!(
            name(&rules, "container_memory_usage_bytes"),
            [(2, "memory_usage_bytes".to_owned())]
        );
    }

    #[test]
    fn labels_map_to_resources_both_ways() {
        let rules = default_rules("2m").unwrap();
        let resources = Resources::default();
        let template_rule = &rules[4];
        assert_eq!(
            template_rule
                .resource_for_label("pod", &resources)
                .map(|r| r.kind.as_str()),
            Some("Pod")
        );
        assert_eq!(
            template_rule
                .resource_for_label("service", &resources)
                .map(|r| r.kind.as_str()),
            Some("Service")
        );
        assert!(template_rule.resource_for_label("instance", &resources).is_none());
        let services = resources.resolve("svc").unwrap();
        assert_eq!(
            template_rule.label_for_resource(services, &resources).as_deref(),
            Some("service")
        );
        let container_rule = &rules[0];
        assert!(container_rule.resource_for_label("service", &resources).is_none());
        let pods = resources.resolve("pods").unwrap();
        assert_eq!(
            container_rule.label_for_resource(pods, &resources).as_deref(),
            Some("pod")
        );
        assert!(container_rule.label_for_resource(services, &resources).is_none());
    }

    #[test]
    fn the_built_in_rules_map_no_scrape_label() {
        let job = ResourceInfo {
            group: "batch".into(),
            version: "v1".into(),
            plural: "jobs".into(),
            singular: "job".into(),
            short_names: vec![],
            kind: "Job".into(),
            namespaced: true,
        };
        let prometheus = ResourceInfo {
            group: "monitoring.coreos.com".into(),
            plural: "prometheuses".into(),
            singular: "prometheus".into(),
            kind: "Prometheus".into(),
            ..job.clone()
        };
        let deployment = ResourceInfo {
            group: "apps".into(),
            plural: "deployments".into(),
            singular: "deployment".into(),
            kind: "Deployment".into(),
            ..job.clone()
        };
        let mut list: Vec<ResourceInfo> = Resources::default().iter().cloned().collect();
        list.extend([job.clone(), prometheus.clone(), deployment.clone()]);
        let resources = Resources::new(list);
        let built_in = &default_rules("2m").unwrap()[3];
        for label in SCRAPE_LABELS {
            assert!(
                built_in.resource_for_label(label, &resources).is_none(),
                "{label}"
            );
        }
        assert!(built_in.label_for_resource(&job, &resources).is_none());
        assert_eq!(
            built_in.resource_for_label("deployment", &resources),
            Some(&deployment)
        );
        // A user's rules map what they say: the same template without the ignores maps `job`.
        let user = Rule::new(
            0,
            "{}",
            vec![],
            None,
            None,
            ResourceMapping {
                template: Some("<<.Resource>>".into()),
                ..ResourceMapping::default()
            },
            "x",
        )
        .unwrap();
        assert_eq!(user.resource_for_label("job", &resources), Some(&job));
        assert_eq!(
            user.resource_for_label("prometheus", &resources),
            Some(&prometheus)
        );
    }

    #[test]
    fn queries_for_the_seed_requests() {
        let rules = default_rules("2m").unwrap();
        let resources = Resources::default();
        let everything = Selector::parse("").unwrap();
        let service = resources.resolve("services").unwrap();
        let names = ["sample-metrics-app".to_owned()];
        let req = QueryRequest {
            resource: service,
            namespace: Some("default"),
            names: Some(&names),
            metric_selector: &everything,
        };
        let query = build_query(&rules[4], 4, "http_requests_total", req, &resources).unwrap();
        assert_eq!(
            query.promql,
            r#"sum(rate(http_requests_total{namespace="default",service="sample-metrics-app"}[2m])) by (service)"#
        );
        assert_eq!(query.resource_label, "service");
        assert_eq!(query.namespace_label.as_deref(), Some("namespace"));

        let pods = resources.resolve("pods").unwrap();
        let names = ["a.1".to_owned(), "b".to_owned()];
        let selector = Selector::parse("verb in (GET,POST),code!=500").unwrap();
        let req = QueryRequest {
            resource: pods,
            namespace: Some("prod"),
            names: Some(&names),
            metric_selector: &selector,
        };
        let query = build_query(&rules[4], 4, "http_requests_total", req, &resources).unwrap();
        assert_eq!(
            query.promql,
            r#"sum(rate(http_requests_total{code!="500",verb=~"GET|POST",namespace="prod",pod=~"a\\.1|b"}[2m])) by (pod)"#
        );

        let req = QueryRequest {
            resource: pods,
            namespace: None,
            names: None,
            metric_selector: &everything,
        };
        let query = build_query(&rules[3], 3, "queue_depth", req, &resources).unwrap();
        assert_eq!(query.promql, r#"sum(queue_depth{pod!=""}) by (pod,namespace)"#);

        let namespaces = resources.resolve("namespaces").unwrap();
        let names = ["default".to_owned()];
        let req = QueryRequest {
            resource: namespaces,
            namespace: None,
            names: Some(&names),
            metric_selector: &everything,
        };
        let query = build_query(&rules[4], 4, "http_requests_total", req, &resources).unwrap();
        assert_eq!(
            query.promql,
            r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (namespace)"#
        );
        assert_eq!(query.namespace_label, None);
    }

    #[test]
    fn name_as_defaults() {
        let mapping = ResourceMapping::default();
        assert!(Rule::new(0, "{}", vec![], Some("^(a)(b)$"), None, mapping.clone(), "x").is_err());
        let rule = Rule::new(
            0,
            "{}",
            vec![],
            Some("^(.*)_count$"),
            Some("${1}_per_thing"),
            mapping,
            "x",
        )
        .unwrap();
        assert_eq!(rule.metric_name("jobs_count").as_deref(), Some("jobs_per_thing"));
        assert_eq!(rule.metric_name("jobs_total"), None);
    }
}
