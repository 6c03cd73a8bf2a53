//! The StatefulSet controller, as upstream's `pkg/controller/statefulset`: pods named
//! `<set>-<ordinal>` with a stable hostname under the set's Service, each with claims made
//! from the volumeClaimTemplates; OrderedReady sets create one pod at a time in ordinal
//! order (each Running and Ready first) and remove them from the highest ordinal down,
//! Parallel sets act on all at once; RollingUpdate replaces pods from the highest ordinal
//! down to the partition, OnDelete only replaces pods the user deletes. The templates'
//! history lives in ControllerRevisions (`currentRevision`, `updateRevision`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use rkube_api::selector::LabelSelector;
use rkube_client::events::{Recorder, reference};
use serde_json::{Value, json};

use crate::history::{self, HistoryError, Owner};
use crate::pods::{controller_of, is_available, is_finished, is_ready, labels_match, selector};
use crate::shared::{PodEvent, SharedPods, handle_events};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

/// The pod label naming its revision (the ControllerRevision's name for StatefulSets).
pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// Upstream's `--concurrent-statefulset-syncs`.
const WORKERS: usize = 5;

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    sets: Store<StatefulSet>,
    pods: SharedPods,
    revisions: Store<ControllerRevision>,
    claims: Store<PersistentVolumeClaim>,
}

fn controller_ref(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn spec_of(set: &StatefulSet) -> k8s_openapi::api::apps::v1::StatefulSetSpec {
    set.spec.clone().unwrap_or_default()
}

fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

/// The ordinal of a pod named `<set>-<n>`, if it is one of the set's names.
pub fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i32> {
    let digits = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

pub fn claim_name(template: &str, set_name: &str, ordinal: i32) -> String {
    format!("{template}-{set_name}-{ordinal}")
}

fn is_running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && is_ready(pod)
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str)
}

fn retention(set: &StatefulSet) -> (String, String) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let get = |v: Option<&String>| v.cloned().unwrap_or_else(|| "Retain".into());
    (
        get(policy.and_then(|p| p.when_deleted.as_ref())),
        get(policy.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// Upstream's `newStatefulSetPod`: the template with the pod's identity (name, hostname,
/// subdomain, labels) and its claims in place of the templates' volumes.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let mut pod = crate::pods::from_template(template, &set.name_any(), controller_ref(set));
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    pod.metadata.namespace = set.namespace();
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    let service = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .unwrap_or_default();
    if !service.is_empty() {
        spec.subdomain = Some(service);
    }
    let templates = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    let mut volumes: Vec<Volume> = spec.volumes.take().unwrap_or_default();
    for claim in &templates {
        let volume_name = claim.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != volume_name);
        volumes.push(Volume {
            name: volume_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&volume_name, &set.name_any(), ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    if !volumes.is_empty() {
        spec.volumes = Some(volumes);
    }
    pod
}

/// The claims a pod of the set needs (upstream's `getPersistentVolumeClaims`): each
/// template's, named for the pod, labelled with the set's selector.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = spec_of(set);
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let (when_deleted, _) = retention(set);
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|mut claim| {
            let template = claim.metadata.name.clone().unwrap_or_default();
            claim.metadata.name = Some(claim_name(&template, &set.name_any(), ordinal));
            claim.metadata.namespace = set.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(match_labels.clone());
            if when_deleted == "Delete" {
                claim.metadata.owner_references = Some(vec![controller_ref(set)]);
            }
            claim.status = None;
            claim
        })
        .collect()
}

/// A pod's claim as its retention policy wants it owned.
struct ClaimHolder<'a> {
    set: &'a StatefulSet,
    pod_name: &'a str,
    pod_uid: &'a str,
    /// The pod's ordinal is no longer wanted.
    scaled_down: bool,
}

