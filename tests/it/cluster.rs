//! The adapter as a cluster runs it: the real kube-rs client against the fake API server for
//! objects, discovery, TokenReview, SubjectAccessReview and the authentication ConfigMap; real TLS
//! with a test PKI for the front proxy and users.

use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::Value;

use crate::{
    fake_kube::{ADAPTER_USER, FakeKube, Review, ReviewFault},
    support::*,
};

pub(crate) const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
pub(crate) const PODS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests";

pub(crate) struct Cluster {
    /// Declared first, so the adapter stops before the fake API server does.
    adapter: Option<TestAdapter>,
    pub(crate) fake: FakeKube,
    front_proxy_ca: Ca,
    client_ca: Ca,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn url(&self, path: &str) -> String {
        self.adapter.as_ref().expect("adapter started").url(path)
    }

    fn auth_configmap(&self, front_proxy_ca: &Ca) {
        self.fake.set_auth_configmap(&[
            ("client-ca-file", &self.client_ca.pem),
            ("requestheader-client-ca-file", &front_proxy_ca.pem),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            ("requestheader-extra-headers-prefix", r#"["X-Remote-Extra-"]"#),
        ]);
    }

    /// An HTTPS client presenting `identity` (a client certificate), if any.
    pub(crate) fn client(identity: Option<&[u8]>) -> reqwest::Client {
        https_client(identity, Duration::from_secs(20))
    }

    pub(crate) async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut request = client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (status, _, body) = send(request).await;
        (status, body)
    }

    /// The front proxy's client certificate and key.
    pub(crate) fn front_proxy_client(&self) -> Vec<u8> {
        self.front_proxy_ca.client("front-proxy-client", &[])
    }

    /// What the front proxy sends for the HPA controller.
    pub(crate) async fn as_hpa(&self, path: &str) -> (u16, String) {
        let client = Cluster::client(Some(&self.front_proxy_client()));
        self.get(
            &client,
            path,
            &[
                ("X-Remote-User", HPA_USER),
                ("X-Remote-Group", "system:serviceaccounts"),
            ],
        )
        .await
    }

    pub(crate) fn list_requests(&self, path: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path && !r.watch)
            .count()
    }
}

/// Starts the fake API server with the seed's pods and the adapter (through its real start-up path).
async fn start_cluster() -> Cluster {
    start_cluster_with(|_| {}, true).await
}

/// [`start_cluster`] with `prepare` applied to the fake first, optionally not waiting for readiness.
pub(crate) async fn start_cluster_with(prepare: impl FnOnce(&FakeKube), wait_ready: bool) -> Cluster {
    start_cluster_full(prepare, wait_ready, &[], |_| {}).await
}

/// [`start_cluster_with`] and more flags; `--prometheus-url` among them replaces the real one.
pub(crate) async fn start_cluster_args(
    prepare: impl FnOnce(&FakeKube),
    wait_ready: bool,
    extra_args: &[&str],
) -> Cluster {
    start_cluster_full(prepare, wait_ready, extra_args, |_| {}).await
}

/// [`start_cluster_with`], with `configure` editing the adapter's options before it starts.
async fn start_cluster_configured(
    prepare: impl FnOnce(&FakeKube),
    wait_ready: bool,
    configure: impl FnOnce(&mut AdapterOptions),
) -> Cluster {
    start_cluster_full(prepare, wait_ready, &[], configure).await
}

