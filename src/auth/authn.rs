//! Who is calling: the front proxy's request headers (only behind its client certificate), client
//! certificates, bearer tokens through TokenReview, or anonymous.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, HeaderName, header::AUTHORIZATION};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{Error, Result};

/// The authenticated user, as Kubernetes' `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    /// Adds `system:authenticated`, as the API server does for every authenticated user.
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == "system:authenticated") {
            self.groups.push("system:authenticated".into());
        }
        self
    }
}

/// What decides whom to trust; from flags or the `extension-apiserver-authentication` ConfigMap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthnConfig {
    /// CAs for ordinary client certificates (user = CN, groups = O).
    pub client_ca: Vec<CertificateDer<'static>>,
    /// CAs for the front proxy's client certificate.
    pub requestheader_ca: Vec<CertificateDer<'static>>,
    /// Allowed CNs of the front proxy's certificate; empty allows any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub extra_header_prefixes: Vec<String>,
    pub uid_headers: Vec<String>,
}

impl AuthnConfig {
    /// The request-header names Kubernetes uses when none are configured.
    pub fn with_default_headers(mut self) -> Self {
        let default = |list: &mut Vec<String>, name: &str| {
            if list.is_empty() {
                list.push(name.into());
            }
        };
        default(&mut self.username_headers, "X-Remote-User");
        default(&mut self.group_headers, "X-Remote-Group");
        default(&mut self.extra_header_prefixes, "X-Remote-Extra-");
        default(&mut self.uid_headers, "X-Remote-Uid");
        self
    }

    /// Reads the keys of `kube-system/extension-apiserver-authentication`.
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<Self> {
        let pem = |key: &str| -> Result<Vec<CertificateDer<'static>>> {
            match data.get(key) {
                Some(text) => parse_pem_certs(text.as_bytes(), key),
                None => Ok(Vec::new()),
            }
        };
        let list = |key: &str| -> Result<Vec<String>> {
            match data.get(key).filter(|v| !v.trim().is_empty()) {
                Some(text) => serde_json::from_str(text)
                    .map_err(|err| Error::Config(format!("{key} is not a JSON list of strings: {err}"))),
                None => Ok(Vec::new()),
            }
        };
        Ok(Self {
            client_ca: pem("client-ca-file")?,
            requestheader_ca: pem("requestheader-client-ca-file")?,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_header_prefixes: list("requestheader-extra-headers-prefix")?,
            uid_headers: list("requestheader-uid-headers")?,
        }
        .with_default_headers())
    }
}

/// Parses every certificate of a PEM bundle.
pub fn parse_pem_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Error::Config(format!("{origin}: {err}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{origin} holds no PEM certificate")));
    }
    Ok(certs)
}

/// Authenticates requests with the current [`AuthnConfig`] and, when configured, TokenReview.
pub struct Authenticator {
    config: ArcSwap<AuthnConfig>,
    tokens: Option<TokenReviewer>,
}

impl Authenticator {
    pub fn new(config: AuthnConfig, tokens: Option<TokenReviewer>) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            tokens,
        }
    }

    /// Swaps in a new configuration (CA rotation); takes effect for the next request.
    pub fn set_config(&self, config: AuthnConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn config(&self) -> Arc<AuthnConfig> {
        self.config.load_full()
    }

    /// Identifies the caller and removes the request headers, so nothing downstream can read forged ones.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
        peer_certificates: &[CertificateDer<'static>],
    ) -> Result<UserInfo> {
        let config = self.config.load_full();
        let proxied = take_request_headers(headers, &config);

        // As k8s.io/apiserver's union of authenticators: the first that recognises the request wins;
        // a certificate that neither CA accepts (unknown CA, expired, not for client auth, a front
        // proxy CN not allowed) is an error, and an error with no success is a 401, never anonymous.
        let mut rejected = None;
        if let Some(leaf) = peer_certificates.first() {
            let intermediates = &peer_certificates[1..];
            if !config.requestheader_ca.is_empty() {
                match verifies(leaf, intermediates, &config.requestheader_ca) {
                    true => {
                        let common_name = subject(leaf).0.unwrap_or_default();
                        if !config.allowed_names.is_empty() && !config.allowed_names.contains(&common_name) {
                            rejected = Some(format!(
                                "front-proxy certificate CN {common_name:?} is not allowed"
                            ));
                        } else if let Some(user) = proxied {
                            return Ok(user.authenticated());
                        }
                    }
                    false => {
                        rejected =
                            Some("the certificate does not verify against the request-header CA".into())
                    }
                }
            }
            if !config.client_ca.is_empty() {
                match verifies(leaf, intermediates, &config.client_ca) {
                    true => {
                        let (common_name, organizations) = subject(leaf);
                        if let Some(name) = common_name {
                            let user = UserInfo {
                                name,
                                uid: String::new(),
                                groups: organizations,
                                extra: BTreeMap::new(),
                            };
                            return Ok(user.authenticated());
                        }
                    }
                    false => {
                        rejected = rejected.or(Some(
                            "the certificate does not verify against the client CA".into(),
                        ))
                    }
                }
            }
        }

        if let Some(token) = bearer_token(headers) {
            return match &self.tokens {
                Some(reviewer) => reviewer
                    .review(&token)
                    .await?
                    .map(UserInfo::authenticated)
                    .ok_or(Error::Unauthorized),
                None => Err(Error::Unauthorized),
            };
        }
        if let Some(reason) = rejected {
            tracing::debug!(%reason, "Client certificate rejected");
            return Err(Error::Unauthorized);
        }
        Ok(UserInfo::anonymous())
    }
}

