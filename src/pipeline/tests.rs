//! The pipeline against the in-memory backend: discovery from series, the PromQL each request
//! sends, how samples become values, and the errors, without a process or a socket.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::*;
use crate::{
    backend::{ErrorKind, MemoryBackend, Sample, memory::Behaviour},
    objects::StaticObjects,
    rules::{self, RuleSet},
    selector::Selector,
};

const OBJECTS: &str = r#"
namespaces:
  - name: default
pods:
  - {namespace: default, name: web-0, labels: {app: web}}
  - {namespace: default, name: web-1, labels: {app: web}}
  - {namespace: default, name: worker-0, labels: {app: worker}}
"#;

/// A pipeline over `backend` with the built-in rules, or with `rules_yaml`, and optionally the
/// objects of [`OBJECTS`]; relisted once.
async fn pipeline(backend: &Arc<MemoryBackend>, rules_yaml: Option<&str>, objects: bool) -> Pipeline {
    let rules = match rules_yaml {
        Some(text) => rules::config::parse(text, "test.yaml").unwrap().rule_set(),
        None => RuleSet::custom(rules::default_rules("2m").unwrap()),
    };
    let objects = objects.then(|| {
        Arc::new(StaticObjects::parse(OBJECTS, "test objects").unwrap())
            as Arc<dyn crate::objects::ObjectSource>
    });
    let pipeline = Pipeline::new(Parts {
        rules,
        backend: backend.clone(),
        objects,
        resources: Default::default(),
        max_age: Duration::from_secs(600),
        metrics: Default::default(),
    });
    pipeline.relist().await.unwrap();
    pipeline
}

/// A backend holding `http_requests_total` of three pods and a gauge of one.
fn backend() -> Arc<MemoryBackend> {
    let backend = Arc::new(MemoryBackend::new());
    let now = SystemTime::now();
    for pod in ["web-0", "web-1", "worker-0"] {
        backend.add_series(
            "http_requests_total",
            [("namespace", "default"), ("pod", pod), ("job", "app")],
            1.0,
            now,
        );
    }
    backend.add_series(
        "queue_depth",
        [("namespace", "default"), ("pod", "worker-0")],
        3.0,
        now,
    );
    backend
}

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels.iter().copied().collect(),
        timestamp: 1_700_000_000.5,
        value,
    }
}

fn request<'a>(path: &'a MetricPath, label_selector: &'a Selector) -> MetricRequest<'a> {
    MetricRequest {
        path,
        label_selector,
        metric_selector: None,
    }
}

fn pods_path(name: &str, metric: &str) -> MetricPath {
    MetricPath::parse(&format!("namespaces/default/pods/{name}/{metric}")).unwrap()
}

#[tokio::test]
async fn relist_names_and_associates_the_series() {
    let backend = backend();
    let pipeline = pipeline(&backend, None, false).await;
    let served: Vec<String> = pipeline
        .served_metrics()
        .await
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(served.contains(&"pods/http_requests".to_owned()), "{served:?}");
    assert!(
        served.contains(&"namespaces/http_requests".to_owned()),
        "{served:?}"
    );
    assert!(served.contains(&"pods/queue_depth".to_owned()), "{served:?}");
    assert!(
        !served.iter().any(|m| m.starts_with("jobs")),
        "scrape labels name no resource: {served:?}"
    );
    assert!(!backend.series_selectors().is_empty());
}

#[tokio::test]
async fn a_named_object_sends_one_query_and_converts_its_sample_to_a_quantity() {
    let backend = backend();
    let pipeline = pipeline(&backend, None, false).await;
    let promql = r#"sum(rate(http_requests_total{namespace="default",pod="web-0"}[2m])) by (pod)"#;
    backend.answer(
        promql,
        vec![
            sample(&[("pod", "web-0")], 501.484),
            sample(&[("pod", "web-1")], 2.0),
        ],
    );
    let path = pods_path("web-0", "http_requests");
    let values = pipeline
        .custom_metric(request(&path, &Selector::default()))
        .await
        .unwrap();
    assert_eq!(backend.queries(), vec![promql.to_owned()]);
    assert_eq!(values.len(), 1, "only the named pod: {values:?}");
    let value = &values[0];
    assert_eq!(
        value.object,
        DescribedObject {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "web-0".into(),
            api_version: "/v1".into(),
        }
    );
    assert_eq!(
        (value.value.as_str(), value.timestamp),
        ("501484m", 1_700_000_000.5)
    );
}

