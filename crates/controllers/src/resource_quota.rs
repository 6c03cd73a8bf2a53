//! The ResourceQuota controller, as upstream's `pkg/controller/resourcequota`: each quota's
//! `status.hard` mirrors its spec and `status.used` counts what its namespace holds of every
//! resource named in it: object counts (`pods`, `services`, `count/deployments.apps`, ...),
//! the compute requests and limits of its non-terminal pods (within the quota's scopes),
//! storage requested by claims (per class too), node ports and load balancers. Usage is
//! recounted when the quota changes, when pods, services or claims in the namespace change,
//! and periodically for the other kinds. Enforcement is admission's, later.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceQuota, Service};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use rkube_api::quantity;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::shared::{PodEvent, SharedPods};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

const WORKERS: usize = 2;
/// Kinds without a watch of their own are recounted this often.
const RESYNC: Duration = Duration::from_secs(30);
const CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";
/// Besides pods (the controller manager's shared informer), services and claims (which the
/// controller caches), the kinds it watches.
const WATCHED_COUNTS: [(&str, &str); 9] = [
    ("", "configmaps"),
    ("", "secrets"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];

pub struct Controller {
    client: kube::Client,
    queue: Arc<WorkQueue>,
    quotas: Store<ResourceQuota>,
    pods: SharedPods,
    services: Store<Service>,
    claims: Store<PersistentVolumeClaim>,
}

/// A sum of quantities, remembering whether they were written in binary suffixes.
#[derive(Debug, Default, Clone, Copy)]
struct Sum {
    value: f64,
    binary: Option<bool>,
}

impl Sum {
    fn add_text(&mut self, text: &str) {
        if let Some(value) = quantity::parse(text) {
            self.value += value;
            self.binary.get_or_insert(text.ends_with('i'));
        }
    }
    fn text(&self) -> String {
        quantity::format(self.value, self.binary.unwrap_or(false))
    }
}

/// A pod's requests or limits: the sum over its containers, or the largest init
/// container's when that is more, plus its overhead (upstream's `PodRequests`).
fn pod_resources(pod: &Pod, limits: bool) -> BTreeMap<String, f64> {
    let Some(spec) = pod.spec.as_ref() else {
        return BTreeMap::new();
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| -> BTreeMap<String, f64> {
        let resources = c.resources.as_ref();
        let list = if limits {
            resources.and_then(|r| r.limits.as_ref())
        } else {
            resources.and_then(|r| r.requests.as_ref())
        };
        list.into_iter()
            .flatten()
            .filter_map(|(k, q)| quantity::parse(&q.0).map(|v| (k.clone(), v)))
            .collect()
    };
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for container in &spec.containers {
        for (k, v) in of(container) {
            *total.entry(k).or_default() += v;
        }
    }
    for init in spec.init_containers.iter().flatten() {
        for (k, v) in of(init) {
            let entry = total.entry(k).or_default();
            *entry = entry.max(v);
        }
    }
    for (k, q) in spec.overhead.iter().flatten() {
        if let Some(v) = quantity::parse(&q.0) {
            *total.entry(k.clone()).or_default() += v;
        }
    }
    total
}

/// The original text of the first quantity of `resource` among the pod's containers, to
/// keep its format (binary or decimal) in the sum.
fn first_text(pods: &[&Pod], resource: &str, limits: bool) -> Option<String> {
    pods.iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .find_map(|c| {
            let r = c.resources.as_ref()?;
            let list = if limits { r.limits.as_ref() } else { r.requests.as_ref() };
            list?.get(resource).map(|q| q.0.clone())
        })
}

fn is_best_effort(pod: &Pod) -> bool {
    pod_resources(pod, false).is_empty() && pod_resources(pod, true).is_empty()
}

/// Whether the pod falls within every scope of the quota.
pub fn pod_in_scopes(quota: &ResourceQuota, pod: &Pod) -> bool {
    let spec = quota.spec.clone().unwrap_or_default();
    let terminating = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds).is_some();
    let scopes_ok = spec.scopes.iter().flatten().all(|scope| match scope.as_str() {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        _ => true,
    });
    let class = pod
        .spec
        .as_ref()
        .and_then(|s| s.priority_class_name.clone())
        .unwrap_or_default();
    let selector_ok = spec
        .scope_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
        .all(|e| {
            let values = e.values.clone().unwrap_or_default();
            match (e.scope_name.as_str(), e.operator.as_str()) {
                ("PriorityClass", "In") => values.contains(&class),
                ("PriorityClass", "NotIn") => !values.contains(&class),
                ("PriorityClass", "Exists") => !class.is_empty(),
                ("PriorityClass", "DoesNotExist") => class.is_empty(),
                ("Terminating", _) => terminating,
                ("NotTerminating", _) => !terminating,
                ("BestEffort", _) => is_best_effort(pod),
                ("NotBestEffort", _) => !is_best_effort(pod),
                _ => true,
            }
        });
    scopes_ok && selector_ok
}

/// Usage of the pod-related resources named in `hard` by `pods` (all in scope).
fn pod_usage(hard: &[String], pods: &[&Pod]) -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    let requests: Vec<BTreeMap<String, f64>> = pods.iter().map(|p| pod_resources(p, false)).collect();
    let limits: Vec<BTreeMap<String, f64>> = pods.iter().map(|p| pod_resources(p, true)).collect();
    for key in hard {
        let (list, resource, is_limit) = if key == "pods" || key == "count/pods" {
            used.insert(key.clone(), pods.len().to_string());
            continue;
        } else if let Some(resource) = key.strip_prefix("requests.") {
            (&requests, resource, false)
        } else if let Some(resource) = key.strip_prefix("limits.") {
            (&limits, resource, true)
        } else if matches!(key.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            (&requests, key.as_str(), false)
        } else {
            continue;
        };
        if resource == "storage" {
            continue;
        }
        let value: f64 = list.iter().filter_map(|r| r.get(resource)).sum();
        let binary = first_text(pods, resource, is_limit).is_some_and(|t| t.ends_with('i'));
        used.insert(key.clone(), quantity::format(value, binary));
    }
    used
}

