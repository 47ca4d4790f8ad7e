//! Credentials that rotate: the bearer token, the CA bundle, the client certificate and key, and
//! the `--prometheus-auth-config` kubeconfig with the files it names. Projected service-account
//! tokens are replaced every hour and certificates before they expire, so the files are read again
//! when they change (checked at most every few seconds, on the request path) and at once when
//! Prometheus refuses a request; a file that does not load (a rotation caught mid-write) keeps the
//! previous credentials.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::{ClientConfig, Error, Result, kubeconfig::kubeconfig_auth};

/// How often the credential files are compared with what was loaded.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The files a load read, with a hash of each one's contents (None: unreadable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<u64>)>);

impl Fingerprint {
    fn read_again(&self) -> Fingerprint {
        Fingerprint(
            self.0
                .iter()
                .map(|(path, _)| (path.clone(), std::fs::read(path).ok().map(|b| hash(&b))))
                .collect(),
        )
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Reads credential files and remembers what it read.
#[derive(Default)]
pub(super) struct Files {
    read: Fingerprint,
}

impl Files {
    pub(super) fn read(&mut self, path: &Path) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        });
        let seen = bytes.as_ref().ok().map(|b| hash(b));
        self.read.0.push((path.to_owned(), seen));
        bytes
    }

    #[cfg(test)]
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        self.read.0.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// An HTTP client built from one reading of the credential files.
pub(super) struct Loaded {
    pub http: reqwest::Client,
    /// The `--prometheus-header` values, sent with each request (see [`extra_headers`]).
    pub headers: HeaderMap,
    /// Counts loads, so a request that failed can tell whether newer credentials exist.
    pub generation: u64,
    files: Fingerprint,
}

/// The current credentials and how to refresh them.
pub(super) struct Credentials {
    config: ClientConfig,
    current: ArcSwap<Loaded>,
    started: Instant,
    /// Milliseconds after `started` of the latest check.
    checked_ms: AtomicU64,
    /// Held while files are compared or loaded; holds the fingerprint of the newest files that
    /// failed to load, so a broken file is reported once and not loaded on every check.
    refresh: tokio::sync::Mutex<Fingerprint>,
}

impl Credentials {
    /// Reads every file once: at start-up a file that cannot be read or parsed is an error.
    pub(super) fn new(config: &ClientConfig) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            current: ArcSwap::from_pointee(load(config)?),
            started: Instant::now(),
            checked_ms: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(Fingerprint::default()),
        })
    }

    /// Whether any credential comes from a file that may change.
    pub(super) fn come_from_files(&self) -> bool {
        !self.current.load().files.0.is_empty()
    }

    /// The credentials to use now, reloaded first when a check is due and no other request is
    /// already checking.
    pub(super) async fn current(&self) -> Arc<Loaded> {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        if self.come_from_files()
            && now.saturating_sub(last) >= CHECK_INTERVAL.as_millis() as u64
            && let Ok(failed) = self.refresh.try_lock()
        {
            self.checked_ms.store(now, Ordering::Relaxed);
            self.reload_if_changed(failed).await;
        }
        self.current.load_full()
    }

    /// After Prometheus refused credentials of `generation` (401, or a failed TLS handshake):
    /// reads the files again and says whether newer credentials are now in place, to retry with.
    pub(super) async fn reload_after_refusal(&self, generation: u64) -> Option<Arc<Loaded>> {
        if !self.come_from_files() {
            return None;
        }
        let failed = self.refresh.lock().await;
        if self.current.load().generation == generation {
            self.reload_if_changed(failed).await;
        }
        let current = self.current.load_full();
        (current.generation != generation).then_some(current)
    }

    async fn reload_if_changed(&self, mut failed: tokio::sync::MutexGuard<'_, Fingerprint>) {
        let loaded = self.current.load_full();
        let known = loaded.files.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || known.read_again()).await else {
            return;
        };
        if now == loaded.files || now == *failed {
            return;
        }
        let config = self.config.clone();
        match tokio::task::spawn_blocking(move || load(&config)).await {
            Ok(Ok(reloaded)) => {
                let generation = loaded.generation + 1;
                tracing::info!(generation, files = ?paths(&reloaded.files), "Reloaded the Prometheus credentials: their files changed");
                self.current.store(Arc::new(Loaded {
                    generation,
                    ..reloaded
                }));
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, files = ?paths(&now), "Keeping the previous Prometheus credentials: the changed files do not load (yet)");
                *failed = now;
            }
            Err(err) => tracing::warn!(error = %err, "Reloading the Prometheus credentials stopped"),
        }
    }
}

