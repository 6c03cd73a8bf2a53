//! The PersistentVolume binder, as upstream's `pkg/controller/volume/persistentvolume`:
//! an unbound claim is bound to the smallest available volume of its class that fits its
//! size, access modes, volume mode and selector (or to the volume pre-bound to it); a claim
//! of a `WaitForFirstConsumer` class is left to the scheduler; a claim nothing fits is
//! handed to its class's provisioner. Volumes go Available, Bound, Released when their
//! claim is gone, then are kept (Retain) or deleted (Delete: by their provisioner). Claims
//! without a class get the default class, even when it appears after them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use rkube_api::volumes::{
    BETA_STORAGE_PROVISIONER, BIND_COMPLETED, BOUND_BY_CONTROLLER, DEFAULT_CLASS, PROVISIONED_BY, SELECTED_NODE,
    STORAGE_PROVISIONER, claim_class, storage, volume_serves,
};
use rkube_client::events::{Recorder, reference};
use serde_json::json;

use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

/// Classes whose volumes are made by hand (local volumes): nothing provisions them.
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
const WORKERS: usize = 2;
/// Claims and volumes are looked at again this often, as upstream's periodic sync.
const RESYNC: Duration = Duration::from_secs(15);

const CLAIM: &str = "claim:";
const VOLUME: &str = "volume:";

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
}

