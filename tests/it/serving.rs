//! Metric values from the real Prometheus, in every group/version and request shape.

use serde_json::Value;

use crate::support::*;

/// (namespace, name, value) of each item.
fn values(body: &str) -> Vec<(String, String, f64)> {
    items(body)
        .iter()
        .map(|item| {
            let object = &item["describedObject"];
            (
                object["namespace"].as_str().unwrap_or("").to_owned(),
                object["name"].as_str().expect("name").to_owned(),
                quantity(item["value"].as_str().expect("value")),
            )
        })
        .collect()
}

#[tokio::test]
async fn seed_service_request_returns_the_true_rate() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let (status, body) = get(&adapter, SEED).await;
    assert_eq!(status, 200, "{body}");
    assert_golden("seed_service_v1beta1", &body);
    let items = items(&body);
    assert_eq!(items.len(), 1);
    assert_close(
        quantity(items[0]["value"].as_str().unwrap()),
        SEED_SERVICE_RATE,
        "service rate",
    );
    // The timestamp is Prometheus' sample time: recent, never in the future.
    let timestamp = items[0]["timestamp"].as_str().unwrap();
    let seconds = timestamp
        .parse::<jiff::Timestamp>()
        .expect("RFC 3339")
        .as_second();
    assert_eq!(
        timestamp.len(),
        "2018-11-30T20:56:34Z".len(),
        "second precision: {timestamp}"
    );
    assert!(
        seconds <= now_secs() && seconds >= now_secs() - 30,
        "timestamp {timestamp}"
    );
    assert!(body.ends_with("}\n"), "Go's encoder ends bodies with a newline");
}

#[tokio::test]
async fn every_group_version_serves_the_same_value() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    for (group_version, golden) in [
        ("custom.metrics.k8s.io/v1beta1", "seed_service_custom_v1beta1"),
        ("custom.metrics.k8s.io/v1beta2", "seed_service_custom_v1beta2"),
    ] {
        let path =
            format!("/apis/{group_version}/namespaces/default/services/sample-metrics-app/http_requests");
        let (status, body) = get(&adapter, &path).await;
        assert_eq!(status, 200, "{body}");
        assert_golden(golden, &body);
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["apiVersion"], group_version);
        assert_close(
            quantity(list["items"][0]["value"].as_str().unwrap()),
            SEED_SERVICE_RATE,
            group_version,
        );
    }
}

#[tokio::test]
async fn pods_by_name_and_by_wildcard_without_an_object_source() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/sample-metrics-app-1/http_requests",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_golden("pod_by_name_v1beta2", &body);
    let got = values(&body);
    assert_eq!(got.len(), 1);
    assert_close(got[0].2, 200.25, "pod 1");

    // `*` without an object source: every pod with samples in the namespace, none from `staging`.
    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_golden("pods_wildcard_v1beta1", &body);
    let got = values(&body);
    let names: Vec<&str> = got.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "backend-0",
            "ghost-0",
            "sample-metrics-app-0",
            "sample-metrics-app-1",
            "sample-metrics-app-2"
        ]
    );
    assert!(got.iter().all(|(ns, _, _)| ns == "default"));
    for (name, rate) in [
        ("backend-0", 3.0),
        ("sample-metrics-app-0", 100.5),
        ("sample-metrics-app-2", 200.734),
    ] {
        let value = got.iter().find(|(_, n, _)| n == name).unwrap().2;
        assert_close(value, rate, name);
    }
}