async fn start_cluster_full(
    prepare: impl FnOnce(&FakeKube),
    wait_ready: bool,
    extra_args: &[&str],
    configure: impl FnOnce(&mut AdapterOptions),
) -> Cluster {
    install_crypto_provider();
    let fake = FakeKube::start().await;
    fake.upsert_namespace("default", &[]);
    fake.upsert_namespace("staging", &[]);
    for i in 0..3 {
        let labels = [("app", "sample-metrics-app")];
        fake.upsert_pod("default", &format!("sample-metrics-app-{i}"), &labels, "Running");
    }
    fake.upsert_pod("default", "backend-0", &[("app", "backend")], "Running");
    fake.upsert_service("default", "sample-metrics-app", &[("app", "sample-metrics-app")]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let mut cluster = Cluster {
        adapter: None,
        fake,
        front_proxy_ca: Ca::new("front-proxy-ca"),
        client_ca: Ca::new("cluster-ca"),
        _dir: dir,
    };
    cluster.auth_configmap(&cluster.front_proxy_ca);
    prepare(&cluster.fake);
    let mut options = AdapterOptions {
        kubeconfig: Some(kubeconfig),
        flags: extra_args
            .iter()
            .copied()
            // Relists every second, over series seen in the last minute: a 1 s window (the
            // default max age is the relist interval) misses series whose last scrape was just
            // over a second ago, and the seed's metrics flicker out of discovery.
            .chain(["--metrics-relist-interval", "1s", "--metrics-max-age", "1m"])
            .map(str::to_owned)
            .collect(),
        unready: !wait_ready,
        ..Default::default()
    };
    configure(&mut options);
    cluster.adapter = Some(TestAdapter::start(options).await);
    cluster
}

#[tokio::test]
async fn the_hpa_through_the_front_proxy_gets_exactly_its_pods() {
    let cluster = start_cluster().await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    let path = format!("{PODS}?labelSelector={}", urlencode("app=sample-metrics-app"));
    let (status, body) = cluster.as_hpa(&path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        item_names(&body),
        [
            "sample-metrics-app-0",
            "sample-metrics-app-1",
            "sample-metrics-app-2"
        ]
    );
    // The SubjectAccessReview carried the HPA's identity and the request's attributes.
    let reviews: Vec<Value> = cluster
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/subjectaccessreviews"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let review = reviews
        .iter()
        .find(|r| r["spec"]["user"] == HPA_USER)
        .expect("a review for the HPA");
    let attributes = &review["spec"]["resourceAttributes"];
    assert_eq!(
        (
            &attributes["verb"],
            &attributes["group"],
            &attributes["resource"],
            &attributes["subresource"],
            &attributes["name"],
            &attributes["namespace"]
        ),
        (
            &Value::from("get"),
            &Value::from("custom.metrics.k8s.io"),
            &Value::from("pods"),
            &Value::from("http_requests"),
            &Value::from("*"),
            &Value::from("default")
        )
    );
    assert!(
        review["spec"]["groups"]
            .as_array()
            .unwrap()
            .contains(&Value::from("system:serviceaccounts"))
    );
}

#[tokio::test]
async fn users_without_permission_and_forged_headers_are_forbidden() {
    let cluster = start_cluster().await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    // A user's own certificate (cluster CA): authenticated as alice, not allowed.
    let alice = Cluster::client(Some(&cluster.client_ca.client("alice", &["devs"])));
    let (status, body) = cluster.get(&alice, PODS, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        message(&body),
        r#"pods.custom.metrics.k8s.io "*" is forbidden: User "alice" cannot get resource "pods/http_requests" in API group "custom.metrics.k8s.io" in the namespace "default": no RBAC policy matched"#
    );
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status["reason"].as_str(), status["details"]["kind"].as_str()),
        (Some("Forbidden"), Some("pods"))
    );

    // Forged front-proxy headers without the front proxy's certificate: anonymous.
    let forged = [("X-Remote-User", HPA_USER), ("X-Remote-Group", "system:masters")];
    let (status, body) = cluster.get(&Cluster::client(None), PODS, &forged).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains(r#"User "system:anonymous" cannot get"#),
        "{body}"
    );
    // ... and behind alice's certificate they are alice's, not the HPA's.
    let (status, body) = cluster.get(&alice, PODS, &forged).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains(r#"User "alice""#), "{body}");
    // A certificate from the right CA with a CN not in requestheader-allowed-names: headers ignored,
    // and, as the API server's authenticators do, a certificate no authenticator accepts is a 401.
    let impostor = Cluster::client(Some(&cluster.front_proxy_ca.client("not-the-aggregator", &[])));
    let (status, body) = cluster.get(&impostor, PODS, &forged).await;
    assert_eq!(status, 401, "{body}");

    // Discovery is a non-resource path; anonymous gets the API server's wording.
    let (status, body) = cluster
        .get(&Cluster::client(None), "/apis/custom.metrics.k8s.io/v1beta1", &[])
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).starts_with(
            r#"forbidden: User "system:anonymous" cannot get path "/apis/custom.metrics.k8s.io/v1beta1""#
        ),
        "{body}"
    );
    // Health is always allowed.
    assert_eq!(
        cluster.get(&Cluster::client(None), "/livez", &[]).await,
        (200, "ok".to_owned())
    );
}

