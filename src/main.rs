//! The `custom-metrics-adapter` binary: flags, logging, crypto provider, run.
#![forbid(unsafe_code)]

use clap::Parser;
use custom_metrics_adapter::{
    check,
    config::{self, Args},
    telemetry,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (argv, ignored) = config::split_ignored_flags(std::env::args_os());
    let args = Args::parse_from(argv);
    telemetry::init(args.log_format, args.v);
    for flag in ignored {
        tracing::warn!(%flag, "Accepted for compatibility with prometheus-adapter; it has no effect here");
    }
    // One process-wide provider, so no crate's feature flags can pick a different one at run time.
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    if let Some(config::Command::CheckConfig {
        config,
        prometheus_url,
        namespace,
    }) = &args.command
    {
        let report = check::check_config(config, prometheus_url.as_deref(), namespace).await;
        return report
            .map(|text| print!("{text}"))
            .map_err(|err| anyhow::anyhow!("{err:#}"));
    }
    if let Err(err) = custom_metrics_adapter::run(args, shutdown_signal()).await {
        tracing::error!(error = %err, "Exiting");
        return Err(err);
    }
    Ok(())
}

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "Cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
