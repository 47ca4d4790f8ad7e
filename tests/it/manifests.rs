//! The Kubernetes manifests (`deploy/`, `apiservice/`, `apiservice/resource-metrics/`,
//! `hack/gen-certs.sh`): every kustomization renders with `kubectl kustomize`, every object
//! deserializes into its k8s-openapi type without a field the schema does not know, and names,
//! labels and ports agree across files.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use custom_metrics_adapter::{
    rules::{CompiledRule, SeriesFilter, config as adapter_config, default_rules},
    server::TlsSource,
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscaler},
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

const NAMESPACE: &str = "custom-metrics";
const ADAPTER: &str = "custom-metrics-apiserver";
const SERVICE: &str = "api";
const SAMPLE: &str = "sample-metrics-app";
const CA_PLACEHOLDER: &str = "${CA_BUNDLE}";
/// The ConfigMap the Deployment's --config reads.
const CONFIG_MAP: &str = "adapter-config";
/// The APIServices of apiservice/: name, group, version.
const API_SERVICES: &[(&str, &str, &str)] = &[
    (
        "v1beta2.custom.metrics.k8s.io",
        "custom.metrics.k8s.io",
        "v1beta2",
    ),
    (
        "v1beta1.custom.metrics.k8s.io",
        "custom.metrics.k8s.io",
        "v1beta1",
    ),
    (
        "v1beta1.custom-metrics.metrics.k8s.io",
        "custom-metrics.metrics.k8s.io",
        "v1beta1",
    ),
    (
        "v1beta1.external.metrics.k8s.io",
        "external.metrics.k8s.io",
        "v1beta1",
    ),
];
/// The APIService of apiservice/resource-metrics/ (it replaces metrics-server's).
const RESOURCE_API_SERVICES: &[(&str, &str, &str)] =
    &[("v1beta1.metrics.k8s.io", "metrics.k8s.io", "v1beta1")];
/// The ClusterRole of apiservice/resource-metrics/ that lets view, edit and admin read it.
const AGGREGATED_READER: &str = "custom-metrics:aggregated-metrics-reader";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Rendering and the schema check

/// One object of a rendered kustomization, with where it came from.
struct Object {
    kind: String,
    name: String,
    value: Value,
    what: String,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// The objects `kubectl kustomize <dir>` renders.
struct Rendered {
    dir: &'static str,
    objects: Vec<Object>,
}

impl Rendered {
    /// (kind, name) of every object, in order.
    fn kinds_and_names(&self) -> Vec<(String, String)> {
        self.objects
            .iter()
            .map(|o| (o.kind.clone(), o.name.clone()))
            .collect()
    }

    fn new(dir: &'static str) -> Self {
        Self::with(dir, |yaml| yaml)
    }

    /// Renders `dir`, passes the YAML through `edit` (what an operator's `sed` would do), parses
    /// it and checks every object against its schema.
    fn with(dir: &'static str, edit: impl FnOnce(String) -> String) -> Self {
        let yaml = edit(kustomize(dir));
        let rendered = Self::parse(dir, &yaml, &origins(&root().join(dir)));
        for object in &rendered.objects {
            check_schema(object);
        }
        rendered
    }

    /// Parses the multi-document YAML of `dir` without checking schemas.
    fn parse(dir: &'static str, yaml: &str, origins: &BTreeMap<(String, String), String>) -> Self {
        let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .unwrap_or_else(|e| panic!("`kubectl kustomize {dir}` printed YAML that does not parse: {e}"));
        let objects = documents
            .into_iter()
            .map(|value| {
                let kind = value["kind"].as_str().unwrap_or_default().to_owned();
                let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                let namespace = value["metadata"]["namespace"]
                    .as_str()
                    .map(|ns| format!("{ns}/"))
                    .unwrap_or_default();
                let file = origins
                    .get(&(kind.clone(), name.clone()))
                    .map_or("a patch or generator", String::as_str);
                let what = format!("{kind} {namespace}{name} (from {file}, `kubectl kustomize {dir}`)");
                Object {
                    kind,
                    name,
                    value,
                    what,
                }
            })
            .collect();
        Self { dir, objects }
    }

    fn find(&self, kind: &str, name: &str) -> &Object {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap_or_else(|| panic!("`kubectl kustomize {}` renders no {kind} {name}", self.dir))
    }

    fn get<T: DeserializeOwned + Serialize>(&self, kind: &str, name: &str) -> (T, &Object) {
        let object = self.find(kind, name);
        (typed(object), object)
    }

    fn all<T: DeserializeOwned + Serialize>(&self, kind: &str) -> Vec<(T, &Object)> {
        self.objects
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| (typed(o), o))
            .collect()
    }
}

/// `kubectl kustomize <root>/<dir>`.
fn kustomize(dir: &str) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `kubectl kustomize {dir}` (kubectl v1.32 expected on PATH): {e}")
        });
    assert!(
        output.status.success(),
        "`kubectl kustomize {dir}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kustomize prints UTF-8")
}

/// Parses a YAML file of the repository into one Value per document.
fn read_yaml(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} does not parse as YAML: {e}", path.display()))
}

/// `path` relative to the crate root, with `..` resolved.
fn relative(path: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for part in path.strip_prefix(root()).unwrap_or(path).components() {
        match part {
            std::path::Component::ParentDir => drop(parts.pop()),
            std::path::Component::CurDir => {}
            other => parts.push(other.as_os_str()),
        }
    }
    parts.iter().collect::<PathBuf>().display().to_string()
}

