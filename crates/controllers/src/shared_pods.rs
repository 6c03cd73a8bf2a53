//! One informer of every pod, shared by the controllers that need all of them (ReplicaSet,
//! ReplicationController, Deployment, Job, Endpoints, node lifecycle), as upstream's
//! controller manager shares one pod informer: one watch and one copy of each pod instead
//! of one per controller, with indexes so that a controller finds the pods it controls
//! without looking at every pod in the cluster (upstream's `controllerUID` index).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

/// A pod seen (`deleted: false`) or gone, after the index shows it.
#[derive(Debug, Clone)]
pub struct PodEvent {
    pub pod: Arc<Pod>,
    pub deleted: bool,
}

/// The pods, keyed `namespace/name`, and the indexes over them.
#[derive(Default)]
struct Index {
    objects: HashMap<String, Arc<Pod>>,
    /// Controller UID → keys of the pods it controls.
    by_controller: HashMap<String, HashSet<String>>,
    /// Namespace → keys of the pods in it that no controller controls.
    orphans: HashMap<String, HashSet<String>>,
    /// Namespace → keys of every pod in it.
    by_namespace: HashMap<String, HashSet<String>>,
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    crate::pods::controller_of(pod).map(|c| c.uid.as_str())
}

fn remove_from(index: &mut HashMap<String, HashSet<String>>, bucket: &str, key: &str) {
    if let Some(keys) = index.get_mut(bucket) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(bucket);
        }
    }
}

impl Index {
    fn insert(&mut self, key: String, pod: Arc<Pod>) {
        self.remove(&key);
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        match controller_uid(&pod) {
            Some(uid) => self.by_controller.entry(uid.to_string()).or_default(),
            None => self.orphans.entry(namespace.clone()).or_default(),
        }
        .insert(key.clone());
        self.by_namespace.entry(namespace).or_default().insert(key.clone());
        self.objects.insert(key, pod);
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Pod>> {
        let old = self.objects.remove(key)?;
        let namespace = old.metadata.namespace.as_deref().unwrap_or_default();
        match controller_uid(&old) {
            Some(uid) => remove_from(&mut self.by_controller, uid, key),
            None => remove_from(&mut self.orphans, namespace, key),
        }
        remove_from(&mut self.by_namespace, namespace, key);
        Some(old)
    }

    fn pods(&self, keys: Option<&HashSet<String>>) -> Vec<Arc<Pod>> {
        keys.into_iter()
            .flatten()
            .filter_map(|key| self.objects.get(key).cloned())
            .collect()
    }
}

struct Inner {
    index: RwLock<Index>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<PodEvent>>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// The shared pod informer: a cheap handle; clones share the cache.
#[derive(Clone)]
pub struct SharedPods {
    inner: Arc<Inner>,
}

impl Default for SharedPods {
    fn default() -> Self {
        Self::new()
    }
}

fn pod_key(pod: &Pod) -> String {
    crate::key_of(pod)
}

impl SharedPods {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                index: RwLock::new(Index::default()),
                subscribers: Mutex::new(Vec::new()),
                ready: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    // A panic while holding the lock leaves the index as consistent as between two events.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.inner
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every pod event from now on. Subscribe before [`SharedPods::run`] starts to see the
    /// initial list too.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<PodEvent> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sender);
        receiver
    }

    fn publish(&self, pod: Arc<Pod>, deleted: bool) {
        let mut subscribers = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A subscriber that stopped is forgotten.
        subscribers.retain(|s| {
            s.send(PodEvent {
                pod: Arc::clone(&pod),
                deleted,
            })
            .is_ok()
        });
    }

    /// Waits until the first complete list is in the cache.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        drop(ready.wait_for(|r| *r).await);
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.read().objects.get(&format!("{namespace}/{name}")).cloned()
    }

    /// Every pod.
    pub fn state(&self) -> Vec<Arc<Pod>> {
        self.read().objects.values().cloned().collect()
    }

