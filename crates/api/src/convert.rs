//! Conversion between a served version and the version its objects are stored as, for the
//! resources served in two versions: autoscaling/v1 HorizontalPodAutoscalers (stored as
//! autoscaling/v2) and events.k8s.io/v1 Events (stored as core/v1 Events). Field mappings
//! follow upstream's conversion functions; what v1 HPAs cannot express travels in the
//! same `autoscaling.alpha.kubernetes.io/*` annotations upstream uses, so a round trip
//! through v1 loses nothing.

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
        _ => object,
    }
}

/// A stored object as `info`'s version shows it.
pub fn from_storage(info: &ResourceInfo, object: Value) -> Value {
    match (info.group, info.version, info.kind) {
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => hpa_v2_to_v1(object),
        ("events.k8s.io", "v1", "Event") => renamed(object, EVENT_FIELDS, true, "events.k8s.io/v1"),
        _ => object,
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
