//! An external metric: not tied to a Kubernetes object, selected by its own labels.

use std::{collections::BTreeMap, time::SystemTime};

use super::{Error, Pipeline};
use crate::{
    quantity,
    rules::{self, Discovery, ExternalEntry},
    selector::Selector,
};

/// One series' value of an external metric.
#[derive(Debug, Clone)]
pub struct ExternalValue {
    pub labels: BTreeMap<String, String>,
    /// Seconds since the epoch, as the backend stamped the sample.
    pub timestamp: f64,
    /// A Kubernetes Quantity.
    pub value: String,
}

impl Pipeline {
    /// The values of the external `metric` in `namespace` whose series match `selector`, sorted
    /// by their labels.
    pub async fn external_metric(
        &self,
        namespace: &str,
        metric: &str,
        selector: &Selector,
    ) -> Result<Vec<ExternalValue>, Error> {
        let discovery = self.discovery();
        let entry = resolve(&discovery, metric)?;
        let resources = self.resources.load_full();
        let promql = entry
            .rule
            .external_query(&entry.series, namespace, selector, &resources)
            .map_err(|err| match err {
                rules::Error::Selector(err) => Error::BadRequest(format!("invalid labelSelector: {err}")),
                err => Error::Internal(err.to_string()),
            })?;
        tracing::debug!(%promql, "Querying the backend");
        let samples = self
            .backend
            .query(&promql, SystemTime::now())
            .await
            .map_err(Error::Backend)?;
        let mut items = Vec::with_capacity(samples.len());
        let mut skipped = Vec::new();
        for sample in samples {
            match quantity::from_f64(sample.value) {
                Ok(value) => items.push(ExternalValue {
                    labels: sample.labels.to_map(),
                    timestamp: sample.timestamp,
                    value,
                }),
                Err(err) => skipped.push(err.to_string()),
            }
        }
        if items.is_empty() {
            let detail = if skipped.is_empty() {
                format!(
                    "Prometheus returned no samples of {} in namespace {namespace:?}",
                    entry.series
                )
            } else {
                format!("the samples were not numbers ({})", skipped.join("; "))
            };
            return Err(not_found(metric, detail));
        }
        items.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(items)
    }
}

fn resolve<'d>(discovery: &'d Discovery, metric: &str) -> Result<&'d ExternalEntry, Error> {
    discovery.external(metric).ok_or_else(|| {
        let known: Vec<&str> = discovery.external_metrics().map(|(name, _)| name).collect();
        not_found(
            metric,
            format!(
                "no external rule names a series {metric:?}; external metrics: {}",
                known.join(", ")
            ),
        )
    })
}

fn not_found(metric: &str, detail: String) -> Error {
    Error::NotFound(format!(
        "the server could not find the metric {metric} for namespaces: {detail}"
    ))
}