/// Usage of the claim-related resources named in `hard`.
fn claim_usage(hard: &[String], claims: &[&PersistentVolumeClaim]) -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    let requested = |c: &PersistentVolumeClaim| -> Option<String> {
        c.spec
            .as_ref()?
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")
            .map(|q| q.0.clone())
    };
    for key in hard {
        let (selected, what): (Vec<&&PersistentVolumeClaim>, &str) =
            if let Some((class, what)) = key.split_once(CLASS_SUFFIX) {
                let of_class = claims
                    .iter()
                    .filter(|c| rkube_api::volumes::claim_class(c) == class)
                    .collect();
                (of_class, what)
            } else {
                (claims.iter().collect(), key.as_str())
            };
        match what {
            "persistentvolumeclaims" | "count/persistentvolumeclaims" => {
                used.insert(key.clone(), selected.len().to_string());
            }
            "requests.storage" => {
                let mut sum = Sum::default();
                for claim in selected {
                    if let Some(text) = requested(claim) {
                        sum.add_text(&text);
                    }
                }
                used.insert(key.clone(), sum.text());
            }
            _ => {}
        }
    }
    used
}

/// Usage of the service-related resources named in `hard`.
fn service_usage(hard: &[String], services: &[&Service]) -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    let of_type = |t: &str| {
        services
            .iter()
            .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some(t))
            .count()
    };
    for key in hard {
        let count = match key.as_str() {
            "services" | "count/services" => services.len(),
            "services.loadbalancers" => of_type("LoadBalancer"),
            "services.nodeports" => services
                .iter()
                .filter(|s| {
                    matches!(
                        s.spec.as_ref().and_then(|s| s.type_.as_deref()),
                        Some("NodePort" | "LoadBalancer")
                    )
                })
                .map(|s| {
                    s.spec
                        .iter()
                        .flat_map(|s| s.ports.iter().flatten())
                        .filter(|p| p.node_port.is_some())
                        .count()
                })
                .sum(),
            _ => continue,
        };
        used.insert(key.clone(), count.to_string());
    }
    used
}

