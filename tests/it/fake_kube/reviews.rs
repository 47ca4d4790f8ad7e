//! Authentication and authorization: TokenReview, SubjectAccessReview, SelfSubjectAccessReview,
//! the RBAC-like rules behind them, their faults, and RBAC enforcement of resource requests.

use std::{sync::Arc, time::Duration};

use axum::{
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use k8s_openapi::{
    api::{
        authentication::v1::{TokenReview, TokenReviewStatus, UserInfo},
        authorization::v1::{
            NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview, SubjectAccessReview,
            SubjectAccessReviewStatus,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ListMeta, Status, StatusDetails},
};

use super::{FakeKube, Inner, Shared, bad_request, respond, status, unauthorized};

/// One grant (or denial) of a verb on a resource or non-resource path to a user or group.
pub(super) struct Rule {
    subject: String,
    verb: String,
    group: String,
    resource: String,
    /// None: every namespace and cluster-scoped requests (a ClusterRoleBinding); Some: only
    /// requests in that namespace (a RoleBinding).
    namespace: Option<String>,
    /// A deny rule answers `denied: true`, as a webhook authorizer ahead of RBAC can.
    deny: bool,
}

/// How the fake answers TokenReviews or SubjectAccessReviews while a fault is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewFault {
    /// No answer until the fault is cleared (an API server stuck on etcd or a webhook).
    Hang,
    /// A Status with this code (500 InternalError, 503 ServiceUnavailable, 429 TooManyRequests).
    Fail(u16),
}

/// Which review a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    Token,
    Access,
}

impl FakeKube {
    /// TokenReview: this bearer token authenticates as `user` with `groups`.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        self.shared
            .lock()
            .tokens
            .insert(token.into(), (user.into(), groups));
    }

    /// SubjectAccessReview: allow `verb` on (`group`, `resource`) for this user or group ("*"
    /// matches any verb, group or resource; with group "" the resource may be a non-resource path,
    /// a trailing "*" matching any suffix).
    pub fn allow(&self, subject: &str, verb: &str, group: &str, resource: &str) {
        self.add_rule(subject, verb, group, resource, None, false);
    }

    /// [`Self::allow`] for requests in `namespace` only, as a RoleBinding grants.
    pub fn allow_in(&self, namespace: &str, subject: &str, verb: &str, group: &str, resource: &str) {
        self.add_rule(subject, verb, group, resource, Some(namespace), false);
    }

    /// SubjectAccessReview: deny `verb` on (`group`, `resource`) in `namespace` for this user or
    /// group (`denied: true`), whatever allow rules say; as an authorization webhook ahead of RBAC
    /// that protects a namespace does.
    pub fn deny_in(&self, namespace: &str, subject: &str, verb: &str, group: &str, resource: &str) {
        self.add_rule(subject, verb, group, resource, Some(namespace), true);
    }

    fn add_rule(
        &self,
        subject: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        deny: bool,
    ) {
        self.shared.lock().rules.push(Rule {
            subject: subject.into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_owned),
            deny,
        });
    }

    /// From now on, GET/LIST/WATCH of resources need a rule of [`Self::allow`] for the caller (its
    /// user or one of its groups), or they are the API server's 403.
    pub fn enforce_rbac(&self) {
        self.shared.lock().enforce_rbac = true;
    }

    /// Makes TokenReviews or SubjectAccessReviews hang or fail until called again with None.
    pub fn set_review_fault(&self, review: Review, fault: Option<ReviewFault>) {
        let mut inner = self.shared.lock();
        match review {
            Review::Token => inner.token_fault = fault,
            Review::Access => inner.access_fault = fault,
        }
    }

    /// The SubjectAccessReviews received, in arrival order (also those that hung or failed).
    pub fn access_reviews(&self) -> Vec<SubjectAccessReview> {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/subjectaccessreviews"))
            .filter_map(|r| serde_json::from_str(&r.body).ok())
            .collect()
    }
}