#[tokio::test]
async fn bearer_tokens_go_through_a_cached_token_review() {
    let cluster = start_cluster().await;
    cluster.fake.add_token("token-of-bob", "bob", &["devs"]);
    cluster.fake.allow("devs", "get", "custom.metrics.k8s.io", "*");
    let client = Cluster::client(None);
    let bearer = [("Authorization", "Bearer token-of-bob")];
    for _ in 0..3 {
        let (status, body) = cluster.get(&client, PODS, &bearer).await;
        assert_eq!(status, 200, "{body}");
    }
    let reviews = cluster
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/tokenreviews"))
        .count();
    assert_eq!(reviews, 1, "three requests, one TokenReview (cached)");
    let (status, body) = cluster
        .get(&client, PODS, &[("Authorization", "Bearer wrong")])
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}\n"
    );
}

#[tokio::test]
async fn a_front_proxy_ca_rotation_applies_without_a_restart() {
    let cluster = start_cluster().await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    let rotated = Ca::new("front-proxy-ca-2");
    let new_proxy = Cluster::client(Some(&rotated.client("front-proxy-client", &[])));
    let hpa = [("X-Remote-User", HPA_USER)];
    let (status, _) = cluster.get(&new_proxy, PODS, &hpa).await;
    // A certificate no CA accepts is a 401, as from the API server.
    assert_eq!(status, 401, "the new CA is not trusted yet");
    cluster.auth_configmap(&rotated);
    let rotated_ok = eventually(Duration::from_secs(5), async || {
        cluster.get(&new_proxy, PODS, &hpa).await.0 == 200
    })
    .await;
    assert!(rotated_ok, "the rotated CA was not picked up within 5 s");
    let (status, _) = cluster.as_hpa(PODS).await;
    assert_eq!(status, 401, "the old front-proxy CA is no longer trusted");
}

#[tokio::test]
async fn pod_changes_reach_answers_within_a_second_without_a_list_per_request() {
    let cluster = start_cluster().await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    let path = format!("{PODS}?labelSelector={}", urlencode("app=sample-metrics-app"));
    let lists_before = cluster.list_requests("/api/v1/pods");
    let names = async || item_names(&cluster.as_hpa(&path).await.1);
    assert_eq!(names().await.len(), 3);

    cluster
        .fake
        .upsert_pod("default", "sample-metrics-app-2", &[("app", "other")], "Running");
    let relabelled = eventually(Duration::from_secs(1), async || {
        names().await == ["sample-metrics-app-0", "sample-metrics-app-1"]
    })
    .await;
    assert!(relabelled, "relabelled pod still returned: {:?}", names().await);
    cluster.fake.delete_pod("default", "sample-metrics-app-1");
    assert!(
        eventually(Duration::from_secs(1), async || names().await
            == ["sample-metrics-app-0"])
        .await,
        "deleted pod still returned"
    );
    cluster.fake.upsert_pod(
        "default",
        "sample-metrics-app-2",
        &[("app", "sample-metrics-app")],
        "Failed",
    );
    cluster.fake.mark_pod_deleting("default", "sample-metrics-app-0");
    let (status, body) = cluster.as_hpa(&path).await;
    let gone = eventually(Duration::from_secs(1), async || {
        cluster.as_hpa(&path).await.0 == 404
    })
    .await;
    assert!(
        gone,
        "a Failed pod and a pod being deleted are not targets: {status} {body}"
    );

    assert_eq!(
        cluster.list_requests("/api/v1/pods"),
        lists_before,
        "no LIST of pods per request"
    );
}

