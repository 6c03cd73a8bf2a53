//! The objects besides nodes and pods that plugins consult, mirrored from watches into
//! [`Objects`]: Namespaces (pod affinity's namespace selectors), Services and workload controllers (default topology spread), claims,
//! volumes and storage classes (volume binding), disruption budgets (preemption).

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, ReplicationController, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Resource;
use rkube_api::selector::label_selector_text;
use serde::de::DeserializeOwned;

use crate::framework::Objects;

pub trait Mirrored: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    /// Whether a change can let pods that fit nowhere fit (upstream's queueing hints).
    const WAKES_PODS: bool;
    fn put(self, objects: &mut Objects);
    fn remove(&self, objects: &mut Objects);
    fn clear(objects: &mut Objects);
}

fn key<K: Resource>(object: &K) -> (String, String) {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

impl Mirrored for Namespace {
    const WAKES_PODS: bool = false;
    fn put(self, objects: &mut Objects) {
        let name = self.metadata.name.clone().unwrap_or_default();
        objects
            .namespaces
            .insert(name, self.metadata.labels.unwrap_or_default());
    }
    fn remove(&self, objects: &mut Objects) {
        objects
            .namespaces
            .remove(self.metadata.name.as_deref().unwrap_or_default());
    }
    fn clear(objects: &mut Objects) {
        objects.namespaces.clear();
    }
}

impl Mirrored for Service {
    const WAKES_PODS: bool = false;
    fn put(self, objects: &mut Objects) {
        let (namespace, name) = key(&self);
        // Services without a selector select nothing, not everything.
        match self.spec.and_then(|s| s.selector).filter(|s| !s.is_empty()) {
            Some(selector) => {
                objects.services.entry(namespace).or_default().insert(name, selector);
            }
            None => {
                if let Some(services) = objects.services.get_mut(&namespace) {
                    services.remove(&name);
                }
            }
        }
    }
    fn remove(&self, objects: &mut Objects) {
        let (namespace, name) = key(self);
        if let Some(services) = objects.services.get_mut(&namespace) {
            services.remove(&name);
        }
    }
    fn clear(objects: &mut Objects) {
        objects.services.clear();
    }
}

fn put_workload(objects: &mut Objects, kind: &str, (namespace, name): (String, String), selector: String) {
    objects.workloads.insert((kind.to_string(), namespace, name), selector);
}

fn clear_workloads(objects: &mut Objects, kind: &str) {
    objects.workloads.retain(|(k, _, _), _| k != kind);
}

macro_rules! workload {
    ($type:ty, $kind:literal, $selector:expr) => {
        impl Mirrored for $type {
            const WAKES_PODS: bool = false;
            fn put(self, objects: &mut Objects) {
                let selector: fn(&$type) -> String = $selector;
                let text = selector(&self);
                put_workload(objects, $kind, key(&self), text);
            }
            fn remove(&self, objects: &mut Objects) {
                let (namespace, name) = key(self);
                objects.workloads.remove(&($kind.to_string(), namespace, name));
            }
            fn clear(objects: &mut Objects) {
                clear_workloads(objects, $kind);
            }
        }
    };
}

fn selector_text<T: serde::Serialize>(selector: Option<&T>) -> String {
    selector
        .and_then(|s| serde_json::to_value(s).ok())
        .map(|s| label_selector_text(&s))
        .unwrap_or_default()
}

workload!(ReplicaSet, "ReplicaSet", |rs| selector_text(
    rs.spec.as_ref().map(|s| &s.selector)
));
workload!(StatefulSet, "StatefulSet", |ss| selector_text(
    ss.spec.as_ref().map(|s| &s.selector)
));
workload!(ReplicationController, "ReplicationController", |rc| selector_text(
    rc.spec.as_ref().and_then(|s| s.selector.as_ref())
));

impl Mirrored for PersistentVolumeClaim {
    const WAKES_PODS: bool = true;
    fn put(self, objects: &mut Objects) {
        objects.claims.insert(key(&self), Arc::new(self));
    }
    fn remove(&self, objects: &mut Objects) {
        objects.claims.remove(&key(self));
    }
    fn clear(objects: &mut Objects) {
        objects.claims.clear();
    }
}

impl Mirrored for PersistentVolume {
    const WAKES_PODS: bool = true;
    fn put(self, objects: &mut Objects) {
        let name = self.metadata.name.clone().unwrap_or_default();
        // A promised volume the API now shows claimed is no longer only promised.
        if self.spec.as_ref().is_some_and(|s| s.claim_ref.is_some()) {
            objects.assumed_volumes.remove(&name);
        }
        objects.volumes.insert(name, Arc::new(self));
    }
    fn remove(&self, objects: &mut Objects) {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        objects.volumes.remove(name);
        objects.assumed_volumes.remove(name);
    }
    fn clear(objects: &mut Objects) {
        objects.volumes.clear();
    }
}

impl Mirrored for StorageClass {
    const WAKES_PODS: bool = true;
    fn put(self, objects: &mut Objects) {
        objects
            .classes
            .insert(self.metadata.name.clone().unwrap_or_default(), Arc::new(self));
    }
    fn remove(&self, objects: &mut Objects) {
        objects
            .classes
            .remove(self.metadata.name.as_deref().unwrap_or_default());
    }
    fn clear(objects: &mut Objects) {
        objects.classes.clear();
    }
}

impl Mirrored for PodDisruptionBudget {
    const WAKES_PODS: bool = false;
    fn put(self, objects: &mut Objects) {
        objects.budgets.insert(key(&self), Arc::new(self));
    }
    fn remove(&self, objects: &mut Objects) {
        objects.budgets.remove(&key(self));
    }
    fn clear(objects: &mut Objects) {
        objects.budgets.clear();
    }
}
