//! The Deployment controller, as upstream's `pkg/controller/deployment`: a Deployment owns
//! ReplicaSets, one per pod template (named `<deployment>-<pod-template-hash>`); its
//! reconcile(key) claims them, then scales (a replicas change or a pause), rolls out
//! (RollingUpdate within maxSurge/maxUnavailable, or Recreate) and cleans up beyond
//! revisionHistoryLimit, and writes the status and conditions `kubectl rollout status`
//! reads. The decisions are plain functions over the ReplicaSets ([`plan`]); the
//! controller applies them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rkube_client::events::{Recorder, reference};
use serde_json::{Value, json};

use crate::pods::{labels_match, selector};
use crate::shared::{Shared, SharedPods, handle_events};
use crate::workqueue::WorkQueue;
use crate::{ControllerError, key_of, split_key};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
const WORKERS: usize = 5;

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

fn ready_of(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn wanted(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// An int-or-percent of `total`, rounded up or down as upstream resolves it.
fn resolve(value: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => percent(s, total, round_up),
        None => percent(default, total, round_up),
    }
}

fn percent(text: &str, total: i32, round_up: bool) -> i32 {
    let Some(p) = text.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
        return 0;
    };
    let scaled = i64::from(total) * p;
    let value = if round_up { (scaled + 99) / 100 } else { scaled / 100 };
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Upstream's `ResolveFenceposts`: (maxSurge, maxUnavailable); never both zero.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let replicas = wanted(d);
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), "25%", replicas, true);
    let unavailable = resolve(rolling.and_then(|r| r.max_unavailable.as_ref()), "25%", replicas, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

fn max_unavailable(d: &Deployment) -> i32 {
    let (_, unavailable) = fenceposts(d);
    unavailable.min(wanted(d))
}

/// A template's hash as its ReplicaSet's name suffix.
pub fn template_hash(template: &PodTemplateSpec, collisions: Option<i32>) -> String {
    crate::history::hash_of(template, collisions)
}

/// The template without the hash label, for comparing a Deployment's with its sets'.
fn without_hash(template: Option<&PodTemplateSpec>) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = value.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(TEMPLATE_HASH);
        if labels.is_empty()
            && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("labels");
        }
    }
    value
}

/// The ReplicaSet running the Deployment's current template (the oldest if several).
fn find_new<'a>(d: &Deployment, sets: &[&'a ReplicaSet]) -> Option<&'a ReplicaSet> {
    let wanted = without_hash(d.spec.as_ref().map(|s| &s.template));
    let mut matching: Vec<&ReplicaSet> = sets
        .iter()
        .copied()
        .filter(|rs| without_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == wanted)
        .collect();
    matching.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    matching.first().copied()
}

/// The decisions of one sync, computed from the Deployment and its sets alone.
pub mod plan {
    use super::*;

