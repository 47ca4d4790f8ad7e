//! external.metrics.k8s.io from external rules, against the real Prometheus.

use serde_json::Value;

use crate::support::*;

const E: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// A namespaced external rule over `queue_depth`, and a cluster-wide one over every `_total` counter.
const RULES: &str = r#"
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (pod)'
- seriesQuery: '{__name__=~".*_total",namespace!=""}'
  resources:
    namespaced: false
    overrides:
      namespace: {resource: namespace}
  name:
    matches: '^(.*)_total$'
    as: '${1}_across_cluster'
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m]))'
"#;

/// The items of an ExternalMetricValueList.
fn external_items(body: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(body).unwrap();
    assert_eq!(list["kind"], "ExternalMetricValueList", "{body}");
    items(body)
}

#[tokio::test]
async fn external_metrics_by_namespace_and_metric_labels() {
    let adapter = TestAdapter::start(AdapterOptions {
        rules_yaml: Some(RULES.into()),
        ..Default::default()
    })
    .await;
    let (status, body) = get(&adapter, &format!("{E}/namespaces/default/queue_depth")).await;
    assert_eq!(status, 200, "{body}");
    assert_golden("external_queue_depth", &body);
    let got = external_items(&body);
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
    let value = quantity(external_items(&body)[0]["value"].as_str().unwrap());
    assert_close(value, SEED_SERVICE_RATE + 3.0 + 1.0 + 7.0, "cluster-wide rate");
    assert_eq!(external_items(&body)[0]["metricLabels"], serde_json::json!({}));
}

#[tokio::test]
async fn external_discovery_and_errors() {
    let adapter = TestAdapter::start(AdapterOptions {
        rules_yaml: Some(RULES.into()),
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
    let plain = TestAdapter::start(AdapterOptions::default()).await;
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
    let rules = r#"
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: 'sum(<<.Series>>{pod=~"<<index .LabelValuesByName "pod">>",namespace="<<index .LabelValuesByName "namespace">>"}) by (pod)'
"#;
    let adapter = TestAdapter::start(AdapterOptions {
        rules_yaml: Some(rules.into()),
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
        external_items(&body)[0]["metricLabels"],
        serde_json::json!({"pod": "worker-0"})
    );
}
