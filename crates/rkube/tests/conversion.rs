//! Resources served in two versions from one store: autoscaling/v1 and v2
//! HorizontalPodAutoscalers, core/v1 and events.k8s.io/v1 Events. Each object is readable,
//! writable, patchable and watchable through either version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

mod common;

use common::{apply_file, curl, ok};

const HPA_V1: &str = "apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 5
  targetCPUUtilizationPercentage: 60
";

const EVENT_V1: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: web.pulled
eventTime: 2026-11-23T12:00:00.000000Z
reason: Pulled
note: Successfully pulled image nginx:1.27
type: Normal
action: Pulling
reportingController: kubelet
reportingInstance: node-1
regarding: {kind: Pod, name: web, namespace: default}
";

#[test]
fn one_object_through_two_versions() {
    let server = common::server(&[]);
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let json = |args: &[&str]| -> Value { serde_json::from_str(&ok(k.run(args).unwrap())).unwrap() };

    // Written as autoscaling/v1, stored and shown as v2 (defaulted), still v1 through v1.
    ok(apply_file(&k, dir.path(), "hpa.yaml", HPA_V1, "create"));
    let v2 = json(&["get", "horizontalpodautoscalers.v2.autoscaling", "web", "-o", "json"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["spec"]["minReplicas"], 1);
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
    let v1 = json(&["get", "horizontalpodautoscalers.v1.autoscaling", "web", "-o", "json"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
    assert!(v1["spec"].get("metrics").is_none());
    assert_eq!(v1["metadata"]["resourceVersion"], v2["metadata"]["resourceVersion"]);

    // A merge patch in v1 terms lands in v2.
    ok(k.run(&[
        "patch",
        "horizontalpodautoscalers.v1.autoscaling",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#,
    ])
    .unwrap());
    let v2 = json(&["get", "hpa", "web", "-o", "json"]);
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70);
    // Unknown fields are named in the version the client wrote.
    let bad = HPA_V1
        .replace("maxReplicas: 5", "maxReplicas: 5\n  metrics: []")
        .replace("name: web\nspec", "name: bad\nspec");
    let err = common::fails(apply_file(&k, dir.path(), "bad.yaml", &bad, "create"));
    assert!(err.contains(r#"unknown field "spec.metrics""#), "{err}");
    let listed = json(&["get", "horizontalpodautoscalers.v1.autoscaling", "-o", "json"]);
    assert_eq!(listed["items"][0]["apiVersion"], "autoscaling/v1");
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // An events.k8s.io/v1 Event is a core/v1 Event with other field names.
    ok(apply_file(&k, dir.path(), "event.yaml", EVENT_V1, "create"));
    let core = json(&["get", "events.v1.", "web.pulled", "-o", "json"]);
    assert_eq!(core["message"], "Successfully pulled image nginx:1.27");
    assert_eq!(core["involvedObject"]["name"], "web");
    assert_eq!(core["reportingComponent"], "kubelet");
    let new = json(&["get", "events.v1.events.k8s.io", "web.pulled", "-o", "json"]);
    assert_eq!(new["note"], "Successfully pulled image nginx:1.27");
    assert_eq!(new["regarding"]["kind"], "Pod");
    let table = ok(k.run(&["get", "events.v1.events.k8s.io"]).unwrap());
    assert!(table.contains("pod/web") && table.contains("Pulled"), "{table}");

    // Watches in the served version.
    let url = format!(
        "{}/apis/events.k8s.io/v1/namespaces/default/events?watch=true&timeoutSeconds=1",
        server.url
    );
    let (code, body) = curl(&server, &[&url]);
    assert_eq!(code, "200");
    let event: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(event["object"]["note"], "Successfully pulled image nginx:1.27");

    // Deleting through the other version deletes the one object.
    ok(k.run(&["delete", "events.v1.events.k8s.io", "web.pulled"]).unwrap());
    assert!(ok(k.run(&["get", "events.v1.", "-o", "name"]).unwrap()).is_empty());
    let resources = ok(k.run(&["api-resources", "--api-group", "events.k8s.io"]).unwrap());
    assert!(resources.contains("events.k8s.io/v1"), "{resources}");
}
