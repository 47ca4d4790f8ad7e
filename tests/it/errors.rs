//! Every error is a Status with the right code, reason and a message naming the failed stage.

use std::time::Duration;

use serde_json::Value;

use crate::{serving::urlencode, support::*};

const P: &str = "/apis/custom.metrics.k8s.io/v1beta1";

async fn status_of(adapter: &Adapter, path: &str) -> (u16, Value, String) {
    let (code, body) = get(adapter, path).await;
    let status: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
    assert_eq!(status["kind"], "Status", "{body}");
    assert_eq!(status["apiVersion"], "v1", "{body}");
    assert_eq!(status["status"], "Failure", "{body}");
    assert_eq!(status["code"], code, "HTTP code and Status code agree: {body}");
    (code, status, body)
}

fn message(status: &Value) -> &str {
    status["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn metric_not_discovered_names_the_closest_metric() {
    let adapter = start_adapter(AdapterOptions::default()).await;
    let (code, status, body) =
        status_of(&adapter, &format!("{P}/namespaces/default/pods/*/http_request")).await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
    assert!(
        message(&status).starts_with("the server could not find the metric http_request for pods: "),
        "{body}"
    );
    assert!(message(&status).contains("did you mean http_requests?"), "{body}");
    assert_golden("error_metric_not_found", &body);

    // queue_depth exists, but not for services.
    let (code, status, _) = status_of(
        &adapter,
        &format!("{P}/namespaces/default/services/web/queue_depth"),
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        message(&status).contains("it is served for namespaces, pods"),
        "{}",
        message(&status)
    );

    let (code, status, _) = status_of(
        &adapter,
        &format!("{P}/namespaces/default/deployments/web/http_requests"),
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        message(&status).contains("\"deployments\" is not a resource this server knows"),
        "{}",
        message(&status)
    );
}

#[tokio::test]
async fn selector_matching_no_objects_and_objects_without_samples() {
    let adapter = start_adapter(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML),
        ..Default::default()
    })
    .await;
    let path = format!(
        "{P}/namespaces/default/pods/*/http_requests?labelSelector={}",
        urlencode("app=nothing")
    );
    let (code, status, body) = status_of(&adapter, &path).await;
    assert_eq!(code, 404);
    assert!(
        message(&status).contains("labelSelector \"app=nothing\" matched no pods in namespace \"default\""),
        "{body}"
    );
    assert_golden("error_selector_matched_nothing", &body);

    // The object exists but Prometheus has no series for it.
    let (code, status, body) = status_of(
        &adapter,
        &format!("{P}/namespaces/default/pods/sample-metrics-app-3/http_requests"),
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        message(&status).contains("Prometheus returned no samples of http_requests_total"),
        "{body}"
    );
    assert!(
        message(&status).contains("looked for the label \"pod\""),
        "{body}"
    );
    assert_golden("error_no_samples", &body);

    // Not an object at all.
    let (code, status, _) = status_of(
        &adapter,
        &format!("{P}/namespaces/default/pods/ghost-0/http_requests"),
    )
    .await;
    assert_eq!(code, 404);
    assert!(
        message(&status).contains("pod \"ghost-0\" does not exist in namespace \"default\""),
        "{}",
        message(&status)
    );

    // Matching objects, none with samples.
    let path = format!(
        "{P}/namespaces/default/pods/*/queue_depth?labelSelector={}",
        urlencode("app=backend")
    );
    let (code, status, _) = status_of(&adapter, &path).await;
    assert_eq!(code, 404);
    assert!(
        message(&status).contains("for the 1 matching pods"),
        "{}",
        message(&status)
    );
}

