//! The adapter as a cluster runs it: the real kube-rs client against the fake API server for
//! objects, discovery, TokenReview, SubjectAccessReview and the authentication ConfigMap; real TLS
//! with a test PKI for the front proxy and users.

use std::time::{Duration, Instant};

use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use serde_json::Value;

use crate::{fake_kube::FakeKube, serving::urlencode, support::*};

const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
const PODS: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests";

/// A CA that issues client (and serving) certificates.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for `names` and its key (PEM each).
    pub(crate) fn server(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate and key (PEM, concatenated as reqwest's Identity wants them).
    pub(crate) fn client(&self, common_name: &str, organizations: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        for organization in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *organization);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem()).into_bytes()
    }
}

pub(crate) struct Cluster {
    pub(crate) fake: FakeKube,
    adapter: std::net::SocketAddr,
    front_proxy_ca: Ca,
    client_ca: Ca,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Cluster {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.adapter)
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
        let mut builder = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(20));
        if let Some(pem) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(pem).unwrap());
        }
        builder.build().unwrap()
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
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The front proxy's client certificate and key.
    pub(crate) fn front_proxy_client(&self) -> Vec<u8> {
        self.front_proxy_ca.client("front-proxy-client", &[])
    }

    /// What the front proxy sends for the HPA controller.
    pub(crate) async fn as_hpa(&self, path: &str) -> (u16, String) {
        let client = Cluster::client(Some(&self.front_proxy_ca.client("front-proxy-client", &[])));
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
    start_cluster_args(prepare, wait_ready, &[]).await
}

/// [`start_cluster_with`] and more flags; `--prometheus-url` among them replaces the real one.
pub(crate) async fn start_cluster_args(
    prepare: impl FnOnce(&FakeKube),
    wait_ready: bool,
    extra_args: &[&str],
) -> Cluster {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let fake = FakeKube::start().await;
    fake.upsert_namespace("default", &[]);
    fake.upsert_namespace("staging", &[]);
    for i in 0..3 {
        let labels = [("app", "sample-metrics-app")];
        fake.upsert_pod("default", &format!("sample-metrics-app-{i}"), &labels, "Running");
    }
    fake.upsert_pod("default", "backend-0", &[("app", "backend")], "Running");
    fake.upsert_service("default", "sample-metrics-app", &[("app", "sample-metrics-app")]);
    let front_proxy_ca = Ca::new("front-proxy-ca");
    let client_ca = Ca::new("cluster-ca");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let mut cluster = Cluster {
        fake,
        adapter: "127.0.0.1:1".parse().unwrap(),
        front_proxy_ca,
        client_ca,
        stop: None,
        _dir: dir,
    };
    cluster.auth_configmap(&cluster.front_proxy_ca);
    prepare(&cluster.fake);

    let kubeconfig = kubeconfig.display().to_string();
    let cert_dir = cluster._dir.path().join("certs").display().to_string();
    let prometheus_url = match extra_args.iter().position(|a| *a == "--prometheus-url") {
        Some(_) => Vec::new(),
        None => vec!["--prometheus-url", &env().prometheus_url],
    };
    let args = custom_metrics_adapter::config::Args::parse_from(
        ["custom-metrics-adapter"]
            .into_iter()
            .chain(prometheus_url)
            .chain(extra_args.iter().copied())
            .chain([
                "--lister-kubeconfig",
                &kubeconfig,
                "--authentication-kubeconfig",
                &kubeconfig,
                "--authorization-kubeconfig",
                &kubeconfig,
                "--cert-dir",
                &cert_dir,
                "--metrics-relist-interval",
                "1s",
            ]),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    cluster.adapter = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    cluster.stop = Some(stop);
    tokio::spawn(async move {
        let result = custom_metrics_adapter::app::serve(args, listener, async move {
            let _ = stopped.await;
        })
        .await;
        if let Err(err) = result {
            eprintln!("adapter stopped: {err:#}");
        }
    });
    if !wait_ready {
        return cluster;
    }
    // Ready once the caches synced and metrics were discovered.
    let anonymous = Cluster::client(None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(response) = anonymous.get(cluster.url("/readyz")).send().await {
            if response.status().as_u16() == 200 {
                break;
            }
            last = response.text().await.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "adapter not ready within 30 s: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
}

/// Polls `check` every 50 ms for up to `within`; returns whether it became true.
pub(crate) async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

pub(crate) fn item_names(body: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(body).unwrap_or_default();
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|i| i["describedObject"]["name"].as_str().map(str::to_owned))
        .collect()
}

pub(crate) fn message(body: &str) -> String {
    let status: Value = serde_json::from_str(body).unwrap_or_default();
    status["message"].as_str().unwrap_or_default().to_owned()
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
    // A certificate from the right CA with a CN not in requestheader-allowed-names: headers ignored.
    let impostor = Cluster::client(Some(&cluster.front_proxy_ca.client("not-the-aggregator", &[])));
    let (status, body) = cluster.get(&impostor, PODS, &forged).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("system:anonymous"), "{body}");

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
    assert_eq!(status, 403, "the new CA is not trusted yet");
    cluster.auth_configmap(&rotated);
    let rotated_ok = eventually(Duration::from_secs(5), async || {
        cluster.get(&new_proxy, PODS, &hpa).await.0 == 200
    })
    .await;
    assert!(rotated_ok, "the rotated CA was not picked up within 5 s");
    let (status, _) = cluster.as_hpa(PODS).await;
    assert_eq!(status, 403, "the old front-proxy CA is no longer trusted");
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
    let aggregator = Cluster::client(Some(&cluster.front_proxy_ca.client("front-proxy-client", &[])));
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