/// The file each (kind, name) comes from, following the `resources` of `dir`'s kustomization.
fn origins(dir: &Path) -> BTreeMap<(String, String), String> {
    let mut found = BTreeMap::new();
    let kustomization = &read_yaml(&dir.join("kustomization.yaml"))[0];
    for resource in kustomization["resources"].as_array().into_iter().flatten() {
        let path = dir.join(resource.as_str().expect("a resource is a path"));
        if path.is_dir() {
            found.extend(origins(&path));
            continue;
        }
        for document in read_yaml(&path) {
            let kind = document["kind"].as_str().unwrap_or_default().to_owned();
            let name = document["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            found.insert((kind, name), relative(&path));
        }
    }
    found
}

/// Deserializes `object` into `T` and checks that serializing it back gives the same document: a
/// field the schema does not know (a typo, a wrong indent) is dropped by the typed object and shows
/// up as a difference.
fn typed<T: DeserializeOwned + Serialize>(object: &Object) -> T {
    let parsed: T = serde_json::from_value(object.value.clone())
        .unwrap_or_else(|e| panic!("{object} does not match the {} schema: {e}", object.kind));
    let back = serde_json::to_value(&parsed).expect("serializes");
    let mut differences = Vec::new();
    compare("", &object.value, &back, &mut differences);
    assert!(
        differences.is_empty(),
        "{object} has fields its schema does not know or reads differently:\n  {}",
        differences.join("\n  ")
    );
    parsed
}

/// Lists where `original` and `typed` (its round trip through the typed object) differ.
fn compare(path: &str, original: &Value, typed: &Value, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => compare(&at, value, other, out),
                    None => out.push(format!("{at}: not in the schema")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: added by the schema"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if original != typed => out.push(format!("{path}: {original} reads as {typed}")),
        _ => {}
    }
}

/// Checks `object` against the schema of its apiVersion and kind.
fn check_schema(object: &Object) {
    let api_version = object.value["apiVersion"].as_str().unwrap_or_default();
    match (api_version, object.kind.as_str()) {
        ("v1", "Namespace") => drop(typed::<Namespace>(object)),
        ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(object)),
        ("v1", "Service") => drop(typed::<Service>(object)),
        ("v1", "ConfigMap") => drop(typed::<ConfigMap>(object)),
        ("apps/v1", "Deployment") => drop(typed::<Deployment>(object)),
        ("policy/v1", "PodDisruptionBudget") => drop(typed::<PodDisruptionBudget>(object)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(typed::<ClusterRole>(object)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => drop(typed::<ClusterRoleBinding>(object)),
        ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(object)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(object)),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => drop(typed::<HorizontalPodAutoscaler>(object)),
        ("apiregistration.k8s.io/v1", "APIService") => drop(typed::<APIService>(object)),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => drop(typed::<ServiceMonitor>(object)),
        _ => panic!(
            "{object}: no schema known for apiVersion {api_version:?} kind {:?}",
            object.kind
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas k8s-openapi does not have: only the fields our manifests use, nothing else allowed.

/// prometheus-operator's `monitoring.coreos.com/v1` ServiceMonitor.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

/// `autoscaling/v2beta1` HorizontalPodAutoscaler (no longer served, no longer in k8s-openapi).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HpaV2beta1 {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: HpaV2beta1Spec,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HpaV2beta1Spec {
    scale_target_ref: CrossVersionObjectReference,
    min_replicas: i32,
    max_replicas: i32,
    metrics: Vec<HpaV2beta1Metric>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HpaV2beta1Metric {
    #[serde(rename = "type")]
    type_: String,
    object: HpaV2beta1ObjectMetric,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HpaV2beta1ObjectMetric {
    target: CrossVersionObjectReference,
    metric_name: String,
    /// A Quantity: a string, or a number as the seed writes it.
    target_value: Value,
}

/// prometheus-adapter's config file, as strict as its loader (unknown keys are an error).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdapterConfig {
    rules: Vec<DiscoveryRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DiscoveryRule {
    series_query: String,
    #[serde(default)]
    series_filters: Vec<SeriesFilterConfig>,
    /// Only parsed here, strictly; check_config_resources reads the adapter's own view.
    #[allow(dead_code)]
    resources: ResourcesConfig,
    name: Option<NameConfig>,
    metrics_query: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SeriesFilterConfig {
    is: Option<String>,
    is_not: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ResourcesConfig {
    #[serde(default)]
    overrides: BTreeMap<String, GroupResource>,
    template: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GroupResource {
    group: Option<String>,
    resource: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameConfig {
    matches: Option<String>,
    #[serde(rename = "as")]
    as_: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Helpers for the cross-checks

fn pod_spec<'a>(deployment: &'a Deployment, object: &Object) -> &'a PodSpec {
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .unwrap_or_else(|| panic!("{object}: no pod spec"))
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Whether `selector` (equality only) selects objects labelled `labels`; an empty selector
/// selects nothing here, since none of ours means "everything".
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn match_labels(selector: &LabelSelector, object: &Object) -> BTreeMap<String, String> {
    assert!(
        selector.match_expressions.is_none(),
        "{object}: the test only evaluates matchLabels selectors"
    );
    selector.match_labels.clone().unwrap_or_default()
}

fn only_container<'a>(spec: &'a PodSpec, object: &Object) -> &'a Container {
    assert_eq!(spec.containers.len(), 1, "{object}: expected one container");
    &spec.containers[0]
}

/// The containerPort of the port named `name`.
fn container_port(container: &Container, name: &str) -> Option<i32> {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// Whether a Service's `targetPort` reaches a declared port of `container`.
fn target_port_exists(container: &Container, target: &IntOrString) -> bool {
    match target {
        IntOrString::String(name) => container_port(container, name).is_some(),
        IntOrString::Int(number) => container
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == *number),
    }
}

/// The value of `--flag=value` in the container's args.
fn flag<'a>(container: &'a Container, flag: &str) -> Option<&'a str> {
    let prefix = format!("--{flag}=");
    container
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// Whether `rules` allow `verb` on `resource` in `group`.
fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| list.iter().flatten().any(|x| x == want || x == "*");
    rules.iter().any(|rule| {
        has(&rule.api_groups, group)
            && has(&rule.resources, resource)
            && rule.verbs.iter().any(|v| v == verb || v == "*")
            && rule.resource_names.is_none()
    })
}

fn is_subject(subject: &Subject, namespace: &str, name: &str) -> bool {
    subject.kind == "ServiceAccount"
        && subject.namespace.as_deref() == Some(namespace)
        && subject.name == name
}

/// The adapter's Deployment and its container, checked for what the Service and probes rely on.
fn adapter_deployment(rendered: &Rendered) -> (Deployment, String) {
    let (deployment, object) = rendered.get::<Deployment>("Deployment", ADAPTER);
    let spec = &deployment.spec;
    let selector = match_labels(&spec.selector, object);
    assert!(
        selects(&selector, &pod_labels(&deployment)),
        "{object}: spec.selector {selector:?} does not select its own pod template labels"
    );
    (deployment.clone(), object.what.clone())
}

// ---------------------------------------------------------------------------------------------
// The adapter: deploy/

#[test]
fn adapter_manifests_match_their_schemas_and_each_other() {
    let deploy = Rendered::new("deploy");
    for object in &deploy.objects {
        let namespace = object.value["metadata"]["namespace"].as_str();
        let expected = match object.kind.as_str() {
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" => None,
            "RoleBinding" | "Role" => Some("kube-system"),
            _ => Some(NAMESPACE),
        };
        assert_eq!(namespace, expected, "{object}: wrong namespace");
    }
    deploy.get::<Namespace>("Namespace", NAMESPACE);

    // Deployment → ServiceAccount, ports, probes, volumes.
    let (deployment, what) = adapter_deployment(&deploy);
    let spec = pod_spec(&deployment, deploy.find("Deployment", ADAPTER));
    assert_eq!(deployment.spec.replicas, Some(2), "{what}: replicas");
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    assert_eq!(account, ADAPTER, "{what}: serviceAccountName");
    deploy.get::<ServiceAccount>("ServiceAccount", account);
    let container = only_container(spec, deploy.find("Deployment", ADAPTER));
    let secure_port: i32 = flag(container, "secure-port")
        .unwrap_or_else(|| panic!("{what}: no --secure-port"))
        .parse()
        .expect("--secure-port is a number");
    assert_eq!(
        container_port(container, "https"),
        Some(secure_port),
        "{what}: container port `https` must be --secure-port"
    );
    for (probe, path) in [
        (&container.liveness_probe, "/livez"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: no httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}: probe path");
        assert_eq!(
            get.scheme.as_deref(),
            Some("HTTPS"),
            "{what}: probe on {path} must use HTTPS"
        );
        assert!(
            target_port_exists(container, &get.port),
            "{what}: probe on {path} names port {:?}, which the container does not declare",
            get.port
        );
    }
    let security = container.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true), "{what}: runAsNonRoot");
    assert_eq!(security.run_as_user, Some(65532), "{what}: runAsUser");
    assert_eq!(
        security.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        security.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()]),
        "{what}: capabilities.drop"
    );
    let volumes = spec.volumes.clone().unwrap_or_default();
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    for mount in &mounts {
        assert!(
            volumes.iter().any(|v| v.name == mount.name),
            "{what}: volumeMount {} names no volume",
            mount.name
        );
    }
    let writable = |path: &str| {
        mounts.iter().any(|m| {
            m.mount_path == path
                && m.read_only != Some(true)
                && volumes.iter().any(|v| v.name == m.name && v.empty_dir.is_some())
        })
    };
    let cert_dir = flag(container, "cert-dir").unwrap_or_else(|| panic!("{what}: no --cert-dir"));
    assert!(
        writable(cert_dir),
        "{what}: --cert-dir {cert_dir} is not a writable emptyDir mount"
    );
    assert!(writable("/tmp"), "{what}: /tmp is not a writable emptyDir mount");
    for volume in &volumes {
        if let Some(config_map) = &volume.config_map {
            deploy.get::<ConfigMap>("ConfigMap", &config_map.name);
        }
    }
    let config_volume = volumes
        .iter()
        .find(|v| v.config_map.as_ref().is_some_and(|c| c.name == CONFIG_MAP))
        .unwrap_or_else(|| panic!("{what}: ConfigMap {CONFIG_MAP} is not a volume"));
    assert!(
        mounts
            .iter()
            .any(|m| m.name == config_volume.name && m.mount_path == "/etc/adapter"),
        "{what}: ConfigMap {CONFIG_MAP} is not mounted at /etc/adapter"
    );
    // --config → a file of that mount, named after a key of the ConfigMap.
    let config_path = flag(container, "config").unwrap_or_else(|| panic!("{what}: no --config"));
    let (config_dir, config_file) = config_path
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{what}: --config {config_path} is not an absolute path"));
    let config_mount = mounts
        .iter()
        .find(|m| m.mount_path == config_dir)
        .unwrap_or_else(|| panic!("{what}: nothing is mounted at {config_dir} (--config)"));
    assert_eq!(
        config_mount.name, config_volume.name,
        "{what}: --config {config_path} is not in the mount of ConfigMap {CONFIG_MAP}"
    );
    assert!(
        config_mount.sub_path.is_none() && config_mount.sub_path_expr.is_none(),
        "{what}: a subPath mount never sees ConfigMap updates, so --config would not reload"
    );
    assert!(
        config_volume
            .config_map
            .as_ref()
            .is_some_and(|c| c.items.is_none()),
        "{what}: volume {} maps keys with items; the test expects each key as a file",
        config_volume.name
    );
    assert_eq!(
        config_file, "config.yaml",
        "{what}: --config must name the ConfigMap key config.yaml"
    );

    // Service api → the Deployment's pods and port.
    let (service, object) = deploy.get::<Service>("Service", SERVICE);
    let service_spec = service.spec.as_ref().expect("spec");
    let selector = service_spec.selector.clone().unwrap_or_default();
    assert!(
        selects(&selector, &pod_labels(&deployment)),
        "{object}: selector {selector:?} does not select the pods of {what}"
    );
    let ports = service_spec.ports.clone().unwrap_or_default();
    assert!(ports.iter().any(|p| p.port == 443), "{object}: no port 443");
    for port in &ports {
        let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
        assert!(
            target_port_exists(container, &target),
            "{object}: port {} targets {target:?}, which is no container port of {what}",
            port.port
        );
    }

    // PodDisruptionBudget → the Deployment's pods.
    let (pdb, object) = deploy.get::<PodDisruptionBudget>("PodDisruptionBudget", ADAPTER);
    let pdb_spec = pdb.spec.as_ref().expect("spec");
    let selector = match_labels(pdb_spec.selector.as_ref().expect("selector"), object);
    assert!(
        selects(&selector, &pod_labels(&deployment)),
        "{object}: selector {selector:?} does not select the pods of {what}"
    );
    assert_eq!(
        pdb_spec.min_available,
        Some(IntOrString::Int(1)),
        "{object}: minAvailable"
    );

    // RBAC: every binding of a ServiceAccount in our namespace names the Deployment's; the
    // bindings the adapter and the HPA controller need exist.
    let cluster_bindings = deploy.all::<ClusterRoleBinding>("ClusterRoleBinding");
    let role_bindings = deploy.all::<RoleBinding>("RoleBinding");
    let subjects = cluster_bindings
        .iter()
        .map(|(b, o)| (b.subjects.clone().unwrap_or_default(), *o))
        .chain(
            role_bindings
                .iter()
                .map(|(b, o)| (b.subjects.clone().unwrap_or_default(), *o)),
        );
    for (subjects, object) in subjects {
        for subject in subjects {
            if subject.kind == "ServiceAccount" && subject.namespace.as_deref() == Some(NAMESPACE) {
                assert_eq!(
                    subject.name, account,
                    "{object}: binds a ServiceAccount the Deployment does not use"
                );
            }
        }
    }
    for (binding, object) in &cluster_bindings {
        let role = &binding.role_ref;
        assert_eq!(role.kind, "ClusterRole", "{object}: roleRef.kind");
        if !role.name.starts_with("system:") {
            deploy.get::<ClusterRole>("ClusterRole", &role.name);
        }
    }
    let cluster_binding = |role: &str, namespace: &str, name: &str| {
        assert!(
            cluster_bindings.iter().any(|(b, _)| b.role_ref.name == role
                && b.subjects
                    .iter()
                    .flatten()
                    .any(|s| is_subject(s, namespace, name))),
            "`kubectl kustomize deploy` renders no ClusterRoleBinding of ClusterRole {role} to \
             ServiceAccount {namespace}/{name}"
        )
    };
    cluster_binding("system:auth-delegator", NAMESPACE, account);
    cluster_binding("custom-metrics-resource-reader", NAMESPACE, account);
    cluster_binding(
        "custom-metrics-server-resources",
        "kube-system",
        "horizontal-pod-autoscaler",
    );
    let (binding, object) =
        deploy.get::<ClusterRoleBinding>("ClusterRoleBinding", "hpa-controller-custom-metrics");
    assert_eq!(
        binding.role_ref.name, "custom-metrics-server-resources",
        "{object}: roleRef"
    );
    let (binding, object) = deploy.get::<RoleBinding>("RoleBinding", "custom-metrics-auth-reader");
    assert_eq!(
        (binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()),
        ("Role", "extension-apiserver-authentication-reader"),
        "{object}: roleRef"
    );
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|s| is_subject(s, NAMESPACE, account)),
        "{object}: does not bind ServiceAccount {NAMESPACE}/{account}"
    );

    let (reader, object) = deploy.get::<ClusterRole>("ClusterRole", "custom-metrics-resource-reader");
    let rules = reader.rules.clone().unwrap_or_default();
    // nodes: NodeMetrics lists them.
    for resource in ["namespaces", "pods", "services", "nodes"] {
        for verb in ["get", "list", "watch"] {
            assert!(
                grants(&rules, "", resource, verb),
                "{object}: no {verb} on {resource}"
            );
        }
    }
    for (group, resource) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "replicasets"),
        ("apps", "daemonsets"),
        ("networking.k8s.io", "ingresses"),
    ] {
        assert!(
            grants(&rules, group, resource, "watch"),
            "{object}: no watch on {group} {resource}"
        );
    }
    let reader_rules = rules;
    // The HPA controller gets custom metrics (resource = the object's resource) and lists external
    // ones (resource = the metric): every group of apiservice/, every resource.
    let (metrics, object) = deploy.get::<ClusterRole>("ClusterRole", "custom-metrics-server-resources");
    let rules = metrics.rules.clone().unwrap_or_default();
    for (_, group, _) in API_SERVICES {
        assert!(
            grants(&rules, group, "pods", "get") && grants(&rules, group, "services", "get"),
            "{object}: no get on every resource of {group}"
        );
        for verb in ["get", "list", "watch"] {
            assert!(
                grants(&rules, group, "*", verb),
                "{object}: no {verb} on resources `*` of {group}"
            );
        }
    }

    // ConfigMap adapter-config: prometheus-adapter's six default rules, the ones built in.
    let (config_map, object) = deploy.get::<ConfigMap>("ConfigMap", CONFIG_MAP);
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(config_file))
        .unwrap_or_else(|| panic!("{object}: no data {config_file} (--config {config_path})"));
    check_default_config(text, object);
    check_config_resources(text, object, &reader_rules);
    let config: AdapterConfig = serde_saphyr::from_str(text)
        .unwrap_or_else(|e| panic!("{object}: config.yaml is not an adapter config: {e}"));
    assert_eq!(
        config.rules.len(),
        6,
        "{object}: config.yaml should hold the six default rules"
    );
    let built_in = default_rules("2m").expect("built-in rules");
    for (i, (rule, expected)) in config.rules.iter().zip(&built_in).enumerate() {
        let at = format!("{object}: config.yaml rule {i}");
        assert_eq!(rule.series_query, expected.series_query, "{at}: seriesQuery");
        assert_eq!(
            rule.metrics_query,
            expected.metrics_query.source(),
            "{at}: metricsQuery"
        );
        let matches = rule
            .name
            .as_ref()
            .and_then(|n| n.matches.as_deref())
            .unwrap_or(".*");
        assert_eq!(matches, expected.name_matches.as_str(), "{at}: name.matches");
        assert!(
            rule.name
                .as_ref()
                .and_then(|n| n.as_.as_deref())
                .is_none_or(str::is_empty),
            "{at}: name.as is not a default"
        );
        let filters: Vec<(bool, &str)> = rule
            .series_filters
            .iter()
            .map(|f| match (&f.is, &f.is_not) {
                (Some(re), None) => (true, re.as_str()),
                (None, Some(re)) => (false, re.as_str()),
                _ => panic!("{at}: a seriesFilter needs exactly one of is and isNot"),
            })
            .collect();
        let expected_filters: Vec<(bool, &str)> = expected
            .filters
            .iter()
            .map(|f| match f {
                SeriesFilter::Is(re) => (true, re.as_str()),
                SeriesFilter::IsNot(re) => (false, re.as_str()),
            })
            .collect();
        assert_eq!(filters, expected_filters, "{at}: seriesFilters");
        // resources: check_config_resources.
    }
}

