//! The ReplicaSet controller (and the ReplicationController one, the same logic over the
//! legacy kind), as upstream's `pkg/controller/replicaset`: reconcile(key) claims the
//! active pods its selector matches (adopting orphans, releasing pods that no longer
//! match), creates missing pods in slow-start batches or deletes the least useful extra
//! ones, unless expectations say earlier actions are not yet visible, then writes the
//! status (replicas, fully labelled, ready, available, observedGeneration, ReplicaFailure).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use rkube_api::selector::LabelSelector;
use rkube_client::events::{Recorder, reference};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::expectations::Expectations;
use crate::pods::{
    controller_of, deletion_order, from_template, is_active, is_available, is_ready, labels_match, slow_start,
};
use crate::shared::{PodEvent, SharedPods, handle_events};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

/// Upstream's `BurstReplicas`: at most this many creations or deletions per sync.
const BURST_REPLICAS: usize = 500;
/// Upstream's `--concurrent-replicaset-syncs`.
const WORKERS: usize = 5;

/// What the controller needs of a ReplicaSet or a ReplicationController.
pub trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    fn replicas(&self) -> i32;
    fn pod_selector(&self) -> Option<LabelSelector>;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
    /// The status fields the controller owns, as they are now.
    fn status_now(&self) -> Value;
}

impl Replicated for ReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn pod_selector(&self) -> Option<LabelSelector> {
        crate::pods::selector(self.spec.as_ref().map(|s| &s.selector))
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
    fn status_now(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
}

impl Replicated for ReplicationController {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn pod_selector(&self) -> Option<LabelSelector> {
        let map = self.spec.as_ref()?.selector.as_ref().filter(|m| !m.is_empty())?;
        let text: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        LabelSelector::parse(&text.join(",")).ok()
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
    fn status_now(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
}

pub struct Controller<K: Replicated> {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    owners: Store<K>,
    pods: SharedPods,
    expectations: Mutex<Expectations>,
    /// Pods seen so far, so that an update is not taken for a creation.
    seen: Mutex<std::collections::HashSet<String>>,
}

fn controller_ref<K: Replicated>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The status a set of owned pods amounts to (upstream's `calculateStatus`); fields that
/// upstream omits when zero are null, so that a merge patch removes them.
fn status_of<K: Replicated>(owner: &K, owned: &[&Pod], failure: Option<(&str, String)>) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now();
    let template_labels = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labelled = owned
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = owned.iter().filter(|p| is_ready(p)).count();
    let available = owned
        .iter()
        .filter(|p| is_available(p, owner.min_ready_seconds(), now))
        .count();
    let omit_zero = |n: usize| if n == 0 { Value::Null } else { json!(n) };
    let previous = owner.status_now();
    let conditions: Vec<Value> = previous
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some("ReplicaFailure"))
        .cloned()
        .chain(failure.map(|(reason, message)| {
            json!({"type": "ReplicaFailure", "status": "True", "reason": reason, "message": message,
                   "lastTransitionTime": rkube_client::api_time(now)})
        }))
        .collect();
    json!({
        "replicas": owned.len(),
        "fullyLabeledReplicas": omit_zero(fully_labelled),
        "readyReplicas": omit_zero(ready),
        "availableReplicas": omit_zero(available),
        "observedGeneration": owner.meta().generation,
        "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
    })
}

/// Whether `wanted` (with nulls for absent fields) differs from `current`.
fn status_differs(current: &Value, wanted: &Value) -> bool {
    wanted.as_object().into_iter().flatten().any(|(field, value)| {
        let have = current.get(field).unwrap_or(&Value::Null);
        if field == "conditions" {
            // Transition times are rewritten on every computation; compare the rest.
            let strip = |v: &Value| -> Vec<(Value, Value, Value)> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
                    .collect()
            };
            return strip(have) != strip(value);
        }
        have != value
    })
}

impl<K: Replicated> Controller<K> {
    fn owner_key_of_pod(&self, pod: &Pod) -> Option<String> {
        let owner = controller_of(pod)?;
        (owner.kind == K::kind(&()) && owner.api_version == K::api_version(&()))
            .then(|| format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name))
    }

