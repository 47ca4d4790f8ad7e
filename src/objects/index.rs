//! An index of objects by namespace and by label `key=value`, so a `labelSelector` costs in
//! proportion to the objects it can match rather than to every object known.
//!
//! Objects are numbered by their store (a position in a `Vec` or an `IndexMap`); the index keeps,
//! per namespace and per label pair, the set of numbers that carry it. A query takes the smallest
//! of the candidate sets that the namespace and the selector's `=`, `==` and `in` requirements
//! allow, and the store checks the whole selector on those candidates only. `!=`, `notin`,
//! existence and `>`/`<` requirements narrow nothing (an object without the key matches the first
//! two), so a selector of only those falls back to the namespace's objects, or to every object.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Range,
};

use crate::selector::{Operator, Selector};

/// An object's number in its store.
pub(super) type Id = u32;

/// Which objects carry each namespace and each label pair.
#[derive(Debug, Default, Clone)]
pub(super) struct LabelIndex {
    by_namespace: HashMap<String, HashSet<Id>>,
    /// Label key → label value → objects; nested so that a lookup borrows the selector's strings.
    by_label: HashMap<String, HashMap<String, HashSet<Id>>>,
}

/// The objects a query has to look at: every one, or the union of a few disjoint sets.
pub(super) enum Candidates<'a> {
    All(Range<Id>),
    Sets(Vec<&'a HashSet<Id>>),
}

impl Candidates<'_> {
    pub(super) fn ids(self) -> impl Iterator<Item = Id> {
        let (all, sets) = match self {
            Self::All(range) => (Some(range), Vec::new()),
            Self::Sets(sets) => (None, sets),
        };
        all.into_iter()
            .flatten()
            .chain(sets.into_iter().flat_map(|set| set.iter().copied()))
    }
}

impl LabelIndex {
    /// Records object `id` under its namespace (cluster-scoped objects have none) and labels.
    pub(super) fn insert(&mut self, id: Id, namespace: Option<&str>, labels: &BTreeMap<String, String>) {
        if let Some(namespace) = namespace {
            self.by_namespace
                .entry(namespace.to_owned())
                .or_default()
                .insert(id);
        }
        for (key, value) in labels {
            self.by_label
                .entry(key.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(id);
        }
    }

    /// Forgets object `id`, recorded with these namespace and labels; empty sets are dropped so a
    /// churning label (a pod name, a template hash) does not leave entries behind.
    pub(super) fn remove(&mut self, id: Id, namespace: Option<&str>, labels: &BTreeMap<String, String>) {
        if let Some(namespace) = namespace
            && let Some(set) = self.by_namespace.get_mut(namespace)
        {
            set.remove(&id);
            if set.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
        for (key, value) in labels {
            let Some(values) = self.by_label.get_mut(key) else {
                continue;
            };
            if let Some(set) = values.get_mut(value) {
                set.remove(&id);
                if set.is_empty() {
                    values.remove(value);
                }
            }
            if values.is_empty() {
                self.by_label.remove(key);
            }
        }
    }

    /// The objects that can match `selector` in `namespace` (every namespace when None), out of
    /// `total` numbered `0..total`. A superset: the caller checks namespace and selector on each.
    pub(super) fn candidates(
        &self,
        namespace: Option<&str>,
        selector: &Selector,
        total: usize,
    ) -> Candidates<'_> {
        let mut options: Vec<Vec<&HashSet<Id>>> = Vec::new();
        if let Some(namespace) = namespace {
            options.push(self.by_namespace.get(namespace).into_iter().collect());
        }
        for requirement in selector.requirements() {
            if !matches!(
                requirement.operator,
                Operator::Equals | Operator::DoubleEquals | Operator::In
            ) {
                continue;
            }
            // An object has one value per key, so the sets of distinct values are disjoint.
            let values = self.by_label.get(&requirement.key);
            options.push(
                requirement
                    .values
                    .iter()
                    .filter_map(|value| values.and_then(|values| values.get(value)))
                    .collect(),
            );
        }
        let size = |sets: &Vec<&HashSet<Id>>| sets.iter().map(|set| set.len()).sum::<usize>();
        match options.into_iter().min_by_key(size) {
            Some(sets) if size(&sets) < total => Candidates::Sets(sets),
            _ => Candidates::All(0..Id::try_from(total).unwrap_or(Id::MAX)),
        }
    }

    /// Every (namespace or label pair, object) the index holds, for comparing two indexes whose
    /// objects are numbered differently.
    #[cfg(test)]
    pub(super) fn entries<T: Ord + Clone>(&self, name_of: impl Fn(Id) -> T) -> Vec<(String, T)> {
        let mut entries: Vec<(String, T)> = self
            .by_namespace
            .iter()
            .flat_map(|(namespace, ids)| ids.iter().map(move |id| (format!("ns {namespace}"), *id)))
            .chain(self.by_label.iter().flat_map(|(key, values)| {
                values.iter().flat_map(move |(value, ids)| {
                    ids.iter().map(move |id| (format!("label {key}={value}"), *id))
                })
            }))
            .map(|(what, id)| (what, name_of(id)))
            .collect();
        entries.sort();
        entries
    }
}
