//! prometheus-adapter config files: the real binary's `check-config`, hot reload through a
//! ConfigMap-style symlink swap, and per-query relist failure isolation.

use std::{path::Path, process::Command, time::Duration};

use custom_metrics_adapter::rules::config;

use crate::support::*;

/// prometheus-adapter's config walkthrough rule, plus an external rule.
const WALKTHROUGH: &str = r#"rules:
- seriesQuery: 'http_requests_total{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name:
    matches: "^(.*)_total"
    as: "${1}_per_second"
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (pod)'
"#;

fn adapter_binary() -> &'static str {
    env!("CARGO_BIN_EXE_custom-metrics-adapter")
}

#[test]
fn check_config_explains_what_each_metric_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, WALKTHROUGH).unwrap();
    let output = Command::new(adapter_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .args(["--prometheus-url", &env().prometheus_url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("valid: 1 rules, 1 externalRules"), "{stdout}");
    assert!(stdout.contains("pods/http_requests_per_second"), "{stdout}");
    assert!(
        stdout.contains(r#"sum(rate(http_requests_total{namespace="default",pod!=""}[2m])) by (pod)"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#"external queue_depth"#), "{stdout}");
    assert!(
        stdout.contains(r#"sum(queue_depth{namespace="default"}) by (pod)"#),
        "{stdout}"
    );

    // A misspelled key is refused with its line.
    std::fs::write(
        &path,
        WALKTHROUGH.replace("seriesQuery: 'http", "seriesQeury: 'http"),
    )
    .unwrap();
    let output = Command::new(adapter_binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("seriesQeury") && stderr.contains(":2:"),
        "{stderr}"
    );
}

/// Writes `text` as a ConfigMap volume does: `..data` is a symlink to a timestamped directory,
/// and `config.yaml` a symlink through it; an update swaps `..data` atomically.
fn write_configmap_volume(dir: &Path, generation: u32, text: &str) {
    let target = dir.join(format!("..2026_11_25_{generation}"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("config.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("config.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/config.yaml", &link).unwrap();
    }
}

#[tokio::test]
async fn config_reloads_keep_the_old_rules_when_the_new_file_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    write_configmap_volume(dir.path(), 1, WALKTHROUGH);
    // The rules file is a ConfigMap-style volume of the test's own, so its path is a flag.
    let adapter = TestAdapter::start(AdapterOptions {
        objects_yaml: Some(OBJECTS_YAML.into()),
        flags: vec![
            "--config".into(),
            dir.path().join("config.yaml").display().to_string(),
        ],
        ..Default::default()
    })
    .await;
    let get = async |path: &str| adapter.get(path).await;
    let per_second =
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/backend-0/http_requests_per_second";
    let rate = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/backend-0/http_requests_rate";
    let ready = eventually(Duration::from_secs(10), async || get(per_second).await.0 == 200).await;
    assert!(
        ready,
        "the configured metric is served: {:?}",
        get(per_second).await
    );
    let (_, body) = get("/metrics").await;
    assert!(
        body.contains("custom_metrics_adapter_config_last_reload_successful 1"),
        "{body}"
    );

    // A bad file: the old rules keep serving, and the metric says the reload failed.
    write_configmap_volume(
        dir.path(),
        2,
        "rules:\n- seriesQuery: 'x'\n  metricsQuery: '<<.Series'\n",
    );
    let failed = eventually(Duration::from_secs(15), async || {
        get("/metrics")
            .await
            .1
            .contains("custom_metrics_adapter_config_last_reload_successful 0")
    })
    .await;
    assert!(failed, "the failed reload shows in /metrics");
    assert_eq!(get(per_second).await.0, 200, "the previous rules still serve");

    // A good file renames the metric; the swap applies without a restart.
    write_configmap_volume(
        dir.path(),
        3,
        &WALKTHROUGH.replace("${1}_per_second", "${1}_rate"),
    );
    let swapped = eventually(Duration::from_secs(15), async || get(rate).await.0 == 200).await;
    assert!(swapped, "the new rules apply: {:?}", get(rate).await);
    assert_eq!(get(per_second).await.0, 404, "the old name is gone");
    let (_, body) = get("/metrics").await;
    assert!(
        body.contains(r#"custom_metrics_adapter_config_reloads_total{result="failure"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"custom_metrics_adapter_config_reloads_total{result="success"} 1"#),
        "{body}"
    );
    adapter.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn a_series_query_prometheus_rejects_does_not_hide_the_others() {
    // A second custom rule whose series query is not valid PromQL (Prometheus answers 400).
    let broken = "- seriesQuery: '{__name__=~\"(\"}'\n  resources: {overrides: {pod: {resource: pod}}}\n  \
                  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'\n";
    let text = WALKTHROUGH.replace("externalRules:\n", &format!("{broken}externalRules:\n"));
    let set = config::parse(&text, "test.yaml").unwrap().rule_set();
    assert_eq!((set.custom.len(), set.external.len()), (2, 1));
    let adapter = TestAdapter::start(AdapterOptions {
        rules_yaml: Some(text),
        ..Default::default()
    })
    .await;
    let (status, body) = get(&adapter, "/apis/custom.metrics.k8s.io/v1beta1").await;
    assert_eq!(status, 200, "ready after one good query: {body}");
    assert!(body.contains("pods/http_requests_per_second"), "{body}");
    let (_, body) = get(&adapter, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert!(body.contains("queue_depth"), "{body}");
    let (_, body) = get(&adapter, "/metrics").await;
    assert!(
        body.contains("custom_metrics_adapter_relist_failures_total 1"),
        "{body}"
    );
}