/// The catalogued resource an object-count key names: `configmaps`, `count/<plural>`, or
/// `count/<plural>.<group>`.
fn counted_resource(key: &str) -> Option<&'static rkube_api::ResourceInfo> {
    let (group, plural) = match key {
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => ("", key),
        _ => {
            let resource = key.strip_prefix("count/")?;
            match resource.split_once('.') {
                Some((plural, group)) => (group, plural),
                None => ("", resource),
            }
        }
    };
    rkube_api::catalogue::resources()
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.namespaced() && rkube_api::catalogue::storage_of(r) == *r)
}

impl Controller {
    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(quota) = self.quotas.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        let hard = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
        let keys: Vec<String> = hard.keys().cloned().collect();
        let in_namespace = |ns: Option<String>| ns.as_deref() == Some(namespace);
        // Pods from the informer every pod controller shares, as upstream's quota
        // controller reads them.
        let listed = self.pods.in_namespace(namespace);
        let pods: Vec<&Pod> = listed
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| !crate::pods::is_finished(p) && pod_in_scopes(&quota, p))
            .collect();
        let services_state = self.services.state();
        let services: Vec<&Service> = services_state
            .iter()
            .filter(|s| in_namespace(s.namespace()))
            .map(Arc::as_ref)
            .collect();
        let claims_state = self.claims.state();
        let claims: Vec<&PersistentVolumeClaim> = claims_state
            .iter()
            .filter(|c| in_namespace(c.namespace()))
            .map(Arc::as_ref)
            .collect();
        let mut used = pod_usage(&keys, &pods);
        used.extend(claim_usage(&keys, &claims));
        used.extend(service_usage(&keys, &services));
        let uncounted: Vec<&String> = keys.iter().filter(|k| !used.contains_key(*k)).collect();
        for key in uncounted {
            let Some(info) = counted_resource(key) else {
                continue;
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &crate::api_resource(info));
            let list = api
                .list_metadata(&ListParams::default())
                .await
                .map_err(|source| ControllerError::api(key, "counting objects", source))?;
            used.insert(key.clone(), list.items.len().to_string());
        }
        let status = json!({"hard": hard, "used": used});
        let have = serde_json::to_value(&quota.status).unwrap_or(Value::Null);
        if have.get("hard") != status.get("hard") || have.get("used") != status.get("used") {
            let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), namespace);
            // Resources dropped from the spec leave the status too.
            let mut status = status;
            for field in ["hard", "used"] {
                for old in have
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    if let Some(new) = status[field].as_object_mut() {
                        new.entry(old.clone()).or_insert(Value::Null);
                    }
                }
            }
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                .await
                .map_err(|source| ControllerError::api(key, "updating the status", source))?;
        }
        Ok(None)
    }

    async fn namespace_changed(&self, namespace: Option<String>) {
        let Some(namespace) = namespace else { return };
        let keys: HashSet<String> = self
            .quotas
            .state()
            .iter()
            .filter(|q| q.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .map(|q| key_of(q.as_ref()))
            .collect();
        for key in keys {
            self.queue.add(&key).await;
        }
    }
}

