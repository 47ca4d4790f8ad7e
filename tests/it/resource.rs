//! metrics.k8s.io from resourceRules: what `kubectl top` and the HPA's cpu/memory targets read.

use serde_json::Value;

use crate::support::*;

/// prometheus-adapter's shipped resourceRules (deploy/manifests/config-map.yaml), 1s scrapes aside.
const CONFIG: &str = r#"resourceRules:
  cpu:
    containerQuery: |
      sum by (<<.GroupBy>>) (
        irate(container_cpu_usage_seconds_total{<<.LabelMatchers>>,container!="",pod!=""}[4m])
      )
    nodeQuery: |
      sum by (<<.GroupBy>>) (irate(node_cpu_usage_seconds_total{<<.LabelMatchers>>}[4m]))
    resources:
      overrides:
        node: {resource: node}
        namespace: {resource: namespace}
        pod: {resource: pod}
    containerLabel: container
  memory:
    containerQuery: |
      sum by (<<.GroupBy>>) (container_memory_working_set_bytes{<<.LabelMatchers>>,container!="",pod!=""})
    nodeQuery: |
      sum by (<<.GroupBy>>) (node_memory_working_set_bytes{<<.LabelMatchers>>})
    resources:
      overrides:
        node: {resource: node}
        namespace: {resource: namespace}
        pod: {resource: pod}
    containerLabel: container
  window: 5m
"#;

const M: &str = "/apis/metrics.k8s.io/v1beta1";

/// The resource rules use `irate`, the slope between the last two 1 s scrapes, so a few
/// milliseconds of scrape jitter move it by tenths of a percent (seen: 1253m for 1250m); a loaded
/// CI machine gets 3 %.
fn assert_irate_close(actual: f64, expected: f64, what: &str) {
    let error = (actual - expected).abs() / expected;
    assert!(
        error <= 0.03,
        "{what}: got {actual}, true value {expected} (off by {:.2} %)",
        error * 100.0
    );
}

async fn start() -> TestAdapter {
    start_with(CONFIG).await
}

async fn start_with(rules: &str) -> TestAdapter {
    TestAdapter::start(AdapterOptions {
        rules_yaml: Some(rules.into()),
        objects_yaml: Some(format!(
            "{OBJECTS_YAML}nodes:\n  - {{name: node-1}}\n  - {{name: node-2}}\n"
        )),
        ..Default::default()
    })
    .await
}

fn usage(item: &Value) -> (f64, f64) {
    let cpu = quantity(item["usage"]["cpu"].as_str().unwrap());
    let memory = quantity(item["usage"]["memory"].as_str().unwrap());
    (cpu, memory)
}

