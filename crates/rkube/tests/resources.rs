//! Stock kubectl driving resources on a real `rkube server`: the REST verbs, selectors,
//! watch, deletion with finalizers, namespaces, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rkube_testkit::RkubeServer;
use serde_json::Value;

mod common;

use common::{apply_file, fails, ok};

fn server() -> RkubeServer {
    common::server(&[])
}

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  labels: {app: web, tier: front}
data:
  key: value
";

#[test]
fn create_get_list_patch_replace_delete() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    for binary in ["kubectl", "kubectl.1.27"] {
        let k = server.kubectl_binary(binary);
        assert_eq!(
            ok(apply_file(&k, dir.path(), "cm.yaml", CONFIGMAP, "create")).trim(),
            "configmap/web-config created"
        );
        let err = fails(apply_file(&k, dir.path(), "cm.yaml", CONFIGMAP, "create"));
        assert!(
            err.contains("(AlreadyExists)") && err.contains("configmaps \"web-config\" already exists"),
            "{err}"
        );

        let object: Value =
            serde_json::from_str(&ok(k.run(&["get", "cm", "web-config", "-o", "json"]).unwrap())).unwrap();
        assert_eq!(object["data"]["key"], "value");
        assert_eq!(object["metadata"]["namespace"], "default");
        assert!(object["metadata"]["uid"].as_str().unwrap().len() == 36);
        assert!(
            object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
                > 0
        );
        let table = ok(k.run(&["get", "configmaps"]).unwrap());
        assert!(table.starts_with("NAME") && table.contains("web-config"), "{table}");
        assert_eq!(
            ok(k.run(&["get", "cm", "-o", "name"]).unwrap()).trim(),
            "configmap/web-config"
        );

        // Selectors.
        assert!(
            ok(
                k.run(&["get", "cm", "-l", "app=web,tier in (front,back)", "-o", "name"])
                    .unwrap()
            )
            .contains("web-config")
        );
        assert!(
            ok(k.run(&["get", "cm", "-l", "app!=web", "-o", "name"]).unwrap())
                .trim()
                .is_empty()
        );
        assert!(
            ok(k.run(&[
                "get",
                "cm",
                "--field-selector",
                "metadata.name=web-config",
                "-o",
                "name"
            ])
            .unwrap())
            .contains("web-config")
        );
        let err = fails(k.run(&["get", "cm", "--field-selector", "data.key=value"]).unwrap());
        assert!(err.contains("field label not supported: data.key"), "{err}");
        let all = ok(k.run(&["get", "cm", "-A"]).unwrap());
        assert!(all.lines().next().unwrap().starts_with("NAMESPACE"), "{all}");

        // label / annotate (merge patch), patch --type merge|json.
        ok(k.run(&["label", "cm", "web-config", "release=1"]).unwrap());
        ok(k.run(&["annotate", "cm", "web-config", "note=hello"]).unwrap());
        ok(k.run(&[
            "patch",
            "cm",
            "web-config",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"extra":"1"}}"#,
        ])
        .unwrap());
        ok(k.run(&[
            "patch",
            "cm",
            "web-config",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/data/key"}]"#,
        ])
        .unwrap());
        let object: Value =
            serde_json::from_str(&ok(k.run(&["get", "cm", "web-config", "-o", "json"]).unwrap())).unwrap();
        assert_eq!(object["metadata"]["labels"]["release"], "1");
        assert_eq!(object["metadata"]["annotations"]["note"], "hello");
        assert_eq!(object["data"], serde_json::json!({"extra": "1"}));
        let err = fails(
            k.run(&[
                "patch",
                "cm",
                "web-config",
                "--type",
                "json",
                "-p",
                r#"[{"op":"test","path":"/data/extra","value":"2"}]"#,
            ])
            .unwrap(),
        );
        assert!(err.contains("json patch"), "{err}");

        // replace: GET then PUT with the resourceVersion.
        let replaced = CONFIGMAP.replace("key: value", "key: replaced");
        ok(apply_file(&k, dir.path(), "cm2.yaml", &replaced, "replace"));
        let object: Value =
            serde_json::from_str(&ok(k.run(&["get", "cm", "web-config", "-o", "json"]).unwrap())).unwrap();
        assert_eq!(object["data"]["key"], "replaced");

        // dry run changes nothing.
        ok(k.run(&["delete", "cm", "web-config", "--dry-run=server"]).unwrap());
        ok(k.run(&["get", "cm", "web-config"]).unwrap());

        assert_eq!(
            ok(k.run(&["delete", "cm", "web-config"]).unwrap()).trim(),
            "configmap \"web-config\" deleted"
        );
        let err = fails(k.run(&["get", "cm", "web-config"]).unwrap());
        assert!(
            err.contains("(NotFound)") && err.contains("configmaps \"web-config\" not found"),
            "{err}"
        );
    }
}

#[test]
fn discovery_lists_what_is_served() {
    let server = server();
    for binary in ["kubectl", "kubectl.1.27"] {
        let k = server.kubectl_binary(binary);
        let resources = ok(k.run(&["api-resources"]).unwrap());
        for expected in [
            "deployments",
            "deploy",
            "apps/v1",
            "leases",
            "clusterroles",
            "priorityclasses",
        ] {
            assert!(
                resources.contains(expected),
                "{binary}: {expected} missing from\n{resources}"
            );
        }
        let versions = ok(k.run(&["api-versions"]).unwrap());
        for expected in ["v1\n", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"] {
            assert!(
                versions.contains(expected),
                "{binary}: {expected} missing from\n{versions}"
            );
        }
        assert!(
            !versions.contains("batch/v2alpha1"),
            "only served versions are advertised"
        );
        assert!(
            versions.contains("extensions/v1beta1"),
            "legacy versions for old manifests"
        );
        assert!(
            versions.contains("authentication.k8s.io/v1beta1"),
            "served for kubectl 1.28's whoami"
        );
        // Short names resolve through discovery.
        ok(k.run(&["get", "deploy,sts,ds,rs,cj,netpol,pdb,sc,pc"]).unwrap());
    }
}

