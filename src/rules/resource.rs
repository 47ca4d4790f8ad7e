//! `resourceRules`: the cpu and memory queries behind `metrics.k8s.io`, compiled once, and the
//! PromQL prometheus-adapter's resource provider (pkg/resourceprovider) renders from them.

use std::{collections::BTreeMap, time::Duration};

use super::{Error, Result, naming::LabelMapping, promql, rule::template_value, template::Template};
use crate::objects::{ResourceInfo, Resources};

/// `resourceRules`, ready to render queries.
#[derive(Debug, Clone)]
pub struct ResourceRules {
    pub cpu: ResourceRule,
    pub memory: ResourceRule,
    /// The window reported in NodeMetrics and PodMetrics; zero when not set, as in prometheus-adapter.
    pub window: Duration,
    /// The config line `resourceRules` starts on.
    pub line: u64,
}

/// `resourceRules.cpu` or `resourceRules.memory`.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    /// `cpu` or `memory`, for messages.
    pub name: &'static str,
    pub container_query: Template,
    pub node_query: Template,
    pub resources: LabelMapping,
    pub container_label: String,
}

/// Which pods a container query asks for.
#[derive(Debug, Clone, Copy)]
pub struct PodSelection<'a> {
    /// The pods' namespace. None only when there is no pod list to split by namespace (no object
    /// source): then the query also groups by the namespace label, which prometheus-adapter, always
    /// having the list, never needs.
    pub namespace: Option<&'a str>,
    /// The pods; None selects every pod that has samples.
    pub names: Option<&'a [String]>,
}

/// A rendered container or node query and the labels that map its samples back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub promql: String,
    /// The label naming the pod or node.
    pub object_label: String,
    /// Set when samples carry their namespace (a pod query without a namespace).
    pub namespace_label: Option<String>,
}

/// A sample's value as usage: NaN and negative values count as 0, as in prometheus-adapter.
pub fn usage_value(sample: f64) -> f64 {
    if sample.is_nan() || sample < 0.0 {
        0.0
    } else {
        sample
    }
}

impl ResourceRule {
    fn label(&self, resource: &ResourceInfo, resources: &Resources) -> Result<String> {
        self.resources
            .label_for_resource(resource, resources)
            .ok_or_else(|| Error::ResourceRule {
                rule: self.name,
                message: format!("resources maps no label to {}", resource.group_resource()),
            })
    }

    /// The node query: grouped by the node label, as prometheus-adapter's
    /// `nodeQuery.Build("", nodes, "", nil, ...)`.
    pub fn node_query(&self, names: Option<&[String]>, resources: &Resources) -> Result<UsageQuery> {
        let nodes = resources
            .resolve("nodes")
            .cloned()
            .unwrap_or_else(ResourceInfo::node);
        let node_label = self.label(&nodes, resources)?;
        let mut values = BTreeMap::new();
        let matcher = object_matcher(&node_label, names, &mut values);
        let promql = self.render(
            &self.node_query,
            "nodeQuery",
            &[matcher],
            std::slice::from_ref(&node_label),
            &values,
        )?;
        Ok(UsageQuery {
            promql,
            object_label: node_label,
            namespace_label: None,
        })
    }

    /// The container query for pods of one namespace: the namespace matcher, then the pods, grouped
    /// by the pod label and the container label, as prometheus-adapter's
    /// `containerQuery.Build("", pods, namespace, [containerLabel], ...)`.
    pub fn container_query(&self, pods: PodSelection<'_>, resources: &Resources) -> Result<UsageQuery> {
        let pods_resource = resources.resolve("pods").ok_or_else(|| Error::ResourceRule {
            rule: self.name,
            message: "pods are not a known resource".into(),
        })?;
        let namespaces = resources.namespaces().ok_or_else(|| Error::ResourceRule {
            rule: self.name,
            message: "namespaces are not a known resource".into(),
        })?;
        let pod_label = self.label(pods_resource, resources)?;
        let namespace_label = self.label(namespaces, resources)?;
        let mut matchers = Vec::new();
        let mut values = BTreeMap::new();
        let mut group_by = vec![pod_label.clone(), self.container_label.clone()];
        match pods.namespace {
            Some(namespace) => {
                matchers.push(promql::matcher(&namespace_label, promql::MatchOp::Eq, namespace));
                values.insert(namespace_label.clone(), vec![template_value(namespace)]);
            }
            None => group_by.push(namespace_label.clone()),
        }
        matchers.push(object_matcher(&pod_label, pods.names, &mut values));
        let promql = self.render(
            &self.container_query,
            "containerQuery",
            &matchers,
            &group_by,
            &values,
        )?;
        Ok(UsageQuery {
            promql,
            object_label: pod_label,
            namespace_label: pods.namespace.is_none().then_some(namespace_label),
        })
    }

