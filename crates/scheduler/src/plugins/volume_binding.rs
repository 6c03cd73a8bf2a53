//! VolumeBinding: a pod's claims decide where it can run. A bound claim's volume must be
//! reachable from the node (its node affinity); an unbound claim of a
//! `WaitForFirstConsumer` class needs an available volume the node can reach, or a class
//! that provisions for the node's topology; an unbound claim of an `Immediate` class waits
//! for the volume controller. Once a node is chosen, the chosen volumes are bound to their
//! claims (the volume's `claimRef`) and claims to provision are given the node
//! (`volume.kubernetes.io/selected-node`), and the pod is bound only when every claim is.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::framework::{FilterResult, NodeInfo, Objects, Refusal};
use crate::plugins::node_affinity::node_selector_matches;

const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
const PV_NOT_EXIST: &str = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
pub use rkube_api::volumes::{BIND_COMPLETED, BOUND_BY_CONTROLLER, SELECTED_NODE};
use rkube_api::volumes::{claim_class as class_name, storage, volume_serves as serves};

/// What binding the pod's claims takes once its node is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeAction {
    /// Set the volume's claimRef to the claim.
    Bind {
        volume: String,
        claim: Arc<PersistentVolumeClaim>,
    },
    /// Ask the claim's provisioner for a volume on the node.
    Provision { claim: Arc<PersistentVolumeClaim> },
}

impl VolumeAction {
    pub fn claim(&self) -> &PersistentVolumeClaim {
        match self {
            Self::Bind { claim, .. } | Self::Provision { claim } => claim,
        }
    }
}

/// The claim names a pod uses: its `persistentVolumeClaim` volumes and the claims of its
/// generic ephemeral volumes (named `<pod>-<volume>`).
pub fn claim_names(pod: &Pod) -> Vec<(String, bool)> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some((claim.claim_name.clone(), false))
            } else {
                v.ephemeral.as_ref().map(|_| (format!("{name}-{}", v.name), true))
            }
        })
        .collect()
}

fn reachable(volume: &PersistentVolume, node: &NodeInfo) -> bool {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|required| node_selector_matches(required, node))
}

fn provisions_here(class: &StorageClass, node: &NodeInfo) -> bool {
    let labels = node.node.metadata.labels.clone().unwrap_or_default();
    let terms = class.allowed_topologies.as_deref().unwrap_or_default();
    terms.is_empty()
        || terms.iter().any(|term| {
            term.match_label_expressions
                .iter()
                .flatten()
                .all(|e| labels.get(&e.key).is_some_and(|v| e.values.contains(v)))
        })
}

/// The pod's claims sorted into bound ones (with their volumes) and ones to bind.
#[derive(Default)]
pub struct PreFilter {
    bound: Vec<Option<Arc<PersistentVolume>>>,
    to_bind: Vec<Arc<PersistentVolumeClaim>>,
}

impl PreFilter {
    /// Fails (for every node) when a claim is missing, being deleted, or waits for
    /// immediate binding.
    pub fn new(pod: &Pod, objects: &Objects) -> Result<Self, String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut state = Self::default();
        let mut immediate = false;
        for (name, ephemeral) in claim_names(pod) {
            let Some(claim) = objects.claims.get(&(namespace.to_string(), name.clone())) else {
                return Err(if ephemeral {
                    format!("waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\"")
                } else {
                    format!("persistentvolumeclaim \"{name}\" not found")
                });
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let volume_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .unwrap_or_default();
            if !volume_name.is_empty() {
                state.bound.push(objects.volumes.get(volume_name).cloned());
                continue;
            }
            let waits = objects
                .classes
                .get(class_name(claim))
                .and_then(|c| c.volume_binding_mode.as_deref())
                == Some("WaitForFirstConsumer");
            if waits {
                state.to_bind.push(Arc::clone(claim));
            } else {
                immediate = true;
            }
        }
        if immediate {
            return Err(UNBOUND_IMMEDIATE.into());
        }
        Ok(state)
    }