/// Removes every configured request header and returns the user they describe, if any.
fn take_request_headers(headers: &mut HeaderMap, config: &AuthnConfig) -> Option<UserInfo> {
    let mut take = |names: &[String]| -> Vec<String> {
        let mut values = Vec::new();
        for name in names {
            let Ok(name) = HeaderName::try_from(name.as_str()) else {
                continue;
            };
            values.extend(
                headers
                    .get_all(&name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_owned),
            );
            headers.remove(&name);
        }
        values
    };
    let name = take(&config.username_headers).into_iter().find(|v| !v.is_empty());
    let groups = take(&config.group_headers);
    let uid = take(&config.uid_headers).into_iter().next().unwrap_or_default();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let prefixes: Vec<String> = config
        .extra_header_prefixes
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    let extra_names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| prefixes.iter().any(|p| k.as_str().starts_with(p.as_str())))
        .cloned()
        .collect();
    for header in extra_names {
        let prefix_len = prefixes
            .iter()
            .find(|p| header.as_str().starts_with(p.as_str()))
            .map_or(0, String::len);
        let key = percent_decode(&header.as_str()[prefix_len..]);
        let values = headers
            .get_all(&header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned);
        extra.entry(key).or_default().extend(values);
        headers.remove(&header);
    }
    name.map(|name| UserInfo {
        name,
        uid,
        groups,
        extra,
    })
}

/// Extra header keys are lower-cased and %-escaped by the front proxy.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim().to_owned())
}

/// Whether `leaf` chains to one of `cas` and may be used for client authentication.
fn verifies(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    cas: &[CertificateDer<'static>],
) -> bool {
    if cas.is_empty() {
        return false;
    }
    let Ok(anchors) = cas
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    end_entity
        .verify_for_usage(
            algorithms.all,
            &anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
}

/// The subject's common name and organizations.
fn subject(cert: &CertificateDer<'_>) -> (Option<String>, Vec<String>) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return (None, Vec::new());
    };
    let subject = parsed.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let organizations = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    (common_name, organizations)
}

/// Bearer tokens checked by the API server's TokenReview, answers cached for a while.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    cache: moka::future::Cache<String, Option<UserInfo>>,
    timeout: Duration,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self {
            api: Api::all(client),
            cache: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(10_000)
                .build(),
            timeout: super::REVIEW_TIMEOUT,
        }
    }

    /// How long a TokenReview may take, rate-limit wait included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The user the token belongs to, or None when the API server says it is not valid.
    async fn review(&self, token: &str) -> Result<Option<UserInfo>> {
        let api = self.api.clone();
        let owned = token.to_owned();
        let timeout = self.timeout;
        self.cache
            .try_get_with(token.to_owned(), async move {
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: owned,
                        audiences: None,
                    },
                    ..Default::default()
                };
                let answer = super::send_review(
                    "TokenReview",
                    timeout,
                    api.create(&PostParams::default(), &review),
                )
                .await?;
                let status = answer.status.unwrap_or_default();
                if status.authenticated != Some(true) {
                    return Ok::<_, Error>(None);
                }
                let user = status.user.unwrap_or_default();
                Ok(Some(UserInfo {
                    name: user.username.unwrap_or_default(),
                    uid: user.uid.unwrap_or_default(),
                    groups: user.groups.unwrap_or_default(),
                    extra: user.extra.unwrap_or_default(),
                }))
            })
            .await
            .map_err(|err| Error::clone(&err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_are_taken_and_decoded() {
        let config = AuthnConfig::default().with_default_headers();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-remote-user",
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
                .parse()
                .unwrap(),
        );
        headers.append("x-remote-group", "system:serviceaccounts".parse().unwrap());
        headers.append("x-remote-group", "system:authenticated".parse().unwrap());
        headers.insert("x-remote-extra-acme.com%2fproject", "p1".parse().unwrap());
        headers.insert("accept", "application/json".parse().unwrap());
        let user = take_request_headers(&mut headers, &config).unwrap();
        assert_eq!(
            user.name,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(user.groups, ["system:serviceaccounts", "system:authenticated"]);
        assert_eq!(user.extra["acme.com/project"], ["p1"]);
        assert_eq!(headers.len(), 1, "only non-auth headers remain: {headers:?}");
    }

    #[test]
    fn configmap_keys() {
        let data = BTreeMap::from([
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
            (
                "requestheader-username-headers".to_owned(),
                r#"["X-Remote-User"]"#.to_owned(),
            ),
        ]);
        let config = AuthnConfig::from_configmap(&data).unwrap();
        assert_eq!(config.allowed_names, ["front-proxy-client"]);
        assert_eq!(
            config.group_headers,
            ["X-Remote-Group"],
            "defaults fill missing keys"
        );
        let bad = BTreeMap::from([("requestheader-allowed-names".to_owned(), "front-proxy".to_owned())]);
        assert!(AuthnConfig::from_configmap(&bad).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer abc ".parse().unwrap());
        assert_eq!(bearer_token(&headers).as_deref(), Some("abc"));
        headers.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
