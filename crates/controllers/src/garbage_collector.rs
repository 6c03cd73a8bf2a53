//! The garbage collector, as upstream's `pkg/controller/garbagecollector`: a graph of
//! every object's ownerReferences, built from watches on every resource that can be
//! deleted, and three kinds of work on it. Dependents whose owners are all gone are
//! deleted (Background propagation, the default of `kubectl delete`); owners deleted with
//! `propagationPolicy=Orphan` have their dependents' references to them removed, then
//! their `orphan` finalizer; owners deleted with `Foreground` have their dependents deleted
//! first, and lose their `foregroundDeletion` finalizer once none that blocks is left.
//! Whether an owner is gone is always checked against the API (by name and uid), never
//! decided from the graph alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::{WatchStreamExt, watcher};
use rkube_api::{ResourceInfo, resources};
use serde_json::json;
use tokio::sync::{Mutex, Notify};

use crate::workqueue::WorkQueue;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";
const WORKERS: usize = 5;

/// What the graph knows of one object.
#[derive(Debug, Clone)]
struct Node {
    resource: &'static ResourceInfo,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Debug, Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Dependents' uids by owner uid.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn remove_edges(&mut self, uid: &str) {
        if let Some(node) = self.nodes.get(uid) {
            for owner in &node.owners {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&owner.uid);
                    }
                }
            }
        }
    }

    fn upsert(&mut self, uid: String, node: Node) {
        self.remove_edges(&uid);
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.nodes.insert(uid, node);
    }

    fn remove(&mut self, uid: &str) -> Option<Node> {
        self.remove_edges(uid);
        self.nodes.remove(uid)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect()
    }
}

/// The resources the collector watches: every served one that can be listed, watched and
/// deleted, once per stored kind, except events (upstream ignores them too).
pub fn monitored() -> Vec<&'static ResourceInfo> {
    resources()
        .iter()
        .filter(|r| r.stored_as.is_none())
        .filter(|r| ["list", "watch", "delete"].iter().all(|v| r.verbs.contains(v)))
        .filter(|r| r.kind != "Event")
        .collect()
}

/// The resource an owner reference names.
fn resource_of(reference: &OwnerReference) -> Option<&'static ResourceInfo> {
    let (group, version) = reference
        .api_version
        .split_once('/')
        .unwrap_or(("", reference.api_version.as_str()));
    resources()
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == reference.kind)
}

/// The work queue's keys: what to do, and to which object (by uid).
fn key(action: &str, uid: &str) -> String {
    format!("{action}/{uid}")
}

#[derive(Debug, PartialEq, Eq)]
enum OwnerState {
    Solid,
    Dangling,
    /// Being deleted in the foreground: waits for its dependents.
    Waiting,
}

pub struct Collector {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: Arc<WorkQueue>,
}

