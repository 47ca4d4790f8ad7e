//! Discovery documents (`/apis`, `/apis/<group>`, `/apis/<group>/<version>`), `/version` and
//! a minimal OpenAPI document for the aggregator.
use axum::{extract::State, http::StatusCode, response::Response};
use serde_json::json;

use super::SharedState;
use super::{
    ApiError, EXTERNAL_GROUP, GROUPS, GroupDef, Params, PathParts, RESOURCE_GROUP, json_response,
    served_groups,
    types::{ApiGroup, ApiGroupList, ApiResource, ApiResourceList, GroupVersion, VersionInfo},
    wants_pretty,
};

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

pub(super) async fn group_list(State(state): State<SharedState>, Params(params): Params) -> Response {
    let list = ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups: served_groups(&state.pipeline)
            .into_iter()
            .map(|def| api_group(def, false))
            .collect(),
    };
    json_response(StatusCode::OK, &list, wants_pretty(&params))
}

pub(super) async fn group(
    State(state): State<SharedState>,
    PathParts(group): PathParts<String>,
    Params(params): Params,
) -> Response {
    match served_groups(&state.pipeline)
        .into_iter()
        .find(|def| def.name == group)
    {
        Some(def) => json_response(StatusCode::OK, &api_group(def, true), wants_pretty(&params)),
        None => axum::response::IntoResponse::into_response(ApiError::unknown_route()),
    }
}

/// One entry per (resource, metric) pair discovered, sorted; `resources: []` before discovery.
pub(super) async fn resource_list(
    State(state): State<SharedState>,
    PathParts((group, version)): PathParts<(String, String)>,
    Params(params): Params,
) -> Response {
    let served = served_groups(&state.pipeline)
        .into_iter()
        .any(|g| g.name == group && g.versions.contains(&version.as_str()));
    let resources = if !served {
        return axum::response::IntoResponse::into_response(ApiError::unknown_route());
    } else if group == RESOURCE_GROUP.name {
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
    } else if group == EXTERNAL_GROUP.name {
        state
            .pipeline
            .external_metric_names()
            .into_iter()
            .map(|metric| ApiResource {
                name: metric,
                singular_name: String::new(),
                namespaced: true,
                kind: "ExternalMetricValueList",
                verbs: vec!["get"],
            })
            .collect()
    } else {
        state
            .pipeline
            .served_metrics()
            .await
            .into_iter()
            .map(|metric| ApiResource {
                name: metric.name,
                singular_name: String::new(),
                namespaced: metric.namespaced,
                kind: "MetricValueList",
                verbs: vec!["get"],
            })
            .collect()
    };
    let list = ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: format!("{group}/{version}"),
        resources,
    };
    json_response(StatusCode::OK, &list, wants_pretty(&params))
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