#[tokio::test]
async fn pod_metrics_per_container() {
    let adapter = start().await;
    let (status, body) = adapter.get(&format!("{M}/namespaces/default/pods")).await;
    assert_eq!(status, 200, "{body}");
    assert_golden("pod_metrics_list", &body);
    let items = items(&body);
    // worker-0 has cpu but no memory samples: left out, as prometheus-adapter does.
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(
        (items[0]["metadata"]["name"].as_str(), items[0]["window"].as_str()),
        (Some("backend-0"), Some("5m0s"))
    );
    let containers = items[0]["containers"].as_array().unwrap();
    assert_eq!(containers[0]["name"], "app");
    assert_eq!(containers[0]["usage"]["memory"], "100Mi");
    assert_eq!(containers[1]["usage"]["memory"], "1Mi");
    assert_irate_close(usage(&containers[0]).0, 0.25, "app cpu");
    // irate over two scrapes, then truncated to whole millicores: 50m may read 49m.
    let sidecar = usage(&containers[1]).0;
    assert!(
        (sidecar - 0.05).abs() <= 0.0015,
        "sidecar cpu {sidecar}, true 0.05"
    );

    let (status, body) = adapter
        .get(&format!("{M}/namespaces/default/pods/backend-0"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["kind"],
        "PodMetrics"
    );
    let (status, body) = adapter
        .get(&format!("{M}/namespaces/default/pods/worker-0"))
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains(r#""message":"pods.metrics.k8s.io \"worker-0\" not found""#),
        "{body}"
    );
    // labelSelector over the pods' labels.
    let (status, body) = adapter
        .get(&format!(
            "{M}/namespaces/default/pods?labelSelector=app%3Dsample-metrics-app"
        ))
        .await;
    assert_eq!((status, body.contains("backend-0")), (200, false), "{body}");
}

#[tokio::test]
async fn node_metrics_and_discovery() {
    let adapter = start().await;
    let (status, body) = adapter.get(&format!("{M}/nodes")).await;
    assert_eq!(status, 200, "{body}");
    assert_golden("node_metrics_list", &body);
    let items = items(&body);
    assert_eq!(items.len(), 1, "node-2 has no memory sample: {body}");
    assert_eq!(items[0]["usage"]["memory"], "2Gi");
    assert_irate_close(usage(&items[0]).0, 1.25, "node cpu");
    let (status, body) = adapter.get(&format!("{M}/nodes/node-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(adapter.get(&format!("{M}/nodes/node-2")).await.0, 404);

    let (status, body) = adapter.get(M).await;
    assert_eq!(status, 200);
    assert_golden("resources_metrics_v1beta1", &body);
    assert!(
        adapter
            .get("/apis")
            .await
            .1
            .contains(r#"{"name":"metrics.k8s.io""#)
    );
}

#[tokio::test]
async fn kubectl_top_reads_pods_and_nodes() {
    let adapter = start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {{server: 'https://{}', insecure-skip-tls-verify: true}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: a\n  context: {{cluster: a, user: u}}\ncurrent-context: a\n",
            adapter.addr
        ),
    )
    .unwrap();
    // Async, so the adapter in this test's runtime keeps serving while kubectl runs.
    let top = async |args: &[&str]| {
        let output = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("top")
            .args(args)
            .output()
            .await
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = top(&["pods", "-n", "default", "--containers"]).await;
    assert!(ok, "kubectl top pods: {stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(
        (rows[0][0], rows[0][1], rows[0][3]),
        ("backend-0", "app", "100Mi"),
        "{stdout}"
    );
    assert_eq!((rows[1][1], rows[1][3]), ("sidecar", "1Mi"), "{stdout}");
    assert_irate_close(quantity(rows[0][2]), 0.25, "kubectl top cpu");
    // `kubectl top nodes` also lists nodes from the core API, which only a real API server has;
    // node_metrics_and_discovery covers the NodeMetrics it reads.
}

/// As in prometheus-adapter, a containerQuery groups by the pod label and the container label
/// only, one query per namespace: here the memory query reports how many labels `.GroupBySlice`
/// holds, for every pod of every namespace.
#[tokio::test]
async fn container_queries_group_by_pod_and_container() {
    let memory = "sum by (<<.GroupBy>>) (container_memory_working_set_bytes{<<.LabelMatchers>>,container!=\"\",pod!=\"\"})\n";
    assert!(CONFIG.contains(memory));
    let counted = format!("{} * 0 + <<len .GroupBySlice>>\n", memory.trim_end());
    let adapter = start_with(&CONFIG.replace(memory, &counted)).await;
    for path in ["namespaces/default/pods", "pods"] {
        let (status, body) = adapter.get(&format!("{M}/{path}")).await;
        assert_eq!(status, 200, "{path}: {body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{path}: {body}");
        assert_eq!(
            (&items[0]["metadata"]["namespace"], &items[0]["metadata"]["name"]),
            (&Value::from("default"), &Value::from("backend-0")),
            "{path}: {body}"
        );
        for container in items[0]["containers"].as_array().unwrap() {
            assert_eq!(container["usage"]["memory"], "2", "{path}: {body}");
        }
    }
}
