//! Property: the label index changes no answer. For random objects (namespaces and labels from a
//! small alphabet, so selectors hit often) and random selectors of every operator, the indexed
//! `list` of the objects file and of the kube cache equals a linear scan with `Selector::matches`;
//! and a kube cache kept current event by event (apply, relabel, delete) holds the same index as
//! one built afresh from its final objects.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::{
    ObjectRef, ObjectSource, Resources, StaticObjects,
    kube::{ObjectMap, Slim, select},
};
use crate::selector::Selector;

const KEYS: [&str; 4] = ["a", "b", "c", "example.com/d"];
const VALUES: [&str; 5] = ["", "1", "2", "x", "y"];
const NAMESPACES: [&str; 3] = ["n1", "n2", "n3"];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(&KEYS[..]).prop_map(str::to_owned),
        prop::sample::select(&VALUES[..]).prop_map(str::to_owned),
        0..4,
    )
}

/// A namespace, sometimes none (a cluster-scoped object) when `cluster_scoped` allows it.
fn namespace(cluster_scoped: bool) -> impl Strategy<Value = Option<String>> {
    let named = prop::sample::select(&NAMESPACES[..]).prop_map(|n| Some(n.to_owned()));
    if cluster_scoped {
        prop_oneof![1 => Just(None), 3 => named].boxed()
    } else {
        named.boxed()
    }
}

fn object_ref(cluster_scoped: bool) -> impl Strategy<Value = ObjectRef> {
    (namespace(cluster_scoped), 0..12u8).prop_map(|(namespace, n)| ObjectRef {
        namespace,
        name: format!("o{n}"),
    })
}

/// One requirement in selector syntax, of any operator.
fn requirement() -> impl Strategy<Value = String> {
    let key = prop::sample::select(&KEYS[..]);
    let value = prop::sample::select(&VALUES[..]);
    let values = prop::collection::vec(value.clone(), 0..3).prop_map(|v| v.join(","));
    let number = prop::sample::select(&["0", "1", "2"][..]);
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(k, v)| format!("{k}={v}")),
        (key.clone(), value.clone()).prop_map(|(k, v)| format!("{k}=={v}")),
        (key.clone(), value).prop_map(|(k, v)| format!("{k}!={v}")),
        (key.clone(), values.clone()).prop_map(|(k, v)| format!("{k} in ({v})")),
        (key.clone(), values).prop_map(|(k, v)| format!("{k} notin ({v})")),
        key.clone().prop_map(str::to_owned),
        key.clone().prop_map(|k| format!("!{k}")),
        (key.clone(), number.clone()).prop_map(|(k, v)| format!("{k}>{v}")),
        (key, number).prop_map(|(k, v)| format!("{k}<{v}")),
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    prop::collection::vec(requirement(), 0..4).prop_map(|parts| {
        let text = parts.join(",");
        Selector::parse(&text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
    })
}

/// Where a query looks: one namespace (sometimes one without objects) or all.
fn scope() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(&["n1", "n2", "n3", "empty"][..]).prop_map(|n| Some(n.to_owned())),
    ]
}

/// The answer of a linear scan, as `list` gave it before the index.
fn scan<'a>(
    objects: impl Iterator<Item = (&'a ObjectRef, &'a BTreeMap<String, String>)>,
    namespace: Option<&str>,
    selector: &Selector,
) -> Vec<ObjectRef> {
    let mut refs: Vec<ObjectRef> = objects
        .filter(|(key, labels)| {
            (namespace.is_none() || key.namespace.as_deref() == namespace) && selector.matches(labels)
        })
        .map(|(key, _)| key.clone())
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

#[derive(Debug, Clone)]
enum Event {
    Apply(ObjectRef, BTreeMap<String, String>, bool),
    Delete(ObjectRef),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (object_ref(true), labels(), prop::bool::weighted(0.2))
            .prop_map(|(key, labels, deleting)| Event::Apply(key, labels, deleting)),
        1 => object_ref(true).prop_map(Event::Delete),
    ]
}

