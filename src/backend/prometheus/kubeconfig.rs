//! `--prometheus-auth-config`: a kubeconfig whose current context says how to authenticate to
//! Prometheus, as prometheus-adapter reads it with client-go's `clientcmd` (the server URL still
//! comes from `--prometheus-url`).
//!
//! The file is parsed by kube's [`Kubeconfig`] (field names, multi-document files, null lists),
//! and the current context, its cluster and its user are resolved as kube's and clientcmd's
//! loaders do: no current context, or one that names a missing context or cluster, is an error;
//! a missing user means no credentials. Where we differ from kube or clientcmd, and why:
//! - kube's `Kubeconfig::read_from` and its loaders read the files a kubeconfig names themselves;
//!   here every file is read through [`Files`], so a change to any of them reloads the
//!   credentials. Relative paths are resolved against the kubeconfig's directory, as both do.
//! - The cluster's `server` is not needed (clientcmd requires one): Prometheus' URL is
//!   `--prometheus-url`; prometheus-adapter builds only a transport from the kubeconfig too.
//! - A token together with basic auth is refused by clientcmd; the token is used, as before.
//!   `insecure-skip-tls-verify` with a CA is refused by clientcmd; both are honoured, as before.
//! - `token-file` (not a kubeconfig key; clientcmd's is `tokenFile`) is still read, because
//!   earlier versions of this adapter read that key.
//! - `exec` and `auth-provider` users need a plugin clientcmd would run; this adapter cannot, so
//!   they are an error rather than requests without credentials. Impersonation (`as`, ...),
//!   `proxy-url` and `tls-server-name` are not honoured; they are logged when set.

use std::path::{Path, PathBuf};

use kube::config::{AuthInfo, Cluster, Kubeconfig};
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;

use super::{Error, Result, credentials::Files};

/// What a kubeconfig's current context says about reaching Prometheus.
#[derive(Default)]
pub(super) struct KubeconfigAuth {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<Vec<u8>>,
    pub authorization: Option<HeaderValue>,
    pub insecure: bool,
}

/// Reads the current context of the kubeconfig at `path`; every file read (the kubeconfig and
/// the files it names) is recorded in `files`, so a change to any of them reloads the credentials.
pub(super) fn kubeconfig_auth(path: &Path, files: &mut Files) -> Result<KubeconfigAuth> {
    let setup = |what: String| Error::Setup(format!("--prometheus-auth-config {}: {what}", path.display()));
    let text = String::from_utf8(files.read(path)?).map_err(|err| setup(err.to_string()))?;
    let config = Kubeconfig::from_yaml(text.trim_start_matches('\u{feff}'))
        .map_err(|err| setup(super::error_chain(&err)))?;
    let (cluster, user) = current(&config).map_err(setup)?;
    let mut paths = Paths {
        dir: path.parent().unwrap_or(Path::new("")),
        files,
        setup: &setup,
    };
    let mut auth = KubeconfigAuth {
        insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
        ..KubeconfigAuth::default()
    };
    auth.ca_pem = paths.inline_or_file(
        cluster.certificate_authority_data.as_deref(),
        cluster.certificate_authority.as_deref(),
    )?;
    if let Some(user) = &user {
        user_auth(user, &mut paths, &mut auth)?;
    }
    log_ignored(path, &cluster, user.as_ref());
    Ok(auth)
}

/// The cluster and user of the current context, resolved as kube's loader and clientcmd do.
fn current(config: &Kubeconfig) -> std::result::Result<(Cluster, Option<AuthInfo>), String> {
    let name = config
        .current_context
        .as_deref()
        .filter(|name| !name.is_empty())
        .ok_or("no current-context is set")?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("no context named {name:?} (current-context)"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| format!("no cluster named {:?} (context {name:?})", context.cluster))?;
    // Like client-go, a context without a user, or naming a missing one, has no credentials.
    let user = context.user.as_ref().and_then(|user| {
        config
            .auth_infos
            .iter()
            .find(|u| &u.name == user)
            .and_then(|u| u.auth_info.clone())
    });
    Ok((cluster, user))
}

/// Settings clientcmd honours that this adapter does not, logged so an operator knows.
fn log_ignored(path: &Path, cluster: &Cluster, user: Option<&AuthInfo>) {
    let mut ignored = Vec::new();
    if cluster.proxy_url.is_some() {
        ignored.push("proxy-url");
    }
    if cluster.tls_server_name.is_some() {
        ignored.push("tls-server-name");
    }
    if user.is_some_and(|u| {
        u.impersonate.is_some() || u.impersonate_groups.is_some() || u.impersonate_uid.is_some()
    }) {
        ignored.push("impersonation (as, as-groups, as-uid)");
    }
    if !ignored.is_empty() {
        tracing::warn!(file = %path.display(), ?ignored, "--prometheus-auth-config sets what this adapter does not honour");
    }
}

/// Reads the files a kubeconfig names: relative to its directory, recorded in `files`.
struct Paths<'a> {
    dir: &'a Path,
    files: &'a mut Files,
    setup: &'a dyn Fn(String) -> Error,
}