fn phase_of_volume(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn phase_of_claim(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The default class (the newest, if several are marked), as upstream's admission.
pub fn default_class(classes: &[Arc<StorageClass>]) -> Option<Arc<StorageClass>> {
    classes
        .iter()
        .filter(|c| annotation(&c.metadata, DEFAULT_CLASS) == Some("true"))
        .max_by_key(|c| (c.metadata.creation_timestamp.as_ref().map(|t| t.0), c.name_any()))
        .cloned()
}

/// The volume to bind a claim to: one pre-bound to it, else the smallest that serves it
/// (and, for a claim given a node, that the node reaches). Volumes with a node affinity
/// are the scheduler's to choose for claims waiting for their consumer.
pub fn best_volume(
    claim: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
    node: Option<&Node>,
    delayed: bool,
) -> Option<Arc<PersistentVolume>> {
    let pre_bound = volumes.iter().find(|v| {
        v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
            r.namespace == claim.metadata.namespace
                && r.name == claim.metadata.name
                && r.uid
                    .as_deref()
                    .is_none_or(|uid| Some(uid) == claim.metadata.uid.as_deref())
        })
    });
    if let Some(volume) = pre_bound {
        return Some(Arc::clone(volume));
    }
    if delayed && node.is_none() {
        return None;
    }
    volumes
        .iter()
        .filter(|v| volume_serves(v, claim))
        .filter(|v| {
            let required = v
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.as_ref());
            match (required, node) {
                (None, _) => true,
                (Some(required), Some(node)) => rkube_api::scheduling::node_selector_matches(required, node),
                (Some(_), None) => !delayed,
            }
        })
        .min_by(|a, b| {
            let size = |v: &PersistentVolume| storage(v.spec.as_ref().and_then(|s| s.capacity.as_ref()));
            size(a)
                .total_cmp(&size(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        })
        .cloned()
}

impl Controller {
    async fn event(&self, involved: &ObjectReference, kind: &str, reason: &str, message: &str) {
        self.recorder.emit(involved, kind, reason, message).await;
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        if let Some(claim) = key.strip_prefix(CLAIM) {
            self.sync_claim(claim).await?;
        } else if let Some(volume) = key.strip_prefix(VOLUME) {
            self.sync_volume(volume).await?;
        }
        Ok(None)
    }

    async fn claim_status(
        &self,
        claim: &PersistentVolumeClaim,
        status: serde_json::Value,
    ) -> Result<(), ControllerError> {
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &claim.namespace().unwrap_or_default());
        crate::ignore_not_found(
            api.patch_status(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await,
        )
        .map_err(|source| ControllerError::api(&key_of(claim), "updating the claim's status", source))
    }

    async fn volume_phase(
        &self,
        volume: &PersistentVolume,
        phase: &str,
        message: Option<&str>,
    ) -> Result<(), ControllerError> {
        if phase_of_volume(volume) == phase {
            return Ok(());
        }
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let status = json!({"status": {"phase": phase, "message": message,
            "lastPhaseTransitionTime": rkube_client::now_text()}});
        crate::ignore_not_found(
            api.patch_status(&volume.name_any(), &PatchParams::default(), &Patch::Merge(&status))
                .await,
        )
        .map_err(|source| ControllerError::api(&volume.name_any(), "updating the volume's phase", source))
    }

    async fn sync_claim(&self, key: &str) -> Result<(), ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(claim) = self.claims.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(());
        };
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let volume_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if volume_name.is_empty() {
            self.sync_unbound_claim(&claim).await
        } else {
            self.sync_bound_claim(&claim, &volume_name).await
        }
    }

    async fn sync_unbound_claim(&self, claim: &PersistentVolumeClaim) -> Result<(), ControllerError> {
        let namespace = claim.namespace().unwrap_or_default();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        let has_class = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_ref())
            .is_some()
            || annotation(&claim.metadata, "volume.beta.kubernetes.io/storage-class").is_some();
        if !has_class && let Some(default) = default_class(&self.classes.state()) {
            // Upstream's retroactive default class: the claim takes the class that appeared.
            let patch = json!({"spec": {"storageClassName": default.name_any()}});
            crate::ignore_not_found(
                claims
                    .patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )
            .map_err(|source| ControllerError::api(&key_of(claim), "setting the default class", source))?;
            return Ok(());
        }
        let class_name = claim_class(claim);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(&ObjectRef::new(class_name)))
            .flatten();
        let delayed = class.as_ref().and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
        let selected = annotation(&claim.metadata, SELECTED_NODE).map(str::to_string);
        let node = selected.as_ref().and_then(|n| self.nodes.get(&ObjectRef::new(n)));
        let involved = reference(claim);
        if let Some(volume) = best_volume(claim, &self.volumes.state(), node.as_deref(), delayed) {
            return self.bind(&volume, claim).await;
        }
        if delayed && selected.is_none() {
            self.event(
                &involved,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
        } else if !class_name.is_empty() {
            match class {
                None => {
                    let message = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
                    self.event(&involved, "Warning", "ProvisioningFailed", &message).await;
                }
                Some(class) if class.provisioner != NO_PROVISIONER => {
                    if annotation(&claim.metadata, STORAGE_PROVISIONER) != Some(class.provisioner.as_str()) {
                        let patch = json!({"metadata": {"annotations": {
                            STORAGE_PROVISIONER: class.provisioner, BETA_STORAGE_PROVISIONER: class.provisioner}}});
                        crate::ignore_not_found(
                            claims
                                .patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                                .await,
                        )
                        .map_err(|source| ControllerError::api(&key_of(claim), "asking for provisioning", source))?;
                    }
                    let message = format!(
                        "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                        class.provisioner
                    );
                    self.event(&involved, "Normal", "ExternalProvisioning", &message).await;
                }
                Some(_) => {}
            }
        } else {
            self.event(
                &involved,
                "Normal",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            )
            .await;
        }
        if phase_of_claim(claim) != "Pending" {
            self.claim_status(claim, json!({"phase": "Pending"})).await?;
        }
        Ok(())
    }

    async fn sync_bound_claim(&self, claim: &PersistentVolumeClaim, volume_name: &str) -> Result<(), ControllerError> {
        let involved = reference(claim);
        let completed = annotation(&claim.metadata, BIND_COMPLETED).is_some();
        let Some(volume) = self.volumes.get(&ObjectRef::new(volume_name)) else {
            if completed && phase_of_claim(claim) != "Lost" {
                self.event(
                    &involved,
                    "Warning",
                    "ClaimLost",
                    "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
                )
                .await;
                self.claim_status(claim, json!({"phase": "Lost"})).await?;
            } else if !completed && phase_of_claim(claim) != "Pending" {
                self.claim_status(claim, json!({"phase": "Pending"})).await?;
            }
            return Ok(());
        };
        let reference_uid = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .map(|r| (r.namespace.clone(), r.name.clone(), r.uid.clone()));
        match reference_uid {
            None => self.bind(&volume, claim).await,
            Some((ns, name, uid))
                if ns == claim.metadata.namespace
                    && name == claim.metadata.name
                    && uid.as_deref().is_none_or(|u| Some(u) == claim.metadata.uid.as_deref()) =>
            {
                self.bind(&volume, claim).await
            }
            Some(_) => {
                if completed {
                    if phase_of_claim(claim) != "Lost" {
                        self.event(
                            &involved,
                            "Warning",
                            "ClaimMisbound",
                            "Two claims are bound to the same volume, this one is bound incorrectly",
                        )
                        .await;
                        self.claim_status(claim, json!({"phase": "Lost"})).await?;
                    }
                } else {
                    let message = format!("volume \"{volume_name}\" already bound to a different claim.");
                    self.event(&involved, "Warning", "FailedBinding", &message).await;
                }
                Ok(())
            }
        }
    }

    /// Binds both ways, each step only if it is not done yet (upstream's `bind`).
    async fn bind(&self, volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Result<(), ControllerError> {
        let key = key_of(claim);
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        let volume_spec = volume.spec.clone().unwrap_or_default();
        let referenced = volume_spec
            .claim_ref
            .as_ref()
            .is_some_and(|r| r.uid.is_some() && r.uid == claim.metadata.uid);
        let volume = if referenced {
            volume.clone()
        } else {
            let by_controller = volume_spec.claim_ref.is_none();
            let mut patch = json!({"spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": claim.metadata.namespace, "name": claim.metadata.name, "uid": claim.metadata.uid,
                "resourceVersion": claim.metadata.resource_version}}});
            if by_controller {
                patch["metadata"] = json!({"annotations": {BOUND_BY_CONTROLLER: "yes"}});
            }
            volumes
                .patch(&volume.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| ControllerError::api(&key, "binding the volume", source))?
        };
        self.volume_phase(&volume, "Bound", None).await?;
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &claim.namespace().unwrap_or_default());
        let claim_volume = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if claim_volume != volume.name_any() || annotation(&claim.metadata, BIND_COMPLETED).is_none() {
            let mut annotations = json!({BIND_COMPLETED: "yes"});
            if claim_volume.is_empty() {
                annotations[BOUND_BY_CONTROLLER] = json!("yes");
            }
            let patch = json!({"metadata": {"annotations": annotations}, "spec": {"volumeName": volume.name_any()}});
            claims
                .patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| ControllerError::api(&key, "binding the claim", source))?;
        }
        let spec = volume.spec.clone().unwrap_or_default();
        let status = claim.status.clone().unwrap_or_default();
        if status.phase.as_deref() != Some("Bound")
            || status.capacity != spec.capacity
            || status.access_modes != spec.access_modes
        {
            self.claim_status(
                claim,
                json!({"phase": "Bound", "capacity": spec.capacity, "accessModes": spec.access_modes}),
            )
            .await?;
        }
        Ok(())
    }

    async fn sync_volume(&self, name: &str) -> Result<(), ControllerError> {
        let Some(volume) = self.volumes.get(&ObjectRef::new(name)) else {
            return Ok(());
        };
        if volume.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(reference) = volume.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            return self.volume_phase(&volume, "Available", None).await;
        };
        let namespace = reference.namespace.clone().unwrap_or_default();
        let claim_name = reference.name.clone().unwrap_or_default();
        let Some(uid) = reference.uid.clone() else {
            // Pre-bound by name: the claim's sync binds it.
            self.queue.add(&format!("{CLAIM}{namespace}/{claim_name}")).await;
            return self.volume_phase(&volume, "Available", None).await;
        };
        let mut claim = self.claims.get(&ObjectRef::new(&claim_name).within(&namespace));
        if claim.is_none() {
            // The cache may be behind a claim created a moment ago: ask the API before
            // taking the volume for released.
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
            claim = api
                .get_opt(&claim_name)
                .await
                .map_err(|source| ControllerError::api(name, "reading the volume's claim", source))?
                .map(Arc::new);
        }
        match claim.filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str())) {
            Some(claim) => {
                let bound_to = claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .unwrap_or_default();
                if bound_to == name {
                    self.volume_phase(&volume, "Bound", None).await
                } else if bound_to.is_empty() {
                    self.queue.add(&format!("{CLAIM}{}", key_of(claim.as_ref()))).await;
                    Ok(())
                } else if annotation(&volume.metadata, BOUND_BY_CONTROLLER).is_some() {
                    // We bound it to a claim that went to another volume: free it.
                    let api: Api<PersistentVolume> = Api::all(self.client.clone());
                    let patch = json!({"spec": {"claimRef": null}});
                    crate::ignore_not_found(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await)
                        .map_err(|source| ControllerError::api(name, "unbinding the volume", source))?;
                    Ok(())
                } else {
                    Ok(())
                }
            }
            None => self.reclaim(&volume).await,
        }
    }

    /// The volume's claim is gone: Released, then kept or given back to its provisioner.
    async fn reclaim(&self, volume: &PersistentVolume) -> Result<(), ControllerError> {
        if matches!(phase_of_volume(volume), "Released" | "Failed") {
            return Ok(());
        }
        self.volume_phase(volume, "Released", None).await?;
        let policy = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        if policy == "Delete" && annotation(&volume.metadata, PROVISIONED_BY).is_none() {
            let message = format!(
                "error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched",
                volume.name_any()
            );
            self.event(&reference(volume), "Warning", "VolumeFailedDelete", &message)
                .await;
            let mut released = volume.clone();
            released.status.get_or_insert_with(Default::default).phase = Some("Released".into());
            self.volume_phase(&released, "Failed", Some(&message)).await?;
        }
        Ok(())
    }
}