impl ClaimHolder<'_> {
    fn is_set(&self, o: &OwnerReference) -> bool {
        o.kind == "StatefulSet" && o.api_version.starts_with("apps/") && o.name == self.set.name_any()
    }

    fn is_pod(&self, o: &OwnerReference) -> bool {
        o.kind == "Pod" && o.api_version == "v1" && o.name == self.pod_name
    }

    fn pod_ref(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.pod_name.to_string(),
            uid: self.pod_uid.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// Upstream's `isClaimOwnerUpToDate` and `updateClaimOwnerRefForSetAndPod`: the owners
    /// to write, or `None` when they are right or not this set's to change. A claim still
    /// owned by an earlier set or pod of the same name is left alone (the garbage collector
    /// decides it); one another controller owns keeps only that owner. Otherwise the set
    /// (whenDeleted: Delete, for pods it keeps) or the pod (whenScaled: Delete, once scaled
    /// down) is the claim's controller.
    fn owners(&self, claim: &PersistentVolumeClaim) -> Option<Vec<OwnerReference>> {
        let set_uid = self.set.uid().unwrap_or_default();
        let owners = claim.owner_references();
        let stale = owners
            .iter()
            .any(|o| (self.is_set(o) && o.uid != set_uid) || (self.is_pod(o) && o.uid != self.pod_uid));
        if stale {
            return None;
        }
        let ours = |o: &OwnerReference| o.uid == set_uid || o.uid == self.pod_uid;
        let unexpected = owners.iter().any(|o| o.controller == Some(true) && !ours(o));
        let has = |uid: &str| owners.iter().any(|o| o.uid == uid);
        let (when_deleted, when_scaled) = retention(self.set);
        let want_set = when_deleted == "Delete" && !(when_scaled == "Delete" && self.scaled_down);
        let want_pod = when_scaled == "Delete" && self.scaled_down;
        let up_to_date = if unexpected {
            !has(&set_uid) && !has(self.pod_uid)
        } else {
            let uncontrolled = owners.iter().any(|o| ours(o) && o.controller != Some(true));
            !uncontrolled && has(&set_uid) == want_set && has(self.pod_uid) == want_pod
        };
        if up_to_date {
            return None;
        }
        let mut kept: Vec<OwnerReference> = owners
            .iter()
            .filter(|o| !self.is_set(o) && !self.is_pod(o))
            .cloned()
            .collect();
        if !unexpected {
            if want_set {
                kept.push(controller_ref(self.set));
            }
            if want_pod {
                kept.push(self.pod_ref());
            }
        }
        Some(kept)
    }
}

/// Status counts over the set's pods (upstream's `computeReplicaStatus`).
fn status_counts(pods: &[&Pod], min_ready: i32, current: &str, update: &str) -> Value {
    let now = Timestamp::now();
    let created = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some());
    let (mut replicas, mut ready, mut available, mut current_n, mut updated) = (0, 0, 0, 0, 0);
    for pod in created {
        replicas += 1;
        if is_running_and_ready(pod) {
            ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if !is_terminating(pod) {
            if revision_of(pod) == Some(current) {
                current_n += 1;
            }
            if revision_of(pod) == Some(update) {
                updated += 1;
            }
        }
    }
    json!({"replicas": replicas, "readyReplicas": ready, "availableReplicas": available,
           "currentReplicas": current_n, "updatedReplicas": updated})
}

/// What one pass over the pods decided to do next.
enum Step {
    /// Nothing blocks: go on.
    Continue,
    /// An ordered set waits for a pod (for this long, if it is waiting for availability).
    Wait(Option<Duration>),
}

impl Controller {
    async fn event(&self, involved: &ObjectReference, kind: &str, reason: &str, message: &str) {
        self.recorder.emit(involved, kind, reason, message).await;
    }

