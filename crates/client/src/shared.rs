//! Informers with indexes by controller. Every pod is watched once for the controllers
//! that need all of them (ReplicaSet, ReplicationController, Deployment, StatefulSet,
//! DaemonSet, Job, Endpoints, node lifecycle), as upstream's controller manager shares one
//! pod informer: one watch and one copy of each pod instead of one per controller. The
//! scheduler in the same process reads the same informer: one decode of each pod change
//! for the whole process. The
//! indexes let a controller find what it controls, and the orphans it may adopt, without
//! looking at every object of the kind in the cluster (upstream's `controllerUID` index);
//! the Deployment controller finds its ReplicaSets so.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// An object seen (`deleted: false`) or gone, after the index shows it.
#[derive(Debug, Clone)]
pub struct Change<K> {
    pub object: Arc<K>,
    pub deleted: bool,
}

pub type PodEvent = Change<Pod>;
pub type SharedPods = Shared<Pod>;

/// The objects, keyed `namespace/name`, and the indexes over them.
struct Index<K> {
    objects: HashMap<String, Arc<K>>,
    /// Controller UID → keys of the objects it controls.
    by_controller: HashMap<String, HashSet<String>>,
    /// Namespace → keys of the objects in it that no controller controls.
    orphans: HashMap<String, HashSet<String>>,
    /// Namespace → keys of every object in it.
    by_namespace: HashMap<String, HashSet<String>>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            by_controller: HashMap::new(),
            orphans: HashMap::new(),
            by_namespace: HashMap::new(),
        }
    }
}

/// The owner reference marked as the object's controller.
pub fn controller_of<K: Resource>(object: &K) -> Option<&OwnerReference> {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

fn controller_uid<K: Resource>(object: &K) -> Option<&str> {
    controller_of(object).map(|c| c.uid.as_str())
}

/// Drops an object's managedFields as it enters a component's cache, as upstream's
/// controller manager trims its informers: no component reads them, and they would
/// double what every cached object costs (in-memory watches leave them out already; list
/// answers still carry them).
pub fn trim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// `namespace/name`, or `name` for cluster-scoped objects: the work queues' keys.
pub fn key_of<K: Resource>(object: &K) -> String {
    use kube::ResourceExt;
    match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    }
}

fn remove_from(index: &mut HashMap<String, HashSet<String>>, bucket: &str, key: &str) {
    if let Some(keys) = index.get_mut(bucket) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(bucket);
        }
    }
}

impl<K: Resource> Index<K> {
    fn insert(&mut self, key: String, object: Arc<K>) {
        self.remove(&key);
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        match controller_uid(object.as_ref()) {
            Some(uid) => self.by_controller.entry(uid.to_string()).or_default(),
            None => self.orphans.entry(namespace.clone()).or_default(),
        }
        .insert(key.clone());
        self.by_namespace.entry(namespace).or_default().insert(key.clone());
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &str) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        let namespace = old.meta().namespace.as_deref().unwrap_or_default();
        match controller_uid(old.as_ref()) {
            Some(uid) => remove_from(&mut self.by_controller, uid, key),
            None => remove_from(&mut self.orphans, namespace, key),
        }
        remove_from(&mut self.by_namespace, namespace, key);
        Some(old)
    }

    fn listed(&self, keys: Option<&HashSet<String>>) -> Vec<Arc<K>> {
        keys.into_iter()
            .flatten()
            .filter_map(|key| self.objects.get(key).cloned())
            .collect()
    }
}