#[tokio::test]
async fn a_resource_added_after_start_is_found_without_a_restart() {
    let cluster = start_cluster().await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    cluster.fake.add_resource_type(
        "stable.example.com",
        "v1",
        "crontabs",
        "crontab",
        "CronTab",
        true,
        &["ct"],
    );
    cluster.fake.upsert_object(
        "stable.example.com",
        "v1",
        "crontabs",
        "CronTab",
        Some("default"),
        "nightly",
        &[],
    );
    // The series carry a `crontab` label. A request for the unknown resource refreshes API discovery
    // (at most every 5 s, and the adapter refreshed at start), and the next relist maps the label.
    let path = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/crontabs.stable.example.com/nightly/jobs_processed";
    let found = eventually(Duration::from_secs(15), async || {
        cluster.as_hpa(path).await.0 == 200
    })
    .await;
    let (status, body) = cluster.as_hpa(path).await;
    let aggregator = Cluster::client(Some(&cluster.front_proxy_client()));
    let masters = [
        ("X-Remote-User", "system:kube-aggregator"),
        ("X-Remote-Group", "system:masters"),
    ];
    let (_, discovery) = cluster
        .get(&aggregator, "/apis/custom.metrics.k8s.io/v1beta1", &masters)
        .await;
    assert!(found, "{status}: {body}; discovery: {discovery}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        list["items"][0]["describedObject"]["apiVersion"],
        "stable.example.com/v1"
    );
    assert_eq!(list["items"][0]["describedObject"]["kind"], "CronTab");
    assert_close(
        quantity(list["items"][0]["value"].as_str().unwrap()),
        2.0,
        "jobs_processed rate",
    );
    // Short names work too.
    let (status, body) = cluster
        .as_hpa("/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/ct/nightly/jobs_processed")
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn readiness_waits_for_the_object_caches() {
    let cluster = start_cluster_with(|fake| fake.hold_lists("/pods"), false).await;
    let anonymous = Cluster::client(None);
    // The server answers, but is not ready while the pods cache has not listed.
    let unready = eventually(Duration::from_secs(10), async || {
        let (status, body) = cluster.get(&anonymous, "/readyz", &[]).await;
        status == 503 && body.contains("[-]object-caches failed")
    })
    .await;
    assert!(unready, "{:?}", cluster.get(&anonymous, "/readyz", &[]).await);
    cluster.fake.release_lists();
    let ready = eventually(Duration::from_secs(10), async || {
        cluster.get(&anonymous, "/readyz", &[]).await.0 == 200
    })
    .await;
    assert!(ready, "{:?}", cluster.get(&anonymous, "/readyz", &[]).await);
}

/// What the series' `job` label names under [`JOB_RULES`]: the scrape job of the test's exporter.
const JOB_METRIC: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/jobs.batch/exporter/http_requests";

/// A user's rules file that maps the `job` label to Jobs (batch), next to pods and namespaces.
const JOB_RULES: &str = r#"
rules:
  - seriesQuery: '{__name__="http_requests_total",namespace!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
        job: {group: batch, resource: job}
    name: {matches: ^(.*)_total$}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
"#;

/// Makes the fake enforce what deploy/ grants the adapter: the ClusterRole
/// custom-metrics-resource-reader as written in deploy/, and the authentication ConfigMap (the Role
/// extension-apiserver-authentication-reader; the fake's rules have no namespaces).
fn rbac_like_deploy(fake: &FakeKube) {
    fake.add_batch_types();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/base/cluster-role-resource-reader.yaml");
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    fake.allow(ADAPTER_USER, verb, group, resource);
                }
            }
        }
    }
    for verb in ["get", "list", "watch"] {
        fake.allow(ADAPTER_USER, verb, "", "configmaps");
    }
    fake.enforce_rbac();
}

