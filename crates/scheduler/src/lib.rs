//! rkube's scheduler: an API client (kube-rs watchers) that places pods on nodes.
//!
//! Pods and nodes are mirrored by reflectors; unassigned pods for this scheduler go through
//! the [`queue`]; each is scheduled against a snapshot of the nodes and the pods on them
//! (plus pods assumed bound but not yet seen bound) by the [`framework`]'s filter and score
//! plugins, then bound through `pods/binding`. A pod that fits nowhere gets the
//! `PodScheduled=False` condition and a `FailedScheduling` event with upstream's message,
//! and waits for a cluster event that could change that. Only the holder of the
//! `kube-system/kube-scheduler` Lease schedules (`rkube_client::leader`).

pub mod cache;
pub mod framework;
pub mod mirror;
pub mod plugins;
pub mod queue;
pub mod resources;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::cache::{Cache, Outcome, is_terminal, node_of, pod_key as key};
use crate::framework::{Choice, priority};
use crate::mirror::Mirrored;
use crate::plugins::default_preemption::Preemption;
use crate::plugins::volume_binding::{BIND_COMPLETED, BOUND_BY_CONTROLLER, SELECTED_NODE, VolumeAction};
use crate::queue::Queue;
use rkube_client::events::{Recorder, reference};
use rkube_client::leader;
use rkube_client::shared::{SharedPods, trim};

/// How long binding waits for the pod's claims to be bound (upstream's `bindTimeoutSeconds`).
const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// The scheduler name pods select by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("binding pod {pod} to node {node}: {source}")]
    Bind {
        pod: String,
        node: String,
        source: kube::Error,
    },
    #[error("binding the volumes of pod {pod}: {message}")]
    Volumes { pod: String, message: String },
}

/// A pod this scheduler must place.
fn wants_scheduling(pod: &Pod, name: &str) -> bool {
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(DEFAULT_SCHEDULER);
    // Pods with scheduling gates wait until every gate is removed (upstream's PreEnqueue).
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    scheduler == name
        && !gated
        && node_of(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

struct Scheduler {
    name: String,
    client: kube::Client,
    recorder: Recorder,
    queue: Queue,
    cache: Mutex<Cache>,
    /// The last version seen of each pod waiting to be scheduled: what a decision is made
    /// for, and what tells its own changes that may let it fit from writes of its status.
    /// Pods come from the process's shared pod informer and are mirrored here and in the
    /// cache only, not in a store besides: that would copy every pod once more per change.
    waiting: std::sync::Mutex<HashMap<String, Arc<Pod>>>,
}

/// Upstream's `isPodUpdated`: a change other than of status, resourceVersion, generation
/// or managedFields.
fn changed_for_scheduling(old: &Pod, new: &Pod) -> bool {
    let (a, b) = (&old.metadata, &new.metadata);
    old.spec != new.spec
        || a.labels != b.labels
        || a.annotations != b.annotations
        || a.owner_references != b.owner_references
        || a.finalizers != b.finalizers
        || a.deletion_timestamp != b.deletion_timestamp
}

/// Runs the scheduler whenever this process holds the election's lease: two schedulers
/// never act at once, and a standby takes over when the leader stops renewing.
pub async fn run_elected(client: kube::Client, name: String, election: leader::Election, pods: SharedPods) {
    loop {
        leader::lead(
            client.clone(),
            &election,
            run(client.clone(), name.clone(), pods.clone()),
        )
        .await;
    }
}

/// Runs the scheduler named `name` until the task is dropped. `pods` is the process's pod
/// informer, which the caller runs (the controller manager reads it too: one watch and
/// one decode of each pod change for both).
pub async fn run(client: kube::Client, name: String, pods: SharedPods) {
    let (nodes, node_writer) = reflector::store();
    let (pods_listed, pods_ready) = tokio::sync::watch::channel(false);
    let scheduler = Arc::new(Scheduler {
        recorder: Recorder::new(client.clone(), &name),
        name,
        client: client.clone(),
        queue: Queue::default(),
        cache: Mutex::new(Cache::default()),
        waiting: std::sync::Mutex::new(HashMap::new()),
    });
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(node_writer);
    let watching_nodes = {
        let (scheduler, nodes) = (Arc::clone(&scheduler), nodes.clone());
        async move {
            let mut events = std::pin::pin!(node_events);
            while let Some(event) = events.next().await {
                let mut cache = scheduler.cache.lock().await;
                match event {
                    Ok(watcher::Event::Apply(node)) => cache.set_node(Arc::new(node)),
                    Ok(watcher::Event::Delete(node)) => {
                        cache.remove_node(node.metadata.name.as_deref().unwrap_or_default());
                    }
                    Ok(watcher::Event::InitDone) => cache.reset_nodes(nodes.state()),
                    _ => continue,
                }
                drop(cache);
                // A node came or changed: pods that fit nowhere may fit now.
                scheduler.queue.move_unschedulable().await;
            }
        }
    };
    let watching_pods = {
        let (scheduler, nodes) = (Arc::clone(&scheduler), nodes.clone());
        async move {
            // The state in one piece once the informer has listed, then every change.
            pods.wait_until_ready().await;
            let (listed, mut changes) = pods.state_and_changes();
            scheduler.cache.lock().await.reset(nodes.state(), listed.clone());
            let wanted: HashMap<String, Arc<Pod>> = listed
                .into_iter()
                .filter(|pod| wants_scheduling(pod, &scheduler.name))
                .map(|pod| (key(&pod), pod))
                .collect();
            let keys: Vec<(String, i32)> = wanted.iter().map(|(k, pod)| (k.clone(), priority(pod))).collect();
            *scheduler.waiting_pods() = wanted;
            for (key, priority) in keys {
                scheduler.queue.add(&key, priority).await;
            }
            pods_listed.send_replace(true);
            while let Some(change) = changes.recv().await {
                scheduler.pod_changed(change.object, change.deleted).await;
            }
        }
    };
    let flushing = {
        let scheduler = Arc::clone(&scheduler);
        async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(200));
            loop {
                ticker.tick().await;
                scheduler.queue.flush().await;
            }
        }
    };
    let scheduling = {
        let scheduler = Arc::clone(&scheduler);
        async move {
            nodes.wait_until_ready().await.ok();
            let mut pods_ready = pods_ready;
            pods_ready.wait_for(|listed| *listed).await.ok();
            loop {
                let key = scheduler.queue.pop().await;
                scheduler.schedule_one(&key).await;
            }
        }
    };
    // Each mirror is a task of its own (aborted with the set when this future is dropped),
    // which keeps this future, and the stack that polls it, small.
    let mut mirrors = tokio::task::JoinSet::new();
    mirrors.spawn(mirror::<Namespace>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<Service>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<ReplicaSet>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<StatefulSet>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<ReplicationController>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<PersistentVolumeClaim>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<PersistentVolume>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<StorageClass>(Arc::clone(&scheduler)));
    mirrors.spawn(mirror::<PodDisruptionBudget>(Arc::clone(&scheduler)));
    tokio::join!(watching_nodes, watching_pods, flushing, scheduling, mirrors.join_all());
}

