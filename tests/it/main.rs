//! The one integration-test binary: a real Prometheus, real TLS, real curl and kubectl.

mod clients;
mod discovery;
mod errors;
mod serving;
mod support;