/// What a discovery rule does, with prometheus-adapter's defaults applied.
fn rule_summary(rule: &CompiledRule) -> String {
    let filters: Vec<String> = rule
        .filters
        .iter()
        .map(|f| match f {
            SeriesFilter::Is(re) => format!("is {re}"),
            SeriesFilter::IsNot(re) => format!("isNot {re}"),
        })
        .collect();
    format!(
        "seriesQuery {:?} seriesFilters {filters:?} name {:?} -> {:?} namespaced {} metricsQuery {:?}",
        rule.series_query,
        rule.name_matches.as_str(),
        rule.name_as,
        rule.namespaced,
        rule.metrics_query.source(),
    )
}

/// The resources the shipped rules may name, as a config writes them (singular or plural): group,
/// singular, plural.
const NAMEABLE: &[(&str, &str, &str)] = &[
    ("", "namespace", "namespaces"),
    ("", "pod", "pods"),
    ("", "service", "services"),
    ("", "node", "nodes"),
    ("apps", "deployment", "deployments"),
    ("apps", "statefulset", "statefulsets"),
    ("apps", "replicaset", "replicasets"),
    ("apps", "daemonset", "daemonsets"),
    ("networking.k8s.io", "ingress", "ingresses"),
];

/// The labels of ConfigMap adapter-config's rules name only resources the ClusterRole
/// custom-metrics-resource-reader lets the adapter get, list and watch (what it advertises, it
/// can serve): explicit overrides, no `<<.Resource>>` template (which maps every label that names
/// a resource, `job` included), no label every scrape adds; rules without a template in the
/// built-in rules (cAdvisor's) map the same labels as those.
fn check_config_resources(text: &str, object: &Object, reader_rules: &[PolicyRule]) {
    let config = adapter_config::parse(text, &object.to_string()).expect("parsed above");
    let rules = &config.rules;
    let built_in = default_rules("2m").expect("built-in rules");
    for (i, (rule, expected)) in rules.iter().zip(&built_in).enumerate() {
        let at = format!("{object}: config.yaml rule {i}");
        assert_eq!(
            rule.resources.template(),
            None,
            "{at}: a template maps labels to resources the ClusterRole does not grant; list overrides"
        );
        if expected.resources.template().is_none() {
            assert_eq!(
                rule.resources.overrides, expected.resources.overrides,
                "{at}: resources.overrides differ from the built-in rule's"
            );
        }
        for (label, resource) in &rule.resources.overrides {
            assert!(
                !custom_metrics_adapter::rules::SCRAPE_LABELS.contains(&label.as_str()),
                "{at}: {label} is on every scraped series; it names no object"
            );
            let (name, group) = (resource.resource.as_str(), resource.group.as_str());
            let (_, _, plural) = NAMEABLE
                .iter()
                .find(|(g, singular, plural)| *g == group && (*singular == name || *plural == name))
                .unwrap_or_else(|| panic!("{at}: {label} maps to {resource}, which NAMEABLE does not know"));
            for verb in ["get", "list", "watch"] {
                assert!(
                    grants(reader_rules, group, plural, verb),
                    "{at}: {label} maps to {resource}, but custom-metrics-resource-reader grants no {verb} on it"
                );
            }
        }
        if expected.resources.template().is_some() {
            for label in ["namespace", "pod", "service"] {
                assert!(
                    rule.resources.overrides.contains_key(label),
                    "{at}: does not map {label}"
                );
            }
        }
    }
}