    /// The pods whose controller has this UID.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<Pod>> {
        let index = self.read();
        index.pods(index.by_controller.get(uid))
    }

    /// The pods in `namespace` that no controller controls.
    pub fn orphans_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        let index = self.read();
        index.pods(index.orphans.get(namespace))
    }

    /// Every pod in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<Pod>> {
        let index = self.read();
        index.pods(index.by_namespace.get(namespace))
    }

    fn apply(&self, pod: Pod) {
        let pod = Arc::new(pod);
        self.write().insert(pod_key(&pod), Arc::clone(&pod));
        self.publish(pod, false);
    }

    fn delete(&self, pod: Pod) {
        let key = pod_key(&pod);
        let pod = self.write().remove(&key).unwrap_or_else(|| Arc::new(pod));
        self.publish(pod, true);
    }

    /// A relist's objects become the cache at once when it completes, as kube's reflector
    /// swaps its store; pods that vanished meanwhile are published as deleted.
    fn relisted(&self, listed: Index) {
        let vanished: Vec<Arc<Pod>> = {
            let mut index = self.write();
            let old = std::mem::replace(&mut *index, listed);
            old.objects
                .into_iter()
                .filter(|(key, _)| !index.objects.contains_key(key))
                .map(|(_, pod)| pod)
                .collect()
        };
        for pod in vanished {
            self.publish(pod, true);
        }
        self.inner.ready.send_replace(true);
    }

    /// Watches every pod until the future is dropped.
    pub async fn run(self, client: kube::Client) {
        let events = watcher(Api::<Pod>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(crate::trim);
        let mut events = std::pin::pin!(events);
        let mut listing: Option<Index> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing = Some(Index::default()),
                Ok(watcher::Event::InitApply(pod)) => {
                    let pod = Arc::new(pod);
                    if let Some(listing) = listing.as_mut() {
                        listing.insert(pod_key(&pod), Arc::clone(&pod));
                    }
                    self.publish(pod, false);
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listing.take() {
                        self.relisted(listed);
                    }
                }
                Ok(watcher::Event::Apply(pod)) => self.apply(pod),
                Ok(watcher::Event::Delete(pod)) => self.delete(pod),
                // The backoff retries; the cache keeps what it had meanwhile.
                Err(err) => tracing::warn!(%err, "the shared pod watch failed; it restarts"),
            }
        }
    }
}

/// Hands each event to `handle`, in order, until the informer stops.
pub async fn handle_events<F, Fut>(mut events: mpsc::UnboundedReceiver<PodEvent>, handle: F)
where
    F: Fn(Arc<Pod>, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(event) = events.recv().await {
        handle(event.pod, event.deleted).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    fn pod(name: &str, namespace: &str, controller: Option<&str>) -> Pod {
        let owners: Vec<_> = controller
            .map(|uid| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": owners},
        }))
        .unwrap()
    }

    fn names(mut pods: Vec<Arc<Pod>>) -> Vec<String> {
        pods.sort_by_key(|p| p.name_any());
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn indexes_follow_changes_of_controller() {
        let shared = SharedPods::new();
        let mut events = shared.subscribe();
        shared.apply(pod("a", "ns", Some("u1")));
        shared.apply(pod("b", "ns", Some("u1")));
        shared.apply(pod("c", "ns", None));
        shared.apply(pod("d", "other", None));
        assert_eq!(names(shared.controlled_by("u1")), ["a", "b"]);
        assert_eq!(names(shared.orphans_in("ns")), ["c"]);
        assert_eq!(names(shared.in_namespace("ns")), ["a", "b", "c"]);
        // Released: from the controller's pods to the orphans; adopted: the other way.
        shared.apply(pod("b", "ns", None));
        shared.apply(pod("c", "ns", Some("u2")));
        assert_eq!(names(shared.controlled_by("u1")), ["a"]);
        assert_eq!(names(shared.controlled_by("u2")), ["c"]);
        assert_eq!(names(shared.orphans_in("ns")), ["b"]);
        shared.delete(pod("a", "ns", Some("u1")));
        assert!(shared.controlled_by("u1").is_empty());
        assert!(shared.get("ns", "a").is_none());
        assert_eq!(names(shared.in_namespace("ns")), ["b", "c"]);
        let seen: Vec<(String, bool)> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| (e.pod.name_any(), e.deleted))
            .collect();
        assert_eq!(seen.len(), 7);
        assert_eq!(seen.last(), Some(&("a".to_string(), true)));
    }

    #[test]
    fn a_relist_replaces_the_cache_and_reports_what_vanished() {
        let shared = SharedPods::new();
        shared.apply(pod("kept", "ns", Some("u1")));
        shared.apply(pod("gone", "ns", Some("u1")));
        let mut events = shared.subscribe();
        let mut listed = Index::default();
        let kept = Arc::new(pod("kept", "ns", Some("u1")));
        listed.insert(pod_key(&kept), kept);
        shared.relisted(listed);
        assert_eq!(names(shared.controlled_by("u1")), ["kept"]);
        let event = events.try_recv().unwrap();
        assert_eq!((event.pod.name_any().as_str(), event.deleted), ("gone", true));
        assert!(*shared.inner.ready.borrow());
    }
}
