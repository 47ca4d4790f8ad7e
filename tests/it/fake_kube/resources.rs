//! GET and LIST of resources: routing, selectors, metadata-only answers and pagination.

use std::{
    collections::{BTreeMap, HashMap},
    marker::PhantomData,
    sync::Arc,
};

use axum::{
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use custom_metrics_adapter::selector::Selector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::core::{DynamicObject, ObjectList, PartialObjectMeta, TypeMeta};
use serde_json::Value;

use super::{
    Inner, Shared, bad_request, not_found, respond, status,
    store::{READ_VERBS, ResType, to_value},
    watches,
};

/// What LIST/WATCH/GET select: namespace, label selector, field selector.
#[derive(Clone)]
pub(super) struct Filter {
    namespace: Option<String>,
    labels: Selector,
    /// (JSON pointer, equal?, value)
    pub(super) fields: Vec<(&'static str, bool, String)>,
}

impl Filter {
    fn parse(rt: &ResType, namespace: Option<&str>, query: &HashMap<String, String>) -> Result<Self, String> {
        let labels = Selector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| format!("unable to parse requirement: {e}"))?;
        let mut fields = Vec::new();
        for term in query
            .get("fieldSelector")
            .map_or("", String::as_str)
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'; can't understand '{term}'"));
            };
            let pointer = match key.trim() {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                "status.phase" if rt.plural == "pods" && rt.group.is_empty() => "/status/phase",
                other => {
                    return Err(format!(
                        "field label not supported: {other} (the fake supports metadata.name, metadata.namespace, pods status.phase)"
                    ));
                }
            };
            fields.push((pointer, eq, value.trim().to_owned()));
        }
        Ok(Filter {
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let text = |pointer: &str| {
            obj.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != text("/metadata/namespace"))
        {
            return false;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        self.labels.matches(&labels)
            && self
                .fields
                .iter()
                .all(|(pointer, eq, value)| (text(pointer) == *value) == *eq)
    }
}

/// Whether the Accept header asks for metadata only (`as=PartialObjectMetadata[List]`); an `as=`
/// the fake cannot produce (e.g. Table) with no plain-JSON alternative is 406, as upstream.
fn metadata_only(headers: &HeaderMap, list: bool) -> Result<bool, String> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let wanted = if list {
        "PartialObjectMetadataList"
    } else {
        "PartialObjectMetadata"
    };
    for alternative in accept.split(',') {
        let as_param = alternative
            .split(';')
            .skip(1)
            .find_map(|p| p.trim().strip_prefix("as="));
        match as_param {
            None => return Ok(false),
            Some(a) if a == wanted => return Ok(true),
            Some(_) => {}
        }
    }
    Err(format!(
        "only the following media types are accepted: application/json, application/json;as={wanted};g=meta.k8s.io;v=v1"
    ))
}

pub(super) fn partial(obj: &Value) -> Value {
    let meta = PartialObjectMeta::<DynamicObject> {
        types: Some(TypeMeta {
            api_version: "meta.k8s.io/v1".into(),
            kind: "PartialObjectMetadata".into(),
        }),
        metadata: serde_json::from_value(obj["metadata"].clone()).unwrap_or_default(),
        _phantom: PhantomData,
    };
    to_value(&meta)
}

/// GET, LIST or WATCH of `rest` (`[namespaces/<ns>/]<plural>[/<name>]`) in a group/version, authorized
/// first when RBAC is enforced.
pub(super) fn resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    watch: bool,
) -> Response {
    let (namespace, plural, name) = match *rest {
        [plural] => (None, plural, None),
        ["namespaces", ns, plural] => (Some(ns), plural, None),
        ["namespaces", ns, plural, name] => (Some(ns), plural, Some(name)),
        [plural, name] => (None, plural, Some(name)),
        _ => return not_found(),
    };
    let inner = shared.lock();
    // As on the real server, authorization comes before routing: an unknown resource is a 403 too.
    let verb = match (name, watch) {
        (_, true) => "watch",
        (Some(_), false) => "get",
        (None, false) => "list",
    };
    if let Some(refused) = inner.authorize(headers, verb, (group, plural), namespace, name) {
        return refused;
    }
    let Some(rt) = inner.find(group, Some(version), plural).cloned() else {
        return not_found();
    };
    if rt.verbs != READ_VERBS {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{plural} only support create"),
        );
    }
    if (namespace.is_some() && !rt.namespaced) || (name.is_some() && rt.namespaced && namespace.is_none()) {
        return not_found();
    }
    let filter = match Filter::parse(&rt, namespace, query) {
        Ok(f) => f,
        Err(message) => return bad_request(message),
    };
    let meta = match metadata_only(headers, name.is_none() && !watch) {
        Ok(m) => m,
        Err(message) => return status(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message),
    };
    if watch {
        return watches::watch(shared, inner, rt, filter, name, meta, query);
    }
    let store = inner.objects.get(&(rt.group.clone(), rt.plural.clone()));
    match name {
        Some(name) => get(store, (group, plural), namespace, name, meta),
        None => list(&inner, store, &rt, &filter, meta, query),
    }
}

