//! Conversion between a served version and the version its objects are stored as, for the
//! resources served in two versions: autoscaling/v1 HorizontalPodAutoscalers (stored as
//! autoscaling/v2) and events.k8s.io/v1 Events (stored as core/v1 Events). Field mappings
//! follow upstream's conversion functions; what v1 HPAs cannot express travels in the
//! same `autoscaling.alpha.kubernetes.io/*` annotations upstream uses, so a round trip
//! through v1 loses nothing.
//!
//! And the legacy versions upstream removed but old manifests still use (extensions/v1beta1,
//! apps/v1beta1 and v1beta2, batch/v1beta1, networking.k8s.io/v1beta1,
//! rbac.authorization.k8s.io/v1beta1, policy/v1beta1): defaulted as their version defaulted
//! (a selector from the template's labels, OnDelete updates, unlimited history), then
//! stored as the current version.

use serde_json::{Map, Value, json};

use crate::ResourceInfo;

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// `object` (of `info`'s version) as its storage version stores it.
pub fn to_storage(info: &ResourceInfo, object: Value) -> Value {
    match (info.group, info.version, info.kind) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_v1_to_v2(object),
        ("events.k8s.io", "v1", "Event") => renamed(object, EVENT_FIELDS, false, "v1"),
        _ if deprecation(info).is_some() => legacy_to_current(info, object),
        _ => object,
    }
}

/// A stored object as `info`'s version shows it.
pub fn from_storage(info: &ResourceInfo, object: Value) -> Value {
    match (info.group, info.version, info.kind) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_v2_to_v1(object),
        ("events.k8s.io", "v1", "Event") => renamed(object, EVENT_FIELDS, true, "events.k8s.io/v1"),
        _ if deprecation(info).is_some() => current_to_legacy(info, object),
        _ => object,
    }
}

/// Upstream's lifecycle of each legacy version: (deprecated in 1.x, removed in 1.y, the
/// replacement group/version).
fn lifecycle(group: &str, version: &str, kind: &str) -> Option<(u32, u32, &'static str)> {
    Some(match (group, version, kind) {
        ("extensions", "v1beta1", "Deployment" | "DaemonSet" | "ReplicaSet") => (8, 16, "apps/v1"),
        ("extensions", "v1beta1", "Ingress") => (14, 22, "networking.k8s.io/v1"),
        ("apps", "v1beta1", "Deployment" | "StatefulSet") => (8, 16, "apps/v1"),
        ("apps", "v1beta2", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => (9, 16, "apps/v1"),
        ("batch", "v1beta1", "CronJob") => (21, 25, "batch/v1"),
        ("networking.k8s.io", "v1beta1", "Ingress") => (19, 22, "networking.k8s.io/v1"),
        ("rbac.authorization.k8s.io", "v1beta1", _) => (17, 22, "rbac.authorization.k8s.io/v1"),
        ("policy", "v1beta1", "PodDisruptionBudget") => (21, 25, "policy/v1"),
        _ => return None,
    })
}

/// The warning every request to a legacy version gets, worded as upstream's deprecation
/// warnings.
pub fn deprecation(info: &ResourceInfo) -> Option<String> {
    let (deprecated, removed, replacement) = lifecycle(info.group, info.version, info.kind)?;
    Some(format!(
        "{} {} is deprecated in v1.{deprecated}+, unavailable in v1.{removed}+; use {replacement} {}",
        info.api_version(),
        info.kind,
        info.kind
    ))
}

/// Sets `object[path]` to `value` unless it is there.
fn default_at(object: &mut Value, path: &[&str], value: Value) {
    let mut at = object;
    for (i, key) in path.iter().enumerate() {
        let Some(map) = at.as_object_mut() else { return };
        if i + 1 == path.len() {
            map.entry(key.to_string()).or_insert(value);
            return;
        }
        at = map.entry(key.to_string()).or_insert_with(|| json!({}));
    }
}

/// The template's labels as the selector, which the first versions defaulted.
fn default_selector(object: &mut Value) {
    let labels = object.pointer("/spec/template/metadata/labels").cloned();
    if let Some(labels) = labels
        && object.pointer("/spec/selector").is_none_or(Value::is_null)
        && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("selector".into(), json!({"matchLabels": labels}));
    }
}

/// Upstream's marker for a v1beta1 PodDisruptionBudget's empty selector, which selected no
/// pods (an empty v1 selector selects all).
const PDB_EMPTY_SELECTOR: &str = "pdb.kubernetes.io/deprecated-v1beta1-empty-selector-match";