#[tokio::test]
async fn samples_that_are_not_numbers_are_never_served() {
    let adapter = start_adapter(AdapterOptions::default()).await;
    let (code, status, body) = status_of(
        &adapter,
        &format!("{P}/namespaces/default/pods/worker-0/temperature_celsius"),
    )
    .await;
    assert_eq!(code, 404);
    assert!(message(&status).contains("was not a number"), "{body}");
    let (code, status, body) = status_of(
        &adapter,
        &format!("{P}/namespaces/default/pods/worker-0/huge_value"),
    )
    .await;
    assert_eq!(code, 404, "1e20 does not fit an int64 of milli-units: {body}");
    assert!(
        message(&status).contains("was not a number") || message(&status).contains("range"),
        "{body}"
    );
    // A wildcard leaves such samples out instead of failing everything.
    let (code, body) = get(
        &adapter,
        &format!("{P}/namespaces/default/pods/*/temperature_celsius"),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(!body.contains("-9223372036854775808"), "never MinInt64: {body}");
}

#[tokio::test]
async fn bad_selectors_are_400() {
    let adapter = start_adapter(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML),
        ..Default::default()
    })
    .await;
    for (param, selector) in [
        ("labelSelector", "app in (a"),
        ("metricLabelSelector", "code in (a"),
        ("labelSelector", "a=b=c"),
    ] {
        let path = format!(
            "{P}/namespaces/default/pods/*/http_requests?{param}={}",
            urlencode(selector)
        );
        let (code, status, body) = status_of(&adapter, &path).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (400, Some("BadRequest")),
            "{selector}: {body}"
        );
        assert!(
            message(&status).starts_with(&format!("invalid {param}: ")),
            "{body}"
        );
    }
    // Numeric comparisons have no PromQL matcher; `!=` has no LabelSelector form to echo.
    for selector in ["code>400", "code!=500"] {
        let path = format!(
            "{P}/namespaces/default/pods/*/http_requests?metricLabelSelector={}",
            urlencode(selector)
        );
        let (code, _, body) = status_of(&adapter, &path).await;
        assert_eq!(code, 400, "{selector}: {body}");
    }
}

#[tokio::test]
async fn label_selector_without_an_object_source_is_refused_clearly() {
    let adapter = start_adapter(AdapterOptions::default()).await;
    let path = format!(
        "{P}/namespaces/default/pods/*/http_requests?labelSelector={}",
        urlencode("app=web")
    );
    let (code, status, body) = status_of(&adapter, &path).await;
    assert_eq!(code, 400);
    assert!(message(&status).contains("--objects-file"), "{body}");
    assert_golden("error_selector_needs_objects", &body);
}

#[tokio::test]
async fn prometheus_unreachable_is_503_and_timeout_is_504() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let adapter = start_adapter(AdapterOptions {
        query_url: Some(format!("http://{closed}")),
        ..Default::default()
    })
    .await;
    let (code, status, body) =
        status_of(&adapter, &format!("{P}/namespaces/default/pods/*/http_requests")).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (503, Some("ServiceUnavailable")),
        "{body}"
    );
    assert!(message(&status).contains("unreachable"), "{body}");
    assert_golden("error_prometheus_unreachable", &body);

    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let adapter = start_adapter(AdapterOptions {
        query_url: Some(format!("http://{silent_addr}")),
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    let (code, status, body) =
        status_of(&adapter, &format!("{P}/namespaces/default/pods/*/http_requests")).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (504, Some("Timeout")),
        "{body}"
    );
    assert!(message(&status).contains("did not answer within 500ms"), "{body}");
    hold.abort();
}

#[tokio::test]
async fn prometheus_rejecting_the_query_is_500() {
    // Prometheus' own 404 page answers every API path with a non-API body.
    let adapter = start_adapter(AdapterOptions {
        query_url: Some(format!("{}/no-such-prefix", env().prometheus_url)),
        ..Default::default()
    })
    .await;
    let (code, status, body) =
        status_of(&adapter, &format!("{P}/namespaces/default/pods/*/http_requests")).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (500, Some("InternalError")),
        "{body}"
    );
    assert!(
        message(&status).starts_with("Internal error occurred: unable to fetch metrics"),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let adapter = start_adapter(AdapterOptions::default()).await;
    for path in [
        "/apis/no.such.group",
        "/apis/custom.metrics.k8s.io/v9",
        "/apis/custom.metrics.k8s.io/v1beta1/a/b",
        "/nothing",
    ] {
        let (code, status, body) = status_of(&adapter, path).await;
        assert_eq!(code, 404, "{path}");
        assert_eq!(
            message(&status),
            "the server could not find the requested resource",
            "{path}"
        );
        if path == "/nothing" {
            assert_golden("error_unknown_route", &body);
        }
    }
    let response = https()
        .post(adapter.url(&format!("{P}/namespaces/default/pods/*/http_requests")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let status: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(status["reason"], "MethodNotAllowed");
}