#[test]
fn namespaces_and_bad_input() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let names = ok(k.run(&["get", "ns", "-o", "name"]).unwrap());
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&format!("namespace/{ns}")), "{names}");
    }
    let in_missing = CONFIGMAP.replace("name: web-config", "name: web-config\n  namespace: nowhere");
    let err = fails(apply_file(&k, dir.path(), "missing.yaml", &in_missing, "create"));
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");

    let bad_name = CONFIGMAP.replace("name: web-config", "name: Web_Config");
    let err = fails(apply_file(&k, dir.path(), "bad.yaml", &bad_name, "create"));
    assert!(
        err.contains("ConfigMap \"Web_Config\" is invalid: metadata.name: Invalid value: \"Web_Config\": a lowercase RFC 1123 subdomain"),
        "{err}"
    );
    assert!(fails(k.run(&["get", "cm", "Web_Config"]).unwrap()).contains("NotFound"));

    // A namespace being deleted is Terminating and refuses new content.
    ok(apply_file(
        &k,
        dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: doomed\n",
        "create",
    ));
    ok(k.run(&["delete", "ns", "doomed", "--wait=false"]).unwrap());
    let phase = ok(k
        .run(&["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"])
        .unwrap());
    assert_eq!(phase, "Terminating");
    let in_doomed = CONFIGMAP.replace("name: web-config", "name: web-config\n  namespace: doomed");
    let err = fails(apply_file(&k, dir.path(), "doomed.yaml", &in_doomed, "create"));
    assert!(err.contains("because it is being terminated"), "{err}");
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let held = CONFIGMAP.replace("  labels:", "  finalizers: [example.com/hold]\n  labels:");
    ok(apply_file(&k, dir.path(), "held.yaml", &held, "create"));
    ok(k.run(&["delete", "cm", "web-config", "--wait=false"]).unwrap());
    let object: Value = serde_json::from_str(&ok(k.run(&["get", "cm", "web-config", "-o", "json"]).unwrap())).unwrap();
    assert!(object["metadata"]["deletionTimestamp"].is_string(), "{object}");

    // kubectl delete --wait returns once the finalizer is gone.
    let mut waiter = std::process::Command::new(rkube_testkit::resolve_kubectl("kubectl.1.33"))
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["wait", "--for=delete", "cm/web-config", "--timeout=60s"])
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(k.run(&[
        "patch",
        "cm",
        "web-config",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .unwrap());
    let status = waiter.wait().unwrap();
    assert!(status.success());
    assert!(fails(k.run(&["get", "cm", "web-config"]).unwrap()).contains("NotFound"));
}

#[test]
fn watch_streams_changes() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let mut watch = std::process::Command::new(rkube_testkit::resolve_kubectl("kubectl.1.33"))
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["get", "cm", "-w", "-o", "name"])
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..3 {
        let yaml = CONFIGMAP.replace("name: web-config", &format!("name: watched-{i}"));
        ok(apply_file(&k, dir.path(), &format!("w{i}.yaml"), &yaml, "create"));
    }
    ok(k.run(&["delete", "cm", "watched-0"]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stdout = watch.stdout.take().unwrap();
    let mut seen = String::new();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.matches("configmap/watched-").count() >= 4 {
                break;
            }
        }
        text
    });
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(watch.kill());
    drop(watch.wait());
    seen.push_str(&reader.join().unwrap());
    for i in 0..3 {
        assert!(seen.contains(&format!("configmap/watched-{i}")), "{seen}");
    }
    assert!(
        seen.matches("configmap/watched-0").count() >= 2,
        "the delete was streamed too: {seen}"
    );
}

const DEPLOYMENT_WITH_TYPO: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  bogusField: true
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        imagePullPolice: Always
";

#[test]
fn field_validation_strict_warn_ignore() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOYMENT_WITH_TYPO).unwrap();
    let path = file.to_str().unwrap();

    // kubectl validates strictly by default, on the server once the OpenAPI v3 document of
    // apps/v1 shows the PATCH operation with fieldValidation (no v2 fallback): nothing is
    // stored. kubectl 1.27 decides the same way.
    let err = fails(k.run(&["create", "-f", path, "-v=6"]).unwrap());
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.bogusField", unknown field "spec.template.spec.containers[0].imagePullPolice""#),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("/openapi/v3/apis/apps/v1?hash=") && l.contains(r#"status="200 OK""#)),
        "{err}"
    );
    assert!(!err.contains("/openapi/v2"), "{err}");
    let err = fails(
        server
            .kubectl_binary("kubectl.1.27")
            .run(&["create", "-f", path])
            .unwrap(),
    );
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.bogusField""#),
        "{err}"
    );
    assert!(fails(k.run(&["get", "deploy", "web"]).unwrap()).contains("NotFound"));

    // Warn: created, with a warning per dropped field.
    let out = k.run(&["create", "-f", path, "--validate=warn"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(ok(out).contains("deployment.apps/web created"));
    assert!(
        stderr.contains(r#"Warning: unknown field "spec.bogusField""#),
        "{stderr}"
    );
    let object: Value = serde_json::from_str(&ok(k.run(&["get", "deploy", "web", "-o", "json"]).unwrap())).unwrap();
    assert!(object["spec"].get("bogusField").is_none(), "unknown fields are dropped");
    assert_eq!(object["spec"]["replicas"], 2);
    assert_eq!(object["metadata"]["generation"], 1);

    // Ignore: silently dropped.
    ok(k.run(&["delete", "deploy", "web"]).unwrap());
    let out = k.run(&["create", "-f", path, "--validate=false"]).unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Warning"), "{out:?}");
    ok(out);

    // A spec change bumps generation; a label change does not.
    ok(k.run(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ])
    .unwrap());
    ok(k.run(&["label", "deploy", "web", "x=y"]).unwrap());
    let generation = ok(k
        .run(&["get", "deploy", "web", "-o", "jsonpath={.metadata.generation}"])
        .unwrap());
    assert_eq!(generation, "2");

    // Type errors name the field.
    let wrong = DEPLOYMENT_WITH_TYPO
        .replace("replicas: 2", "replicas: three")
        .replace("  bogusField: true\n", "")
        .replace("        imagePullPolice: Always\n", "")
        .replace("name: web\nspec", "name: web2\nspec");
    std::fs::write(&file, wrong).unwrap();
    let err = fails(k.run(&["create", "-f", path]).unwrap());
    assert!(
        err.contains("Deployment in version \"v1\" cannot be handled as a Deployment: spec.replicas: invalid type"),
        "{err}"
    );
}

#[test]
fn yaml_bodies_and_raw_errors() {
    let server = server();
    let curl = |args: &[&str]| common::curl(&server, args);
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url);
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/yaml",
        "--data-binary",
        CONFIGMAP,
        &url,
    ]);
    assert_eq!(code, "201", "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["data"]["key"], "value");

    for (content_type, payload, expected_code, expected) in [
        ("application/json", "{not json", "400", "json parse error"),
        ("application/json", "[1,2]", "400", "not a JSON object"),
        (
            "application/json",
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"}}"#,
            "400",
            "must be of type ConfigMap",
        ),
        (
            "application/json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"other"}}"#,
            "400",
            "does not match the namespace",
        ),
        ("application/xml", "<x/>", "415", "unknown format"),
    ] {
        let header = format!("Content-Type: {content_type}");
        let (code, body) = curl(&["-X", "POST", "-H", &header, "--data-binary", payload, &url]);
        assert_eq!(code, expected_code, "{payload}: {body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert!(
            status["message"].as_str().unwrap().contains(expected),
            "{payload}: {body}"
        );
    }
    let too_big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let big_file = server.dir().join("big.json");
    std::fs::write(&big_file, too_big).unwrap();
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", big_file.display()),
        &url,
    ]);
    assert_eq!(code, "413", "{body}");
    let (code, _) = curl(&[&format!("{url}?labelSelector=app%3D%3D%3D")]);
    assert_eq!(code, "400");
}