fn slim(labels: &BTreeMap<String, String>, deleting: bool) -> Slim {
    Slim {
        labels: labels.clone(),
        deleting,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn objects_file_list_equals_a_linear_scan(
        pods in prop::collection::vec((object_ref(false), labels()), 0..40),
        nodes in prop::collection::vec((object_ref(true), labels()), 0..10),
        queries in prop::collection::vec((scope(), selector()), 1..8),
    ) {
        let entry = |(key, labels): &(ObjectRef, BTreeMap<String, String>)| {
            serde_json::json!({"namespace": key.namespace, "name": key.name, "labels": labels})
        };
        let nodes: Vec<(ObjectRef, BTreeMap<String, String>)> = nodes
            .into_iter()
            .map(|(key, labels)| (ObjectRef { namespace: None, ..key }, labels))
            .collect();
        let file = serde_json::json!({
            "pods": pods.iter().map(entry).collect::<Vec<_>>(),
            "nodes": nodes.iter().map(|(key, labels)| serde_json::json!({"name": key.name, "labels": labels})).collect::<Vec<_>>(),
        });
        let objects = StaticObjects::parse(&file.to_string(), "generated.json").unwrap();
        let resources = Resources::default();
        for (resource, listed) in [("pods", &pods), ("nodes", &nodes)] {
            let resource = resources.resolve(resource).unwrap();
            for (namespace, selector) in &queries {
                let namespace = namespace.as_deref();
                let want = scan(listed.iter().map(|(k, l)| (k, l)), namespace, selector);
                prop_assert_eq!(objects.list(resource, namespace, selector).unwrap(), want, "{} in {:?}", selector, namespace);
            }
            for (key, _) in listed.iter().take(5) {
                for namespace in [None, key.namespace.as_deref(), Some("n1")] {
                    let want = listed.iter().any(|(k, _)| k.name == key.name && (namespace.is_none() || k.namespace.as_deref() == namespace));
                    prop_assert_eq!(objects.exists(resource, namespace, &key.name).unwrap(), want);
                }
            }
        }
    }

    #[test]
    fn kube_cache_events_keep_the_index_equal_to_a_rebuild_and_a_scan(
        events in prop::collection::vec(event(), 0..80),
        queries in prop::collection::vec((scope(), selector()), 1..8),
    ) {
        let mut incremental = ObjectMap::default();
        let mut reference: HashMap<ObjectRef, (BTreeMap<String, String>, bool)> = HashMap::new();
        for event in events {
            match event {
                Event::Apply(key, labels, deleting) => {
                    incremental.insert(key.clone(), slim(&labels, deleting));
                    reference.insert(key, (labels, deleting));
                }
                Event::Delete(key) => {
                    incremental.remove(&key);
                    reference.remove(&key);
                }
            }
        }
        let mut rebuilt = ObjectMap::default();
        for (key, (labels, deleting)) in &reference {
            rebuilt.insert(key.clone(), slim(labels, *deleting));
        }
        prop_assert_eq!(incremental.index_entries(), rebuilt.index_entries());
        for (namespace, selector) in &queries {
            let namespace = namespace.as_deref();
            let live = reference.iter().filter(|(_, (_, deleting))| !deleting).map(|(k, (l, _))| (k, l));
            let want = scan(live, namespace, selector);
            prop_assert_eq!(&select(&incremental, namespace, selector), &want, "{} in {:?}", selector, namespace);
            prop_assert_eq!(&select(&rebuilt, namespace, selector), &want);
        }
        for (key, (_, deleting)) in &reference {
            prop_assert_eq!(incremental.get(key).map(|slim| slim.deleting), Some(*deleting));
        }
    }
}

/// The point of the index: a selective selector looks at the objects it can match, not at all
/// 100,000 of one namespace.
#[test]
fn a_selective_selector_checks_only_its_candidates() {
    let mut objects = ObjectMap::default();
    for n in 0..100_000u32 {
        let app = if n % 10_000 == 0 { "rare" } else { "common" };
        let labels = BTreeMap::from([
            ("app".to_owned(), app.to_owned()),
            ("n".to_owned(), n.to_string()),
        ]);
        let key = ObjectRef {
            namespace: Some("big".into()),
            name: format!("pod-{n}"),
        };
        objects.insert(key, slim(&labels, false));
    }
    let rare = Selector::parse("app=rare,n!=0").unwrap();
    assert_eq!(objects.candidates_checked(Some("big"), &rare), 10);
    assert_eq!(select(&objects, Some("big"), &rare).len(), 9);
    let one = Selector::parse("app in (common,rare),n=77").unwrap();
    assert_eq!(objects.candidates_checked(None, &one), 1);
    let none = Selector::parse("app=missing").unwrap();
    assert_eq!(objects.candidates_checked(Some("big"), &none), 0);
    assert_eq!(
        objects.candidates_checked(Some("elsewhere"), &Selector::default()),
        0
    );
    // Nothing to narrow by: every object is looked at.
    let negative = Selector::parse("app!=rare").unwrap();
    assert_eq!(objects.candidates_checked(None, &negative), 100_000);
}