fn legacy_to_current(info: &ResourceInfo, mut object: Value) -> Value {
    let Some((_, _, current)) = lifecycle(info.group, info.version, info.kind) else {
        return object;
    };
    let rolling = |object: &mut Value, surge: Value, unavailable: Value| {
        let kind = object
            .pointer("/spec/strategy/type")
            .and_then(Value::as_str)
            .unwrap_or("RollingUpdate");
        if kind == "RollingUpdate" {
            default_at(object, &["spec", "strategy", "type"], json!("RollingUpdate"));
            default_at(object, &["spec", "strategy", "rollingUpdate", "maxSurge"], surge);
            default_at(
                object,
                &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                unavailable,
            );
        }
    };
    match (info.group, info.version, info.kind) {
        ("extensions", "v1beta1", "Deployment") => {
            default_selector(&mut object);
            default_at(&mut object, &["spec", "revisionHistoryLimit"], json!(i32::MAX));
            default_at(&mut object, &["spec", "progressDeadlineSeconds"], json!(i32::MAX));
            rolling(&mut object, json!(1), json!(1));
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("rollbackTo");
            }
        }
        ("apps", "v1beta1", "Deployment") => {
            default_selector(&mut object);
            default_at(&mut object, &["spec", "revisionHistoryLimit"], json!(2));
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("rollbackTo");
            }
        }
        ("extensions", "v1beta1", "ReplicaSet") => default_selector(&mut object),
        ("extensions", "v1beta1", "DaemonSet") => {
            default_selector(&mut object);
            default_at(&mut object, &["spec", "updateStrategy", "type"], json!("OnDelete"));
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("templateGeneration");
            }
        }
        ("apps", "v1beta1", "StatefulSet") => {
            default_selector(&mut object);
            default_at(&mut object, &["spec", "updateStrategy", "type"], json!("OnDelete"));
        }
        (_, _, "Ingress") => ingress_backends(&mut object, true),
        ("policy", "v1beta1", "PodDisruptionBudget") => {
            let empty = object.pointer("/spec/selector").is_some_and(|s| {
                s.as_object()
                    .is_some_and(|m| m.values().all(|v| v.is_null() || v == &json!({}) || v == &json!([])))
            });
            if empty && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert(
                    "selector".into(),
                    json!({"matchExpressions": [{"key": PDB_EMPTY_SELECTOR, "operator": "Exists"}]}),
                );
            }
        }
        _ => {}
    }
    object["apiVersion"] = json!(current);
    object
}

fn current_to_legacy(info: &ResourceInfo, mut object: Value) -> Value {
    match info.kind {
        "Ingress" => ingress_backends(&mut object, false),
        "PodDisruptionBudget" => {
            let marked = object
                .pointer("/spec/selector/matchExpressions/0/key")
                .and_then(Value::as_str)
                == Some(PDB_EMPTY_SELECTOR);
            if marked && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("selector".into(), json!({}));
            }
        }
        _ => {}
    }
    if object.is_object() {
        object["apiVersion"] = json!(info.api_version());
    }
    object
}

/// An Ingress backend between v1beta1 (`serviceName`, `servicePort`) and v1 (`service`
/// with `name` and a `port` by number or name); `spec.backend` is v1's `defaultBackend`.
fn ingress_backends(object: &mut Value, to_current: bool) {
    let convert = |backend: &mut Value| {
        let Some(map) = backend.as_object_mut() else { return };
        if to_current {
            let name = map.remove("serviceName");
            let port = map.remove("servicePort");
            if name.is_some() || port.is_some() {
                let port = match port {
                    Some(Value::String(text)) => json!({"name": text}),
                    Some(number) => json!({"number": number}),
                    None => json!({}),
                };
                map.insert("service".into(), json!({"name": name, "port": port}));
            }
        } else if let Some(service) = map.remove("service") {
            map.insert(
                "serviceName".into(),
                service.get("name").cloned().unwrap_or(Value::Null),
            );
            let port = service.get("port");
            let port = port
                .and_then(|p| p.get("number").cloned())
                .or_else(|| port.and_then(|p| p.get("name").cloned()))
                .unwrap_or(Value::Null);
            map.insert("servicePort".into(), port);
        }
    };
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let (from, to) = if to_current {
        ("backend", "defaultBackend")
    } else {
        ("defaultBackend", "backend")
    };
    if let Some(mut backend) = spec.remove(from) {
        convert(&mut backend);
        spec.insert(to.into(), backend);
    }
    for rule in spec
        .get_mut("rules")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for path in rule
            .pointer_mut("/http/paths")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if to_current {
                default_at(path, &["pathType"], json!("ImplementationSpecific"));
            }
            if let Some(backend) = path.get_mut("backend") {
                convert(backend);
            }
        }
    }
}