#[tokio::test]
async fn label_selector_returns_exactly_the_matching_pods_with_samples() {
    let adapter = TestAdapter::start(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML.into()),
        ..Default::default()
    })
    .await;
    let names = |body: &str| {
        values(body)
            .into_iter()
            .map(|(_, name, _)| name)
            .collect::<Vec<_>>()
    };
    let path = |selector: &str| {
        format!(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests?labelSelector={}",
            urlencode(selector)
        )
    };
    // sample-metrics-app-3 matches but has no samples; ghost-0 has samples but no object.
    let cases: [(&str, &[&str]); 5] = [
        (
            "app=sample-metrics-app",
            &[
                "sample-metrics-app-0",
                "sample-metrics-app-1",
                "sample-metrics-app-2",
            ],
        ),
        ("app in (backend,worker)", &["backend-0"]),
        ("app!=sample-metrics-app", &["backend-0"]),
        (
            "tier,app==sample-metrics-app",
            &[
                "sample-metrics-app-0",
                "sample-metrics-app-1",
                "sample-metrics-app-2",
            ],
        ),
        (
            "",
            &[
                "backend-0",
                "sample-metrics-app-0",
                "sample-metrics-app-1",
                "sample-metrics-app-2",
            ],
        ),
    ];
    for (selector, expected) in cases {
        let (status, body) = get(&adapter, &path(selector)).await;
        assert_eq!(status, 200, "{selector}: {body}");
        assert_eq!(names(&body), expected, "labelSelector {selector:?}");
    }
    let (_, body) = get(&adapter, &path("app=sample-metrics-app")).await;
    let total: f64 = values(&body).iter().map(|(_, _, v)| v).sum();
    assert_close(total, SEED_SERVICE_RATE, "sum over the selected pods");
}

#[tokio::test]
async fn metric_label_selector_filters_series_and_is_echoed() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    for (version, golden) in [
        ("v1beta1", "metric_selector_v1beta1"),
        ("v1beta2", "metric_selector_v1beta2"),
    ] {
        let path = format!(
            "/apis/custom.metrics.k8s.io/{version}/namespaces/default/pods/*/http_requests?metricLabelSelector={}",
            urlencode("code=500")
        );
        let (status, body) = get(&adapter, &path).await;
        assert_eq!(status, 200, "{body}");
        assert_golden(golden, &body);
        let got = values(&body);
        assert_eq!(got.len(), 1, "only pod 0 has code 500 series: {body}");
        assert_close(got[0].2, 0.5, "code 500 rate");
    }
}

#[tokio::test]
async fn namespace_metrics_and_root_scoped_namespaces() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/staging/metrics/http_requests",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_golden("namespace_metric_v1beta1", &body);
    let got = values(&body);
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        ("", "staging"),
        "namespaces are cluster-scoped"
    );
    assert_close(got[0].2, 7.0, "staging total");

    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/*/http_requests",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = values(&body);
    let names: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["default", "staging"]);
    assert_close(got[0].2, SEED_SERVICE_RATE + 3.0 + 1.0, "default total");
}

#[tokio::test]
async fn gauges_seconds_counters_and_resource_spellings() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/worker-0/queue_depth",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(items(&body)[0]["value"], "42");
    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/backend-0/process_cpu",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_close(values(&body)[0].2, 0.25, "process_cpu_seconds_total rate");
    for resource in ["pod", "po", "pods.", "Pods"] {
        let path = format!(
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/{resource}/backend-0/http_requests"
        );
        let (status, body) = get(&adapter, &path).await;
        assert_eq!(status, 200, "{resource}: {body}");
        assert_eq!(items(&body)[0]["describedObject"]["kind"], "Pod");
    }
    for resource in ["service", "svc", "services."] {
        let path = format!(
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/{resource}/backend/http_requests"
        );
        let (status, body) = get(&adapter, &path).await;
        assert_eq!(status, 200, "{resource}: {body}");
        assert_close(values(&body)[0].2, 3.0, resource);
    }
    // Cluster-wide pods keep each item's namespace.
    let (status, body) = get(
        &adapter,
        "/apis/custom.metrics.k8s.io/v1beta1/pods/*/http_requests",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = values(&body);
    assert!(
        got.iter()
            .any(|(ns, name, _)| ns == "staging" && name == "sample-metrics-app-0"),
        "{body}"
    );
    assert!(
        got.iter()
            .any(|(ns, name, _)| ns == "default" && name == "sample-metrics-app-0"),
        "{body}"
    );
}
