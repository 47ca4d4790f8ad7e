//! Readiness: named conditions, how each stands, and their mirror on `/metrics`.

use std::sync::Arc;

use crate::telemetry::Metrics;

/// How one readiness condition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Ready, with something an operator should know (a skipped API group, a forbidden resource).
    Degraded(String),
    /// Not ready, and why.
    NotReady(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        !matches!(self, Readiness::NotReady(_))
    }
}

/// A named readiness condition for `/readyz`.
pub struct ReadyCheck {
    pub name: &'static str,
    pub check: Box<dyn Fn() -> Readiness + Send + Sync>,
}

impl ReadyCheck {
    pub fn new(name: &'static str, check: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        Self {
            name,
            check: Box::new(check),
        }
    }
}

/// Every readiness condition of the adapter, in the order `/readyz?verbose` lists them.
pub struct Health {
    checks: Vec<ReadyCheck>,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(checks: Vec<ReadyCheck>, metrics: Arc<Metrics>) -> Self {
        Self { checks, metrics }
    }

    /// Every condition and how it stands; also sets `custom_metrics_adapter_ready_check`.
    pub fn readiness(&self) -> Vec<(&'static str, Readiness)> {
        let checks: Vec<_> = self.checks.iter().map(|c| (c.name, (c.check)())).collect();
        for (name, readiness) in &checks {
            self.metrics.set_check(name, readiness.is_ready());
        }
        checks
    }
}