/// The config of ConfigMap adapter-config, read by the adapter's own loader: the built-in default
/// rules (apart from which labels name resources: [`check_config_resources`]) and nothing else (no externalRules; no resourceRules, which would take over from
/// metrics-server), and a commented-out externalRules example that loads once uncommented.
fn check_default_config(text: &str, object: &Object) {
    let origin = object.to_string();
    let config = adapter_config::parse(text, &origin)
        .unwrap_or_else(|e| panic!("{object}: the adapter refuses config.yaml: {e}"));
    let rules = &config.rules;
    let built_in = default_rules("2m").expect("built-in rules");
    assert_eq!(
        rules.iter().map(|r| rule_summary(r)).collect::<Vec<_>>(),
        built_in.iter().map(rule_summary).collect::<Vec<_>>(),
        "{object}: config.yaml does not load as the built-in rules (--rate-interval 2m), apart from resources"
    );
    assert!(
        config.external_rules.is_empty(),
        "{object}: config.yaml has externalRules; the default serves none"
    );
    assert!(
        config.resource_rules.is_none(),
        "{object}: config.yaml has resourceRules; metrics.k8s.io must stay metrics-server's by default"
    );

    let start = text
        .find("\n# externalRules:")
        .unwrap_or_else(|| panic!("{object}: config.yaml has no commented-out `# externalRules:` example"));
    let (head, example) = text.split_at(start + 1);
    let uncommented: Vec<&str> = example
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or_else(|| panic!("{object}: {line:?} follows the externalRules example uncommented"))
        })
        .collect();
    let text = format!("{head}{}\n", uncommented.join("\n"));
    let config = adapter_config::parse(&text, &origin)
        .unwrap_or_else(|e| panic!("{object}: the externalRules example, uncommented, does not load: {e}"));
    let set = config.rule_set();
    assert_eq!(
        (set.custom.len(), set.external.len()),
        (6, 1),
        "{object}: uncommenting the example should add one external rule to the six rules"
    );
}