    /// Upstream's `NewRSNewReplicas`.
    pub fn new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: i32) -> i32 {
        if is_recreate(d) {
            return wanted(d);
        }
        let (surge, _) = fenceposts(d);
        let current: i32 = all.iter().map(|rs| replicas_of(rs)).sum();
        let max_total = wanted(d) + surge;
        if current >= max_total {
            return new_rs;
        }
        let up = (max_total - current).min(wanted(d) - new_rs);
        new_rs + up.max(0)
    }

    /// How far old sets may scale down now (upstream's `reconcileOldReplicaSets`), as new
    /// replica counts per old set in creation order: unhealthy pods first, then
    /// available ones down to minAvailable.
    pub fn scale_down_old(d: &Deployment, old: &[&ReplicaSet], new_rs: Option<&ReplicaSet>) -> Vec<(String, i32)> {
        let old_count: i32 = old.iter().map(|rs| replicas_of(rs)).sum();
        if old_count == 0 {
            return Vec::new();
        }
        let all_count = old_count + new_rs.map_or(0, replicas_of);
        let min_available = wanted(d) - max_unavailable(d);
        let new_unavailable = new_rs.map_or(0, |rs| replicas_of(rs) - available_of(rs));
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Vec::new();
        }
        let mut sorted: Vec<&ReplicaSet> = old.to_vec();
        sorted.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let mut targets: BTreeMap<String, i32> = sorted.iter().map(|rs| (rs.name_any(), replicas_of(rs))).collect();
        // Unhealthy replicas first: they do not count towards availability anyway.
        let mut cleaned = 0;
        for rs in &sorted {
            let replicas = targets[&rs.name_any()];
            if cleaned >= max_scaled_down || replicas == 0 || available_of(rs) >= replicas {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(replicas - available_of(rs));
            targets.insert(rs.name_any(), replicas - down);
            cleaned += down;
        }
        // Then available ones, oldest first, keeping minAvailable.
        let available: i32 = old.iter().map(|rs| available_of(rs)).sum::<i32>() + new_rs.map_or(0, available_of);
        let mut allowed = (available - min_available).max(0);
        for rs in &sorted {
            if allowed <= 0 {
                break;
            }
            let replicas = targets[&rs.name_any()];
            if replicas == 0 {
                continue;
            }
            let down = replicas.min(allowed);
            targets.insert(rs.name_any(), replicas - down);
            allowed -= down;
        }
        sorted
            .iter()
            .filter(|rs| targets[&rs.name_any()] != replicas_of(rs))
            .map(|rs| (rs.name_any(), targets[&rs.name_any()]))
            .collect()
    }

    /// Upstream's `DeploymentComplete` over a computed status.
    pub fn complete(d: &Deployment, status: &Value) -> bool {
        let n = |field: &str| status.get(field).and_then(Value::as_i64).unwrap_or(0);
        let replicas = i64::from(wanted(d));
        n("updatedReplicas") == replicas
            && n("replicas") == replicas
            && n("availableReplicas") == replicas
            && n("observedGeneration") >= d.metadata.generation.unwrap_or(0)
    }
}

pub struct Controller {
    client: kube::Client,
    recorder: Recorder,
    queue: Arc<WorkQueue>,
    deployments: Store<Deployment>,
    /// Indexed by controller: a sync looks at its own sets and its namespace's orphans,
    /// not at every set in the cluster.
    sets: Shared<ReplicaSet>,
    pods: SharedPods,
}

