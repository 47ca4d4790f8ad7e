//! The drop-in promise: the real binary, started with prometheus-adapter's own Deployment args and
//! the Helm chart's default rules file, against a cluster (the fake API server, found through
//! `KUBECONFIG` as in-cluster config would be) and the real Prometheus.

use std::{process::Stdio, time::Duration};

use crate::{cluster::HPA_USER, fake_kube::FakeKube, support::*};

/// The Helm chart's `rules.default: true` rendering (prometheus-community/prometheus-adapter).
const HELM_DEFAULT_RULES: &str = include_str!("testdata/helm-default-rules.yaml");

#[tokio::test]
async fn prometheus_adapter_args_and_helm_rules_work_unchanged() {
    let fake = FakeKube::start().await;
    for i in 0..3 {
        fake.upsert_pod(
            "default",
            &format!("sample-metrics-app-{i}"),
            &[("app", "sample-metrics-app")],
            "Running",
        );
    }
    fake.upsert_service("default", "sample-metrics-app", &[("app", "sample-metrics-app")]);
    fake.set_auth_configmap(&[]);
    fake.add_token("token-of-hpa", HPA_USER, &[]);
    fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, HELM_DEFAULT_RULES).unwrap();
    let port = free_port();
    // prometheus-adapter's deploy/manifests/deployment.yaml args, and the Helm chart's --v/--logtostderr.
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_custom-metrics-adapter"))
        .env("KUBECONFIG", &kubeconfig)
        .arg(format!(
            "--cert-dir={}",
            dir.path().join("serving-cert").display()
        ))
        .arg(format!("--config={}", config.display()))
        .arg("--metrics-relist-interval=1m")
        .arg(format!("--prometheus-url={}/", env().prometheus_url))
        .arg(format!("--secure-port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(
            "--tls-cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        )
        .arg("--logtostderr=true")
        .arg("--v=4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let client = https();
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    // Not ready within the bound: the adapter does not take prometheus-adapter's args.
    wait_ready(&url("/readyz"), Duration::from_secs(30)).await;
    let path = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests?labelSelector=app%3Dsample-metrics-app";
    let response = client
        .get(url(path))
        .bearer_auth("token-of-hpa")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        item_names(&body),
        [
            "sample-metrics-app-0",
            "sample-metrics-app-1",
            "sample-metrics-app-2"
        ]
    );
    let total: f64 = items(&body)
        .iter()
        .map(|i| quantity(i["value"].as_str().unwrap()))
        .sum();
    assert_close(total, SEED_SERVICE_RATE, "5m rate summed over the HPA's pods");

    // SIGTERM: a graceful exit, and the generic flags were accepted and reported as ignored.
    let output = terminate(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit after SIGTERM: {:?}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("--tls-cipher-suites") && stderr.contains("no effect here"),
        "{stderr}"
    );
}
