//! Test fixtures: a real Prometheus scraping an exporter whose counters grow at known rates,
//! adapters served over real TLS on 127.0.0.1:0, HTTPS clients, a test PKI, and readers of the
//! adapter's answers. Test files `use crate::support::*`.

mod adapter;
mod answers;
mod http;
mod pki;
mod process;
mod seed;

pub use self::{adapter::*, answers::*, http::*, pki::*, process::*, seed::*};
