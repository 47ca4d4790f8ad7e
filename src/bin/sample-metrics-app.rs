//! The seed scenario's sample app: counts the requests it serves and exports the count as the
//! Prometheus counter `http_requests_total`. `load` mode sends requests at a steady rate, so the
//! adapter has a rate to report.
//!
//! ```text
//! sample-metrics-app serve --listen 127.0.0.1:8080
//! sample-metrics-app load --target http://127.0.0.1:8080/ --rps 100
//! ```
#![forbid(unsafe_code)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Sample app exporting http_requests_total")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve `/` (counted) and `/metrics`.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Send GET requests to every target at a steady total rate.
    Load {
        #[arg(long, required = true)]
        target: Vec<String>,
        #[arg(long, default_value_t = 50.0)]
        rps: f64,
        /// Stop after this many seconds (0 = run until killed).
        #[arg(long, default_value_t = 0)]
        duration_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Serve { listen } => serve(listen).await,
        Mode::Load {
            target,
            rps,
            duration_secs,
        } => load(target, rps, duration_secs).await,
    }
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let served = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/",
            get(|State(n): State<Arc<AtomicU64>>| async move {
                n.fetch_add(1, Ordering::Relaxed);
                "hello\n"
            }),
        )
        .route("/metrics", get(metrics))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("sample-metrics-app serving on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn metrics(State(served): State<Arc<AtomicU64>>) -> impl IntoResponse {
    let body = format!(
        "# HELP http_requests_total Total HTTP requests served.\n# TYPE http_requests_total counter\nhttp_requests_total{{method=\"GET\",path=\"/\"}} {}\n",
        served.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn load(targets: Vec<String>, rps: f64, duration_secs: u64) -> anyhow::Result<()> {
    anyhow::ensure!(rps > 0.0 && rps.is_finite(), "--rps must be positive");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    let deadline =
        (duration_secs > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(duration_secs));
    for target in targets.iter().cycle() {
        ticker.tick().await;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let request = client.get(target).send();
        tokio::spawn(async move {
            let _ = request.await;
        });
    }
    Ok(())
}
