//! The local-path provisioner (after rancher's `local-path-provisioner`, which k3s ships):
//! the default StorageClass `local-path` (WaitForFirstConsumer, reclaim Delete) whose
//! claims get a directory on the node the scheduler chose, made by a helper pod there, as a
//! hostPath PersistentVolume pinned to that node; when such a volume with the Delete policy
//! is released, a helper pod removes the directory and the volume is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use rkube_api::volumes::{PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER};
use rkube_client::events::{Recorder, reference};
use serde_json::json;

use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

pub const PROVISIONER: &str = "rancher.io/local-path";
pub const CLASS: &str = "local-path";
/// Where the volumes' directories live on every node (k3s: /var/lib/rancher/k3s/storage).
pub const BASE_PATH: &str = "/var/lib/rkube/storage";
/// The image of the helper pods; air-gapped nodes get it from their registry mirror.
pub const HELPER_IMAGE: &str = "busybox";
const HELPER_NAMESPACE: &str = "kube-system";
/// The label of the helper pods, which the provisioner watches alone.
const HELPER_LABEL: &str = "app=local-path-provisioner";
const WORKERS: usize = 2;

const CLAIM: &str = "claim:";
const VOLUME: &str = "volume:";

/// The class the cluster starts with, marked default.
pub fn default_class() -> StorageClass {
    StorageClass {
        metadata: kube::api::ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some(BTreeMap::from([(
                rkube_api::volumes::DEFAULT_CLASS.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    }
}

/// The volume made for a claim: `pvc-<claim uid>`.
pub fn volume_name(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.uid().unwrap_or_default())
}

/// The claim's directory on its node, named as rancher's provisioner names it.
pub fn directory(volume: &str, claim: &PersistentVolumeClaim) -> String {
    format!(
        "{BASE_PATH}/{volume}_{}_{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

/// A pod on `node` running `script` with the base directory mounted at the same path.
pub fn helper_pod(name: &str, node: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": HELPER_NAMESPACE, "labels": {"app": "local-path-provisioner"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "volumes": [{"name": "data", "hostPath": {"path": BASE_PATH, "type": "DirectoryOrCreate"}}],
            "containers": [{"name": "helper-pod", "image": HELPER_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script], "volumeMounts": [{"name": "data", "mountPath": BASE_PATH}]}],
        },
    }))
    .unwrap_or_default()
}

/// The volume for a claim provisioned at `path` on `node` (labelled `hostname`).
pub fn volume_for(claim: &PersistentVolumeClaim, class: &StorageClass, path: &str, hostname: &str) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned());
    serde_json::from_value(json!({
        "metadata": {"name": volume_name(claim), "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.name_any(),
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": claim.namespace(),
                "name": claim.name_any(), "uid": claim.uid(), "resourceVersion": claim.resource_version()},
        },
    }))
    .unwrap_or_default()
}

/// The node a provisioned volume lives on (its node affinity's hostname).
fn node_of(volume: &PersistentVolume) -> Option<String> {
    let terms = &volume
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_expressions
            .iter()
            .flatten()
            .find(|e| e.key == "kubernetes.io/hostname")
            .and_then(|e| e.values.as_ref()?.first().cloned())
    })
}

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    helpers: Store<Pod>,
}

/// Where a helper pod is.
enum Helper {
    Running,
    Succeeded,
    Failed(String),
}

