//! Which series labels name which Kubernetes resources, both ways: a rule's `resources` section
//! (overrides and a `<<.Resource>>`/`<<.Group>>` template), compiled once. prometheus-adapter's
//! `resourceConverter` (pkg/naming) is the model.

use std::collections::BTreeMap;

use regex::Regex;

use crate::objects::{ResourceInfo, Resources};

/// A Kubernetes group-resource as the config writes it; the resource may be singular or plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    /// A resource of the core group (`pod`, `namespaces`).
    pub fn core(resource: &str) -> Self {
        Self {
            group: String::new(),
            resource: resource.to_owned(),
        }
    }
}

impl std::fmt::Display for GroupResource {
    /// `resource` for the core group, `resource.group` otherwise, as `Resources::resolve` reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// A rule's `resources` as written: the input of [`LabelMapping::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceMapping {
    /// Label name → resource (`pod` → `pods`).
    pub overrides: BTreeMap<String, GroupResource>,
    /// A `<<.Resource>>`/`<<.Group>>` pattern that turns a label name into a resource and back.
    pub template: Option<String>,
    /// Labels the template does not turn into resources (overrides still map them). Only the
    /// built-in rules set it; prometheus-adapter's file format has no such field.
    pub template_ignores: Vec<String>,
}

/// A label template with the regex that reads it backwards.
#[derive(Debug, Clone)]
struct LabelTemplate {
    text: String,
    /// Anchored, with `resource` and `group` captures.
    regex: Regex,
}

/// How series labels relate to Kubernetes resources under one rule, ready to use.
#[derive(Debug, Clone)]
pub struct LabelMapping {
    /// Label name → resource, as the config says.
    pub overrides: BTreeMap<String, GroupResource>,
    template: Option<LabelTemplate>,
    template_ignores: Vec<String>,
}

impl LabelMapping {
    pub fn new(mapping: ResourceMapping) -> Result<Self, regex::Error> {
        let template = match mapping.template {
            Some(text) => Some(LabelTemplate {
                regex: Regex::new(&template_to_regex(&text))?,
                text,
            }),
            None => None,
        };
        Ok(Self {
            overrides: mapping.overrides,
            template,
            template_ignores: mapping.template_ignores,
        })
    }

    /// The label template, normalized to the spellings `<<.Resource>>` and `<<.Group>>`.
    pub fn template(&self) -> Option<&str> {
        self.template.as_ref().map(|t| t.text.as_str())
    }

    /// The resource a series label names, if any.
    pub fn resource_for_label<'r>(&self, label: &str, resources: &'r Resources) -> Option<&'r ResourceInfo> {
        if let Some(resource) = self.overrides.get(label) {
            return resources.resolve(&resource.to_string());
        }
        if self.template_ignores.iter().any(|l| l == label) {
            return None;
        }
        let captures = self.template.as_ref()?.regex.captures(label)?;
        let resource = captures.name("resource")?.as_str();
        match captures.name("group") {
            Some(group) => resources.resolve(&format!("{resource}.{}", group.as_str())),
            None => resources.for_label(resource),
        }
    }

    /// The series label that holds the names of `resource`'s objects.
    pub fn label_for_resource(&self, resource: &ResourceInfo, resources: &Resources) -> Option<String> {
        let by_override = self
            .overrides
            .iter()
            .find(|(_, r)| resources.resolve(&r.to_string()).is_some_and(|r| r == resource))
            .map(|(label, _)| label.clone());
        by_override.or_else(|| {
            let template = self.template.as_ref()?;
            let group = resource.group.replace(['.', '-'], "_");
            let label = template
                .text
                .replace("<<.Resource>>", &resource.singular)
                .replace("<<.Group>>", &group);
            (!self.template_ignores.contains(&label)).then_some(label)
        })
    }
}

/// Turns a resource template into an anchored regex with `resource` and `group` captures.
fn template_to_regex(template: &str) -> String {
    let escaped = regex::escape(template);
    let escaped = escaped.replace(&regex::escape("<<.Resource>>"), "(?P<resource>.+?)");
    let escaped = escaped.replace(&regex::escape("<<.Group>>"), "(?P<group>.+?)");
    format!("^{escaped}$")
}
