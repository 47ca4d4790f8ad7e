//! The one integration-test binary: a real Prometheus, real TLS, real curl and kubectl, and a fake
//! Kubernetes API server for the real kube-rs client.

mod cache;
mod clients;
mod cluster;
mod config;
mod connections;
mod degraded;
mod discovery;
mod dropin;
mod errors;
mod external;
mod fake_kube;
mod hostile;
mod manifests;
mod resource;
mod serving;
mod support;
