//! The discovered metrics: built from series label sets by the relist loop, read by every request.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::SystemTime,
};

use super::{CompiledRule, SeriesQuery};
use crate::{
    backend::SeriesShape,
    objects::{ResourceInfo, Resources},
};

/// Where an API metric of one resource comes from.
#[derive(Debug, Clone)]
pub struct MetricEntry {
    /// The Prometheus series name (`http_requests_total`).
    pub series: String,
    /// The rule that named it.
    pub rule: Arc<CompiledRule>,
    pub resource: ResourceInfo,
}

/// Where an external metric comes from.
#[derive(Debug, Clone)]
pub struct ExternalEntry {
    pub series: String,
    /// The external rule that named it.
    pub rule: Arc<CompiledRule>,
}

/// A custom metric's identity: the group-resource it is served for and its API name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricKey {
    /// `pods`, `deployments.apps`.
    pub resource: String,
    pub metric: String,
}

impl MetricKey {
    pub fn new(resource: &ResourceInfo, metric: &str) -> Self {
        Self {
            resource: resource.group_resource(),
            metric: metric.to_owned(),
        }
    }
}

/// A snapshot of discovered metrics: custom metrics by [`MetricKey`], external metrics by name.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    metrics: BTreeMap<MetricKey, MetricEntry>,
    external: BTreeMap<String, ExternalEntry>,
    /// When the series behind this snapshot were listed; None before the first relist.
    pub listed_at: Option<SystemTime>,
    /// What each custom rule made of its series, by the rule's position, for the relist log.
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

/// Which of two rules keeps a name both claim.
#[derive(Debug, Clone, Copy)]
enum Precedence {
    /// Custom rules: the first rule in the list.
    First,
    /// External rules: the last, as in prometheus-adapter.
    Last,
}

impl Precedence {
    fn replaces(self, new: &CompiledRule, existing: &CompiledRule) -> bool {
        match self {
            Self::First => new.position < existing.position,
            Self::Last => new.position >= existing.position,
        }
    }
}

/// Inserts `entry` under `key` unless a rule that takes precedence already holds the key.
fn claim<K: Ord, E>(
    map: &mut BTreeMap<K, E>,
    key: K,
    entry: E,
    precedence: Precedence,
    rule: fn(&E) -> &CompiledRule,
) {
    match map.get(&key) {
        Some(existing) if !precedence.replaces(rule(&entry), rule(existing)) => {}
        _ => {
            map.insert(key, entry);
        }
    }
}

/// Builds a [`Discovery`] from the series each `seriesQuery` listed, one query at a time.
///
/// A query that failed keeps its rules' entries from the previous snapshot ([`Builder::failed`]),
/// so one broken query does not hide every metric.
#[derive(Debug)]
pub struct Builder<'a> {
    resources: &'a Resources,
    next: Discovery,
    failed: Vec<Arc<CompiledRule>>,
}

impl<'a> Builder<'a> {
    pub fn new(resources: &'a Resources) -> Self {
        Self {
            resources,
            next: Discovery::default(),
            failed: Vec::new(),
        }
    }

    /// Adds what the rules of `query` make of the series it listed.
    pub fn add(&mut self, query: &SeriesQuery, series: &[SeriesShape]) {
        for rule in &query.custom {
            self.add_custom(rule, series);
        }
        for rule in &query.external {
            for shape in series {
                if let Some(metric) = rule.metric_name(&shape.name) {
                    let entry = ExternalEntry {
                        series: shape.name.clone(),
                        rule: rule.clone(),
                    };
                    claim(&mut self.next.external, metric, entry, Precedence::Last, |e| {
                        &*e.rule
                    });
                }
            }
        }
    }

    /// One entry per series label that names a resource; a metric claimed by several rules for the
    /// same resource goes to the first rule.
    fn add_custom(&mut self, rule: &Arc<CompiledRule>, series: &[SeriesShape]) {
        if series.is_empty() {
            return;
        }
        let summary = self.next.summaries.entry(rule.position).or_default();
        for shape in series {
            summary.series += 1;
            let Some(metric) = rule.metric_name(&shape.name) else {
                continue;
            };
            summary.named += 1;
            summary.metrics.insert(metric.clone());
            for label in &shape.labels {
                let Some(resource) = rule.resources.resource_for_label(label, self.resources) else {
                    summary.unmapped_labels.insert(label.clone());
                    continue;
                };
                summary.resources.insert(resource.group_resource());
                let entry = MetricEntry {
                    series: shape.name.clone(),
                    rule: rule.clone(),
                    resource: resource.clone(),
                };
                let key = MetricKey::new(resource, &metric);
                claim(&mut self.next.metrics, key, entry, Precedence::First, |e| {
                    &*e.rule
                });
            }
        }
    }

