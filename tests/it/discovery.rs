//! Discovery documents, health, version and OpenAPI.

use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn discovery_documents() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    for (path, golden) in [
        ("/apis", "apis"),
        ("/apis/custom.metrics.k8s.io", "group_custom"),
        ("/apis/custom-metrics.metrics.k8s.io", "group_custom_metrics"),
        ("/apis/custom.metrics.k8s.io/v1beta2", "resources_custom_v1beta2"),
        (
            "/apis/custom-metrics.metrics.k8s.io/v1beta1",
            "resources_custom_metrics_v1beta1",
        ),
    ] {
        let (status, body) = get(&adapter, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_golden(golden, &body);
    }
    let (_, body) = get(&adapter, "/apis/custom.metrics.k8s.io/v1beta1").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for expected in [
        "pods/http_requests",
        "services/http_requests",
        "namespaces/http_requests",
        "pods/queue_depth",
        "pods/process_cpu",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let namespaced = |name: &str| {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["namespaced"]
            .clone()
    };
    assert_eq!(namespaced("namespaces/http_requests"), false);
    assert_eq!(namespaced("pods/http_requests"), true);
}

#[tokio::test]
async fn empty_discovery_is_an_empty_array() {
    // A rule whose series query matches nothing: discovery succeeds and finds no metric.
    let adapter = TestAdapter::start(AdapterOptions {
        rules_yaml: Some(
            "rules:\n- seriesQuery: '{__name__=\"no_such_series\"}'\n  resources: {template: '<<.Resource>>'}\n  \
             metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'\n"
                .into(),
        ),
        ..Default::default()
    })
    .await;
    let (status, body) = get(&adapter, "/apis/custom.metrics.k8s.io/v1beta1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "{\"kind\":\"APIResourceList\",\"apiVersion\":\"v1\",\"groupVersion\":\"custom.metrics.k8s.io/v1beta1\",\"resources\":[]}\n"
    );
}

#[tokio::test]
async fn health_version_and_openapi() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(get(&adapter, path).await, (200, "ok".to_owned()), "{path}");
    }
    // Without a reachable Prometheus no relist succeeds: alive, not ready, and saying why.
    let unreachable = TestAdapter::start(AdapterOptions {
        flags: vec![format!("--prometheus-url=http://127.0.0.1:{}", free_port())],
        unready: true,
        ..Default::default()
    })
    .await;
    assert_eq!(get(&unreachable, "/healthz").await, (200, "ok".to_owned()));
    let (status, body) = get(&unreachable, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("[-]metric-discovery failed"), "{body}");

    let (status, body) = get(&adapter, "/version").await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["gitVersion"], concat!("v", env!("CARGO_PKG_VERSION")));
    assert!(
        body.starts_with(r#"{"major":"","minor":"","gitVersion":"#),
        "Go field order: {body}"
    );

    let (status, body) = get(&adapter, "/openapi/v2").await;
    assert_eq!(status, 200);
    let spec: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(spec["swagger"], "2.0");
    assert!(spec["paths"]["/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/{resource}/{name}/{metric}"]["get"].is_object());
}