    /// Orphans wake every owner in their namespace whose selector matches them.
    fn owners_selecting(&self, pod: &Pod) -> Vec<String> {
        let namespace = pod.namespace().unwrap_or_default();
        self.owners
            .state()
            .iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(namespace.as_str()))
            .filter(|o| {
                o.pod_selector()
                    .is_some_and(|s| labels_match(&s, pod.metadata.labels.as_ref()))
            })
            .map(|o| key_of(o.as_ref()))
            .collect()
    }

    async fn pod_event(&self, pod: &Pod, deleted: bool) {
        let pod_key = key_of(pod);
        let uid = pod.uid().unwrap_or_default();
        let first_sight = !deleted && self.seen.lock().await.insert(uid.clone());
        if deleted {
            self.seen.lock().await.remove(&uid);
        }
        let Some(owner) = self.owner_key_of_pod(pod) else {
            if !deleted {
                for owner in self.owners_selecting(pod) {
                    self.queue.add(&owner).await;
                }
            }
            return;
        };
        {
            let mut expectations = self.expectations.lock().await;
            if deleted || pod.metadata.deletion_timestamp.is_some() {
                expectations.deletion_observed(&owner, &pod_key);
            } else if first_sight {
                expectations.creation_observed(&owner);
            }
        }
        self.queue.add(&owner).await;
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(owner) = self.owners.get(&ObjectRef::new(name).within(namespace)) else {
            self.expectations.lock().await.forget(key);
            return Ok(None);
        };
        let needs_sync = self.expectations.lock().await.satisfied(key);
        let Some(selector) = owner.pod_selector() else {
            tracing::warn!(key, "invalid or empty selector; nothing to manage");
            return Ok(None);
        };
        let uid = owner.uid().unwrap_or_default();
        // Its own pods, and the orphans it might adopt: pods other controllers control
        // are none of its business.
        let candidates = self.pods.claimable(&uid, namespace);
        let mut owned: Vec<&Pod> = Vec::new();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        for pod in candidates.iter().filter(|p| is_active(p)) {
            let matches = labels_match(&selector, pod.metadata.labels.as_ref());
            match controller_of(pod.as_ref()) {
                Some(c) if c.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if owner.meta().deletion_timestamp.is_none() {
                        self.set_owner(&pods, pod, None).await?;
                    }
                }
                Some(_) => {}
                None if matches && owner.meta().deletion_timestamp.is_none() => {
                    self.set_owner(&pods, pod, Some(controller_ref(owner.as_ref()))).await?;
                    owned.push(pod);
                }
                None => {}
            }
        }
        let failure = if needs_sync && owner.meta().deletion_timestamp.is_none() {
            self.manage(&owner, key, &owned).await.err()
        } else {
            None
        };
        let status = status_of(
            owner.as_ref(),
            &owned,
            failure.as_ref().map(|(reason, err)| (*reason, err.to_string())),
        );
        if status_differs(&owner.status_now(), &status) {
            let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                .await
                .map_err(|source| ControllerError::api(key, "updating the status", source))?;
        }
        if let Some((_, err)) = failure {
            return Err(err);
        }
        let (ready, available) = (
            status["readyReplicas"].as_u64().unwrap_or(0),
            status["availableReplicas"].as_u64().unwrap_or(0),
        );
        let replicas = u64::try_from(owner.replicas()).unwrap_or(0);
        if owner.min_ready_seconds() > 0 && ready == replicas && available != replicas {
            let wait = u64::try_from(owner.min_ready_seconds()).unwrap_or(0);
            return Ok(Some(Duration::from_secs(wait)));
        }
        Ok(None)
    }

    /// Adopts (`Some`) or releases (`None`) a pod.
    async fn set_owner(
        &self,
        pods: &Api<Pod>,
        pod: &Pod,
        owner: Option<OwnerReference>,
    ) -> Result<(), ControllerError> {
        let mut references: Vec<OwnerReference> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.controller != Some(true))
            .cloned()
            .collect();
        references.extend(owner);
        let patch = json!({"metadata": {"uid": pod.uid(), "ownerReferences": references}});
        match pods
            .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Gone meanwhile: nothing to adopt or release.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(ControllerError::api(&key_of(pod), "claiming the pod", source)),
        }
    }

    /// Creates or deletes pods towards the wanted count (upstream's `manageReplicas`).
    async fn manage(&self, owner: &K, key: &str, owned: &[&Pod]) -> Result<(), (&'static str, ControllerError)> {
        let wanted = usize::try_from(owner.replicas()).unwrap_or(0);
        let namespace = owner.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let involved = reference(owner);
        if owned.len() < wanted {
            let count = (wanted - owned.len()).min(BURST_REPLICAS);
            let Some(template) = owner.template() else {
                return Ok(());
            };
            self.expectations.lock().await.expect_creations(key, count);
            let pod = from_template(template, &owner.name_any(), controller_ref(owner));
            let encoded = serde_json::to_vec(&pod).map_err(|err| {
                (
                    "FailedCreate",
                    ControllerError::api(key, "encoding pods", kube::Error::SerdeError(err)),
                )
            })?;
            // Encoded once; of each answer only the name is read (the whole pod, managedFields
            // and all, would be decoded to be dropped).
            let results = slow_start(count, |_| {
                rkube_client::create_encoded::<crate::pods::Created>(&self.client, pods.resource_url(), encoded.clone())
            })
            .await;
            let attempted = results.len();
            let mut failed = None;
            for result in results {
                match result {
                    Ok(created) => {
                        let message = format!("Created pod: {}", created.metadata.name);
                        self.event(&involved, "Normal", "SuccessfulCreate", &message).await;
                    }
                    Err(err) => {
                        self.expectations.lock().await.creation_observed(key);
                        let message = format!("Error creating: {}", crate::api_message(&err));
                        self.event(&involved, "Warning", "FailedCreate", &message).await;
                        failed = Some(err);
                    }
                }
            }
            if let Some(err) = failed {
                // The rest of this sync's creations will not happen.
                let mut expectations = self.expectations.lock().await;
                for _ in attempted..count {
                    expectations.creation_observed(key);
                }
                return Err(("FailedCreate", ControllerError::api(key, "creating pods", err)));
            }
        } else if owned.len() > wanted {
            let count = (owned.len() - wanted).min(BURST_REPLICAS);
            let mut order: Vec<&Pod> = owned.to_vec();
            deletion_order(&mut order, owned);
            let victims = &order[..count];
            self.expectations
                .lock()
                .await
                .expect_deletions(key, victims.iter().map(|p| key_of(*p)));
            let params = DeleteParams::default();
            let results = join_all(
                victims
                    .iter()
                    .map(|p| pods.delete(p.metadata.name.as_deref().unwrap_or_default(), &params)),
            )
            .await;
            let mut failed = None;
            for (pod, result) in victims.iter().zip(results) {
                match result {
                    Ok(_) => {
                        let message = format!("Deleted pod: {}", pod.name_any());
                        self.event(&involved, "Normal", "SuccessfulDelete", &message).await;
                    }
                    Err(err) => {
                        self.expectations.lock().await.deletion_observed(key, &key_of(*pod));
                        let message = format!("Error deleting: {}", crate::api_message(&err));
                        self.event(&involved, "Warning", "FailedDelete", &message).await;
                        failed = Some(err);
                    }
                }
            }
            if let Some(err) = failed {
                return Err(("FailedDelete", ControllerError::api(key, "deleting pods", err)));
            }
        }
        Ok(())
    }

    async fn event(
        &self,
        involved: &k8s_openapi::api::core::v1::ObjectReference,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        self.recorder.emit(involved, kind, reason, message).await;
    }
}

