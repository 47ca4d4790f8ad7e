//! Every error is a Status with the right code, reason and a message naming the failed stage.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const P: &str = "/apis/custom.metrics.k8s.io/v1beta1";

/// GETs `path`, checks it is a Failure Status with `code` and `reason` whose message contains
/// every text of `says`, and returns the body.
async fn expect_error(adapter: &TestAdapter, path: &str, code: u16, reason: &str, says: &[&str]) -> String {
    let (got, body) = get(adapter, path).await;
    let status: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}"));
    assert_eq!(
        (&status["kind"], &status["apiVersion"], &status["status"]),
        (
            &Value::from("Status"),
            &Value::from("v1"),
            &Value::from("Failure")
        ),
        "{body}"
    );
    assert_eq!(
        (got, status["code"].as_u64(), status["reason"].as_str()),
        (code, Some(code.into()), Some(reason)),
        "{path}: {body}"
    );
    let message = status["message"].as_str().unwrap_or_default();
    for text in says {
        assert!(
            message.contains(text),
            "{path}: the message lacks {text:?}: {message}"
        );
    }
    body
}

fn with_selector(path: &str, param: &str, selector: &str) -> String {
    format!("{P}{path}?{param}={}", urlencode(selector))
}

#[tokio::test]
async fn metric_not_discovered_names_the_closest_metric() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let body = expect_error(
        &adapter,
        &format!("{P}/namespaces/default/pods/*/http_request"),
        404,
        "NotFound",
        &[
            "the server could not find the metric http_request for pods: ",
            "did you mean http_requests?",
        ],
    )
    .await;
    assert_golden("error_metric_not_found", &body);
    // queue_depth exists, but not for services.
    let path = format!("{P}/namespaces/default/services/web/queue_depth");
    expect_error(
        &adapter,
        &path,
        404,
        "NotFound",
        &["it is served for namespaces, pods"],
    )
    .await;
    let path = format!("{P}/namespaces/default/deployments/web/http_requests");
    expect_error(
        &adapter,
        &path,
        404,
        "NotFound",
        &["\"deployments\" is not a resource this server knows"],
    )
    .await;
}

#[tokio::test]
async fn selector_matching_no_objects_and_objects_without_samples() {
    let adapter = TestAdapter::start(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML.into()),
        ..Default::default()
    })
    .await;
    let path = with_selector(
        "/namespaces/default/pods/*/http_requests",
        "labelSelector",
        "app=nothing",
    );
    let says = ["labelSelector \"app=nothing\" matched no pods in namespace \"default\""];
    let body = expect_error(&adapter, &path, 404, "NotFound", &says).await;
    assert_golden("error_selector_matched_nothing", &body);

    // The object exists but Prometheus has no series for it.
    let path = format!("{P}/namespaces/default/pods/sample-metrics-app-3/http_requests");
    let says = [
        "Prometheus returned no samples of http_requests_total",
        "looked for the label \"pod\"",
    ];
    let body = expect_error(&adapter, &path, 404, "NotFound", &says).await;
    assert_golden("error_no_samples", &body);

    // Not an object at all.
    let path = format!("{P}/namespaces/default/pods/ghost-0/http_requests");
    expect_error(
        &adapter,
        &path,
        404,
        "NotFound",
        &["pod \"ghost-0\" does not exist in namespace \"default\""],
    )
    .await;

    // Matching objects, none with samples.
    let path = with_selector(
        "/namespaces/default/pods/*/queue_depth",
        "labelSelector",
        "app=backend",
    );
    expect_error(&adapter, &path, 404, "NotFound", &["for the 1 matching pods"]).await;
}

#[tokio::test]
async fn samples_that_are_not_numbers_are_never_served() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let path = format!("{P}/namespaces/default/pods/worker-0/temperature_celsius");
    expect_error(&adapter, &path, 404, "NotFound", &["was not a number", "NaN"]).await;
    // 1e20 does not fit an int64 of milli-units.
    let path = format!("{P}/namespaces/default/pods/worker-0/huge_value");
    expect_error(&adapter, &path, 404, "NotFound", &["was not a number"]).await;
    // A wildcard leaves such samples out; with nothing left it says why.
    let path = format!("{P}/namespaces/default/pods/*/temperature_celsius");
    let body = expect_error(&adapter, &path, 404, "NotFound", &["was not a number"]).await;
    assert!(!body.contains("-9223372036854775808"), "never MinInt64: {body}");
}

#[tokio::test]
async fn bad_selectors_are_400() {
    let adapter = TestAdapter::start(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML.into()),
        ..Default::default()
    })
    .await;
    let cases = [
        ("labelSelector", "app in (a"),
        ("labelSelector", "a=b=c"),
        ("metricLabelSelector", "code in (a"),
        // Numeric comparisons have no PromQL matcher; `!=` has no LabelSelector form to echo.
        ("metricLabelSelector", "code>400"),
        ("metricLabelSelector", "code!=500"),
    ];
    for (param, selector) in cases {
        let path = with_selector("/namespaces/default/pods/*/http_requests", param, selector);
        expect_error(
            &adapter,
            &path,
            400,
            "BadRequest",
            &[&format!("invalid {param}: ")],
        )
        .await;
    }
}