/// Keeps one kind of object mirrored in the cache; a re-list replaces that kind's objects
/// at once when it is complete, so decisions never see it half listed.
async fn mirror<K: Mirrored>(scheduler: Arc<Scheduler>) {
    let api: Api<K> = Api::all(scheduler.client.clone());
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().modify(trim));
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = events.next().await {
        let mut cache = scheduler.cache.lock().await;
        match event {
            Ok(watcher::Event::Apply(object)) => object.put(&mut cache.objects),
            Ok(watcher::Event::Delete(object)) => object.remove(&mut cache.objects),
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(object)) => {
                listing.push(object);
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                K::clear(&mut cache.objects);
                for object in listing.drain(..) {
                    object.put(&mut cache.objects);
                }
            }
            Err(err) => {
                tracing::debug!(%err, kind = K::kind(&()).as_ref(), "watch failed; retrying");
                continue;
            }
        }
        drop(cache);
        if K::WAKES_PODS {
            scheduler.queue.move_unschedulable().await;
        }
    }
}

impl Scheduler {
    // A panic while holding the lock leaves the map as consistent as between two events.
    fn waiting_pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pod>>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn pod_changed(&self, pod: Arc<Pod>, deleted: bool) {
        let key = key(&pod);
        let freed = node_of(&pod).is_some() && (deleted || is_terminal(&pod));
        {
            let mut cache = self.cache.lock().await;
            if deleted {
                cache.remove_pod(&pod);
            } else {
                cache.set_pod(Arc::clone(&pod));
            }
        }
        if !deleted && wants_scheduling(&pod, &self.name) {
            let previous = self.waiting_pods().insert(key.clone(), Arc::clone(&pod));
            self.queue.add(&key, priority(&pod)).await;
            if previous.is_some_and(|old| changed_for_scheduling(&old, &pod)) {
                self.queue.changed(&key).await;
            }
            return;
        }
        self.waiting_pods().remove(&key);
        self.queue.remove(&key).await;
        // A pod that leaves a node frees room: pods that fit nowhere may fit now.
        if freed {
            self.queue.move_unschedulable().await;
        }
    }