/// (events.k8s.io/v1 name, core/v1 name) of the fields that differ.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn renamed(mut object: Value, fields: &[(&str, &str)], to_first: bool, api_version: &str) -> Value {
    if let Some(map) = object.as_object_mut() {
        for (first, second) in fields {
            let (from, to) = if to_first { (second, first) } else { (first, second) };
            if let Some(value) = map.remove(*from) {
                map.insert((*to).to_string(), value);
            }
        }
        map.insert("apiVersion".into(), json!(api_version));
    }
    object
}

fn annotations(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let metadata = object.as_object_mut()?.entry("metadata").or_insert_with(|| json!({}));
    metadata
        .as_object_mut()?
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

fn drop_empty_annotations(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut)
        && metadata
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
    {
        metadata.remove("annotations");
    }
}

fn is_cpu_utilization(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && metric.pointer("/resource/target/type").and_then(Value::as_str) == Some("Utilization")
}

fn is_cpu_status(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
}

fn hpa_v2_to_v1(mut object: Value) -> Value {
    object["apiVersion"] = json!("autoscaling/v1");
    let mut moved = Vec::new();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = spec
            .remove("metrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
        if let Some(target) = cpu
            .first()
            .and_then(|m| m.pointer("/resource/target/averageUtilization"))
        {
            spec.insert("targetCPUUtilizationPercentage".into(), target.clone());
        }
        if !others.is_empty() {
            moved.push((METRICS, Value::Array(others)));
        }
        if let Some(behavior) = spec.remove("behavior") {
            moved.push((BEHAVIOR, behavior));
        }
    }
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let current = status
            .remove("currentMetrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let (cpu, others): (Vec<Value>, Vec<Value>) = current.into_iter().partition(is_cpu_status);
        if let Some(value) = cpu
            .first()
            .and_then(|m| m.pointer("/resource/current/averageUtilization"))
        {
            status.insert("currentCPUUtilizationPercentage".into(), value.clone());
        }
        if !others.is_empty() {
            moved.push((CURRENT_METRICS, Value::Array(others)));
        }
        if let Some(conditions) = status.remove("conditions") {
            moved.push((CONDITIONS, conditions));
        }
        // v1 requires desiredReplicas and currentReplicas in a status.
        status.entry("currentReplicas").or_insert(json!(0));
        status.entry("desiredReplicas").or_insert(json!(0));
    }
    if let Some(annotations) = annotations(&mut object) {
        for (key, value) in moved {
            annotations.insert(key.into(), json!(value.to_string()));
        }
    }
    drop_empty_annotations(&mut object);
    object
}

