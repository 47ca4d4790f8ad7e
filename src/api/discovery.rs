//! Discovery documents (`/apis`, `/apis/<group>`, `/apis/<group>/<version>`), `/version` and
//! a minimal OpenAPI document for the aggregator.
//!
//! The discovery documents are built once per catalog (a relist, a rules reload, a change in
//! what RBAC allows) and kept as bytes, gzip-compressed bytes and an ETag: kubectl and the
//! aggregator fetch them constantly, and with thousands of metrics they are megabytes.
use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    io::Write,
    sync::Arc,
};

use arc_swap::ArcSwapOption;
use axum::{
    body::Body,
    extract::State,
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY},
    },
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};
use serde::Serialize;
use serde_json::json;

use super::SharedState;
use super::{
    ApiError, EXTERNAL_GROUP, GROUPS, GroupDef, Params, PathParts, RESOURCE_GROUP, groups_served,
    json_response,
    types::{ApiGroup, ApiGroupList, ApiResource, ApiResourceList, GroupVersion, VersionInfo},
    wants_pretty,
};
use crate::pipeline::{Catalog, Pipeline, ServedMetric};

fn api_group(def: &GroupDef, with_type_meta: bool) -> ApiGroup {
    let group_version = |version: &str| GroupVersion {
        group_version: format!("{}/{version}", def.name),
        version: version.to_owned(),
    };
    ApiGroup {
        kind: with_type_meta.then_some("APIGroup"),
        api_version: with_type_meta.then_some("v1"),
        name: def.name.to_owned(),
        versions: def.versions.iter().map(|v| group_version(v)).collect(),
        preferred_version: group_version(def.versions[0]),
    }
}

/// The state of the discovery routes: the handlers' context and the prebuilt documents.
#[derive(Clone)]
pub(super) struct DiscoveryState {
    context: SharedState,
    cache: Arc<DocumentCache>,
}

impl DiscoveryState {
    pub(super) fn new(context: SharedState) -> Self {
        DiscoveryState {
            context,
            cache: Arc::default(),
        }
    }
}

pub(super) async fn group_list(
    State(state): State<DiscoveryState>,
    Params(params): Params,
    headers: HeaderMap,
) -> Response {
    serve(&state, "/apis".to_owned(), &params, &headers).await
}

pub(super) async fn group(
    State(state): State<DiscoveryState>,
    PathParts(group): PathParts<String>,
    Params(params): Params,
    headers: HeaderMap,
) -> Response {
    serve(&state, format!("/apis/{group}"), &params, &headers).await
}

/// One entry per (resource, metric) pair discovered, sorted; `resources: []` before discovery.
pub(super) async fn resource_list(
    State(state): State<DiscoveryState>,
    PathParts((group, version)): PathParts<(String, String)>,
    Params(params): Params,
    headers: HeaderMap,
) -> Response {
    serve(&state, format!("/apis/{group}/{version}"), &params, &headers).await
}

/// Answers a discovery GET from the prebuilt documents of the current catalog: 304 when the
/// client has them, gzip when it takes it. `?pretty` is rare enough to serialize on demand.
async fn serve(
    state: &DiscoveryState,
    path: String,
    params: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let documents = match state.cache.documents(&state.context.pipeline).await {
        Ok(documents) => documents,
        Err(err) => return err.into_response(),
    };
    let Some(prebuilt) = documents.by_path.get(&path) else {
        return ApiError::unknown_route().into_response();
    };
    if wants_pretty(params) {
        let lists = Lists::of(&documents.catalog);
        return match targets(documents.catalog.resource_metrics())
            .into_iter()
            .find(|(target_path, _)| *target_path == path)
        {
            Some((_, target)) => json_response(StatusCode::OK, &document(&target, &lists), true),
            None => ApiError::unknown_route().into_response(),
        };
    }
    prebuilt.respond(headers)
}

/// A discovery document ready to send: its JSON, the same gzip-compressed, and a strong ETag.
#[derive(Debug)]
struct Prebuilt {
    identity: Bytes,
    gzip: Bytes,
    etag: HeaderValue,
}