/// Waits while a `Hang` fault is set for `review` (or the fake stops); the failure to answer when a
/// `Fail` fault is set.
pub(super) async fn fault(shared: &Arc<Shared>, review: Review) -> Option<Response> {
    let current = || {
        let inner = shared.lock();
        match review {
            Review::Token => inner.token_fault,
            Review::Access => inner.access_fault,
        }
    };
    while current() == Some(ReviewFault::Hang) && !*shared.shutdown.borrow() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = match current()? {
        ReviewFault::Hang => return None,
        ReviewFault::Fail(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let reason = match code.as_u16() {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    Some(status(
        code,
        reason,
        format!("the fake API server fails {review:?} reviews"),
    ))
}

pub(super) fn token_review(inner: &Inner, body: &[u8]) -> Response {
    let mut review: TokenReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid TokenReview: {e}")),
    };
    let token = review.spec.token.clone();
    review.status = Some(match inner.tokens.get(&token) {
        Some((user, groups)) => TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some(user.clone()),
                groups: Some(groups.clone()),
                uid: Some(format!("uid-{user}")),
                extra: None,
            }),
            ..Default::default()
        },
        None => TokenReviewStatus {
            authenticated: Some(false),
            error: Some("invalid bearer token".into()),
            ..Default::default()
        },
    });
    respond(StatusCode::CREATED, &review)
}

pub(super) fn access_review(inner: &Inner, body: &[u8]) -> Response {
    let mut review: SubjectAccessReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid SubjectAccessReview: {e}")),
    };
    let spec = &review.spec;
    let subjects: Vec<&str> = spec
        .user
        .iter()
        .chain(spec.groups.iter().flatten())
        .map(String::as_str)
        .collect();
    let Some(request) = Access::requested(
        spec.resource_attributes.as_ref(),
        spec.non_resource_attributes.as_ref(),
    ) else {
        return bad_request("resourceAttributes or nonResourceAttributes required".into());
    };
    review.status = Some(inner.decide(&subjects, &request));
    respond(StatusCode::CREATED, &review)
}

/// A SelfSubjectAccessReview: the same decision as a SubjectAccessReview, for the caller.
pub(super) fn self_access_review(inner: &Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut review: SelfSubjectAccessReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid SelfSubjectAccessReview: {e}")),
    };
    let Some((user, groups)) = inner.caller(headers) else {
        return unauthorized();
    };
    let spec = &review.spec;
    let Some(request) = Access::requested(
        spec.resource_attributes.as_ref(),
        spec.non_resource_attributes.as_ref(),
    ) else {
        return bad_request("resourceAttributes or nonResourceAttributes required".into());
    };
    let subjects: Vec<&str> = std::iter::once(user.as_str())
        .chain(groups.iter().map(String::as_str))
        .collect();
    // It answers what the caller can do here: anything, unless RBAC is enforced.
    review.status = Some(if inner.enforce_rbac {
        inner.decide(&subjects, &request)
    } else {
        SubjectAccessReviewStatus {
            allowed: true,
            reason: Some("the fake does not enforce RBAC".into()),
            ..Default::default()
        }
    });
    respond(StatusCode::CREATED, &review)
}

/// What an access review or a request asks to do.
struct Access {
    verb: String,
    group: String,
    /// The resource, or the path of a non-resource request.
    resource: String,
    /// "" at the cluster scope and for non-resource requests.
    namespace: String,
    non_resource: bool,
}

impl Access {
    /// What a (Self)SubjectAccessReview asks about; None when it names neither kind.
    fn requested(
        resource: Option<&ResourceAttributes>,
        non_resource: Option<&NonResourceAttributes>,
    ) -> Option<Self> {
        match (resource, non_resource) {
            (Some(ra), _) => Some(Access::resource(
                ra.verb.as_deref(),
                ra.group.as_deref(),
                ra.resource.as_deref(),
                ra.namespace.as_deref(),
            )),
            (None, Some(na)) => Some(Access::path(na.verb.as_deref(), na.path.as_deref())),
            (None, None) => None,
        }
    }

    fn resource(
        verb: Option<&str>,
        group: Option<&str>,
        resource: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        Access {
            verb: verb.unwrap_or_default().to_owned(),
            group: group.unwrap_or_default().to_owned(),
            resource: resource.unwrap_or_default().to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            non_resource: false,
        }
    }

