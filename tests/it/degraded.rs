//! A degraded cluster, as a real one often is: hundreds of API groups, aggregated APIs whose
//! backends are down (this adapter's own among them while it has no ready replica), root discovery
//! answering 503, Prometheus unreachable. The adapter starts, says what is wrong on `/readyz` and
//! `/metrics`, serves what it can, and recovers without a restart.

use std::time::{Duration, Instant};

use crate::{
    cluster::{Cluster, HPA_USER, PODS, start_cluster_args, start_cluster_with},
    fake_kube::{ADAPTER_USER, FakeKube},
    support::{env, eventually, free_port, item_names},
};

/// The aggregated APIs of this adapter (all down before its first replica is ready) and one of
/// another vendor's: five unavailable group/versions.
const UNAVAILABLE: &[(&str, &str)] = &[
    ("custom.metrics.k8s.io", "v1beta2"),
    ("custom.metrics.k8s.io", "v1beta1"),
    ("custom-metrics.metrics.k8s.io", "v1beta1"),
    ("external.metrics.k8s.io", "v1beta1"),
    ("metrics.k8s.io", "v1beta1"),
];

/// About 200 groups: the fake's own (core, apps, authentication, authorization), 191 CRD groups
/// and the unavailable aggregated ones.
fn large_degraded_cluster(fake: &FakeKube) {
    fake.add_groups(191);
    for (group, version) in UNAVAILABLE {
        fake.add_unavailable_api(group, version);
    }
}

