//! `meta.k8s.io/v1` Tables, what `kubectl get` prints. Every kind has upstream's default
//! columns for now (Name, Created At); per-kind printer columns come with each kind.

use rkube_api::ResourceInfo;
use serde_json::{Value, json};

use crate::object::metadata;
use crate::query::Query;

/// True when the client asked for a Table (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`).
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .any(|range| range.contains("as=Table") && range.contains("g=meta.k8s.io"))
    })
}

fn columns() -> Value {
    json!([
        {"name": "Name", "type": "string", "format": "name", "priority": 0,
         "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"},
        {"name": "Created At", "type": "date", "format": "", "priority": 0,
         "description": "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}
    ])
}

fn row(object: &Value, include: &str) -> Value {
    let meta = metadata(object).cloned().unwrap_or_default();
    let name = meta.get("name").cloned().unwrap_or(Value::Null);
    let created = meta.get("creationTimestamp").cloned().unwrap_or(Value::Null);
    let mut row = json!({"cells": [name, created]});
    match include {
        "None" => {}
        "Object" => row["object"] = object.clone(),
        _ => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            })
        }
    }
    row
}

pub fn table(
    _info: &ResourceInfo,
    items: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    query: &Query,
    with_columns: bool,
) -> Value {
    let include = query.include_object.as_deref().unwrap_or("Metadata");
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "rows": items.iter().map(|o| row(o, include)).collect::<Vec<_>>(),
    });
    if with_columns {
        table["columnDefinitions"] = columns();
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_table(Some("application/json")));
        assert!(!wants_table(None));
    }

    #[test]
    fn rows_carry_partial_metadata_by_default() {
        let info = rkube_api::find("", "v1", "configmaps").unwrap();
        let object = json!({"metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        let t = table(info, std::slice::from_ref(&object), "7", None, &Query::default(), true);
        assert_eq!(t["rows"][0]["cells"], json!(["a", "2026-01-01T00:00:00Z"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "n");
        let query = Query {
            include_object: Some("Object".into()),
            ..Query::default()
        };
        assert_eq!(
            table(info, std::slice::from_ref(&object), "7", None, &query, false)["rows"][0]["object"],
            object
        );
    }
}