impl Collector {
    fn api(&self, info: &ResourceInfo, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = crate::api_resource(info);
        match namespace.filter(|_| info.namespaced()) {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    async fn observe(&self, info: &'static ResourceInfo, meta: ObjectMeta) {
        let Some(uid) = meta.uid.clone() else { return };
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let node = Node {
            resource: info,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: finalizers.clone(),
        };
        let unknown_owner = {
            let mut graph = self.graph.lock().await;
            let unknown = node.owners.iter().any(|o| !graph.nodes.contains_key(&o.uid));
            graph.upsert(uid.clone(), node.clone());
            unknown
        };
        if node.deleting && finalizers.iter().any(|f| f == ORPHAN) {
            self.queue.add(&key("orphan", &uid)).await;
        }
        if node.deleting && finalizers.iter().any(|f| f == FOREGROUND) {
            self.queue.add(&key("foreground", &uid)).await;
        }
        // An owner the graph has not seen may be gone already.
        if unknown_owner {
            self.queue.add(&key("delete", &uid)).await;
        }
    }

    async fn forget(&self, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.as_deref() else {
            return;
        };
        let (dependents, owners) = {
            let mut graph = self.graph.lock().await;
            let dependents = graph.dependents_of(uid);
            let owners = graph.remove(uid).map(|n| n.owners).unwrap_or_default();
            (dependents, owners)
        };
        for (dependent, _) in dependents {
            self.queue.add(&key("delete", &dependent)).await;
        }
        // Owners waiting in the foreground for this dependent may be done.
        for owner in owners {
            self.queue.add(&key("foreground", &owner.uid)).await;
        }
    }

    /// Whether an owner exists, by name and uid, as the API shows it now.
    async fn owner_state(
        &self,
        namespace: Option<&str>,
        reference: &OwnerReference,
    ) -> Result<OwnerState, kube::Error> {
        let Some(info) = resource_of(reference) else {
            // A kind this server does not serve (yet): as upstream, whose lookup fails for
            // unknown kinds, the dependent is not collected on that owner's account.
            tracing::debug!(
                kind = reference.kind,
                api_version = reference.api_version,
                "owner of an unknown kind"
            );
            return Ok(OwnerState::Solid);
        };
        match self.api(info, namespace).get_opt(&reference.name).await? {
            Some(owner) if owner.metadata.uid.as_deref() == Some(reference.uid.as_str()) => {
                let waiting = owner.metadata.deletion_timestamp.is_some()
                    && owner.metadata.finalizers.iter().flatten().any(|f| f == FOREGROUND);
                Ok(if waiting {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                })
            }
            _ => Ok(OwnerState::Dangling),
        }
    }

    /// Upstream's `attemptToDeleteItem`.
    async fn attempt_to_delete(&self, uid: &str) -> Result<(), kube::Error> {
        let Some(node) = self.graph.lock().await.nodes.get(uid).cloned() else {
            return Ok(());
        };
        if node.owners.is_empty() || (node.deleting && !node.finalizers.iter().any(|f| f == FOREGROUND)) {
            return Ok(());
        }
        let mut states = Vec::new();
        for owner in &node.owners {
            states.push((owner, self.owner_state(node.namespace.as_deref(), owner).await?));
        }
        let api = self.api(node.resource, node.namespace.as_deref());
        let solid = states.iter().any(|(_, s)| *s == OwnerState::Solid);
        let waiting = states.iter().any(|(_, s)| *s == OwnerState::Waiting);
        let preconditions = Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        });
        if solid {
            // Keep the object; drop its references to owners that are gone.
            let dangling: Vec<&str> = states
                .iter()
                .filter(|(_, s)| *s == OwnerState::Dangling)
                .map(|(o, _)| o.uid.as_str())
                .collect();
            if dangling.is_empty() {
                return Ok(());
            }
            let kept: Vec<&OwnerReference> = node
                .owners
                .iter()
                .filter(|o| !dangling.contains(&o.uid.as_str()))
                .collect();
            let patch = json!({"metadata": {"uid": uid, "ownerReferences": kept}});
            return ignore_gone(
                api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            );
        }
        let propagation = if waiting || node.finalizers.iter().any(|f| f == FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::info!(
            kind = node.resource.kind,
            namespace = node.namespace.as_deref().unwrap_or_default(),
            name = node.name,
            ?propagation,
            "deleting a dependent whose owners are gone"
        );
        let params = DeleteParams {
            propagation_policy: Some(propagation),
            preconditions,
            ..DeleteParams::default()
        };
        ignore_gone(api.delete(&node.name, &params).await.map(|_| ()))
    }

    /// Removes one finalizer from an object (with its resourceVersion as precondition).
    async fn remove_finalizer(&self, uid: &str, node: &Node, finalizer: &str) -> Result<(), kube::Error> {
        let api = self.api(node.resource, node.namespace.as_deref());
        let Some(current) = api.get_opt(&node.name).await? else {
            return Ok(());
        };
        if current.metadata.uid.as_deref() != Some(uid) {
            return Ok(());
        }
        let remaining: Vec<&String> = current
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {"uid": uid, "resourceVersion": current.metadata.resource_version,
                                        "finalizers": remaining}});
        ignore_gone(
            api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        )
    }

    /// Upstream's `orphanDependents`, then the `orphan` finalizer goes.
    async fn orphan(&self, uid: &str) -> Result<(), kube::Error> {
        let Some(node) = self.graph.lock().await.nodes.get(uid).cloned() else {
            return Ok(());
        };
        let dependents = self.graph.lock().await.dependents_of(uid);
        for (dependent_uid, dependent) in dependents {
            let kept: Vec<&OwnerReference> = dependent.owners.iter().filter(|o| o.uid != uid).collect();
            let patch = json!({"metadata": {"uid": dependent_uid, "ownerReferences": kept}});
            let api = self.api(dependent.resource, dependent.namespace.as_deref());
            ignore_gone(
                api.patch(&dependent.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )?;
        }
        self.remove_finalizer(uid, &node, ORPHAN).await
    }

    /// Foreground deletion: dependents go first; the owner's finalizer goes when no
    /// dependent that blocks its deletion is left.
    async fn foreground(&self, uid: &str) -> Result<bool, kube::Error> {
        let Some(node) = self.graph.lock().await.nodes.get(uid).cloned() else {
            return Ok(false);
        };
        if !node.deleting || !node.finalizers.iter().any(|f| f == FOREGROUND) {
            return Ok(false);
        }
        let dependents = self.graph.lock().await.dependents_of(uid);
        let blocking = dependents.iter().any(|(_, d)| {
            d.owners
                .iter()
                .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
        });
        for (dependent_uid, dependent) in &dependents {
            if !dependent.deleting {
                self.queue.add(&key("delete", dependent_uid)).await;
            }
        }
        if blocking {
            // Called again as each dependent goes; the requeue is a safety net.
            return Ok(true);
        }
        self.remove_finalizer(uid, &node, FOREGROUND).await?;
        Ok(false)
    }

    async fn process(&self, work: &str) -> Result<Option<Duration>, kube::Error> {
        let Some((action, uid)) = work.split_once('/') else {
            return Ok(None);
        };
        match action {
            "delete" => self.attempt_to_delete(uid).await.map(|()| None),
            "orphan" => self.orphan(uid).await.map(|()| None),
            "foreground" => Ok(self.foreground(uid).await?.then_some(Duration::from_secs(10))),
            _ => Ok(None),
        }
    }
}

