//! The serving certificate: from files (reloaded when they change) or self-signed and kept in
//! `--cert-dir`, so a restart serves the same certificate.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("cannot parse PEM in {path}: {message}")]
    Pem { path: String, message: String },
    #[error("the certificate and key do not form a usable TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// File name of the self-signed certificate in `--cert-dir` (prometheus-adapter's name).
pub const SELF_SIGNED_CERT: &str = "apiserver.crt";
pub const SELF_SIGNED_KEY: &str = "apiserver.key";

type FileStamp = Option<(SystemTime, u64)>;

/// The current TLS server configuration, swappable while serving.
#[derive(Clone)]
pub struct TlsSource {
    config: Arc<ArcSwap<ServerConfig>>,
    http2: bool,
    files: Option<Arc<WatchedFiles>>,
}

/// Certificate and key files to watch for changes, with the state last loaded.
struct WatchedFiles {
    cert: PathBuf,
    key: PathBuf,
    last: Mutex<(FileStamp, FileStamp)>,
}

/// Which certificate the server presents, and whether it offers HTTP/2.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certificate: Certificate,
    pub http2: bool,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum Certificate {
    /// PEM files, reloaded when they change (`--tls-cert-file`, `--tls-private-key-file`).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate kept in `dir` (`--cert-dir`), generated when absent.
    SelfSigned { dir: PathBuf },
}

impl TlsSource {
    pub fn from_config(config: &TlsConfig) -> Result<Self> {
        match &config.certificate {
            Certificate::Files { cert, key } => Self::from_files(cert, key, config.http2),
            Certificate::SelfSigned { dir } => Self::self_signed(dir, config.http2),
        }
    }

    /// Serves the PEM files at `cert` and `key`, and reloads them when they change.
    pub fn from_files(cert: &Path, key: &Path, http2: bool) -> Result<Self> {
        let config = load_files(cert, key, http2)?;
        let stamps = (stamp(cert), stamp(key));
        Ok(Self {
            config: Arc::new(ArcSwap::from_pointee(config)),
            http2,
            files: Some(Arc::new(WatchedFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                last: Mutex::new(stamps),
            })),
        })
    }

    /// Serves PEM text held in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], http2: bool) -> Result<Self> {
        let config = server_config(cert_pem, key_pem, "memory", http2)?;
        Ok(Self {
            config: Arc::new(ArcSwap::from_pointee(config)),
            http2,
            files: None,
        })
    }

    /// Reuses `dir/apiserver.crt` and `dir/apiserver.key`, generating them first when absent.
    pub fn self_signed(dir: &Path, http2: bool) -> Result<Self> {
        let cert = dir.join(SELF_SIGNED_CERT);
        let key = dir.join(SELF_SIGNED_KEY);
        if !(cert.exists() && key.exists()) {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            let generated = rcgen::generate_simple_self_signed(names)?;
            std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.to_owned(),
                source,
            })?;
            write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
            std::fs::write(&cert, generated.cert.pem()).map_err(|source| Error::Write {
                path: cert.clone(),
                source,
            })?;
            tracing::info!(cert = %cert.display(), "Generated a self-signed serving certificate");
        }
        let config = load_files(&cert, &key, http2)?;
        Ok(Self {
            config: Arc::new(ArcSwap::from_pointee(config)),
            http2,
            files: None,
        })
    }

    pub fn http2(&self) -> bool {
        self.http2
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Reloads the certificate files if they changed; a broken pair keeps the previous certificate.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let WatchedFiles { cert, key, last } = files.as_ref();
        let now = (stamp(cert), stamp(key));
        let mut last = last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == now {
            return Ok(false);
        }
        let config = load_files(cert, key, self.http2)?;
        self.config.store(Arc::new(config));
        *last = now;
        tracing::info!(cert = %cert.display(), "Reloaded the serving certificate");
        Ok(true)
    }

    /// Checks the certificate files every `interval` until `shutdown` resolves.
    pub async fn reload_loop(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        if self.files.is_none() {
            return;
        }
        let mut ticker = crate::periodic::Ticker::new(interval, shutdown);
        while ticker.tick().await {
            if let Err(err) = self.reload_if_changed() {
                tracing::warn!(error = %err, "Keeping the previous serving certificate");
            }
        }
    }
}

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })?;
    file.write_all(contents).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

fn load_files(cert: &Path, key: &Path, http2: bool) -> Result<ServerConfig> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Read {
            path: p.to_owned(),
            source,
        })
    };
    server_config(&read(cert)?, &read(key)?, &cert.display().to_string(), http2)
}

fn server_config(cert_pem: &[u8], key_pem: &[u8], origin: &str, http2: bool) -> Result<ServerConfig> {
    let pem_error = |err: rustls_pki_types::pem::Error| Error::Pem {
        path: origin.into(),
        message: err.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(Error::NoCertificate { path: origin.into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem_error)?;
    // Server names (SNI) that are not DNS names. An IP address (OpenSSL's, Apple's and Go's
    // clients send one when given an IP) is treated by rustls as no server name, so it gets this
    // single certificate; its per-connection WARN is quieted by telemetry's `rustls=error`.
    // A name with a port (`host:6443`, which Go tools such as `hey` send) cannot be served with
    // rustls 0.23: `HostNamePayload::read` (rustls src/msgs/handshake.rs) parses it as
    // `ServerNamePayload::Invalid`, and `process_client_hello` (src/server/hs.rs) then sends a
    // fatal `illegal_parameter` alert (`PeerMisbehaved::ServerNameMustContainOneHostName`) before
    // any certificate resolver or `Acceptor` hook sees the hello, with no setting to relax it.
    // Stripping the extension from the hello before rustls reads it would not help either: both
    // Finished messages cover the hello as the client sent it. rustls 0.24 (only pre-releases on
    // crates.io so far) adds `ServerConfig::invalid_sni_policy` (`InvalidSniPolicy::IgnoreAll`,
    // rustls PR #2617); set it here when the crate moves to it.
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(DeferredClientCertVerifier::new()))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Asks for a client certificate and checks that the client holds its key, but leaves the chain to
/// the request's authenticator, as Go's `tls.RequestClientCert` does. That way the trusted CAs can
/// rotate without a new TLS configuration, and a certificate from an unknown CA makes its holder
/// anonymous instead of failing the handshake.
#[derive(Debug)]
struct DeferredClientCertVerifier {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl DeferredClientCertVerifier {
    fn new() -> Self {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl rustls::server::danger::ClientCertVerifier for DeferredClientCertVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install_provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    #[test]
    fn self_signed_is_reused_across_restarts() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        TlsSource::self_signed(dir.path(), true).unwrap();
        let first = std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap();
        TlsSource::self_signed(dir.path(), true).unwrap();
        assert_eq!(first, std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap());
    }

    #[test]
    fn files_reload_and_bad_files_keep_the_old_certificate() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        TlsSource::self_signed(dir.path(), true).unwrap();
        let (cert, key) = (
            dir.path().join(SELF_SIGNED_CERT),
            dir.path().join(SELF_SIGNED_KEY),
        );
        let source = TlsSource::from_files(&cert, &key, false).unwrap();
        assert!(!source.reload_if_changed().unwrap());
        std::fs::write(
            &cert,
            "not a certificate, and longer than before so the stamp changes for sure",
        )
        .unwrap();
        assert!(source.reload_if_changed().is_err());
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, other.cert.pem()).unwrap();
        std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
        assert!(source.reload_if_changed().unwrap());
    }
}
