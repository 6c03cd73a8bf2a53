//! Defaulting, as upstream's `SetDefaults_*` functions and defaulting admission plugins do
//! it, over objects as JSON. Only fields the client left out are set.

use serde_json::{Map, Value, json};

use crate::ResourceInfo;

/// Sets `object[field] = value` unless the field is present (and not null).
fn default(object: &mut Map<String, Value>, field: &str, value: Value) {
    match object.get(field) {
        Some(v) if !v.is_null() => {}
        _ => {
            object.insert(field.to_string(), value);
        }
    }
}

/// The object at `pointer`, created as `{}` along the way where missing.
fn object_at<'a>(root: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut current = root;
    for part in path {
        let map = current.as_object_mut()?;
        let next = map.entry(part.to_string()).or_insert_with(|| json!({}));
        if next.is_null() {
            *next = json!({});
        }
        current = next;
    }
    current.as_object_mut()
}

fn each_in<'a>(map: &'a mut Map<String, Value>, field: &str) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    map.get_mut(field)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// `Always` for `:latest` or untagged images (without a digest), else `IfNotPresent`.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn probe(probe: &mut Map<String, Value>) {
    default(probe, "timeoutSeconds", json!(1));
    default(probe, "periodSeconds", json!(10));
    default(probe, "successThreshold", json!(1));
    default(probe, "failureThreshold", json!(3));
    if let Some(get) = probe.get_mut("httpGet").and_then(Value::as_object_mut) {
        default(get, "scheme", json!("HTTP"));
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
    if !image.is_empty() {
        default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    }
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for port in each_in(c, "ports") {
        default(port, "protocol", json!("TCP"));
    }
    for name in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(name).and_then(Value::as_object_mut) {
            probe(p);
        }
    }
}

/// Defaults of every pod spec, in pods and in templates.
pub fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["initContainers", "containers"] {
        for c in each_in(spec, list) {
            container(c);
        }
    }
    for volume in each_in(spec, "volumes") {
        for source in ["secret", "configMap", "projected", "downwardAPI"] {
            if let Some(v) = volume.get_mut(source).and_then(Value::as_object_mut) {
                default(v, "defaultMode", json!(420));
            }
        }
        if let Some(host) = volume.get_mut("hostPath").and_then(Value::as_object_mut) {
            default(host, "type", json!(""));
        }
    }
}

/// What admission adds to pods (not templates; priority is the API server's Priority
/// admission, which needs the PriorityClasses): the service account, the
/// default not-ready/unreachable tolerations of 300 s, and the initial status.
fn pod(object: &mut Value) {
    let Some(spec) = object_at(object, &["spec"]) else {
        return;
    };
    pod_spec(spec);
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "serviceAccountName", json!("default"));
    let account = spec.get("serviceAccountName").cloned().unwrap_or(json!("default"));
    default(spec, "serviceAccount", account);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let present = list.iter().any(|t| {
                let t_key = t.get("key").and_then(Value::as_str);
                let effect = t.get("effect").and_then(Value::as_str);
                (t_key == Some(key) || (t_key.is_none() && t.get("operator") == Some(&json!("Exists"))))
                    && (effect.is_none() || effect == Some("NoExecute"))
            });
            if !present {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    let qos = qos_class(object);
    if let Some(status) = object_at(object, &["status"]) {
        default(status, "phase", json!("Pending"));
        default(status, "qosClass", json!(qos));
    }
}

