//! `meta.k8s.io/v1` Tables, what `kubectl get` prints. Every kind has upstream's default
//! columns for now (Name, Created At); per-kind printer columns come with each kind.

use rkube_api::{ResourceInfo, printers};
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

fn columns(info: &ResourceInfo) -> Value {
    printers::columns(info)
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect()
}

/// Ages as upstream's server renders them: relative to now, human-readable.
fn age(timestamp: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match printers::epoch_seconds(timestamp) {
        Some(then) => printers::human_duration(now - then),
        None => "<unknown>".to_string(),
    }
}

fn row(info: &ResourceInfo, object: &Value, include: &str) -> Value {
    let meta = metadata(object).cloned().unwrap_or_default();
    let mut row = json!({"cells": printers::cells(info, object, &age)});
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
    info: &ResourceInfo,
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
        "rows": items.iter().map(|o| row(info, o, include)).collect::<Vec<_>>(),
    });
    if with_columns {
        table["columnDefinitions"] = columns(info);
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
        assert_eq!(t["rows"][0]["cells"][0], "a");
        assert_eq!(t["columnDefinitions"][1]["name"], "Data");
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
