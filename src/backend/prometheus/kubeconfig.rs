//! `--prometheus-auth-config`: a kubeconfig whose current context says how to authenticate to
//! Prometheus, as prometheus-adapter reads it (the server URL still comes from `--prometheus-url`).

use std::path::{Path, PathBuf};

use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::{Error, Result, credentials::Files};

/// What a kubeconfig's current context says about reaching Prometheus.
#[derive(Default)]
pub(super) struct KubeconfigAuth {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<Vec<u8>>,
    pub authorization: Option<HeaderValue>,
    pub insecure: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct File {
    current_context: String,
    contexts: Vec<Named<Context>>,
    clusters: Vec<Named<Cluster>>,
    users: Vec<Named<User>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Named<T: Default> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct Cluster {
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct User {
    token: Option<String>,
    token_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
}

/// Reads the current context of the kubeconfig at `path`; every file read (the kubeconfig and
/// the files it names) is recorded in `files`, so a change to any of them reloads the credentials.
pub(super) fn kubeconfig_auth(path: &Path, files: &mut Files) -> Result<KubeconfigAuth> {
    let setup = |what: String| Error::Setup(format!("--prometheus-auth-config {}: {what}", path.display()));
    let text = String::from_utf8(files.read(path)?).map_err(|err| setup(err.to_string()))?;
    let file: File = serde_saphyr::from_str(&text).map_err(|err| setup(err.to_string()))?;
    let context = file
        .contexts
        .iter()
        .find(|c| c.name == file.current_context)
        .ok_or_else(|| {
            setup(format!(
                "no context named {:?} (current-context)",
                file.current_context
            ))
        })?;
    let mut auth = KubeconfigAuth::default();
    let cluster = file.clusters.iter().find(|c| c.name == context.value.cluster);
    if let Some(Named { value: cluster, .. }) = cluster {
        auth.ca_pem = inline_or_file(
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
            files,
            &setup,
        )?;
        auth.insecure = cluster.insecure_skip_tls_verify;
    }
    if let Some(Named { value: user, .. }) = file.users.iter().find(|u| u.name == context.value.user) {
        user_auth(user, files, &setup, &mut auth)?;
    }
    Ok(auth)
}

/// The user's client certificate and its Authorization header (token, then basic auth).
fn user_auth(
    user: &User,
    files: &mut Files,
    setup: &dyn Fn(String) -> Error,
    auth: &mut KubeconfigAuth,
) -> Result<()> {
    use base64::Engine as _;
    let cert = inline_or_file(
        &user.client_certificate_data,
        &user.client_certificate,
        files,
        setup,
    )?;
    let key = inline_or_file(&user.client_key_data, &user.client_key, files, setup)?;
    if let (Some(mut cert), Some(key)) = (cert, key) {
        cert.push(b'\n');
        cert.extend(key);
        auth.identity_pem = Some(cert);
    }
    let token = match (&user.token, &user.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(file)) => Some(String::from_utf8_lossy(&files.read(file)?).trim().to_owned()),
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(setup("the user's token is empty".into()));
    }
    let authorization = match (token, &user.username, &user.password) {
        (Some(token), _, _) => Some(format!("Bearer {token}")),
        (None, Some(name), Some(password)) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
        )),
        _ => None,
    };
    if let Some(value) = authorization {
        auth.authorization = Some(HeaderValue::try_from(value).map_err(|err| setup(err.to_string()))?);
    }
    Ok(())
}

/// Base64 data given inline, else the contents of the named file.
fn inline_or_file(
    data: &Option<String>,
    file: &Option<PathBuf>,
    files: &mut Files,
    setup: &dyn Fn(String) -> Error,
) -> Result<Option<Vec<u8>>> {
    use base64::Engine as _;
    match (data, file) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|err| setup(format!("base64: {err}"))),
        (None, Some(file)) => files.read(file).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_auth_reads_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prometheus.kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: prom\ncontexts:\n- name: other\n  context: {cluster: c, user: nobody}\n\
             - name: prom\n  context: {cluster: c, user: reader}\nclusters:\n- name: c\n  cluster: {server: 'https://ignored', insecure-skip-tls-verify: true}\n\
             users:\n- name: nobody\n  user: {token: wrong}\n- name: reader\n  user: {username: alice, password: secret}\n",
        )
        .unwrap();
        let auth = kubeconfig_auth(&path, &mut Files::default()).unwrap();
        assert_eq!(
            auth.authorization.unwrap().to_str().unwrap(),
            "Basic YWxpY2U6c2VjcmV0"
        );
        assert!(auth.insecure);
        assert!(auth.ca_pem.is_none() && auth.identity_pem.is_none());
        std::fs::write(&path, "current-context: missing\n").unwrap();
        assert!(kubeconfig_auth(&path, &mut Files::default()).is_err());
    }

    #[test]
    fn files_named_by_the_kubeconfig_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let token = dir.path().join("token");
        std::fs::write(&token, "abc").unwrap();
        std::fs::write(
            &path,
            format!(
                "current-context: p\ncontexts:\n- name: p\n  context: {{cluster: c, user: u}}\nclusters:\n- name: c\n  cluster: {{}}\nusers:\n- name: u\n  user: {{token-file: {}}}\n",
                token.display()
            ),
        )
        .unwrap();
        let mut files = Files::default();
        let auth = kubeconfig_auth(&path, &mut files).unwrap();
        assert_eq!(auth.authorization.unwrap().to_str().unwrap(), "Bearer abc");
        assert_eq!(files.paths(), [path, token]);
    }
}