impl Prebuilt {
    fn new(identity: Vec<u8>) -> Result<Prebuilt, ApiError> {
        let failed = |err: std::io::Error| {
            tracing::error!(error = %err, "Compressing a discovery document failed");
            ApiError::internal("compressing a discovery document failed; retry, and report it if it persists")
        };
        let mut encoder = GzEncoder::new(Vec::with_capacity(identity.len() / 8), Compression::fast());
        encoder.write_all(&identity).map_err(failed)?;
        let gzip = encoder.finish().map_err(failed)?;
        // A strong validator: the same bytes give the same tag, in every replica of one build.
        let mut hasher = std::hash::DefaultHasher::new();
        identity.hash(&mut hasher);
        let etag = format!("\"{:x}-{:016x}\"", identity.len(), hasher.finish());
        let etag =
            HeaderValue::from_str(&etag).map_err(|_| ApiError::internal("an invalid ETag was made"))?;
        Ok(Prebuilt {
            identity: identity.into(),
            gzip: gzip.into(),
            etag,
        })
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let not_modified = if_none_match(request, &self.etag);
        let (status, body, gzip) = match (not_modified, accepts_gzip(request)) {
            (true, _) => (StatusCode::NOT_MODIFIED, Bytes::new(), false),
            (false, true) => (StatusCode::OK, self.gzip.clone(), true),
            (false, false) => (StatusCode::OK, self.identity.clone(), false),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(ETAG, self.etag.clone());
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        if !not_modified {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`): RFC 9110 §13.1.2, weak comparison, every
/// header line a comma-separated list.
fn if_none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// Whether `Accept-Encoding` takes gzip: named (or `x-gzip`, or `*` when gzip is not named)
/// with a weight above zero (RFC 9110 §12.5.3).
fn accepts_gzip(request: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    let codings = request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for coding in codings {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|param| param.trim().split_once('='))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, value)| value.trim().parse::<f32>().unwrap_or(0.0));
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(weight > 0.0),
            "*" => any = Some(weight > 0.0),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// The prebuilt documents of the latest catalog asked for; rebuilt when it changes.
#[derive(Default)]
pub(super) struct DocumentCache {
    current: ArcSwapOption<Documents>,
    /// One rebuild at a time: requests that find the catalog changed wait for it, not repeat it.
    rebuilding: tokio::sync::Mutex<()>,
}

/// Every discovery document of one catalog, by request path.
struct Documents {
    catalog: Catalog,
    by_path: HashMap<String, Arc<Prebuilt>>,
}

impl DocumentCache {
    /// The documents of the current catalog: the cached ones while the catalog is the same.
    async fn documents(&self, pipeline: &Pipeline) -> Result<Arc<Documents>, ApiError> {
        let cached = self.current.load_full();
        let catalog = pipeline.catalog(cached.as_ref().map(|d| &d.catalog)).await;
        if let Some(documents) = cached.filter(|d| d.catalog.same_as(&catalog)) {
            return Ok(documents);
        }
        let _rebuilding = self.rebuilding.lock().await;
        // Asked again under the lock: another request may have rebuilt meanwhile, or the catalog
        // moved on while this one waited (and an older catalog must not replace a newer one).
        let previous = self.current.load_full();
        let catalog = pipeline.catalog(previous.as_ref().map(|d| &d.catalog)).await;
        if let Some(documents) = previous.as_ref().filter(|d| d.catalog.same_as(&catalog)) {
            return Ok(documents.clone());
        }
        // Serialising and compressing thousands of metric names is CPU work to keep off the
        // request threads.
        let built = tokio::task::spawn_blocking(move || Documents::build(catalog, previous.as_deref()))
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "Building the discovery documents failed");
                ApiError::internal(
                    "building the discovery documents failed; retry, and report it if it persists",
                )
            })??;
        let built = Arc::new(built);
        self.current.store(Some(built.clone()));
        Ok(built)
    }
}

impl Documents {
    /// Serializes every served document of `catalog`; a document whose bytes did not change
    /// since `previous` keeps its compressed form and tag rather than compressing again.
    fn build(catalog: Catalog, previous: Option<&Documents>) -> Result<Documents, ApiError> {
        let lists = Lists::of(&catalog);
        let mut by_path = HashMap::new();
        for (path, target) in targets(catalog.resource_metrics()) {
            let mut bytes = serde_json::to_vec(&document(&target, &lists)).map_err(|err| {
                tracing::error!(error = %err, "Serialising a discovery document failed");
                ApiError::internal("serialising a discovery document failed")
            })?;
            bytes.push(b'\n');
            let prebuilt = match previous.and_then(|p| p.by_path.get(&path)) {
                Some(unchanged) if unchanged.identity == bytes => unchanged.clone(),
                _ => Arc::new(Prebuilt::new(bytes)?),
            };
            by_path.insert(path, prebuilt);
        }
        Ok(Documents { catalog, by_path })
    }
}

/// A discovery document: what `/apis`, `/apis/<group>` or `/apis/<group>/<version>` returns.
enum Target {
    Groups,
    Group(&'static GroupDef),
    Resources(&'static GroupDef, &'static str),
}

/// Every served document, by path.
fn targets(resource_metrics: bool) -> Vec<(String, Target)> {
    let groups = groups_served(resource_metrics);
    let mut targets = vec![("/apis".to_owned(), Target::Groups)];
    for def in groups {
        targets.push((format!("/apis/{}", def.name), Target::Group(def)));
        for version in def.versions {
            targets.push((
                format!("/apis/{}/{version}", def.name),
                Target::Resources(def, version),
            ));
        }
    }
    targets
}

/// The metric lists of a catalog, made once for every document that lists them.
struct Lists {
    resource_metrics: bool,
    custom: Vec<ServedMetric>,
    external: Vec<String>,
}

impl Lists {
    fn of(catalog: &Catalog) -> Lists {
        Lists {
            resource_metrics: catalog.resource_metrics(),
            custom: catalog.served_metrics(),
            external: catalog.external_metric_names(),
        }
    }
}

/// The wire form of one document; each variant serialises as the type it holds.
#[derive(Serialize)]
#[serde(untagged)]
enum Document {
    Groups(ApiGroupList),
    Group(ApiGroup),
    Resources(ApiResourceList),
}

fn document(target: &Target, lists: &Lists) -> Document {
    match target {
        Target::Groups => Document::Groups(ApiGroupList {
            kind: "APIGroupList",
            api_version: "v1",
            groups: groups_served(lists.resource_metrics)
                .into_iter()
                .map(|def| api_group(def, false))
                .collect(),
        }),
        Target::Group(def) => Document::Group(api_group(def, true)),
        Target::Resources(def, version) => Document::Resources(ApiResourceList {
            kind: "APIResourceList",
            api_version: "v1",
            group_version: format!("{}/{version}", def.name),
            resources: resources(def, lists),
        }),
    }
}

fn resources(def: &GroupDef, lists: &Lists) -> Vec<ApiResource> {
    if def.name == RESOURCE_GROUP.name {
        [("nodes", "NodeMetrics", false), ("pods", "PodMetrics", true)]
            .into_iter()
            .map(|(name, kind, namespaced)| ApiResource {
                name: name.to_owned(),
                singular_name: String::new(),
                namespaced,
                kind,
                verbs: vec!["get", "list"],
            })
            .collect()
    } else if def.name == EXTERNAL_GROUP.name {
        lists
            .external
            .iter()
            .map(|metric| ApiResource {
                name: metric.clone(),
                singular_name: String::new(),
                namespaced: true,
                kind: "ExternalMetricValueList",
                verbs: vec!["get"],
            })
            .collect()
    } else {
        lists
            .custom
            .iter()
            .map(|metric| ApiResource {
                name: metric.name.clone(),
                singular_name: String::new(),
                namespaced: metric.namespaced,
                kind: "MetricValueList",
                verbs: vec!["get"],
            })
            .collect()
    }
}

pub(super) async fn version(Params(params): Params) -> Response {
    let info = VersionInfo {
        major: "",
        minor: "",
        git_version: concat!("v", env!("CARGO_PKG_VERSION")).to_owned(),
        git_commit: "",
        git_tree_state: "",
        build_date: "",
        go_version: "",
        compiler: "rustc",
        platform: format!("{}/{}", std::env::consts::OS, go_arch()),
    };
    json_response(StatusCode::OK, &info, wants_pretty(&params))
}

/// Go's GOARCH spelling of this machine's architecture.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// A valid Swagger 2.0 document naming the served paths; the aggregator merges it into the
/// cluster's OpenAPI and only logs noise when it is missing.
pub(super) async fn openapi_v2(Params(params): Params) -> Response {
    let mut paths = serde_json::Map::new();
    for def in GROUPS {
        for version in def.versions {
            let prefix = format!("/apis/{}/{version}", def.name);
            for suffix in [
                "/namespaces/{namespace}/{resource}/{name}/{metric}",
                "/{resource}/{name}/{metric}",
                "/namespaces/{namespace}/metrics/{metric}",
            ] {
                let operation = json!({
                    "get": {
                        "description": "read a custom metric of the described object(s)",
                        "produces": ["application/json"],
                        "schemes": ["https"],
                        "operationId": format!("read{}{}{}", def.name.replace(['.', '-'], ""), version, suffix.replace(['/', '{', '}'], "")),
                        "responses": {"200": {"description": "MetricValueList"}}
                    }
                });
                paths.insert(format!("{prefix}{suffix}"), operation);
            }
        }
    }
    let document = json!({
        "swagger": "2.0",
        "info": {"title": "custom-metrics-adapter", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "definitions": {}
    });
    json_response(StatusCode::OK, &document, wants_pretty(&params))
}

pub(super) async fn openapi_v3(Params(params): Params) -> Response {
    json_response(StatusCode::OK, &json!({"paths": {}}), wants_pretty(&params))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use axum::{body::to_bytes, http::Request};
    use tower::ServiceExt;

    use super::*;
    use crate::{
        api::Context,
        backend::MemoryBackend,
        health::Health,
        pipeline::Parts,
        rules::{self, RuleSet},
    };

    const V1BETA2: &str = "/apis/custom.metrics.k8s.io/v1beta2";

    /// A pipeline over `backend` with the built-in rules, relisted once.
    async fn pipeline(backend: &Arc<MemoryBackend>) -> Arc<Pipeline> {
        let pipeline = Pipeline::new(Parts {
            rules: RuleSet::custom(rules::default_rules("2m").unwrap()),
            backend: backend.clone(),
            objects: None,
            resources: Default::default(),
            max_age: Duration::from_secs(600),
            metrics: Default::default(),
        });
        pipeline.relist().await.unwrap();
        Arc::new(pipeline)
    }

    /// A backend with one gauge of one pod under each of `names` metric names.
    fn backend(names: usize) -> Arc<MemoryBackend> {
        let backend = Arc::new(MemoryBackend::new());
        let now = SystemTime::now();
        for i in 0..names {
            backend.add_series(
                &format!("synthetic_gauge_{i:05}"),
                [("namespace", "default"), ("pod", "web-0")],
                1.0,
                now,
            );
        }
        backend
    }

    #[tokio::test]
    async fn requests_serve_the_documents_built_once() {
        let backend = backend(3);
        let pipeline = pipeline(&backend).await;
        let cache = DocumentCache::default();
        let first = cache.documents(&pipeline).await.unwrap();
        for _ in 0..100 {
            let again = cache.documents(&pipeline).await.unwrap();
            assert!(
                Arc::ptr_eq(&first, &again),
                "no rebuild while the catalog is the same"
            );
        }
        let list = first.by_path[V1BETA2].clone();
        assert!(
            std::str::from_utf8(&list.identity)
                .unwrap()
                .contains("pods/synthetic_gauge_00002")
        );

        // A relist swaps in a new snapshot: the documents are rebuilt, but unchanged bytes keep
        // their compressed form and tag.
        pipeline.relist().await.unwrap();
        let relisted = cache.documents(&pipeline).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &relisted));
        assert!(Arc::ptr_eq(&list, &relisted.by_path[V1BETA2]));

        // A new metric is a new document with a new tag.
        backend.add_series(
            "synthetic_gauge_new",
            [("namespace", "default"), ("pod", "web-0")],
            1.0,
            SystemTime::now(),
        );
        pipeline.relist().await.unwrap();
        let changed = cache.documents(&pipeline).await.unwrap();
        let new_list = &changed.by_path[V1BETA2];
        assert_ne!(new_list.etag, list.etag);
        assert!(
            std::str::from_utf8(&new_list.identity)
                .unwrap()
                .contains("pods/synthetic_gauge_new")
        );
        assert!(Arc::ptr_eq(&relisted.by_path["/apis"], &changed.by_path["/apis"]));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn accept_encoding_weights_and_wildcards() {
        for accepted in [
            "gzip",
            "GZIP",
            "x-gzip",
            "deflate, gzip;q=0.1",
            "*",
            "br;q=0, *;q=0.5",
        ] {
            assert!(
                accepts_gzip(&headers(&[("accept-encoding", accepted)])),
                "{accepted}"
            );
        }
        for refused in [
            "",
            "identity",
            "gzip;q=0",
            "gzip; q=0.000",
            "*;q=0",
            "*, gzip;q=0",
            "br",
        ] {
            assert!(
                !accepts_gzip(&headers(&[("accept-encoding", refused)])),
                "{refused}"
            );
        }
        assert!(accepts_gzip(&headers(&[
            ("accept-encoding", "br"),
            ("accept-encoding", "gzip")
        ])));
    }

    #[test]
    fn if_none_match_lists_wildcards_and_weak_tags() {
        let etag = HeaderValue::from_static("\"1f-00ab\"");
        for matching in [
            "\"1f-00ab\"",
            "*",
            "W/\"1f-00ab\"",
            "\"x\", \"1f-00ab\"",
            "\"x\",W/\"1f-00ab\"",
        ] {
            assert!(
                if_none_match(&headers(&[("if-none-match", matching)]), &etag),
                "{matching}"
            );
        }
        for other in ["\"1f-00ac\"", "1f-00ab", "\"x\", \"y\""] {
            assert!(
                !if_none_match(&headers(&[("if-none-match", other)]), &etag),
                "{other}"
            );
        }
        assert!(!if_none_match(&HeaderMap::new(), &etag));
        assert!(if_none_match(
            &headers(&[("if-none-match", "\"x\""), ("if-none-match", "\"1f-00ab\"")]),
            &etag
        ));
    }

    /// Times serving `/apis/custom.metrics.k8s.io/v1beta2` with 10,000 metric names: building
    /// it per request (what the handler did before) against the prebuilt bytes through the
    /// router. Prints numbers; asserts nothing about time. Run with
    /// `cargo test --release --lib -- --ignored --nocapture discovery_with_10000`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test"]
    async fn discovery_with_10000_metric_names() {
        let pipeline = pipeline(&backend(10_000)).await;
        let rounds = 200;
        let started = Instant::now();
        let mut size = 0;
        for _ in 0..rounds {
            let catalog = pipeline.catalog(None).await;
            let target = Target::Resources(&GROUPS[0], "v1beta2");
            let bytes = serde_json::to_vec(&document(&target, &Lists::of(&catalog))).unwrap();
            size = bytes.len();
        }
        let per_request_build = started.elapsed() / rounds;
        let started = Instant::now();
        let catalog = pipeline.catalog(None).await;
        Documents::build(catalog, None).unwrap();
        let whole_build = started.elapsed();

        let metrics = Arc::new(crate::telemetry::Metrics::default());
        let context = Arc::new(Context {
            pipeline: pipeline.clone(),
            health: Arc::new(Health::new(Vec::new(), metrics.clone())),
            metrics,
        });
        let router = super::super::router(context, None);
        let request = |encoding: &'static str, tag: Option<&str>| {
            let mut request = Request::get(V1BETA2).header("accept-encoding", encoding);
            if let Some(tag) = tag {
                request = request.header("if-none-match", tag);
            }
            request.body(Body::empty()).unwrap()
        };
        let first = router.clone().oneshot(request("identity", None)).await.unwrap();
        let etag = first.headers()[ETAG].to_str().unwrap().to_owned();
        let mut report = vec![format!(
            "{size} bytes; built per request (before): {per_request_build:?}; every document and its gzip, once per catalog change: {whole_build:?}"
        )];
        for (what, encoding, tag) in [
            ("prebuilt identity", "identity", None),
            ("prebuilt gzip", "gzip", None),
            ("304", "gzip", Some(etag.as_str())),
        ] {
            let started = Instant::now();
            let mut body_size = 0;
            for _ in 0..rounds {
                let response = router.clone().oneshot(request(encoding, tag)).await.unwrap();
                body_size = to_bytes(response.into_body(), usize::MAX).await.unwrap().len();
            }
            report.push(format!(
                "{what} ({body_size} bytes): {:?}",
                started.elapsed() / rounds
            ));
        }
        println!("v1beta2 with 10,000 metric names: {}", report.join("; "));
    }
}