/// Runs the controller for `K` until the future is dropped.
pub async fn run<K: Replicated>(client: kube::Client, pods: SharedPods, pod_events: UnboundedReceiver<PodEvent>) {
    let (owners, owner_writer) = reflector::store::<K>();
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
        client: client.clone(),
        queue: WorkQueue::new(),
        owners: owners.clone(),
        pods: pods.clone(),
        expectations: Mutex::new(Expectations::default()),
        seen: Mutex::new(std::collections::HashSet::new()),
    });
    let owner_events = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(crate::trim)
        .reflect(owner_writer);
    let watching_owners = {
        let controller = Arc::clone(&controller);
        async move {
            let mut events = std::pin::pin!(owner_events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(owner) | watcher::Event::InitApply(owner)) => {
                        controller.queue.add(&key_of(&owner)).await;
                    }
                    Ok(watcher::Event::Delete(owner)) => {
                        let key = key_of(&owner);
                        controller.expectations.lock().await.forget(&key);
                        controller.queue.add(&key).await;
                    }
                    _ => {}
                }
            }
        }
    };
    let watching_pods = {
        let controller = Arc::clone(&controller);
        handle_events(pod_events, move |pod, deleted| {
            let controller = Arc::clone(&controller);
            async move { controller.pod_event(&pod, deleted).await }
        })
    };
    let working = async {
        owners.wait_until_ready().await.ok();
        pods.wait_until_ready().await;
        // Each worker a task of its own: deep futures polled inline would need a deep stack.
        let mut workers = tokio::task::JoinSet::new();
        let queue = Arc::clone(&controller.queue);
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut workers, &queue, WORKERS, "replicaset", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
        workers.join_all().await;
    };
    tokio::join!(watching_owners, watching_pods, working);
}