/// Serves [`JOB_RULES`] (`--config`).
fn job_rules(options: &mut AdapterOptions) {
    options.rules_yaml = Some(JOB_RULES.into());
}

impl Cluster {
    /// What the aggregator (system:masters) gets.
    async fn as_aggregator(&self, path: &str) -> (u16, String) {
        let aggregator = Cluster::client(Some(&self.front_proxy_client()));
        let masters = [
            ("X-Remote-User", "system:kube-aggregator"),
            ("X-Remote-Group", "system:masters"),
        ];
        self.get(&aggregator, path, &masters).await
    }

    /// The names in the discovery document of custom.metrics.k8s.io/v1beta2.
    async fn advertised(&self) -> Vec<String> {
        let (status, body) = self.as_aggregator("/apis/custom.metrics.k8s.io/v1beta2").await;
        assert_eq!(status, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        let resources = list["resources"].as_array().cloned().unwrap_or_default();
        resources
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    }
}

#[tokio::test]
async fn a_resource_rbac_forbids_answers_404_naming_the_permission_and_the_adapter_stays_ready() {
    let cluster = start_cluster_configured(rbac_like_deploy, true, job_rules).await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    let anonymous = Cluster::client(None);

    let started = Instant::now();
    let (status, body) = cluster.as_hpa(JOB_METRIC).await;
    let took = started.elapsed();
    assert_eq!(status, 404, "{body}");
    // Prompt: the LIST's 403, not a 10 s wait for a sync that never comes (the first LIST may wait
    // for the adapter's client rate limit, spent at start-up).
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reason"], "NotFound", "{body}");
    let text = message(&body);
    for part in [
        "http_requests",
        "list and watch",
        "jobs",
        r#"API group "batch""#,
        "ClusterRole custom-metrics-resource-reader",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text:?}");
    }
    let started = Instant::now();
    assert_eq!(cluster.as_hpa(JOB_METRIC).await.0, 404);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a second request waited"
    );

    // Ready, and saying what is forbidden.
    assert_eq!(
        cluster.get(&anonymous, "/readyz", &[]).await,
        (200, "ok".to_owned())
    );
    let (status, verbose) = cluster.get(&anonymous, "/readyz?verbose", &[]).await;
    assert_eq!(status, 200, "{verbose}");
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with("[+]") && l.contains("jobs.batch")),
        "{verbose}"
    );
    let (_, metrics) = cluster.as_aggregator("/metrics").await;
    assert!(
        metrics.contains(r#"custom_metrics_adapter_resource_forbidden{resource="jobs.batch"} 1"#),
        "{metrics}"
    );

    // Advertised: what it can serve, not what it may not list.
    let advertised = cluster.advertised().await;
    assert_pods_not_jobs(&advertised);

    // No retry loop against the API server: one LIST of jobs, however long it is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.list_requests("/apis/batch/v1/jobs"), 1);
    assert_eq!(cluster.get(&anonymous, "/readyz", &[]).await.0, 200);
}

#[tokio::test]
async fn granting_a_forbidden_resource_serves_it_without_a_restart() {
    let cluster = start_cluster_configured(rbac_like_deploy, true, |options| {
        job_rules(options);
        options.access_recheck = Some(Duration::from_secs(1));
    })
    .await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    cluster
        .fake
        .upsert_object("batch", "v1", "jobs", "Job", Some("default"), "exporter", &[]);
    let (status, body) = cluster.as_hpa(JOB_METRIC).await;
    assert_eq!(status, 404, "{body}");

    for verb in ["get", "list", "watch"] {
        cluster.fake.allow(ADAPTER_USER, verb, "batch", "jobs");
    }
    let served = eventually(Duration::from_secs(15), async || {
        cluster.as_hpa(JOB_METRIC).await.0 == 200
    })
    .await;
    let (status, body) = cluster.as_hpa(JOB_METRIC).await;
    assert!(served, "{status}: {body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            &list["items"][0]["describedObject"]["kind"],
            &list["items"][0]["describedObject"]["name"]
        ),
        (&Value::from("Job"), &Value::from("exporter"))
    );
    let advertised = eventually(Duration::from_secs(15), async || {
        cluster
            .advertised()
            .await
            .contains(&"jobs.batch/http_requests".to_owned())
    })
    .await;
    assert!(advertised, "{:?}", cluster.advertised().await);
    let (_, verbose) = cluster.get(&Cluster::client(None), "/readyz?verbose", &[]).await;
    assert!(!verbose.contains("jobs.batch"), "{verbose}");
}

