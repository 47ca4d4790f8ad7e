//! The `custom-metrics-adapter` binary: flags, logging, crypto provider, run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use custom_metrics_adapter::{
    check,
    config::{self, Args},
    telemetry,
};

/// jemalloc's background thread hands memory back to the kernel after a burst; glibc's malloc kept
/// most of it (measured in the README, "Security and limits").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let (argv, ignored) = config::split_ignored_flags(std::env::args_os());
    let args = Args::parse_from(argv);
    telemetry::init(args.log_format, args.v);
    for flag in ignored {
        tracing::warn!(%flag, "Accepted for compatibility with prometheus-adapter; it has no effect here");
    }
    // One process-wide provider, so no crate's feature flags can pick a different one at run time.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let checking = args.command.is_some();
    let result = match &args.command {
        Some(config::Command::CheckConfig {
            config,
            prometheus_url,
            namespace,
        }) => check::check_config(config, prometheus_url.as_deref(), namespace)
            .await
            .map(|report| print!("{report}")),
        None => match config::Config::from_args(&args) {
            Ok(config) => custom_metrics_adapter::run(config, shutdown_signal()).await,
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if checking => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "Exiting");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
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
