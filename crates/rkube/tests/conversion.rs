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

/// The legacy manifests users still paste (shared/examples/seed/04 and 14), by kubectl
/// 1.33, 1.32 and 1.27: accepted through their removed versions with the old defaults
/// (the selector from the template's labels), stored as the current version, readable
/// through both, every answer carrying upstream's deprecation warning; discovery lists them
/// after the current versions, so kubectl keeps using those.
#[test]
fn legacy_versions_serve_old_manifests() {
    let server = common::server(&[]);
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed");
    let seed = |name: &str| seeds.join(name).to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (i, binary) in ["kubectl", "kubectl.1.32", "kubectl.1.27"].into_iter().enumerate() {
        let k = server.kubectl_binary(binary);
        if i == 0 {
            ok(k.run(&["create", "-f", &seed("03-namespace.yaml")]).unwrap());
        }
        let out = k.run(&["apply", "-f", &seed("04-deployment-legacy.yaml")]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = ok(out);
        let verb = if i == 0 { "created" } else { "unchanged" };
        assert_eq!(
            stdout.trim(),
            format!("deployment.extensions/nginx-test {verb}"),
            "{binary}"
        );
        assert!(
            stderr.contains(
                "Warning: extensions/v1beta1 Deployment is deprecated in v1.8+, unavailable in v1.16+; use apps/v1 Deployment"
            ),
            "{binary}: {stderr}"
        );
        // Stored and read as apps/v1, with the selector v1beta1 defaulted.
        let current: Value = serde_json::from_str(&ok(k
            .run(&["get", "deployment", "nginx-test", "-n", "test", "-o", "json"])
            .unwrap()))
        .unwrap();
        assert_eq!(current["apiVersion"], "apps/v1");
        assert_eq!(current["spec"]["selector"]["matchLabels"]["app"], "nginx");
        assert_eq!(current["spec"]["replicas"], 3);
        let legacy: Value = serde_json::from_str(&ok(k
            .run(&[
                "get",
                "deployments.v1beta1.extensions",
                "nginx-test",
                "-n",
                "test",
                "-o",
                "json",
            ])
            .unwrap()))
        .unwrap();
        assert_eq!(legacy["apiVersion"], "extensions/v1beta1");
        assert_eq!(legacy["metadata"]["uid"], current["metadata"]["uid"]);

        let out = k.run(&["apply", "-f", &seed("14-rbac-legacy.yaml")]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = ok(out);
        assert!(
            stdout.contains("clusterrolebinding.rbac.authorization.k8s.io/kubernetes-dashboard"),
            "{binary}: {stdout}"
        );
        assert!(
            stderr.contains("rbac.authorization.k8s.io/v1beta1 ClusterRoleBinding is deprecated in v1.17+, unavailable in v1.22+; use rbac.authorization.k8s.io/v1 ClusterRoleBinding"),
            "{binary}: {stderr}"
        );
        let binding: Value = serde_json::from_str(&ok(k
            .run(&["get", "clusterrolebinding", "kubernetes-dashboard", "-o", "json"])
            .unwrap()))
        .unwrap();
        assert_eq!(binding["apiVersion"], "rbac.authorization.k8s.io/v1");
        assert_eq!(binding["roleRef"]["name"], "cluster-admin");

        // Their schemas are published under their own version.
        let explained = ok(k
            .run(&[
                "explain",
                "deployment.spec.selector",
                "--api-version=extensions/v1beta1",
            ])
            .unwrap());
        assert!(
            explained.contains("v1beta1") && explained.contains("matchLabels"),
            "{binary}: {explained}"
        );

        // Current versions stay preferred: no warning on plain commands.
        let out = k.run(&["get", "deployments", "-n", "test"]).unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).is_empty(), "{binary}: {out:?}");
    }
    // An old Ingress converts its backends.
    let ingress = "apiVersion: networking.k8s.io/v1beta1\nkind: Ingress\nmetadata: {name: old}\nspec:\n  \
                   backend: {serviceName: web, servicePort: 80}\n  rules:\n  - host: shop.example\n    http:\n      \
                   paths:\n      - path: /api\n        backend: {serviceName: api, servicePort: http}\n";
    let k = server.kubectl();
    ok(apply_file(&k, dir.path(), "ingress.yaml", ingress, "create"));
    let stored: Value = serde_json::from_str(&ok(k.run(&["get", "ingress", "old", "-o", "json"]).unwrap())).unwrap();
    assert_eq!(stored["spec"]["defaultBackend"]["service"]["port"]["number"], 80);
    let path = &stored["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["backend"]["service"]["port"]["name"], "http");
    assert_eq!(path["pathType"], "ImplementationSpecific");
    let url = format!(
        "{}/apis/networking.k8s.io/v1beta1/namespaces/default/ingresses/old",
        server.url
    );
    let (code, body) = curl(&server, &[&url]);
    assert_eq!(code, "200");
    let old: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        old["spec"]["backend"],
        serde_json::json!({"serviceName": "web", "servicePort": 80})
    );
}
