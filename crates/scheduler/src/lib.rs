//! rkube's scheduler: an API client (kube-rs watchers) that places pods on nodes.
//!
//! Pods and nodes are mirrored by reflectors; unassigned pods for this scheduler go through
//! the [`queue`]; each is scheduled against a snapshot of the nodes and the pods on them
//! (plus pods assumed bound but not yet seen bound) by the [`framework`]'s filter and score
//! plugins, then bound through `pods/binding`. A pod that fits nowhere gets the
//! `PodScheduled=False` condition and a `FailedScheduling` event with upstream's message,
//! and waits for a cluster event that could change that. Only the holder of the
//! `kube-system/kube-scheduler` Lease schedules ([`leader`]).

pub mod cache;
pub mod framework;
pub mod leader;
pub mod plugins;
pub mod queue;
pub mod resources;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::Mutex;

use crate::cache::{Cache, is_terminal, node_of, pod_key as key};
use crate::queue::Queue;

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
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// A pod this scheduler must place.
fn wants_scheduling(pod: &Pod, name: &str) -> bool {
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(DEFAULT_SCHEDULER);
    scheduler == name && node_of(pod).is_none() && pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

struct Scheduler {
    name: String,
    client: kube::Client,
    pods: Store<Pod>,
    queue: Queue,
    cache: Mutex<Cache>,
}

/// Runs the scheduler whenever this process holds the election's lease: two schedulers
/// never act at once, and a standby takes over when the leader stops renewing.
pub async fn run_elected(client: kube::Client, name: String, election: leader::Election) {
    loop {
        leader::lead(client.clone(), &election, run(client.clone(), name.clone())).await;
    }
}

/// Runs the scheduler named `name` until the task is dropped.
pub async fn run(client: kube::Client, name: String) {
    let (nodes, node_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let scheduler = Arc::new(Scheduler {
        name,
        client: client.clone(),
        pods: pods.clone(),
        queue: Queue::default(),
        cache: Mutex::new(Cache::default()),
    });
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer);
    let pod_events = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer);
    let watching_nodes = {
        let (scheduler, nodes, pods) = (Arc::clone(&scheduler), nodes.clone(), pods.clone());
        async move {
            let mut events = std::pin::pin!(node_events);
            while let Some(event) = events.next().await {
                let mut cache = scheduler.cache.lock().await;
                match event {
                    Ok(watcher::Event::Apply(node)) => cache.set_node(Arc::new(node)),
                    Ok(watcher::Event::Delete(node)) => {
                        cache.remove_node(node.metadata.name.as_deref().unwrap_or_default());
                    }
                    Ok(watcher::Event::InitDone) => cache.reset(nodes.state(), pods.state()),
                    _ => continue,
                }
                drop(cache);
                // A node came or changed: pods that fit nowhere may fit now.
                scheduler.queue.move_unschedulable().await;
            }
        }
    };
    let watching_pods = {
        let (scheduler, nodes, pods) = (Arc::clone(&scheduler), nodes.clone(), pods.clone());
        async move {
            let mut events = std::pin::pin!(pod_events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(pod)) => scheduler.pod_changed(pod, false).await,
                    Ok(watcher::Event::Delete(pod)) => scheduler.pod_changed(pod, true).await,
                    Ok(watcher::Event::InitDone) => {
                        scheduler.cache.lock().await.reset(nodes.state(), pods.state());
                        for pod in pods.state() {
                            if wants_scheduling(&pod, &scheduler.name) {
                                scheduler.queue.add(&key(&pod), priority(&pod)).await;
                            }
                        }
                    }
                    _ => {}
                }
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
            scheduler.pods.wait_until_ready().await.ok();
            loop {
                let key = scheduler.queue.pop().await;
                scheduler.schedule_one(&key).await;
            }
        }
    };
    tokio::join!(watching_nodes, watching_pods, flushing, scheduling);
}

impl Scheduler {
    async fn pod_changed(&self, pod: Pod, deleted: bool) {
        let key = key(&pod);
        let pod = Arc::new(pod);
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
            self.queue.add(&key, priority(&pod)).await;
            return;
        }
        self.queue.remove(&key).await;
        // A pod that leaves a node frees room: pods that fit nowhere may fit now.
        if freed {
            self.queue.move_unschedulable().await;
        }
    }

    async fn schedule_one(self: &Arc<Self>, key: &str) {
        let Some((namespace, name)) = key.split_once('/') else {
            return;
        };
        let reference = reflector::ObjectRef::<Pod>::new(name).within(namespace);
        let Some(pod) = self.pods.get(&reference) else { return };
        if !wants_scheduling(&pod, &self.name) {
            return;
        }
        let decision = {
            let mut cache = self.cache.lock().await;
            let decision = cache.schedule(&pod);
            if let Ok(node) = &decision {
                // Counted on its node from now on, so the next pod sees this decision.
                cache.assume(Arc::clone(&pod), node);
            }
            decision
        };
        match decision {
            Ok(node) => {
                // Bind in the background: the next pod is scheduled meanwhile.
                let scheduler = Arc::clone(self);
                let key = key.to_string();
                tokio::spawn(async move {
                    if let Err(err) = scheduler.bind(&pod, &node).await {
                        tracing::warn!(%err, "binding failed; the pod goes back to the queue");
                        scheduler.cache.lock().await.forget(&pod);
                        let attempts = scheduler.queue.attempts(&key).await + 1;
                        scheduler.queue.failed(&key, priority(&pod), attempts, false).await;
                    }
                });
            }
            Err(fit) => {
                let message = fit.to_string();
                tracing::debug!(pod = key, message, "unschedulable");
                if let Err(err) = self.report_unschedulable(&pod, &message).await {
                    tracing::warn!(pod = key, %err, "reporting an unschedulable pod failed");
                }
                let attempts = self.queue.attempts(key).await + 1;
                self.queue.failed(key, priority(&pod), attempts, true).await;
            }
        }
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

    /// `PodScheduled=False` on the pod and a `FailedScheduling` event, as upstream reports.
    async fn report_unschedulable(&self, pod: &Pod, message: &str) -> Result<(), kube::Error> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now();
        let seconds = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": seconds}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name,
                               "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
            "reason": "FailedScheduling", "message": message, "type": "Warning",
            "source": {"component": self.name}, "reportingComponent": self.name,
            "reportingInstance": self.name, "firstTimestamp": seconds, "lastTimestamp": seconds, "count": 1,
        });
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), namespace);
        let event = serde_json::from_value(event).map_err(kube::Error::SerdeError)?;
        events.create(&PostParams::default(), &event).await.map(|_| ())
    }
}
