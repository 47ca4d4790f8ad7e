//! Reading and checking the adapter's answers: lists, Statuses, quantities, golden files.

use std::{path::PathBuf, time::SystemTime};

use serde_json::Value;

use super::TOLERANCE;

/// Parses a Kubernetes quantity string into a float, for comparing with true rates.
pub fn quantity(s: &str) -> f64 {
    custom_metrics_adapter::quantity::parse_milli(s).expect("quantity") as f64 / 1000.0
}

pub fn assert_close(actual: f64, expected: f64, what: &str) {
    let error = (actual - expected).abs() / expected;
    // Visible with --nocapture: the measured error, for the record.
    println!(
        "{what}: served {actual}, true {expected}, error {:.4} %",
        error * 100.0
    );
    assert!(
        error <= TOLERANCE,
        "{what}: got {actual}, true value {expected} (off by {:.2} %)",
        error * 100.0
    );
}

/// Replaces what changes between runs (sample values, timestamps, ports) so shapes can be pinned.
pub fn normalize(body: &str) -> String {
    let body = regex::Regex::new(r#""(timestamp|creationTimestamp)":"[^"]+""#)
        .unwrap()
        .replace_all(body, r#""$1":"<timestamp>""#);
    let body = regex::Regex::new(r#""(value|cpu)":"[^"]+""#)
        .unwrap()
        .replace_all(&body, r#""$1":"<quantity>""#);
    let body = regex::Regex::new(r"127\.0\.0\.1:\d+")
        .unwrap()
        .replace_all(&body, "127.0.0.1:<port>");
    body.into_owned()
}

/// Compares `body` (normalised) with `tests/it/golden/<name>.json`; `UPDATE_GOLDEN=1` rewrites it.
pub fn assert_golden(name: &str, body: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/golden")
        .join(format!("{name}.json"));
    let actual = normalize(body);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(actual, expected, "response differs from {}", path.display());
}

/// The seconds since the epoch now, for timestamp checks.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The items of a list answer (a MetricValueList, ExternalMetricValueList, PodMetricsList...).
pub fn items(body: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(body).expect("JSON body");
    list["items"].as_array().expect("items array").clone()
}

/// The described objects' names of a MetricValueList; none when the body is not one.
pub fn item_names(body: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(body).unwrap_or_default();
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|i| i["describedObject"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// The message of a Status answer; "" when the body is not one.
pub fn message(body: &str) -> String {
    let status: Value = serde_json::from_str(body).unwrap_or_default();
    status["message"].as_str().unwrap_or_default().to_owned()
}
