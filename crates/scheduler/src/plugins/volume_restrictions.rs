//! VolumeRestrictions: a network disk that attaches to one node read-write (GCE PD, AWS
//! EBS, RBD, iSCSI) cannot be used by two pods on a node unless both only read it, and a
//! `ReadWriteOncePod` claim serves one pod in the whole cluster.

use k8s_openapi::api::core::v1::{Pod, Volume};

use crate::framework::{FilterResult, NodeInfo, Objects, Refusal};

const DISK_CONFLICT: &str = "node(s) had no available disk";
const RWOP_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";

fn volumes(pod: &Pod) -> &[Volume] {
    pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default()
}

/// Upstream's `isVolumeConflict` for one pair of volumes.
fn conflict(mine: &Volume, theirs: &Volume) -> bool {
    if let (Some(a), Some(b)) = (&mine.gce_persistent_disk, &theirs.gce_persistent_disk) {
        return a.pd_name == b.pd_name && !(a.read_only == Some(true) && b.read_only == Some(true));
    }
    if let (Some(a), Some(b)) = (&mine.aws_elastic_block_store, &theirs.aws_elastic_block_store) {
        return a.volume_id == b.volume_id;
    }
    if let (Some(a), Some(b)) = (&mine.iscsi, &theirs.iscsi) {
        return a.iqn == b.iqn && !(a.read_only == Some(true) && b.read_only == Some(true));
    }
    if let (Some(a), Some(b)) = (&mine.rbd, &theirs.rbd) {
        let shared_monitor = a.monitors.iter().any(|m| b.monitors.contains(m));
        return shared_monitor
            && a.pool == b.pool
            && a.image == b.image
            && !(a.read_only == Some(true) && b.read_only == Some(true));
    }
    false
}

/// Whether the volume is of a kind [`conflict`] compares (most pods have none).
fn may_conflict(volume: &Volume) -> bool {
    volume.gce_persistent_disk.is_some()
        || volume.aws_elastic_block_store.is_some()
        || volume.iscsi.is_some()
        || volume.rbd.is_some()
}

/// Whether a `ReadWriteOncePod` claim of the pod is already used by another pod.
pub struct PreFilter {
    /// The pod has a volume that can conflict with placed pods' disks, so every node's
    /// pods are looked at; otherwise none are.
    has_disks: bool,
    has_rwop_claims: bool,
    rwop_in_use: bool,
}

impl PreFilter {
    pub fn new(pod: &Pod, objects: &Objects, nodes: &[&NodeInfo]) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let rwop: Vec<&str> = volumes(pod)
            .iter()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.as_str())
            .filter(|name| {
                objects
                    .claims
                    .get(&(namespace.to_string(), name.to_string()))
                    .and_then(|c| c.spec.as_ref())
                    .and_then(|s| s.access_modes.as_ref())
                    .is_some_and(|modes| modes.iter().any(|m| m == "ReadWriteOncePod"))
            })
            .collect();
        let uid = pod.metadata.uid.as_deref();
        let rwop_in_use = !rwop.is_empty()
            && nodes.iter().flat_map(|n| &n.pods).any(|other| {
                other.metadata.namespace.as_deref() == Some(namespace)
                    && other.metadata.uid.as_deref() != uid
                    && volumes(other)
                        .iter()
                        .filter_map(|v| v.persistent_volume_claim.as_ref())
                        .any(|c| rwop.contains(&c.claim_name.as_str()))
            });
        Self {
            has_disks: volumes(pod).iter().any(may_conflict),
            has_rwop_claims: !rwop.is_empty(),
            rwop_in_use,
        }
    }

    /// Whether other pods' claims matter to this pod.
    pub fn depends_on_placed_pods(&self) -> bool {
        self.has_rwop_claims
    }

    pub fn filter(&self, pod: &Pod, node: &NodeInfo) -> FilterResult {
        let mine = volumes(pod);
        let disk_taken = self.has_disks
            && node
                .pods
                .iter()
                .flat_map(|p| volumes(p))
                .any(|theirs| mine.iter().any(|m| conflict(m, theirs)));
        if disk_taken {
            return Err(Refusal::Unschedulable(vec![DISK_CONFLICT.into()]));
        }
        if self.rwop_in_use {
            return Err(Refusal::Unschedulable(vec![RWOP_CONFLICT.into()]));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing::{node, pod};
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn one_writer_per_disk_on_a_node() {
        let disk = |read_only: bool| {
            pod(
                json!({"metadata": {"uid": format!("{read_only}")}, "spec": {"volumes": [
                {"name": "d", "gcePersistentDisk": {"pdName": "data", "readOnly": read_only}}]}}),
            )
        };
        let mut a = node("a", json!({}));
        a.add_pod(&Arc::new(disk(true)));
        let state = PreFilter::new(&disk(true), &Objects::default(), &[&a]);
        assert!(state.filter(&disk(true), &a).is_ok(), "two readers share");
        assert_eq!(
            state.filter(&disk(false), &a),
            Err(Refusal::Unschedulable(vec![DISK_CONFLICT.into()]))
        );
    }

    #[test]
    fn a_read_write_once_pod_claim_serves_one_pod() {
        let mut objects = Objects::default();
        objects.claims.insert(
            ("default".into(), "solo".into()),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "solo", "namespace": "default"},
                    "spec": {"accessModes": ["ReadWriteOncePod"]}}))
                .unwrap(),
            ),
        );
        let user = |uid: &str| {
            pod(json!({"metadata": {"uid": uid}, "spec": {"volumes": [
                {"name": "v", "persistentVolumeClaim": {"claimName": "solo"}}]}}))
        };
        let mut a = node("a", json!({}));
        let b = node("b", json!({}));
        assert!(
            PreFilter::new(&user("1"), &objects, &[&a, &b])
                .filter(&user("1"), &b)
                .is_ok()
        );
        a.add_pod(&Arc::new(user("1")));
        assert_eq!(
            PreFilter::new(&user("2"), &objects, &[&a, &b]).filter(&user("2"), &b),
            Err(Refusal::Unschedulable(vec![RWOP_CONFLICT.into()]))
        );
    }
}
