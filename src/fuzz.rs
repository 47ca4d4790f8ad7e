//! Entry points for the fuzz targets under `fuzz/` (`cargo fuzz run <target>`): each takes
//! arbitrary input, runs one parser the way a request or a config reload does, and panics only
//! when an invariant breaks. Not an API: hidden from the docs and free to change.

use axum::http::Method;

use crate::{
    api::{MetricPath, path},
    auth::Attributes,
    rules::{self, promql},
    selector::Selector,
};

/// A path after `/apis/<group>/<version>/`, as a client sends it (escapes and all): decoded once
/// as the path middleware does, the router's segments (its escaped form decoded again) must be the
/// authorizer's, and the router's parse and the authorizer's must agree on the namespace, or a
/// request could be authorized for one object and served for another.
pub fn route(raw: &str) {
    let Ok((decoded, escaped)) = path::canonical(&format!("/apis/custom.metrics.k8s.io/v1beta2/{raw}"))
    else {
        return;
    };
    assert_eq!(path::decode(&escaped).as_deref(), Ok(decoded.as_str()), "{raw:?}");
    let Some(served) = decoded.strip_prefix("/apis/custom.metrics.k8s.io/v1beta2/") else {
        return;
    };
    let Some(parsed) = MetricPath::parse(served) else {
        return;
    };
    let attributes = Attributes::from_request(&Method::GET, &decoded);
    assert!(
        attributes.resource_request,
        "{decoded}: served, but authorized as a non-resource path"
    );
    if let Some(namespace) = &parsed.namespace
        && !(parsed.resource == "metrics" && attributes.resource == "metrics")
    {
        assert_eq!(&attributes.namespace, namespace, "{decoded}");
    }
}

/// A `labelSelector`/`metricLabelSelector`: parsing, its printed form parsing back to the same
/// selector, the LabelSelector shape, and PromQL matchers that quote every value.
pub fn selectors(text: &str) {
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let printed = selector.to_string();
    let reparsed =
        Selector::parse(&printed).unwrap_or_else(|err| panic!("{text:?} printed as {printed:?}: {err}"));
    assert_eq!(reparsed, selector, "{text:?} printed as {printed:?}");
    let _ = selector.to_label_selector();
    for in_regex in [promql::InRegex::Escaped, promql::InRegex::Passthrough] {
        if let Ok(matchers) = promql::selector_matchers(&selector, in_regex) {
            for matcher in matchers {
                assert!(matcher.ends_with('"'), "unquoted value in {matcher}");
            }
        }
    }
}

/// A rules file, as `--config` and its reloads read it: parse, compile, lint.
pub fn rules_file(text: &str) {
    let Ok(config) = rules::config::parse(text, "fuzz.yaml") else {
        return;
    };
    let _ = rules::lint(&config.rule_set());
}

/// A Prometheus answer body, as the client decodes it while it streams.
pub fn prometheus_answer(body: &[u8]) {
    crate::backend::prometheus::fuzz_decode(body);
}
