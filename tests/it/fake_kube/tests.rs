//! The fake against the real kube-rs client: discovery, lists, watches, reflectors and reviews.

use std::collections::BTreeSet;

use futures::StreamExt;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview, SubjectAccessReview,
        SubjectAccessReviewSpec,
    },
    core::v1::{ConfigMap, Namespace, Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{DynamicObject, PartialObjectMeta},
    discovery::Discovery,
    runtime::{WatchStreamExt, reflector, watcher},
};

use super::*;
use crate::support::{eventually, install_crypto_provider};

fn client(fake: &FakeKube) -> Client {
    install_crypto_provider();
    Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap()
}

/// Asserts that `done` becomes true within a second: how soon a watch delivers a change.
async fn within_a_second(what: &str, mut done: impl FnMut() -> bool) {
    let delivered = eventually(Duration::from_secs(1), async || done()).await;
    assert!(delivered, "{what}: not within 1s");
}

fn count(fake: &FakeKube, path: &str, watch: bool) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path && r.watch == watch)
        .count()
}

#[tokio::test]
async fn discovery_finds_core_apps_and_late_crds() {
    let fake = FakeKube::start().await;
    let client = client(&fake);
    let has = |d: &Discovery, group: &str, plural: &str| {
        d.get(group).is_some_and(|g| {
            g.recommended_resources()
                .iter()
                .any(|(ar, _)| ar.plural == plural)
        })
    };
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    assert!(has(&discovery, "", "pods") && has(&discovery, "", "namespaces"));
    assert!(has(&discovery, "apps", "deployments"));
    assert!(has(&discovery, "authorization.k8s.io", "subjectaccessreviews"));
    assert!(!discovery.has_group("example.com"));

    fake.add_resource_type("example.com", "v1", "widgets", "widget", "Widget", true, &["wd"]);
    fake.upsert_object(
        "example.com",
        "v1",
        "widgets",
        "Widget",
        Some("default"),
        "w1",
        &[("app", "web")],
    );
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery
        .get("example.com")
        .expect("CRD group after add_resource_type");
    let (ar, caps) = group
        .recommended_resources()
        .into_iter()
        .find(|(ar, _)| ar.plural == "widgets")
        .unwrap();
    assert_eq!(
        (ar.kind.as_str(), caps.scope),
        ("Widget", kube::discovery::Scope::Namespaced)
    );

    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let list = widgets
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(
        list.items.iter().map(|o| o.name_any()).collect::<Vec<_>>(),
        ["w1"]
    );
    let deploy = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
    fake.upsert_object(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        Some("default"),
        "web",
        &[],
    );
    let got = Api::<DynamicObject>::namespaced_with(client, "default", &deploy)
        .get("web")
        .await
        .unwrap();
    assert_eq!(got.types.unwrap().kind, "Deployment");
}

#[tokio::test]
async fn lists_filter_by_labels_fields_and_paginate() {
    let fake = FakeKube::start().await;
    fake.upsert_pod("default", "web-0", &[("app", "web")], "Running");
    fake.upsert_pod("default", "web-1", &[("app", "web"), ("tier", "x")], "Failed");
    fake.upsert_pod("default", "db-0", &[("app", "db")], "Running");
    fake.upsert_pod("other", "web-9", &[("app", "web")], "Running");
    let client = client(&fake);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let names =
        |list: kube::core::ObjectList<Pod>| list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();

    assert_eq!(
        names(pods.list(&ListParams::default().labels("app=web")).await.unwrap()),
        ["web-0", "web-1"]
    );
    let running = ListParams::default()
        .labels("app=web")
        .fields("status.phase!=Failed");
    assert_eq!(names(pods.list(&running).await.unwrap()), ["web-0"]);
    let set_based = ListParams::default().labels("app in (web,db),!tier");
    assert_eq!(names(pods.list(&set_based).await.unwrap()), ["db-0", "web-0"]);
    let all = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels("app notin (db)"))
        .await;
    assert_eq!(names(all.unwrap()), ["web-0", "web-1", "web-9"]);

    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(page.clone()), ["db-0", "web-0"]);
    let rv = page.metadata.resource_version.clone().unwrap();
    let token = page.metadata.continue_.unwrap();
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        (
            rest.metadata.resource_version.clone(),
            rest.metadata.continue_.clone()
        ),
        (Some(rv), None)
    );
    assert_eq!(names(rest), ["web-1"]);

    let meta = pods
        .list_metadata(&ListParams::default().fields("metadata.name=web-0"))
        .await
        .unwrap();
    assert_eq!(meta.types.kind, "PartialObjectMetadataList");
    assert_eq!(
        meta.items[0].types.as_ref().unwrap().api_version,
        "meta.k8s.io/v1"
    );
    assert_eq!(meta.items[0].labels()["app"], "web");

    assert_eq!(
        pods.get("web-0").await.unwrap().status.unwrap().phase.as_deref(),
        Some("Running")
    );
    let missing = pods.get("nope").await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"));
    let bad = pods
        .list(&ListParams::default().labels("app in ("))
        .await
        .unwrap_err();
    assert!(matches!(bad, kube::Error::Api(s) if s.code == 400));
    let bad_field = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .unwrap_err();
    assert!(matches!(bad_field, kube::Error::Api(s) if s.code == 400));

    let body = reqwest::get(format!("{}/nowhere", fake.url())).await.unwrap();
    assert_eq!(body.status(), 404);
    let status: Status = serde_json::from_str(&body.text().await.unwrap()).unwrap();
    assert_eq!(status.reason.as_deref(), Some("NotFound"));
    let last = fake.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str(), last.watch),
        ("GET", "/nowhere", false)
    );
}