/// Upstream's QoS classes: Guaranteed when every container limits cpu and memory with
/// requests equal to limits, BestEffort with no requests or limits at all, else Burstable.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A strategy field defaulted to RollingUpdate, whose `rollingUpdate` gets `defaults`
/// when the type is RollingUpdate (Deployments, StatefulSets, DaemonSets).
fn rolling_update<const N: usize>(spec: &mut Map<String, Value>, field: &str, defaults: [(&str, Value); N]) {
    // A strategy is a struct in upstream's types, there even when a client sends `{}`
    // (as kubectl's protobuf `create deployment` does): its type is defaulted inside.
    default(spec, field, json!({}));
    let Some(strategy) = spec.get_mut(field).and_then(Value::as_object_mut) else {
        return;
    };
    default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) != Some("RollingUpdate") {
        return;
    }
    let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
    if let Some(rolling) = rolling.as_object_mut() {
        for (key, value) in defaults {
            default(rolling, key, value);
        }
    }
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(template) = spec.get_mut("template").and_then(Value::as_object_mut)
        && let Some(pod) = template.get_mut("spec").and_then(Value::as_object_mut)
    {
        pod_spec(pod);
    }
}

/// Applies the defaults of `info`'s kind to `object`.
pub fn apply(info: &ResourceInfo, object: &mut Value) {
    match (info.group, info.kind) {
        ("", "Pod") => pod(object),
        ("autoscaling", "HorizontalPodAutoscaler") => horizontal_pod_autoscaler(info.version, object),
        ("", "Service") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
            for port in each_in(spec, "ports") {
                default(port, "protocol", json!("TCP"));
                let number = port.get("port").cloned().unwrap_or(Value::Null);
                default(port, "targetPort", number);
            }
            let external = spec
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t == "NodePort" || t == "LoadBalancer");
            if external {
                default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
        }
        ("", "ReplicationController") => {
            let labels = object.pointer("/spec/template/metadata/labels").cloned();
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "replicas", json!(1));
            if let Some(labels) = labels {
                default(spec, "selector", labels);
            }
            template(spec);
        }
        ("", "Secret") => {
            if let Some(map) = object.as_object_mut() {
                default(map, "type", json!("Opaque"));
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = object_at(object, &["status"]) {
                default(status, "phase", json!("Pending"));
            }
        }
        ("", "PersistentVolume") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                default(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = object_at(object, &["status"]) {
                default(status, "phase", json!("Pending"));
            }
        }
        ("apps", "Deployment") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            rolling_update(
                spec,
                "strategy",
                [("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))],
            );
            template(spec);
        }
        ("apps", "ReplicaSet") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "StatefulSet") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            rolling_update(spec, "updateStrategy", [("partition", json!(0))]);
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            for claim in each_in(spec, "volumeClaimTemplates") {
                if let Some(claim_spec) = claim.get_mut("spec").and_then(Value::as_object_mut) {
                    default(claim_spec, "volumeMode", json!("Filesystem"));
                }
            }
            template(spec);
        }
        ("apps", "DaemonSet") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "revisionHistoryLimit", json!(10));
            rolling_update(
                spec,
                "updateStrategy",
                [("maxUnavailable", json!(1)), ("maxSurge", json!(0))],
            );
            template(spec);
        }
        ("batch", "Job") => {
            if let Some(spec) = object_at(object, &["spec"]) {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(job) = spec
                .get_mut("jobTemplate")
                .and_then(|t| t.get_mut("spec"))
                .and_then(Value::as_object_mut)
            {
                job_spec(job);
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let Some(spec) = object_at(object, &["spec"]) else {
                return;
            };
            let egress = spec.get("egress").is_some_and(|e| !e.is_null());
            let types = if egress {
                json!(["Ingress", "Egress"])
            } else {
                json!(["Ingress"])
            };
            default(spec, "policyTypes", types);
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(map) = object.as_object_mut() {
                default(map, "reclaimPolicy", json!("Delete"));
                default(map, "volumeBindingMode", json!("Immediate"));
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            if let Some(map) = object.as_object_mut() {
                default(map, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            if let Some(map) = object.as_object_mut() {
                for subject in each_in(map, "subjects") {
                    let group = match subject.get("kind").and_then(Value::as_str) {
                        Some("ServiceAccount") => "",
                        _ => "rbac.authorization.k8s.io",
                    };
                    default(subject, "apiGroup", json!(group));
                }
            }
        }
        _ => {}
    }
}

/// What the Job strategy adds once the Job has a uid: unless the user manages the
/// selector, the Job selects its pods by its uid, and its template carries the labels.
pub fn job_selector(object: &mut Value) {
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if object.pointer("/spec/manualSelector") == Some(&json!(true)) || uid.is_empty() {
        return;
    }
    if let Some(spec) = object_at(object, &["spec"]) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
    }
    if let Some(labels) = object_at(object, &["spec", "template", "metadata", "labels"]) {
        for (key, value) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            labels.insert(key.into(), json!(value));
        }
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    let unset = |v: Option<&Value>| v.is_none_or(Value::is_null);
    if unset(spec.get("completions")) && unset(spec.get("parallelism")) {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default(spec, "parallelism", json!(1));
    // With a limit per index, the Job's own limit steps aside.
    let per_index = spec.get("backoffLimitPerIndex").is_some_and(|l| !l.is_null());
    default(spec, "backoffLimit", json!(if per_index { i32::MAX } else { 6 }));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default(spec, "podReplacementPolicy", json!(replacement));
    // A condition pattern without a status means the condition is True.
    let rules = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut);
    for rule in rules.into_iter().flatten() {
        let patterns = rule.get_mut("onPodConditions").and_then(Value::as_array_mut);
        for pattern in patterns.into_iter().flatten().filter_map(Value::as_object_mut) {
            if pattern.get("status").and_then(Value::as_str) == Some("") {
                pattern.remove("status");
            }
            default(pattern, "status", json!("True"));
        }
    }
    template(spec);
}

/// minReplicas 1 in both versions; v2 also targets 80% CPU when no metric is given, and
/// fills in the scaling rules of a `behavior` it is given.
fn horizontal_pod_autoscaler(version: &str, object: &mut Value) {
    let Some(spec) = object_at(object, &["spec"]) else {
        return;
    };
    default(spec, "minReplicas", json!(1));
    if version != "v2" {
        return;
    }
    if spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) else {
        return;
    };
    let up = behavior.entry("scaleUp").or_insert_with(|| json!({}));
    if let Some(up) = up.as_object_mut() {
        default(up, "stabilizationWindowSeconds", json!(0));
        default(up, "selectPolicy", json!("Max"));
        default(
            up,
            "policies",
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15},
                   {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
    }
    let down = behavior.entry("scaleDown").or_insert_with(|| json!({}));
    if let Some(down) = down.as_object_mut() {
        default(down, "stabilizationWindowSeconds", json!(300));
        default(down, "selectPolicy", json!("Max"));
        default(
            down,
            "policies",
            json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find;

    fn defaulted(group: &str, plural: &str, object: Value) -> Value {
        let info = find(group, "v1", plural).unwrap();
        let mut object = object;
        apply(info, &mut object);
        object
    }

    #[test]
    fn pull_policy_from_the_tag() {
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry:5000/app", "Always"),
            ("registry:5000/app:v1", "IfNotPresent"),
            ("nginx@sha256:abc", "IfNotPresent"),
        ] {
            assert_eq!(image_pull_policy(image), policy, "{image}");
        }
    }

    #[test]
    fn pods() {
        let pod = defaulted(
            "",
            "pods",
            json!({"spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
                                             "readinessProbe": {"httpGet": {"path": "/", "port": 80}}}],
                            "volumes": [{"name": "s", "secret": {"secretName": "x"}}]}}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["enableServiceLinks"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 420);
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ])
        );
        assert_eq!(pod["status"], json!({"phase": "Pending", "qosClass": "BestEffort"}));

        // What the client set stays.
        let pod = defaulted(
            "",
            "pods",
            json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x:1", "imagePullPolicy": "Never"}],
                            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}}),
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(pod["spec"]["tolerations"][0]["tolerationSeconds"], 5);
    }

    #[test]
    fn qos() {
        let with = |resources: Value| json!({"spec": {"containers": [{"name": "c", "resources": resources}]}});
        assert_eq!(qos_class(&with(json!({}))), "BestEffort");
        assert_eq!(qos_class(&with(json!({"requests": {"cpu": "1"}}))), "Burstable");
        assert_eq!(
            qos_class(&with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&with(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})
            )),
            "Burstable"
        );
    }

    #[test]
    fn workloads() {
        let deploy = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}}}),
        );
        assert_eq!(deploy["spec"]["replicas"], 1);
        assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(deploy["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            deploy["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let tspec = &deploy["spec"]["template"]["spec"];
        assert_eq!(tspec["restartPolicy"], "Always");
        assert_eq!(tspec["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert!(
            tspec.get("serviceAccountName").is_none(),
            "admission defaults are for pods only"
        );

        let recreate = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        let empty = defaulted("apps", "deployments", json!({"spec": {"strategy": {}}}));
        assert_eq!(empty["spec"]["strategy"], deploy["spec"]["strategy"]);
        let empty = defaulted("apps", "statefulsets", json!({"spec": {"updateStrategy": {}}}));
        assert_eq!(empty["spec"]["updateStrategy"]["type"], "RollingUpdate");

        let sts = defaulted("apps", "statefulsets", json!({"spec": {}}));
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 0);

        let ds = defaulted("apps", "daemonsets", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"],
            json!({"maxUnavailable": 1, "maxSurge": 0})
        );

        let job = defaulted(
            "batch",
            "jobs",
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
        );
        assert_eq!(
            (job["spec"]["completions"].clone(), job["spec"]["parallelism"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        let parallel = defaulted("batch", "jobs", json!({"spec": {"parallelism": 3}}));
        assert!(parallel["spec"].get("completions").is_none());
        assert_eq!(job["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        let per_index = defaulted("batch", "jobs", json!({"spec": {"backoffLimitPerIndex": 2}}));
        assert_eq!(per_index["spec"]["backoffLimit"], i32::MAX);
        let policy = json!({"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Ignore", "onPodConditions": [{"type": "Ready", "status": ""}]}]});
        let with_policy = defaulted("batch", "jobs", json!({"spec": {"podFailurePolicy": policy}}));
        assert_eq!(with_policy["spec"]["podReplacementPolicy"], "Failed");
        for rule in 0..2 {
            assert_eq!(
                with_policy["spec"]["podFailurePolicy"]["rules"][rule]["onPodConditions"][0]["status"],
                "True"
            );
        }

        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": {}}}});
        job_selector(&mut job);
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "pi");

        let cj = defaulted("batch", "cronjobs", json!({"spec": {"jobTemplate": {"spec": {}}}}));
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["jobTemplate"]["spec"]["backoffLimit"], 6);
    }

    #[test]
    fn services_and_others() {
        let svc = defaulted(
            "",
            "services",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
        );
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
        let plain = defaulted(
            "",
            "services",
            json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}]}}),
        );
        assert_eq!(plain["spec"]["type"], "ClusterIP");
        assert_eq!(plain["spec"]["ports"][0]["targetPort"], "http");
        assert!(plain["spec"].get("externalTrafficPolicy").is_none());

        assert_eq!(defaulted("", "secrets", json!({}))["type"], "Opaque");
        let rc = defaulted(
            "",
            "replicationcontrollers",
            json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}}),
        );
        assert_eq!(rc["spec"]["selector"], json!({"a": "b"}));
        let info = find("storage.k8s.io", "v1", "storageclasses").unwrap();
        let mut sc = json!({"provisioner": "x"});
        apply(info, &mut sc);
        assert_eq!(sc["volumeBindingMode"], "Immediate");
        let info = find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        let mut rb = json!({"subjects": [{"kind": "User", "name": "a"}, {"kind": "ServiceAccount", "name": "b"}]});
        apply(info, &mut rb);
        assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(rb["subjects"][1]["apiGroup"], "");
    }
}