/// The adapter container's args, as the binary parses them (unknown flags fail here, not in a
/// crash-looping pod).
#[test]
fn adapter_args_parse() {
    for dir in ["deploy", "deploy/overlays/provided-cert"] {
        let rendered = Rendered::new(dir);
        let (deployment, what) = adapter_deployment(&rendered);
        let container = only_container(
            pod_spec(&deployment, rendered.find("Deployment", ADAPTER)),
            rendered.find("Deployment", ADAPTER),
        );
        let argv = std::iter::once("custom-metrics-adapter".to_owned())
            .chain(container.command.iter().flatten().skip(1).cloned())
            .chain(container.args.iter().flatten().cloned())
            .map(std::ffi::OsString::from);
        let (kept, ignored) = custom_metrics_adapter::config::split_ignored_flags(argv);
        assert!(
            ignored.is_empty(),
            "{what}: flags with no effect in our own manifests: {ignored:?}"
        );
        let args = <custom_metrics_adapter::config::Args as clap::Parser>::try_parse_from(kept)
            .unwrap_or_else(|err| panic!("{what}: the adapter refuses its args: {err}"));
        args.validate().unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(
            args.config.is_some() && !args.insecure_allow_anonymous,
            "{what}: --config, delegated auth"
        );
    }
}

#[test]
fn provided_cert_overlay_serves_the_secret() {
    let overlay = Rendered::new("deploy/overlays/provided-cert");
    let (deployment, what) = adapter_deployment(&overlay);
    let object = overlay.find("Deployment", ADAPTER);
    let spec = pod_spec(&deployment, object);
    let container = only_container(spec, object);
    let volumes = spec.volumes.clone().unwrap_or_default();
    for (flag_name, file) in [("tls-cert-file", "tls.crt"), ("tls-private-key-file", "tls.key")] {
        let path = flag(container, flag_name).unwrap_or_else(|| panic!("{what}: no --{flag_name}"));
        let (dir, name) = path.rsplit_once('/').expect("an absolute path");
        assert_eq!(
            name, file,
            "{what}: --{flag_name} must name the Secret's key {file}"
        );
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == dir)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at {dir} (--{flag_name})"));
        let secret = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.as_deref());
        assert_eq!(
            secret,
            Some("custom-metrics-serving-cert"),
            "{what}: {dir} must be Secret custom-metrics-serving-cert"
        );
    }
    // The rest of the overlay is the base.
    let base = Rendered::new("deploy");
    assert_eq!(
        overlay.kinds_and_names(),
        base.kinds_and_names(),
        "the provided-cert overlay renders other objects than deploy/"
    );
}

