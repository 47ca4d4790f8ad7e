//! Log setup: `tracing` with structured fields, as text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The target of the per-request access log lines (method, path, query, status, latency). They
/// are logged at debug, so a busy adapter writes no line per request by default; `--v=4` (or
/// `RUST_LOG=custom_metrics_adapter::access=debug`) turns them on alone, `--v=5` with all debug.
pub const ACCESS_TARGET: &str = "custom_metrics_adapter::access";

/// Installs the global subscriber. The level comes from `RUST_LOG`, else from klog's `--v`.
pub fn init(format: LogFormat, verbosity: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter(verbosity));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The filter used without `RUST_LOG`: klog's `--v` mapped to a level (0-4 info, 5-7 debug, 8+
/// trace), with the access log from `--v=4` on.
fn default_filter(verbosity: u8) -> EnvFilter {
    let level = match verbosity {
        0..=4 => "info",
        5..=7 => "debug",
        _ => "trace",
    };
    // rustls warns once per connection about what clients send (an IP address as TLS server
    // name, which Go's and OpenSSL's clients do), so quiet it; the server logs failed handshakes
    // itself, at debug as kube-apiserver does.
    let mut directives = format!("{level},rustls=error");
    if verbosity == 4 {
        directives.push_str(&format!(",{ACCESS_TARGET}=debug"));
    }
    EnvFilter::new(directives)
}

/// The adapter's own metrics, served on `/metrics`.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    /// 1 when the last configuration reload succeeded (or none was needed), 0 after a bad file.
    pub config_last_reload_successful: prometheus_client::metrics::gauge::Gauge,
    /// Configuration reloads, by result (`success`, `failure`).
    pub config_reloads: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Series relists that failed for at least one series query.
    pub relist_failures: prometheus_client::metrics::counter::Counter,
    /// Discovered (resource, metric) pairs and external metrics.
    pub discovered_metrics: prometheus_client::metrics::gauge::Gauge,
    /// 1 when a readiness check passes, by check name (as `/readyz?verbose` lists them).
    ready_checks: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
    /// 1 per resource the adapter may not list and watch (RBAC), by `resource` (`jobs.batch`).
    pub resource_forbidden: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
    /// Instant queries answered from the result cache (`--query-cache-ttl`).
    pub query_cache_hits: prometheus_client::metrics::counter::Counter,
    /// Instant queries that made a backend call.
    pub query_cache_misses: prometheus_client::metrics::counter::Counter,
    /// Instant queries that shared a backend call already in flight for the same query.
    pub query_cache_coalesced: prometheus_client::metrics::counter::Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("custom_metrics_adapter");
        let metrics = Self {
            registry: Default::default(),
            config_last_reload_successful: Default::default(),
            config_reloads: Default::default(),
            relist_failures: Default::default(),
            discovered_metrics: Default::default(),
            ready_checks: Default::default(),
            resource_forbidden: Default::default(),
            query_cache_hits: Default::default(),
            query_cache_misses: Default::default(),
            query_cache_coalesced: Default::default(),
        };
        metrics.config_last_reload_successful.set(1);
        registry.register(
            "config_last_reload_successful",
            "Whether the last reload of --config succeeded",
            metrics.config_last_reload_successful.clone(),
        );
        registry.register(
            "config_reloads",
            "Reloads of --config by result",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "relist_failures",
            "Series relists with a failed series query",
            metrics.relist_failures.clone(),
        );
        registry.register(
            "discovered_metrics",
            "Discovered metrics",
            metrics.discovered_metrics.clone(),
        );
        registry.register(
            "ready_check",
            "Whether a readiness check passes (1) or fails (0), by check",
            metrics.ready_checks.clone(),
        );
        registry.register(
            "resource_forbidden",
            "Resources the adapter may not list and watch, so serves no metrics of (1 each)",
            metrics.resource_forbidden.clone(),
        );
        registry.register(
            "query_cache_hits",
            "Instant queries answered from the result cache (--query-cache-ttl)",
            metrics.query_cache_hits.clone(),
        );
        registry.register(
            "query_cache_misses",
            "Instant queries that made a backend call",
            metrics.query_cache_misses.clone(),
        );
        registry.register(
            "query_cache_coalesced",
            "Instant queries that shared a backend call in flight for the same query",
            metrics.query_cache_coalesced.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %err, "Encoding metrics failed");
        }
        text
    }

    pub fn set_check(&self, check: &str, passing: bool) {
        self.ready_checks
            .get_or_create(&vec![("check".to_owned(), check.to_owned())])
            .set(i64::from(passing));
    }

    /// Replaces the forbidden resources: a resource that became allowed disappears.
    pub fn set_forbidden(&self, resources: &[String]) {
        self.resource_forbidden.clear();
        for resource in resources {
            self.resource_forbidden
                .get_or_create(&vec![("resource".to_owned(), resource.clone())])
                .set(1);
        }
    }

    pub fn count_reload(&self, result: &str) {
        self.config_reloads
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines written at `verbosity` for one access line, one other debug line and one info line.
    fn logged_at(verbosity: u8) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = fmt()
            .with_env_filter(default_filter(verbosity))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: ACCESS_TARGET, path = "/apis", "HTTP");
            tracing::debug!("a debug line");
            tracing::info!("an info line");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_access_log_is_off_by_default_and_on_from_v4() {
        for verbosity in 0..=3 {
            let text = logged_at(verbosity);
            assert!(text.contains("an info line"), "--v={verbosity}: {text}");
            assert!(!text.contains("HTTP"), "--v={verbosity} logs requests: {text}");
        }
        let text = logged_at(4);
        assert!(
            text.contains("HTTP") && text.contains("path=\"/apis\""),
            "--v=4: {text}"
        );
        assert!(!text.contains("a debug line"), "--v=4 logs all of debug: {text}");
        for verbosity in [5, 8] {
            let text = logged_at(verbosity);
            assert!(
                text.contains("HTTP") && text.contains("a debug line"),
                "--v={verbosity}: {text}"
            );
        }
    }
}