#[tokio::test]
async fn the_built_in_rules_map_no_label_prometheus_adds_to_a_resource() {
    // Every series has `job` and `instance` labels (the scrape's), and the fake serves batch Jobs.
    let cluster = start_cluster_with(FakeKube::add_batch_types, true).await;
    let advertised = cluster.advertised().await;
    assert_pods_not_jobs(&advertised);
}

/// The resource attributes of the SubjectAccessReviews the fake received since its requests were
/// last cleared: [namespace, resource, name, subresource].
fn reviewed(fake: &FakeKube) -> Vec<[String; 4]> {
    fake.access_reviews()
        .into_iter()
        .map(|review: SubjectAccessReview| {
            let a = review.spec.resource_attributes.unwrap_or_default();
            [a.namespace, a.resource, a.name, a.subresource].map(Option::unwrap_or_default)
        })
        .collect()
}

/// The front proxy's request for the HPA, as a real aggregator sends it (protobuf first in
/// Accept, the user's UID too).
fn hpa_request(cluster: &Cluster, path: &str) -> reqwest::RequestBuilder {
    Cluster::client(Some(&cluster.front_proxy_client()))
        .get(cluster.url(path))
        .header("Accept", "application/vnd.kubernetes.protobuf, */*")
        .header("X-Remote-User", HPA_USER)
        .header("X-Remote-Group", "system:serviceaccounts")
        .header("X-Remote-Group", "system:authenticated")
        .header("X-Remote-Uid", "uid-of-the-hpa")
}