fn controller_ref(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.name_any(),
        uid: d.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn condition(d: &Deployment, kind: &str) -> Option<Value> {
    let status = serde_json::to_value(d.status.as_ref()?).ok()?;
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .cloned()
}

impl Controller {
    async fn event(&self, involved: &ObjectReference, kind: &str, reason: &str, message: &str) {
        self.recorder.emit(involved, kind, reason, message).await;
    }

    async fn scale(&self, d: &Deployment, rs: &ReplicaSet, replicas: i32) -> Result<(), ControllerError> {
        let current = replicas_of(rs);
        let key = key_of(d);
        let (surge, _) = fenceposts(d);
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: wanted(d).to_string(),
                                         MAX_REPLICAS: (wanted(d) + surge).to_string()}},
            "spec": {"replicas": replicas},
        });
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        sets.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| ControllerError::api(&key, "scaling a replica set", source))?;
        if current != replicas {
            let direction = if replicas > current { "up" } else { "down" };
            let message = format!(
                "Scaled {direction} replica set {} from {current} to {replicas}",
                rs.name_any()
            );
            self.event(&reference(d), "Normal", "ScalingReplicaSet", &message).await;
        }
        Ok(())
    }

    /// The Deployment's sets: owned ones whose labels still match, and orphans it adopts.
    async fn claim(&self, d: &Deployment) -> Result<Vec<Arc<ReplicaSet>>, ControllerError> {
        let namespace = d.namespace().unwrap_or_default();
        let key = key_of(d);
        let Some(selector) = selector(d.spec.as_ref().map(|s| &s.selector)) else {
            return Ok(Vec::new());
        };
        let uid = d.uid().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let mut owned = Vec::new();
        let candidates = self.sets.claimable(&uid, &namespace);
        for rs in candidates {
            if rs.metadata.namespace.as_deref() != Some(namespace.as_str()) {
                continue;
            }
            let controller = crate::pods::controller_of(rs.as_ref());
            if controller.is_some_and(|c| c.uid != uid) {
                // Another owner's set: nothing to claim or release, no selector to match.
                continue;
            }
            let matches = labels_match(&selector, rs.metadata.labels.as_ref());
            let being_deleted = d.metadata.deletion_timestamp.is_some();
            let patch = match controller {
                Some(c) if c.uid == uid && matches => {
                    owned.push(rs);
                    continue;
                }
                Some(c) if c.uid == uid && !being_deleted => {
                    json!({"metadata": {"uid": rs.uid(), "ownerReferences": []}})
                }
                None if matches && !being_deleted && rs.metadata.deletion_timestamp.is_none() => {
                    owned.push(Arc::clone(&rs));
                    json!({"metadata": {"uid": rs.uid(), "ownerReferences": [controller_ref(d)]}})
                }
                _ => continue,
            };
            let patched = api
                .patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            crate::ignore_not_found(patched)
                .map_err(|source| ControllerError::api(&key, "claiming a replica set", source))?;
        }
        Ok(owned)
    }

    /// The ReplicaSet for the current template, created when `create` and missing, with
    /// its revision and annotations brought up to date.
    async fn new_set(
        &self,
        d: &Deployment,
        old: &[&ReplicaSet],
        existing: Option<&ReplicaSet>,
        create: bool,
    ) -> Result<Option<ReplicaSet>, ControllerError> {
        let key = key_of(d);
        let namespace = d.namespace().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &namespace);
        let max_old = old.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
        let revision = match existing {
            Some(rs) if revision_of(rs) > max_old => revision_of(rs),
            _ => max_old + 1,
        };
        let mut annotations: BTreeMap<String, String> = d
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(REVISION.into(), revision.to_string());
        let (surge, _) = fenceposts(d);
        annotations.insert(DESIRED_REPLICAS.into(), wanted(d).to_string());
        annotations.insert(MAX_REPLICAS.into(), (wanted(d) + surge).to_string());
        let rs = if let Some(rs) = existing {
            let current = rs.metadata.annotations.clone().unwrap_or_default();
            let stale = annotations.iter().any(|(k, v)| current.get(k) != Some(v));
            if stale {
                let patch = json!({"metadata": {"annotations": annotations}});
                api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| ControllerError::api(&key, "updating the new replica set", source))?
            } else {
                rs.clone()
            }
        } else if create {
            let Some(spec) = d.spec.as_ref() else { return Ok(None) };
            let collisions = d.status.as_ref().and_then(|s| s.collision_count);
            let hash = template_hash(&spec.template, collisions);
            let mut template = spec.template.clone();
            template
                .metadata
                .get_or_insert_default()
                .labels
                .get_or_insert_default()
                .insert(TEMPLATE_HASH.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_default()
                .insert(TEMPLATE_HASH.into(), hash.clone());
            let replicas = plan::new_replicas(d, old, 0);
            let rs: ReplicaSet = serde_json::from_value(json!({
                "metadata": {"name": format!("{}-{hash}", d.name_any()), "namespace": namespace,
                             "labels": template.metadata.as_ref().and_then(|m| m.labels.clone()),
                             "annotations": annotations, "ownerReferences": [controller_ref(d)]},
                "spec": {"replicas": replicas, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                         "selector": selector, "template": template},
            }))
            .map_err(|e| ControllerError::api(&key, "building the new replica set", kube::Error::SerdeError(e)))?;
            match api.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    let message = format!("Scaled up replica set {} from 0 to {replicas}", created.name_any());
                    self.event(&reference(d), "Normal", "ScalingReplicaSet", &message).await;
                    created
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // A set of that name with another template: count a collision, so the
                    // next sync hashes differently (upstream's collisionCount).
                    let existing = api.get_opt(&rs.name_any()).await.ok().flatten();
                    let ours = existing.as_ref().is_some_and(|e| {
                        e.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| Some(&o.uid) == d.uid().as_ref())
                            && without_hash(e.spec.as_ref().and_then(|s| s.template.as_ref()))
                                == without_hash(Some(&spec.template))
                    });
                    if !ours {
                        let next = collisions.unwrap_or(0) + 1;
                        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
                        let patch = json!({"status": {"collisionCount": next}});
                        deployments
                            .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(|source| ControllerError::api(&key, "counting a hash collision", source))?;
                    }
                    return Err(ControllerError::Conflict { key });
                }
                Err(source) => return Err(ControllerError::api(&key, "creating the new replica set", source)),
            }
        } else {
            return Ok(None);
        };
        // The Deployment carries its newest revision.
        let current = d.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).cloned();
        if current != Some(revision.to_string()) {
            let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
            deployments
                .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| ControllerError::api(&key, "recording the revision", source))?;
        }
        Ok(Some(rs))
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(d) = self.deployments.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        let owned = self.claim(&d).await?;
        let sets: Vec<&ReplicaSet> = owned.iter().map(AsRef::as_ref).collect();
        let existing_new = find_new(&d, &sets);
        let old: Vec<&ReplicaSet> = sets
            .iter()
            .copied()
            .filter(|rs| existing_new.is_none_or(|n| n.uid() != rs.uid()))
            .collect();
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if d.metadata.deletion_timestamp.is_some() {
            return self.write_status(&d, existing_new, &old).await;
        }
        if paused || self.is_scaling_event(&d, &sets) {
            let new_rs = self.new_set(&d, &old, existing_new, false).await?;
            self.scale_proportionally(&d, new_rs.as_ref(), &old).await?;
            if paused {
                self.clean_up(&d, &old).await?;
            }
            return self.write_status(&d, new_rs.as_ref(), &old).await;
        }
        if is_recreate(&d) {
            return self.recreate(&d, existing_new, &old).await;
        }
        let new_rs = self.new_set(&d, &old, existing_new, true).await?;
        let Some(new_rs) = new_rs else {
            return self.write_status(&d, None, &old).await;
        };
        let mut all: Vec<&ReplicaSet> = old.clone();
        all.push(&new_rs);
        // Scale up the new set if there is room; else scale down old ones if that keeps
        // enough available.
        let target = if replicas_of(&new_rs) > wanted(&d) {
            wanted(&d)
        } else {
            plan::new_replicas(&d, &all, replicas_of(&new_rs))
        };
        if target != replicas_of(&new_rs) {
            self.scale(&d, &new_rs, target).await?;
            return self.write_status(&d, Some(&new_rs), &old).await;
        }
        let downs = plan::scale_down_old(&d, &old, Some(&new_rs));
        for (name, replicas) in &downs {
            if let Some(rs) = old.iter().find(|rs| rs.name_any() == *name) {
                self.scale(&d, rs, *replicas).await?;
            }
        }
        let status = self.status_of(&d, Some(&new_rs), &old);
        if downs.is_empty() && plan::complete(&d, &status) {
            self.clean_up(&d, &old).await?;
        }
        self.write_status(&d, Some(&new_rs), &old).await
    }

    /// Upstream's `isScalingEvent`: an active set was sized for another replica count.
    fn is_scaling_event(&self, d: &Deployment, sets: &[&ReplicaSet]) -> bool {
        sets.iter().filter(|rs| replicas_of(rs) > 0).any(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_REPLICAS))
                .and_then(|v| v.parse::<i32>().ok())
                .is_some_and(|desired| desired != wanted(d))
        })
    }

    /// Upstream's `scale`: one active set takes the whole count; a saturated new set
    /// leaves old ones at 0; else the difference is shared in proportion to their sizes.
    async fn scale_proportionally(
        &self,
        d: &Deployment,
        new_rs: Option<&ReplicaSet>,
        old: &[&ReplicaSet],
    ) -> Result<(), ControllerError> {
        let mut all: Vec<&ReplicaSet> = old.to_vec();
        all.extend(new_rs);
        let active: Vec<&ReplicaSet> = all.iter().copied().filter(|rs| replicas_of(rs) > 0).collect();
        let only = match active.as_slice() {
            [one] => Some(*one),
            [] => new_rs.or_else(|| {
                all.iter()
                    .copied()
                    .max_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0))
            }),
            _ => None,
        };
        if let Some(rs) = only {
            if replicas_of(rs) != wanted(d) {
                self.scale(d, rs, wanted(d)).await?;
            }
            return Ok(());
        }
        if let Some(new_rs) = new_rs
            && replicas_of(new_rs) == wanted(d)
            && available_of(new_rs) == wanted(d)
        {
            for rs in old.iter().filter(|rs| replicas_of(rs) > 0) {
                self.scale(d, rs, 0).await?;
            }
            return Ok(());
        }
        if is_recreate(d) {
            return Ok(());
        }
        let (surge, _) = fenceposts(d);
        let allowed = if wanted(d) > 0 { wanted(d) + surge } else { 0 };
        let current: i32 = active.iter().map(|rs| replicas_of(rs)).sum();
        let to_add = allowed - current;
        if to_add == 0 {
            return Ok(());
        }
        // Larger sets first (newer first when growing, older first when shrinking); each
        // gets its share of the change in proportion to its size, the rest to the first.
        let mut ordered = active.clone();
        ordered.sort_by(|a, b| {
            let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
            replicas_of(b).cmp(&replicas_of(a)).then_with(|| {
                if to_add > 0 {
                    created(b).cmp(&created(a))
                } else {
                    created(a).cmp(&created(b))
                }
            })
        });
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::new();
        for rs in &ordered {
            let share = if current > 0 {
                i32::try_from(i64::from(replicas_of(rs)) * i64::from(to_add) / i64::from(current)).unwrap_or(0)
            } else {
                0
            };
            let share = if to_add > 0 {
                share.min(to_add - added)
            } else {
                share.max(to_add - added)
            };
            added += share;
            sizes.push(replicas_of(rs) + share);
        }
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
        for (rs, size) in ordered.iter().zip(sizes) {
            self.scale(d, rs, size.max(0)).await?;
        }
        Ok(())
    }

    async fn recreate(
        &self,
        d: &Deployment,
        existing_new: Option<&ReplicaSet>,
        old: &[&ReplicaSet],
    ) -> Result<Option<Duration>, ControllerError> {
        let new_rs = self.new_set(d, old, existing_new, false).await?;
        let active_old: Vec<&&ReplicaSet> = old.iter().filter(|rs| replicas_of(rs) > 0).collect();
        if !active_old.is_empty() {
            for rs in active_old {
                self.scale(d, rs, 0).await?;
            }
            return self.write_status(d, new_rs.as_ref(), old).await;
        }
        // Old pods must be gone before new ones start.
        let old_running = old.iter().filter_map(|rs| rs.uid()).any(|uid| {
            self.pods.controlled_by(&uid).iter().any(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
        });
        if old_running {
            return self.write_status(d, new_rs.as_ref(), old).await;
        }
        let new_rs = match new_rs {
            Some(rs) => rs,
            None => match self.new_set(d, old, None, true).await? {
                Some(rs) => rs,
                None => return self.write_status(d, None, old).await,
            },
        };
        if replicas_of(&new_rs) != wanted(d) {
            self.scale(d, &new_rs, wanted(d)).await?;
        }
        let status = self.status_of(d, Some(&new_rs), old);
        if plan::complete(d, &status) {
            self.clean_up(d, old).await?;
        }
        self.write_status(d, Some(&new_rs), old).await
    }

    /// Old sets with nothing left, beyond revisionHistoryLimit (default 10), oldest first.
    async fn clean_up(&self, d: &Deployment, old: &[&ReplicaSet]) -> Result<(), ControllerError> {
        let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10);
        let mut empty: Vec<&&ReplicaSet> = old
            .iter()
            .filter(|rs| replicas_of(rs) == 0 && status_replicas(rs) == 0 && rs.metadata.deletion_timestamp.is_none())
            .collect();
        let extra = i32::try_from(empty.len()).unwrap_or(i32::MAX) - limit;
        if extra <= 0 {
            return Ok(());
        }
        empty.sort_by_key(|rs| (revision_of(rs), rs.metadata.creation_timestamp.as_ref().map(|t| t.0)));
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        for rs in empty.into_iter().take(usize::try_from(extra).unwrap_or(0)) {
            crate::ignore_not_found(api.delete(&rs.name_any(), &DeleteParams::default()).await)
                .map_err(|source| ControllerError::api(&key_of(d), "cleaning up old replica sets", source))?;
        }
        Ok(())
    }

    /// Upstream's `calculateStatus`, with the Available condition.
    fn status_of(&self, d: &Deployment, new_rs: Option<&ReplicaSet>, old: &[&ReplicaSet]) -> Value {
        let mut all: Vec<&ReplicaSet> = old.to_vec();
        all.extend(new_rs);
        let available: i32 = all.iter().map(|rs| available_of(rs)).sum();
        let total: i32 = all.iter().map(|rs| replicas_of(rs)).sum();
        let omit_zero = |n: i32| if n == 0 { Value::Null } else { json!(n) };
        json!({
            "observedGeneration": d.metadata.generation,
            "replicas": omit_zero(all.iter().map(|rs| status_replicas(rs)).sum()),
            "updatedReplicas": omit_zero(new_rs.map_or(0, status_replicas)),
            "readyReplicas": omit_zero(all.iter().map(|rs| ready_of(rs)).sum()),
            "availableReplicas": omit_zero(available),
            "unavailableReplicas": omit_zero((total - available).max(0)),
            "collisionCount": d.status.as_ref().and_then(|s| s.collision_count),
        })
    }

    /// Writes the status and conditions; when a rollout is under way with a deadline, asks
    /// to be synced again when the deadline passes.
    async fn write_status(
        &self,
        d: &Deployment,
        new_rs: Option<&ReplicaSet>,
        old: &[&ReplicaSet],
    ) -> Result<Option<Duration>, ControllerError> {
        let mut status = self.status_of(d, new_rs, old);
        let now = rkube_client::now_text();
        let mut conditions: Vec<Value> = d
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|s| s.get("conditions").cloned())
            .and_then(|c| c.as_array().cloned())
            .unwrap_or_default();
        let set =
            |conditions: &mut Vec<Value>, kind: &str, state: &str, reason: &str, message: &str, progress: bool| {
                let previous = conditions
                    .iter()
                    .position(|c| c.get("type").and_then(Value::as_str) == Some(kind));
                let old = previous.map(|i| conditions[i].clone());
                let same_status = old.as_ref().is_some_and(|c| c["status"] == state);
                let same = same_status && old.as_ref().is_some_and(|c| c["reason"] == reason);
                // Unchanged conditions keep their times; Progressing moves lastUpdateTime on
                // progress, as upstream's special case has it.
                if same && !progress {
                    return;
                }
                let transition = if same_status {
                    old.as_ref().map_or(json!(now), |c| c["lastTransitionTime"].clone())
                } else {
                    json!(now)
                };
                let condition = json!({"type": kind, "status": state, "reason": reason, "message": message,
                                   "lastUpdateTime": now, "lastTransitionTime": transition});
                match previous {
                    Some(i) => conditions[i] = condition,
                    None => conditions.push(condition),
                }
            };
        let min_available = wanted(d) - max_unavailable(d);
        let available = status["availableReplicas"].as_i64().unwrap_or(0);
        if available >= i64::from(min_available) {
            set(
                &mut conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                false,
            );
        } else {
            set(
                &mut conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                false,
            );
        }
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600);
        let progressing = condition(d, "Progressing");
        let reason_of = |c: &Option<Value>| c.as_ref().and_then(|c| c["reason"].as_str().map(str::to_string));
        let mut requeue = None;
        let rs_name = new_rs.map(ResourceExt::name_any).unwrap_or_default();
        if paused {
            if reason_of(&progressing).as_deref() != Some("DeploymentPaused") {
                set(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    false,
                );
            }
        } else if reason_of(&progressing).as_deref() == Some("DeploymentPaused") {
            set(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                false,
            );
        } else {
            let done = status["replicas"] == status["updatedReplicas"]
                && reason_of(&progressing).as_deref() == Some("NewReplicaSetAvailable");
            let previous = d.status.as_ref();
            let grew =
                |field: &str, before: Option<i32>| status[field].as_i64().unwrap_or(0) > i64::from(before.unwrap_or(0));
            let progressed = previous.is_none_or(|p| {
                grew("updatedReplicas", p.updated_replicas)
                    || grew("readyReplicas", p.ready_replicas)
                    || grew("availableReplicas", p.available_replicas)
                    || (status["replicas"].as_i64().unwrap_or(0) - status["updatedReplicas"].as_i64().unwrap_or(0))
                        < i64::from(p.replicas.unwrap_or(0) - p.updated_replicas.unwrap_or(0))
            });
            if !done {
                if plan::complete(d, &status) {
                    let message = format!("ReplicaSet \"{rs_name}\" has successfully progressed.");
                    set(
                        &mut conditions,
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        &message,
                        true,
                    );
                } else if progressed && new_rs.is_some() {
                    let message = if new_rs.is_some_and(|rs| {
                        d.metadata.creation_timestamp.is_some() && replicas_of(rs) > 0 && status_replicas(rs) == 0
                    }) {
                        format!("Created new replica set \"{rs_name}\"")
                    } else {
                        format!("ReplicaSet \"{rs_name}\" is progressing.")
                    };
                    let reason = if reason_of(&progressing).is_none() {
                        "NewReplicaSetCreated"
                    } else {
                        "ReplicaSetUpdated"
                    };
                    set(&mut conditions, "Progressing", "True", reason, &message, true);
                    requeue = Some(Duration::from_secs(u64::try_from(deadline).unwrap_or(600)));
                } else if let Some(c) = &progressing {
                    let since = c["lastUpdateTime"].as_str().and_then(|t| t.parse::<Timestamp>().ok());
                    let expired =
                        since.is_some_and(|t| t + SignedDuration::from_secs(i64::from(deadline)) < Timestamp::now());
                    if expired && reason_of(&progressing).as_deref() != Some("ProgressDeadlineExceeded") {
                        let message = format!("ReplicaSet \"{rs_name}\" has timed out progressing.");
                        set(
                            &mut conditions,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &message,
                            false,
                        );
                    } else if !expired && let Some(t) = since {
                        let left =
                            (t + SignedDuration::from_secs(i64::from(deadline))).duration_since(Timestamp::now());
                        requeue = Some(Duration::from_secs(u64::try_from(left.as_secs().max(1)).unwrap_or(1)));
                    }
                }
            }
        }
        status["conditions"] = json!(conditions);
        let current = serde_json::to_value(d.status.as_ref()).unwrap_or_default();
        let changed = status.as_object().into_iter().flatten().any(|(field, value)| {
            let have = current.get(field).unwrap_or(&Value::Null);
            if field == "conditions" {
                let strip = |v: &Value| -> Vec<(Value, Value, Value, Value)> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            (
                                c["type"].clone(),
                                c["status"].clone(),
                                c["reason"].clone(),
                                c["lastUpdateTime"].clone(),
                            )
                        })
                        .collect()
                };
                return strip(have) != strip(value);
            }
            have != value
        });
        if changed {
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
            api.patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .map_err(|source| ControllerError::api(&key_of(d), "updating the status", source))?;
        }
        Ok(requeue)
    }

    fn owner_key(&self, rs: &ReplicaSet) -> Option<String> {
        let owner = crate::pods::controller_of(rs)?;
        (owner.kind == "Deployment").then(|| format!("{}/{}", rs.namespace().unwrap_or_default(), owner.name))
    }

    /// Orphan sets wake every Deployment in their namespace whose selector matches them.
    fn deployments_selecting(&self, rs: &ReplicaSet) -> Vec<String> {
        self.deployments
            .state()
            .iter()
            .filter(|d| d.metadata.namespace == rs.metadata.namespace)
            .filter(|d| {
                selector(d.spec.as_ref().map(|s| &s.selector))
                    .is_some_and(|s| labels_match(&s, rs.metadata.labels.as_ref()))
            })
            .map(|d| key_of(d.as_ref()))
            .collect()
    }
}