/// The manifests users copy (shared/examples/seed) are accepted unchanged and defaulted as
/// upstream defaults them. 04 and 14 use removed API versions (served with the legacy
/// versions work); reaching their running state needs the controllers and node agent.
#[test]
fn seed_manifests_are_accepted_and_defaulted() {
    let server = server();
    let k = server.kubectl();
    // shared/ stands beside the clone (as CI checks it out).
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed");
    let mut files: Vec<_> = std::fs::read_dir(&seed)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the seed manifests (shared/ beside the clone) are missing",
                seed.display()
            )
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "seed manifests missing from {}", seed.display());
    // Every one of them, the legacy 04 and 14 included.
    for file in files {
        ok(k.run(&["create", "-f", file.to_str().unwrap()]).unwrap());
    }
    let get = |args: &[&str]| ok(k.run(args).unwrap());
    assert_eq!(
        get(&["get", "pod", "nginx-test", "-o", "jsonpath={.spec.restartPolicy}"]),
        "Always"
    );
    assert_eq!(
        get(&["get", "pod", "nginx-test", "-o", "jsonpath={.spec.serviceAccountName}"]),
        "default"
    );
    assert_eq!(
        get(&["get", "pod", "nginx-test", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
    let strategy = get(&[
        "get",
        "deploy",
        "wordpress-deployment",
        "-o",
        "jsonpath={.spec.strategy.rollingUpdate.maxSurge}",
    ]);
    assert_eq!(strategy, "25%");
    let uid = get(&["get", "job", "once", "-o", "jsonpath={.metadata.uid}"]);
    let selector = get(&[
        "get",
        "job",
        "once",
        "-o",
        "jsonpath={.spec.selector.matchLabels.batch\\.kubernetes\\.io/controller-uid}",
    ]);
    assert_eq!(selector, uid);
    assert_eq!(
        get(&["get", "svc", "my-service", "-o", "jsonpath={.spec.type}"]),
        "ClusterIP"
    );
    assert!(get(&["get", "hpa", "-o", "name"]).contains("horizontalpodautoscaler.autoscaling/web"));

    // Upstream's printer columns, wide ones with -o wide.
    let header = |args: &[&str]| {
        get(args)
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(header(&["get", "pods"]), "NAME READY STATUS RESTARTS AGE");
    assert_eq!(
        header(&["get", "pods", "-o", "wide"]),
        "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES"
    );
    assert_eq!(
        header(&["get", "deploy", "-o", "wide"]),
        "NAME READY UP-TO-DATE AVAILABLE AGE CONTAINERS IMAGES SELECTOR"
    );
    assert_eq!(header(&["get", "svc"]), "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE");
    assert_eq!(header(&["get", "cm"]), "NAME DATA AGE");
    assert_eq!(header(&["get", "jobs"]), "NAME STATUS COMPLETIONS DURATION AGE");
    let pod_row = get(&["get", "pod", "rss-site", "--no-headers"]);
    let cells: Vec<&str> = pod_row.split_whitespace().collect();
    assert_eq!(cells[..4], ["rss-site", "0/2", "Pending", "0"], "{pod_row}");
    let svc_row = get(&["get", "svc", "my-multiport-service", "--no-headers"]);
    assert!(svc_row.contains("80/TCP,443/TCP"), "{svc_row}");

    // Empty plain fields are stored as upstream's Go types leave them: left out (and
    // defaulted where a default exists), while pointer fields keep an explicit zero.
    let dir = tempfile::tempdir().unwrap();
    ok(apply_file(&k, dir.path(), "empties.yaml", EMPTIES, "apply"));
    let d: Value = serde_json::from_str(&get(&["get", "deploy", "empties", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(d["spec"]["revisionHistoryLimit"], 0);
    for absent in ["paused", "minReadySeconds"] {
        assert!(d["spec"].get(absent).is_none(), "{absent}: {}", d["spec"]);
    }
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod["dnsPolicy"], "ClusterFirst",
        "an empty string is no value: defaulted"
    );
    for absent in ["hostNetwork", "nodeSelector", "tolerations"] {
        assert!(pod.get(absent).is_none(), "{absent}: {pod}");
    }
    assert_eq!(pod["automountServiceAccountToken"], false, "a pointer keeps false");
    let container = pod["containers"][0].as_object().unwrap();
    for absent in ["args", "env", "stdin", "workingDir"] {
        assert!(!container.contains_key(absent), "{absent}: {container:?}");
    }
    let claim: Value = serde_json::from_str(&get(&["get", "pvc", "no-class", "-o", "json"])).unwrap();
    assert_eq!(claim["spec"]["storageClassName"], "", "an explicit empty class stays");
    assert!(claim["spec"].get("volumeName").is_none());
}

const EMPTIES: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: empties}
spec:
  replicas: 0
  revisionHistoryLimit: 0
  paused: false
  minReadySeconds: 0
  selector: {matchLabels: {app: empties}}
  template:
    metadata: {labels: {app: empties}}
    spec:
      dnsPolicy: \"\"
      hostNetwork: false
      automountServiceAccountToken: false
      nodeSelector: {}
      tolerations: []
      containers:
      - {name: c, image: registry.local/pause:3.10, args: [], env: [], stdin: false, workingDir: \"\"}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: no-class}
spec:
  storageClassName: \"\"
  volumeName: \"\"
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
";

#[test]
fn scale_subresource() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let deployment = DEPLOYMENT_WITH_TYPO
        .replace("  bogusField: true\n", "")
        .replace("        imagePullPolice: Always\n", "");
    for binary in ["kubectl", "kubectl.1.27"] {
        let k = server.kubectl_binary(binary);
        ok(apply_file(&k, dir.path(), "d.yaml", &deployment, "create"));
        assert!(ok(k.run(&["scale", "deploy", "web", "--replicas=5"]).unwrap()).contains("scaled"));
        assert_eq!(
            ok(k.run(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
                .unwrap()),
            "5"
        );
        // Recorded as upstream records it: through the scale subresource, owning replicas.
        let written: Value = serde_json::from_str(&ok(k
            .run(&["get", "deploy", "web", "-o", "json", "--show-managed-fields"])
            .unwrap()))
        .unwrap();
        let scaled: Vec<&Value> = written["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["subresource"] == "scale")
            .collect();
        assert_eq!(scaled.len(), 1, "{written}");
        assert_eq!(scaled[0]["operation"], "Update");
        assert_eq!(scaled[0]["apiVersion"], "apps/v1");
        assert_eq!(scaled[0]["fieldsV1"], serde_json::json!({"f:spec": {"f:replicas": {}}}));
        // --current-replicas: GET the Scale, then PUT it back (without Content-Type).
        ok(
            k.run(&["scale", "deploy", "web", "--current-replicas=5", "--replicas=1"])
                .unwrap(),
        );
        let err = fails(
            k.run(&["scale", "deploy", "web", "--current-replicas=5", "--replicas=2"])
                .unwrap(),
        );
        assert!(err.contains("Expected replicas to be 5, was 1"), "{err}");
        let scale: Value = serde_json::from_str(&ok(k
            .run(&["get", "--raw", "/apis/apps/v1/namespaces/default/deployments/web/scale"])
            .unwrap()))
        .unwrap();
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["spec"]["replicas"], 1);
        assert_eq!(scale["status"]["selector"], "app=web");
        let err = fails(k.run(&["scale", "deploy", "web", "--replicas=-1"]).unwrap());
        assert!(err.contains("replicas") || err.contains("Invalid"), "{err}");
        assert!(
            fails(k.run(&["scale", "deploy", "nope", "--replicas=1"]).unwrap()).contains("no objects passed to scale")
        );
        ok(k.run(&["delete", "deploy", "web"]).unwrap());
    }
}

#[test]
fn validation_errors_name_each_field() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let good = DEPLOYMENT_WITH_TYPO
        .replace("  bogusField: true\n", "")
        .replace("        imagePullPolice: Always\n", "");
    let mismatch = good.replace(
        "      labels: {app: web}\n    spec:",
        "      labels: {app: db}\n    spec:",
    );
    let err = fails(apply_file(&k, dir.path(), "mismatch.yaml", &mismatch, "create"));
    assert!(
        err.contains(r#"The Deployment "web" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{"app":"db"}: `selector` does not match template `labels`"#),
        "{err}"
    );
    let two = good.replace(
        "      - name: web\n        image: nginx:1.27\n",
        "      - name: web\n        image: nginx:1.27\n      - name: web\n",
    );
    let err = fails(apply_file(&k, dir.path(), "two.yaml", &two, "create"));
    assert!(
        err.contains(r#"spec.template.spec.containers[1].name: Duplicate value: "web""#),
        "{err}"
    );
    assert!(
        err.contains("spec.template.spec.containers[1].image: Required value"),
        "{err}"
    );
    // Quantities: malformed ones fail the decode, requests may not exceed limits.
    let bad_quantity = good.replace(
        "        image: nginx:1.27
",
        "        image: nginx:1.27
        resources: {requests: {cpu: lots}}
",
    );
    let err = fails(apply_file(&k, dir.path(), "quantity.yaml", &bad_quantity, "create"));
    assert!(
        err.contains("Deployment in version \"v1\" cannot be handled as a Deployment: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
        "{err}"
    );
    let over_limit = good.replace(
        "        image: nginx:1.27
",
        "        image: nginx:1.27
        resources: {requests: {memory: 2Gi}, limits: {memory: 1Gi}}
",
    );
    let err = fails(apply_file(&k, dir.path(), "limit.yaml", &over_limit, "create"));
    assert!(
        err.contains(r#"spec.template.spec.containers[0].resources.requests: Invalid value: "2Gi": must be less than or equal to memory limit of 1Gi"#),
        "{err}"
    );
    assert!(
        fails(k.run(&["get", "deploy", "web"]).unwrap()).contains("NotFound"),
        "nothing stored"
    );

    ok(apply_file(&k, dir.path(), "good.yaml", &good, "create"));
    let err = fails(k.run(&["patch", "deploy", "web", "--type", "merge", "-p", r#"{"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}"#]).unwrap());
    assert!(
        err.contains("spec.selector: Invalid value:") && err.contains("field is immutable"),
        "{err}"
    );
    let generation = ok(k
        .run(&["get", "deploy", "web", "-o", "jsonpath={.metadata.generation}"])
        .unwrap());
    assert_eq!(generation, "1", "a refused update changes nothing");
}

#[test]
fn pod_binding_eviction_and_streams() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let post = |path: &str, body: &str| {
        let url = format!("{}{path}", server.url);
        common::curl(
            &server,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &url,
            ],
        )
    };
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  containers:\n  - name: c\n    image: nginx:1.27\n"
        )
    };
    ok(apply_file(&k, dir.path(), "p1.yaml", &pod("p1"), "create"));
    ok(apply_file(&k, dir.path(), "p2.yaml", &pod("p2"), "create"));

    // Binding: once.
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p1"},"target":{"apiVersion":"v1","kind":"Node","name":"node-1"}}"#;
    let (code, body) = post("/api/v1/namespaces/default/pods/p1/binding", binding);
    assert_eq!(code, "201", "{body}");
    assert_eq!(
        ok(k.run(&["get", "pod", "p1", "-o", "jsonpath={.spec.nodeName}"]).unwrap()),
        "node-1"
    );
    let scheduled = r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}"#;
    assert_eq!(ok(k.run(&["get", "pod", "p1", "-o", scheduled]).unwrap()), "True");
    let (code, body) = post(
        "/api/v1/namespaces/default/pods/p1/binding",
        &binding.replace("node-1", "node-2"),
    );
    assert_eq!(code, "409", "{body}");
    assert!(
        body.contains(r#"pod p1 is already assigned to node \"node-1\""#),
        "{body}"
    );

    // A pod with scheduling gates cannot be bound, as upstream.
    let gated = format!("{}  schedulingGates:\n  - name: example.com/wait\n", pod("gated"));
    ok(apply_file(&k, dir.path(), "gated.yaml", &gated, "create"));
    let (code, body) = post(
        "/api/v1/namespaces/default/pods/gated/binding",
        &binding.replace("\"p1\"", "\"gated\""),
    );
    assert_eq!(code, "409", "{body}");
    assert!(body.contains("pod gated has non-empty .spec.schedulingGates"), "{body}");
    ok(k.run(&["delete", "pod", "gated"]).unwrap());

    // Streams need a node agent: a clear error, not a hang.
    let err = fails(k.run(&["logs", "p1"]).unwrap());
    assert!(err.contains("needs the node agent on node \"node-1\""), "{err}");
    let err = fails(k.run(&["logs", "p2"]).unwrap());
    assert!(err.contains("does not have a host assigned"), "{err}");

    // Eviction respects disruption budgets (429), then deletes.
    let pdb = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\nspec:\n  minAvailable: 2\n  selector:\n    matchLabels: {app: web}\n";
    ok(apply_file(&k, dir.path(), "pdb.yaml", pdb, "create"));
    let eviction = |name: &str| {
        format!(
            r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{name}","namespace":"default"}}}}"#
        )
    };
    let (code, body) = post("/api/v1/namespaces/default/pods/p2/eviction", &eviction("p2"));
    assert_eq!(code, "429", "{body}");
    assert!(
        body.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{body}"
    );
    ok(k.run(&["delete", "pdb", "web"]).unwrap());
    let (code, body) = post("/api/v1/namespaces/default/pods/p2/eviction", &eviction("p2"));
    assert_eq!(code, "201", "{body}");
    assert!(
        fails(k.run(&["get", "pod", "p2"]).unwrap()).contains("NotFound"),
        "an unbound pod goes at once"
    );
    let (code, _) = post("/api/v1/namespaces/default/pods/p1/eviction", &eviction("p1"));
    assert_eq!(code, "201");
    let deleting = ok(k
        .run(&["get", "pod", "p1", "-o", "jsonpath={.metadata.deletionTimestamp}"])
        .unwrap());
    assert!(!deleting.is_empty(), "a bound pod waits for its node to finish it");

    // A pod that has finished has nothing left for its node to stop: it goes at once.
    let done = "apiVersion: v1\nkind: Pod\nmetadata: {name: done}\nspec:\n  nodeName: node-1\n  restartPolicy: Never\n  \
                containers: [{name: c, image: busybox}]\n";
    ok(apply_file(&k, dir.path(), "done.yaml", done, "create"));
    ok(k.run(&[
        "patch",
        "pod",
        "done",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ])
    .unwrap());
    ok(k.run(&["delete", "pod", "done", "--wait=false"]).unwrap());
    assert!(
        fails(k.run(&["get", "pod", "done"]).unwrap()).contains("NotFound"),
        "a finished pod goes at once"
    );
}

#[test]
fn run_describe_expose_wait_and_propagation() {
    let server = server();
    for binary in ["kubectl", "kubectl.1.27"] {
        let k = server.kubectl_binary(binary);
        let pcs = ok(k.run(&["get", "priorityclasses", "-o", "name"]).unwrap());
        assert!(
            pcs.contains("system-cluster-critical") && pcs.contains("system-node-critical"),
            "{pcs}"
        );

        ok(k.run(&["run", "web", "--image=nginx:1.27", "--labels=app=web"])
            .unwrap());
        let described = ok(k.run(&["describe", "pod", "web"]).unwrap());
        // Columns align to the longest key, so spaces are compared as one.
        let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let flat = words(&described);
        for expected in [
            "Service Account: default",
            "QoS Class: BestEffort",
            "node.kubernetes.io/unreachable:NoExecute op=Exists for 300s",
            // The ServiceAccount admission's projected token volume, as upstream's.
            "Mounts: /var/run/secrets/kubernetes.io/serviceaccount from kube-api-access-",
            "TokenExpirationSeconds: 3607 ConfigMapName: kube-root-ca.crt",
        ] {
            assert!(flat.contains(expected), "{expected} missing from\n{described}");
        }
        ok(k.run(&["expose", "pod", "web", "--port", "80"]).unwrap());
        let ip = ok(k
            .run(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
            .unwrap());
        assert!(ip.starts_with("10.43."), "{ip}");

        // Status through its subresource; wait reads the condition.
        ok(k.run(&[
            "patch",
            "pod",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
        ])
        .unwrap());
        assert!(
            ok(k.run(&["wait", "--for=condition=Ready", "pod/web", "--timeout=20s"])
                .unwrap())
            .contains("condition met")
        );
        // A status write through the main resource is ignored, as upstream does.
        ok(k.run(&[
            "patch",
            "pod",
            "web",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ])
        .unwrap());
        assert_eq!(
            ok(k.run(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"]).unwrap()),
            "Pending"
        );

        // Propagation policies: foreground and orphan leave the owner to the garbage
        // collector with its finalizer; background deletes at once.
        for (cascade, finalizer) in [("foreground", "foregroundDeletion"), ("orphan", "orphan")] {
            let name = format!("cm-{cascade}");
            let yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n");
            let file = server.dir().join(format!("{name}-{binary}.yaml"));
            std::fs::write(&file, yaml).unwrap();
            ok(k.run(&["create", "-f", file.to_str().unwrap()]).unwrap());
            ok(k.run(&[
                "delete",
                "configmap",
                &name,
                &format!("--cascade={cascade}"),
                "--wait=false",
            ])
            .unwrap());
            let object: Value =
                serde_json::from_str(&ok(k.run(&["get", "configmap", &name, "-o", "json"]).unwrap())).unwrap();
            assert_eq!(
                object["metadata"]["finalizers"],
                serde_json::json!([finalizer]),
                "{cascade}"
            );
            assert!(object["metadata"]["deletionTimestamp"].is_string());
            ok(k.run(&[
                "patch",
                "configmap",
                &name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ])
            .unwrap());
            assert!(fails(k.run(&["get", "configmap", &name]).unwrap()).contains("NotFound"));
        }
        ok(k.run(&["delete", "svc", "web"]).unwrap());
        ok(k.run(&["delete", "pod", "web", "--cascade=background"]).unwrap());
        assert!(fails(k.run(&["get", "pod", "web"]).unwrap()).contains("NotFound"));
    }
}

/// `kubectl get` in every output format, by kubectl 1.33 and 1.27.
#[test]
fn get_prints_every_output_format() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let deployment = DEPLOYMENT_WITH_TYPO
        .replace("  bogusField: true\n", "")
        .replace("        imagePullPolice: Always\n", "");
    ok(apply_file(
        &server.kubectl(),
        dir.path(),
        "d.yaml",
        &deployment,
        "create",
    ));
    ok(apply_file(
        &server.kubectl(),
        dir.path(),
        "cm.yaml",
        CONFIGMAP,
        "create",
    ));
    std::fs::write(
        dir.path().join("columns.txt"),
        "NAME REPLICAS\n.metadata.name .spec.replicas\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("path.txt"), "{.items[*].spec.replicas}").unwrap();
    std::fs::write(
        dir.path().join("template.txt"),
        "{{range .items}}<{{.metadata.name}}>{{end}}",
    )
    .unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for binary in ["kubectl", "kubectl.1.27"] {
        let k = server.kubectl_binary(binary);
        let get = |args: &[&str]| ok(k.run(&[&["get"], args].concat()).unwrap());
        let table = get(&["deploy"]);
        assert!(
            table.starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE"),
            "{binary}: {table}"
        );
        assert!(table.contains("web    0/2"), "{binary}: {table}");
        let wide = get(&["deploy", "-o", "wide"]);
        assert!(
            wide.contains("CONTAINERS   IMAGES       SELECTOR") && wide.contains("nginx:1.27   app=web"),
            "{binary}: {wide}"
        );
        let yaml = get(&["deploy", "web", "-o", "yaml"]);
        assert!(
            yaml.contains("kind: Deployment") && yaml.contains("  replicas: 2"),
            "{binary}: {yaml}"
        );
        let list: Value = serde_json::from_str(&get(&["deploy,cm", "-o", "json"])).unwrap();
        assert_eq!(list["kind"], "List");
        assert!(list["items"].as_array().unwrap().len() >= 2, "{binary}: {list}");
        assert_eq!(get(&["deploy", "-o", "name"]), "deployment.apps/web\n");
        let columns = get(&[
            "deploy",
            "-o",
            "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas",
        ]);
        assert_eq!(columns, "NAME   REPLICAS\nweb    2\n", "{binary}");
        let from_file = get(&["deploy", "-o", &format!("custom-columns-file={}", file("columns.txt"))]);
        assert_eq!(from_file, "NAME   REPLICAS\nweb    2\n", "{binary}");
        assert_eq!(get(&["deploy", "-o", "jsonpath={.items[*].metadata.name}"]), "web");
        assert_eq!(
            get(&["deploy", "-o", &format!("jsonpath-file={}", file("path.txt"))]),
            "2"
        );
        let as_json = get(&["deploy", "-o", "jsonpath-as-json={.items[*].metadata.name}"]);
        assert_eq!(
            serde_json::from_str::<Value>(&as_json).unwrap(),
            serde_json::json!(["web"])
        );
        assert_eq!(
            get(&[
                "deploy",
                "-o",
                "go-template={{range .items}}<{{.metadata.name}}>{{end}}"
            ]),
            "<web>"
        );
        assert_eq!(
            get(&["deploy", "-o", &format!("go-template-file={}", file("template.txt"))]),
            "<web>"
        );
        assert_eq!(get(&["deploy", "web", "-o", "template={{.spec.replicas}}"]), "2");
        let labelled = get(&["cm", "web-config", "--show-labels", "-L", "tier"]);
        assert!(
            labelled.contains("TIER") && labelled.contains("app=web,tier=front"),
            "{binary}: {labelled}"
        );
        let everywhere = get(&["cm", "-A", "--no-headers", "--sort-by=.metadata.name"]);
        assert!(
            everywhere
                .lines()
                .any(|l| l.starts_with("default ") && l.contains("web-config")),
            "{binary}: {everywhere}"
        );
        assert!(!everywhere.contains("NAMESPACE"));
        let kinds = get(&["deploy,cm", "--show-kind"]);
        assert!(
            kinds.contains("deployment.apps/web") && kinds.contains("configmap/web-config"),
            "{binary}: {kinds}"
        );
    }
}

const APPLIED: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: applied
spec:
  replicas: 1
  selector:
    matchLabels: {app: applied}
  template:
    metadata:
      labels: {app: applied}
    spec:
      containers:
      - name: app
        image: nginx:1.26
        env:
        - {name: A, value: '1'}
        - {name: B, value: '2'}
      - name: sidecar
        image: busybox
";

/// Client-side `kubectl apply` through strategic merge patches, by kubectl 1.33, 1.32 and
/// 1.27: an unchanged manifest is `unchanged`; a changed image and a removed env var are
/// `configured` and leave exactly the manifest's lists; `set image`, `patch` (strategic,
/// with directives), `rollout pause/resume/restart` and `cordon` patch as upstream.
#[test]
fn apply_and_strategic_merge_patches() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    for binary in ["kubectl", "kubectl.1.32", "kubectl.1.27"] {
        let k = server.kubectl_binary(binary);
        let get = || -> Value {
            serde_json::from_str(&ok(k.run(&["get", "deployment", "applied", "-o", "json"]).unwrap())).unwrap()
        };
        let applied = apply_file(&k, dir.path(), "d.yaml", APPLIED, "apply");
        assert!(
            applied.stderr.is_empty(),
            "{binary}: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        assert_eq!(ok(applied).trim(), "deployment.apps/applied created");
        assert_eq!(
            ok(apply_file(&k, dir.path(), "d.yaml", APPLIED, "apply")).trim(),
            "deployment.apps/applied unchanged"
        );
        let changed = APPLIED
            .replace("nginx:1.26", "nginx:1.27")
            .replace("        - {name: B, value: '2'}\n", "")
            .replace("replicas: 1", "replicas: 3");
        assert_eq!(
            ok(apply_file(&k, dir.path(), "d.yaml", &changed, "apply")).trim(),
            "deployment.apps/applied configured"
        );
        let object = get();
        let containers = &object["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "nginx:1.27");
        assert_eq!(containers[0]["env"], serde_json::json!([{"name": "A", "value": "1"}]));
        assert_eq!(containers[1]["name"], "sidecar", "the other container kept");
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(
            ok(apply_file(&k, dir.path(), "d.yaml", &changed, "apply")).trim(),
            "deployment.apps/applied unchanged"
        );

        // Imperative commands built on strategic merge patches.
        ok(k.run(&["set", "image", "deployment/applied", "sidecar=busybox:1.36"])
            .unwrap());
        let object = get();
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"][1]["image"],
            "busybox:1.36"
        );
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.27"
        );
        // A server-side dry run of a patch changes nothing.
        ok(k.run(&[
            "patch",
            "deployment/applied",
            "--dry-run=server",
            "-p",
            r#"{"spec":{"replicas":9}}"#,
        ])
        .unwrap());
        assert_eq!(get()["spec"]["replicas"], 3);
        ok(k.run(&["rollout", "pause", "deployment/applied"]).unwrap());
        assert_eq!(get()["spec"]["paused"], true);
        ok(k.run(&["rollout", "resume", "deployment/applied"]).unwrap());
        assert!(get()["spec"]["paused"].is_null() || get()["spec"]["paused"] == false);
        ok(k.run(&["rollout", "restart", "deployment/applied"]).unwrap());
        let annotations = &get()["spec"]["template"]["metadata"]["annotations"];
        assert!(
            annotations["kubectl.kubernetes.io/restartedAt"].is_string(),
            "{annotations}"
        );
        let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}}"#;
        ok(k.run(&["patch", "deployment/applied", "--type=strategic", "-p", patch])
            .unwrap());
        let containers = get()["spec"]["template"]["spec"]["containers"].clone();
        assert_eq!(containers.as_array().unwrap().len(), 1, "{containers}");
        let err = fails(
            k.run(&[
                "patch",
                "deployment/applied",
                "--type=strategic",
                "-p",
                r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#,
            ])
            .unwrap(),
        );
        assert!(err.contains("does not contain declared merge key: name"), "{err}");
        ok(k.run(&["delete", "deployment", "applied"]).unwrap());

        // The published schemas: explain reads them.
        let explained = ok(k.run(&["explain", "deployment.spec.strategy"]).unwrap());
        assert!(
            explained.contains("rollingUpdate") && explained.contains("RollingUpdateDeployment"),
            "{binary}: {explained}"
        );
    }
    // `kubectl edit` sends a strategic merge patch of what the editor changed.
    let k = server.kubectl();
    ok(apply_file(&k, dir.path(), "d.yaml", APPLIED, "apply"));
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/image: busybox$/image: busybox:1.37/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(rkube_testkit::resolve_kubectl("kubectl.1.33"))
        .args([
            "--kubeconfig",
            server.kubeconfig.to_str().unwrap(),
            "edit",
            "deployment/applied",
        ])
        .env("EDITOR", &editor)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(ok(out).trim(), "deployment.apps/applied edited");
    let edited: Value =
        serde_json::from_str(&ok(k.run(&["get", "deployment", "applied", "-o", "json"]).unwrap())).unwrap();
    assert_eq!(
        edited["spec"]["template"]["spec"]["containers"][1]["image"],
        "busybox:1.37"
    );
    assert_eq!(
        edited["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    // Field validation applies to patches and applies too.
    // kubectl patch asks for no validation mode: upstream's default warns.
    let out = k
        .run(&[
            "patch",
            "deployment/applied",
            "--type=strategic",
            "-p",
            r#"{"spec":{"bogusField":1}}"#,
        ])
        .unwrap();
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(
        warned.contains("Warning: unknown field \"spec.bogusField\""),
        "{warned}"
    );
    let bogus = APPLIED.replace("  replicas: 1\n", "  replicas: 1\n  bogusField: 1\n");
    let err = fails(apply_file(&k, dir.path(), "bogus.yaml", &bogus, "apply"));
    assert!(err.contains("bogusField"), "{err}");
    let file = dir.path().join("bogus.yaml");
    let err = fails(
        k.run(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            file.to_str().unwrap(),
        ])
        .unwrap(),
    );
    assert!(err.contains("bogusField"), "{err}");

    // cordon and uncordon.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: patched-node}\n";
    ok(apply_file(&k, dir.path(), "node.yaml", node, "create"));
    ok(k.run(&["cordon", "patched-node"]).unwrap());
    let object: Value =
        serde_json::from_str(&ok(k.run(&["get", "node", "patched-node", "-o", "json"]).unwrap())).unwrap();
    assert_eq!(object["spec"]["unschedulable"], true);
    ok(k.run(&["uncordon", "patched-node"]).unwrap());
}

const SERVER_SIDE: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: NAME
  labels: {team: a}
spec:
  replicas: 2
  selector:
    matchLabels: {app: NAME}
  template:
    metadata:
      labels: {app: NAME}
    spec:
      containers:
      - name: web
        image: nginx:1.26
";

/// `kubectl apply --server-side` by kubectl 1.33, 1.32 and 1.27: creation, managedFields as
/// upstream records them, conflicts worded as upstream (with another manager, and with
/// client-side apply), `--force-conflicts` taking ownership, fields no longer applied
/// removed, the migration from client-side apply, and server-side dry runs.
#[test]
fn server_side_apply() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    for (i, binary) in ["kubectl", "kubectl.1.32", "kubectl.1.27"].into_iter().enumerate() {
        let k = server.kubectl_binary(binary);
        let name = format!("ssa{i}");
        let manifest = SERVER_SIDE.replace("NAME", &name);
        let get = || -> Value {
            serde_json::from_str(&ok(k
                .run(&["get", "deployment", &name, "-o", "json", "--show-managed-fields"])
                .unwrap()))
            .unwrap()
        };
        let managers = || -> Vec<(String, String)> {
            get()["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap().to_string(),
                        e["operation"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let apply = |yaml: &str, extra: &[&str]| {
            let file = dir.path().join("ssa.yaml");
            std::fs::write(&file, yaml).unwrap();
            let mut args = vec!["apply", "--server-side", "-f", file.to_str().unwrap()];
            args.extend_from_slice(extra);
            k.run(&args).unwrap()
        };
        assert_eq!(
            ok(apply(&manifest, &[])).trim(),
            format!("deployment.apps/{name} serverside-applied")
        );
        let object = get();
        let entry = &object["metadata"]["managedFields"][0];
        assert_eq!(
            (entry["manager"].as_str(), entry["operation"].as_str()),
            (Some("kubectl"), Some("Apply"))
        );
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(
            entry["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"],
            serde_json::json!({".": {}, "f:image": {}, "f:name": {}})
        );

        // Another manager changes the replicas: applying different ones conflicts.
        ok(k.run(&[
            "patch",
            "deployment",
            &name,
            "--field-manager=scaler",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":5}}"#,
        ])
        .unwrap());
        let changed = manifest.replace("replicas: 2", "replicas: 3");
        let err = fails(apply(&changed, &[]));
        assert!(
            err.contains("Apply failed with 1 conflict: conflict with \"scaler\" using apps/v1: .spec.replicas"),
            "{binary}: {err}"
        );
        assert_eq!(get()["spec"]["replicas"], 5, "nothing changed");
        ok(apply(&changed, &["--force-conflicts"]));
        assert_eq!(get()["spec"]["replicas"], 3);
        assert_eq!(
            managers(),
            [("kubectl".to_string(), "Apply".to_string())],
            "the scaler owns nothing now"
        );

        // A label no longer applied goes; a server-side dry run changes nothing.
        let unlabelled = changed.replace("  labels: {team: a}\n", "");
        ok(apply(&unlabelled, &["--dry-run=server"]));
        assert_eq!(get()["metadata"]["labels"]["team"], "a");
        ok(apply(&unlabelled, &[]));
        assert!(get()["metadata"].get("labels").is_none_or(|l| l.get("team").is_none()));

        // From client-side apply: a conflicting change names kubectl-client-side-apply; an
        // agreeing apply migrates the ownership to kubectl.
        let csa = format!("csa{i}");
        let client_side = SERVER_SIDE.replace("NAME", &csa);
        ok(apply_file(&k, dir.path(), "csa.yaml", &client_side, "apply"));
        let file = dir.path().join("csa-ssa.yaml");
        std::fs::write(&file, client_side.replace("replicas: 2", "replicas: 4")).unwrap();
        let err = fails(
            k.run(&["apply", "--server-side", "-f", file.to_str().unwrap()])
                .unwrap(),
        );
        assert!(
            err.contains("conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"),
            "{binary}: {err}"
        );
        std::fs::write(&file, &client_side).unwrap();
        let migrated = k
            .run(&["apply", "--server-side", "-f", file.to_str().unwrap()])
            .unwrap();
        // kubectl applies again after moving the ownership; that apply keeps the maps whose
        // `.` the client-side entry held (a removed `.` emptied them: `selector does not
        // match template labels`).
        let stderr = String::from_utf8_lossy(&migrated.stderr).into_owned();
        assert!(!stderr.contains("is invalid"), "{binary}: {stderr}");
        ok(migrated);
        let object: Value = serde_json::from_str(&ok(k
            .run(&["get", "deployment", &csa, "-o", "json", "--show-managed-fields"])
            .unwrap()))
        .unwrap();
        let owners: Vec<&str> = object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert!(
            owners.contains(&"kubectl") && !owners.contains(&"kubectl-client-side-apply"),
            "{binary}: {owners:?}"
        );
    }

    // A port without its protocol (shared/examples/seed/18's headless Service) is the
    // stored port of protocol TCP, not a second port, when applied server-side later.
    let k = server.kubectl();
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  \
                   selector: {app: db}\n  ports:\n  - port: 3306\n";
    ok(apply_file(&k, dir.path(), "db.yaml", service, "apply"));
    let file = dir.path().join("db.yaml");
    ok(k.run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        file.to_str().unwrap(),
    ])
    .unwrap());
    let ports: Value = serde_json::from_str(&ok(k
        .run(&["get", "service", "db", "-o", "jsonpath={.spec.ports}"])
        .unwrap()))
    .unwrap();
    assert_eq!(ports.as_array().map(Vec::len), Some(1), "{ports}");
}

const TOKEN_PODS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: robots}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: quiet, namespace: robots}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Pod
metadata: {name: mounted, namespace: robots}
spec:
  initContainers: [{name: init, image: registry.local/pause:3.10}]
  containers:
  - {name: app, image: registry.local/pause:3.10}
  - name: own
    image: registry.local/pause:3.10
    volumeMounts: [{name: mine, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}]
  volumes: [{name: mine, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: robots}
spec:
  automountServiceAccountToken: false
  containers: [{name: app, image: registry.local/pause:3.10}]
---
apiVersion: v1
kind: Pod
metadata: {name: quiet-account, namespace: robots}
spec:
  serviceAccountName: quiet
  containers: [{name: app, image: registry.local/pause:3.10}]
---
apiVersion: v1
kind: Pod
metadata: {name: pod-overrides, namespace: robots}
spec:
  serviceAccountName: quiet
  automountServiceAccountToken: true
  containers: [{name: app, image: registry.local/pause:3.10}]
";

/// Upstream's ServiceAccount admission: the projected token volume mounted in every
/// container that has nothing at the token path, unless the pod (or else its account)
/// opts out.
#[test]
fn service_account_tokens_are_mounted_unless_opted_out() {
    let server = server();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pods.yaml");
    std::fs::write(&path, TOKEN_PODS).unwrap();
    // The account is created just before the pods that name it.
    ok(k.run(&["apply", "-f", path.to_str().unwrap()]).unwrap());
    let pod = |name: &str| -> Value {
        serde_json::from_str(&ok(k.run(&["get", "pod", name, "-n", "robots", "-o", "json"]).unwrap())).unwrap()
    };
    let token_volumes = |pod: &Value| -> Vec<String> {
        pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v.get("projected").is_some())
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mounted = pod("mounted");
    let volumes = token_volumes(&mounted);
    assert_eq!(volumes.len(), 1, "{mounted}");
    assert!(volumes[0].starts_with("kube-api-access-"), "{volumes:?}");
    let expected_mount = serde_json::json!([{"name": volumes[0], "readOnly": true,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]);
    assert_eq!(mounted["spec"]["initContainers"][0]["volumeMounts"], expected_mount);
    assert_eq!(mounted["spec"]["containers"][0]["volumeMounts"], expected_mount);
    assert_eq!(
        mounted["spec"]["containers"][1]["volumeMounts"],
        serde_json::json!([{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]),
        "a container with its own mount at the path keeps it alone"
    );
    let projected = mounted["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volumes[0].as_str())
        .unwrap()["projected"]
        .clone();
    assert_eq!(projected["defaultMode"], 420);
    assert_eq!(
        projected["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    assert_eq!(projected["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        projected["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    for name in ["opted-out", "quiet-account"] {
        let pod = pod(name);
        assert!(token_volumes(&pod).is_empty(), "{name}: {pod}");
        assert!(
            pod["spec"]["containers"][0].get("volumeMounts").is_none(),
            "{name}: {pod}"
        );
    }
    assert_eq!(token_volumes(&pod("pod-overrides")).len(), 1, "the pod's word wins");
}