#[tokio::test]
async fn escaped_paths_are_authorized_exactly_as_they_are_served() {
    let cluster = start_cluster().await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    cluster.fake.deny_in("kube-system", HPA_USER, "*", "*", "*");
    let base = "/apis/custom.metrics.k8s.io/v1beta2/namespaces";
    // Seen on a real cluster: `kube%2Dsystem` was reviewed as namespace "kube%2Dsystem" (allowed)
    // and served as kube-system. Go decodes the path before RequestInfo splits it, so `%2F` is a
    // separator too. Each case asks for another metric, so no review is answered from the cache.
    for (path, metric) in [
        (
            format!("{base}/kube-system/pods/*/http_requests"),
            "http_requests",
        ),
        (format!("{base}/kube%2Dsystem/pods/%2A/m1"), "m1"),
        (format!("{base}/kube%2dsystem/pods/*/m2"), "m2"),
        (format!("{base}/kube-system%2Fpods%2F%2A/m3"), "m3"),
    ] {
        cluster.fake.clear_requests();
        let (status, _, body) = send(hpa_request(&cluster, &path)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            message(&body).contains(r#"cannot get resource "pods/"#)
                && message(&body).contains(r#"in the namespace "kube-system""#),
            "{path}: {body}"
        );
        assert_eq!(
            reviewed(&cluster.fake),
            [["kube-system", "pods", "*", metric].map(String::from)],
            "{path}"
        );
    }

    // The HPA's own request: `%2A` is the name `*`, protobuf-first Accept still gets JSON.
    cluster.fake.clear_requests();
    let selector = urlencode("app=sample-metrics-app");
    let path = format!("{base}/def%61ult/pods/%2A/http_requests?labelSelector={selector}");
    let (status, headers, body) = send(hpa_request(&cluster, &path)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        item_names(&body),
        [
            "sample-metrics-app-0",
            "sample-metrics-app-1",
            "sample-metrics-app-2"
        ]
    );
    let reviews = cluster.fake.access_reviews();
    assert_eq!(
        reviewed(&cluster.fake),
        [["default", "pods", "*", "http_requests"].map(String::from)]
    );
    assert_eq!(reviews[0].spec.uid.as_deref(), Some("uid-of-the-hpa"));

    // `%25` is a literal `%`: `%252A` is the object named `%2A`, decoded once, never `*`.
    cluster.fake.clear_requests();
    let (status, _, body) = send(hpa_request(
        &cluster,
        &format!("{base}/default/pods/%252A/http_requests"),
    ))
    .await;
    assert_eq!(
        reviewed(&cluster.fake),
        [["default", "pods", "%2A", "http_requests"].map(String::from)]
    );
    assert_eq!(status, 404, "no pod is named %2A: {body}");

    // A path that cannot be decoded is a 400 Status, reviewed by no one.
    for bad in [
        format!("{base}/default/pods/%zz/http_requests"),
        format!("{base}/default/pods/%FF/http_requests"),
    ] {
        cluster.fake.clear_requests();
        let (status, headers, body) = send(hpa_request(&cluster, &bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("BadRequest"))
        );
        assert!(reviewed(&cluster.fake).is_empty(), "{bad}");
    }
}

#[tokio::test]
async fn reviews_do_not_queue_behind_the_watches_rate_limit() {
    // Watches may send one request per second. Forty strangers ask for distinct objects, so each
    // of their requests needs a SubjectAccessReview, and so does the HPA's. Were reviews paced by
    // --client-qps 1 / --client-burst 1, the 41 reviews would take at least 40 s; with the
    // delegated-auth limit (200/s, burst 400) they all fit the burst.
    let flags = ["--client-qps", "1", "--client-burst", "1"];
    let cluster = start_cluster_args(|_| {}, true, &flags).await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    let anonymous = Cluster::client(None);
    let strangers = (0..40).map(|i| {
        let path =
            format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/pod-{i}/http_requests");
        send(anonymous.get(cluster.url(&path)))
    });
    let hpa_path = format!("{PODS}?labelSelector={}", urlencode("app=sample-metrics-app"));
    let started = Instant::now();
    let all = async {
        tokio::join!(
            futures::future::join_all(strangers),
            send(hpa_request(&cluster, &hpa_path))
        )
    };
    let Ok((strangers, (hpa_status, _, hpa_body))) = tokio::time::timeout(Duration::from_secs(10), all).await
    else {
        panic!("41 requests needing a review did not finish within 10 s");
    };
    let elapsed = started.elapsed();
    assert_eq!(hpa_status, 200, "{hpa_body}");
    assert_eq!(item_names(&hpa_body).len(), 3, "{hpa_body}");
    for (status, _, body) in &strangers {
        assert_eq!(*status, 403, "{body}");
    }
    assert!(cluster.fake.access_reviews().len() >= 41);
    eprintln!("41 requests with distinct reviews answered in {elapsed:?}");
}

#[tokio::test]
async fn reviews_that_hang_or_fail_are_answered_in_bounded_time_without_internals() {
    let flags = ["--authorization-timeout", "1s", "--authentication-timeout", "1s"];
    let cluster = start_cluster_args(|_| {}, true, &flags).await;
    cluster.fake.allow(HPA_USER, "get", "custom.metrics.k8s.io", "*");
    cluster.fake.add_token("token-of-bob", "bob", &["devs"]);
    cluster.fake.allow("devs", "get", "custom.metrics.k8s.io", "*");
    let unavailable = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the authorization check could not be completed; retry","reason":"ServiceUnavailable","details":{"retryAfterSeconds":1},"code":503}"#;

    // A SubjectAccessReview that never answers: 503 with Retry-After after --authorization-timeout.
    cluster
        .fake
        .set_review_fault(Review::Access, Some(ReviewFault::Hang));
    let started = Instant::now();
    let (status, headers, body) = send(hpa_request(&cluster, PODS)).await;
    let elapsed = started.elapsed();
    assert_eq!((status, body.trim_end()), (503, unavailable));
    assert_eq!(headers["retry-after"], "1");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}; the timeout is 1 s"
    );
    // The API server unavailable (5xx): the same transient answer. Refused (a 4xx, such as the
    // adapter lacking RBAC): 500, with the details in the log only.
    cluster
        .fake
        .set_review_fault(Review::Access, Some(ReviewFault::Fail(503)));
    let (status, headers, body) = send(hpa_request(&cluster, PODS)).await;
    assert_eq!((status, body.trim_end()), (503, unavailable));
    assert_eq!(headers["retry-after"], "1");
    cluster
        .fake
        .set_review_fault(Review::Access, Some(ReviewFault::Fail(403)));
    let (status, _, body) = send(hpa_request(&cluster, PODS)).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        message(&body),
        "Internal error occurred: the authorization check could not be completed; the adapter's log says why"
    );
    assert!(!body.contains("fake") && !body.contains("Review"), "{body}");
    // Failures are not cached: the next review decides.
    cluster.fake.set_review_fault(Review::Access, None);
    let (status, _, body) = send(hpa_request(&cluster, PODS)).await;
    assert_eq!(status, 200, "{body}");

    // A bearer token that cannot be checked is not trusted: 401, as the API server answers.
    let bearer = |token: &str| Cluster::client(None).get(cluster.url(PODS)).bearer_auth(token);
    let unauthorized = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
    cluster
        .fake
        .set_review_fault(Review::Token, Some(ReviewFault::Hang));
    let started = Instant::now();
    let (status, _, body) = send(bearer("token-of-bob")).await;
    let elapsed = started.elapsed();
    assert_eq!((status, body.trim_end()), (401, unauthorized));
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}; the timeout is 1 s"
    );
    cluster
        .fake
        .set_review_fault(Review::Token, Some(ReviewFault::Fail(500)));
    let (status, _, body) = send(bearer("token-of-bob")).await;
    assert_eq!((status, body.trim_end()), (401, unauthorized));
    cluster.fake.set_review_fault(Review::Token, None);
    let (status, _, body) = send(bearer("token-of-bob")).await;
    assert_eq!(status, 200, "a failed TokenReview is not cached: {body}");
}

