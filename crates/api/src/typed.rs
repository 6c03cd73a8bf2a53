//! Decoding objects into their Kubernetes types: type checking with field paths, and
//! unknown-field detection for server-side field validation.
//!
//! An object is decoded into its k8s-openapi type and encoded again. Decode errors are
//! type errors at a path; fields of the input that the round trip lost are unknown fields
//! (they are what upstream's Go decoding drops), reported as upstream words them.

use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, events, networking, policy, rbac, scheduling, storage,
};
use serde_json::Value;

use crate::ResourceInfo;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{kind} in version \"{version}\" cannot be handled as a {kind}: {}{message}",
    if path.is_empty() { String::new() } else { format!("{path}: ") }
)]
pub struct DecodeError {
    pub kind: String,
    pub version: String,
    pub path: String,
    pub message: String,
}

fn roundtrip_as<T>(value: &Value) -> Result<Value, (String, String)>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    // Tracking the path costs on every field, so it is paid only to word an error.
    let typed: T = match T::deserialize(value) {
        Ok(typed) => typed,
        Err(_) => serde_path_to_error::deserialize(value).map_err(|e| (e.path().to_string(), e.inner().to_string()))?,
    };
    serde_json::to_value(typed).map_err(|e| (".".to_string(), e.to_string()))
}

fn normalize_as<T>(value: &mut Value) -> Result<Vec<String>, (String, String)>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = match T::deserialize(&*value) {
        Ok(typed) => typed,
        Err(_) => {
            serde_path_to_error::deserialize(&*value).map_err(|e| (e.path().to_string(), e.inner().to_string()))?
        }
    };
    crate::normalize::normalize(&typed, value).map_err(|e| (".".to_string(), e.to_string()))
}

/// A decode error as upstream words it.
fn decode_error(info: &ResourceInfo, (path, message): (String, String)) -> DecodeError {
    DecodeError {
        kind: info.kind.to_string(),
        version: info.version.to_string(),
        path,
        message,
    }
}

/// Go decodes quantities into numbers, so a malformed one fails the decode (without a
/// path, as upstream words it).
fn check_quantities(decoded: &Value) -> Result<(), (String, String)> {
    if quantities_ok(decoded) {
        Ok(())
    } else {
        Err((String::new(), crate::quantity::SYNTAX_MESSAGE.to_string()))
    }
}

macro_rules! typed_kinds {
    ($( ($group:literal, $version:literal, $kind:literal) => $ty:ty ),* $(,)?) => {
        /// Decodes and re-encodes `value` as the resource's type. Resources without a
        /// known type pass through unchanged.
        pub fn roundtrip(info: &ResourceInfo, value: &Value) -> Result<Value, DecodeError> {
            let result = match (info.group, info.version, info.kind) {
                $( ($group, $version, $kind) => roundtrip_as::<$ty>(value), )*
                _ => Ok(value.clone()),
            }
            .and_then(|decoded| check_quantities(&decoded).map(|()| decoded));
            result.map_err(|e| decode_error(info, e))
        }

        /// What [`roundtrip`] and [`unknown_fields`] give, made in place: `value` becomes
        /// the decoded object, and the fields its type lacks are returned. On an error
        /// `value` may be half changed.
        pub fn normalize(info: &ResourceInfo, value: &mut Value) -> Result<Vec<String>, DecodeError> {
            let result = match (info.group, info.version, info.kind) {
                $( ($group, $version, $kind) => normalize_as::<$ty>(value), )*
                _ => Ok(Vec::new()),
            };
            result
                .and_then(|unknown| check_quantities(value).map(|()| unknown))
                .map_err(|e| decode_error(info, e))
        }

        /// True when the resource has a type to check against.
        pub fn is_typed(info: &ResourceInfo) -> bool {
            matches!((info.group, info.version, info.kind), $( ($group, $version, $kind) )|*)
        }
    };
}

