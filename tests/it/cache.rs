//! Serving from memory against the real Prometheus: identical concurrent requests share one
//! query, and with `--query-cache-ttl` later ones are answered from the cache.

use crate::support::*;

/// The value of the counter `name` in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{metrics}"))
}

#[tokio::test]
async fn concurrent_identical_requests_share_prometheus_queries() {
    let adapter = TestAdapter::start(AdapterOptions {
        flags: vec!["--query-cache-ttl=10s".into()],
        ..Default::default()
    })
    .await;
    const REQUESTS: u64 = 50;
    let requests = (0..REQUESTS).map(|_| get(&adapter, SEED));
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
        assert_close(
            quantity(items(&body)[0]["value"].as_str().expect("value")),
            SEED_SERVICE_RATE,
            "service rate",
        );
    }
    let (_, metrics) = get(&adapter, "/metrics").await;
    let [hits, misses, coalesced] = ["hits", "misses", "coalesced"].map(|kind| {
        counter(
            &metrics,
            &format!("custom_metrics_adapter_query_cache_{kind}_total"),
        )
    });
    assert_eq!(
        hits + misses + coalesced,
        REQUESTS,
        "one instant query per request:\n{metrics}"
    );
    // One call, or a few more when the burst straddles a second (a new bucket) while one is in flight.
    assert!(
        misses <= 3,
        "{misses} Prometheus queries for {REQUESTS} identical requests"
    );
}