// ---------------------------------------------------------------------------------------------
// APIServices: apiservice/, apiservice/insecure/, apiservice/resource-metrics/ (and its
// insecure/), hack/gen-certs.sh

/// Checks that `rendered` holds exactly the APIServices `expected` (name, group, version), routed
/// to the Service of deploy/.
fn check_api_services(
    rendered: &Rendered,
    deploy: &Rendered,
    expected: &[(&str, &str, &str)],
) -> BTreeMap<String, APIService> {
    let (service, service_object) = deploy.get::<Service>("Service", SERVICE);
    let ports: Vec<i32> = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| p.port)
        .collect();
    let found = rendered.all::<APIService>("APIService");
    let names: BTreeSet<&str> = found.iter().map(|(_, o)| o.name.as_str()).collect();
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(
        names, expected_names,
        "`kubectl kustomize {}`: the APIServices",
        rendered.dir
    );
    let mut by_name = BTreeMap::new();
    for (api_service, object) in found {
        let spec = api_service.spec.as_ref().expect("spec");
        let (_, group, version) = expected
            .iter()
            .find(|(n, _, _)| *n == object.name)
            .expect("listed");
        assert_eq!(
            (spec.group.as_deref(), spec.version.as_deref()),
            (Some(*group), Some(*version)),
            "{object}: the name must be <version>.<group>"
        );
        assert_eq!(spec.group_priority_minimum, 100, "{object}: groupPriorityMinimum");
        let reference = spec
            .service
            .as_ref()
            .unwrap_or_else(|| panic!("{object}: no service"));
        assert_eq!(
            (reference.namespace.as_deref(), reference.name.as_deref()),
            (Some(NAMESPACE), Some(SERVICE)),
            "{object}: must point at {service_object}"
        );
        let port = reference.port.unwrap_or(443);
        assert!(
            ports.contains(&port),
            "{object}: port {port} is not a port of {service_object} ({ports:?})"
        );
        by_name.insert(object.name.clone(), api_service);
    }
    let priority = |name: &str| {
        by_name
            .get(name)
            .map(|a| a.spec.as_ref().expect("spec").version_priority)
    };
    if let (Some(v1beta2), Some(v1beta1)) = (
        priority("v1beta2.custom.metrics.k8s.io"),
        priority("v1beta1.custom.metrics.k8s.io"),
    ) {
        assert!(
            v1beta2 > v1beta1,
            "`kubectl kustomize {}`: v1beta2.custom.metrics.k8s.io needs a higher versionPriority than v1beta1, \
             or the HPA calls v1beta1",
            rendered.dir
        );
    }
    by_name
}

/// `dir` (caBundle placeholder) and `insecure` (insecureSkipTLSVerify) render the APIServices
/// `expected` and the same other objects; filled in, the caBundle is a valid one.
fn check_api_service_variants(
    dir: &'static str,
    insecure: &'static str,
    expected: &[(&str, &str, &str)],
    deploy: &Rendered,
) -> Rendered {
    // dir: every caBundle is the placeholder, and filled in it is a valid object.
    let yaml = kustomize(dir);
    let raw = Rendered::parse(dir, &yaml, &origins(&root().join(dir)));
    for object in raw.objects.iter().filter(|o| o.kind == "APIService") {
        assert_eq!(
            object.value["spec"]["caBundle"].as_str(),
            Some(CA_PLACEHOLDER),
            "{object}: caBundle must be the {CA_PLACEHOLDER} placeholder"
        );
    }
    let filled = Rendered::with(dir, |yaml| yaml.replace(CA_PLACEHOLDER, "Y2EgYnVuZGxl"));
    for (name, api_service) in check_api_services(&filled, deploy, expected) {
        let spec = api_service.spec.expect("spec");
        assert_eq!(
            spec.ca_bundle.map(|b| b.0),
            Some(b"ca bundle".to_vec()),
            "{name} ({dir}/): caBundle"
        );
        assert_eq!(
            spec.insecure_skip_tls_verify, None,
            "{name} ({dir}/): insecureSkipTLSVerify"
        );
    }

    let insecure_rendered = Rendered::new(insecure);
    for (name, api_service) in check_api_services(&insecure_rendered, deploy, expected) {
        let spec = api_service.spec.expect("spec");
        assert_eq!(spec.insecure_skip_tls_verify, Some(true), "{name} ({insecure}/)");
        assert!(
            spec.ca_bundle.is_none(),
            "{name} ({insecure}/): caBundle with insecureSkipTLSVerify"
        );
    }
    assert_eq!(
        insecure_rendered.kinds_and_names(),
        filled.kinds_and_names(),
        "{insecure}/ renders other objects than {dir}/"
    );
    filled
}

#[test]
fn api_services_route_to_the_adapter_service() {
    let deploy = Rendered::new("deploy");
    let api = check_api_service_variants("apiservice", "apiservice/insecure", API_SERVICES, &deploy);
    for object in &api.objects {
        assert_eq!(
            object.kind, "APIService",
            "{object}: apiservice/ holds APIServices only"
        );
    }
}