    async fn schedule_one(self: &Arc<Self>, key: &str) {
        let waiting = self.waiting_pods().get(key).cloned();
        let Some(pod) = waiting.filter(|pod| wants_scheduling(pod, &self.name)) else {
            // Gone, bound or handed to another scheduler since it was queued.
            self.queue.done(key).await;
            return;
        };
        let outcome = {
            let mut cache = self.cache.lock().await;
            let outcome = cache.schedule(&pod);
            if let Outcome::Placed(choice) = &outcome {
                // Counted on its node from now on, so the next pod sees this decision;
                // likewise the volumes promised to its claims.
                cache.assume(Arc::clone(&pod), &choice.node);
                for action in &choice.volumes {
                    if let VolumeAction::Bind { volume, claim } = action {
                        cache
                            .objects
                            .assumed_volumes
                            .insert(volume.clone(), key_of_claim(claim));
                    }
                }
            }
            if let Outcome::Preempting(_, preemption) = &outcome {
                cache.nominate(&pod, Some(&preemption.node));
                for displaced in &preemption.displaced {
                    cache.nominate(displaced, None);
                }
            }
            outcome
        };
        match outcome {
            Outcome::Placed(choice) => {
                // Bind in the background: the next pod is scheduled meanwhile.
                let scheduler = Arc::clone(self);
                let key = key.to_string();
                tokio::spawn(async move {
                    if let Err(err) = scheduler.bind_with_volumes(&pod, &choice).await {
                        tracing::warn!(%err, "binding failed; the pod goes back to the queue");
                        let mut cache = scheduler.cache.lock().await;
                        cache.forget(&pod);
                        for action in &choice.volumes {
                            if let VolumeAction::Bind { volume, .. } = action {
                                cache.objects.assumed_volumes.remove(volume);
                            }
                        }
                        drop(cache);
                        scheduler.queue.failed(&key, priority(&pod), false).await;
                    } else {
                        scheduler.queue.done(&key).await;
                        let message = format!("Successfully assigned {key} to {}", choice.node);
                        scheduler
                            .recorder
                            .emit(&rkube_client::events::reference(&*pod), "Normal", "Scheduled", &message)
                            .await;
                    }
                });
            }
            Outcome::Preempting(fit, preemption) => {
                let message = fit.to_string();
                tracing::info!(
                    pod = key,
                    node = preemption.node,
                    victims = preemption.victims.len(),
                    "preempting"
                );
                if let Err(err) = self.preempt(&pod, &preemption, &message).await {
                    tracing::warn!(pod = key, %err, "preemption failed");
                }
                // Back when the victims are gone (a pod deletion wakes unschedulable pods).
                self.queue.failed(key, priority(&pod), true).await;
            }
            Outcome::Unschedulable(fit) => {
                let message = fit.to_string();
                tracing::debug!(pod = key, message, "unschedulable");
                // A nomination that no longer holds is withdrawn, unless victims are still
                // terminating there.
                let keep = message.contains("terminating pod on the nominated node");
                let had = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.nominated_node_name.as_deref())
                    .is_some();
                let nomination = if had && !keep {
                    self.cache.lock().await.nominate(&pod, None);
                    Some(None)
                } else {
                    None
                };
                if let Err(err) = self.report_unschedulable(&pod, &message, nomination).await {
                    tracing::warn!(pod = key, %err, "reporting an unschedulable pod failed");
                }
                self.queue.failed(key, priority(&pod), true).await;
            }
        }
    }

    /// Upstream's PreBind of VolumeBinding, then the binding: volumes are bound to claims
    /// and claims to provision get the node; the pod is bound once every claim is bound.
    async fn bind_with_volumes(&self, pod: &Pod, choice: &Choice) -> Result<(), SchedulerError> {
        if !choice.volumes.is_empty() {
            self.bind_volumes(pod, choice)
                .await
                .map_err(|message| SchedulerError::Volumes { pod: key(pod), message })?;
        }
        self.bind(pod, &choice.node).await
    }

    async fn bind_volumes(&self, pod: &Pod, choice: &Choice) -> Result<(), String> {
        for action in &choice.volumes {
            let claim = action.claim();
            let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
            let name = claim.metadata.name.as_deref().unwrap_or_default();
            // What the API returned goes into the cache at once (upstream's assume cache):
            // the checks below must not wait for the watch to show the scheduler its own
            // writes.
            let result = match action {
                VolumeAction::Bind { volume, .. } => {
                    let patch = json!({
                        "metadata": {"annotations": {BOUND_BY_CONTROLLER: "yes"}},
                        "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                            "namespace": namespace, "name": name, "uid": claim.metadata.uid,
                            "resourceVersion": claim.metadata.resource_version}},
                    });
                    match Api::<PersistentVolume>::all(self.client.clone())
                        .patch(volume, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(patched) => {
                            patched.put(&mut self.cache.lock().await.objects);
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
                VolumeAction::Provision { .. } => {
                    let patch = json!({"metadata": {"annotations": {SELECTED_NODE: choice.node}}});
                    match Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace)
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(patched) => {
                            patched.put(&mut self.cache.lock().await.objects);
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
            };
            result.map_err(|err| format!("claim {namespace}/{name}: {err}"))?;
        }
        // The volume controller finishes the binding (or provisions); wait for it.
        let deadline = tokio::time::Instant::now() + VOLUME_BIND_TIMEOUT;
        loop {
            match self.claims_bound(choice).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(message) => return Err(message),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "timed out waiting for the volumes of pod {} to be bound",
                    key(pod)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether every claim of the decision is bound (upstream's `checkBindings`).
    async fn claims_bound(&self, choice: &Choice) -> Result<bool, String> {
        let cache = self.cache.lock().await;
        for action in &choice.volumes {
            let wanted = action.claim();
            let claim_key = (
                wanted.metadata.namespace.clone().unwrap_or_default(),
                wanted.metadata.name.clone().unwrap_or_default(),
            );
            let Some(claim) = cache.objects.claims.get(&claim_key) else {
                return Err(format!("persistentvolumeclaim {:?} was deleted", claim_key.1));
            };
            let annotations = claim.metadata.annotations.clone().unwrap_or_default();
            if let VolumeAction::Provision { .. } = action
                && !annotations.contains_key(SELECTED_NODE)
                && claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .is_none_or(str::is_empty)
            {
                return Err(format!("selectedNode annotation reset for PVC {:?}", claim_key.1));
            }
            let bound = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|v| !v.is_empty())
                && annotations.contains_key(BIND_COMPLETED);
            if !bound {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Nominates the pod, takes lower-priority nominations on that node back, and evicts
    /// the victims with the `DisruptionTarget` condition upstream sets.
    async fn preempt(&self, pod: &Pod, preemption: &Preemption, message: &str) -> Result<(), kube::Error> {
        self.report_unschedulable(pod, message, Some(Some(&preemption.node)))
            .await?;
        for displaced in &preemption.displaced {
            let namespace = displaced.metadata.namespace.as_deref().unwrap_or_default();
            let name = displaced.metadata.name.as_deref().unwrap_or_default();
            let clear = json!({"status": {"nominatedNodeName": null}});
            Api::<Pod>::namespaced(self.client.clone(), namespace)
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&clear))
                .await?;
        }
        let now = rkube_client::now_text();
        for victim in &preemption.victims {
            let namespace = victim.metadata.namespace.as_deref().unwrap_or_default();
            let name = victim.metadata.name.as_deref().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let mut conditions: Vec<Value> = victim
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| c.type_ != "DisruptionTarget")
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect();
            conditions.push(
                json!({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{}: preempting to accommodate a higher priority pod", self.name),
                "lastTransitionTime": now}),
            );
            pods.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": conditions}})),
            )
            .await?;
            match pods.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(err) => return Err(err),
            }
            let text = format!(
                "Preempted by pod {} on node {}",
                pod.metadata.uid.as_deref().unwrap_or_default(),
                preemption.node
            );
            self.record_event(victim, "Normal", "Preempted", &text).await?;
        }
        Ok(())
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), SchedulerError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.create_subresource::<_, serde_json::Value>("binding", name, &PostParams::default(), &binding)
            .await
            .map(|_| ())
            .map_err(|source| SchedulerError::Bind {
                pod: format!("{namespace}/{name}"),
                node: node.to_string(),
                source,
            })
    }

    /// `PodScheduled=False` on the pod (with its nomination set or cleared when given) and
    /// a `FailedScheduling` event, as upstream reports.
    async fn report_unschedulable(
        &self,
        pod: &Pod,
        message: &str,
        nomination: Option<Option<&str>>,
    ) -> Result<(), kube::Error> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message, "lastProbeTime": null,
            "lastTransitionTime": rkube_client::now_text()}]}});
        if let Some(node) = nomination {
            status["status"]["nominatedNodeName"] = json!(node);
        }
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        self.record_event(pod, "Warning", "FailedScheduling", message).await
    }

    async fn record_event(&self, pod: &Pod, kind: &str, reason: &str, message: &str) -> Result<(), kube::Error> {
        self.recorder.record(&reference(pod), kind, reason, message).await
    }
}

fn key_of_claim(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    )
}
