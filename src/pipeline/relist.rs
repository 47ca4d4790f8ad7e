//! Metric discovery: listing the backend's series for every rule and keeping the snapshot the
//! requests read, on a timer, after failures sooner, and when the cluster's resources change.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use super::Pipeline;
use crate::{backend, health::Readiness, rules};

/// After a failed relist the next one starts this soon, doubling up to the relist interval.
const RELIST_RETRY_MIN: Duration = Duration::from_secs(1);

impl Pipeline {
    pub fn relist_readiness(&self) -> Readiness {
        let error = self.relist_error.lock().ok().and_then(|e| e.clone());
        match (self.relisted.load(Ordering::Acquire), error) {
            (true, None) => Readiness::Ready,
            (true, Some(error)) => Readiness::Degraded(format!(
                "the latest series relist failed ({error}); serving the metrics of the previous one"
            )),
            (false, Some(error)) => {
                Readiness::NotReady(format!("no series relist has succeeded yet: {error}"))
            }
            (false, None) => Readiness::NotReady("the first series relist is under way".into()),
        }
    }

    fn record_relist(&self, result: &Result<usize, backend::Error>) {
        let error = match result {
            Ok(_) => {
                self.relisted.store(true, Ordering::Release);
                None
            }
            Err(err) => Some(err.summary().to_owned()),
        };
        if let Ok(mut slot) = self.relist_error.lock() {
            *slot = error;
        }
    }

    /// Lists series for every distinct `seriesQuery` and swaps in a new discovery snapshot.
    /// A query that fails keeps its rules' metrics from the previous snapshot, so one broken query
    /// does not hide every metric; when every query fails the previous snapshot stays whole.
    pub async fn relist(&self) -> Result<usize, backend::Error> {
        let end = SystemTime::now();
        let start = end.checked_sub(self.max_age).unwrap_or(SystemTime::UNIX_EPOCH);
        let rules = self.rules.load_full();
        let resources = self.resources.load_full();
        let mut builder = rules::discovery::Builder::new(&resources);
        let (mut listed, mut last_error) = (0, None);
        for query in rules.series_queries() {
            match self.backend.series(&query.query, start, end).await {
                Ok(series) => {
                    builder.add(&query, &series.shapes);
                    listed += 1;
                }
                Err(err) => {
                    self.metrics.relist_failures.inc();
                    tracing::warn!(series_query = query.query, error = %err, "Listing series failed; keeping this query's metrics");
                    builder.failed(&query);
                    last_error = Some(err);
                }
            }
        }
        if let Some(err) = last_error
            && listed == 0
        {
            return Err(err);
        }
        let previous = self.discovery.load_full();
        let discovery = builder.finish(&previous, end);
        // One line per rule whose outcome changed: what it saw, named and associated.
        for (rule, summary) in &discovery.summaries {
            if previous.summaries.get(rule) != Some(summary) {
                tracing::info!(
                    rule = format!("rules[{rule}]"),
                    series_shapes = summary.series,
                    named = summary.named,
                    metrics = summary.metrics.len(),
                    resources = ?summary.resources,
                    unmapped_labels = ?summary.unmapped_labels,
                    "Rule discovery changed (labels that name no known resource are not associated)"
                );
            }
        }
        let count = discovery.len();
        self.metrics.discovered_metrics.set(count as i64);
        self.discovery.store(Arc::new(discovery));
        if previous.len() != count {
            tracing::info!(
                metrics = count,
                previous = previous.len(),
                "Discovered metrics changed"
            );
        }
        Ok(count)
    }

    /// Relists now and then every `interval` until `shutdown` resolves; after a failure sooner,
    /// from [`RELIST_RETRY_MIN`] doubling up to `interval`; and at once when API discovery changes
    /// the resource table, so series labels are associated with resources learnt since.
    pub async fn relist_loop(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut resources_changed = self.resources.subscribe();
        let mut retry = RELIST_RETRY_MIN;
        loop {
            let result = self.relist().await;
            let wait = match &result {
                Ok(count) => {
                    tracing::debug!(metrics = count, "Relisted series");
                    retry = RELIST_RETRY_MIN;
                    interval
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?retry, "Relisting series failed; keeping the previous metric list");
                    let wait = retry.min(interval);
                    retry = (retry * 2).min(interval);
                    wait
                }
            };
            self.record_relist(&result);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
                Ok(()) = resources_changed.changed() => {}
            }
        }
    }
}