struct Inner<K> {
    index: RwLock<Index<K>>,
    /// A list in progress: its objects are published as they come and join the index at
    /// once when it completes.
    listing: Mutex<Option<Index<K>>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// An indexed informer: a cheap handle; clones share the cache.
pub struct Shared<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> Default for Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

fn key<K: Resource>(object: &K) -> String {
    key_of(object)
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                index: RwLock::new(Index::default()),
                listing: Mutex::new(None),
                subscribers: Mutex::new(Vec::new()),
                ready: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    // A panic while holding the lock leaves the index as consistent as between two events.
    fn read(&self) -> RwLockReadGuard<'_, Index<K>> {
        self.inner
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index<K>> {
        self.inner
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every object the cache holds now, as a change each, then every change from now
    /// on: a component that starts (or is elected) late sees the same as one that
    /// subscribed before [`Shared::run`] started.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change<K>> {
        self.join(true).1
    }

    /// Every object the cache holds now, and every change after that moment: for a
    /// component that takes the state in one piece and follows from there.
    pub fn state_and_changes(&self) -> (Vec<Arc<K>>, mpsc::UnboundedReceiver<Change<K>>) {
        self.join(false)
    }

    fn join(&self, send_state: bool) -> (Vec<Arc<K>>, mpsc::UnboundedReceiver<Change<K>>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        // Changes are published in the order they enter the cache, each under the
        // subscribers' lock; a list completes under the listing's. With both held, the
        // state read and the subscription fall between the same two changes.
        let listing = self.listing();
        let mut subscribers = self.subscribers();
        let mut state: HashMap<String, Arc<K>> = self.read().objects.clone();
        // The objects of a list in progress were published already, before this
        // subscription: they are the state, over the cache's older copies.
        if let Some(listing) = listing.as_ref() {
            state.extend(listing.objects.iter().map(|(k, o)| (k.clone(), Arc::clone(o))));
        }
        let state: Vec<Arc<K>> = state.into_values().collect();
        if send_state {
            for object in &state {
                // The receiver is in hand: the send cannot fail.
                drop(sender.send(Change {
                    object: Arc::clone(object),
                    deleted: false,
                }));
            }
        }
        subscribers.push(sender);
        (state, receiver)
    }

    fn listing(&self) -> std::sync::MutexGuard<'_, Option<Index<K>>> {
        self.inner
            .listing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Change<K>>>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, object: Arc<K>, deleted: bool) {
        let mut subscribers = self.subscribers();
        // A subscriber that stopped is forgotten.
        subscribers.retain(|s| {
            s.send(Change {
                object: Arc::clone(&object),
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

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read().objects.get(&format!("{namespace}/{name}")).cloned()
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The objects whose controller has this UID.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        let index = self.read();
        index.listed(index.by_controller.get(uid))
    }

    /// What a controller with this UID may claim (upstream's `ClaimPods` candidates): the
    /// objects it controls and the orphans in its namespace, read at one moment.
    pub fn claimable(&self, uid: &str, namespace: &str) -> Vec<Arc<K>> {
        let index = self.read();
        let mut objects = index.listed(index.by_controller.get(uid));
        objects.extend(index.listed(index.orphans.get(namespace)));
        objects
    }

    /// Every object in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let index = self.read();
        index.listed(index.by_namespace.get(namespace))
    }

    fn apply(&self, object: K) {
        let object = Arc::new(object);
        self.write().insert(key(object.as_ref()), Arc::clone(&object));
        self.publish(object, false);
    }

    fn delete(&self, object: K) {
        let key = key(&object);
        let object = self.write().remove(&key).unwrap_or_else(|| Arc::new(object));
        self.publish(object, true);
    }

    /// A relist's objects become the cache at once when it completes, as kube's reflector
    /// swaps its store; objects that vanished meanwhile are published as deleted.
    fn relisted(&self, listed: Index<K>) {
        let vanished: Vec<Arc<K>> = {
            let mut index = self.write();
            let old = std::mem::replace(&mut *index, listed);
            old.objects
                .into_iter()
                .filter(|(key, _)| !index.objects.contains_key(key))
                .map(|(_, object)| object)
                .collect()
        };
        for object in vanished {
            self.publish(object, true);
        }
        self.inner.ready.send_replace(true);
    }

    /// Watches every object of the kind until the future is dropped.
    pub async fn run(self, client: kube::Client) {
        let events = watcher(Api::<K>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(trim);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => *self.listing() = Some(Index::default()),
                Ok(watcher::Event::InitApply(object)) => {
                    let object = Arc::new(object);
                    if let Some(listing) = self.listing().as_mut() {
                        listing.insert(key(object.as_ref()), Arc::clone(&object));
                    }
                    self.publish(object, false);
                }
                Ok(watcher::Event::InitDone) => {
                    // Completed under the listing's lock: a subscriber sees the list
                    // either in progress or in the cache, never neither.
                    let mut listing = self.listing();
                    if let Some(listed) = listing.take() {
                        self.relisted(listed);
                    }
                }
                Ok(watcher::Event::Apply(object)) => self.apply(object),
                Ok(watcher::Event::Delete(object)) => self.delete(object),
                // The backoff retries; the cache keeps what it had meanwhile.
                Err(err) => tracing::warn!(%err, kind = %K::kind(&()), "a shared watch failed; it restarts"),
            }
        }
    }
}

/// Hands each change to `handle`, in order, until the informer stops.
pub async fn handle_events<K, F, Fut>(mut events: mpsc::UnboundedReceiver<Change<K>>, handle: F)
where
    F: Fn(Arc<K>, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(event) = events.recv().await {
        handle(event.object, event.deleted).await;
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
        assert_eq!(names(shared.in_namespace("ns")), ["a", "b", "c"]);
        assert_eq!(names(shared.claimable("u1", "ns")), ["a", "b", "c"]);
        assert_eq!(names(shared.claimable("u1", "other")), ["a", "b", "d"]);
        // Released: from the controller's pods to the orphans; adopted: the other way.
        shared.apply(pod("b", "ns", None));
        shared.apply(pod("c", "ns", Some("u2")));
        assert_eq!(names(shared.controlled_by("u1")), ["a"]);
        assert_eq!(names(shared.controlled_by("u2")), ["c"]);
        assert_eq!(names(shared.claimable("u9", "ns")), ["b"]);
        shared.delete(pod("a", "ns", Some("u1")));
        assert!(shared.controlled_by("u1").is_empty());
        assert!(shared.get("ns", "a").is_none());
        assert_eq!(names(shared.in_namespace("ns")), ["b", "c"]);
        let seen: Vec<(String, bool)> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| (e.object.name_any(), e.deleted))
            .collect();
        assert_eq!(seen.len(), 7);
        assert_eq!(seen.last(), Some(&("a".to_string(), true)));
    }

    #[test]
    fn a_relist_replaces_the_cache_and_reports_what_vanished() {
        let shared = SharedPods::new();
        shared.apply(pod("kept", "ns", Some("u1")));
        shared.apply(pod("gone", "ns", Some("u1")));
        let (_, mut events) = shared.state_and_changes();
        let mut listed = Index::default();
        let kept = Arc::new(pod("kept", "ns", Some("u1")));
        listed.insert(key(kept.as_ref()), kept);
        shared.relisted(listed);
        assert_eq!(names(shared.controlled_by("u1")), ["kept"]);
        let event = events.try_recv().unwrap();
        assert_eq!((event.object.name_any().as_str(), event.deleted), ("gone", true));
        assert!(*shared.inner.ready.borrow());
    }

    fn seen(events: &mut mpsc::UnboundedReceiver<Change<Pod>>) -> Vec<(String, Option<String>, bool)> {
        let mut seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| {
                (
                    e.object.name_any(),
                    e.object.metadata.resource_version.clone(),
                    e.deleted,
                )
            })
            .collect();
        seen.sort();
        seen
    }