    /// Records that `query` could not be listed: its rules keep their previous entries.
    pub fn failed(&mut self, query: &SeriesQuery) {
        self.failed
            .extend(query.custom.iter().chain(&query.external).cloned());
    }

    /// The snapshot, with the entries of failed rules carried over from `previous`. Entries of
    /// rules replaced since (a reload) are not carried over: they belong to other rule objects.
    pub fn finish(mut self, previous: &Discovery, listed_at: SystemTime) -> Discovery {
        let failed = |rule: &Arc<CompiledRule>| self.failed.iter().any(|f| Arc::ptr_eq(f, rule));
        for (key, entry) in &previous.metrics {
            if failed(&entry.rule) {
                self.next
                    .metrics
                    .entry(key.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
        for (name, entry) in &previous.external {
            if failed(&entry.rule) {
                self.next
                    .external
                    .entry(name.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
        self.next.listed_at = Some(listed_at);
        self.next
    }
}

impl Discovery {
    pub fn external(&self, metric: &str) -> Option<&ExternalEntry> {
        self.external.get(metric)
    }

    /// Every external metric, sorted by name.
    pub fn external_metrics(&self) -> impl Iterator<Item = (&str, &ExternalEntry)> {
        self.external.iter().map(|(name, entry)| (name.as_str(), entry))
    }

    pub fn get(&self, resource: &ResourceInfo, metric: &str) -> Option<&MetricEntry> {
        self.metrics.get(&MetricKey::new(resource, metric))
    }

    /// Every (resource, metric) pair, sorted by resource then metric.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetricEntry)> {
        self.metrics
            .iter()
            .map(|(key, entry)| (key.metric.as_str(), entry))
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
            .filter(|key| key.metric == metric)
            .map(|key| key.resource.clone())
            .collect()
    }

    /// Up to three names served for `resource` that are close to `metric` (typos, `_total` suffixes).
    pub fn closest(&self, resource: &ResourceInfo, metric: &str) -> Vec<String> {
        let gr = resource.group_resource();
        let names: BTreeSet<&str> = self
            .metrics
            .keys()
            .filter(|key| key.resource == gr)
            .map(|key| key.metric.as_str())
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
        let rules = crate::rules::RuleSet::custom(rules);
        let mut builder = Builder::new(&resources);
        for query in rules.series_queries() {
            let series = if query.custom[0].position < 3 {
                vec![container.clone()]
            } else {
                vec![counter.clone(), gauge.clone()]
            };
            builder.add(&query, &series);
        }
        let discovery = builder.finish(&Discovery::default(), SystemTime::now());
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

    /// A query that fails keeps its rules' entries from the previous snapshot, but only while
    /// those rules are the same objects (a reload replaces them).
    #[test]
    fn failed_queries_carry_over_their_rules_entries() {
        let resources = Resources::default();
        let rules = crate::rules::RuleSet::custom(default_rules("2m").unwrap());
        let queries = rules.series_queries();
        let counter = labels(&[("__name__", "http_requests_total"), ("pod", "a")]);
        let container = labels(&[("__name__", "container_cpu_usage_seconds_total"), ("pod", "a")]);
        let mut builder = Builder::new(&resources);
        for query in &queries {
            let custom_container = query.custom[0].position < 3;
            builder.add(
                query,
                &[if custom_container {
                    container.clone()
                } else {
                    counter.clone()
                }],
            );
        }
        let first = builder.finish(&Discovery::default(), SystemTime::now());
        let pods = resources.resolve("pods").unwrap();
        assert!(first.get(pods, "cpu_usage").is_some() && first.get(pods, "http_requests").is_some());

        let mut builder = Builder::new(&resources);
        for query in &queries {
            if query.custom[0].position < 3 {
                builder.failed(query);
            } else {
                builder.add(query, &[]);
            }
        }
        let second = builder.finish(&first, SystemTime::now());
        assert!(second.get(pods, "cpu_usage").is_some(), "carried over");
        assert!(second.get(pods, "http_requests").is_none(), "listed, and gone");
        assert_eq!(second.summaries.len(), 0);

        let reloaded = crate::rules::RuleSet::custom(default_rules("2m").unwrap());
        let mut builder = Builder::new(&resources);
        for query in reloaded.series_queries() {
            builder.failed(&query);
        }
        let third = builder.finish(&second, SystemTime::now());
        assert!(third.is_empty(), "entries of replaced rules are not carried over");
    }
}