#[tokio::test]
async fn client_certificates_no_authenticator_accepts_are_unauthorized_not_anonymous() {
    let cluster = start_cluster().await;
    let unknown_ca = Ca::new("somebody-elses-ca");
    let yesterday = rcgen::date_time_ymd(2020, 1, 1);
    let cases = [
        ("unknown CA", unknown_ca.client("alice", &["devs"])),
        (
            "expired",
            cluster.client_ca.client_with("alice", &["devs"], |p| {
                p.not_before = rcgen::date_time_ymd(2019, 1, 1);
                p.not_after = yesterday;
            }),
        ),
        (
            "server-auth only",
            cluster.client_ca.client_with("alice", &["devs"], |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }),
        ),
    ];
    for (case, identity) in cases {
        let client = Cluster::client(Some(&identity));
        let (status, body) = cluster.get(&client, PODS, &[]).await;
        assert_eq!(status, 401, "{case}: {body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("Unauthorized")),
            "{case}"
        );
    }
    // Without a certificate the same request is anonymous, and so forbidden, not unauthorized.
    assert_eq!(cluster.get(&Cluster::client(None), PODS, &[]).await.0, 403);
}

/// The discovery document lists the pods metric and nothing of `jobs.batch`.
fn assert_pods_not_jobs(advertised: &[String]) {
    assert!(
        advertised.contains(&"pods/http_requests".to_owned()),
        "{advertised:?}"
    );
    assert!(
        !advertised.iter().any(|name| name.starts_with("jobs.batch/")),
        "{advertised:?}"
    );
}