/// `/metrics` as a cluster administrator reads it (group system:masters skips authorization).
async fn own_metrics(cluster: &Cluster) -> String {
    let admin = Cluster::client(Some(&cluster.front_proxy_client()));
    let headers = [("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters")];
    let (status, body) = cluster.get(&admin, "/metrics", &headers).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The HPA controller's permission, as the README's RBAC grants it.
fn allow_hpa(fake: &FakeKube) {
    fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
}

async fn readyz(cluster: &Cluster, query: &str) -> (u16, String) {
    cluster
        .get(&Cluster::client(None), &format!("/readyz{query}"), &[])
        .await
}

/// Waits up to `within` for `/readyz` to answer 200; returns how long it took.
async fn time_to_ready(cluster: &Cluster, started: Instant, within: Duration) -> Duration {
    let ready = eventually(within, async || readyz(cluster, "").await.0 == 200).await;
    assert!(
        ready,
        "not ready within {within:?}: {:?}",
        readyz(cluster, "?verbose").await
    );
    started.elapsed()
}

async fn starts_ready_and_serves(prepare: impl FnOnce(&FakeKube), mode: &str) -> Cluster {
    // Prometheus starts once per test binary; its start-up is not the adapter's.
    let _ = env();
    let started = Instant::now();
    let cluster = start_cluster_with(
        |fake| {
            allow_hpa(fake);
            prepare(fake);
        },
        false,
    )
    .await;
    let took = time_to_ready(&cluster, started, Duration::from_secs(10)).await;
    eprintln!("{mode}: ready {took:?} after start with ~200 API groups, 5 unavailable");

    let (status, body) = cluster.as_hpa(PODS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(item_names(&body).len(), 4, "{body}");
    let (status, verbose) = readyz(&cluster, "?verbose").await;
    assert_eq!(status, 200, "{verbose}");
    assert!(verbose.contains("[+]api-discovery ok: "), "{verbose}");
    for group in [
        "custom.metrics.k8s.io/",
        "external.metrics.k8s.io/v1beta1",
        "metrics.k8s.io/v1beta1",
    ] {
        assert!(verbose.contains(group), "{group} not named as skipped: {verbose}");
    }
    let metrics = own_metrics(&cluster).await;
    assert!(
        metrics.contains(r#"custom_metrics_adapter_ready_check{check="api-discovery"} 1"#),
        "{metrics}"
    );
    cluster
}

#[tokio::test]
async fn starts_with_hundreds_of_groups_and_unavailable_aggregated_apis() {
    let cluster = starts_ready_and_serves(large_degraded_cluster, "aggregated discovery").await;
    // Aggregated discovery reads the whole cluster in two requests, none to a down group.
    let to_down_groups = cluster
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/apis/custom.metrics.k8s.io/"))
        .count();
    assert_eq!(to_down_groups, 0);
}

#[tokio::test]
async fn starts_with_legacy_discovery_and_unavailable_aggregated_apis_without_a_retry_storm() {
    let cluster = starts_ready_and_serves(
        |fake| {
            fake.legacy_discovery_only();
            large_degraded_cluster(fake);
        },
        "legacy discovery",
    )
    .await;
    // One request per refresh: no retries of the 503 (kube-rs' default retry layer made twelve).
    let down_group = cluster
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/apis/custom.metrics.k8s.io/v1beta2")
        .count();
    assert!(
        (1..=2).contains(&down_group),
        "{down_group} requests to a down group"
    );
}

#[tokio::test]
async fn unknown_resources_answer_promptly_while_an_api_is_unavailable() {
    let cluster = start_cluster_with(
        |fake| {
            allow_hpa(fake);
            fake.legacy_discovery_only();
            fake.add_unavailable_api("custom.metrics.k8s.io", "v1beta2");
        },
        true,
    )
    .await;
    let roots = |cluster: &Cluster| {
        let requests = cluster.fake.requests();
        requests.iter().filter(|r| r.path == "/apis").count()
    };
    let before = roots(&cluster);
    let started = Instant::now();
    for _ in 0..5 {
        let (status, body) = cluster
            .as_hpa("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/nosuchthings/x/http_requests")
            .await;
        assert_eq!(status, 404, "{body}");
    }
    // Five unknown resources in a row refresh discovery once (failed or not, at most every 5 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "five answers took {:?}",
        started.elapsed()
    );
    assert!(
        roots(&cluster) - before <= 1,
        "{} refreshes",
        roots(&cluster) - before
    );
}

#[tokio::test]
async fn api_discovery_down_at_start_degrades_then_recovers() {
    let cluster = start_cluster_with(
        |fake| {
            allow_hpa(fake);
            fake.set_discovery_down(true);
        },
        false,
    )
    .await;
    let unready = eventually(Duration::from_secs(10), async || {
        let (status, body) = readyz(&cluster, "?verbose").await;
        status == 503
            && body.contains("[-]api-discovery failed: Kubernetes API discovery has not succeeded yet")
    })
    .await;
    assert!(unready, "{:?}", readyz(&cluster, "?verbose").await);
    let (status, _) = cluster.get(&Cluster::client(None), "/healthz", &[]).await;
    assert_eq!(status, 200, "the process keeps serving");
    let metrics = own_metrics(&cluster).await;
    assert!(
        metrics.contains(r#"custom_metrics_adapter_ready_check{check="api-discovery"} 0"#),
        "{metrics}"
    );

    cluster.fake.set_discovery_down(false);
    time_to_ready(&cluster, Instant::now(), Duration::from_secs(20)).await;
    assert_eq!(cluster.as_hpa(PODS).await.0, 200);
}

/// Forwards every connection on `listener` to `target` (a stand-in for a Prometheus that comes up).
async fn forward(listener: tokio::net::TcpListener, target: std::net::SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn not_ready_until_a_relist_succeeds_and_retries_soon_after() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cluster = start_cluster_args(allow_hpa, false, &["--prometheus-url", &url]).await;
    let unready = eventually(Duration::from_secs(10), async || {
        let (status, body) = readyz(&cluster, "?verbose").await;
        status == 503
            && body.contains(
                "[-]metric-discovery failed: no series relist has succeeded yet: Prometheus is unreachable",
            )
            && body.contains("[+]object-caches ok")
    })
    .await;
    assert!(unready, "{:?}", readyz(&cluster, "?verbose").await);
    let (_, verbose) = readyz(&cluster, "?verbose").await;
    assert!(
        !verbose.contains(&url),
        "internal URLs stay in the log: {verbose}"
    );

    // Prometheus comes up on that address: the retry (1 s here) makes the adapter ready.
    let target = env()
        .prometheus_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(forward(listener, target));
    time_to_ready(&cluster, Instant::now(), Duration::from_secs(15)).await;
    assert_eq!(cluster.as_hpa(PODS).await.0, 200);
}

#[tokio::test]
async fn the_aggregators_discovery_and_openapi_requests_are_answered() {
    let cluster = start_cluster_with(|_| {}, true).await;
    let aggregator = Cluster::client(Some(&cluster.front_proxy_client()));
    let as_aggregator = [
        ("X-Remote-User", "system:kube-aggregator"),
        ("X-Remote-Group", "system:masters"),
    ];
    // Aggregated discovery is declined by answering the legacy APIGroupList as plain JSON, which
    // the aggregator falls back from to `/apis/<group>/<version>`, as it does for prometheus-adapter.
    let mut request = aggregator.get(cluster.url("/apis")).header(
        "Accept",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    );
    for (name, value) in as_aggregator {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["kind"], "APIGroupList");
    for path in [
        "/openapi/v2",
        "/openapi/v3",
        "/apis/custom.metrics.k8s.io/v1beta2",
    ] {
        let (status, body) = cluster.get(&aggregator, path, &as_aggregator).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test]
async fn unreadable_authentication_settings_make_it_unready_not_exit() {
    let cluster = start_cluster_with(
        |fake| {
            allow_hpa(fake);
            for resource in ["pods", "services", "namespaces"] {
                for verb in ["get", "list", "watch"] {
                    fake.allow(ADAPTER_USER, verb, "", resource);
                }
            }
            // No Role binding for kube-system/extension-apiserver-authentication.
            fake.enforce_rbac();
        },
        false,
    )
    .await;
    let unready = eventually(Duration::from_secs(15), async || {
        let (status, body) = readyz(&cluster, "?verbose").await;
        status == 503
            && body.contains(
                "[-]authentication-config failed: kube-system/extension-apiserver-authentication has not been read",
            )
            && body.contains("[+]object-caches ok")
    })
    .await;
    assert!(unready, "{:?}", readyz(&cluster, "?verbose").await);
    // Past the 10 s prometheus-adapter waits before exiting, the process still serves.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(cluster.get(&Cluster::client(None), "/healthz", &[]).await.0, 200);

    for verb in ["get", "list", "watch"] {
        cluster.fake.allow(ADAPTER_USER, verb, "", "configmaps");
    }
    time_to_ready(&cluster, Instant::now(), Duration::from_secs(45)).await;
    assert_eq!(cluster.as_hpa(PODS).await.0, 200);
}