impl Controller {
    /// Starts the helper pod if it is not there, and says how it is doing.
    async fn helper(&self, name: &str, node: &str, script: &str) -> Result<Helper, kube::Error> {
        let Some(pod) = self.helpers.get(&ObjectRef::new(name).within(HELPER_NAMESPACE)) else {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), HELPER_NAMESPACE);
            match api
                .create(&PostParams::default(), &helper_pod(name, node, script))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(err) => return Err(err),
            }
            return Ok(Helper::Running);
        };
        Ok(match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => Helper::Succeeded,
            Some("Failed") => Helper::Failed(format!("helper pod {name} failed on node {node}")),
            _ => Helper::Running,
        })
    }

    async fn remove_helper(&self, name: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), HELPER_NAMESPACE);
        crate::ignore_not_found(api.delete(name, &DeleteParams::default()).await)
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        if let Some(claim) = key.strip_prefix(CLAIM) {
            self.provision(claim).await
        } else if let Some(volume) = key.strip_prefix(VOLUME) {
            self.delete(volume).await
        } else {
            Ok(None)
        }
    }

    async fn provision(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(claim) = self.claims.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        let annotations = claim.metadata.annotations.clone().unwrap_or_default();
        let unbound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or_default()
            .is_empty();
        if annotations.get(STORAGE_PROVISIONER).map(String::as_str) != Some(PROVISIONER)
            || !unbound
            || claim.metadata.deletion_timestamp.is_some()
        {
            return Ok(None);
        }
        let Some(node) = annotations.get(SELECTED_NODE) else {
            // Only WaitForFirstConsumer claims are provisioned: the directory needs a node.
            return Ok(None);
        };
        let volume = volume_name(&claim);
        if self.volumes.get(&ObjectRef::new(&volume)).is_some() {
            return Ok(None);
        }
        let class_name = rkube_api::volumes::claim_class(&claim);
        let Some(class) = self.classes.get(&ObjectRef::new(class_name)) else {
            return Ok(None);
        };
        let involved = reference(claim.as_ref());
        let path = directory(&volume, &claim);
        let helper = format!("helper-pod-create-{volume}");
        let script = format!("mkdir -m 0777 -p '{path}'");
        let state = self
            .helper(&helper, node, &script)
            .await
            .map_err(|source| ControllerError::api(key, "starting the helper pod", source))?;
        match state {
            Helper::Running => {
                let message = format!("External provisioner is provisioning volume for claim \"{key}\"");
                self.event(&involved, "Normal", "Provisioning", &message).await;
                Ok(None)
            }
            Helper::Failed(message) => {
                self.remove_helper(&helper)
                    .await
                    .map_err(|source| ControllerError::api(key, "removing the helper pod", source))?;
                let message = format!("failed to provision volume with StorageClass \"{class_name}\": {message}");
                self.event(&involved, "Warning", "ProvisioningFailed", &message).await;
                Ok(Some(Duration::from_secs(10)))
            }
            Helper::Succeeded => {
                let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
                let hostname = nodes
                    .get_opt(node)
                    .await
                    .map_err(|source| ControllerError::api(key, "reading the node", source))?
                    .and_then(|n| n.labels().get("kubernetes.io/hostname").cloned())
                    .unwrap_or_else(|| node.clone());
                let pv = volume_for(&claim, &class, &path, &hostname);
                let api: Api<PersistentVolume> = Api::all(self.client.clone());
                match api.create(&PostParams::default(), &pv).await {
                    Ok(_) => {
                        let message = format!("Successfully provisioned volume {volume}");
                        self.event(&involved, "Normal", "ProvisioningSucceeded", &message).await;
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(source) => return Err(ControllerError::api(key, "creating the volume", source)),
                }
                self.remove_helper(&helper)
                    .await
                    .map_err(|source| ControllerError::api(key, "removing the helper pod", source))?;
                Ok(None)
            }
        }
    }

    async fn delete(&self, name: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(volume) = self.volumes.get(&ObjectRef::new(name)) else {
            return Ok(None);
        };
        let spec = volume.spec.clone().unwrap_or_default();
        let ours = volume.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
        let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if !ours || !released || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
            return Ok(None);
        }
        let (Some(node), Some(path)) = (node_of(&volume), spec.host_path.as_ref().map(|h| h.path.clone())) else {
            return Ok(None);
        };
        if !path.starts_with(&format!("{BASE_PATH}/")) || path.contains("..") {
            // Never remove anything outside the provisioner's own directory.
            tracing::warn!(volume = name, path, "not deleting a directory outside {BASE_PATH}");
            return Ok(None);
        }
        let helper = format!("helper-pod-delete-{name}");
        let script = format!("rm -rf '{path}'");
        let state = self
            .helper(&helper, &node, &script)
            .await
            .map_err(|source| ControllerError::api(name, "starting the helper pod", source))?;
        match state {
            Helper::Running => Ok(None),
            Helper::Failed(message) => {
                self.remove_helper(&helper)
                    .await
                    .map_err(|source| ControllerError::api(name, "removing the helper pod", source))?;
                self.event(&reference(volume.as_ref()), "Warning", "VolumeFailedDelete", &message)
                    .await;
                Ok(Some(Duration::from_secs(10)))
            }
            Helper::Succeeded => {
                let api: Api<PersistentVolume> = Api::all(self.client.clone());
                crate::ignore_not_found(api.delete(name, &DeleteParams::default()).await)
                    .map_err(|source| ControllerError::api(name, "deleting the volume", source))?;
                self.remove_helper(&helper)
                    .await
                    .map_err(|source| ControllerError::api(name, "removing the helper pod", source))?;
                Ok(None)
            }
        }
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

/// Creates the default class unless a class of that name exists (the user may have
/// changed or replaced it, which is theirs to do).
async fn ensure_class(client: &kube::Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    loop {
        match api.create(&PostParams::default(), &default_class()).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => return,
            Err(err) => {
                tracing::info!(%err, "creating the local-path StorageClass failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs the provisioner until the future is dropped.
pub async fn run(client: kube::Client) {
    ensure_class(&client).await;
    let queue = WorkQueue::new();
    let mut tasks = tokio::task::JoinSet::new();
    let claims = crate::informer::spawn::<PersistentVolumeClaim, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |claim, deleted| {
            let queue = Arc::clone(&queue);
            async move {
                if !deleted {
                    queue.add(&format!("{CLAIM}{}", key_of(&claim))).await;
                }
            }
        }
    });
    let volumes = crate::informer::spawn::<PersistentVolume, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |volume, deleted| {
            let queue = Arc::clone(&queue);
            async move {
                if !deleted {
                    queue.add(&format!("{VOLUME}{}", volume.name_any())).await;
                }
            }
        }
    });
    let classes = crate::informer::spawn::<StorageClass, _, _>(&mut tasks, &client, |_, _| async {});
    let helpers = crate::informer::spawn_with::<Pod, _, _>(
        &mut tasks,
        Api::namespaced(client.clone(), HELPER_NAMESPACE),
        kube::runtime::watcher::Config::default().labels(HELPER_LABEL),
        {
            let queue = Arc::clone(&queue);
            move |pod, _| {
                let queue = Arc::clone(&queue);
                async move {
                    // Helper pods wake the claim or volume they work for.
                    let name = pod.name_any();
                    if pod.metadata.namespace.as_deref() != Some(HELPER_NAMESPACE) {
                        return;
                    }
                    if let Some(volume) = name.strip_prefix("helper-pod-delete-") {
                        queue.add(&format!("{VOLUME}{volume}")).await;
                    } else if let Some(volume) = name.strip_prefix("helper-pod-create-") {
                        queue.add(&format!("{CLAIM}{volume}")).await;
                    }
                }
            }
        },
    );
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), PROVISIONER),
        client,
        claims: claims.clone(),
        volumes: volumes.clone(),
        classes: classes.clone(),
        helpers: helpers.clone(),
    });
    claims.wait_until_ready().await.ok();
    volumes.wait_until_ready().await.ok();
    classes.wait_until_ready().await.ok();
    helpers.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &queue, WORKERS, "local-path-provisioner", move |key| {
            let controller = Arc::clone(&controller);
            async move {
                // A helper pod names its volume (`pvc-<uid>`), not its claim: find the claim.
                let key = match key.strip_prefix(CLAIM) {
                    Some(volume) if volume.starts_with("pvc-") && !volume.contains('/') => {
                        let uid = volume.trim_start_matches("pvc-");
                        match controller.claims.find(|c| c.uid().as_deref() == Some(uid)) {
                            Some(claim) => format!("{CLAIM}{}", key_of(claim.as_ref())),
                            None => return Ok(None),
                        }
                    }
                    _ => key,
                };
                controller.reconcile(&key).await
            }
        });
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_volumes_are_pinned_to_the_chosen_node() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "data-db-0",
            "namespace": "shop", "uid": "1234"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap();
        let volume = volume_name(&claim);
        assert_eq!(volume, "pvc-1234");
        let path = directory(&volume, &claim);
        assert_eq!(path, "/var/lib/rkube/storage/pvc-1234_shop_data-db-0");
        let pv = volume_for(&claim, &default_class(), &path, "node-1");
        assert_eq!(node_of(&pv).as_deref(), Some("node-1"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("1234"));
        let helper = helper_pod("helper-pod-create-pvc-1234", "node-1", "mkdir -p x");
        assert_eq!(helper.spec.unwrap().node_name.as_deref(), Some("node-1"));
    }
}