    fn versioned(name: &str, version: &str) -> Pod {
        let mut pod = pod(name, "ns", None);
        pod.metadata.resource_version = Some(version.into());
        pod
    }

    #[test]
    fn a_late_subscriber_starts_from_the_state_then_follows() {
        let shared = SharedPods::new();
        shared.apply(versioned("a", "1"));
        shared.apply(versioned("b", "2"));
        let mut late = shared.subscribe();
        let (mut state, mut changes) = shared.state_and_changes();
        shared.apply(versioned("a", "3"));
        let v = |s: &str| Some(s.to_string());
        assert_eq!(
            seen(&mut late),
            [
                ("a".into(), v("1"), false),
                ("a".into(), v("3"), false),
                ("b".into(), v("2"), false)
            ]
        );
        state.sort_by_key(|p| p.name_any());
        assert_eq!(names(state), ["a", "b"]);
        assert_eq!(seen(&mut changes), [("a".into(), v("3"), false)]);

        // A list in progress: its objects were published already, so a subscriber joining
        // now takes them as the state, not the cache's older copies.
        *shared.listing() = Some(Index::default());
        let newer = Arc::new(versioned("b", "4"));
        shared
            .listing()
            .as_mut()
            .unwrap()
            .insert(key(newer.as_ref()), Arc::clone(&newer));
        shared.publish(newer, false);
        let mut joining = shared.subscribe();
        assert_eq!(
            seen(&mut joining),
            [("a".into(), v("3"), false), ("b".into(), v("4"), false)]
        );
    }
}
