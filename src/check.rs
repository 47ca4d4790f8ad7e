//! `custom-metrics-adapter check-config`: answers "why is my metric not found" before deploying.

use std::{fmt::Write as _, path::Path, time::Duration};

use crate::{
    backend::prometheus,
    objects::Resources,
    pipeline::{self, Pipeline},
    rules::{self, Discovery, QueryRequest},
    selector::Selector,
};

/// Validates `config`; with `prometheus_url`, discovers once and describes every metric and the
/// PromQL a sample request in `namespace` runs. Returns the report, or the reason the file is bad.
pub async fn check_config(
    config: &Path,
    prometheus_url: Option<&str>,
    namespace: &str,
) -> anyhow::Result<String> {
    let file = rules::config::load(config)?;
    let set = file.rule_set();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{}: valid: {} rules, {} externalRules, resourceRules {}",
        config.display(),
        set.custom.len(),
        set.external.len(),
        if file.resource_rules.is_some() {
            "present"
        } else {
            "absent"
        }
    );
    for warning in rules::lint(&set) {
        let _ = writeln!(report, "warning: {warning}");
    }
    let Some(url) = prometheus_url else {
        return Ok(report);
    };

    let client = prometheus::Client::new(&prometheus::ClientConfig::plain(url, Duration::from_secs(30)))?;
    let state = Pipeline::new(pipeline::Parts {
        rules: set,
        backend: std::sync::Arc::new(client),
        objects: None,
        resources: Default::default(),
        max_age: Duration::from_secs(600),
        metrics: Default::default(),
    });
    state.relist().await?;
    let discovery = state.discovery();
    let resources = Resources::default();
    let _ = writeln!(
        report,
        "\ndiscovered from {url} (series with samples in the last 10 minutes):"
    );
    if discovery.is_empty() && discovery.external_metrics().next().is_none() {
        let _ = writeln!(
            report,
            "  nothing: check each seriesQuery in Prometheus' UI, and that series carry labels the resources map (namespace, pod, ...)"
        );
    }
    describe_metrics(&mut report, &discovery, &resources, namespace);
    Ok(report)
}

/// Every discovered metric: its series, rule, request path and the PromQL a sample request runs.
fn describe_metrics(report: &mut String, discovery: &Discovery, resources: &Resources, namespace: &str) {
    let everything = Selector::default();
    for (metric, entry) in discovery.iter() {
        let request = QueryRequest {
            resource: &entry.resource,
            namespace: entry.resource.namespaced.then_some(namespace),
            names: None,
            metric_selector: &everything,
        };
        let path = match entry.resource.namespaced {
            true => format!(
                "/namespaces/{namespace}/{}/*/{metric}",
                entry.resource.group_resource()
            ),
            false => format!("/{}/*/{metric}", entry.resource.group_resource()),
        };
        let query = entry
            .rule
            .query(&entry.series, request, resources)
            .map(|q| q.promql)
            .unwrap_or_else(|err| format!("<cannot build: {err}>"));
        let _ = writeln!(
            report,
            "  {}/{metric}  (series {}, rules[{}])\n    GET /apis/custom.metrics.k8s.io/v1beta2{path}\n    {query}",
            entry.resource.group_resource(),
            entry.series,
            entry.rule.position
        );
    }
    for (metric, entry) in discovery.external_metrics() {
        let query = entry
            .rule
            .external_query(&entry.series, namespace, &everything, resources)
            .unwrap_or_else(|err| format!("<cannot build: {err}>"));
        let _ = writeln!(
            report,
            "  external {metric}  (series {}, externalRules[{}])\n    GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}\n    {query}",
            entry.series, entry.rule.position
        );
    }
}
