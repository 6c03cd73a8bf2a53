//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl 1.32+
//! sends for `create deployment|namespace|…` and `auth can-i|whoami`: the magic `k8s\0`, a
//! `runtime.Unknown` carrying the object's apiVersion and kind and its bytes, which decode
//! into the object's JSON form.
//!
//! Field numbers, wire types and JSON names of every message are upstream's, kept in
//! `facts/proto-facts.json` (see `facts/generate-proto.py`); the few types with their own
//! JSON form (Time, Quantity, IntOrString, RawExtension, …) are decoded here by name.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The four bytes every protobuf-encoded object starts with.
pub const MAGIC: &[u8] = b"k8s\0";

const UNKNOWN: &str = "io.k8s.apimachinery.pkg.runtime.Unknown";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "io.k8s.apimachinery.pkg.runtime.RawExtension";
/// Go's zero time (0001-01-01T00:00:00Z) in Unix seconds: an unset timestamp.
const ZERO_TIME: i64 = -62_135_596_800;
/// Messages nest no deeper than this (upstream's objects nest about 15 deep).
const MAX_DEPTH: usize = 64;

#[derive(Debug, Deserialize)]
struct Field(String, String, bool, Option<String>);

static FACTS: LazyLock<HashMap<String, HashMap<u32, Field>>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../facts/proto-facts.json")).unwrap_or_else(|err| {
        // The file is part of the source tree; a test checks that it parses.
        tracing::error!(%err, "the protobuf facts do not parse");
        HashMap::new()
    })
});

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtoError {
    #[error("provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]")]
    NoMagic,
    #[error("protobuf: {0}")]
    Malformed(&'static str),
    #[error("no kind \"{kind}\" is registered for version \"{api_version}\"")]
    UnknownKind { api_version: String, kind: String },
    #[error("unsupported content encoding {0:?}")]
    Encoding(String),
}

/// One encoded field: its number and value.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    /// No upstream field is 32-bit fixed; such fields are skipped.
    Fixed32,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or(ProtoError::Malformed("truncated varint"))?;
            self.bytes = rest;
            if shift == 63 && byte > 1 {
                return Err(ProtoError::Malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.bytes.len() < n {
            return Err(ProtoError::Malformed("truncated field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtoError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| ProtoError::Malformed("field number too large"))?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| ProtoError::Malformed("fixed64"))?,
            )),
            2 => {
                let length = usize::try_from(self.varint()?).map_err(|_| ProtoError::Malformed("length"))?;
                Wire::Bytes(self.take(length)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return Err(ProtoError::Malformed("unsupported wire type")),
        };
        Ok(Some((tag, wire)))
    }
}

fn text(bytes: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Malformed("a string is not UTF-8"))
}

/// A scalar of the given kind from its wire form; varints of repeated scalars may be packed.
fn scalar(kind: &str, wire: &Wire<'_>) -> Result<Value, ProtoError> {
    Ok(match (kind, wire) {
        ("string", Wire::Bytes(b)) => Value::String(text(b)?),
        ("bytes", Wire::Bytes(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        // int32 values are sign-extended to 64 bits on the wire.
        ("int32" | "int64", Wire::Varint(v)) => json!(*v as i64),
        ("bool", Wire::Varint(v)) => Value::Bool(*v != 0),
        ("double", Wire::Fixed64(v)) => json!(f64::from_bits(*v)),
        _ => return Err(ProtoError::Malformed("a field's wire type does not match its kind")),
    })
}

/// Go's `time.Duration` text (`1h2m3s`, `1.5s`, `0s`).
fn duration_text(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let total = nanos.unsigned_abs();
    let (hours, rest) = (total / 3_600_000_000_000, total % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let seconds = rest as f64 / 1e9;
    let mut out = sign.to_string();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

/// The types whose JSON form is not an object of their fields.
fn special(ty: &str, bytes: &[u8]) -> Result<Option<Value>, ProtoError> {
    if ![
        TIME,
        MICRO_TIME,
        DURATION,
        FIELDS_V1,
        QUANTITY,
        INT_OR_STRING,
        RAW_EXTENSION,
    ]
    .contains(&ty)
    {
        return Ok(None);
    }
    let mut fields: HashMap<u32, Wire<'_>> = HashMap::new();
    let mut reader = Reader { bytes };
    while let Some((tag, wire)) = reader.field()? {
        fields.insert(tag, wire);
    }
    let int = |tag: u32| match fields.get(&tag) {
        Some(Wire::Varint(v)) => *v as i64,
        _ => 0,
    };
    let raw = |tag: u32| match fields.get(&tag) {
        Some(Wire::Bytes(b)) => *b,
        _ => &[],
    };
    Ok(Some(match ty {
        TIME | MICRO_TIME => {
            let (seconds, nanos) = (int(1), int(2));
            // Upstream writes the zero time as an empty message (older clients as year 1).
            if fields.is_empty() || (seconds == ZERO_TIME && nanos == 0) {
                Value::Null
            } else {
                let at = k8s_openapi::jiff::Timestamp::new(seconds, i32::try_from(nanos).unwrap_or(0))
                    .map_err(|_| ProtoError::Malformed("a time out of range"))?;
                let format = if ty == TIME {
                    "%Y-%m-%dT%H:%M:%SZ"
                } else {
                    "%Y-%m-%dT%H:%M:%S%.6fZ"
                };
                Value::String(at.strftime(format).to_string())
            }
        }
        DURATION => Value::String(duration_text(int(1))),
        QUANTITY => Value::String(text(raw(1))?),
        INT_OR_STRING => {
            if int(1) == 1 {
                Value::String(text(raw(3))?)
            } else {
                json!(int(2))
            }
        }
        _ => {
            // RawExtension and FieldsV1 carry JSON.
            let bytes = raw(1);
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(bytes).map_err(|_| ProtoError::Malformed("embedded JSON does not parse"))?
            }
        }
    }))
}

/// A message of type `ty` as the JSON object upstream would write for it.
fn message(ty: &str, bytes: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::Malformed("messages nest too deeply"));
    }
    if let Some(value) = special(ty, bytes)? {
        return Ok(value);
    }
    let fields = FACTS.get(ty);
    let mut object = Map::new();
    let mut reader = Reader { bytes };
    while let Some((tag, wire)) = reader.field()? {
        // Fields this version does not know are skipped, as upstream's decoder does.
        let Some(Field(name, kind, repeated, reference)) = fields.and_then(|f| f.get(&tag)) else {
            continue;
        };
        let value = match (kind.as_str(), &wire) {
            ("message", Wire::Bytes(b)) => message(reference.as_deref().unwrap_or_default(), b, depth + 1)?,
            (map, Wire::Bytes(b)) if map.starts_with("map:") => {
                let (key, value) = map_entry(&map["map:".len()..], reference.as_deref(), b, depth)?;
                let entries = object.entry(name.clone()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(entries) = entries {
                    entries.insert(key, value);
                }
                continue;
            }
            ("int32" | "int64" | "bool" | "double", Wire::Bytes(packed)) if *repeated => {
                let mut inner = Reader { bytes: packed };
                let list = object.entry(name.clone()).or_insert_with(|| Value::Array(Vec::new()));
                while !inner.bytes.is_empty() {
                    let element = if kind == "double" {
                        let b = inner.take(8)?;
                        Wire::Fixed64(u64::from_le_bytes(
                            b.try_into().map_err(|_| ProtoError::Malformed("fixed64"))?,
                        ))
                    } else {
                        Wire::Varint(inner.varint()?)
                    };
                    if let Value::Array(list) = list {
                        list.push(scalar(kind, &element)?);
                    }
                }
                continue;
            }
            _ => scalar(kind, &wire)?,
        };
        if name.is_empty() {
            // An embedded struct: its fields are ours.
            if let Value::Object(inner) = value {
                object.extend(inner);
            }
        } else if *repeated {
            let list = object.entry(name.clone()).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                list.push(value);
            }
        } else {
            object.insert(name.clone(), value);
        }
    }
    // Go writes every non-pointer field, which its JSON encoding then leaves out when
    // tagged omitempty and empty; unset times are absent.
    object.retain(|_, v| !v.is_null());
    crate::omitempty::omit_empty_here(ty, &mut object);
    Ok(Value::Object(object))
}

fn map_entry(kind: &str, reference: Option<&str>, bytes: &[u8], depth: usize) -> Result<(String, Value), ProtoError> {
    let mut reader = Reader { bytes };
    let (mut key, mut value) = (String::new(), None);
    while let Some((tag, wire)) = reader.field()? {
        match (tag, &wire) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) if kind == "message" => {
                value = Some(message(reference.unwrap_or_default(), b, depth + 1)?);
            }
            (2, _) => value = Some(scalar(kind, &wire)?),
            _ => {}
        }
    }
    let empty = match kind {
        "message" => Value::Object(Map::new()),
        _ => Value::String(String::new()),
    };
    Ok((key, value.unwrap_or(empty)))
}

/// The type facts name for a kind, if upstream encodes it in protobuf.
fn type_of(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    crate::strategic::type_of(group, version, kind)
}

/// Decodes a protobuf request body into the object's JSON form, with its apiVersion and
/// kind.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtoError::NoMagic)?;
    let unknown = message(UNKNOWN, envelope, 0)?;
    let encoding = unknown
        .get("contentEncoding")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !encoding.is_empty() {
        return Err(ProtoError::Encoding(encoding.into()));
    }
    let api_version = unknown
        .pointer("/typeMeta/apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = unknown
        .pointer("/typeMeta/kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(ty) = type_of(&api_version, &kind) else {
        return Err(ProtoError::UnknownKind { api_version, kind });
    };
    // `raw` came back base64-encoded as a bytes field; decode it once more as the object.
    let raw = unknown.get("raw").and_then(Value::as_str).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| ProtoError::Malformed("raw bytes"))?;
    let mut object = message(ty, &raw, 0)?;
    if let Value::Object(map) = &mut object {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// A length-delimited field.
    fn bytes_field(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(tag << 3) | 2, u8::try_from(payload.len()).unwrap()];
        out.extend_from_slice(payload);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [bytes_field(1, api_version.as_bytes()), bytes_field(2, kind.as_bytes())].concat();
        let unknown = [
            bytes_field(1, &type_meta),
            bytes_field(2, raw),
            bytes_field(3, b""),
            bytes_field(4, b""),
        ]
        .concat();
        [MAGIC, &unknown].concat()
    }

    #[test]
    fn facts_parse() {
        assert!(FACTS.contains_key("io.k8s.api.core.v1.Pod"));
        assert!(FACTS.contains_key("io.k8s.api.core.v1.AWSElasticBlockStoreVolumeSource"));
    }

    #[test]
    fn a_namespace_as_kubectl_1_32_sends_it() {
        // kubectl create namespace shop: ObjectMeta{name: shop, creationTimestamp: zero},
        // empty spec and status.
        let zero_time = hex("08 80 92 b8 c3 98 fe ff ff ff 01 10 00");
        let meta = [bytes_field(1, b"shop"), bytes_field(8, &zero_time)].concat();
        let raw = [bytes_field(1, &meta), bytes_field(2, b""), bytes_field(3, b"")].concat();
        let object = decode(&envelope("v1", "Namespace", &raw)).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn nested_messages_maps_embedded_structs_and_special_types() {
        // A ConfigMap with data, and a Service port with a named target port.
        let entry = [bytes_field(1, b"k"), bytes_field(2, b"v")].concat();
        let cm = [bytes_field(1, &bytes_field(1, b"cfg")), bytes_field(2, &entry)].concat();
        let object = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(object["data"], json!({"k": "v"}));
        let target = [vec![0x08, 0x01], bytes_field(3, b"http")].concat();
        let port = [bytes_field(1, b"web"), vec![0x18, 0x50], bytes_field(4, &target)].concat();
        let spec = bytes_field(1, &port);
        let service = [bytes_field(1, &bytes_field(1, b"s")), bytes_field(2, &spec)].concat();
        let object = decode(&envelope("v1", "Service", &service)).unwrap();
        assert_eq!(
            object["spec"]["ports"],
            json!([{"name": "web", "port": 80, "targetPort": "http"}])
        );
        // A volume: its source is an embedded struct; emptyDir stays an empty object.
        let volume = [bytes_field(1, b"scratch"), bytes_field(2, &bytes_field(2, b""))].concat();
        let pod_spec = bytes_field(1, &volume);
        let pod = [bytes_field(1, &bytes_field(1, b"p")), bytes_field(2, &pod_spec)].concat();
        let object = decode(&envelope("v1", "Pod", &pod)).unwrap();
        assert_eq!(object["spec"]["volumes"], json!([{"name": "scratch", "emptyDir": {}}]));
        // Quantities in a map of messages.
        let quantity = [bytes_field(1, b"cpu"), bytes_field(2, &bytes_field(1, b"250m"))].concat();
        let requirements = bytes_field(2, &quantity);
        let container = [bytes_field(1, b"c"), bytes_field(8, &requirements)].concat();
        let pod = [
            bytes_field(1, &bytes_field(1, b"p")),
            bytes_field(2, &bytes_field(2, &container)),
        ]
        .concat();
        let object = decode(&envelope("v1", "Pod", &pod)).unwrap();
        assert_eq!(
            object["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "250m"}})
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert_eq!(decode(b"{}"), Err(ProtoError::NoMagic));
        assert!(matches!(
            decode(&[MAGIC, &[0x0a, 0x40]].concat()),
            Err(ProtoError::Malformed(_))
        ));
        assert_eq!(
            decode(&envelope("example.com/v1", "Widget", b"")),
            Err(ProtoError::UnknownKind {
                api_version: "example.com/v1".into(),
                kind: "Widget".into()
            })
        );
        assert_eq!(duration_text(90_000_000_000), "1m30s");
        assert_eq!(duration_text(1_500_000_000), "1.5s");
    }
}
