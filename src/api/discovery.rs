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