    fn sets_selecting(&self, pod: &Pod) -> Vec<String> {
        let namespace = pod.namespace().unwrap_or_default();
        self.sets
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|s| {
                selector(s.spec.as_ref().map(|s| &s.selector))
                    .is_some_and(|sel| labels_match(&sel, pod.metadata.labels.as_ref()))
            })
            .map(|s| key_of(s.as_ref()))
            .collect()
    }

    async fn owned_event(&self, namespace: Option<String>, owners: Option<&OwnerReference>, fallback: Vec<String>) {
        match owners {
            Some(o) if o.kind == "StatefulSet" => {
                self.queue
                    .add(&format!("{}/{}", namespace.unwrap_or_default(), o.name))
                    .await;
            }
            Some(_) => {}
            None => {
                for key in fallback {
                    self.queue.add(&key).await;
                }
            }
        }
    }

    /// The set's pods: owned ones still matching, and orphans with its names it adopts.
    async fn claim_pods(&self, set: &StatefulSet, selector: &LabelSelector) -> Result<Vec<Arc<Pod>>, ControllerError> {
        let namespace = set.namespace().unwrap_or_default();
        let reference = controller_ref(set);
        let candidates = self.pods.claimable(&reference.uid, &namespace);
        let owner = (
            &reference,
            namespace.as_str(),
            set.metadata.deletion_timestamp.is_some(),
        );
        crate::pods::claim(&self.client, candidates, owner, |pod| {
            labels_match(selector, pod.metadata.labels.as_ref())
                && ordinal_of(&set.name_any(), &pod.name_any()).is_some()
        })
        .await
        .map_err(|source| ControllerError::api(&key_of(set), "claiming a pod", source))
    }

    async fn create_pod(&self, set: &StatefulSet, pod: &Pod, ordinal: i32) -> Result<(), ControllerError> {
        let namespace = set.namespace().unwrap_or_default();
        let key = key_of(set);
        let involved = reference(set);
        let pod_name = pod.name_any();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        for claim in claims_for(set, ordinal) {
            let claim_name = claim.name_any();
            if self
                .claims
                .get(&ObjectRef::new(&claim_name).within(&namespace))
                .is_some()
            {
                continue;
            }
            match claims.create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    let message = format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {} success",
                        set.name_any()
                    );
                    self.event(&involved, "Normal", "SuccessfulCreate", &message).await;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(err) => {
                    let message = format!(
                        "create Claim {claim_name} for Pod {pod_name} in StatefulSet {} failed error: {}",
                        set.name_any(),
                        crate::api_message(&err)
                    );
                    self.event(&involved, "Warning", "FailedCreate", &message).await;
                    return Err(ControllerError::api(&key, "creating a claim", err));
                }
            }
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => {
                self.pod_event(set, "create", &pod_name, None).await;
                Ok(())
            }
            // Our cache is behind our own creation (or the old pod is still going away).
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => {
                self.pod_event(set, "create", &pod_name, Some(&err)).await;
                Err(ControllerError::api(&key, "creating a pod", err))
            }
        }
    }

    /// Upstream's `recordPodEvent`: `<verb> Pod <pod> in StatefulSet <set> successful`, or
    /// a warning with the error.
    async fn pod_event(&self, set: &StatefulSet, verb: &str, pod_name: &str, error: Option<&kube::Error>) {
        let title = format!("{}{}", verb[..1].to_uppercase(), &verb[1..]);
        let (kind, reason, message) = match error {
            None => (
                "Normal",
                format!("Successful{title}"),
                format!("{verb} Pod {pod_name} in StatefulSet {} successful", set.name_any()),
            ),
            Some(err) => (
                "Warning",
                format!("Failed{title}"),
                format!(
                    "{verb} Pod {pod_name} in StatefulSet {} failed error: {}",
                    set.name_any(),
                    crate::api_message(err)
                ),
            ),
        };
        self.event(&reference(set), kind, &reason, &message).await;
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), ControllerError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let name = pod.name_any();
        match pods.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                self.pod_event(set, "delete", &name, None).await;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => {
                self.pod_event(set, "delete", &name, Some(&err)).await;
                Err(ControllerError::api(&key_of(set), "deleting a pod", err))
            }
        }
    }

    /// The pod's claims owned as the retention policy says (upstream's
    /// `UpdatePodClaimForRetentionPolicy`): a scaled-away pod becomes its claims' owner
    /// when they go with it, and the garbage collector deletes them after it. Claims of a
    /// pod the set keeps that were deleted while it lives are made again (upstream's
    /// storage invariant).
    async fn own_claims(
        &self,
        set: &StatefulSet,
        pod: &Pod,
        ordinal: i32,
        scaled_down: bool,
    ) -> Result<(), ControllerError> {
        let namespace = set.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &namespace);
        let (pod_name, pod_uid) = (pod.name_any(), pod.uid().unwrap_or_default());
        let holder = ClaimHolder {
            set,
            pod_name: &pod_name,
            pod_uid: &pod_uid,
            scaled_down,
        };
        for claim in claims_for(set, ordinal) {
            let Some(existing) = self.claims.get(&ObjectRef::new(&claim.name_any()).within(&namespace)) else {
                if scaled_down {
                    continue;
                }
                match api.create(&PostParams::default(), &claim).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(source) => return Err(ControllerError::api(&key_of(set), "creating a claim", source)),
                }
                continue;
            };
            let Some(owners) = holder.owners(&existing) else {
                continue;
            };
            // The uid makes the patch fail rather than touch a claim made again.
            let patch = json!({"metadata": {"uid": existing.uid(), "ownerReferences": owners}});
            crate::ignore_not_found(
                api.patch(&existing.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )
            .map_err(|source| ControllerError::api(&key_of(set), "owning a claim", source))?;
        }
        Ok(())
    }

    /// Upstream's `processReplica` for one slot of the set.
    async fn process_replica(
        &self,
        set: &StatefulSet,
        slot: &Slot,
        monotonic: bool,
        min_ready: i32,
    ) -> Result<Step, ControllerError> {
        let Some(pod) = slot.existing.as_ref() else {
            self.create_pod(set, &slot.wanted, slot.ordinal).await?;
            return Ok(if monotonic { Step::Wait(None) } else { Step::Continue });
        };
        if is_finished(pod) && !is_terminating(pod) {
            // Recreated once the deletion is seen.
            self.delete_pod(set, pod).await?;
            return Ok(if monotonic { Step::Wait(None) } else { Step::Continue });
        }
        // A Parallel set keeps the invariants of pods that are not ready yet too; a pod
        // going away is left to go.
        if is_terminating(pod) || (monotonic && !is_running_and_ready(pod)) {
            return Ok(if monotonic { Step::Wait(None) } else { Step::Continue });
        }
        if !is_available(pod, min_ready, Timestamp::now()) && monotonic {
            return Ok(Step::Wait(Some(Duration::from_secs(
                u64::try_from(min_ready).unwrap_or(0),
            ))));
        }
        self.own_claims(set, pod, slot.ordinal, false).await?;
        self.restore_identity(set, pod, slot.ordinal).await?;
        Ok(Step::Continue)
    }

    /// Upstream's identity invariant: an adopted pod that lacks the set's pod-name label
    /// (its Services and the pod's own DNS name select by it) gets it, with the index
    /// label. Its hostname and subdomain are immutable, so they stay as made.
    async fn restore_identity(&self, set: &StatefulSet, pod: &Pod, ordinal: i32) -> Result<(), ControllerError> {
        let name = pod.name_any();
        if pod.labels().get(POD_NAME_LABEL) == Some(&name) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"labels": {POD_NAME_LABEL: name, POD_INDEX_LABEL: ordinal.to_string()}}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.pod_event(set, "update", &name, None).await;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => {
                self.pod_event(set, "update", &name, Some(&err)).await;
                Err(ControllerError::api(&key_of(set), "restoring a pod's identity", err))
            }
        }
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(set) = self.sets.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        let Some(selector) = selector(set.spec.as_ref().map(|s| &s.selector)) else {
            tracing::warn!(key, "invalid or empty selector; nothing to manage");
            return Ok(None);
        };
        let spec = spec_of(&set);
        let pods = self.claim_pods(&set, &selector).await?;
        let reference = controller_ref(&set);
        let collision_count = set.status.as_ref().and_then(|s| s.collision_count);
        let owner = Owner {
            reference: reference.clone(),
            namespace: namespace.to_string(),
            selector: &selector,
            template: &spec.template,
            hash_label: HASH_LABEL,
            collision_count,
        };
        let revisions = history::claim(&self.client, &self.revisions, &owner)
            .await
            .map_err(|source| ControllerError::api(key, "claiming revisions", source))?;
        let update = match history::update_revision(&self.client, &owner, &revisions).await {
            Ok(revision) => revision,
            Err(HistoryError::Collision(_)) => {
                let count = collision_count.unwrap_or(0) + 1;
                self.patch_status(key, &json!({"collisionCount": count})).await?;
                return Err(ControllerError::Conflict { key: key.to_string() });
            }
            Err(HistoryError::Api(source)) => return Err(ControllerError::api(key, "recording a revision", source)),
        };
        let status_current = set.status.as_ref().and_then(|s| s.current_revision.clone());
        let current = revisions
            .iter()
            .find(|r| Some(r.name_any()) == status_current)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&update));
        let (current_name, update_name) = (current.name_any(), update.name_any());
        let current_template = history::template_of(&current).unwrap_or_else(|| spec.template.clone());

        // Slots for the wanted ordinals; pods outside them are condemned.
        let start = start_ordinal(&set);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        let rolling_update = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
        let partition = rolling_update.and_then(|r| r.partition).unwrap_or(0);
        let current_replicas = set.status.as_ref().and_then(|s| s.current_replicas).unwrap_or(0);
        let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        let mut condemned: Vec<Arc<Pod>> = Vec::new();
        for pod in pods {
            match ordinal_of(name, &pod.name_any()) {
                Some(n) if n >= start && n < start + replicas => {
                    by_ordinal.insert(n, pod);
                }
                Some(_) => condemned.push(pod),
                None => {}
            }
        }
        condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(name, &p.name_any())));
        let slots: Vec<Slot> = (start..start + replicas)
            .map(|ordinal| {
                // Upstream's `newVersionedStatefulSetPod`: below the partition (or, without
                // one, below the current count) pods keep the current revision.
                let keep_current = rolling
                    && match rolling_update {
                        None => ordinal < start + current_replicas,
                        Some(_) => ordinal < start + partition,
                    };
                let wanted = if keep_current {
                    new_pod(&set, &current_template, ordinal, &current_name)
                } else {
                    new_pod(&set, &spec.template, ordinal, &update_name)
                };
                Slot {
                    ordinal,
                    existing: by_ordinal.get(&ordinal).cloned(),
                    wanted,
                }
            })
            .collect();
        let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let requeue = if set.metadata.deletion_timestamp.is_some() {
            None
        } else {
            self.act(
                &set,
                &slots,
                &condemned,
                monotonic,
                min_ready,
                rolling,
                partition,
                &update_name,
            )
            .await?
        };

        // Status from the pods as they were seen in this sync.
        let all: Vec<&Pod> = slots
            .iter()
            .filter_map(|s| s.existing.as_deref())
            .chain(condemned.iter().map(Arc::as_ref))
            .collect();
        let mut status = status_counts(&all, min_ready, &current_name, &update_name);
        let (mut status_current_name, mut status_current_replicas) =
            (current_name.clone(), status["currentReplicas"].clone());
        if rolling && status["updatedReplicas"] == json!(replicas) && status["readyReplicas"] == json!(replicas) {
            status_current_name = update_name.clone();
            status_current_replicas = status["updatedReplicas"].clone();
        }
        status["currentReplicas"] = status_current_replicas;
        status["currentRevision"] = json!(status_current_name);
        status["updateRevision"] = json!(update_name);
        status["observedGeneration"] = json!(set.metadata.generation);
        status["collisionCount"] = json!(collision_count.unwrap_or(0));
        let have = serde_json::to_value(&set.status).unwrap_or_default();
        let differs = status.as_object().into_iter().flatten().any(|(field, value)| {
            have.get(field).unwrap_or(&Value::Null) != value && !(value == &json!(0) && have.get(field).is_none())
        });
        if differs {
            self.patch_status(key, &status).await?;
        }

        let mut live: HashSet<String> = all.iter().filter_map(|p| revision_of(p).map(str::to_string)).collect();
        live.insert(status_current_name);
        live.insert(update_name);
        history::prune(
            &self.client,
            namespace,
            &revisions,
            &live,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await
        .map_err(|source| ControllerError::api(key, "pruning revisions", source))?;
        Ok(requeue)
    }

    /// Creates, deletes and replaces pods (upstream's `updateStatefulSet`); returns when to
    /// look again if only time will unblock it.
    #[allow(clippy::too_many_arguments)]
    async fn act(
        &self,
        set: &StatefulSet,
        slots: &[Slot],
        condemned: &[Arc<Pod>],
        monotonic: bool,
        min_ready: i32,
        rolling: bool,
        partition: i32,
        update_name: &str,
    ) -> Result<Option<Duration>, ControllerError> {
        for slot in slots {
            if let Step::Wait(after) = self.process_replica(set, slot, monotonic, min_ready).await? {
                return Ok(after);
            }
        }
        let first_unhealthy = slots
            .iter()
            .filter_map(|s| s.existing.as_ref())
            .chain(condemned.iter())
            .find(|p| !is_running_and_ready(p))
            .map(|p| p.name_any());
        for pod in condemned {
            let ordinal = ordinal_of(&set.name_any(), &pod.name_any()).unwrap_or_default();
            self.own_claims(set, pod, ordinal, true).await?;
            if is_terminating(pod) {
                if monotonic {
                    return Ok(None);
                }
                continue;
            }
            if monotonic && !is_running_and_ready(pod) && first_unhealthy.as_deref() != Some(pod.name_any().as_str()) {
                return Ok(None);
            }
            if monotonic && is_running_and_ready(pod) && !is_available(pod, min_ready, Timestamp::now()) {
                return Ok(Some(Duration::from_secs(u64::try_from(min_ready).unwrap_or(0))));
            }
            self.delete_pod(set, pod).await?;
            if monotonic {
                return Ok(None);
            }
        }
        if !rolling {
            // OnDelete: pods are replaced when the user deletes them.
            return Ok(None);
        }
        let start = start_ordinal(set);
        for slot in slots.iter().rev().filter(|s| s.ordinal >= start + partition) {
            let Some(pod) = slot.existing.as_ref() else {
                return Ok(None);
            };
            if revision_of(pod) != Some(update_name) && !is_terminating(pod) {
                self.delete_pod(set, pod).await?;
                return Ok(None);
            }
            if !is_running_and_ready(pod) || !is_available(pod, min_ready, Timestamp::now()) {
                return Ok(None);
            }
        }
        Ok(None)
    }

    async fn patch_status(&self, key: &str, status: &Value) -> Result<(), ControllerError> {
        let (namespace, name) = split_key(key);
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
            .await
            .map_err(|source| ControllerError::api(key, "updating the status", source))?;
        Ok(())
    }
}

