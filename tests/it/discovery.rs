//! Discovery documents, health, version and OpenAPI.

use std::time::Duration;

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

/// A discovery GET with `headers`: status, response headers and the raw (undecoded) body.
async fn get_raw(
    adapter: &TestAdapter,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = https().get(adapter.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut decoded).expect("gzip body");
    decoded
}

#[tokio::test]
async fn discovery_has_a_stable_etag_and_answers_if_none_match_with_304() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    for path in [
        "/apis",
        "/apis/custom.metrics.k8s.io",
        "/apis/custom.metrics.k8s.io/v1beta2",
        "/apis/external.metrics.k8s.io/v1beta1",
    ] {
        let (status, headers, body) = get_raw(&adapter, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        let etag = header(&headers, "etag").to_owned();
        assert!(
            etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
            "{path}: a strong ETag, got {etag:?}"
        );
        assert_eq!(header(&headers, "vary"), "Accept-Encoding", "{path}");
        let (_, again, again_body) = get_raw(&adapter, path, &[]).await;
        assert_eq!(
            header(&again, "etag"),
            etag,
            "{path}: the same tag while nothing changes"
        );
        assert_eq!(again_body, body, "{path}");

        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        for matching in [etag.as_str(), "*", weak.as_str(), listed.as_str()] {
            let (status, headers, body) = get_raw(&adapter, path, &[("if-none-match", matching)]).await;
            assert_eq!(status, 304, "{path} If-None-Match: {matching}");
            assert!(body.is_empty(), "{path}: a 304 has no body");
            assert_eq!(header(&headers, "etag"), etag, "{path}: a 304 carries the tag");
        }
        let (status, _, other) = get_raw(&adapter, path, &[("if-none-match", "\"other\"")]).await;
        assert_eq!(
            (status, &other),
            (200, &body),
            "{path}: another tag gets the document"
        );
    }
}

#[tokio::test]
async fn discovery_is_gzipped_when_the_client_accepts_it() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let path = "/apis/custom.metrics.k8s.io/v1beta2";
    let (_, identity_headers, identity) = get_raw(&adapter, path, &[]).await;
    assert_eq!(header(&identity_headers, "content-encoding"), "");
    assert_golden(
        "resources_custom_v1beta2",
        std::str::from_utf8(&identity).unwrap(),
    );
    for accepted in ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "*"] {
        let (status, headers, body) = get_raw(&adapter, path, &[("accept-encoding", accepted)]).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "content-encoding"),
            "gzip",
            "Accept-Encoding: {accepted}"
        );
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert_eq!(header(&headers, "etag"), header(&identity_headers, "etag"));
        assert_eq!(gunzip(&body), identity, "Accept-Encoding: {accepted}");
    }
    for refused in ["identity", "gzip;q=0", "br", "*;q=0", "*, gzip;q=0"] {
        let (status, headers, body) = get_raw(&adapter, path, &[("accept-encoding", refused)]).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "content-encoding"),
            "",
            "Accept-Encoding: {refused}"
        );
        assert_eq!(body, identity, "Accept-Encoding: {refused}");
    }
    // `?pretty` is still served, indented, from the same documents.
    let (status, pretty) = get(&adapter, &format!("{path}?pretty=true")).await;
    assert_eq!(status, 200);
    assert!(
        pretty.starts_with("{\n  \"kind\": \"APIResourceList\""),
        "{pretty}"
    );
    let parsed: Value = serde_json::from_str(&pretty).unwrap();
    assert_eq!(parsed, serde_json::from_slice::<Value>(&identity).unwrap());
}

const RULES_PER_SECOND: &str = r#"rules:
- seriesQuery: 'http_requests_total{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name:
    matches: "^(.*)_total"
    as: "${1}_per_second"
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
"#;

#[tokio::test]
async fn a_relist_that_changes_the_metrics_changes_the_etag() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, RULES_PER_SECOND).unwrap();
    let adapter = TestAdapter::start(AdapterOptions {
        flags: vec!["--config".into(), rules.display().to_string()],
        ..Default::default()
    })
    .await;
    let path = "/apis/custom.metrics.k8s.io/v1beta1";
    let (_, headers, body) = get_raw(&adapter, path, &[]).await;
    let before = header(&headers, "etag").to_owned();
    assert!(String::from_utf8_lossy(&body).contains("pods/http_requests_per_second"));

    // A reload renames the metric and relists at once; the next GET is a new document.
    std::fs::write(&rules, RULES_PER_SECOND.replace("${1}_per_second", "${1}_rate")).unwrap();
    let changed = eventually(Duration::from_secs(20), async || {
        String::from_utf8_lossy(&get_raw(&adapter, path, &[]).await.2).contains("pods/http_requests_rate")
    })
    .await;
    assert!(changed, "the reloaded rules are served");
    let (status, headers, _) = get_raw(&adapter, path, &[("if-none-match", &before)]).await;
    assert_eq!(status, 200, "the old tag no longer matches");
    assert_ne!(header(&headers, "etag"), before);
    assert!(!header(&headers, "etag").is_empty());
}

#[tokio::test]
async fn kubectl_get_raw_reads_discovery() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: adapter\n  cluster:\n    server: https://{}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: test\n  user: {{token: test-token}}\ncontexts:\n- name: adapter\n  context: {{cluster: adapter, user: test}}\ncurrent-context: adapter\n",
            adapter.addr
        ),
    )
    .unwrap();
    // kubectl (Go's transport) asks for gzip and decompresses: it must see the plain document.
    let path = "/apis/custom.metrics.k8s.io/v1beta2";
    let output = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", path])
        .output()
        .await
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, _, identity) = get_raw(&adapter, path, &[]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON"),
        serde_json::from_slice::<Value>(&identity).unwrap()
    );
}