#[tokio::test]
#[allow(deprecated)] // kube 5 prefers watcher(Api<PartialObjectMeta<Pod>>); both send the same requests
async fn metadata_reflector_follows_pods_with_one_list() {
    let fake = FakeKube::start().await;
    fake.upsert_pod("default", "web-0", &[("app", "web")], "Running");
    fake.upsert_pod("default", "crashed", &[("app", "web")], "Failed");
    let api: Api<Pod> = Api::all(client(&fake));
    let (reader, writer) = reflector::store::<PartialObjectMeta<Pod>>();
    let config = watcher::Config::default().fields("status.phase!=Failed");
    let stream = reflector(writer, kube::runtime::metadata_watcher(api, config)).default_backoff();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    let state = || reader.state();
    let names = || state().iter().map(|p| p.name_any()).collect::<BTreeSet<_>>();
    let labels_of = |name: &str| {
        state()
            .iter()
            .find(|p| p.name_any() == name)
            .map(|p| p.labels().clone())
    };
    assert_eq!(names(), BTreeSet::from(["web-0".to_owned()]));

    fake.upsert_pod("default", "web-1", &[("app", "web")], "Running");
    within_a_second("new pod", || names().contains("web-1")).await;
    fake.upsert_pod("default", "web-1", &[("app", "api")], "Running");
    within_a_second("relabel", || {
        labels_of("web-1").is_some_and(|l| l["app"] == "api")
    })
    .await;
    fake.mark_pod_deleting("default", "web-1");
    within_a_second("deleting", || {
        state().iter().any(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    fake.delete_pod("default", "web-1");
    within_a_second("deleted pod gone", || !names().contains("web-1")).await;
    fake.upsert_pod("default", "web-0", &[("app", "web")], "Failed");
    within_a_second("failed pod gone", || names().is_empty()).await;
    fake.upsert_pod("default", "crashed", &[("app", "web")], "Running");
    within_a_second("recovered pod", || names().contains("crashed")).await;

    assert_eq!(
        count(&fake, "/api/v1/pods", false),
        1,
        "one LIST per watcher start"
    );
    assert!(count(&fake, "/api/v1/pods", true) >= 1);
    let list = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/pods")
        .unwrap();
    assert!(
        list.query.contains("fieldSelector=status.phase%21%3DFailed"),
        "{}",
        list.query
    );
    task.abort();
}

#[tokio::test]
async fn partial_object_meta_api_watches_services_by_label() {
    let fake = FakeKube::start().await;
    fake.upsert_service("default", "web", &[("app", "web")]);
    let api: Api<PartialObjectMeta<Service>> = Api::namespaced(client(&fake), "default");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default().labels("app=web")));
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    let names = || reader.state().iter().map(|s| s.name_any()).collect::<Vec<_>>();
    assert_eq!(names(), ["web"]);
    fake.upsert_service("default", "web", &[("app", "other")]);
    within_a_second("relabelled out of the selector", || names().is_empty()).await;
    fake.upsert_service("other", "web2", &[("app", "web")]);
    fake.upsert_service("default", "web3", &[("app", "web")]);
    within_a_second("new matching service", || names() == ["web3"]).await;
    assert_eq!(count(&fake, "/api/v1/namespaces/default/services", false), 1);
    task.abort();
}

#[tokio::test]
async fn configmap_watch_resumes_without_relisting() {
    let fake = FakeKube::start().await;
    fake.set_auth_configmap(&[("client-ca-file", "CA1")]);
    let api: Api<ConfigMap> = Api::namespaced(client(&fake), "kube-system");
    // timeoutSeconds=1: the fake ends each watch after 1s and kube re-watches from its last version.
    let config = watcher::Config::default()
        .fields("metadata.name=extension-apiserver-authentication")
        .timeout(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(api, config).default_backoff().applied_objects();
    let task = tokio::spawn(stream.for_each(move |cm| {
        let _ = tx.send(cm.unwrap());
        async {}
    }));
    let mut next_ca = async || {
        let cm = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cm.name_any(), "extension-apiserver-authentication");
        cm.data.unwrap()["client-ca-file"].clone()
    };
    assert_eq!(next_ca().await, "CA1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fake.upsert_object(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        Some("kube-system"),
        "other",
        &[],
    );
    fake.set_auth_configmap(&[("client-ca-file", "CA2")]);
    assert_eq!(next_ca().await, "CA2");
    let path = "/api/v1/namespaces/kube-system/configmaps";
    assert_eq!(count(&fake, path, false), 1);
    assert!(
        count(&fake, path, true) >= 2,
        "the watch was re-opened after its timeout"
    );
    task.abort();
}

#[tokio::test]
async fn streaming_list_gets_initial_events_and_end_bookmark() {
    let fake = FakeKube::start().await;
    let api: Api<Namespace> = Api::all(client(&fake));
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(api, config).boxed();
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
        match event.unwrap().unwrap().unwrap() {
            watcher::Event::InitApply(ns) => seen.push(ns.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["default", "kube-system"]);
    let watches = fake.requests();
    assert!(watches.iter().all(|r| r.watch), "a streaming list does not LIST");
    assert!(watches[0].query.contains("sendInitialEvents=true"));
}

#[tokio::test]
async fn token_and_access_reviews() {
    let fake = FakeKube::start().await;
    fake.add_token(
        "t-hpa",
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        &["system:serviceaccounts"],
    );
    fake.allow("system:serviceaccounts", "get", "custom.metrics.k8s.io", "*");
    fake.allow("system:authenticated", "get", "", "/apis/custom.metrics.k8s.io*");
    let client = client(&fake);

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: None,
        },
        ..Default::default()
    };
    let ok = reviews
        .create(&PostParams::default(), &review("t-hpa"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(ok.user.unwrap().groups.unwrap(), ["system:serviceaccounts"]);
    let bad = reviews
        .create(&PostParams::default(), &review("nope"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        (bad.authenticated, bad.error.as_deref()),
        (Some(false), Some("invalid bearer token"))
    );

    let sars: Api<SubjectAccessReview> = Api::all(client);
    let check =
        async |user: &str, groups: &[&str], verb: &str, resource: Option<&str>, path: Option<&str>| {
            let spec = SubjectAccessReviewSpec {
                user: Some(user.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                resource_attributes: resource.map(|r| ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some("custom.metrics.k8s.io".into()),
                    resource: Some(r.into()),
                    subresource: Some("http_requests".into()),
                    namespace: Some("default".into()),
                    ..Default::default()
                }),
                non_resource_attributes: path.map(|p| NonResourceAttributes {
                    path: Some(p.into()),
                    verb: Some(verb.into()),
                }),
                ..Default::default()
            };
            let sar = SubjectAccessReview {
                spec,
                ..Default::default()
            };
            sars.create(&PostParams::default(), &sar)
                .await
                .unwrap()
                .status
                .unwrap()
        };
    assert!(
        check("hpa", &["system:serviceaccounts"], "get", Some("pods"), None)
            .await
            .allowed
    );
    let denied = check("hpa", &["system:serviceaccounts"], "list", Some("pods"), None).await;
    assert_eq!(
        (denied.allowed, denied.reason.as_deref()),
        (false, Some("no RBAC policy matched"))
    );
    assert!(
        !check("mallory", &["system:authenticated"], "get", Some("pods"), None)
            .await
            .allowed
    );
    assert!(
        check("root", &["system:masters"], "delete", Some("pods"), None)
            .await
            .allowed
    );
    let discovery_path = Some("/apis/custom.metrics.k8s.io/v1beta2");
    assert!(
        check("bob", &["system:authenticated"], "get", None, discovery_path)
            .await
            .allowed
    );
    assert!(
        !check("bob", &["system:authenticated"], "get", None, Some("/metrics"))
            .await
            .allowed
    );
    let post = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post.path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert!(post.body.contains("t-hpa"));
}

/// A client that authenticates as [`ADAPTER_USER`], through the kubeconfig the fake writes.
async fn adapter_client(fake: &FakeKube, dir: &Path) -> Client {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(fake.write_kubeconfig(dir)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn enforced_rbac_answers_the_api_servers_403_and_self_reviews() {
    let fake = FakeKube::start().await;
    fake.add_batch_types();
    fake.upsert_pod("default", "web-0", &[], "Running");
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_client(&fake, dir.path()).await;
    let jobs_resource = ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&());
    let jobs = Api::<DynamicObject>::all_with(adapter.clone(), &jobs_resource);
    // Off by default: everyone may do anything.
    assert!(jobs.list(&ListParams::default()).await.is_ok());

    fake.enforce_rbac();
    fake.allow("system:serviceaccounts", "list", "", "pods");
    let refused = |err: kube::Error| match err {
        kube::Error::Api(status) => *status,
        other => panic!("not an API error: {other}"),
    };
    let status = refused(jobs.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        (status.code, status.reason.as_str(), status.message.as_str()),
        (
            403,
            "Forbidden",
            r#"jobs.batch is forbidden: User "system:serviceaccount:custom-metrics:custom-metrics-apiserver" cannot list resource "jobs" in API group "batch" at the cluster scope"#
        )
    );
    let details = status.details.unwrap();
    assert_eq!((details.group.as_str(), details.kind.as_str()), ("batch", "jobs"));
    // A metadata watch (what the adapter's caches do) is refused with the verb watch.
    let metadata = Api::<PartialObjectMeta<DynamicObject>>::all_with(adapter.clone(), &jobs_resource);
    let mut events = watcher(metadata, watcher::Config::default()).boxed();
    let watch = loop {
        match events.next().await.unwrap() {
            Ok(watcher::Event::Init) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(watch, Err(watcher::Error::InitialListFailed(kube::Error::Api(ref s))) if s.code == 403),
        "{watch:?}"
    );

    // Granted through the ServiceAccount's group; get is still refused, in the namespace.
    let pods: Api<Pod> = Api::namespaced(adapter.clone(), "default");
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let status = refused(pods.get("web-0").await.unwrap_err());
    assert_eq!(
        status.message,
        r#"pods "web-0" is forbidden: User "system:serviceaccount:custom-metrics:custom-metrics-apiserver" cannot get resource "pods" in API group "" in the namespace "default""#
    );
    // Without a token the caller is anonymous; with a token no one issued it is a 401.
    let status = refused(
        Api::<Pod>::all(client(&fake))
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert!(
        status.message.contains(r#"User "system:anonymous" cannot list"#),
        "{}",
        status.message
    );
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.auth_info.token = Some("stolen".to_owned().into());
    let stranger = Api::<Pod>::all(Client::try_from(config).unwrap());
    assert_eq!(
        refused(stranger.list(&ListParams::default()).await.unwrap_err()).code,
        401
    );

    // SelfSubjectAccessReview: the same rules, for the caller.
    let reviews: Api<SelfSubjectAccessReview> = Api::all(adapter);
    let may = async |verb: &str, group: &str, resource: &str| {
        let review = SelfSubjectAccessReview {
            spec: k8s_openapi::api::authorization::v1::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await.unwrap();
        answer.status.unwrap().allowed
    };
    assert!(may("list", "", "pods").await);
    assert!(!may("watch", "", "pods").await);
    assert!(!may("list", "batch", "jobs").await);
    fake.allow(ADAPTER_USER, "*", "batch", "jobs");
    assert!(may("watch", "batch", "jobs").await);
    assert!(jobs.list(&ListParams::default()).await.is_ok());
    let post = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(
        post.path,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    );
}

#[tokio::test]
async fn namespaced_rules_denials_and_review_faults() {
    let fake = FakeKube::start().await;
    fake.allow_in("default", "alice", "get", "custom.metrics.k8s.io", "*");
    fake.allow("hpa", "get", "custom.metrics.k8s.io", "*");
    fake.deny_in("kube-system", "hpa", "*", "*", "*");
    fake.add_token("t", "bob", &[]);
    let sars: Api<SubjectAccessReview> = Api::all(client(&fake));
    let sar = |user: &str, namespace: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".into()),
                group: Some("custom.metrics.k8s.io".into()),
                resource: Some("pods".into()),
                name: Some("*".into()),
                namespace: (!namespace.is_empty()).then(|| namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let check =
        async |user: &str, namespace: &str| sars.create(&PostParams::default(), &sar(user, namespace)).await;
    let status = async |user: &str, namespace: &str| {
        let status = check(user, namespace).await.unwrap().status.unwrap();
        (status.allowed, status.denied.unwrap_or(false))
    };
    assert_eq!(status("alice", "default").await, (true, false));
    assert_eq!(
        status("alice", "staging").await,
        (false, false),
        "a RoleBinding's namespace only"
    );
    assert_eq!(status("alice", "").await, (false, false));
    assert_eq!(status("hpa", "default").await, (true, false));
    assert_eq!(status("hpa", "kube-system").await, (false, true), "deny wins");
    let namespaces: Vec<Option<String>> = fake
        .access_reviews()
        .into_iter()
        .map(|r| r.spec.resource_attributes.unwrap().namespace)
        .collect();
    assert_eq!(namespaces.len(), 5);
    assert_eq!(namespaces[4].as_deref(), Some("kube-system"));

    fake.set_review_fault(Review::Access, Some(ReviewFault::Fail(503)));
    // kube retries 503s for minutes by default; this client shows the first answer.
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.default_retry = false;
    let once: Api<SubjectAccessReview> = Api::all(Client::try_from(config).unwrap());
    let failed = once
        .create(&PostParams::default(), &sar("hpa", "default"))
        .await
        .unwrap_err();
    assert!(matches!(failed, kube::Error::Api(s) if s.code == 503 && s.reason == "ServiceUnavailable"));
    fake.set_review_fault(Review::Access, Some(ReviewFault::Hang));
    let hung = tokio::time::timeout(Duration::from_millis(300), check("hpa", "default")).await;
    assert!(hung.is_err(), "a hanging review does not answer");
    let (api, review) = (sars.clone(), sar("hpa", "default"));
    let waiting = tokio::spawn(async move { api.create(&PostParams::default(), &review).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_review_fault(Review::Access, None);
    let answer = waiting.await.unwrap().unwrap();
    assert!(answer.status.unwrap().allowed, "answers once the fault clears");

    let tokens: Api<TokenReview> = Api::all(client(&fake));
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: "t".into(),
            audiences: None,
        },
        ..Default::default()
    };
    fake.set_review_fault(Review::Token, Some(ReviewFault::Fail(500)));
    let failed = tokens.create(&PostParams::default(), &review).await.unwrap_err();
    assert!(matches!(failed, kube::Error::Api(s) if s.code == 500 && s.reason == "InternalError"));
    fake.set_review_fault(Review::Token, None);
    let ok = tokens.create(&PostParams::default(), &review).await.unwrap();
    assert_eq!(ok.status.unwrap().authenticated, Some(true));
}

#[tokio::test]
async fn kubeconfig_reaches_the_fake_with_the_token() {
    let fake = FakeKube::start().await;
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = Kubeconfig::read_from(fake.write_kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let namespaces = Api::<Namespace>::all(Client::try_from(config).unwrap());
    let names: Vec<String> = namespaces
        .list(&Default::default())
        .await
        .unwrap()
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert_eq!(names, ["default", "kube-system"]);
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer adapter-token"));
    fake.clear_requests();
    assert!(fake.requests().is_empty());
    let url = fake.url();
    drop(fake);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        reqwest::get(format!("{url}/api")).await.is_err(),
        "dropping FakeKube stops the server"
    );
}