/// One wanted ordinal: the pod there now, and the pod that would be made for it.
struct Slot {
    ordinal: i32,
    existing: Option<Arc<Pod>>,
    wanted: Pod,
}

/// Runs the controller until the future is dropped.
pub async fn run(client: kube::Client, pods: SharedPods, pod_events: tokio::sync::mpsc::UnboundedReceiver<PodEvent>) {
    let queue = WorkQueue::new();
    let mut tasks = tokio::task::JoinSet::new();
    let sets = crate::informer::spawn::<StatefulSet, _, _>(&mut tasks, &client, {
        let queue = Arc::clone(&queue);
        move |set, _| {
            let queue = Arc::clone(&queue);
            async move { queue.add(&key_of(&set)).await }
        }
    });
    let (revision_events, mut revision_receiver) = tokio::sync::mpsc::unbounded_channel::<ControllerRevision>();
    let revisions = crate::informer::spawn::<ControllerRevision, _, _>(&mut tasks, &client, move |revision, _| {
        let _ = revision_events.send(revision);
        async {}
    });
    let claims = crate::informer::spawn::<PersistentVolumeClaim, _, _>(&mut tasks, &client, |_, _| async {});
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
        client,
        queue: Arc::clone(&queue),
        sets: sets.clone(),
        pods: pods.clone(),
        revisions: revisions.clone(),
        claims: claims.clone(),
    });
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(handle_events(pod_events, move |pod, _| {
            let controller = Arc::clone(&controller);
            async move {
                let fallback = if controller_of(pod.as_ref()).is_none() {
                    controller.sets_selecting(&pod)
                } else {
                    Vec::new()
                };
                controller
                    .owned_event(pod.namespace(), controller_of(pod.as_ref()), fallback)
                    .await;
            }
        }));
    }
    {
        let controller = Arc::clone(&controller);
        tasks.spawn(async move {
            while let Some(revision) = revision_receiver.recv().await {
                let owner = crate::pods::controller_of(&revision).cloned();
                controller
                    .owned_event(revision.namespace(), owner.as_ref(), Vec::new())
                    .await;
            }
        });
    }
    sets.wait_until_ready().await.ok();
    pods.wait_until_ready().await;
    revisions.wait_until_ready().await.ok();
    claims.wait_until_ready().await.ok();
    {
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut tasks, &queue, WORKERS, "statefulset", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
    }
    tasks.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> StatefulSet {
        serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "ns", "uid": "u1"},
            "spec": {"serviceName": "db", "replicas": 3, "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "mysql",
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}],
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}}}))
        .unwrap()
    }

    #[test]
    fn claims_are_owned_as_the_retention_policy_says() {
        // The fixture: whenDeleted Delete, whenScaled Retain.
        let set = set();
        let kept = ClaimHolder {
            set: &set,
            pod_name: "db-0",
            pod_uid: "p0",
            scaled_down: false,
        };
        let mut claim = claims_for(&set, 0).remove(0);
        assert_eq!(kept.owners(&claim), None, "made owned");
        let reference = |api: &str, kind: &str, name: &str, uid: &str, controller: bool| {
            serde_json::from_value::<OwnerReference>(
                json!({"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": controller}),
            )
            .unwrap()
        };
        let uids = |owners: &[OwnerReference]| -> Vec<String> { owners.iter().map(|o| o.uid.clone()).collect() };
        // Adopted from an orphaning delete: unowned, then the set's controller reference.
        claim.metadata.owner_references = None;
        let owners = kept.owners(&claim).unwrap();
        assert_eq!(
            (uids(&owners), owners[0].controller),
            (vec!["u1".to_string()], Some(true))
        );
        // A plain reference to the set (an older controller's) becomes a controller one;
        // a pod reference left from a scale-down goes, as the pod is kept again.
        claim.metadata.owner_references = Some(vec![
            reference("apps/v1", "StatefulSet", "db", "u1", false),
            reference("v1", "Pod", "db-0", "p0", true),
            reference("v1", "ConfigMap", "other", "c1", false),
        ]);
        assert_eq!(uids(&kept.owners(&claim).unwrap()), ["c1", "u1"]);
        // Still owned by an earlier set of the same name: not this set's to change.
        claim.metadata.owner_references = Some(vec![reference("apps/v1", "StatefulSet", "db", "old", true)]);
        assert_eq!(kept.owners(&claim), None);
        // Another controller owns it: the set's own references go, nothing is added.
        claim.metadata.owner_references = Some(vec![
            reference("example.com/v1", "Keeper", "k", "k1", true),
            reference("apps/v1", "StatefulSet", "db", "u1", false),
        ]);
        assert_eq!(uids(&kept.owners(&claim).unwrap()), ["k1"]);

        // whenScaled Delete: a scaled-down pod owns its claims instead of the set.
        let mut scaling = set.clone();
        let policy = scaling
            .spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy
            .as_mut()
            .unwrap();
        policy.when_scaled = Some("Delete".into());
        let gone = ClaimHolder {
            set: &scaling,
            pod_name: "db-2",
            pod_uid: "p2",
            scaled_down: true,
        };
        let mut claim = claims_for(&scaling, 2).remove(0);
        let owners = gone.owners(&claim).unwrap();
        assert_eq!((owners[0].kind.as_str(), owners[0].uid.as_str()), ("Pod", "p2"));
        claim.metadata.owner_references = Some(owners);
        assert_eq!(gone.owners(&claim), None);

        // Retain on both: no owners.
        let mut retained = set.clone();
        retained.spec.as_mut().unwrap().persistent_volume_claim_retention_policy = None;
        let keep_all = ClaimHolder {
            set: &retained,
            pod_name: "db-0",
            pod_uid: "p0",
            scaled_down: false,
        };
        let claim = claims_for(&set, 0).remove(0);
        assert_eq!(keep_all.owners(&claim), Some(vec![]), "Retain: the set lets go");
    }

    #[test]
    fn ordinals_are_read_only_from_the_sets_own_names() {
        assert_eq!(ordinal_of("db", "db-0"), Some(0));
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "db-01"), None);
        assert_eq!(ordinal_of("db", "db-x"), None);
        assert_eq!(ordinal_of("db", "dbx-1"), None);
        assert_eq!(ordinal_of("db", "db-"), None);
    }

    #[test]
    fn pods_get_their_identity_and_claims() {
        let set = set();
        let spec = set.spec.clone().unwrap();
        let pod = new_pod(&set, &spec.template, 1, "db-abc");
        assert_eq!(pod.metadata.name.as_deref(), Some("db-1"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "db-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[REVISION_LABEL], "db-abc");
        let pod_spec = pod.spec.unwrap();
        assert_eq!(pod_spec.hostname.as_deref(), Some("db-1"));
        assert_eq!(pod_spec.subdomain.as_deref(), Some("db"));
        let volumes = pod_spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-db-1"
        );
        let claims = claims_for(&set, 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-db-1"));
        assert_eq!(claims[0].metadata.labels.as_ref().unwrap()["app"], "db");
        let owners = claims[0].metadata.owner_references.as_ref().unwrap();
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].controller),
            ("StatefulSet", Some(true))
        );
    }
}