impl Paths<'_> {
    fn read(&mut self, file: &str) -> Result<Vec<u8>> {
        let path = PathBuf::from(file);
        let path = match path.is_relative() {
            true => self.dir.join(path),
            false => path,
        };
        self.files.read(&path)
    }

    /// Base64 data given inline (it overrides the file, as in kube and clientcmd), else the
    /// contents of the named file.
    fn inline_or_file(&mut self, data: Option<&str>, file: Option<&str>) -> Result<Option<Vec<u8>>> {
        use base64::Engine as _;
        match (data, file) {
            (Some(data), _) => base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map(Some)
                .map_err(|err| (self.setup)(format!("base64: {err}"))),
            (None, Some(file)) => self.read(file).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The user's client certificate and its Authorization header (token, then basic auth).
fn user_auth(user: &AuthInfo, paths: &mut Paths<'_>, auth: &mut KubeconfigAuth) -> Result<()> {
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err((paths.setup)(
            "the user authenticates through an exec or auth-provider plugin, which this adapter cannot run; \
             give it a token, tokenFile, basic auth or a client certificate"
                .into(),
        ));
    }
    let key_data = user.client_key_data.as_ref().map(|key| key.expose_secret());
    let cert = paths.inline_or_file(
        user.client_certificate_data.as_deref(),
        user.client_certificate.as_deref(),
    )?;
    let key = paths.inline_or_file(key_data, user.client_key.as_deref())?;
    auth.identity_pem = match (cert, key) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend(key);
            Some(cert)
        }
        (None, None) => None,
        // kube and clientcmd refuse half a client certificate rather than connect without it.
        _ => {
            return Err((paths.setup)(
                "the user has a client certificate or a client key, but not both".into(),
            ));
        }
    };
    let token = token(user, paths)?;
    let authorization = match (token, &user.username, &user.password) {
        (Some(token), _, _) => Some(format!("Bearer {token}")),
        (None, Some(name), Some(password)) => Some(format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{name}:{}", password.expose_secret())
            )
        )),
        _ => None,
    };
    if let Some(value) = authorization {
        auth.authorization =
            Some(HeaderValue::try_from(value).map_err(|err| (paths.setup)(err.to_string()))?);
    }
    Ok(())
}

/// `token`, else the contents of `tokenFile` (or of the legacy `token-file`); an empty token
/// (a rotation caught mid-write) does not load.
fn token(user: &AuthInfo, paths: &mut Paths<'_>) -> Result<Option<String>> {
    let legacy_file = user.other.get("token-file").and_then(|v| v.as_str());
    let token = match (&user.token, user.token_file.as_deref().or(legacy_file)) {
        (Some(token), _) => Some(token.expose_secret().trim().to_owned()),
        (None, Some(file)) => Some(String::from_utf8_lossy(&paths.read(file)?).trim().to_owned()),
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err((paths.setup)("the user's token is empty".into()));
    }
    Ok(token)
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

    /// A kubeconfig with one context `p` on cluster `c` as user `u`, written into `dir`.
    fn write(dir: &Path, cluster: &str, user: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "current-context: p\ncontexts:\n- name: p\n  context: {{cluster: c, user: u}}\n\
                 clusters:\n- name: c\n  cluster: {cluster}\nusers:\n- name: u\n  user: {user}\n"
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn client_go_keys_and_paths_relative_to_the_kubeconfig() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/token"), "from-token-file\n").unwrap();
        std::fs::write(dir.path().join("certs/ca.crt"), "CA PEM").unwrap();
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let path = write(
            dir.path(),
            "{server: 'https://ignored', certificate-authority: certs/ca.crt}",
            &format!(
                "{{tokenFile: certs/token, client-certificate-data: {}, client-key-data: {}}}",
                encode("CERT PEM"),
                encode("KEY PEM")
            ),
        );
        let mut files = Files::default();
        let auth = kubeconfig_auth(&path, &mut files).unwrap();
        assert_eq!(
            auth.authorization.unwrap().to_str().unwrap(),
            "Bearer from-token-file"
        );
        assert_eq!(auth.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(auth.identity_pem.as_deref(), Some(&b"CERT PEM\nKEY PEM"[..]));
        assert!(!auth.insecure);
        assert_eq!(
            files.paths(),
            [
                path,
                dir.path().join("certs/ca.crt"),
                dir.path().join("certs/token")
            ]
        );
    }

    #[test]
    fn what_kube_and_clientcmd_refuse_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert"), "CERT").unwrap();
        let refused = |cluster: &str, user: &str| {
            let path = write(dir.path(), cluster, user);
            match kubeconfig_auth(&path, &mut Files::default()) {
                Err(err) => err.to_string(),
                Ok(_) => panic!("{cluster} {user} loaded"),
            }
        };
        assert!(refused("{}", "{client-certificate: cert}").contains("not both"));
        assert!(
            refused(
                "{}",
                "{exec: {command: get-token, apiVersion: client.authentication.k8s.io/v1}}"
            )
            .contains("plugin")
        );
        assert!(refused("{}", "{token: ' '}").contains("empty"));
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "current-context: p\ncontexts:\n- name: p\n  context: {cluster: missing, user: u}\nusers: null\n",
        )
        .unwrap();
        let err = kubeconfig_auth(&path, &mut Files::default()).err().unwrap();
        assert!(err.to_string().contains("no cluster named \"missing\""), "{err}");
        std::fs::write(&path, "contexts: []\n").unwrap();
        let err = kubeconfig_auth(&path, &mut Files::default()).err().unwrap();
        assert!(err.to_string().contains("no current-context"), "{err}");
    }

    #[test]
    fn a_context_without_a_known_user_has_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "current-context: p\ncontexts:\n- name: p\n  context: {cluster: c, user: nobody}\nclusters:\n- name: c\n  cluster: {}\n",
        )
        .unwrap();
        let auth = kubeconfig_auth(&path, &mut Files::default()).unwrap();
        assert!(auth.authorization.is_none() && auth.identity_pem.is_none() && auth.ca_pem.is_none());
    }
}