typed_kinds! {
    ("", "v1", "Namespace") => core::v1::Namespace,
    ("", "v1", "Pod") => core::v1::Pod,
    ("", "v1", "Service") => core::v1::Service,
    ("", "v1", "Endpoints") => core::v1::Endpoints,
    ("", "v1", "Node") => core::v1::Node,
    ("", "v1", "ConfigMap") => core::v1::ConfigMap,
    ("", "v1", "Secret") => core::v1::Secret,
    ("", "v1", "ServiceAccount") => core::v1::ServiceAccount,
    ("", "v1", "Event") => core::v1::Event,
    ("", "v1", "PersistentVolume") => core::v1::PersistentVolume,
    ("", "v1", "PersistentVolumeClaim") => core::v1::PersistentVolumeClaim,
    ("", "v1", "ResourceQuota") => core::v1::ResourceQuota,
    ("", "v1", "LimitRange") => core::v1::LimitRange,
    ("", "v1", "ReplicationController") => core::v1::ReplicationController,
    ("apps", "v1", "Deployment") => apps::v1::Deployment,
    ("apps", "v1", "ReplicaSet") => apps::v1::ReplicaSet,
    ("apps", "v1", "StatefulSet") => apps::v1::StatefulSet,
    ("apps", "v1", "DaemonSet") => apps::v1::DaemonSet,
    ("apps", "v1", "ControllerRevision") => apps::v1::ControllerRevision,
    ("batch", "v1", "Job") => batch::v1::Job,
    ("batch", "v1", "CronJob") => batch::v1::CronJob,
    ("autoscaling", "v2", "HorizontalPodAutoscaler") => autoscaling::v2::HorizontalPodAutoscaler,
    ("autoscaling", "v1", "HorizontalPodAutoscaler") => autoscaling::v1::HorizontalPodAutoscaler,
    ("events.k8s.io", "v1", "Event") => events::v1::Event,
    ("networking.k8s.io", "v1", "Ingress") => networking::v1::Ingress,
    ("networking.k8s.io", "v1", "IngressClass") => networking::v1::IngressClass,
    ("networking.k8s.io", "v1", "NetworkPolicy") => networking::v1::NetworkPolicy,
    ("discovery.k8s.io", "v1", "EndpointSlice") => discovery::v1::EndpointSlice,
    ("coordination.k8s.io", "v1", "Lease") => coordination::v1::Lease,
    ("rbac.authorization.k8s.io", "v1", "Role") => rbac::v1::Role,
    ("rbac.authorization.k8s.io", "v1", "RoleBinding") => rbac::v1::RoleBinding,
    ("rbac.authorization.k8s.io", "v1", "ClusterRole") => rbac::v1::ClusterRole,
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => rbac::v1::ClusterRoleBinding,
    ("storage.k8s.io", "v1", "StorageClass") => storage::v1::StorageClass,
    ("policy", "v1", "PodDisruptionBudget") => policy::v1::PodDisruptionBudget,
    ("scheduling.k8s.io", "v1", "PriorityClass") => scheduling::v1::PriorityClass,
}

/// Maps of resource name to quantity, wherever they occur in an object (container
/// resources, pod overhead, node and volume capacity, quotas, limit ranges).
const QUANTITY_MAPS: &[&str] = &[
    "requests",
    "limits",
    "capacity",
    "allocatable",
    "allocatedResources",
    "hard",
    "used",
    "overhead",
    "max",
    "min",
    "default",
    "defaultRequest",
    "maxLimitRequestRatio",
];
/// Single quantities by field name.
const QUANTITY_FIELDS: &[&str] = &["sizeLimit", "averageValue"];

fn quantities_ok(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().all(|(key, child)| {
            let key = key.as_str();
            let quantity = |v: &Value| v.as_str().is_none_or(|q| crate::quantity::parse(q).is_some());
            if QUANTITY_FIELDS.contains(&key) && child.is_string() {
                quantity(child)
            } else if QUANTITY_MAPS.contains(&key)
                && let Some(entries) = child.as_object()
                && entries.values().all(Value::is_string)
            {
                entries.values().all(quantity)
            } else {
                quantities_ok(child)
            }
        }),
        Value::Array(items) => items.iter().all(quantities_ok),
        _ => true,
    }
}