/// The objects of one resource type: (namespace or "", name) → object.
type Objects = BTreeMap<(String, String), Value>;

/// GET of one object, or the real server's NotFound naming it.
fn get(
    store: Option<&Objects>,
    (group, plural): (&str, &str),
    namespace: Option<&str>,
    name: &str,
    meta: bool,
) -> Response {
    let resource = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    match store.and_then(|s| s.get(&(namespace.unwrap_or("").to_owned(), name.to_owned()))) {
        Some(obj) if meta => respond(StatusCode::OK, &partial(obj)),
        Some(obj) => respond(StatusCode::OK, obj),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{resource} {name:?} not found"),
        ),
    }
}

/// LIST, cut into pages from the current state when asked for a limit.
fn list(
    inner: &Inner,
    store: Option<&Objects>,
    rt: &ResType,
    filter: &Filter,
    meta: bool,
    query: &HashMap<String, String>,
) -> Response {
    // Pages are cut from the current state; the continue token carries the list's
    // resourceVersion and the last key returned.
    let (list_rv, after) = match query.get("continue") {
        Some(token) => match token
            .split_once('/')
            .and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.split_once('/')?)))
        {
            Some((rv, (ns, name))) => (rv, Some((ns.to_owned(), name.to_owned()))),
            None => return bad_request(format!("invalid continue token {token:?}")),
        },
        None => (inner.rv, None),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut items: Vec<&Value> = store
        .into_iter()
        .flat_map(|s| s.range(after.clone().unwrap_or_default()..))
        .filter(|(key, _)| Some(*key) != after.as_ref())
        .map(|(_, o)| o)
        .filter(|o| filter.matches(o))
        .collect();
    let mut continue_ = None;
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        items.truncate(limit);
        let last = &items[limit - 1]["metadata"];
        let text = |f: &str| last[f].as_str().unwrap_or_default().to_owned();
        continue_ = Some(format!("{list_rv}/{}/{}", text("namespace"), text("name")));
    }
    let metadata = ListMeta {
        resource_version: Some(list_rv.to_string()),
        continue_,
        ..Default::default()
    };
    if meta {
        let types = TypeMeta {
            api_version: "meta.k8s.io/v1".into(),
            kind: "PartialObjectMetadataList".into(),
        };
        let items = items.into_iter().map(partial).collect();
        respond(
            StatusCode::OK,
            &ObjectList {
                types,
                metadata,
                items,
            },
        )
    } else {
        let types = TypeMeta {
            api_version: rt.api_version(),
            kind: format!("{}List", rt.kind),
        };
        let items = items.into_iter().cloned().collect();
        respond(
            StatusCode::OK,
            &ObjectList::<Value> {
                types,
                metadata,
                items,
            },
        )
    }
}