/// apiservice/resource-metrics/: metrics.k8s.io, kept out of apiservice/ since it replaces
/// metrics-server, and the ClusterRole that lets view, edit and admin read it.
#[test]
fn resource_metrics_api_service_routes_to_the_adapter_service() {
    let deploy = Rendered::new("deploy");
    let rendered = check_api_service_variants(
        "apiservice/resource-metrics",
        "apiservice/resource-metrics/insecure",
        RESOURCE_API_SERVICES,
        &deploy,
    );
    let others: Vec<(&str, &str)> = rendered
        .objects
        .iter()
        .filter(|o| o.kind != "APIService")
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(
        others,
        [("ClusterRole", AGGREGATED_READER)],
        "`kubectl kustomize apiservice/resource-metrics`: objects besides the APIService"
    );
    let (reader, object) = rendered.get::<ClusterRole>("ClusterRole", AGGREGATED_READER);
    let labels = labels(&reader.metadata);
    for role in ["view", "edit", "admin"] {
        let label = format!("rbac.authorization.k8s.io/aggregate-to-{role}");
        assert_eq!(
            labels.get(&label).map(String::as_str),
            Some("true"),
            "{object}: label {label}"
        );
    }
    assert!(
        reader.aggregation_rule.is_none(),
        "{object}: aggregates into other roles, not from them"
    );
    let rules = reader.rules.clone().unwrap_or_default();
    for resource in ["pods", "nodes"] {
        for verb in ["get", "list", "watch"] {
            assert!(
                grants(&rules, "metrics.k8s.io", resource, verb),
                "{object}: no {verb} on metrics.k8s.io {resource}"
            );
        }
    }
    // The adapter itself lists nodes and pods for NodeMetrics and PodMetrics.
    let (reader, object) = deploy.get::<ClusterRole>("ClusterRole", "custom-metrics-resource-reader");
    let rules = reader.rules.clone().unwrap_or_default();
    for resource in ["nodes", "pods"] {
        for verb in ["get", "list", "watch"] {
            assert!(
                grants(&rules, "", resource, verb),
                "{object}: no {verb} on {resource}"
            );
        }
    }
}