    fn path(verb: Option<&str>, path: Option<&str>) -> Self {
        Access {
            verb: verb.unwrap_or_default().to_owned(),
            group: String::new(),
            resource: path.unwrap_or_default().to_owned(),
            namespace: String::new(),
            non_resource: true,
        }
    }
}

impl Inner {
    /// The rules' answer for these subjects (a user and its groups); `system:masters` may do
    /// anything; a deny rule wins over allow rules, as a webhook authorizer ahead of RBAC does.
    fn decide(&self, subjects: &[&str], request: &Access) -> SubjectAccessReviewStatus {
        let wild = |rule: &str, value: &str| rule == "*" || rule == value;
        let applies = |r: &&Rule| {
            subjects.contains(&r.subject.as_str())
                && wild(&r.verb, &request.verb)
                && if request.non_resource {
                    r.group.is_empty()
                        && r.namespace.is_none()
                        && (wild(&r.resource, &request.resource)
                            || r.resource
                                .strip_suffix('*')
                                .is_some_and(|p| request.resource.starts_with(p)))
                } else {
                    wild(&r.group, &request.group)
                        && wild(&r.resource, &request.resource)
                        && r.namespace.as_ref().is_none_or(|ns| *ns == request.namespace)
                }
        };
        let denied = self.rules.iter().filter(|r| r.deny).find(applies);
        let matched = self.rules.iter().filter(|r| !r.deny).find(applies);
        if subjects.contains(&"system:masters") {
            SubjectAccessReviewStatus {
                allowed: true,
                reason: Some("system:masters".into()),
                ..Default::default()
            }
        } else if let Some(rule) = denied {
            SubjectAccessReviewStatus {
                allowed: false,
                denied: Some(true),
                reason: Some(format!(
                    "namespace {:?} is protected from {:?} by the fake's deny rule",
                    request.namespace, rule.subject
                )),
                ..Default::default()
            }
        } else if let Some(rule) = matched {
            let reason = format!("allowed by fake rule for {:?}", rule.subject);
            SubjectAccessReviewStatus {
                allowed: true,
                reason: Some(reason),
                ..Default::default()
            }
        } else {
            SubjectAccessReviewStatus {
                allowed: false,
                reason: Some("no RBAC policy matched".into()),
                ..Default::default()
            }
        }
    }

    /// Who sends this request, as the API server's authenticators see it: the user and groups of its
    /// bearer token, `system:anonymous` without one, None (a 401) for a token no one issued.
    fn caller(&self, headers: &HeaderMap) -> Option<(String, Vec<String>)> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            None => Some(("system:anonymous".into(), vec!["system:unauthenticated".into()])),
            Some(token) => self.tokens.get(token).cloned(),
        }
    }

    /// With RBAC enforced, the API server's 403 for a `verb` on the (group, resource) the caller may
    /// not do (or its 401); None when allowed.
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        verb: &str,
        (group, plural): (&str, &str),
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Option<Response> {
        if !self.enforce_rbac {
            return None;
        }
        let Some((user, groups)) = self.caller(headers) else {
            return Some(unauthorized());
        };
        let subjects: Vec<&str> = std::iter::once(user.as_str())
            .chain(groups.iter().map(String::as_str))
            .collect();
        let request = Access::resource(Some(verb), Some(group), Some(plural), namespace);
        if self.decide(&subjects, &request).allowed {
            return None;
        }
        // k8s.io/apiserver's forbiddenMessage, wrapped by errors.NewForbidden.
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_owned(),
        };
        let why = format!("User {user:?} cannot {verb} resource {plural:?} in API group {group:?} {scope}");
        let qualified = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        let message = match name {
            Some(name) => format!("{qualified} {name:?} is forbidden: {why}"),
            None => format!("{qualified} is forbidden: {why}"),
        };
        let status = Status {
            code: Some(403),
            details: Some(StatusDetails {
                group: Some(group.to_owned()).filter(|g| !g.is_empty()),
                kind: Some(plural.to_owned()),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            message: Some(message),
            metadata: ListMeta::default(),
            reason: Some("Forbidden".into()),
            status: Some("Failure".into()),
        };
        Some(respond(StatusCode::FORBIDDEN, &status))
    }
}
