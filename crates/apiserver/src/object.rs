//! Objects as JSON values: metadata rules shared by every kind, and the mapping of store
//! errors to Kubernetes errors.

use std::collections::BTreeMap;

use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};
use rkube_api::ResourceInfo;
use rkube_store::{KeyValue, StoreError};
use serde_json::{Map, Value};

use crate::response::ApiError;

/// Now, as Kubernetes writes timestamps (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Upstream's generateName suffix: five characters from an alphabet without vowels and
/// confusable digits.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

pub fn metadata(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata")?.as_object()
}

pub fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = object.as_object_mut()?;
    map.entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    metadata(object)?.get(field)?.as_str()
}

pub fn labels(object: &Value) -> BTreeMap<String, String> {
    metadata(object)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A field by dotted path (`spec.nodeName`), as text, for field selectors.
pub fn field_text(object: &Value, path: &str) -> Option<String> {
    let mut value = object;
    for part in path.split('.') {
        value = value.get(part)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Decodes a stored object and stamps it with its resourceVersion (the store revision it
/// was written at): stored bytes never carry one.
pub fn from_store(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not valid JSON: {e}", kv.key)))?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(object)
}

pub fn set_resource_version(object: &mut Value, revision: i64) {
    if let Some(meta) = metadata_mut(object) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

/// The bytes stored for an object: without resourceVersion, which the store assigns.
pub fn to_store(object: &Value) -> Result<Vec<u8>, ApiError> {
    Ok(to_store_marked(object)?.0)
}

/// [`to_store`], and where in the bytes the metadata object starts (its `{`), so that the
/// revision the store assigns can be spliced in without reading the bytes again. Written
/// member by member, exactly as serde_json writes a map, without copying the object first
/// (every write stores one).
pub fn to_store_marked(object: &Value) -> Result<(Vec<u8>, Option<usize>), ApiError> {
    let error = |e: serde_json::Error| ApiError::internal(format!("encoding an object: {e}"));
    let Value::Object(map) = object else {
        return Ok((serde_json::to_vec(object).map_err(error)?, None));
    };
    let mut bytes = Vec::with_capacity(2048);
    let mut metadata_at = None;
    bytes.push(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        serde_json::to_writer(&mut bytes, key).map_err(error)?;
        bytes.push(b':');
        match value {
            Value::Object(meta) if key == "metadata" => {
                metadata_at = Some(bytes.len());
                serde_json::to_writer(&mut bytes, &StoredMeta(meta)).map_err(error)?;
            }
            _ => serde_json::to_writer(&mut bytes, value).map_err(error)?,
        }
    }
    bytes.push(b'}');
    Ok((bytes, metadata_at))
}

/// Metadata as stored: the store's own fields left out.
struct StoredMeta<'a>(&'a Map<String, Value>);

const NOT_STORED: [&str; 2] = ["resourceVersion", "selfLink"];

impl serde::Serialize for StoredMeta<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let kept = self.0.iter().filter(|(key, _)| !NOT_STORED.contains(&key.as_str()));
        let mut out = serializer.serialize_map(None)?;
        for (key, value) in kept {
            out.serialize_entry(key, value)?;
        }
        out.end()
    }
}

fn details(info: &ResourceInfo, name: &str) -> StatusDetails {
    StatusDetails {
        group: (!info.group.is_empty()).then(|| info.group.to_string()),
        kind: Some(info.plural.to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

pub fn not_found(info: &ResourceInfo, name: &str) -> ApiError {
    ApiError {
        details: Some(Box::new(details(info, name))),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", info.qualified()),
        )
    }
}

pub fn already_exists(info: &ResourceInfo, name: &str) -> ApiError {
    ApiError {
        details: Some(Box::new(details(info, name))),
        ..ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", info.qualified()),
        )
    }
}

pub fn conflict(info: &ResourceInfo, name: &str) -> ApiError {
    ApiError {
        details: Some(Box::new(details(info, name))),
        ..ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                info.qualified()
            ),
        )
    }
}

/// A body that names an object must name the one in the URL.
pub fn check_name_matches(object: &Value, name: &str) -> Result<(), ApiError> {
    match meta_str(object, "name").filter(|n| *n != name) {
        Some(given) => Err(bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        ))),
        None => Ok(()),
    }
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// 422 Invalid with one cause per failing field, worded as upstream: `Kind.group "name" is
/// invalid: field: Invalid value: "x": why`. Causes are (field, reason, detail).
pub fn invalid(info: &ResourceInfo, name: &str, causes: Vec<(String, String, String)>) -> ApiError {
    invalid_kind(info.group, info.kind, name, causes)
}