#[tokio::test]
async fn label_selector_without_an_object_source_is_refused_clearly() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let path = with_selector(
        "/namespaces/default/pods/*/http_requests",
        "labelSelector",
        "app=web",
    );
    let body = expect_error(&adapter, &path, 400, "BadRequest", &["--objects-file"]).await;
    assert_golden("error_selector_needs_objects", &body);
}

#[tokio::test]
async fn prometheus_unreachable_is_503_and_timeout_is_504() {
    let wildcard = format!("{P}/namespaces/default/pods/*/http_requests");
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let adapter = TestAdapter::start(AdapterOptions {
        query_url: Some(format!("http://{closed}")),
        ..Default::default()
    })
    .await;
    let body = expect_error(&adapter, &wildcard, 503, "ServiceUnavailable", &["unreachable"]).await;
    assert_golden("error_prometheus_unreachable", &body);
    // Where Prometheus is, and what the connection library said, is for the log only.
    assert!(
        !body.contains(&closed.to_string()) && !body.contains("/api/v1"),
        "{body}"
    );

    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let adapter = TestAdapter::start(AdapterOptions {
        query_url: Some(format!("http://{silent_addr}")),
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    })
    .await;
    expect_error(
        &adapter,
        &wildcard,
        504,
        "Timeout",
        &["did not answer within 500ms"],
    )
    .await;
    hold.abort();
}

#[tokio::test]
async fn prometheus_rejecting_the_query_is_500() {
    // Prometheus answers unknown paths with its 404 page, which is not its API's JSON.
    let query_url = Some(format!("{}/no-such-prefix", env().prometheus_url));
    let adapter = TestAdapter::start(AdapterOptions {
        query_url,
        ..Default::default()
    })
    .await;
    let path = format!("{P}/namespaces/default/pods/*/http_requests");
    let says = ["Internal error occurred: unable to fetch metrics", "HTTP 404"];
    expect_error(&adapter, &path, 500, "InternalError", &says).await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    for path in [
        "/apis/no.such.group",
        "/apis/custom.metrics.k8s.io/v9",
        "/apis/custom.metrics.k8s.io/v1beta1/a/b",
        "/nothing",
    ] {
        let says = ["the server could not find the requested resource"];
        let body = expect_error(&adapter, path, 404, "NotFound", &says).await;
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

#[tokio::test]
async fn malformed_paths_and_queries_are_statuses() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    // Percent-encodings that are not UTF-8, in the path and in the query.
    for path in [
        format!("{P}/namespaces/%FF/pods/*/http_requests"),
        format!("{P}/namespaces/default/pods/*/http_requests?labelSelector=%FF"),
    ] {
        expect_error(&adapter, &path, 400, "BadRequest", &[]).await;
    }
}

/// Paths and queries a fuzzer would send, from a fixed seed: segments of every route shape mixed
/// with escapes good and bad, non-ASCII, dots, empty segments, selectors with stray operators.
fn fuzzed_paths(count: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        "apis",
        "custom.metrics.k8s.io",
        "custom-metrics.metrics.k8s.io",
        "external.metrics.k8s.io",
        "metrics.k8s.io",
        "v1beta1",
        "v1beta2",
        "namespaces",
        "default",
        "pods",
        "*",
        "%2A",
        "services",
        "sample-metrics-app",
        "http_requests",
        "metrics",
        "nodes",
        "deployments.apps",
        "%zz",
        "%FF",
        "%",
        "%2F",
        "%00",
        "..",
        ".",
        "",
        "é",
        "%C3%A9",
        "a b",
        "\u{1F600}",
        "{x}",
        "%252A",
        "pods.",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];
    const QUERIES: &[&str] = &[
        "",
        "?labelSelector=app%3Dx",
        "?labelSelector=%FF",
        "?labelSelector=a+in+(",
        "?labelSelector=!!",
        "?metricLabelSelector=code%3D%22%7D",
        "?metricLabelSelector=a%3E1",
        "?fieldSelector=metadata.name%3Dx",
        "?fieldSelector=spec.x%3D1",
        "?pretty=true",
        "?labelSelector=a&labelSelector=b",
        "?%zz=1",
        "?=",
        "?labelSelector=",
        "?labelSelector=a%20notin%20()",
    ];
    let mut state: u64 = 0x5eed;
    let mut next = move |bound: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound
    };
    (0..count)
        .map(|_| {
            let mut path = String::new();
            for _ in 0..1 + next(9) {
                path.push('/');
                path.push_str(PIECES[next(PIECES.len())]);
            }
            path.push_str(QUERIES[next(QUERIES.len())]);
            path
        })
        .collect()
}

#[tokio::test]
async fn every_error_answer_to_fuzzed_paths_is_a_status() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let client = https();
    let mut checked = 0;
    for path in fuzzed_paths(1500) {
        let Ok(url) = reqwest::Url::parse(&adapter.url(&path)) else {
            continue;
        };
        let response = client.get(url).send().await.unwrap();
        let code = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.unwrap();
        if code < 400 {
            continue;
        }
        checked += 1;
        assert_eq!(content_type, "application/json", "{path}: {code} {body}");
        let status: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {code} {body}"));
        assert_eq!(status["kind"], "Status", "{path}: {body}");
        assert_eq!(status["code"], code, "{path}: {body}");
        assert!(
            !body.contains("127.0.0.1") && !body.contains("http://"),
            "{path}: an internal address in {body}"
        );
    }
    assert!(checked > 500, "only {checked} error answers checked");
}
