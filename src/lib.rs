//! custom-metrics-adapter: a Kubernetes custom metrics API server backed by Prometheus.
//!
//! A request reads straight through the modules: [`server`] (TLS) → [`api`] (route, wire types,
//! Status errors) → [`rules`] (naming, PromQL) → [`objects`] / [`backend`] → [`quantity`] → JSON.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backend;
pub mod check;
pub mod cluster;
pub mod config;
pub mod duration;
#[doc(hidden)]
pub mod fuzz;
pub mod health;
pub mod objects;
pub mod periodic;
pub mod pipeline;
pub mod quantity;
pub mod rules;
pub mod selector;
pub mod server;
pub mod telemetry;

pub use app::run;