/// 422 Invalid for a kind outside the catalogue (request options such as `ListOptions`).
pub fn invalid_kind(group: &str, kind_name: &str, name: &str, causes: Vec<(String, String, String)>) -> ApiError {
    let line = |(field, reason, detail): &(String, String, String)| {
        if detail.is_empty() {
            format!("{field}: {reason}")
        } else {
            format!("{field}: {reason}: {detail}")
        }
    };
    let summary: Vec<String> = causes.iter().map(line).collect();
    let kind = if group.is_empty() {
        kind_name.to_string()
    } else {
        format!("{kind_name}.{group}")
    };
    let message = if summary.len() == 1 {
        format!("{kind} \"{name}\" is invalid: {}", summary[0])
    } else {
        format!("{kind} \"{name}\" is invalid: [{}]", summary.join(", "))
    };
    let causes = causes
        .iter()
        .map(|cause| {
            let (field, reason, _) = cause;
            let kind = if reason.starts_with("Required value") {
                "FieldValueRequired"
            } else if reason.starts_with("Duplicate value") {
                "FieldValueDuplicate"
            } else if reason.starts_with("Forbidden") {
                "FieldValueForbidden"
            } else if reason.starts_with("Unsupported value") {
                "FieldValueNotSupported"
            } else if reason.starts_with("Too many") {
                "FieldValueTooMany"
            } else if reason.starts_with("Too long") {
                "FieldValueTooLong"
            } else {
                "FieldValueInvalid"
            };
            let full = line(cause);
            StatusCause {
                field: Some(field.clone()),
                message: Some(full[field.len() + 2..].to_string()),
                reason: Some(kind.to_string()),
            }
        })
        .collect();
    let details = StatusDetails {
        group: (!group.is_empty()).then(|| group.to_string()),
        kind: Some(kind_name.to_string()),
        name: Some(name.to_string()),
        causes: Some(causes),
        ..Default::default()
    };
    ApiError {
        details: Some(Box::new(details)),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }
}

/// Validation problems as a 422, or Ok when there are none.
pub fn check(
    info: &ResourceInfo,
    name: &str,
    problems: Vec<rkube_api::validation::FieldError>,
) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    let causes = problems
        .into_iter()
        .map(|p| {
            let (reason, detail) = p.reason_and_detail();
            (p.field, reason, detail)
        })
        .collect();
    Err(invalid(info, name, causes))
}

/// Store errors as the API reports them, for an object of `info` named `name`.
pub fn store_error(err: StoreError, info: &ResourceInfo, name: &str) -> ApiError {
    match err {
        StoreError::NotFound { .. } => not_found(info, name),
        StoreError::AlreadyExists { .. } => already_exists(info, name),
        StoreError::Conflict { .. } => conflict(info, name),
        other => general_store_error(other),
    }
}

/// Store errors not about one object.
pub fn general_store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Compacted { requested, compacted } => ApiError::new(
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {requested} ({compacted})"),
        ),
        StoreError::FutureRevision { requested, current } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        ),
        StoreError::InvalidContinue { reason } => bad_request(format!("invalid continue token: {reason}")),
        StoreError::ValueTooLarge { size, limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: the object is {size} bytes, the limit is {limit}"),
        ),
        StoreError::InvalidKey { reason, .. } => bad_request(format!("invalid name: {reason}")),
        other => ApiError::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_bytes_leave_out_only_what_the_store_assigns() {
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "selfLink": "/x", "labels": {"resourceVersion": "kept"}},
            "data": {"resourceVersion": "kept too"},
        });
        let stored: Value = serde_json::from_slice(&to_store(&object).unwrap()).unwrap();
        let mut expected = object.clone();
        let meta = expected["metadata"].as_object_mut().unwrap();
        meta.remove("resourceVersion");
        meta.remove("selfLink");
        assert_eq!(stored, expected);
        let kv = KeyValue {
            key: "k".into(),
            value: to_store(&object).unwrap().into(),
            create_revision: 7,
            mod_revision: 7,
        };
        let mut read = from_store(&kv).unwrap();
        read["metadata"]
            .as_object_mut()
            .unwrap()
            .insert("selfLink".into(), json!("/x"));
        assert_eq!(read, object, "reading it back restores the revision");
    }
}
