//! The discovered metrics: built from series label sets by the relist loop, read by every request.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use std::sync::Arc;

use super::{Rule, RuleSet};
use crate::{
    backend::SeriesShape,
    objects::{ResourceInfo, Resources},
};

/// Where an API metric of one resource comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricEntry {
    /// The Prometheus series name (`http_requests_total`).
    pub series: String,
    /// Index of the rule that named it.
    pub rule: usize,
    pub resource: ResourceInfo,
}

/// Where an external metric comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalEntry {
    pub series: String,
    /// Index of the external rule that named it.
    pub rule: usize,
}

/// A snapshot of discovered metrics, keyed by (group-resource, API metric name), and external
/// metrics keyed by name.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    metrics: BTreeMap<(String, String), MetricEntry>,
    external: BTreeMap<String, ExternalEntry>,
    /// The rules the entries' indexes point into.
    pub rules: Arc<RuleSet>,
    /// When the series behind this snapshot were listed; None before the first relist.
    pub listed_at: Option<SystemTime>,
    /// What each custom rule made of its series, for the relist log.
    pub summaries: BTreeMap<usize, RuleSummary>,
}

/// What one rule made of the series its query listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSummary {
    /// Distinct series shapes (name and label names) the rule saw.
    pub series: usize,
    /// Series the rule's name filters accepted.
    pub named: usize,
    /// Distinct API metric names it produced.
    pub metrics: BTreeSet<String>,
    /// Resources its labels associated.
    pub resources: BTreeSet<String>,
    /// Labels of named series that map to no known resource.
    pub unmapped_labels: BTreeSet<String>,
}

