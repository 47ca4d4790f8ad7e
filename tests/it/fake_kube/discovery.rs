//! Discovery as Kubernetes 1.26+ serves it: the legacy documents and aggregated discovery, with
//! the faults tests inject (many groups, unavailable aggregated APIs, root discovery down).

use std::net::SocketAddr;

use axum::{
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{
        APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
        ServerAddressByClientCIDR,
    },
    version::Info,
};
use serde_json::{Value, json};

use super::{
    FakeKube, Inner, not_found, respond, status,
    store::{ResType, gv},
};

impl FakeKube {
    /// Adds `count` CRD groups (`group-<i>.example.com/v1`, one namespaced resource each), the
    /// size of a real cluster's discovery (one with 183 groups was seen).
    pub fn add_groups(&self, count: usize) {
        for i in 0..count {
            self.add_resource_type(
                &format!("group-{i}.example.com"),
                "v1",
                &format!("widget{i}s"),
                &format!("widget{i}"),
                &format!("Widget{i}"),
                true,
                &[],
            );
        }
    }

    /// Registers an aggregated API `group/version` (like an APIService) whose backend is down:
    /// it is listed in `/apis`, and everything under `/apis/<group>/<version>` answers 503.
    pub fn add_unavailable_api(&self, group: &str, version: &str) {
        self.add_resource_type(group, version, "things", "thing", "Thing", true, &[]);
        self.set_api_available(group, version, false);
    }

    /// Brings an aggregated API's backend up or down.
    pub fn set_api_available(&self, group: &str, version: &str, available: bool) {
        let mut inner = self.shared.lock();
        if available {
            inner.unavailable.remove(&gv(group, version));
        } else {
            inner.unavailable.insert(gv(group, version));
        }
    }

    /// Serve only legacy discovery (a server before aggregated discovery).
    pub fn legacy_discovery_only(&self) {
        self.shared.lock().legacy_discovery_only = true;
    }

    /// Makes `/api`, `/api/v1` and `/apis` answer 503 (or answer again).
    pub fn set_discovery_down(&self, down: bool) {
        self.shared.lock().discovery_down = down;
    }
}

/// What the real server answers instead of the request, for the faults tests inject: 503 from the
/// aggregator for an unavailable aggregated group (its plain-text `service unavailable`), 503 for
/// the root discovery documents while they are down.
pub(super) fn fault(inner: &Inner, segments: &[&str]) -> Option<Response> {
    match segments {
        ["api" | "apis"] | ["api", "v1"] if inner.discovery_down => Some(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
        )),
        ["apis", group, version, ..] if inner.unavailable.contains(&gv(group, version)) => Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "service unavailable\n",
            )
                .into_response(),
        ),
        _ => None,
    }
}

/// The media type of aggregated discovery (apidiscovery.k8s.io/v2), as clients ask for it.
const AGGREGATED_V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub(super) fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.replace(' ', "").starts_with(AGGREGATED_V2))
}

/// `/api` or `/apis` as an `APIGroupDiscoveryList`: every group with its versions and resources;
/// an unavailable aggregated group/version is listed `Stale` with no resources, as the aggregator
/// lists one it could never reach.
/// A group's versions in the order they were added (the first is preferred) with their types.
type Versions<'a> = Vec<(String, Vec<&'a ResType>)>;

pub(super) fn aggregated(inner: &Inner, core: bool) -> Response {
    let mut groups: Vec<(String, Versions)> = Vec::new();
    for t in inner.types.iter().filter(|t| t.group.is_empty() == core) {
        let versions = match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => versions,
            None => {
                groups.push((t.group.clone(), Vec::new()));
                &mut groups.last_mut().expect("just pushed").1
            }
        };
        match versions.iter_mut().find(|(v, _)| *v == t.version) {
            Some((_, types)) => types.push(t),
            None => versions.push((t.version.clone(), vec![t])),
        }
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|(version, types)| {
                    let stale = inner.unavailable.contains(&gv(group, version));
                    let resources: Vec<Value> = if stale {
                        Vec::new()
                    } else {
                        types.iter().map(|t| aggregated_resource(t)).collect()
                    };
                    json!({"version": version, "resources": resources,
                           "freshness": if stale { "Stale" } else { "Current" }})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
                      "metadata": {}, "items": items});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, AGGREGATED_V2)],
        serde_json::to_vec(&body).expect("serialize"),
    )
        .into_response()
}

fn aggregated_resource(t: &ResType) -> Value {
    let mut resource = json!({
        "resource": t.plural,
        "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": t.verbs,
    });
    if !t.short_names.is_empty() {
        resource["shortNames"] = json!(t.short_names);
    }
    resource
}

pub(super) fn resource_list(inner: &Inner, group: &str, version: &str) -> Response {
    let resources: Vec<APIResource> = inner
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .map(|t| APIResource {
            kind: t.kind.clone(),
            name: t.plural.clone(),
            namespaced: t.namespaced,
            short_names: (!t.short_names.is_empty()).then(|| t.short_names.clone()),
            singular_name: t.singular.clone(),
            verbs: t.verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        })
        .collect();
    if resources.is_empty() {
        return not_found();
    }
    respond(
        StatusCode::OK,
        &APIResourceList {
            group_version: gv(group, version),
            resources,
        },
    )
}

/// `/version`: the release the fake claims to be.
pub(super) fn version() -> Response {
    respond(
        StatusCode::OK,
        &Info {
            git_version: "v1.32.0-fake".into(),
            major: "1".into(),
            minor: "32".into(),
            platform: "linux/amd64".into(),
            ..Default::default()
        },
    )
}

/// Legacy `/api`: the core group's one version, reachable at the fake's own address.
pub(super) fn core_versions(addr: SocketAddr) -> Response {
    respond(
        StatusCode::OK,
        &APIVersions {
            versions: vec!["v1".into()],
            server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
                client_cidr: "0.0.0.0/0".into(),
                server_address: addr.to_string(),
            }],
        },
    )
}

/// Legacy `/apis`: every named group with its versions, the first added preferred.
pub(super) fn groups(inner: &Inner) -> Response {
    let mut groups: Vec<APIGroup> = Vec::new();
    for t in inner.types.iter().filter(|t| !t.group.is_empty()) {
        let version = GroupVersionForDiscovery {
            group_version: t.api_version(),
            version: t.version.clone(),
        };
        match groups.iter_mut().find(|g| g.name == t.group) {
            Some(g) if !g.versions.contains(&version) => g.versions.push(version),
            Some(_) => {}
            None => groups.push(APIGroup {
                name: t.group.clone(),
                preferred_version: Some(version.clone()),
                server_address_by_client_cidrs: None,
                versions: vec![version],
            }),
        }
    }
    respond(StatusCode::OK, &APIGroupList { groups })
}
