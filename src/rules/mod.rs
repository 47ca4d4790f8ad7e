//! Discovery rules: which Prometheus series become which API metrics, for which resources, and the
//! PromQL a request runs. The rule model is prometheus-adapter's (`seriesQuery`, `seriesFilters`,
//! `resources`, `name`, `metricsQuery`); the built-in rules are its config-gen defaults. Every rule
//! is compiled once, when it is loaded ([`CompiledRule`], [`ResourceRules`]).

pub mod config;
pub mod discovery;
pub mod naming;
pub mod promql;
pub mod resource;
mod rule;
pub mod template;

use std::{collections::BTreeMap, sync::Arc};

pub use discovery::{Discovery, ExternalEntry, MetricEntry, MetricKey, RuleSummary};
pub use naming::{GroupResource, LabelMapping, ResourceMapping};
pub use resource::{PodSelection, ResourceRule, ResourceRules, UsageQuery, usage_value};
pub use rule::{CompiledRule, Query, QueryRequest, RuleParams, SeriesFilter};

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
    #[error("resourceRules.{rule}: {message}")]
    ResourceRule { rule: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// Every rule of a configuration: custom metrics rules and external metrics rules. Rules are
/// shared: discovery entries point at the rule that named them.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub custom: Vec<Arc<CompiledRule>>,
    pub external: Vec<Arc<CompiledRule>>,
    /// `resourceRules`: serve `metrics.k8s.io` from Prometheus when present.
    pub resource: Option<Arc<ResourceRules>>,
}

/// One distinct `seriesQuery` and the rules that share it, so it is listed once per relist.
#[derive(Debug, Clone)]
pub struct SeriesQuery {
    pub query: String,
    pub custom: Vec<Arc<CompiledRule>>,
    pub external: Vec<Arc<CompiledRule>>,
}

impl RuleSet {
    /// Custom rules only, as the built-in defaults are.
    pub fn custom(rules: Vec<CompiledRule>) -> Self {
        Self {
            custom: rules.into_iter().map(Arc::new).collect(),
            ..Self::default()
        }
    }

    /// Each distinct `seriesQuery` with the custom and external rules that share it, in query order.
    pub fn series_queries(&self) -> Vec<SeriesQuery> {
        fn query_of<'q>(
            out: &'q mut BTreeMap<String, SeriesQuery>,
            rule: &CompiledRule,
        ) -> &'q mut SeriesQuery {
            out.entry(rule.series_query.clone())
                .or_insert_with(|| SeriesQuery {
                    query: rule.series_query.clone(),
                    custom: Vec::new(),
                    external: Vec::new(),
                })
        }
        let mut out = BTreeMap::new();
        for rule in &self.custom {
            query_of(&mut out, rule).custom.push(rule.clone());
        }
        for rule in &self.external {
            query_of(&mut out, rule).external.push(rule.clone());
        }
        out.into_values().collect()
    }

    /// Sets how single-value `in` requirements become PromQL, for every rule
    /// (`--metric-selector-regex-passthrough`).
    pub fn set_in_regex(&mut self, in_regex: promql::InRegex) {
        for rule in self.custom.iter_mut().chain(self.external.iter_mut()) {
            Arc::make_mut(rule).in_regex = in_regex;
        }
    }
}

/// Mistakes in a rule set that load but cannot work, as sentences for the log.
pub fn lint(set: &RuleSet) -> Vec<String> {
    let mut warnings = Vec::new();
    for rule in &set.custom {
        let (index, query) = (rule.position, rule.metrics_query.source());
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

/// One built-in rule: its series query, filters (`isNot` patterns), name pattern, labels and query.
struct BuiltIn<'a> {
    series_query: &'a str,
    is_not: &'a [&'a str],
    matches: Option<&'a str>,
    resources: &'a ResourceMapping,
    query: &'a str,
}

impl BuiltIn<'_> {
    fn compile(&self, position: usize) -> Result<CompiledRule> {
        let filters = self
            .is_not
            .iter()
            .map(|p| rule::compile(position, p).map(SeriesFilter::IsNot))
            .collect::<Result<_>>()?;
        let metrics_query = template::Template::parse(self.query).map_err(|err| Error::Template {
            rule: position,
            message: err.to_string(),
        })?;
        CompiledRule::new(RuleParams {
            position,
            line: 0,
            series_query: self.series_query.to_owned(),
            filters,
            name_matches: self.matches.map(|m| rule::compile(position, m)).transpose()?,
            name_as: None,
            resources: self.resources.clone(),
            namespaced: true,
            metrics_query,
        })
    }
}

