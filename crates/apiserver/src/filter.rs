//! Label and field selectors, applied alike to decoded objects and to the watch cache's
//! compact entries (which keep only the labels and selectable fields, not the object tree).

use std::borrow::Cow;

use rkube_api::ResourceInfo;
use rkube_api::selector::{FieldSelector, LabelSelector};
use serde_json::Value;

use crate::object::{self, bad_request};
use crate::query::Query;
use crate::response::ApiError;

/// What selectors look at in an object.
pub(crate) trait Selectable {
    fn label(&self, key: &str) -> Option<&str>;
    fn field(&self, path: &str) -> Option<Cow<'_, str>>;
}

impl Selectable for Value {
    fn label(&self, key: &str) -> Option<&str> {
        object::metadata(self)?.get("labels")?.get(key)?.as_str()
    }

    fn field(&self, path: &str) -> Option<Cow<'_, str>> {
        object::field_text(self, path).map(Cow::Owned)
    }
}

pub(crate) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn everything() -> Self {
        Self {
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        }
    }

    pub fn from_query(info: &ResourceInfo, query: &Query) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(&query.label_selector).map_err(|e| bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(&query.field_selector).map_err(|e| bad_request(e.to_string()))?;
        if let Some(unsupported) = fields
            .fields()
            .find(|f| !matches!(*f, "metadata.name" | "metadata.namespace") && !selectable_fields(info).contains(f))
        {
            return Err(bad_request(format!("field label not supported: {unsupported}")));
        }
        Ok(Self { labels, fields })
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, object: &impl Selectable) -> bool {
        (self.labels.is_empty() || self.labels.matches_by(|k| object.label(k)))
            && (self.fields.is_empty() || self.fields.matches(|f| object.field(f)))
    }
}

/// Field selectors upstream supports per resource, besides `metadata.name` and
/// `metadata.namespace`, which every resource supports.
pub(crate) fn selectable_fields(info: &ResourceInfo) -> &'static [&'static str] {
    match (info.group, info.plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(labels: &str, fields: &str) -> Filter {
        let query = Query {
            label_selector: labels.into(),
            field_selector: fields.into(),
            ..Query::default()
        };
        Filter::from_query(rkube_api::find("", "v1", "pods").unwrap(), &query).unwrap()
    }

    #[test]
    fn selects_by_labels_and_fields() {
        let pod = json!({"metadata": {"name": "a", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}});
        assert!(filter("app=web", "spec.nodeName=n1").matches(&pod));
        assert!(!filter("app=db", "").matches(&pod));
        assert!(!filter("", "spec.nodeName=n2").matches(&pod));
        assert!(
            filter("!tier", "status.phase=").matches(&pod),
            "missing fields read as empty"
        );
        assert!(filter("", "").is_everything());
    }

    #[test]
    fn unsupported_fields_are_refused() {
        let query = Query {
            field_selector: "spec.bogus=x".into(),
            ..Query::default()
        };
        let err = Filter::from_query(rkube_api::find("", "v1", "pods").unwrap(), &query)
            .err()
            .unwrap();
        assert_eq!(err.message, "field label not supported: spec.bogus");
    }
}
