//! The `meta.k8s.io/v1` views of objects a read may ask for in its Accept header: Tables,
//! what `kubectl get` prints (every kind with upstream's default columns, Name and Created
//! At, unless it has printer columns of its own), and PartialObjectMetadata, the objects'
//! metadata alone, what client-go's metadata informers (and kube-rs' `metadata_watcher`)
//! read.

use rkube_api::{ResourceInfo, printers};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::object::metadata;
use crate::query::Query;

/// How a read shows objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Object,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io`.
    Table,
    /// `application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io` (or, for lists,
    /// `as=PartialObjectMetadataList`).
    Metadata,
}

impl View {
    /// The first media range of `accept` that names a view this server has (a plain
    /// object when none does, as upstream falls back to the default encoding).
    pub fn of(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Object };
        for range in accept.split(',') {
            let parameter = |name: &str| {
                range
                    .split(';')
                    .skip(1)
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.trim())
            };
            match (parameter("as"), parameter("g")) {
                (None, _) => return Self::Object,
                (Some("Table"), Some("meta.k8s.io")) => return Self::Table,
                (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io")) => {
                    return Self::Metadata;
                }
                _ => {}
            }
        }
        Self::Object
    }
}

const PARTIAL_HEAD: &str = r#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#;

/// `object` as PartialObjectMetadata.
pub fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata(object).cloned().unwrap_or_default(),
    })
}

/// The encoded object as PartialObjectMetadata, its metadata copied as encoded.
pub fn partial_json(json: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Deserialize)]
    struct MetadataOnly<'a> {
        #[serde(borrow)]
        metadata: Option<&'a RawValue>,
    }
    let read: MetadataOnly<'_> = serde_json::from_slice(json)?;
    let metadata = read.metadata.map_or("{}", RawValue::get);
    let mut out = Vec::with_capacity(PARTIAL_HEAD.len() + metadata.len() + 1);
    out.extend_from_slice(PARTIAL_HEAD.as_bytes());
    out.extend_from_slice(metadata.as_bytes());
    out.push(b'}');
    Ok(out)
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
    let mut row = json!({"cells": printers::cells(info, object, &age)});
    match include {
        "None" => {}
        "Object" => row["object"] = object.clone(),
        _ => row["object"] = partial(object),
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
        assert_eq!(
            View::of(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            )),
            View::Table
        );
        // What kube-rs and client-go's metadata clients send.
        for accept in [
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
        ] {
            assert_eq!(View::of(Some(accept)), View::Metadata, "{accept}");
        }
        // An unknown view is skipped for the next range; the plain one wins when first.
        assert_eq!(
            View::of(Some(
                "application/json;as=Bogus;g=meta.k8s.io,application/json;as=Table;g=meta.k8s.io"
            )),
            View::Table
        );
        assert_eq!(
            View::of(Some("application/json,application/json;as=Table;g=meta.k8s.io")),
            View::Object
        );
        assert_eq!(View::of(Some("application/json")), View::Object);
        assert_eq!(View::of(None), View::Object);
    }

    #[test]
    fn partial_metadata_keeps_the_metadata_as_encoded() {
        let object = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}, "resourceVersion": "5"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let encoded = serde_json::to_vec(&object).unwrap();
        let partial_encoded: Value = serde_json::from_slice(&partial_json(&encoded).unwrap()).unwrap();
        assert_eq!(partial_encoded, partial(&object));
        assert_eq!(
            partial_encoded,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"name": "p", "labels": {"a": "b"}, "resourceVersion": "5"}})
        );
        assert!(partial_json(b"not json").is_err());
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