/// Runs the controller until the future is dropped.
/// Pods matter only to Recreate (old pods must be gone): the shared cache is all it needs.
pub async fn run(client: kube::Client, pods: SharedPods) {
    let (deployments, d_writer) = reflector::store::<Deployment>();
    let sets = Shared::<ReplicaSet>::new();
    let set_events = sets.subscribe();
    let controller = Arc::new(Controller {
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        client: client.clone(),
        queue: WorkQueue::new(),
        deployments: deployments.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
    });
    let d_events = watcher(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(crate::trim)
        .reflect(d_writer);
    let watching_deployments = {
        let controller = Arc::clone(&controller);
        async move {
            let mut events = std::pin::pin!(d_events);
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d) | watcher::Event::Delete(d)) = event {
                    controller.queue.add(&key_of(&d)).await;
                }
            }
        }
    };
    let watching_sets = {
        let controller = Arc::clone(&controller);
        handle_events(set_events, move |rs, _| {
            let controller = Arc::clone(&controller);
            async move {
                let keys = match controller.owner_key(&rs) {
                    Some(key) => vec![key],
                    None => controller.deployments_selecting(&rs),
                };
                for key in keys {
                    controller.queue.add(&key).await;
                }
            }
        })
    };
    let working = async {
        deployments.wait_until_ready().await.ok();
        sets.wait_until_ready().await;
        pods.wait_until_ready().await;
        // Each worker a task of its own: deep futures polled inline would need a deep stack.
        let mut workers = tokio::task::JoinSet::new();
        let queue = Arc::clone(&controller.queue);
        let controller = Arc::clone(&controller);
        crate::workqueue::spawn_workers(&mut workers, &queue, WORKERS, "deployment", move |key| {
            let controller = Arc::clone(&controller);
            async move { controller.reconcile(&key).await }
        });
        workers.join_all().await;
    };
    tokio::join!(watching_deployments, watching_sets, working, sets.clone().run(client));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "d", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                     "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": []}}}}))
        .unwrap()
    }

    fn set(name: &str, replicas: i32, available: i32, created: &str) -> ReplicaSet {
        serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"replicas": replicas, "selector": {}},
            "status": {"replicas": replicas, "availableReplicas": available}}))
        .unwrap()
    }

    #[test]
    fn fenceposts_round_as_upstream() {
        assert_eq!(fenceposts(&deployment(10, json!("25%"), json!("25%"))), (3, 2));
        assert_eq!(fenceposts(&deployment(3, json!("0%"), json!("0%"))), (0, 1));
        assert_eq!(fenceposts(&deployment(4, json!(1), json!(0))), (1, 0));
    }

    #[test]
    fn rolling_update_surges_then_scales_old_down_keeping_availability() {
        let d = deployment(4, json!(1), json!(1));
        let old = set("old", 4, 4, "2026-01-01T00:00:00Z");
        let new = set("new", 0, 0, "2026-02-01T00:00:00Z");
        // 4 + 1 surge: the new set may grow by one.
        assert_eq!(plan::new_replicas(&d, &[&old, &new], 0), 1);
        // With the new pod not yet available, old may lose one (4 - 1 unavailable = 3).
        let new = set("new", 1, 0, "2026-02-01T00:00:00Z");
        assert_eq!(
            plan::scale_down_old(&d, &[&old], Some(&new)),
            vec![("old".to_string(), 3)]
        );
        // Nothing more until the new one is available.
        let old3 = set("old", 3, 3, "2026-01-01T00:00:00Z");
        assert!(plan::scale_down_old(&d, &[&old3], Some(&new)).is_empty());
    }

    #[test]
    fn hashes_are_stable_safe_and_change_with_collisions() {
        let template: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        let a = template_hash(&template, None);
        assert_eq!(a, template_hash(&template, None));
        assert_ne!(a, template_hash(&template, Some(1)));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{a}");
    }
}
