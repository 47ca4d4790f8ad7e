//! Wire types, hand-written so that field order and omission rules are exactly those of the Go
//! structs in k8s.io/metrics and k8s.io/apimachinery (k8s-openapi orders fields alphabetically and
//! has no custom-metrics types).

use serde::Serialize;

use crate::selector::LabelSelector;

/// `metadata: {}` as current API servers write it for lists.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ListMeta {}

/// core/v1 ObjectReference with the fields prometheus-adapter fills.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ObjectReference {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
}

/// custom.metrics.k8s.io/v1beta1 MetricValue.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1Beta1 {
    pub described_object: ObjectReference,
    pub metric_name: String,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
    pub value: String,
    /// The metricLabelSelector as a LabelSelector, or `null` (no omitempty in Go).
    pub selector: Option<LabelSelector>,
}

/// custom.metrics.k8s.io/v1beta2 MetricIdentifier.
#[derive(Debug, Serialize)]
pub struct MetricIdentifier {
    pub name: String,
    pub selector: Option<LabelSelector>,
}

/// custom.metrics.k8s.io/v1beta2 MetricValue.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1Beta2 {
    pub described_object: ObjectReference,
    pub metric: MetricIdentifier,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    pub value: String,
}

/// external.metrics.k8s.io/v1beta1 ExternalMetricValue.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    pub metric_name: String,
    /// Every label of the sample (no omitempty in Go: `{}` when there are none).
    pub metric_labels: std::collections::BTreeMap<String, String>,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
    pub value: String,
}

/// MetricValueList of either version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList<T> {
    pub kind: &'static str,
    pub api_version: String,
    pub metadata: ListMeta,
    pub items: Vec<T>,
}

/// meta/v1 Status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: ListMeta,
    pub status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

/// meta/v1 StatusDetails (every field omitempty).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// meta/v1 StatusCause.
#[derive(Debug, Clone, Serialize)]
pub struct StatusCause {
    pub message: String,
}

/// meta/v1 GroupVersionForDiscovery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersion {
    pub group_version: String,
    pub version: String,
}

/// meta/v1 APIGroup. `kind`/`apiVersion` are omitted inside an APIGroupList, as Go omits empty TypeMeta.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<&'static str>,
    pub name: String,
    pub versions: Vec<GroupVersion>,
    pub preferred_version: GroupVersion,
}

/// meta/v1 APIGroupList.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroupList {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub groups: Vec<ApiGroup>,
}

/// meta/v1 APIResource with the fields a metrics API uses.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResource {
    pub name: String,
    pub singular_name: String,
    pub namespaced: bool,
    pub kind: &'static str,
    pub verbs: Vec<&'static str>,
}

/// meta/v1 APIResourceList.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResourceList {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub group_version: String,
    pub resources: Vec<ApiResource>,
}

/// version.Info, as `/version` of every Kubernetes API server.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub major: &'static str,
    pub minor: &'static str,
    pub git_version: String,
    pub git_commit: &'static str,
    pub git_tree_state: &'static str,
    pub build_date: &'static str,
    pub go_version: &'static str,
    pub compiler: &'static str,
    pub platform: String,
}
