//! Real clients: curl and kubectl; HTTP/2, keep-alive and graceful shutdown.

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
};

use crate::support::*;

#[tokio::test]
async fn curl_gets_the_seed_answer_over_http2_and_reuses_connections() {
    let adapter = TestAdapter::start(AdapterOptions::default()).await;
    let output = Command::new("curl")
        .args(["-sSk", "--http2", "-w", "\n%{http_version} %{http_code}"])
        .arg(adapter.url(SEED))
        .output()
        .await
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(trailer, "2 200", "HTTP/2 via ALPN");
    let list: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(list["kind"], "MetricValueList");
    assert_eq!(list["items"][0]["describedObject"]["name"], "sample-metrics-app");
    assert_close(
        quantity(list["items"][0]["value"].as_str().unwrap()),
        SEED_SERVICE_RATE,
        "curl",
    );

    // HTTP/1.1 keep-alive: two URLs in one curl run share one connection.
    let output = Command::new("curl")
        .args(["-sSk", "--http1.1", "-v", "-o", "/dev/null", "-o", "/dev/null"])
        .arg(adapter.url("/healthz"))
        .arg(adapter.url("/healthz"))
        .output()
        .await
        .expect("run curl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kubectl_get_raw_reads_values_and_errors() {
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
    let kubectl = |path: &str| {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "--raw", path]);
        command
    };
    let output = kubectl(SEED).output().await.expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(list["apiVersion"], "custom-metrics.metrics.k8s.io/v1beta1");
    assert_close(
        quantity(list["items"][0]["value"].as_str().unwrap()),
        SEED_SERVICE_RATE,
        "kubectl",
    );

    let output = kubectl("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/no_such_metric")
        .output()
        .await
        .expect("run kubectl");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "Error from server (NotFound): the server could not find the metric no_such_metric for pods"
        ),
        "kubectl decodes our Status: {stderr}"
    );
}

/// A fake Prometheus that answers every query after `delay`, to keep a request in flight.
async fn slow_prometheus(delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                tokio::time::sleep(delay).await;
                let now = now_secs();
                let body = format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"pod":"backend-0"}},"value":[{now},"3"]}}]}}}}"#
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let slow = slow_prometheus(Duration::from_millis(1500)).await;
    let adapter = TestAdapter::start(AdapterOptions {
        query_url: Some(format!("http://{slow}")),
        ..Default::default()
    })
    .await;
    let url =
        adapter.url("/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/backend-0/http_requests");
    let in_flight = tokio::spawn(async move { https().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = adapter.addr;
    let stopped = tokio::spawn(adapter.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once shutting down"
    );
    assert_eq!(
        in_flight.await.unwrap().expect("in-flight request completes"),
        200
    );
    stopped.await.unwrap().expect("server stops cleanly");
}