    pub fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.to_bind.is_empty()
    }

    pub fn filter(&self, objects: &Objects, node: &NodeInfo) -> FilterResult {
        self.actions(objects, node).map(|_| ())
    }

    /// What binding the claims on `node` takes, or why they cannot be bound there.
    pub fn actions(&self, objects: &Objects, node: &NodeInfo) -> Result<Vec<VolumeAction>, Refusal> {
        let mut reasons = Vec::new();
        if self.bound.iter().any(Option::is_none) {
            reasons.push(PV_NOT_EXIST.to_string());
        } else if !self.bound.iter().flatten().all(|v| reachable(v, node)) {
            reasons.push(NODE_CONFLICT.to_string());
        }
        let mut actions = Vec::new();
        let mut taken: HashSet<&str> = HashSet::new();
        let mut unbound_ok = true;
        for claim in &self.to_bind {
            // The smallest reachable volume that serves the claim, as upstream chooses.
            let chosen = objects
                .volumes
                .iter()
                .filter(|(name, v)| {
                    !taken.contains(name.as_str())
                        && !objects.assumed_volumes.contains_key(name.as_str())
                        && serves(v, claim)
                        && reachable(v, node)
                })
                .min_by(|(_, a), (_, b)| {
                    let size = |v: &PersistentVolume| storage(v.spec.as_ref().and_then(|s| s.capacity.as_ref()));
                    size(a).total_cmp(&size(b))
                });
            if let Some((name, _)) = chosen {
                taken.insert(name);
                actions.push(VolumeAction::Bind {
                    volume: name.clone(),
                    claim: Arc::clone(claim),
                });
                continue;
            }
            let provisioned = objects
                .classes
                .get(class_name(claim))
                .is_some_and(|c| c.provisioner != NO_PROVISIONER && provisions_here(c, node));
            if provisioned {
                actions.push(VolumeAction::Provision {
                    claim: Arc::clone(claim),
                });
            } else {
                unbound_ok = false;
            }
        }
        if !unbound_ok {
            reasons.push(BIND_CONFLICT.to_string());
        }
        if reasons.is_empty() {
            Ok(actions)
        } else {
            Err(Refusal::Unresolvable(reasons))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::{Value, json};

    fn claim(name: &str, extra: Value) -> (String, Arc<PersistentVolumeClaim>) {
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let c = json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": spec});
        (name.to_string(), Arc::new(serde_json::from_value(c).unwrap()))
    }

    fn volume(name: &str, size: &str, host: &str) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}},
                "status": {"phase": "Available"}}))
            .unwrap(),
        )
    }

    fn objects() -> Objects {
        let mut objects = Objects::default();
        let class = |name: &str, mode: &str, provisioner: &str| {
            serde_json::from_value::<StorageClass>(json!({"metadata": {"name": name},
                "provisioner": provisioner, "volumeBindingMode": mode}))
            .unwrap()
        };
        objects.classes.insert(
            "local".into(),
            Arc::new(class("local", "WaitForFirstConsumer", NO_PROVISIONER)),
        );
        objects.classes.insert(
            "dynamic".into(),
            Arc::new(class("dynamic", "WaitForFirstConsumer", "rkube.io/local-path")),
        );
        objects
            .classes
            .insert("now".into(), Arc::new(class("now", "Immediate", "x")));
        for v in [
            volume("small", "1Gi", "a"),
            volume("big", "10Gi", "a"),
            volume("far", "1Gi", "b"),
        ] {
            objects.volumes.insert(v.metadata.name.clone().unwrap(), v);
        }
        objects
    }

    fn user(claim: &str) -> Pod {
        pod(json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}))
    }

    #[test]
    fn claims_that_cannot_bind_anywhere_fail_before_the_nodes() {
        let mut objects = objects();
        assert_eq!(
            PreFilter::new(&user("missing"), &objects).err().unwrap(),
            "persistentvolumeclaim \"missing\" not found"
        );
        let (name, c) = claim("later", json!({"storageClassName": "now"}));
        objects.claims.insert(("default".into(), name), c);
        assert_eq!(
            PreFilter::new(&user("later"), &objects).err().unwrap(),
            UNBOUND_IMMEDIATE
        );
    }

    #[test]
    fn bound_claims_follow_their_volume() {
        let mut objects = objects();
        let (name, c) = claim("data", json!({"volumeName": "far"}));
        objects.claims.insert(("default".into(), name), c);
        let state = PreFilter::new(&user("data"), &objects).unwrap();
        assert_eq!(
            state.filter(&objects, &node("a", json!({}))),
            Err(Refusal::Unresolvable(vec![NODE_CONFLICT.into()]))
        );
        assert!(state.filter(&objects, &node("b", json!({}))).is_ok());
    }

    #[test]
    fn waiting_claims_take_the_smallest_reachable_volume_or_provision() {
        let mut objects = objects();
        let (name, c) = claim("data", json!({"storageClassName": "local"}));
        objects.claims.insert(("default".into(), name), c);
        let state = PreFilter::new(&user("data"), &objects).unwrap();
        let actions = state.actions(&objects, &node("a", json!({}))).unwrap();
        assert!(matches!(&actions[..], [VolumeAction::Bind { volume, .. }] if volume == "small"));
        assert_eq!(
            state.filter(&objects, &node("c", json!({}))),
            Err(Refusal::Unresolvable(vec![BIND_CONFLICT.into()]))
        );
        // A volume promised to another pod's claim is not offered again.
        objects.assumed_volumes.insert("small".into(), "default/other".into());
        let actions = state.actions(&objects, &node("a", json!({}))).unwrap();
        assert!(matches!(&actions[..], [VolumeAction::Bind { volume, .. }] if volume == "big"));

        let (name, c) = claim("scratch", json!({"storageClassName": "dynamic"}));
        objects.claims.insert(("default".into(), name), c);
        let state = PreFilter::new(&user("scratch"), &objects).unwrap();
        let actions = state.actions(&objects, &node("c", json!({}))).unwrap();
        assert!(matches!(&actions[..], [VolumeAction::Provision { .. }]));
    }
}
