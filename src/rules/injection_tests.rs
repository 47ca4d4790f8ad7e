//! Property: whatever a caller puts in the path (namespace, object names) or in a
//! `metricLabelSelector`, the rendered PromQL parses and matches no series outside the requested
//! namespace and objects. The query is parsed by an independent PromQL parser (promql-parser) and
//! its label matchers are evaluated with Prometheus' semantics (anchored regexes) against series of
//! the requested objects and of their neighbours.

use std::collections::BTreeMap;

use promql_parser::parser::{self, Expr};
use proptest::prelude::*;

use super::{CompiledRule, QueryRequest, default_rules};
use crate::{objects::Resources, selector::Selector};

/// Every vector selector of `expr`, with its matchers.
fn selectors(expr: &Expr, out: &mut Vec<promql_parser::label::Matchers>) {
    match expr {
        Expr::VectorSelector(vs) => out.push(vs.matchers.clone()),
        Expr::MatrixSelector(ms) => out.push(ms.vs.matchers.clone()),
        Expr::Aggregate(agg) => selectors(&agg.expr, out),
        Expr::Call(call) => call.args.args.iter().for_each(|a| selectors(a, out)),
        Expr::Paren(paren) => selectors(&paren.expr, out),
        Expr::Subquery(sub) => selectors(&sub.expr, out),
        Expr::Unary(unary) => selectors(&unary.expr, out),
        Expr::Binary(binary) => {
            selectors(&binary.lhs, out);
            selectors(&binary.rhs, out);
        }
        _ => {}
    }
}

fn matches(matchers: &promql_parser::label::Matchers, labels: &BTreeMap<String, String>) -> bool {
    let value = |name: &str| labels.get(name).map(String::as_str).unwrap_or("");
    let all = |set: &[promql_parser::label::Matcher]| set.iter().all(|m| m.is_match(value(&m.name)));
    all(&matchers.matchers) || matchers.or_matchers.iter().any(|set| all(set))
}

/// A series' labels; in Prometheus an empty value is the same as no label.
fn series(name: &str, namespace: &str, pod: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let named = [("__name__", name), ("namespace", namespace), ("pod", pod)];
    named
        .iter()
        .chain(extra)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Strings with everything PromQL and regexes treat specially, and plain ones.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        r#"[a-z\\"'`{}()\[\]|.*+?^$,=~!\n\t #/]{1,12}"#,
        any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
    ]
}

/// A `metricLabelSelector` in Kubernetes syntax, over label values the parser accepts. Values are
/// not empty: `code=` requires an empty label in Kubernetes, which Prometheus cannot tell from no
/// label, so the two semantics differ there by design, not by injection.
fn metric_selector() -> impl Strategy<Value = String> {
    let key = prop_oneof![Just("code"), Just("namespace"), Just("pod"), Just("verb")];
    let value = "[A-Za-z0-9._-]{1,6}";
    let requirement =
        (key, prop::collection::vec(value, 1..3), 0..5usize).prop_map(|(key, values, op)| match op {
            0 => format!("{key}={}", values[0]),
            1 => format!("{key}!={}", values[0]),
            2 => format!("{key} in ({})", values.join(",")),
            3 => format!("{key} notin ({})", values.join(",")),
            _ => format!("!{key}"),
        });
    prop::collection::vec(requirement, 0..3).prop_map(|r| r.join(","))
}

fn rate_rule() -> &'static CompiledRule {
    static RULE: std::sync::LazyLock<CompiledRule> = std::sync::LazyLock::new(|| {
        default_rules("2m")
            .expect("default rules")
            .into_iter()
            .nth(4)
            .expect("the rate rule")
    });
    &RULE
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_path_or_selector_value_widens_a_query(
        namespace in hostile(),
        names in prop::collection::vec(hostile(), 1..4),
        selector in metric_selector(),
    ) {
        let Ok(metric_selector) = Selector::parse(&selector) else { return Ok(()) };
        let resources = Resources::default();
        let pods = resources.resolve("pods").expect("pods");
        let request = QueryRequest {
            resource: pods,
            namespace: Some(&namespace),
            names: Some(&names),
            metric_selector: &metric_selector,
        };
        let query = rate_rule().query("http_requests_total", request, &resources)
            .expect("a query for any path values");
        let expr = parser::parse(&query.promql)
            .map_err(|err| TestCaseError::fail(format!("{err}: {}", query.promql)))?;
        let mut found = Vec::new();
        selectors(&expr, &mut found);
        prop_assert_eq!(found.len(), 1, "{}", &query.promql);

        let mut neighbours = vec!["victim".to_owned(), format!("{namespace}x"), String::new()];
        neighbours.extend(names.iter().map(|n| format!("{n}\n")));
        let mut pods_tried = names.clone();
        pods_tried.extend(["victim-pod".to_owned(), format!("{}x", names[0]), String::new()]);
        for ns in neighbours.iter().chain([&namespace]) {
            for pod in &pods_tried {
                for code in ["200", "500", ""] {
                    let labels = series("http_requests_total", ns, pod, &[("code", code), ("verb", "GET")]);
                    if matches(&found[0], &labels) {
                        prop_assert!(ns == &namespace && names.contains(pod),
                            "{} matches namespace {ns:?} pod {pod:?}", &query.promql);
                        prop_assert!(metric_selector.matches(&labels),
                            "{} matches labels the selector excludes: {labels:?}", &query.promql);
                    }
                }
            }
        }
        // The requested objects themselves are found when the selector admits them.
        let own = series("http_requests_total", &namespace, &names[0], &[("code", "200"), ("verb", "GET")]);
        if metric_selector.matches(&own) {
            prop_assert!(matches(&found[0], &own), "{} misses its own object", &query.promql);
        }
    }
}