impl Discovery {
    /// Builds a snapshot from the series each rule's `seriesQuery` returned (`series[i]` for rule `i`).
    /// A metric claimed by several rules for the same resource goes to the first rule.
    pub fn build<'a, I>(rules: &[Rule], series: I, resources: &Resources, listed_at: SystemTime) -> Self
    where
        I: IntoIterator<Item = (usize, &'a SeriesShape)>,
    {
        let mut metrics = BTreeMap::new();
        let mut summaries: BTreeMap<usize, RuleSummary> = BTreeMap::new();
        for (rule_index, labels) in series {
            let Some(rule) = rules.get(rule_index) else {
                continue;
            };
            let summary = summaries.entry(rule_index).or_default();
            summary.series += 1;
            let series_name = &labels.name;
            let Some(metric) = rule.metric_name(series_name) else {
                continue;
            };
            summary.named += 1;
            summary.metrics.insert(metric.clone());
            for label in &labels.labels {
                let Some(resource) = rule.resource_for_label(label, resources) else {
                    summary.unmapped_labels.insert(label.clone());
                    continue;
                };
                summary.resources.insert(resource.group_resource());
                let key = (resource.group_resource(), metric.clone());
                let entry = MetricEntry {
                    series: series_name.clone(),
                    rule: rule_index,
                    resource: resource.clone(),
                };
                match metrics.get(&key) {
                    Some(MetricEntry { rule, .. }) if *rule <= rule_index => {}
                    _ => {
                        metrics.insert(key, entry);
                    }
                }
            }
        }
        Self {
            metrics,
            external: BTreeMap::new(),
            rules: Arc::default(),
            listed_at: Some(listed_at),
            summaries,
        }
    }

    /// Adds the external metrics named by `rules` (external rules) from their series. As in
    /// prometheus-adapter, a later rule wins a name both claim.
    pub fn add_external<'a, I>(&mut self, rules: &[Rule], series: I)
    where
        I: IntoIterator<Item = (usize, &'a SeriesShape)>,
    {
        for (rule_index, labels) in series {
            let Some(rule) = rules.get(rule_index) else {
                continue;
            };
            let series_name = &labels.name;
            let Some(metric) = rule.metric_name(series_name) else {
                continue;
            };
            let entry = ExternalEntry {
                series: series_name.clone(),
                rule: rule_index,
            };
            match self.external.get(&metric) {
                Some(existing) if existing.rule > rule_index => {}
                _ => {
                    self.external.insert(metric, entry);
                }
            }
        }
    }

    pub fn external(&self, metric: &str) -> Option<&ExternalEntry> {
        self.external.get(metric)
    }

    /// Every external metric, sorted by name.
    pub fn external_metrics(&self) -> impl Iterator<Item = (&str, &ExternalEntry)> {
        self.external.iter().map(|(name, entry)| (name.as_str(), entry))
    }

    /// Copies the external entries of `rules` from `previous` (their series query failed).
    pub fn carry_over_external(&mut self, previous: &Discovery, rules: &[usize]) {
        for (name, entry) in &previous.external {
            if rules.contains(&entry.rule) {
                self.external.entry(name.clone()).or_insert_with(|| entry.clone());
            }
        }
    }

    /// Copies the entries of `rules` from `previous` (used when those rules' series query failed).
    pub fn carry_over(&mut self, previous: &Discovery, rules: &[usize]) {
        for (key, entry) in &previous.metrics {
            if rules.contains(&entry.rule) {
                self.metrics.entry(key.clone()).or_insert_with(|| entry.clone());
            }
        }
    }

    pub fn get(&self, resource: &ResourceInfo, metric: &str) -> Option<&MetricEntry> {
        self.metrics.get(&(resource.group_resource(), metric.to_owned()))
    }

    /// Every (resource, metric) pair, sorted by resource then metric.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetricEntry)> {
        self.metrics
            .iter()
            .map(|((_, metric), entry)| (metric.as_str(), entry))
    }

    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// The resources `metric` is served for (to explain a request for the wrong resource).
    pub fn resources_of(&self, metric: &str) -> Vec<String> {
        self.metrics
            .keys()
            .filter(|(_, m)| m == metric)
            .map(|(gr, _)| gr.clone())
            .collect()
    }

    /// Up to three names served for `resource` that are close to `metric` (typos, `_total` suffixes).
    pub fn closest(&self, resource: &ResourceInfo, metric: &str) -> Vec<String> {
        let gr = resource.group_resource();
        let names: BTreeSet<&str> = self
            .metrics
            .keys()
            .filter(|(r, _)| *r == gr)
            .map(|(_, m)| m.as_str())
            .collect();
        let mut scored: Vec<(usize, &str)> = names
            .into_iter()
            .map(|name| (strsim::levenshtein(name, metric), name))
            .filter(|(distance, name)| {
                *distance <= (metric.len() / 3).max(2) || name.contains(metric) || metric.contains(name)
            })
            .collect();
        scored.sort();
        scored
            .into_iter()
            .take(3)
            .map(|(_, name)| name.to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::default_rules;

    /// The shape of a series given as label pairs (values are dropped, as the listing does).
    fn labels(pairs: &[(&str, &str)]) -> SeriesShape {
        let name = pairs
            .iter()
            .find(|(k, _)| *k == "__name__")
            .map(|(_, v)| (*v).to_owned())
            .unwrap_or_default();
        let mut labels: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, _)| (*k).to_owned())
            .collect();
        labels.sort();
        SeriesShape { name, labels }
    }

    #[test]
    fn builds_entries_per_resource_label() {
        let rules = default_rules("2m").unwrap();
        let resources = Resources::default();
        let counter = labels(&[
            ("__name__", "http_requests_total"),
            ("namespace", "default"),
            ("pod", "a"),
            ("service", "web"),
            ("instance", "10.0.0.1:8080"),
        ]);
        let gauge = labels(&[("__name__", "queue_depth"), ("namespace", "default")]);
        let container = labels(&[
            ("__name__", "container_cpu_usage_seconds_total"),
            ("namespace", "x"),
            ("pod", "p"),
        ]);
        let series: Vec<(usize, &SeriesShape)> = (3..6)
            .flat_map(|i| [(i, &counter), (i, &gauge)])
            .chain((0..3).map(|i| (i, &container)))
            .collect();
        let discovery = Discovery::build(&rules, series, &resources, SystemTime::now());
        let pairs: Vec<(String, &str)> = discovery
            .iter()
            .map(|(m, e)| (e.resource.group_resource(), m))
            .collect::<Vec<_>>();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(r, m)| (r.as_str(), *m)).collect();
        assert_eq!(
            pairs,
            [
                ("namespaces", "cpu_usage"),
                ("namespaces", "http_requests"),
                ("namespaces", "queue_depth"),
                ("pods", "cpu_usage"),
                ("pods", "http_requests"),
                ("services", "http_requests"),
            ]
        );
        let pods = resources.resolve("pods").unwrap();
        assert_eq!(
            discovery.get(pods, "http_requests").unwrap().series,
            "http_requests_total"
        );
        assert_eq!(discovery.closest(pods, "http_request"), ["http_requests"]);
        assert_eq!(discovery.closest(pods, "http_requests_total"), ["http_requests"]);
        assert!(discovery.closest(pods, "zzz").is_empty());
        assert_eq!(discovery.resources_of("queue_depth"), ["namespaces"]);
    }
}