#[tokio::test]
async fn a_label_selector_picks_objects_from_the_source_and_names_them_in_the_query() {
    let backend = backend();
    let pipeline = pipeline(&backend, None, true).await;
    let promql = r#"sum(rate(http_requests_total{namespace="default",pod=~"web-0|web-1"}[2m])) by (pod)"#;
    // The backend also answers for a pod the selector did not pick; it is left out.
    backend.answer(
        promql,
        vec![
            sample(&[("pod", "web-1")], 1.5),
            sample(&[("pod", "web-0")], 0.25),
            sample(&[("pod", "worker-0")], 9.0),
        ],
    );
    let path = pods_path("*", "http_requests");
    let selector = Selector::parse("app=web").unwrap();
    let values = pipeline.custom_metric(request(&path, &selector)).await.unwrap();
    assert_eq!(backend.queries(), vec![promql.to_owned()]);
    let got: Vec<(&str, &str)> = values
        .iter()
        .map(|v| (v.object.name.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(got, vec![("web-0", "250m"), ("web-1", "1500m")], "sorted by name");
}

#[tokio::test]
async fn what_cannot_be_answered_says_why() {
    let backend = backend();
    let pipeline = pipeline(&backend, None, false).await;
    let everything = Selector::default();
    let misspelt = pods_path("web-0", "http_request");
    match pipeline.custom_metric(request(&misspelt, &everything)).await {
        Err(Error::NotFound(message)) => {
            assert!(message.contains("did you mean http_requests?"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let unknown_resource = MetricPath::parse("namespaces/default/widgets/w/http_requests").unwrap();
    match pipeline
        .custom_metric(request(&unknown_resource, &everything))
        .await
    {
        Err(Error::NotFound(message)) => assert!(
            message.contains("is not a resource this server knows"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    // Without an object source a labelSelector cannot be applied, and no query is sent.
    let all = pods_path("*", "http_requests");
    let selector = Selector::parse("app=web").unwrap();
    match pipeline.custom_metric(request(&all, &selector)).await {
        Err(Error::BadRequest(message)) => assert!(message.contains("no object source"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(backend.queries().is_empty());
    // A sample that is not a number is never served.
    let promql = r#"sum(rate(http_requests_total{namespace="default",pod="web-0"}[2m])) by (pod)"#;
    backend.answer(promql, vec![sample(&[("pod", "web-0")], f64::NAN)]);
    let one = pods_path("web-0", "http_requests");
    match pipeline.custom_metric(request(&one, &everything)).await {
        Err(Error::NotFound(message)) => assert!(message.contains("was not a number"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn backend_failures_keep_their_kind() {
    let backend = backend();
    let pipeline = pipeline(&backend, None, false).await;
    backend.set_behaviour(Behaviour::Fail(ErrorKind::Timeout));
    let path = pods_path("web-0", "http_requests");
    match pipeline.custom_metric(request(&path, &Selector::default())).await {
        Err(Error::Backend(err)) => assert_eq!(err.kind(), ErrorKind::Timeout),
        other => panic!("{other:?}"),
    }
    // A relist that fails keeps the metrics of the previous one.
    assert!(pipeline.relist().await.is_err());
    assert!(!pipeline.served_metrics().await.is_empty());
}

#[tokio::test]
async fn external_metrics_render_label_values_from_the_selector() {
    let rules = r#"
externalRules:
- seriesQuery: '{__name__="queue_depth"}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: 'sum(<<.Series>>{pod=~"<<index .LabelValuesByName "pod">>"}) by (pod)'
"#;
    let backend = backend();
    let pipeline = pipeline(&backend, Some(rules), false).await;
    assert_eq!(pipeline.external_metric_names(), vec!["queue_depth"]);
    let promql = r#"sum(queue_depth{pod=~"worker-0|worker-9"}) by (pod)"#;
    backend.answer(promql, vec![sample(&[("pod", "worker-0")], 3.0)]);
    let selector = Selector::parse("pod in (worker-0,worker-9)").unwrap();
    let values = pipeline
        .external_metric("default", "queue_depth", &selector)
        .await
        .unwrap();
    assert_eq!(backend.queries(), vec![promql.to_owned()]);
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].value, "3");
    assert_eq!(values[0].labels.get("pod").map(String::as_str), Some("worker-0"));
}

#[tokio::test]
async fn pod_usage_queries_each_namespace_by_pod_and_container() {
    let rules = r#"
resourceRules:
  cpu:
    containerQuery: 'sum by (<<.GroupBy>>) (rate(cpu_seconds_total{<<.LabelMatchers>>}[1m]))'
    nodeQuery: 'sum by (<<.GroupBy>>) (rate(node_cpu_seconds_total{<<.LabelMatchers>>}[1m]))'
    resources: {overrides: {node: {resource: node}, namespace: {resource: namespace}, pod: {resource: pod}}}
    containerLabel: container
  memory:
    containerQuery: 'sum by (<<.GroupBy>>) (memory_bytes{<<.LabelMatchers>>})'
    nodeQuery: 'sum by (<<.GroupBy>>) (node_memory_bytes{<<.LabelMatchers>>})'
    resources: {overrides: {node: {resource: node}, namespace: {resource: namespace}, pod: {resource: pod}}}
    containerLabel: container
  window: 1m
"#;
    let backend = backend();
    let pipeline = pipeline(&backend, Some(rules), true).await;
    let cpu =
        r#"sum by (pod,container) (rate(cpu_seconds_total{namespace="default",pod=~"web-0|web-1"}[1m]))"#;
    let memory = r#"sum by (pod,container) (memory_bytes{namespace="default",pod=~"web-0|web-1"})"#;
    let container = |pod, container, value| sample(&[("pod", pod), ("container", container)], value);
    backend.answer(
        cpu,
        vec![container("web-0", "app", 0.25), container("web-1", "app", 1.0)],
    );
    backend.answer(
        memory,
        vec![
            container("web-0", "app", 64.0 * 1024.0 * 1024.0),
            container("web-1", "app", -1.0),
        ],
    );
    let selector = Selector::parse("app=web").unwrap();
    let pods = pipeline
        .pod_usage(Some("default"), None, &selector)
        .await
        .unwrap();
    let mut queries = backend.queries();
    queries.sort();
    assert_eq!(queries, vec![memory.to_owned(), cpu.to_owned()]);
    let got: Vec<(&str, &str, &str, &str)> = pods
        .iter()
        .flat_map(|pod| {
            pod.containers.iter().map(|(name, usage)| {
                (
                    pod.name.as_str(),
                    name.as_str(),
                    usage.cpu.as_str(),
                    usage.memory.as_str(),
                )
            })
        })
        .collect();
    // A negative sample counts as 0, as in prometheus-adapter.
    assert_eq!(
        got,
        vec![("web-0", "app", "250m", "64Mi"), ("web-1", "app", "1", "0")]
    );
    assert_eq!(pods[0].window, "1m0s");
}
