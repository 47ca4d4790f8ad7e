//! May they do this: request attributes as the API server's RequestInfo parses them, decided by a
//! SubjectAccessReview, answers cached for a while.

use std::time::Duration;

use axum::http::Method;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, api::PostParams};

use super::{Result, UserInfo};

/// What a request does, in the terms of Kubernetes authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: String,
    /// False for non-resource paths such as discovery (`/apis/<group>/<version>`).
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub namespace: String,
    pub path: String,
}

impl Attributes {
    /// Parses like k8s.io/apiserver's `RequestInfoFactory` for `/apis/<group>/<version>/...`.
    pub fn from_request(method: &Method, path: &str) -> Self {
        let verb = match *method {
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let non_resource = Self {
            verb: method.as_str().to_ascii_lowercase(),
            resource_request: false,
            api_group: String::new(),
            api_version: String::new(),
            resource: String::new(),
            subresource: String::new(),
            name: String::new(),
            namespace: String::new(),
            path: path.to_owned(),
        };
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let [prefix, group, version, rest @ ..] = parts.as_slice() else {
            return non_resource;
        };
        if *prefix != "apis" || rest.is_empty() {
            return non_resource;
        }
        let mut namespace = "";
        let mut rest: &[&str] = rest;
        if rest[0] == "namespaces" && rest.len() > 1 {
            namespace = rest[1];
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        let resource = rest.first().copied().unwrap_or_default();
        let name = rest.get(1).copied().unwrap_or_default();
        let subresource = rest.get(2).copied().unwrap_or_default();
        let verb = match verb {
            "get" if name.is_empty() => "list",
            "delete" if name.is_empty() => "deletecollection",
            verb => verb,
        };
        Self {
            verb: verb.to_owned(),
            resource_request: true,
            api_group: (*group).to_owned(),
            api_version: (*version).to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            path: path.to_owned(),
        }
    }

    /// The API server's wording: `User "alice" cannot get resource "pods/http_requests" in API group
    /// "custom.metrics.k8s.io" in the namespace "default"`.
    pub fn forbidden_message(&self, user: &str, reason: &str) -> String {
        let mut message = if !self.resource_request {
            format!(
                "forbidden: User {user:?} cannot {} path {:?}",
                self.verb, self.path
            )
        } else {
            let resource = if self.subresource.is_empty() {
                self.resource.clone()
            } else {
                format!("{}/{}", self.resource, self.subresource)
            };
            let group_resource = if self.api_group.is_empty() {
                self.resource.clone()
            } else {
                format!("{}.{}", self.resource, self.api_group)
            };
            let scope = if self.namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace {:?}", self.namespace)
            };
            let object = if self.name.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.name)
            };
            format!(
                "{group_resource}{object} is forbidden: User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                self.verb, self.api_group
            )
        };
        if !reason.is_empty() {
            message.push_str(": ");
            message.push_str(reason);
        }
        message
    }
}

/// An authorization answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// SubjectAccessReview with separate cache lifetimes for allowed and denied answers.
pub struct Authorizer {
    api: Api<SubjectAccessReview>,
    allowed: moka::future::Cache<(UserInfo, Attributes), Decision>,
    denied: moka::future::Cache<(UserInfo, Attributes), Decision>,
    timeout: Duration,
}

impl Authorizer {
    pub fn new(client: kube::Client, allowed_ttl: Duration, denied_ttl: Duration) -> Self {
        let cache = |ttl| {
            moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(10_000)
                .build()
        };
        Self {
            api: Api::all(client),
            allowed: cache(allowed_ttl),
            denied: cache(denied_ttl),
            timeout: super::REVIEW_TIMEOUT,
        }
    }

    /// How long a SubjectAccessReview may take, rate-limit wait included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub async fn authorize(&self, user: &UserInfo, attributes: &Attributes) -> Result<Decision> {
        // The aggregator's discovery and availability checks come as system:masters.
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(Decision {
                allowed: true,
                reason: String::new(),
            });
        }
        let key = (user.clone(), attributes.clone());
        if let Some(decision) = self.allowed.get(&key).await {
            return Ok(decision);
        }
        if let Some(decision) = self.denied.get(&key).await {
            return Ok(decision);
        }
        let review = SubjectAccessReview {
            spec: review_spec(user, attributes),
            ..Default::default()
        };
        let answer = super::send_review(
            "SubjectAccessReview",
            self.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await?;
        let status = answer.status.unwrap_or_default();
        let decision = Decision {
            allowed: status.allowed,
            reason: status.reason.unwrap_or_default(),
        };
        let cache = if decision.allowed {
            &self.allowed
        } else {
            &self.denied
        };
        cache.insert(key, decision.clone()).await;
        Ok(decision)
    }
}

fn review_spec(user: &UserInfo, attributes: &Attributes) -> SubjectAccessReviewSpec {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (resource_attributes, non_resource_attributes) = if attributes.resource_request {
        let resource = ResourceAttributes {
            verb: some(&attributes.verb),
            group: Some(attributes.api_group.clone()),
            version: some(&attributes.api_version),
            resource: some(&attributes.resource),
            subresource: some(&attributes.subresource),
            name: some(&attributes.name),
            namespace: some(&attributes.namespace),
            ..Default::default()
        };
        (Some(resource), None)
    } else {
        let path = NonResourceAttributes {
            path: Some(attributes.path.clone()),
            verb: Some(attributes.verb.clone()),
        };
        (None, Some(path))
    };
    SubjectAccessReviewSpec {
        user: Some(user.name.clone()),
        uid: some(&user.uid),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        resource_attributes,
        non_resource_attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str) -> Attributes {
        Attributes::from_request(&Method::GET, path)
    }

    #[test]
    fn request_info_matches_the_api_server() {
        let a = parse("/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests");
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.subresource.as_str(),
                a.name.as_str(),
                a.namespace.as_str()
            ),
            ("get", "pods", "http_requests", "*", "default")
        );
        let a = parse("/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/metrics/queue_len");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("metrics", "queue_len", "")
        );
        let a = parse("/apis/custom.metrics.k8s.io/v1beta1/nodes/*/cpu_temp");
        assert_eq!((a.resource.as_str(), a.namespace.as_str()), ("nodes", ""));
        let a = parse("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.name.as_str()),
            ("list", "queue_depth", "")
        );
        for discovery in [
            "/apis/custom.metrics.k8s.io/v1beta1",
            "/apis",
            "/version",
            "/openapi/v2",
        ] {
            assert!(!parse(discovery).resource_request, "{discovery}");
        }
    }

    #[test]
    fn forbidden_messages() {
        let a = parse("/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests");
        assert_eq!(
            a.forbidden_message("alice", ""),
            r#"pods.custom.metrics.k8s.io "*" is forbidden: User "alice" cannot get resource "pods/http_requests" in API group "custom.metrics.k8s.io" in the namespace "default""#
        );
        let a = parse("/apis/custom.metrics.k8s.io/v1beta1");
        assert_eq!(
            a.forbidden_message("system:anonymous", "no RBAC policy matched"),
            r#"forbidden: User "system:anonymous" cannot get path "/apis/custom.metrics.k8s.io/v1beta1": no RBAC policy matched"#
        );
    }
}