fn hpa_v1_to_v2(mut object: Value) -> Value {
    object["apiVersion"] = json!("autoscaling/v2");
    let mut carried = |key: &str| -> Option<Value> {
        let text = annotations(&mut object)?.remove(key)?;
        serde_json::from_str(text.as_str()?).ok()
    };
    let (others, behavior, current, conditions) = (
        carried(METRICS),
        carried(BEHAVIOR),
        carried(CURRENT_METRICS),
        carried(CONDITIONS),
    );
    drop_empty_annotations(&mut object);
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        let mut metrics = Vec::new();
        if let Some(target) = spec.remove("targetCPUUtilizationPercentage") {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": target}}}));
        }
        metrics.extend(others.and_then(|o| o.as_array().cloned()).unwrap_or_default());
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(behavior) = behavior {
            spec.insert("behavior".into(), behavior);
        }
    }
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let mut metrics = Vec::new();
        if let Some(value) = status.remove("currentCPUUtilizationPercentage") {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": value}}}));
        }
        metrics.extend(current.and_then(|c| c.as_array().cloned()).unwrap_or_default());
        if !metrics.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(metrics));
        }
        if let Some(conditions) = conditions {
            status.insert("conditions".into(), conditions);
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find;

    #[test]
    fn hpa_v1_and_v2_round_trip() {
        let v1_info = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
            "status": {"currentReplicas": 2, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 75}});
        let v2 = to_storage(v1_info, v1.clone());
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        assert_eq!(
            v2["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            75
        );
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(from_storage(v1_info, v2), v1);
    }

    #[test]
    fn what_v1_cannot_say_travels_in_annotations() {
        let v1_info = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let memory = json!({"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "AverageValue", "averageValue": "500Mi"}}});
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                     "metrics": [memory], "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "status": {"currentReplicas": 1, "desiredReplicas": 1,
                       "conditions": [{"type": "AbleToScale", "status": "True"}]}});
        let v1 = from_storage(v1_info, v2.clone());
        let annotations = &v1["metadata"]["annotations"];
        assert!(annotations[METRICS].as_str().unwrap().contains("500Mi"));
        assert!(annotations[BEHAVIOR].is_string() && annotations[CONDITIONS].is_string());
        assert!(v1["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(to_storage(v1_info, v1), v2);
    }

    fn legacy(group: &str, version: &str, plural: &str) -> &'static ResourceInfo {
        crate::find(group, version, plural).unwrap()
    }

    #[test]
    fn legacy_deployments_default_as_their_version_did() {
        let info = legacy("extensions", "v1beta1", "deployments");
        let seed = json!({"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": {"name": "n"},
            "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": []}}}});
        let stored = to_storage(info, seed);
        assert_eq!(stored["apiVersion"], "apps/v1");
        assert_eq!(stored["spec"]["selector"], json!({"matchLabels": {"app": "nginx"}}));
        assert_eq!(stored["spec"]["revisionHistoryLimit"], i32::MAX);
        assert_eq!(
            stored["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": 1, "maxUnavailable": 1})
        );
        assert_eq!(from_storage(info, stored)["apiVersion"], "extensions/v1beta1");
        assert_eq!(
            deprecation(info).unwrap(),
            "extensions/v1beta1 Deployment is deprecated in v1.8+, unavailable in v1.16+; use apps/v1 Deployment"
        );
        let sts = to_storage(
            legacy("apps", "v1beta1", "statefulsets"),
            json!({"spec": {"template": {"metadata": {"labels": {"app": "db"}}}}}),
        );
        assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    }

    #[test]
    fn legacy_ingress_backends_convert_both_ways() {
        let info = legacy("networking.k8s.io", "v1beta1", "ingresses");
        let old = json!({"apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress",
            "spec": {"backend": {"serviceName": "web", "servicePort": 80},
                     "rules": [{"http": {"paths": [{"path": "/", "backend": {"serviceName": "api", "servicePort": "http"}}]}}]}});
        let stored = to_storage(info, old.clone());
        assert_eq!(
            stored["spec"]["defaultBackend"],
            json!({"service": {"name": "web", "port": {"number": 80}}})
        );
        let path = &stored["spec"]["rules"][0]["http"]["paths"][0];
        assert_eq!(
            path["backend"],
            json!({"service": {"name": "api", "port": {"name": "http"}}})
        );
        assert_eq!(path["pathType"], "ImplementationSpecific");
        let back = from_storage(info, stored);
        assert_eq!(back["spec"]["backend"], old["spec"]["backend"]);
        assert_eq!(
            back["spec"]["rules"][0]["http"]["paths"][0]["backend"],
            old["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        );
    }

    #[test]
    fn an_empty_v1beta1_budget_selector_still_selects_nothing() {
        let info = legacy("policy", "v1beta1", "poddisruptionbudgets");
        let stored = to_storage(info, json!({"spec": {"selector": {}, "minAvailable": 1}}));
        assert_eq!(
            stored["spec"]["selector"]["matchExpressions"][0]["key"],
            PDB_EMPTY_SELECTOR
        );
        assert_eq!(from_storage(info, stored)["spec"]["selector"], json!({}));
    }

    #[test]
    fn events_rename_their_fields() {
        let info = find("events.k8s.io", "v1", "events").unwrap();
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": "Pulled", "reason": "Pulled",
            "reportingComponent": "kubelet", "reportingInstance": "n1", "source": {"component": "kubelet"},
            "count": 2, "type": "Normal"});
        let event = from_storage(info, core.clone());
        assert_eq!(event["apiVersion"], "events.k8s.io/v1");
        assert_eq!(event["regarding"]["name"], "web");
        assert_eq!(event["note"], "Pulled");
        assert_eq!(event["reportingController"], "kubelet");
        assert_eq!(event["deprecatedCount"], 2);
        assert!(event.get("message").is_none());
        assert_eq!(to_storage(info, event), core);
    }
}
