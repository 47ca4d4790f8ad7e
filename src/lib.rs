//! custom-metrics-adapter: a Kubernetes custom metrics API server backed by Prometheus.
//!
//! The modules form a one-way graph (README, "Development"): `main` → [`app`] (wiring, from the
//! [`config`]) → [`server`] (TLS, connections), `api` (routes, wire types, Status errors), `auth`
//! (delegated authentication and authorization); `api` → `pipeline` (a request's steps) →
//! [`rules`] (naming, PromQL), [`objects`] (what exists), [`backend`] (Prometheus, or in memory),
//! [`quantity`], [`selector`]. Nothing below imports anything above.
#![forbid(unsafe_code)]

mod api;
pub mod app;
mod auth;
pub mod backend;
pub mod check;
mod cluster;
pub mod config;
mod duration;
#[doc(hidden)]
pub mod fuzz;
mod health;
pub mod objects;
mod periodic;
mod pipeline;
pub mod quantity;
pub mod rules;
pub mod selector;
pub mod server;
pub mod telemetry;

pub use app::run;