fn ignore_gone(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match crate::ignore_not_found(result) {
        // A uid precondition that fails means another object now has the name.
        Err(kube::Error::Api(status)) if status.code == 409 && status.message.contains("UID") => Ok(()),
        other => other,
    }
}

/// Runs the collector until the future is dropped.
pub async fn run(client: kube::Client) {
    let collector = Arc::new(Collector {
        client: client.clone(),
        graph: Mutex::new(Graph::default()),
        queue: WorkQueue::new(),
    });
    let watched = monitored();
    let synced = Arc::new((std::sync::atomic::AtomicUsize::new(0), Notify::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for info in watched.iter().copied() {
        let collector = Arc::clone(&collector);
        let synced = Arc::clone(&synced);
        tasks.spawn(async move {
            // The graph needs owners, finalizers and deletion marks: metadata alone, as
            // upstream's collector watches through metadata informers.
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(collector.client.clone(), &crate::api_resource(info));
            let mut events = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .modify(crate::trim)
            );
            let mut first_sync = true;
            let mut listed: HashSet<String> = HashSet::new();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(object)) => collector.observe(info, object.metadata).await,
                    Ok(watcher::Event::InitApply(object)) => {
                        if let Some(uid) = object.metadata.uid.clone() {
                            listed.insert(uid);
                        }
                        collector.observe(info, object.metadata).await;
                    }
                    Ok(watcher::Event::Delete(object)) => collector.forget(&object.metadata).await,
                    Ok(watcher::Event::Init) => listed.clear(),
                    Ok(watcher::Event::InitDone) => {
                        // Objects of this kind gone while the watch was down.
                        let stale: Vec<String> = {
                            let graph = collector.graph.lock().await;
                            graph
                                .nodes
                                .iter()
                                .filter(|(uid, n)| std::ptr::eq(n.resource, info) && !listed.contains(*uid))
                                .map(|(uid, _)| uid.clone())
                                .collect()
                        };
                        for uid in stale {
                            let gone = ObjectMeta {
                                uid: Some(uid),
                                ..ObjectMeta::default()
                            };
                            collector.forget(&gone).await;
                        }
                        if first_sync {
                            first_sync = false;
                            synced.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            synced.1.notify_waiters();
                        }
                    }
                    Err(err) => tracing::debug!(%err, kind = info.kind, "watch failed; retrying"),
                }
            }
        });
    }
    // No decision before every kind has been listed once: an owner not yet seen is not gone.
    let total = watched.len();
    loop {
        let notified = synced.1.notified();
        if synced.0.load(std::sync::atomic::Ordering::SeqCst) >= total {
            break;
        }
        notified.await;
    }
    tracing::info!(resources = total, "garbage collector synced");
    {
        let collector = Arc::clone(&collector);
        crate::workqueue::spawn_workers(
            &mut tasks,
            &collector.queue.clone(),
            WORKERS,
            "garbagecollector",
            move |key| {
                let collector = Arc::clone(&collector);
                async move { collector.process(&key).await }
            },
        );
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deletable_kind_is_watched_once() {
        let kinds: Vec<&str> = monitored().iter().map(|r| r.kind).collect();
        for kind in [
            "Pod",
            "ReplicaSet",
            "Deployment",
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Job",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        assert!(!kinds.contains(&"Event"));
        let mut unique = kinds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len(), "a kind watched twice: {kinds:?}");
    }

    #[test]
    fn references_find_their_resource() {
        let reference = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "u".into(),
            ..OwnerReference::default()
        };
        assert_eq!(resource_of(&reference).map(|r| r.plural), Some("replicasets"));
        let core = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            ..reference
        };
        assert_eq!(resource_of(&core).map(|r| r.plural), Some("pods"));
    }
}