    fn render(
        &self,
        query: &Template,
        field: &str,
        matchers: &[String],
        group_by: &[String],
        values: &BTreeMap<String, Vec<String>>,
    ) -> Result<String> {
        super::template::render_metrics_query(query, "", matchers, group_by, values).map_err(|err| {
            Error::ResourceRule {
                rule: self.name,
                message: format!("{field}: {err}"),
            }
        })
    }
}

/// The matcher for the named objects (every object with a sample when None), recording the names
/// in `.LabelValuesByName`.
fn object_matcher(
    label: &str,
    names: Option<&[String]>,
    values: &mut BTreeMap<String, Vec<String>>,
) -> String {
    match names {
        Some(names) => {
            values.insert(
                label.to_owned(),
                names.iter().map(|n| template_value(n)).collect(),
            );
            promql::names_matcher(label, names)
        }
        None => promql::matcher(label, promql::MatchOp::Ne, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{GroupResource, ResourceMapping};

    fn rule(query: &str) -> ResourceRule {
        let overrides = ["namespace", "pod", "node"]
            .map(|label| (label.to_owned(), GroupResource::core(label)))
            .into();
        ResourceRule {
            name: "memory",
            container_query: Template::parse(query).unwrap(),
            node_query: Template::parse(query).unwrap(),
            resources: LabelMapping::new(ResourceMapping {
                overrides,
                ..ResourceMapping::default()
            })
            .unwrap(),
            container_label: "container".into(),
        }
    }

    /// prometheus-adapter's `containerQuery.Build("", pods, namespace, [containerLabel], ...)`:
    /// grouped by the pod label and the container label, the namespace a matcher.
    #[test]
    fn container_queries_group_by_pod_and_container() {
        let resources = Resources::default();
        let rule = rule("<<.GroupBy>> <<.GroupBySlice>> {<<.LabelMatchers>>} <<.LabelValuesByName>>");
        let names = ["a".to_owned(), "b".to_owned()];
        let pods = PodSelection {
            namespace: Some("ns"),
            names: Some(&names),
        };
        let query = rule.container_query(pods, &resources).unwrap();
        assert_eq!(
            query.promql,
            r#"pod,container [pod container] {namespace="ns",pod=~"a|b"} map[namespace:ns pod:a|b]"#
        );
        assert_eq!(
            (query.object_label.as_str(), query.namespace_label),
            ("pod", None)
        );
        // Without a pod list there is no namespace to query one by one: samples carry it.
        let everything = PodSelection {
            namespace: None,
            names: None,
        };
        let query = rule.container_query(everything, &resources).unwrap();
        assert_eq!(
            query.promql,
            r#"pod,container,namespace [pod container namespace] {pod!=""} map[]"#
        );
        assert_eq!(query.namespace_label.as_deref(), Some("namespace"));
        let query = rule.node_query(Some(&names[..1]), &resources).unwrap();
        assert_eq!(query.promql, r#"node [node] {node="a"} map[node:a]"#);
    }

    #[test]
    fn usage_is_never_negative() {
        assert_eq!(usage_value(f64::NAN), 0.0);
        assert_eq!(usage_value(-1.0), 0.0);
        assert_eq!(usage_value(2.5), 2.5);
    }
}