fn paths(files: &Fingerprint) -> Vec<String> {
    files.0.iter().map(|(p, _)| p.display().to_string()).collect()
}

/// Builds the HTTP client from the flags and the credentials read from their files (generation 0).
fn load(config: &ClientConfig) -> Result<Loaded> {
    let mut files = Files::default();
    let mut headers = HeaderMap::new();
    // Small query answers cost Prometheus more to gzip than to send (research perf-anchors), and
    // answers are decoded as they arrive, uncompressed: a `--prometheus-header` does not change it.
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if let Some(path) = &config.token_file {
        let token = files.read(path)?;
        headers.insert(AUTHORIZATION, bearer(&token, path)?);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(90))
        // Keep-alive: reqwest keeps every idle connection by default; this keeps enough for the
        // requests that can be in flight and no more than Prometheus can spare (see
        // `idle_connections`).
        .pool_max_idle_per_host(config.max_idle_connections)
        .tcp_nodelay(true);
    builder = flag_tls(builder, config, &mut files)?;
    if let Some(path) = &config.auth_config {
        builder = kubeconfig_tls_and_auth(builder, path, &mut files, &mut headers)?;
    }
    let extra = extra_headers(config, &headers)?;
    // The identity and the key are checked against each other when the client is built, so a
    // certificate and key caught mid-rotation (one file new, one old) fail here.
    let http = builder
        .default_headers(headers)
        .build()
        .map_err(|err| Error::Setup(super::error_chain(&err)))?;
    Ok(Loaded {
        http,
        headers: extra,
        generation: 0,
        files: files.read,
    })
}