/// Runs the controller until the future is dropped.
pub async fn run(client: kube::Client) {
    let queue = WorkQueue::new();
    let mut tasks = tokio::task::JoinSet::new();
    let claims = crate::informer::spawn::<PersistentVolumeClaim, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |claim, _| {
            let queue = Arc::clone(&queue);
            async move {
                queue.add(&format!("{CLAIM}{}", key_of(&claim))).await;
                let volume = claim
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .unwrap_or_default();
                if !volume.is_empty() {
                    queue.add(&format!("{VOLUME}{volume}")).await;
                }
            }
        }
    });
    let volumes = crate::informer::spawn::<PersistentVolume, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |volume, _| {
            let queue = Arc::clone(&queue);
            async move {
                queue.add(&format!("{VOLUME}{}", volume.name_any())).await;
                if let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                    let claim = format!(
                        "{}/{}",
                        r.namespace.as_deref().unwrap_or_default(),
                        r.name.as_deref().unwrap_or_default()
                    );
                    queue.add(&format!("{CLAIM}{claim}")).await;
                }
            }
        }
    });
    let (class_events, mut class_receiver) = tokio::sync::mpsc::unbounded_channel::<()>();
    let classes = crate::informer::spawn::<StorageClass, _, _>(&mut tasks, &client, move |_, _| {
        // A closed channel means the controller is going away.
        let _ = class_events.send(());
        async {}
    });
    let nodes = crate::informer::spawn::<Node, _, _>(&mut tasks, &client, |_, _| async {});
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "persistentvolume-controller"),
        client,
        queue: Arc::clone(&queue),
        claims: claims.clone(),
        volumes: volumes.clone(),
        classes: classes.clone(),
        nodes: nodes.clone(),
    });
    let requeue_all = {
        let controller = Arc::clone(&controller);
        move || {
            let controller = Arc::clone(&controller);
            async move {
                for claim in controller.claims.state() {
                    controller
                        .queue
                        .add(&format!("{CLAIM}{}", key_of(claim.as_ref())))
                        .await;
                }
                for volume in controller.volumes.state() {
                    controller.queue.add(&format!("{VOLUME}{}", volume.name_any())).await;
                }
            }
        }
    };
    {
        // A new default class may be what unbound claims wait for.
        let requeue_all = requeue_all.clone();
        tasks.spawn(async move {
            while class_receiver.recv().await.is_some() {
                requeue_all().await;
            }
        });
    }
    tasks.spawn(async move {
        loop {
            tokio::time::sleep(RESYNC).await;
            requeue_all().await;
        }
    });
    claims.wait_until_ready().await.ok();
    volumes.wait_until_ready().await.ok();
    classes.wait_until_ready().await.ok();
    nodes.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &queue, WORKERS, "persistentvolume-binder", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, size: &str, class: &str, phase: &str) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"], "storageClassName": class}, "status": {"phase": phase}}),
            )
            .unwrap(),
        )
    }

    fn claim(size: &str, class: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                "resources": {"requests": {"storage": size}}}}))
        .unwrap()
    }

    #[test]
    fn the_smallest_fitting_volume_of_the_class_is_chosen() {
        let volumes = vec![
            volume("big", "10Gi", "", "Available"),
            volume("small", "1Gi", "", "Available"),
            volume("tiny", "100Mi", "", "Available"),
            volume("other-class", "1Gi", "fast", "Available"),
            volume("taken", "1Gi", "", "Bound"),
        ];
        let chosen = best_volume(&claim("500Mi", ""), &volumes, None, false);
        assert_eq!(chosen.map(|v| v.name_any()).as_deref(), Some("small"));
        assert!(best_volume(&claim("20Gi", ""), &volumes, None, false).is_none());
        assert!(
            best_volume(&claim("500Mi", ""), &volumes, None, true).is_none(),
            "the scheduler's to choose"
        );
    }

    #[test]
    fn a_volume_pre_bound_to_the_claim_wins() {
        let mut pre: PersistentVolume = (*volume("pre", "5Gi", "", "Available")).clone();
        pre.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            namespace: Some("ns".into()),
            name: Some("c".into()),
            ..Default::default()
        });
        let volumes = vec![volume("small", "1Gi", "", "Available"), Arc::new(pre)];
        let chosen = best_volume(&claim("500Mi", ""), &volumes, None, true);
        assert_eq!(chosen.map(|v| v.name_any()).as_deref(), Some("pre"));
    }

    #[test]
    fn the_newest_default_class_wins() {
        let class = |name: &str, default: &str, created: &str| -> Arc<StorageClass> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": created,
                    "annotations": {DEFAULT_CLASS: default}}, "provisioner": "p"}))
                .unwrap(),
            )
        };
        let classes = vec![
            class("old", "true", "2026-01-01T00:00:00Z"),
            class("new", "true", "2026-02-01T00:00:00Z"),
            class("not", "false", "2026-03-01T00:00:00Z"),
        ];
        assert_eq!(default_class(&classes).map(|c| c.name_any()).as_deref(), Some("new"));
    }
}