/// Leaves out the plain fields upstream's Go encoding leaves out when empty (see
/// [`crate::omitempty`]); kinds without upstream facts are left alone.
pub fn omit_empty(info: &ResourceInfo, decoded: &mut Value) {
    if let Some(ty) = crate::strategic::type_of(info.group, info.version, info.kind) {
        crate::omitempty::omit_empty(ty, decoded);
    }
}

/// Fields of `input` that `decoded` lost, as upstream names them (`spec.bogusField`,
/// `spec.containers[0].bogus`), in document order.
pub fn unknown_fields(input: &Value, decoded: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, decoded, &mut String::new(), &mut out);
    out
}

/// `path` is the position of `input`; it is grown and cut back in place, as every write
/// walks its whole object and nearly all of them have no unknown field.
fn walk(input: &Value, decoded: &Value, path: &mut String, out: &mut Vec<String>) {
    use std::fmt::Write;
    let parent = path.len();
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                if parent > 0 {
                    path.push('.');
                }
                path.push_str(key);
                match b.get(key) {
                    Some(other) => walk(value, other, path, out),
                    // An explicit null for an absent optional field is not unknown.
                    None if value.is_null() => {}
                    None => out.push(path.clone()),
                }
                path.truncate(parent);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let _ = write!(path, "[{i}]");
                walk(x, y, path, out);
                path.truncate(parent);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn malformed_quantities_fail_the_decode() {
        let pods = crate::find("", "v1", "pods").unwrap();
        let pod = |cpu: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}})
        };
        assert!(roundtrip(pods, &pod("250m")).is_ok());
        let err = roundtrip(pods, &pod("lots")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Pod in version \"v1\" cannot be handled as a Pod: {}",
                crate::quantity::SYNTAX_MESSAGE
            )
        );
        let env_named_like_a_quantity = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"limits": "none", "requests": "many"}});
        assert!(roundtrip(crate::find("", "v1", "configmaps").unwrap(), &env_named_like_a_quantity).is_ok());
    }

    fn deployments() -> &'static ResourceInfo {
        crate::find("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn every_catalogued_resource_is_typed() {
        // Legacy versions are checked as the version they are stored as.
        for r in crate::resources()
            .iter()
            .filter(|r| crate::convert::deprecation(r).is_none())
        {
            assert!(is_typed(r), "{} has no type", r.kind);
        }
    }

    #[test]
    fn unknown_fields_are_named_by_path() {
        let input = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"any": "label"}},
            "spec": {"bogusField": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx", "imagePullPolice": "x"}]}}}
        });
        let decoded = roundtrip(deployments(), &input).unwrap();
        assert_eq!(
            unknown_fields(&input, &decoded),
            vec!["spec.bogusField", "spec.template.spec.containers[0].imagePullPolice"]
        );
    }

    #[test]
    fn type_errors_carry_the_path() {
        let input = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                           "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let err = roundtrip(deployments(), &input).unwrap_err();
        assert_eq!(err.path, "spec.replicas");
        assert!(
            err.to_string().starts_with(
                "Deployment in version \"v1\" cannot be handled as a Deployment: spec.replicas: invalid type"
            ),
            "{err}"
        );
    }

    #[test]
    fn round_trip_keeps_known_content() {
        let input = json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "c", "namespace": "d", "creationTimestamp": "2026-11-23T12:00:00Z",
                                        "resourceVersion": "5", "uid": "u"},
                           "data": {"k": "v"}});
        let decoded = roundtrip(crate::find("", "v1", "configmaps").unwrap(), &input).unwrap();
        assert_eq!(decoded, input);
    }
}
