//! external.metrics.k8s.io from external rules, against the real Prometheus.

use std::collections::BTreeMap;

use std::sync::Arc;

use custom_metrics_adapter::rules::{
    CompiledRule, GroupResource, ResourceMapping, RuleParams, RuleSet, default_rules, template::Template,
};
use serde_json::Value;

use crate::{serving::urlencode, support::*};

const E: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// An external rule at `position` that maps the `namespace` label.
fn external_rule(position: usize, series_query: &str, metrics_query: &str) -> RuleParams {
    RuleParams {
        position,
        line: 0,
        series_query: series_query.to_owned(),
        filters: vec![],
        name_matches: None,
        name_as: None,
        resources: ResourceMapping {
            overrides: BTreeMap::from([("namespace".to_owned(), GroupResource::core("namespace"))]),
            ..ResourceMapping::default()
        },
        namespaced: true,
        metrics_query: Template::parse(metrics_query).unwrap(),
    }
}

/// A namespaced external rule over `queue_depth`, and a cluster-wide one over every `_total` counter.
fn rules() -> RuleSet {
    let queue_depth = external_rule(
        0,
        r#"{__name__="queue_depth"}"#,
        "sum(<<.Series>>{<<.LabelMatchers>>}) by (pod)",
    );
    let cluster_wide = RuleParams {
        name_matches: Some(regex::Regex::new("^(.*)_total$").unwrap()),
        name_as: Some("${1}_across_cluster".to_owned()),
        namespaced: false,
        ..external_rule(
            1,
            r#"{__name__=~".*_total",namespace!=""}"#,
            "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m]))",
        )
    };
    let external = [queue_depth, cluster_wide]
        .into_iter()
        .map(|params| Arc::new(CompiledRule::new(params).unwrap()))
        .collect();
    RuleSet {
        external,
        ..RuleSet::custom(default_rules("2m").unwrap())
    }
}

fn items(body: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(body).unwrap();
    assert_eq!(list["kind"], "ExternalMetricValueList", "{body}");
    list["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn external_metrics_by_namespace_and_metric_labels() {
    let adapter = start_adapter(AdapterOptions {
        rules: Some(rules()),
        ..Default::default()
    })
    .await;
    let (status, body) = get(&adapter, &format!("{E}/namespaces/default/queue_depth")).await;
    assert_eq!(status, 200, "{body}");
    assert_golden("external_queue_depth", &body);
    let got = items(&body);
    assert_eq!(
        (got.len(), &got[0]["metricLabels"], &got[0]["value"]),
        (1, &serde_json::json!({"pod": "worker-0"}), &Value::from("42"))
    );

    let selected = format!(
        "{E}/namespaces/default/queue_depth?labelSelector={}",
        urlencode("pod=worker-0")
    );
    assert_eq!(get(&adapter, &selected).await.0, 200);
    let (status, body) = get(
        &adapter,
        &format!("{E}/namespaces/default/queue_depth?labelSelector=pod%3Dnone"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&adapter, &format!("{E}/namespaces/staging/queue_depth")).await;
    assert_eq!(status, 404, "no queue_depth in staging: {body}");

    // namespaced: false ignores the path's namespace.
    let (status, body) = get(
        &adapter,
        &format!("{E}/namespaces/anything/http_requests_across_cluster"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let value = quantity(items(&body)[0]["value"].as_str().unwrap());
    assert_close(value, SEED_SERVICE_RATE + 3.0 + 1.0 + 7.0, "cluster-wide rate");
    assert_eq!(items(&body)[0]["metricLabels"], serde_json::json!({}));
}

#[tokio::test]
async fn external_discovery_and_errors() {
    let adapter = start_adapter(AdapterOptions {
        rules: Some(rules()),
        ..Default::default()
    })
    .await;
    let (status, body) = get(&adapter, "/apis").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"{"name":"external.metrics.k8s.io","versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}]"#), "{body}");
    let (status, body) = get(&adapter, E).await;
    assert_eq!(status, 200);
    assert_golden("resources_external_v1beta1", &body);
    let (status, body) = get(&adapter, &format!("{E}/namespaces/default/no_such_metric")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("the server could not find the metric no_such_metric for namespaces"),
        "{body}"
    );
    let (status, _) = get(&adapter, &format!("{E}/queue_depth")).await;
    assert_eq!(status, 404, "root-scoped external paths do not exist");

    // Without external rules the group is still served, empty, so its APIService stays available.
    let plain = start_adapter(AdapterOptions::default()).await;
    assert_eq!(
        get(&plain, &format!("{E}/namespaces/default/queue_depth"))
            .await
            .0,
        404
    );
    let empty = "{\"kind\":\"APIResourceList\",\"apiVersion\":\"v1\",\"groupVersion\":\"external.metrics.k8s.io/v1beta1\",\"resources\":[]}\n";
    assert_eq!(get(&plain, E).await, (200, empty.to_owned()));
}

/// prometheus-adapter fills `.LabelValuesByName` of an external query from the request's
/// labelSelector (values `|`-joined) and, for a namespaced rule, the namespace.
#[tokio::test]
async fn label_values_by_name_come_from_the_label_selector() {
    let query = r#"sum(<<.Series>>{pod=~"<<index .LabelValuesByName "pod">>",namespace="<<index .LabelValuesByName "namespace">>"}) by (pod)"#;
    let mut set = rules();
    let rule = external_rule(0, r#"{__name__="queue_depth"}"#, query);
    set.external = vec![Arc::new(CompiledRule::new(rule).unwrap())];
    let adapter = start_adapter(AdapterOptions {
        rules: Some(set),
        ..Default::default()
    })
    .await;
    let selected = format!(
        "{E}/namespaces/default/queue_depth?labelSelector={}",
        urlencode("pod in (worker-0,worker-9)")
    );
    let (status, body) = get(&adapter, &selected).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        items(&body)[0]["metricLabels"],
        serde_json::json!({"pod": "worker-0"})
    );
}