#[test]
fn gen_certs_issues_a_serving_cert_and_fills_in_the_ca_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new("bash")
        .arg(root().join("hack/gen-certs.sh"))
        .arg(dir.path())
        .output()
        .expect("run hack/gen-certs.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "hack/gen-certs.sh failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = |name: &str| dir.path().join(name);
    let ca = std::fs::read(file("ca.crt")).expect("ca.crt");
    let bundle = std::fs::read_to_string(file("ca-bundle.b64")).expect("ca-bundle.b64");
    assert!(
        stdout.contains(bundle.trim()),
        "hack/gen-certs.sh does not print the caBundle"
    );
    assert!(
        stdout.contains("kubectl create secret tls custom-metrics-serving-cert"),
        "hack/gen-certs.sh does not print the Secret command: {stdout}"
    );

    // The certificate chains to the CA for every name the Service answers to.
    for host in [
        "api.custom-metrics.svc",
        "api.custom-metrics.svc.cluster.local",
        "api",
        "api.custom-metrics",
    ] {
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(file("ca.crt"))
            .args(["-verify_hostname", host])
            .arg(file("tls.crt"))
            .output()
            .expect("run openssl");
        assert!(
            verify.status.success(),
            "hack/gen-certs.sh: tls.crt is not valid for {host}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    // The adapter loads the pair as --tls-cert-file/--tls-private-key-file.
    crate::support::install_crypto_provider();
    if let Err(e) = TlsSource::from_files(&file("tls.crt"), &file("tls.key"), true) {
        panic!("the adapter refuses the certificate of hack/gen-certs.sh: {e}");
    }

    // apiservice-with-ca.yaml: the APIServices of apiservice/ with the CA as caBundle.
    let path: PathBuf = file("apiservice-with-ca.yaml");
    let yaml = std::fs::read_to_string(&path).expect("apiservice-with-ca.yaml");
    let origins = BTreeMap::from_iter(API_SERVICES.iter().map(|(n, _, _)| {
        (
            ("APIService".to_owned(), (*n).to_owned()),
            "apiservice-with-ca.yaml".to_owned(),
        )
    }));
    let rendered = Rendered::parse("apiservice", &yaml, &origins);
    for object in &rendered.objects {
        check_schema(object);
    }
    for (name, api_service) in check_api_services(&rendered, &Rendered::new("deploy"), API_SERVICES) {
        let spec = api_service.spec.expect("spec");
        assert_eq!(
            spec.ca_bundle.map(|b| b.0).as_deref(),
            Some(ca.as_slice()),
            "{name} in apiservice-with-ca.yaml: caBundle is not ca.crt"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The sample: deploy/sample/

#[test]
fn sample_manifests_match_their_schemas_and_each_other() {
    let sample = Rendered::new("deploy/sample");
    for object in &sample.objects {
        assert_eq!(
            object.value["metadata"]["namespace"].as_str(),
            Some("default"),
            "{object}: the seed's sample lives in namespace default"
        );
    }
    let (deployment, object) = sample.get::<Deployment>("Deployment", SAMPLE);
    let what = &object.what;
    let spec = &deployment.spec;
    let pods = pod_labels(&deployment);
    assert_eq!(
        pods.get("app").map(String::as_str),
        Some(SAMPLE),
        "{what}: pod label app"
    );
    let selector = match_labels(&spec.selector, object);
    assert!(
        selects(&selector, &pods),
        "{what}: spec.selector does not select its pod template"
    );
    let container = only_container(pod_spec(&deployment, object), object);
    let listen = container
        .args
        .iter()
        .flatten()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .unwrap_or_else(|| panic!("{what}: no `--listen ADDR` argument"));
    let listen_port: i32 = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("--listen host:port");
    assert_eq!(
        container_port(container, "http"),
        Some(listen_port),
        "{what}: container port `http` must be the --listen port"
    );

    // Service → the Deployment's pods and port.
    let (service, service_object) = sample.get::<Service>("Service", SAMPLE);
    let service_spec = service.spec.as_ref().expect("spec");
    let selector = service_spec.selector.clone().unwrap_or_default();
    assert!(
        selects(&selector, &pods),
        "{service_object}: selector {selector:?} does not select the pods of {what}"
    );
    let ports = service_spec.ports.clone().unwrap_or_default();
    for port in &ports {
        let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
        assert!(
            matches!(&target, IntOrString::String(_)) && target_port_exists(container, &target),
            "{service_object}: port {} must target a container port of {what} by name, not {target:?}",
            port.port
        );
    }

    // ServiceMonitor → the Service and one of its named ports.
    let (monitor, object) = sample.get::<ServiceMonitor>("ServiceMonitor", SAMPLE);
    assert_eq!(
        monitor.api_version, "monitoring.coreos.com/v1",
        "{object}: apiVersion"
    );
    let selector = match_labels(&monitor.spec.selector, object);
    assert!(
        selects(&selector, &labels(&service.metadata)),
        "{object}: selector {selector:?} does not select {service_object}"
    );
    for endpoint in &monitor.spec.endpoints {
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some(endpoint.port.as_str())),
            "{object}: endpoint port {:?} is not a port name of {service_object}",
            endpoint.port
        );
        assert_eq!(endpoint.path, "/metrics", "{object}: endpoint path");
    }

    // HPA (autoscaling/v2) → the Deployment, the Service's http_requests.
    let hpas = sample.all::<HorizontalPodAutoscaler>("HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 1, "`kubectl kustomize deploy/sample`: one HPA");
    let (hpa, object) = &hpas[0];
    let hpa_spec = &hpa.spec;
    let target = &hpa_spec.scale_target_ref;
    assert_eq!(
        (
            target.api_version.as_deref(),
            target.kind.as_str(),
            target.name.as_str()
        ),
        (Some("apps/v1"), "Deployment", SAMPLE),
        "{object}: scaleTargetRef must be {what}"
    );
    let metrics = hpa_spec.metrics.clone().unwrap_or_default();
    assert_eq!(metrics.len(), 1, "{object}: one metric");
    let metric = metrics[0]
        .object
        .as_ref()
        .unwrap_or_else(|| panic!("{object}: not an Object metric"));
    let described = &metric.described_object;
    assert_eq!(
        (
            described.api_version.as_deref(),
            described.kind.as_str(),
            described.name.as_str()
        ),
        (
            Some("v1"),
            "Service",
            service.metadata.name.as_deref().unwrap_or_default()
        ),
        "{object}: describedObject must be {service_object}"
    );
    assert_eq!(metric.metric.name, "http_requests", "{object}: metric name");
    assert_eq!(
        (
            metric.target.type_.as_str(),
            metric.target.value.as_ref().map(|q| q.0.as_str())
        ),
        ("Value", Some("100")),
        "{object}: target"
    );
    assert!(
        hpa_spec.min_replicas.unwrap_or(1) <= hpa_spec.max_replicas,
        "{object}: minReplicas > maxReplicas"
    );

    // The seed's autoscaling/v2beta1 HPA, kept out of the kustomization: the same HPA.
    let path = root().join("deploy/sample/hpa-v2beta1.yaml");
    let documents = read_yaml(&path);
    assert_eq!(documents.len(), 1, "deploy/sample/hpa-v2beta1.yaml: one object");
    let object = Object {
        kind: "HorizontalPodAutoscaler".into(),
        name: documents[0]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .into(),
        value: documents[0].clone(),
        what: "HorizontalPodAutoscaler in deploy/sample/hpa-v2beta1.yaml".into(),
    };
    let old: HpaV2beta1 = typed(&object);
    assert_eq!(old.api_version, "autoscaling/v2beta1", "{object}: apiVersion");
    assert_eq!(old.kind, "HorizontalPodAutoscaler", "{object}: kind");
    assert_eq!(
        old.metadata.name, hpa.metadata.name,
        "{object}: name differs from hpa.yaml"
    );
    assert_eq!(
        old.metadata.namespace, hpa.metadata.namespace,
        "{object}: namespace differs from hpa.yaml"
    );
    assert_eq!(
        old.spec.scale_target_ref, hpa_spec.scale_target_ref,
        "{object}: scaleTargetRef"
    );
    assert_eq!(
        (Some(old.spec.min_replicas), old.spec.max_replicas),
        (hpa_spec.min_replicas, hpa_spec.max_replicas),
        "{object}: replicas"
    );
    assert_eq!(old.spec.metrics.len(), 1, "{object}: one metric");
    let old_metric = &old.spec.metrics[0];
    assert_eq!(old_metric.type_, "Object", "{object}: metric type");
    let old_target = &old_metric.object.target;
    assert_eq!(
        (old_target.kind.as_str(), old_target.name.as_str()),
        (described.kind.as_str(), described.name.as_str()),
        "{object}: target"
    );
    assert_eq!(
        old_metric.object.metric_name, metric.metric.name,
        "{object}: metricName"
    );
    let value = match &old_metric.object.target_value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("{object}: targetValue {other} is not a quantity"),
    };
    assert_eq!(
        Some(value.as_str()),
        metric.target.value.as_ref().map(|q| q.0.as_str()),
        "{object}: targetValue"
    );
    let listed = read_yaml(&root().join("deploy/sample/kustomization.yaml"));
    assert!(
        !listed[0]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r == "hpa-v2beta1.yaml"),
        "deploy/sample/kustomization.yaml must not list hpa-v2beta1.yaml: autoscaling/v2beta1 is not served \
         since Kubernetes 1.25"
    );
}

// ---------------------------------------------------------------------------------------------

/// Every YAML file under deploy/ and apiservice/ is used by the kustomization beside it (as a
/// resource or a patch), so none is silently left out of what `kubectl apply -k` applies.
#[test]
fn every_manifest_file_is_listed_in_its_kustomization() {
    const UNLISTED: &[&str] = &["deploy/sample/hpa-v2beta1.yaml"];
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    walk(&root().join("apiservice"), &mut files);
    assert!(!files.is_empty());
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).expect("file name");
        let shown = relative(&path);
        if name == "kustomization.yaml" || UNLISTED.contains(&shown.as_str()) {
            continue;
        }
        let kustomization_path = path.with_file_name("kustomization.yaml");
        assert!(
            kustomization_path.exists(),
            "{shown}: no kustomization.yaml beside it"
        );
        let kustomization = &read_yaml(&kustomization_path)[0];
        let listed = kustomization["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                kustomization["patches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| &p["path"]),
            )
            .any(|r| r.as_str() == Some(name));
        assert!(
            listed,
            "{shown} is not listed in {}",
            relative(&kustomization_path)
        );
    }
}
