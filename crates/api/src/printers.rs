//! Table columns and cells per kind, as upstream's printers define them (`kubectl get`
//! prints these; priority-1 columns show with `-o wide`). Kinds without a printer get
//! upstream's default columns: Name and Created At.

use serde_json::{Value, json};

use crate::ResourceInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub priority: i32,
    pub description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: i32, description: &'static str) -> Column {
    let format = if matches!(name.as_bytes(), b"Name") { "name" } else { "" };
    Column {
        name,
        kind,
        format,
        priority,
        description,
    }
}

const NAME: Column = col(
    "Name",
    "string",
    0,
    "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
);
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
);
const CREATED_AT: Column = Column {
    name: "Created At",
    kind: "date",
    format: "",
    priority: 0,
    description: AGE.description,
};
const CONTAINERS: Column = col("Containers", "string", 1, "Names of each container in the template.");
const IMAGES: Column = col(
    "Images",
    "string",
    1,
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = col("Selector", "string", 1, "Label selector for pods.");

/// The columns of `info`'s table, in order.
pub fn columns(info: &ResourceInfo) -> Vec<Column> {
    let c = |name, kind, priority| col(name, kind, priority, "");
    match (info.group, info.plural) {
        ("", "pods") => vec![
            NAME,
            c("Ready", "string", 0),
            c("Status", "string", 0),
            c("Restarts", "string", 0),
            AGE,
            c("IP", "string", 1),
            c("Node", "string", 1),
            c("Nominated Node", "string", 1),
            c("Readiness Gates", "string", 1),
        ],
        ("apps", "deployments") => vec![
            NAME,
            c("Ready", "string", 0),
            c("Up-to-date", "integer", 0),
            c("Available", "integer", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("apps", "replicasets") | ("", "replicationcontrollers") => vec![
            NAME,
            c("Desired", "integer", 0),
            c("Current", "integer", 0),
            c("Ready", "integer", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("apps", "statefulsets") => vec![NAME, c("Ready", "string", 0), AGE, CONTAINERS, IMAGES],
        ("apps", "daemonsets") => vec![
            NAME,
            c("Desired", "integer", 0),
            c("Current", "integer", 0),
            c("Ready", "integer", 0),
            c("Up-to-date", "integer", 0),
            c("Available", "integer", 0),
            c("Node Selector", "string", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("", "services") => vec![
            NAME,
            c("Type", "string", 0),
            c("Cluster-IP", "string", 0),
            c("External-IP", "string", 0),
            c("Port(s)", "string", 0),
            AGE,
            SELECTOR,
        ],
        ("", "configmaps") => vec![NAME, c("Data", "integer", 0), AGE],
        ("", "secrets") => vec![NAME, c("Type", "string", 0), c("Data", "integer", 0), AGE],
        ("", "serviceaccounts") => vec![NAME, c("Secrets", "string", 0), AGE],
        ("", "namespaces") => vec![NAME, c("Status", "string", 0), AGE],
        ("", "nodes") => vec![
            NAME,
            c("Status", "string", 0),
            c("Roles", "string", 0),
            AGE,
            c("Version", "string", 0),
            c("Internal-IP", "string", 1),
            c("External-IP", "string", 1),
            c("OS-Image", "string", 1),
            c("Kernel-Version", "string", 1),
            c("Container-Runtime", "string", 1),
        ],
        ("", "endpoints") => vec![NAME, c("Endpoints", "string", 0), AGE],
        ("batch", "jobs") => vec![
            NAME,
            c("Status", "string", 0),
            c("Completions", "string", 0),
            c("Duration", "string", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("batch", "cronjobs") => vec![
            NAME,
            c("Schedule", "string", 0),
            c("Timezone", "string", 0),
            c("Suspend", "boolean", 0),
            c("Active", "integer", 0),
            c("Last Schedule", "string", 0),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("", "persistentvolumeclaims") => vec![
            NAME,
            c("Status", "string", 0),
            c("Volume", "string", 0),
            c("Capacity", "string", 0),
            c("Access Modes", "string", 0),
            c("StorageClass", "string", 0),
            c("VolumeAttributesClass", "string", 0),
            AGE,
            c("VolumeMode", "string", 1),
        ],
        ("", "persistentvolumes") => vec![
            NAME,
            c("Capacity", "string", 0),
            c("Access Modes", "string", 0),
            c("Reclaim Policy", "string", 0),
            c("Status", "string", 0),
            c("Claim", "string", 0),
            c("StorageClass", "string", 0),
            c("VolumeAttributesClass", "string", 0),
            c("Reason", "string", 0),
            AGE,
            c("VolumeMode", "string", 1),
        ],
        ("networking.k8s.io", "ingresses") => vec![
            NAME,
            c("Class", "string", 0),
            c("Hosts", "string", 0),
            c("Address", "string", 0),
            c("Ports", "string", 0),
            AGE,
        ],
        ("autoscaling", "horizontalpodautoscalers") => vec![
            NAME,
            c("Reference", "string", 0),
            c("Targets", "string", 0),
            c("MinPods", "string", 0),
            c("MaxPods", "string", 0),
            c("Replicas", "string", 0),
            AGE,
        ],
        ("coordination.k8s.io", "leases") => vec![NAME, c("Holder", "string", 0), AGE],
        ("storage.k8s.io", "storageclasses") => vec![
            NAME,
            c("Provisioner", "string", 0),
            c("ReclaimPolicy", "string", 0),
            c("VolumeBindingMode", "string", 0),
            c("AllowVolumeExpansion", "string", 0),
            AGE,
        ],
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => vec![
            NAME,
            c("Role", "string", 0),
            AGE,
            c("Users", "string", 1),
            c("Groups", "string", 1),
            c("ServiceAccounts", "string", 1),
        ],
        ("scheduling.k8s.io", "priorityclasses") => {
            vec![
                NAME,
                c("Value", "integer", 0),
                c("Global-Default", "boolean", 0),
                AGE,
                c("PreemptionPolicy", "string", 0),
            ]
        }
        ("policy", "poddisruptionbudgets") => vec![
            NAME,
            c("Min Available", "string", 0),
            c("Max Unavailable", "string", 0),
            c("Allowed Disruptions", "integer", 0),
            AGE,
        ],
        ("", "events") => vec![
            c("Last Seen", "string", 0),
            c("Type", "string", 0),
            c("Reason", "string", 0),
            c("Object", "string", 0),
            c("Message", "string", 0),
        ],
        ("", "resourcequotas") => vec![NAME, AGE, c("Request", "string", 0), c("Limit", "string", 0)],
        ("apps", "controllerrevisions") => vec![NAME, c("Controller", "string", 0), c("Revision", "integer", 0), AGE],
        ("networking.k8s.io", "ingressclasses") => {
            vec![NAME, c("Controller", "string", 0), c("Parameters", "string", 0), AGE]
        }
        ("networking.k8s.io", "networkpolicies") => vec![NAME, c("Pod-Selector", "string", 0), AGE],
        ("discovery.k8s.io", "endpointslices") => vec![
            NAME,
            c("AddressType", "string", 0),
            c("Ports", "string", 0),
            c("Endpoints", "string", 0),
            AGE,
        ],
        _ => vec![NAME, CREATED_AT],
    }
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".to_string() } else { s }
}

fn list<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn template_columns(object: &Value, template: &str) -> (String, String) {
    let containers = list(object, &format!("{template}/spec/containers"));
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// `matchLabels` (and expressions) as kubectl writes selectors: `a=b,c in (d)`.
fn selector_text(selector: Option<&Value>) -> String {
    or_none(selector.map(crate::selector::label_selector_text).unwrap_or_default())
}

fn pod_status(pod: &Value) -> String {
    if !text(pod, "/metadata/deletionTimestamp").is_empty() {
        return "Terminating".into();
    }
    let mut reason = text(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = text(pod, "/status/phase").to_string();
    }
    for status in list(pod, "/status/containerStatuses") {
        let waiting = text(status, "/state/waiting/reason");
        let terminated = text(status, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if !terminated.is_empty() && reason != "Completed" {
            reason = terminated.to_string();
        }
    }
    reason
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = list(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = int(p, "/port");
            let protocol = text(p, "/protocol");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node) => format!("{port}:{node}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn external_ip(svc: &Value) -> String {
    let mut ips: Vec<String> = list(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    match text(svc, "/spec/type") {
        "ExternalName" => return text(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            for ingress in list(svc, "/status/loadBalancer/ingress") {
                let ip = text(ingress, "/ip");
                ips.push(if ip.is_empty() {
                    text(ingress, "/hostname").to_string()
                } else {
                    ip.to_string()
                });
            }
            if ips.is_empty() {
                return "<pending>".into();
            }
        }
        _ => {}
    }
    or_none(ips.join(","))
}

fn access_modes(object: &Value, pointer: &str) -> String {
    list(object, pointer)
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Upstream's precedence: a finished Job says so whatever else its conditions say.
fn job_status(job: &Value) -> &'static str {
    let has = |kind: &str| {
        list(job, "/status/conditions")
            .iter()
            .any(|c| text(c, "/type") == kind && text(c, "/status") == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if !text(job, "/metadata/deletionTimestamp").is_empty() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// The cells of one row (aligned with [`columns`]); `age` formats a timestamp relative to
/// now, as upstream's server does.
pub fn cells(info: &ResourceInfo, object: &Value, age: &dyn Fn(&str) -> String) -> Vec<Value> {
    let name = json!(text(object, "/metadata/name"));
    let created = text(object, "/metadata/creationTimestamp");
    let age_cell = json!(age(created));
    match (info.group, info.plural) {
        ("", "pods") => {
            let statuses = list(object, "/status/containerStatuses");
            let total = list(object, "/spec/containers").len();
            let ready = statuses.iter().filter(|s| s.get("ready") == Some(&json!(true))).count();
            let restarts = statuses
                .iter()
                .fold(0i64, |sum, s| sum.saturating_add(int(s, "/restartCount")));
            let gates = list(object, "/spec/readinessGates").len();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(object)),
                json!(restarts.to_string()),
                age_cell,
                json!(or_none(text(object, "/status/podIP").to_string())),
                json!(or_none(text(object, "/spec/nodeName").to_string())),
                json!(or_none(text(object, "/status/nominatedNodeName").to_string())),
                json!(if gates == 0 {
                    "<none>".to_string()
                } else {
                    format!("0/{gates}")
                }),
            ]
        }
        ("apps", "deployments") => {
            let (containers, images) = template_columns(object, "/spec/template");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(object, "/status/readyReplicas"),
                    int(object, "/spec/replicas")
                )),
                json!(int(object, "/status/updatedReplicas")),
                json!(int(object, "/status/availableReplicas")),
                age_cell,
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("apps", "replicasets") | ("", "replicationcontrollers") => {
            let (containers, images) = template_columns(object, "/spec/template");
            vec![
                name,
                json!(int(object, "/spec/replicas")),
                json!(int(object, "/status/replicas")),
                json!(int(object, "/status/readyReplicas")),
                age_cell,
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("apps", "statefulsets") => {
            let (containers, images) = template_columns(object, "/spec/template");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(object, "/status/readyReplicas"),
                    int(object, "/spec/replicas")
                )),
                age_cell,
                json!(containers),
                json!(images),
            ]
        }
        ("apps", "daemonsets") => {
            let (containers, images) = template_columns(object, "/spec/template");
            vec![
                name,
                json!(int(object, "/status/desiredNumberScheduled")),
                json!(int(object, "/status/currentNumberScheduled")),
                json!(int(object, "/status/numberReady")),
                json!(int(object, "/status/updatedNumberScheduled")),
                json!(int(object, "/status/numberAvailable")),
                json!(selector_text(object.pointer("/spec/template/spec/nodeSelector"))),
                age_cell,
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("", "services") => vec![
            name,
            json!(text(object, "/spec/type")),
            json!(or_none(text(object, "/spec/clusterIP").to_string())),
            json!(external_ip(object)),
            json!(service_ports(object)),
            age_cell,
            json!(selector_text(object.pointer("/spec/selector"))),
        ],
        ("", "configmaps") => {
            let data = object.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + object
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(data), age_cell]
        }
        ("", "secrets") => {
            let data = object.get("data").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![name, json!(text(object, "/type")), json!(data), age_cell]
        }
        ("", "serviceaccounts") => vec![name, json!(list(object, "/secrets").len().to_string()), age_cell],
        ("", "namespaces") => vec![name, json!(text(object, "/status/phase")), age_cell],
        ("", "nodes") => {
            let ready = list(object, "/status/conditions")
                .iter()
                .find(|c| text(c, "/type") == "Ready")
                .map(|c| {
                    if text(c, "/status") == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if object.pointer("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let mut roles: Vec<&str> = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            roles.sort_unstable();
            let address = |kind: &str| {
                list(object, "/status/addresses")
                    .iter()
                    .find(|a| text(a, "/type") == kind)
                    .map_or("<none>".to_string(), |a| text(a, "/address").to_string())
            };
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age_cell,
                json!(text(object, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(text(object, "/status/nodeInfo/osImage")),
                json!(text(object, "/status/nodeInfo/kernelVersion")),
                json!(text(object, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        ("", "endpoints") => {
            let mut endpoints = Vec::new();
            for subset in list(object, "/subsets") {
                for address in list(subset, "/addresses") {
                    for port in list(subset, "/ports") {
                        endpoints.push(format!("{}:{}", text(address, "/ip"), int(port, "/port")));
                    }
                    if list(subset, "/ports").is_empty() {
                        endpoints.push(text(address, "/ip").to_string());
                    }
                }
            }
            vec![name, json!(or_none(endpoints.join(","))), age_cell]
        }
        ("batch", "jobs") => {
            let (containers, images) = template_columns(object, "/spec/template");
            let completions = match object.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(total) => format!("{}/{total}", int(object, "/status/succeeded")),
                None => format!(
                    "{}/1 of {}",
                    int(object, "/status/succeeded"),
                    int(object, "/spec/parallelism").max(1)
                ),
            };
            let start = text(object, "/status/startTime");
            let end = text(object, "/status/completionTime");
            let duration = match (start.is_empty(), end.is_empty()) {
                (true, _) => String::new(),
                (false, true) => age(start),
                (false, false) => elapsed(start, end).map(human_duration).unwrap_or_default(),
            };
            vec![
                name,
                json!(job_status(object)),
                json!(completions),
                json!(duration),
                age_cell,
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("batch", "cronjobs") => {
            let (containers, images) = template_columns(object, "/spec/jobTemplate/spec/template");
            let last = text(object, "/status/lastScheduleTime");
            vec![
                name,
                json!(text(object, "/spec/schedule")),
                json!(or_none(text(object, "/spec/timeZone").to_string())),
                json!(
                    object
                        .pointer("/spec/suspend")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(list(object, "/status/active").len()),
                json!(if last.is_empty() {
                    "<none>".to_string()
                } else {
                    age(last)
                }),
                age_cell,
                json!(containers),
                json!(images),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        ("", "persistentvolumeclaims") => vec![
            name,
            json!(text(object, "/status/phase")),
            json!(text(object, "/spec/volumeName")),
            json!(text(object, "/status/capacity/storage")),
            json!(access_modes(object, "/status/accessModes")),
            json!(or_none(text(object, "/spec/storageClassName").to_string())),
            json!(or_none(text(object, "/spec/volumeAttributesClassName").to_string())),
            age_cell,
            json!(text(object, "/spec/volumeMode")),
        ],
        ("", "persistentvolumes") => {
            let claim = match text(object, "/spec/claimRef/name") {
                "" => String::new(),
                claim => format!("{}/{claim}", text(object, "/spec/claimRef/namespace")),
            };
            vec![
                name,
                json!(text(object, "/spec/capacity/storage")),
                json!(access_modes(object, "/spec/accessModes")),
                json!(text(object, "/spec/persistentVolumeReclaimPolicy")),
                json!(text(object, "/status/phase")),
                json!(claim),
                json!(text(object, "/spec/storageClassName")),
                json!(or_none(text(object, "/spec/volumeAttributesClassName").to_string())),
                json!(text(object, "/status/reason")),
                age_cell,
                json!(text(object, "/spec/volumeMode")),
            ]
        }
        ("networking.k8s.io", "ingresses") => {
            let hosts: Vec<&str> = list(object, "/spec/rules")
                .iter()
                .map(|r| text(r, "/host"))
                .filter(|h| !h.is_empty())
                .collect();
            let addresses: Vec<&str> = list(object, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| text(i, "/ip"))
                .filter(|a| !a.is_empty())
                .collect();
            let ports = if list(object, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                json!(or_none(text(object, "/spec/ingressClassName").to_string())),
                json!(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                json!(addresses.join(",")),
                json!(ports),
                age_cell,
            ]
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            let reference = format!(
                "{}/{}",
                text(object, "/spec/scaleTargetRef/kind"),
                text(object, "/spec/scaleTargetRef/name")
            );
            let min = object.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1);
            vec![
                name,
                json!(reference),
                json!(or_none(String::new())),
                json!(min.to_string()),
                json!(int(object, "/spec/maxReplicas").to_string()),
                json!(int(object, "/status/currentReplicas").to_string()),
                age_cell,
            ]
        }
        ("coordination.k8s.io", "leases") => {
            vec![name, json!(text(object, "/spec/holderIdentity")), age_cell]
        }
        ("storage.k8s.io", "storageclasses") => {
            let default_class = object
                .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true");
            let shown = if default_class {
                format!("{} (default)", text(object, "/metadata/name"))
            } else {
                text(object, "/metadata/name").to_string()
            };
            vec![
                json!(shown),
                json!(text(object, "/provisioner")),
                json!(text(object, "/reclaimPolicy")),
                json!(text(object, "/volumeBindingMode")),
                json!(
                    object
                        .get("allowVolumeExpansion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string()
                ),
                age_cell,
            ]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let subjects = list(object, "/subjects");
            let of = |kind: &str| {
                subjects
                    .iter()
                    .filter(|s| text(s, "/kind") == kind)
                    .map(|s| match text(s, "/namespace") {
                        "" => text(s, "/name").to_string(),
                        ns => format!("{ns}/{}", text(s, "/name")),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    text(object, "/roleRef/kind"),
                    text(object, "/roleRef/name")
                )),
                age_cell,
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        ("scheduling.k8s.io", "priorityclasses") => vec![
            name,
            json!(int(object, "/value")),
            json!(object.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            age_cell,
            json!(text(object, "/preemptionPolicy")),
        ],
        ("policy", "poddisruptionbudgets") => {
            let shown = |pointer: &str| match object.pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".to_string(),
            };
            vec![
                name,
                json!(shown("/spec/minAvailable")),
                json!(shown("/spec/maxUnavailable")),
                json!(int(object, "/status/disruptionsAllowed")),
                age_cell,
            ]
        }
        ("", "events") => {
            let last = [text(object, "/lastTimestamp"), text(object, "/eventTime"), created]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or_default();
            let involved = format!(
                "{}/{}",
                text(object, "/involvedObject/kind").to_lowercase(),
                text(object, "/involvedObject/name")
            );
            vec![
                json!(age(last)),
                json!(text(object, "/type")),
                json!(text(object, "/reason")),
                json!(involved),
                json!(text(object, "/message").trim()),
            ]
        }
        ("", "resourcequotas") => {
            // Quota figures come from status (the quota controller fills it), in resource
            // name order; `limits.*` go to the Limit column.
            let hard = object.pointer("/status/hard").and_then(Value::as_object);
            let (mut requests, mut limits) = (Vec::new(), Vec::new());
            for (resource, quantity) in hard.into_iter().flatten() {
                let used = object
                    .pointer(&format!(
                        "/status/used/{}",
                        resource.replace('~', "~0").replace('/', "~1")
                    ))
                    .map_or("0".to_string(), quantity_text);
                let entry = format!("{resource}: {used}/{}", quantity_text(quantity));
                if resource.starts_with("limits.") {
                    limits.push(entry);
                } else {
                    requests.push(entry);
                }
            }
            vec![name, age_cell, json!(requests.join(", ")), json!(limits.join(", "))]
        }
        ("apps", "controllerrevisions") => {
            let controller = list(object, "/metadata/ownerReferences")
                .iter()
                .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
                .map_or("<none>".to_string(), |owner| {
                    let group = text(owner, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
                    let kind = text(owner, "/kind").to_lowercase();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", text(owner, "/name"))
                });
            vec![name, json!(controller), json!(int(object, "/revision")), age_cell]
        }
        ("networking.k8s.io", "ingressclasses") => {
            let parameters = match object.pointer("/spec/parameters") {
                Some(p) if p.is_object() => {
                    let group = match text(p, "/apiGroup") {
                        "" => String::new(),
                        group => format!(".{group}"),
                    };
                    format!("{}{group}/{}", text(p, "/kind"), text(p, "/name"))
                }
                _ => "<none>".to_string(),
            };
            vec![
                name,
                json!(text(object, "/spec/controller")),
                json!(parameters),
                age_cell,
            ]
        }
        ("networking.k8s.io", "networkpolicies") => {
            let selector = object
                .pointer("/spec/podSelector")
                .map(crate::selector::label_selector_text)
                .unwrap_or_default();
            vec![name, json!(or_none(selector)), age_cell]
        }
        ("discovery.k8s.io", "endpointslices") => {
            let ports = list(object, "/ports").iter().map(|p| match p.get("port") {
                Some(Value::Number(n)) => n.to_string(),
                _ => match text(p, "/name") {
                    "" => "*".to_string(),
                    name => name.to_string(),
                },
            });
            let addresses = list(object, "/endpoints")
                .iter()
                .flat_map(|e| list(e, "/addresses"))
                .map(|a| a.as_str().unwrap_or_default().to_string());
            vec![
                name,
                json!(text(object, "/addressType")),
                json!(first_three(ports)),
                json!(first_three(addresses)),
                age_cell,
            ]
        }
        _ => vec![name, json!(created)],
    }
}

/// Upstream's `listWithMoreString`: the first three, then how many more; `<unset>` if none.
fn first_three(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.len() {
        0 => "<unset>".to_string(),
        n if n > 3 => format!("{} + {} more...", items[..3].join(","), n - 3),
        _ => items.join(","),
    }
}

fn quantity_text(quantity: &Value) -> String {
    match quantity {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whole seconds between two RFC 3339 UTC timestamps (`2026-11-23T12:00:00Z`).
pub fn elapsed(from: &str, to: &str) -> Option<i64> {
    epoch_seconds(to)?.checked_sub(epoch_seconds(from)?)
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp in UTC (fractions ignored).
pub fn epoch_seconds(timestamp: &str) -> Option<i64> {
    let (date, time) = timestamp.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split(['.', '+']).next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    let in_range = (0..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..=23).contains(&hour)
        && (0..=59).contains(&minute)
        && (0..=60).contains(&second);
    if !in_range {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm); the ranges above keep it in bounds.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Upstream's `HumanDuration`: `45s`, `3m20s`, `5h12m`, `3d4h`, `2y30d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = seconds / 3600;
    let days = hours / 24;
    let years = days / 365;
    let with_rest = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        with_rest(minutes, "m", seconds % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        with_rest(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with_rest(days, "d", hours % 24, "h")
    } else if hours < 24 * 365 * 2 {
        format!("{days}d")
    } else if hours < 24 * 365 * 8 {
        with_rest(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find;

    #[test]
    fn durations() {
        for (seconds, shown) in [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (5 * 3600 + 12 * 60, "5h12m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human_duration(seconds), shown, "{seconds}");
        }
        assert_eq!(elapsed("2026-11-23T12:00:00Z", "2026-11-23T12:05:30Z"), Some(330));
        assert_eq!(epoch_seconds("1970-01-02T00:00:00Z"), Some(86_400));
        assert_eq!(epoch_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(epoch_seconds("99999999999999-01-01T00:00:00Z"), None);
        assert_eq!(epoch_seconds("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn every_row_matches_its_columns() {
        let object = json!({"metadata": {"name": "x", "creationTimestamp": "2026-11-23T12:00:00Z"}});
        for info in crate::resources() {
            assert_eq!(
                columns(info).len(),
                cells(info, &object, &|_| "1m".into()).len(),
                "{}",
                info.plural
            );
        }
    }

    #[test]
    fn quotas_revisions_classes_policies_and_slices() {
        let age = |_: &str| "1m".to_string();
        let quota = json!({"metadata": {"name": "q"}, "status": {
            "hard": {"pods": "10", "requests.cpu": "1", "limits.memory": "1Gi"},
            "used": {"pods": "3"}}});
        assert_eq!(
            cells(find("", "v1", "resourcequotas").unwrap(), &quota, &age),
            vec![
                json!("q"),
                json!("1m"),
                json!("pods: 3/10, requests.cpu: 0/1"),
                json!("limits.memory: 0/1Gi")
            ]
        );
        let revision = json!({"metadata": {"name": "web-5d8f", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}, "revision": 3});
        assert_eq!(
            cells(find("apps", "v1", "controllerrevisions").unwrap(), &revision, &age),
            vec![json!("web-5d8f"), json!("statefulset.apps/web"), json!(3), json!("1m")]
        );
        let class = json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"}}});
        assert_eq!(
            cells(find("networking.k8s.io", "v1", "ingressclasses").unwrap(), &class, &age)[1..3],
            [
                json!("k8s.io/ingress-nginx"),
                json!("IngressParameters.k8s.example.com/external-lb")
            ]
        );
        let policy = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(
            cells(
                find("networking.k8s.io", "v1", "networkpolicies").unwrap(),
                &policy,
                &age
            )[1],
            json!("<none>")
        );
        let policy = json!({"metadata": {"name": "web"}, "spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
        assert_eq!(
            cells(
                find("networking.k8s.io", "v1", "networkpolicies").unwrap(),
                &policy,
                &age
            )[1],
            json!("app=web")
        );
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}, {"name": "metrics"}],
            "endpoints": [{"addresses": ["10.42.0.1"]}, {"addresses": ["10.42.0.2", "10.42.0.3"]}, {"addresses": ["10.42.0.4"]}]});
        assert_eq!(
            cells(find("discovery.k8s.io", "v1", "endpointslices").unwrap(), &slice, &age)[1..4],
            [
                json!("IPv4"),
                json!("80,metrics"),
                json!("10.42.0.1,10.42.0.2,10.42.0.3 + 1 more...")
            ]
        );
    }

    #[test]
    fn pods_and_services() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2026-11-23T12:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        });
        let row = cells(find("", "v1", "pods").unwrap(), &pod, &|_| "5m".into());
        assert_eq!(
            row,
            vec![
                json!("web-1"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3"),
                json!("5m"),
                json!("10.42.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.7",
            "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let row = cells(find("", "v1", "services").unwrap(), &svc, &|_| "1m".into());
        assert_eq!(
            row[1..5],
            [
                json!("NodePort"),
                json!("10.43.0.7"),
                json!("<none>"),
                json!("80:30080/TCP")
            ]
        );
        assert_eq!(row[6], json!("app=web"));
    }
}