/// Runs the controller until the future is dropped.
pub async fn run(client: kube::Client, pods: SharedPods, pod_events: UnboundedReceiver<PodEvent>) {
    let queue = WorkQueue::new();
    let mut tasks = tokio::task::JoinSet::new();
    let (changes, mut changed) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let quotas = crate::informer::spawn::<ResourceQuota, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |quota, _| {
            let queue = Arc::clone(&queue);
            async move { queue.add(&key_of(&quota)).await }
        }
    });
    let services = crate::informer::spawn::<Service, _, _>(&mut tasks, &client, {
        let changes = changes.clone();
        move |service, _| {
            let _ = changes.send(service.namespace());
            async {}
        }
    });
    let claims = crate::informer::spawn::<PersistentVolumeClaim, _, _>(&mut tasks, &client, {
        let changes = changes.clone();
        move |claim, _| {
            let _ = changes.send(claim.namespace());
            async {}
        }
    });
    {
        let changes = changes.clone();
        tasks.spawn(crate::shared::handle_events(pod_events, move |pod, _| {
            // A closed channel means the controller is going away.
            let _ = changes.send(pod.namespace());
            async {}
        }));
    }
    // The kinds quotas usually count get a metadata-only watch (no cache): their changes
    // recount at once rather than at the next resync.
    for (group, plural) in WATCHED_COUNTS {
        let Some(info) = rkube_api::catalogue::resources()
            .iter()
            .find(|r| r.group == group && r.plural == plural)
        else {
            continue;
        };
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), &crate::api_resource(info));
        let changes = changes.clone();
        tasks.spawn(async move {
            let events = kube::runtime::watcher(api, kube::runtime::watcher::Config::default())
                .default_backoff()
                .touched_objects();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Ok(object) = event {
                    // A closed channel means the controller is going away.
                    let _ = changes.send(object.namespace());
                }
            }
        });
    }
    let controller = Arc::new(Controller {
        client,
        queue: Arc::clone(&queue),
        quotas: quotas.clone(),
        pods: pods.clone(),
        services: services.clone(),
        claims: claims.clone(),
    });
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(async move {
            while let Some(namespace) = changed.recv().await {
                controller.namespace_changed(namespace).await;
            }
        });
    }
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(RESYNC).await;
                for quota in controller.quotas.state() {
                    controller.queue.add(&key_of(quota.as_ref())).await;
                }
            }
        });
    }
    quotas.wait_until_ready().await.ok();
    services.wait_until_ready().await.ok();
    claims.wait_until_ready().await.ok();
    pods.wait_until_ready().await;
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &queue, WORKERS, "resourcequota", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(requests: Value, limits: Value, deadline: Option<i64>) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"activeDeadlineSeconds": deadline, "containers": [
                {"name": "a", "image": "x", "resources": {"requests": requests, "limits": limits}},
                {"name": "b", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}]}}))
        .unwrap()
    }

    #[test]
    fn compute_usage_sums_requests_and_limits() {
        let a = pod(
            json!({"cpu": "500m", "memory": "128Mi"}),
            json!({"cpu": "1", "memory": "256Mi"}),
            None,
        );
        let b = pod(json!({"cpu": "1"}), json!({}), None);
        let keys: Vec<String> = ["pods", "requests.cpu", "requests.memory", "limits.cpu", "memory"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let used = pod_usage(&keys, &[&a, &b]);
        assert_eq!(used["pods"], "2");
        assert_eq!(used["requests.cpu"], "2");
        assert_eq!(used["requests.memory"], "256Mi");
        assert_eq!(used["memory"], "256Mi");
        assert_eq!(used["limits.cpu"], "1");
    }

    #[test]
    fn scopes_select_pods() {
        let quota: ResourceQuota =
            serde_json::from_value(json!({"metadata": {"name": "q"}, "spec": {"scopes": ["Terminating"]}})).unwrap();
        assert!(pod_in_scopes(&quota, &pod(json!({}), json!({}), Some(30))));
        assert!(!pod_in_scopes(&quota, &pod(json!({}), json!({}), None)));
    }

    #[test]
    fn object_count_keys_name_catalogued_resources() {
        assert_eq!(counted_resource("configmaps").map(|r| r.kind), Some("ConfigMap"));
        assert_eq!(
            counted_resource("count/deployments.apps").map(|r| r.kind),
            Some("Deployment")
        );
        assert_eq!(counted_resource("count/secrets").map(|r| r.kind), Some("Secret"));
        assert!(counted_resource("count/nodes").is_none());
    }

    #[test]
    fn storage_is_counted_per_class() {
        let claim = |class: &str, size: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": {"storageClassName": class,
                "resources": {"requests": {"storage": size}}}}))
            .unwrap()
        };
        let (a, b) = (claim("fast", "1Gi"), claim("slow", "512Mi"));
        let keys: Vec<String> = [
            "persistentvolumeclaims",
            "requests.storage",
            "fast.storageclass.storage.k8s.io/requests.storage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let used = claim_usage(&keys, &[&a, &b]);
        assert_eq!(used["persistentvolumeclaims"], "2");
        assert_eq!(used["requests.storage"], "1536Mi");
        assert_eq!(used["fast.storageclass.storage.k8s.io/requests.storage"], "1Gi");
    }
}