/// The CA bundle and client certificate of `--prometheus-ca-file` and
/// `--prometheus-client-tls-cert-file`/`--prometheus-client-tls-key-file`.
fn flag_tls(
    mut builder: reqwest::ClientBuilder,
    config: &ClientConfig,
    files: &mut Files,
) -> Result<reqwest::ClientBuilder> {
    if let Some(path) = &config.ca_file {
        builder = builder.tls_certs_only(ca_bundle(&files.read(path)?, path)?);
    }
    if let Some((cert, key)) = &config.client_cert {
        let mut pem = files.read(cert)?;
        pem.push(b'\n');
        pem.extend(files.read(key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|err| Error::Setup(format!("client certificate {}: {err}", cert.display())))?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// What the `--prometheus-auth-config` kubeconfig at `path` sets: CA, client certificate,
/// certificate checks, and an Authorization header that replaces the token file's.
fn kubeconfig_tls_and_auth(
    mut builder: reqwest::ClientBuilder,
    path: &Path,
    files: &mut Files,
    headers: &mut HeaderMap,
) -> Result<reqwest::ClientBuilder> {
    let auth = kubeconfig_auth(path, files)?;
    if let Some(ca) = auth.ca_pem {
        builder = builder.tls_certs_only(ca_bundle(&ca, path)?);
    }
    if let Some(pem) = auth.identity_pem {
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|err| Error::Setup(format!("client certificate in {}: {err}", path.display())))?;
        builder = builder.identity(identity);
    }
    if auth.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(mut value) = auth.authorization {
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(builder)
}

/// The `--prometheus-header` values with every value of a repeated name kept, in order:
/// prometheus-adapter adds each to an `http.Header` with `Add`, and Go writes one header line per
/// value. They go on each request rather than into reqwest's default headers, which keep only the
/// last value of a name. A name the client sets itself (`client_headers`: Accept-Encoding, and
/// Authorization when a credential sets it) keeps the client's value.
fn extra_headers(config: &ClientConfig, client_headers: &HeaderMap) -> Result<HeaderMap> {
    let mut extra = HeaderMap::new();
    for (key, value) in &config.headers {
        let name = HeaderName::try_from(key.as_str())
            .map_err(|err| Error::Setup(format!("header name {key:?}: {err}")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|err| Error::Setup(format!("header {key} value: {err}")))?;
        if !client_headers.contains_key(&name) {
            extra.append(name, value);
        }
    }
    Ok(extra)
}

/// `Authorization: Bearer <token>`; an empty file (a rotation caught mid-write) does not load.
fn bearer(token: &[u8], path: &Path) -> Result<HeaderValue> {
    let token = String::from_utf8_lossy(token);
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Setup(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|err| Error::Setup(format!("token in {}: {err}", path.display())))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The certificates of a PEM bundle; a bundle without one (empty, or cut mid-write) does not load.
fn ca_bundle(pem: &[u8], path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|err| Error::Setup(format!("CA bundle {}: {err}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Setup(format!(
            "CA bundle {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ClientConfig {
        ClientConfig {
            token_file: Some(dir.join("token")),
            ..ClientConfig::plain("http://127.0.0.1:9", Duration::from_secs(1))
        }
    }

    #[tokio::test]
    async fn token_changes_are_loaded_and_broken_files_keep_the_old_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "one\n").unwrap();
        let credentials = Credentials::new(&config(dir.path())).unwrap();
        assert!(credentials.come_from_files());
        let first = credentials.current().await;
        assert_eq!(first.generation, 0);
        // Unchanged files: a refusal finds nothing newer.
        assert!(credentials.reload_after_refusal(0).await.is_none());
        // Mid-write (empty): kept.
        std::fs::write(dir.path().join("token"), "").unwrap();
        assert!(credentials.reload_after_refusal(0).await.is_none());
        std::fs::write(dir.path().join("token"), "two").unwrap();
        let reloaded = credentials.reload_after_refusal(0).await.unwrap();
        assert_eq!(reloaded.generation, 1);
        // Another request that used generation 0 sees the newer one without reading again.
        assert_eq!(credentials.reload_after_refusal(0).await.unwrap().generation, 1);
    }

    #[tokio::test]
    async fn a_kubeconfig_and_the_token_file_it_names_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (kubeconfig, token) = (dir.path().join("kubeconfig"), dir.path().join("token"));
        std::fs::write(&token, "one").unwrap();
        std::fs::write(
            &kubeconfig,
            format!(
                "current-context: p\ncontexts:\n- name: p\n  context: {{cluster: c, user: u}}\nclusters:\n- name: c\n  cluster: {{}}\nusers:\n- name: u\n  user: {{token-file: {}}}\n",
                token.display()
            ),
        )
        .unwrap();
        let config = ClientConfig {
            auth_config: Some(kubeconfig.clone()),
            ..ClientConfig::plain("http://127.0.0.1:9", Duration::from_secs(1))
        };
        let credentials = Credentials::new(&config).unwrap();
        assert!(credentials.come_from_files());
        std::fs::write(&token, "two").unwrap();
        assert_eq!(credentials.reload_after_refusal(0).await.unwrap().generation, 1);
        // A kubeconfig cut mid-write keeps the previous credentials.
        std::fs::write(&kubeconfig, "current-context: p\ncontexts: [").unwrap();
        assert!(credentials.reload_after_refusal(1).await.is_none());
    }

    #[tokio::test]
    async fn changed_files_are_found_by_the_periodic_check() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "one").unwrap();
        let mut credentials = Credentials::new(&config(dir.path())).unwrap();
        std::fs::write(dir.path().join("token"), "two").unwrap();
        // Within the interval the files are not read.
        assert_eq!(credentials.current().await.generation, 0);
        credentials.started -= CHECK_INTERVAL * 2;
        assert_eq!(credentials.current().await.generation, 1);
        // Checked just now: the next request does not read again.
        std::fs::write(dir.path().join("token"), "three").unwrap();
        assert_eq!(credentials.current().await.generation, 1);
    }

    #[test]
    fn without_files_nothing_reloads() {
        let credentials = Credentials::new(&ClientConfig::plain("http://x", Duration::from_secs(1))).unwrap();
        assert!(!credentials.come_from_files());
    }

    #[test]
    fn empty_token_and_ca_files_do_not_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), " \n").unwrap();
        assert!(Credentials::new(&config(dir.path())).is_err());
        std::fs::write(dir.path().join("ca.crt"), "").unwrap();
        let ca = ClientConfig {
            ca_file: Some(dir.path().join("ca.crt")),
            ..ClientConfig::plain("https://x", Duration::from_secs(1))
        };
        assert!(Credentials::new(&ca).is_err());
    }
}