/// prometheus-adapter's six default rules (its `config-gen`), with the given rate window, except
/// that the [`SCRAPE_LABELS`] name no resource.
pub fn default_rules(rate_interval: &str) -> Result<Vec<CompiledRule>> {
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
            ("namespace".into(), GroupResource::core("namespace")),
            ("pod".into(), GroupResource::core("pod")),
        ]),
        ..ResourceMapping::default()
    };
    // Unlike prometheus-adapter's config-gen, the labels every scrape adds name no resource.
    let any_resource = ResourceMapping {
        template: Some("<<.Resource>>".into()),
        template_ignores: SCRAPE_LABELS.iter().map(|l| (*l).to_owned()).collect(),
        ..ResourceMapping::default()
    };
    let built_in = |series_query, is_not, matches, resources, query| BuiltIn {
        series_query,
        is_not,
        matches,
        resources,
        query,
    };
    [
        built_in(
            CONTAINER_SERIES,
            &[],
            Some("^container_(.*)_seconds_total$"),
            &container_labels,
            &container_rate,
        ),
        built_in(
            CONTAINER_SERIES,
            &["^container_.*_seconds_total$"],
            Some("^container_(.*)_total$"),
            &container_labels,
            &container_rate,
        ),
        built_in(
            CONTAINER_SERIES,
            &["^container_.*_total$"],
            Some("^container_(.*)$"),
            &container_labels,
            container_gauge,
        ),
        built_in(OTHER_SERIES, &[".*_total$"], None, &any_resource, gauge),
        built_in(
            OTHER_SERIES,
            &[".*_seconds_total"],
            Some("^(.*)_total$"),
            &any_resource,
            &rate,
        ),
        built_in(
            OTHER_SERIES,
            &[],
            Some("^(.*)_seconds_total$"),
            &any_resource,
            &rate,
        ),
    ]
    .iter()
    .enumerate()
    .map(|(position, rule)| rule.compile(position))
    .collect()
}

#[cfg(test)]
mod injection_tests;

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::{
        objects::{ResourceInfo, Resources},
        selector::Selector,
    };

    /// A rule over `{}` with the given name pattern, `as` and resources.
    fn rule(
        matches: Option<&str>,
        name_as: Option<&str>,
        resources: ResourceMapping,
    ) -> Result<CompiledRule> {
        CompiledRule::new(RuleParams {
            position: 0,
            line: 0,
            series_query: "{}".into(),
            filters: vec![],
            name_matches: matches.map(|m| Regex::new(m).unwrap()),
            name_as: name_as.map(str::to_owned),
            resources,
            namespaced: true,
            metrics_query: template::Template::parse("x").unwrap(),
        })
    }

    /// The rules that name `series`, among those whose seriesQuery returns it (container_*
    /// series only reach rules 0-2, everything else only rules 3-5).
    fn name(rules: &[CompiledRule], series: &str) -> Vec<(usize, String)> {
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
                .resources
                .resource_for_label("pod", &resources)
                .map(|r| r.kind.as_str()),
            Some("Pod")
        );
        assert_eq!(
            template_rule
                .resources
                .resource_for_label("service", &resources)
                .map(|r| r.kind.as_str()),
            Some("Service")
        );
        assert!(
            template_rule
                .resources
                .resource_for_label("instance", &resources)
                .is_none()
        );
        let services = resources.resolve("svc").unwrap();
        assert_eq!(
            template_rule
                .resources
                .label_for_resource(services, &resources)
                .as_deref(),
            Some("service")
        );
        let container_rule = &rules[0];
        assert!(
            container_rule
                .resources
                .resource_for_label("service", &resources)
                .is_none()
        );
        let pods = resources.resolve("pods").unwrap();
        assert_eq!(
            container_rule
                .resources
                .label_for_resource(pods, &resources)
                .as_deref(),
            Some("pod")
        );
        assert!(
            container_rule
                .resources
                .label_for_resource(services, &resources)
                .is_none()
        );
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
                built_in.resources.resource_for_label(label, &resources).is_none(),
                "{label}"
            );
        }
        assert!(built_in.resources.label_for_resource(&job, &resources).is_none());
        assert_eq!(
            built_in.resources.resource_for_label("deployment", &resources),
            Some(&deployment)
        );
        // A user's rules map what they say: the same template without the ignores maps `job`.
        let user = rule(
            None,
            None,
            ResourceMapping {
                template: Some("<<.Resource>>".into()),
                ..ResourceMapping::default()
            },
        )
        .unwrap();
        assert_eq!(user.resources.resource_for_label("job", &resources), Some(&job));
        assert_eq!(
            user.resources.resource_for_label("prometheus", &resources),
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
        let query = rules[4].query("http_requests_total", req, &resources).unwrap();
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
        let query = rules[4].query("http_requests_total", req, &resources).unwrap();
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
        let query = rules[3].query("queue_depth", req, &resources).unwrap();
        assert_eq!(query.promql, r#"sum(queue_depth{pod!=""}) by (pod,namespace)"#);

        let namespaces = resources.resolve("namespaces").unwrap();
        let names = ["default".to_owned()];
        let req = QueryRequest {
            resource: namespaces,
            namespace: None,
            names: Some(&names),
            metric_selector: &everything,
        };
        let query = rules[4].query("http_requests_total", req, &resources).unwrap();
        assert_eq!(
            query.promql,
            r#"sum(rate(http_requests_total{namespace="default"}[2m])) by (namespace)"#
        );
        assert_eq!(query.namespace_label, None);
    }

    #[test]
    fn name_as_defaults() {
        let mapping = ResourceMapping::default();
        assert!(rule(Some("^(a)(b)$"), None, mapping.clone()).is_err());
        let rule = rule(Some("^(.*)_count$"), Some("${1}_per_thing"), mapping).unwrap();
        assert_eq!(rule.metric_name("jobs_count").as_deref(), Some("jobs_per_thing"));
        assert_eq!(rule.metric_name("jobs_total"), None);
    }
}
